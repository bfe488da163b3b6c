"""bgem3.bm25: the BM25 lexical channel (scores vs bm25s, IDF on add/delete, persistence, tokenisation)."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3 import HybridIndex
from bgem3.bm25 import BM25, BM25Tokenizer, term_id
from bgem3.index.lexical import MAX_TOKEN_ID

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


def _index(texts, bm=None, ids=None):
    bm = bm or BM25()
    index = HybridIndex(None, dim=2, channels=["lexical"], lexical=bm)
    ids = ids or [str(i) for i in range(len(texts))]
    index.add_encoded(ids, list(texts), None, sparse=bm.document_rows(list(texts)))
    return index, bm


def _scores(index, bm, query, ids):
    """BM25 score of each id (0 for a passage the query does not touch)."""
    hits = index.search_encoded(None, bm.query_row(query), None, k=max(len(ids), 1), exhaustive=True)
    got = {h.id: h.sparse_score for h in hits}
    return np.array([got.get(i, 0.0) for i in ids], dtype=np.float64)


def test_scores_match_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    tok = BM25Tokenizer()
    docs = [tok(t) for t in CORPUS]
    ids = [str(i) for i in range(len(CORPUS))]
    for k1, b in ((1.2, 0.75), (1.5, 0.3), (0.9, 1.0)):
        index, bm = _index(CORPUS, BM25(k1=k1, b=b))
        ref = bm25s.BM25(method="lucene", k1=k1, b=b)
        ref.index(docs, show_progress=False)
        for q in ("capital of France", "document frequency", "서울 수도", "首都", "ベクトル 変換", "runner"):
            qt = [t for t in dict.fromkeys(tok(q)) if t in ref.vocab_dict]
            expected = ref.get_scores(qt)[: len(CORPUS)] if qt else np.zeros(len(CORPUS))
            np.testing.assert_allclose(_scores(index, bm, q, ids), expected, rtol=1e-5, atol=1e-6)


def test_idf_kept_current_on_add_and_delete():
    ids = [str(i) for i in range(len(CORPUS))]
    bm = BM25()
    index = HybridIndex(None, dim=2, channels=["lexical"], lexical=bm)
    index.add_encoded(ids[:6], CORPUS[:6], None, sparse=bm.document_rows(CORPUS[:6]))
    index.add_encoded(ids[6:], CORPUS[6:], None, sparse=bm.document_rows(CORPUS[6:]))
    q = "capital Berlin Germany"
    full = _scores(*_index(CORPUS), q, ids)
    np.testing.assert_allclose(_scores(index, bm, q, ids), full, rtol=1e-6)
    index.delete(["0", "2", "5"])
    alive = [i for i in ids if i not in ("0", "2", "5")]
    fresh = _index([CORPUS[int(i)] for i in alive], ids=alive)
    got = _scores(index, bm, q, alive)
    np.testing.assert_allclose(got, _scores(*fresh, q, alive), rtol=1e-6)
    assert not np.allclose(got[0], full[1])  # "capital" lost one of its two passages: its idf moved
    # an upsert replaces the passage's terms and statistics
    index.add_encoded(["1"], ["nothing about that city"], None, sparse=bm.document_rows(["nothing about that city"]))
    assert _scores(index, bm, "Berlin", ["1"])[0] == 0


def test_deleting_everything_and_unknown_terms():
    index, bm = _index(CORPUS[:2])
    index.delete(["0", "1"])
    assert index.search_encoded(None, bm.query_row("capital"), None, k=3) == []
    index, bm = _index(CORPUS)
    hits = index.search_encoded(None, bm.query_row("zebra xylophone"), None, k=3)
    assert all(h.sparse_score == 0 for h in hits)  # no term matches: no passage scores


def test_explain_terms_sum_to_score():
    index, bm = _index(CORPUS)
    hit = index.search_encoded(None, bm.query_row("capital of France"), None, k=1)[0]
    assert hit.id == "0"
    terms = bm.explain_text("capital of France", hit.text)
    assert [t.term for t in terms] == ["franc", "capit"]  # "of" is a stop word; France is rarer
    # issue 23: the word as typed beside its stem (what --explain prints and --json carries)
    assert [t.word for t in terms] == ["france", "capital"]
    assert [t.label for t in terms] == ["france (franc)", "capital (capit)"]
    assert terms[0].to_dict()["word"] == "france" and terms[0].to_dict()["term"] == "franc"
    assert sum(t.contribution for t in terms) == pytest.approx(hit.sparse_score, rel=1e-5)
    with pytest.raises(ValueError, match="search"):
        bm.explain_text("another query", hit.text)


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
    index, bm = _index(CORPUS)
    assert index.search_encoded(None, bm.query_row(query), None, k=1)[0].id == str(expected), query


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
        BM25().document_rows("one document")  # type: ignore[arg-type]


def test_saved_with_the_index(tmp_path):
    bm = BM25(k1=1.6, b=0.4, tokenizer=BM25Tokenizer(stopwords=None))
    index, _ = _index(CORPUS, bm)
    index.delete(["3"])
    index.save(str(tmp_path / "idx"))
    back = HybridIndex.load(str(tmp_path / "idx"), load_encoder=False)
    assert isinstance(back.lexical, BM25) and back.lexical == bm and back.lexical.k1 == 1.6
    ids = [str(i) for i in range(len(CORPUS))]
    for q in ("the capital", "首都", "mitochondria"):
        np.testing.assert_array_equal(_scores(back, back.lexical, q, ids), _scores(index, bm, q, ids))
    with pytest.raises(ValueError, match="unknown BM25 settings"):
        BM25.from_config({"k1": 1.2, "k3": 7})


def test_term_ids_are_stable_and_in_range():
    assert term_id("capit") == term_id("capit") != term_id("franc")
    assert all(0 <= term_id(t) <= MAX_TOKEN_ID for t in ("", "a", "서울", "x" * 64))


def test_scoring_many_documents_is_vectorised():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(words[j] for j in rng.integers(0, 2000, size=30)) for _ in range(20_000)]
    bm = BM25(tokenizer=BM25Tokenizer(stemmer=None, stopwords=None))
    index, _ = _index(texts, bm)
    hits = index.search_encoded(None, bm.query_row("w1 w2 w3"), None, k=20_000, candidates=5_000)
    assert len(hits) == sum(1 for t in texts if {"w1", "w2", "w3"} & set(t.split())) > 100
    assert all(h.sparse_score > 0 for h in hits)


# --------------------------------------------------------------------------- with real models

def test_dense_only_model_gets_dense_plus_bm25(minilm, tmp_path):
    """all-MiniLM-L6-v2 (real weights) has no BGE-M3 heads: the index is dense + BM25."""
    from bgem3 import Encoder

    enc = Encoder(minilm, device="cpu")
    index = HybridIndex(enc)
    assert index.channels == ("dense", "lexical") and isinstance(index.lexical, BM25)
    texts = ["The Eiffel tower is a wrought-iron lattice tower in Paris.",
             "Photosynthesis converts light energy into chemical energy in plants.",
             "BM25 is a ranking function used by search engines to rank documents.",
             "The mitochondrion is the powerhouse of the cell."]
    index.add(texts, ids=["eiffel", "photo", "bm25", "mito"])
    hits = index.search("which function do search engines use to rank documents?", k=2, weights=(0.5, 0.5, 0))
    assert hits[0].id == "bm25" and hits[0].channels == ("dense", "lexical")
    assert hits[0].colbert_score is None and hits[0].sparse_score > 0 and hits[0].dense_score > 0.3
    # a paraphrase with no shared word: dense finds it, BM25 has nothing (no score, not a fake one)
    hit = index.search("organelle producing energy for cells", k=1, weights=(1, 0, 0))[0]
    assert hit.id == "mito"
    index.save(str(tmp_path / "idx"))
    back = HybridIndex.load(str(tmp_path / "idx"), device="cpu")
    assert [h.id for h in back.search("rank documents", k=1)] == ["bm25"]


def test_bm25_replaces_the_learned_lexical_channel_of_bge_m3(m3_encoder):
    index = HybridIndex(m3_encoder, lexical=BM25())
    assert index.channels == ("dense", "lexical", "colbert") and index.vocab_size is None
    index.add(["Paris is the capital of France.", "BM25 ranks documents."], ids=["p", "b"])
    hit = index.search("ranks documents", k=1, weights=(0, 1, 0))[0]
    assert hit.id == "b" and hit.sparse_score > 0


def test_both_retrievers_take_a_dense_only_model(minilm):
    """The LangChain and LlamaIndex hybrid retrievers over an E5/BGE/sentence-transformers model: dense + BM25."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document

    from bgem3 import Encoder
    from langchain_bgem3 import BGEM3HybridRetriever as LangChainRetriever
    from llama_index_bgem3 import BGEM3HybridRetriever as LlamaIndexRetriever

    enc = Encoder(minilm, device="cpu")
    texts = ["BM25 ranks documents by term frequency.", "Paris is the capital of France.",
             "The mitochondrion is the powerhouse of the cell."]
    docs = LangChainRetriever.from_texts(texts, enc, k=2).invoke("how are documents ranked?")
    assert docs[0].page_content == texts[0] and docs[0].metadata["sparse_score"] > 0
    assert "colbert_score" not in docs[0].metadata or docs[0].metadata["colbert_score"] is None
    nodes = LlamaIndexRetriever.from_documents([Document(text=t) for t in texts], enc,
                                               similarity_top_k=2).retrieve("how are documents ranked?")
    assert nodes[0].node.text == texts[0] and nodes[0].node.metadata["sparse_score"] > 0


