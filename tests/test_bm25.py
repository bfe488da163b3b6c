"""bgem3.bm25: the BM25 lexical channel (scores vs bm25s, IDF on add/delete, persistence, tokenisation)."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3.bm25 import BM25, BM25FormatError, BM25Tokenizer

CORPUS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany and has many museums.",
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "The mitochondria is the powerhouse of the cell.",
    "서울은 대한민국의 수도이다.",
    "임베딩 모델은 문장을 벡터로 변환합니다.",
    "北京是中华人民共和国的首都。",
    "向量检索使用嵌入模型把文本转换为向量。",
    "東京は日本の首都です。",
    "埋め込みモデルは文章をベクトルに変換します。",
    "Берлин — столица Германии.",
    "Running runners ran; the runner runs daily.",
]


def test_scores_match_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    tok = BM25Tokenizer()
    docs = [tok(t) for t in CORPUS]
    for k1, b in ((1.2, 0.75), (1.5, 0.3), (0.9, 1.0)):
        ours = BM25(k1=k1, b=b)
        ours.add(CORPUS)
        ref = bm25s.BM25(method="lucene", k1=k1, b=b)
        ref.index(docs, show_progress=False)
        for q in ("capital of France", "document frequency", "서울 수도", "首都", "ベクトル 変換", "runner"):
            qt = [t for t in dict.fromkeys(tok(q)) if t in ref.vocab_dict]
            expected = ref.get_scores(qt) if qt else np.zeros(len(CORPUS))
            np.testing.assert_allclose(ours.scores(q), expected[: len(CORPUS)], rtol=1e-5, atol=1e-6)


def _fresh(texts, **kw):
    bm = BM25(**kw)
    bm.add(texts)
    return bm


def test_idf_kept_current_on_add_and_delete():
    bm = BM25()
    bm.add(CORPUS[:6])
    bm.add(CORPUS[6:])
    q = "capital Berlin Germany"
    np.testing.assert_allclose(bm.scores(q), _fresh(CORPUS).scores(q), rtol=1e-6)
    bm.delete([0, 2, 2, 5])
    alive = [i for i in range(len(CORPUS)) if i not in (0, 2, 5)]
    fresh = _fresh([CORPUS[i] for i in alive])
    assert len(bm) == len(alive)
    got = bm.scores(q)
    np.testing.assert_allclose(got[alive], fresh.scores(q), rtol=1e-6)
    assert np.all(got[[0, 2, 5]] == 0)
    # the idf of "capital" changed (one of its two documents is gone): scores really moved
    assert not np.allclose(got[1], _fresh(CORPUS).scores(q)[1])
    old = bm.compact()
    assert list(old) == alive
    np.testing.assert_allclose(bm.scores(q), fresh.scores(q), rtol=1e-6)


def test_deleting_every_document_and_unknown_terms():
    bm = _fresh(CORPUS[:2])
    assert bm.delete([0, 1]) == 2 and bm.delete([1]) == 0
    assert len(bm) == 0 and not bm.scores("capital").any()
    assert bm.top_k("capital", 3)[0].size == 0
    with pytest.raises(IndexError):
        bm.delete([7])
    assert not _fresh(CORPUS).scores("zebra xylophone").any()


def test_top_k_and_mask():
    bm = _fresh(CORPUS)
    rows, scores = bm.top_k("capital city", 5)
    assert list(rows[:2]) == [0, 1] and np.all(np.diff(scores) <= 0)
    mask = np.zeros(len(CORPUS), dtype=bool)
    mask[1] = True
    assert list(bm.top_k("capital city", 5, mask=mask)[0]) == [1]


def test_explain_terms_sum_to_score():
    bm = _fresh(CORPUS)
    terms = bm.explain("capital of France", 0)
    assert [t.term for t in terms][:1] == ["franc"]
    assert {t.term for t in terms} == {"capit", "franc"}  # "of" is a stop word
    assert sum(t.contribution for t in terms) == pytest.approx(float(bm.scores("capital of France")[0]), rel=1e-5)


def test_normalized_scores_in_unit_range():
    bm = _fresh(CORPUS)
    s = bm.normalized_scores("capital France Berlin")
    assert s.max() < 1 and s.min() >= 0 and s[0] > 0


@pytest.mark.parametrize("query, expected", [
    ("서울", 4),           # Korean with the particle 은 glued on in the document
    ("벡터 변환", 5),
    ("首都北京", 6),
    ("向量", 7),
    ("日本の首都", 8),
    ("ベクトル", 9),
    ("столица", 10),
    ("runs", 11),          # stemming: runs / running / runners
    ("ＦＲＡＮＣＥ", 0),     # full-width Latin, NFKC-normalised and case-folded
])
def test_multilingual_queries_find_their_document(query, expected):
    rows, _ = _fresh(CORPUS).top_k(query, 1)
    assert list(rows) == [expected], query


def test_tokenizer():
    tok = BM25Tokenizer()
    assert tok("서울은") == ["서울", "울은"]
    assert tok("猫") == ["猫"]
    assert tok("The foxes' late-interaction") == ["fox", "late", "interact"]
    assert tok("नई दिल्ली") == ["नई", "दिल्ली"]          # combining vowel signs stay inside the word
    assert BM25Tokenizer(stemmer=None, stopwords=None)("The Foxes") == ["the", "foxes"]
    assert BM25Tokenizer(stopwords=["fox"])("the fox") == ["the"]
    with pytest.raises(ValueError, match="stopwords"):
        BM25Tokenizer(stopwords="klingon")
    with pytest.raises(ValueError, match="unknown stemmer"):
        BM25Tokenizer(stemmer="klingon")
    with pytest.raises(TypeError):
        tok(["a list"])  # type: ignore[arg-type]


@pytest.mark.parametrize("k1, b", [(float("nan"), 0.75), (-1, 0.75), (1.2, 1.5), (1.2, float("inf")), (True, 0.5),
                                   ("1.2", 0.5)])
def test_bad_parameters_rejected(k1, b):
    with pytest.raises(ValueError, match="BM25"):
        BM25(k1=k1, b=b)


def test_text_list_not_split_into_characters():
    with pytest.raises(TypeError, match="single string"):
        BM25().add("one document")  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path):
    bm = BM25(k1=1.6, b=0.4, tokenizer=BM25Tokenizer(stopwords=None))
    bm.add(CORPUS)
    bm.delete([3])
    bm.save(str(tmp_path))
    back = BM25.load(str(tmp_path))
    assert (back.k1, back.b, back.tokenizer) == (1.6, 0.4, bm.tokenizer)
    for q in ("the capital", "首都", "mitochondria"):
        np.testing.assert_array_equal(back.scores(q), bm.scores(q))
    back.add(["one more capital"])  # the loaded state is writable
    assert len(back) == len(CORPUS)


def test_corrupted_state_rejected():
    bm = _fresh(CORPUS)
    config, arrays = bm.state()
    bad = dict(arrays, bm25_terms=arrays["bm25_terms"] + 10_000)
    with pytest.raises(BM25FormatError, match="vocabulary"):
        BM25.from_state(config, bad)
    with pytest.raises(BM25FormatError, match="fit"):
        BM25.from_state(config, dict(arrays, bm25_alive=arrays["bm25_alive"][:-1]))
    with pytest.raises(BM25FormatError, match="version"):
        BM25.from_state(dict(config, version=99), arrays)
    with pytest.raises(BM25FormatError, match="int32"):
        BM25.from_state(config, dict(arrays, bm25_tf=arrays["bm25_tf"].astype(np.float64)))


def test_scoring_many_documents_is_vectorised():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    docs = [[words[j] for j in rng.integers(0, 2000, size=30)] for _ in range(20_000)]
    bm = BM25()
    bm.add_tokens(docs)
    s = bm.scores("w1 w2 w3")
    assert s.shape == (20_000,) and (s > 0).sum() > 100
    assert np.count_nonzero(s) == sum(1 for d in docs if {"w1", "w2", "w3"} & set(d))