# --------------------------------------------------------------------------- fusion default (mode="auto")

FUSION_TEXTS = ["BM25 ranks documents by term frequency and inverse document frequency.",
                "Search engines rank web pages for a query.",
                "Paris is the capital of France.",
                "The mitochondrion is the powerhouse of the cell.",
                "Documents about documents: a document store keeps documents."]
FUSION_QUERY = "how do search engines rank documents?"


def _scored(hits):
    return [(h.id, round(h.score, 6)) for h in hits]


def test_search_defaults_to_rrf_beside_bm25_and_weighted_beside_learned_weights(minilm, m3_encoder):
    """Raw BM25 scores (0..~20) swamp a cosine in a weighted mean, so ``mode="auto"`` (the default of
    HybridIndex.search, as of the CLI) fuses a BM25 index by rank; BGE-M3's learned weights keep
    the paper's weighted mean. Explicit modes are kept."""
    from bgem3 import Encoder

    index = HybridIndex(Encoder(minilm, device="cpu"))
    index.add(FUSION_TEXTS, ids=[str(i) for i in range(len(FUSION_TEXTS))])
    assert index.fusion_mode() == "rrf" and index.fusion_mode("weighted") == "weighted"
    default = index.search(FUSION_QUERY, k=5)
    rrf = index.search(FUSION_QUERY, k=5, mode="rrf")
    weighted = index.search(FUSION_QUERY, k=5, mode="weighted")
    assert _scored(default) == _scored(rrf) == _scored(index.search(FUSION_QUERY, k=5, mode="auto"))
    assert _scored(weighted) != _scored(rrf)
    assert all(h.score < 0.05 for h in default)  # RRF scores: sum of w / (60 + rank)
    with pytest.raises(ValueError, match="'auto', 'weighted' or 'rrf'"):
        index.search(FUSION_QUERY, mode="fused")
    dense_only = HybridIndex(Encoder(minilm, device="cpu"), channels=["dense"])
    assert dense_only.fusion_mode() == "weighted"

    m3 = HybridIndex(m3_encoder)
    assert m3.fusion_mode() == "weighted"
    m3.add(FUSION_TEXTS, ids=[str(i) for i in range(len(FUSION_TEXTS))])
    assert _scored(m3.search(FUSION_QUERY, k=5)) == _scored(m3.search(FUSION_QUERY, k=5, mode="weighted"))
    assert HybridIndex(m3_encoder, lexical=BM25()).fusion_mode() == "rrf"


def test_both_retrievers_default_to_the_stores_fusion(minilm):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from bgem3 import Encoder
    from langchain_bgem3 import BGEM3HybridRetriever as LangChainRetriever
    from llama_index_bgem3 import BGEM3HybridRetriever as LlamaIndexRetriever

    index = HybridIndex(Encoder(minilm, device="cpu"))
    index.add(FUSION_TEXTS, ids=[str(i) for i in range(len(FUSION_TEXTS))])
    rrf = _scored(index.search(FUSION_QUERY, k=3, mode="rrf"))
    weighted = _scored(index.search(FUSION_QUERY, k=3, mode="weighted"))
    lc = LangChainRetriever(store=index, k=3)
    assert lc.mode == "auto"
    assert [(d.id, round(d.metadata["score"], 6)) for d in lc.invoke(FUSION_QUERY)] == rrf
    assert [(d.id, round(d.metadata["score"], 6)) for d in lc.invoke(FUSION_QUERY, mode="weighted")] == weighted
    li = LlamaIndexRetriever(index, similarity_top_k=3)
    assert li.mode == "auto"
    assert [(n.node.id_, round(n.score, 6)) for n in li.retrieve(FUSION_QUERY)] == rrf
    li_w = LlamaIndexRetriever(index, similarity_top_k=3, mode="weighted")
    assert [(n.node.id_, round(n.score, 6)) for n in li_w.retrieve(FUSION_QUERY)] == weighted
    with pytest.raises(ValueError, match="mode"):
        LlamaIndexRetriever(index, mode="fused")
