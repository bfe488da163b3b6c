"""bgem3.Reranker: BGE cross-encoder / LLM rerankers, checked against FlagEmbedding 1.4.2 on tiny offline checkpoints."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import numpy as np
import pytest

from bgem3 import Encoder, ModelLoadError, RankedText, Reranker
from bgem3.testing import make_reranker_checkpoint

QUERIES = ["what is bm25?", "capital of France", "LangChain 에 대해서 알려주세요."]
PASSAGES = (["BM25 is a bag-of-words retrieval function that ranks documents by term frequency. " * k for k in (1, 3, 12)]
            + ["Paris is the capital and most populous city of France.", "짧은", "The quick brown fox.",
               "北京是中华人民共和国的首都。" * 20])
PAIRS = [(q, p) for q in QUERIES for p in PASSAGES]
ARCHS = ["xlmr", "bert", "gemma"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return {a: make_reranker_checkpoint(str(tmp_path_factory.mktemp(f"rr-{a}")), a) for a in ARCHS}


def _ours(paths, arch, **kw):
    if arch == "gemma":
        kw.setdefault("kind", "llm")
    return Reranker(paths[arch], device="cpu", **kw)


def _ref(path, arch, **kw):
    FlagEmbedding = pytest.importorskip("FlagEmbedding")
    cls = FlagEmbedding.FlagLLMReranker if arch == "gemma" else FlagEmbedding.FlagReranker
    return cls(path, devices="cpu", **kw)


def _same_ranking(a, b, tol=1e-5):
    """Every pair the reference orders by more than ``tol`` is ordered the same way by ours."""
    a, b = np.asarray(a), np.asarray(b)
    gap = b[:, None] - b[None, :]
    sure = np.abs(gap) > tol
    return bool(np.all(np.sign(a[:, None] - a[None, :])[sure] == np.sign(gap)[sure]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_length", [512, 24])
def test_parity_with_flagembedding(paths, arch, max_length):
    ours = _ours(paths, arch, max_length=max_length, batch_size=4)
    ref = _ref(paths[arch], arch, max_length=max_length, batch_size=4)
    for normalize in (False, True):
        a = ours.compute_score(PAIRS, normalize=normalize)
        b = ref.compute_score(PAIRS, normalize=normalize)
        assert isinstance(a, list) and all(isinstance(x, float) for x in a)
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5, (arch, max_length, normalize)
        assert _same_ranking(a, b)
    raw = np.asarray(ours.compute_score(PAIRS))
    assert raw.std() > 1e-3  # the scores differ, so parity and ranking prove something
    np.testing.assert_allclose(ours.compute_score(PAIRS, normalize=True), 1 / (1 + np.exp(-raw)), rtol=1e-12)


@pytest.mark.parametrize("arch", ["xlmr", "bert"])
def test_truncation_matches_the_reference_tokens(paths, arch):
    """Query kept (cut to 3/4 of max_length first), passage cut so the pair fits: the reference's token ids."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    ml = 20
    ours = _ours(paths, arch, max_length=ml)
    tok = ours.tokenizer
    ids, _ = ours.tokenize_pairs(PAIRS)
    for (q, p), got in zip(PAIRS, ids):
        qi = tok(q, add_special_tokens=False, max_length=ml * 3 // 4, truncation=True)["input_ids"]
        pi = tok(p, add_special_tokens=False, max_length=ml, truncation=True)["input_ids"]
        want = prepare_for_model_compat(tok, qi, pi, truncation="only_second", max_length=ml, padding=False)["input_ids"]
        assert got == list(want)
        assert len(got) <= ml
    long_pair = ids[PAIRS.index((QUERIES[0], PASSAGES[2]))]
    q_only = tok(QUERIES[0], add_special_tokens=False)["input_ids"]
    assert len(long_pair) == ml and all(t in long_pair for t in q_only)  # the passage was cut, the query kept


@pytest.mark.parametrize("side", ["right", "left"])
def test_llm_prompt_truncation_and_padding_side(tmp_path, side):
    """FlagLLMReranker's layout: <bos> 'A: q' '\\n' 'B: p' (cut, on the tokenizer's side) '\\n' prompt; scored by 'Yes'."""
    path = make_reranker_checkpoint(str(tmp_path / "g"), "gemma", padding_side=side, truncation_side=side)
    ours = Reranker(path, device="cpu", kind="llm", max_length=16, batch_size=3)
    ref = _ref(path, "gemma", max_length=16, batch_size=3)
    a, b = ours.compute_score(PAIRS), ref.compute_score(PAIRS)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5
    tok = ours.tokenizer
    ids, _ = ours.tokenize_pairs([("capital of France", "Paris is the capital and most populous city of France.")])
    prompt = tok(ours.prompt, add_special_tokens=False)["input_ids"]
    assert ids[0][0] == tok.bos_token_id and ids[0][-len(prompt):] == prompt
    text = tok.decode(ids[0][1:])
    if side == "right":  # the passage's end is cut
        assert text.startswith("A: capital of France\nB: Paris")
    else:  # left truncation cuts the passage's start ("\nB: " included, as the reference does)
        assert text.startswith("A: capital of France\n") and "B: Paris" not in text and "of France.\nGiven" in text
    assert ours.yes_loc == tok("Yes", add_special_tokens=False)["input_ids"][0]
    # a custom prompt changes the score, as FlagLLMReranker's prompt= does
    custom = Reranker(path, device="cpu", kind="llm", max_length=16, prompt="Is B relevant to A?")
    c = custom.compute_score(PAIRS[:3])
    np.testing.assert_allclose(c, ref.compute_score(PAIRS[:3], prompt="Is B relevant to A?"), atol=1e-5)
    assert np.abs(np.asarray(c) - np.asarray(a[:3])).max() > 1e-4


@pytest.mark.parametrize("arch", ["xlmr", "bert"])
def test_unpadded_path_and_token_budget_give_the_same_scores(paths, arch):
    fast = _ours(paths, arch, batch_size=5)
    assert fast._packed in ("roberta", "bert")
    a = np.asarray(fast.compute_score(PAIRS))
    slow = _ours(paths, arch, batch_size=5)
    slow._packed = None  # the Hugging Face model's own padded forward
    np.testing.assert_allclose(a, slow.compute_score(PAIRS), atol=1e-5)
    tight = _ours(paths, arch, batch_size=64, max_tokens_per_batch=40)
    np.testing.assert_allclose(a, tight.compute_score(PAIRS), atol=1e-5)
    one = [fast.compute_score([pair])[0] for pair in PAIRS[:5]]
    np.testing.assert_allclose(a[:5], one, atol=1e-5)


def test_rerank_score_and_top_n(paths):
    rr = _ours(paths, "xlmr")
    texts = PASSAGES
    s = rr.score(QUERIES[1], texts)
    assert s.dtype == np.float64 and s.shape == (len(texts),)
    np.testing.assert_allclose(s, rr.compute_score([(QUERIES[1], t) for t in texts]))
    hits = rr.rerank(QUERIES[1], texts)
    assert [h.index for h in hits] == list(np.argsort(-s, kind="stable"))
    assert all(isinstance(h, RankedText) for h in hits)
    top = rr.rerank(QUERIES[1], texts, top_n=2, normalize=True)
    assert [h.index for h in top] == [h.index for h in hits[:2]] and 0 < top[0].score < 1
    # identical texts tie: input order kept
    tied = rr.rerank(QUERIES[1], ["same text", "other", "same text"])
    pos = [h.index for h in tied]
    assert pos.index(0) < pos.index(2)
    assert rr.rerank(QUERIES[1], []) == []
    assert rr.compute_score((QUERIES[0], PASSAGES[0])) == rr.compute_score([(QUERIES[0], PASSAGES[0])])
    assert asyncio.run(rr.arerank(QUERIES[1], texts, 2)) == hits[:2]
    np.testing.assert_allclose(asyncio.run(rr.acompute_score(PAIRS[:3])), rr.compute_score(PAIRS[:3]))


def test_bad_input_is_refused_by_name(paths):
    rr = _ours(paths, "bert")
    with pytest.raises(ValueError, match="query is empty"):
        rr.rerank("  ", ["a"])
    with pytest.raises(TypeError, match="not one string"):
        rr.rerank("q", "a passage")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        rr.rerank("q", ["a", 3])
    with pytest.raises(TypeError, match="sentence_pairs"):
        rr.compute_score("q")
    with pytest.raises(TypeError, match=r"sentence_pairs\[0\]"):
        rr.compute_score(["q", "p", "r"])
    with pytest.raises(ValueError, match="empty query"):
        rr.compute_score([("", "p")])
    with pytest.raises(ValueError, match="top_n"):
        rr.rerank("q", ["a"], top_n=0)


def test_options_honoured_or_refused(paths):
    with pytest.raises(TypeError, match="use_fp16.*dtype"):
        Reranker(paths["xlmr"], device="cpu", use_fp16=True)
    with pytest.raises(ValueError, match="cutoff_layers"):
        Reranker(paths["xlmr"], device="cpu", cutoff_layers=[28])
    with pytest.raises(ValueError, match="prompt= is for LLM rerankers"):
        Reranker(paths["xlmr"], device="cpu", prompt="x")
    with pytest.raises(ValueError, match="int8.*LLM reranker"):
        Reranker(paths["gemma"], device="cpu", kind="llm", dtype="int8")
    with pytest.raises(ValueError, match="fp16 on CPU"):
        Reranker(paths["xlmr"], device="cpu", dtype="fp16")
    # a query instruction is applied as FlagReranker applies it
    ref = _ref(paths["xlmr"], "xlmr", query_instruction_for_rerank="query: ")
    ours = _ours(paths, "xlmr", query_instruction_for_rerank="query: ")
    np.testing.assert_allclose(ours.compute_score(PAIRS), ref.compute_score(PAIRS), atol=1e-5)
    assert np.abs(np.asarray(ours.compute_score(PAIRS)) - np.asarray(_ours(paths, "xlmr").compute_score(PAIRS))).max() > 1e-4


def test_folders_and_names_are_checked(paths, m3_path, tmp_path):
    # an embedding folder given as a reranker, and a reranker folder given as an embedder
    with pytest.raises(ModelLoadError, match="BGE-M3 embedding checkpoint.*bgem3.Encoder"):
        Reranker(m3_path, device="cpu")
    with pytest.raises(ModelLoadError, match="cross-encoder.*bgem3.Reranker"):
        Encoder(paths["xlmr"], device="cpu")
    # a causal LM folder is an LLM reranker only when the name says so or kind='llm' is given
    with pytest.raises(ModelLoadError, match="kind='llm'"):
        Reranker(paths["gemma"], device="cpu")
    with pytest.raises(ModelLoadError, match="kind='llm' needs a causal LM"):
        Reranker(paths["xlmr"], device="cpu", kind="llm")
    # a registry name decides the kind (a folder named like the hub model)
    named = tmp_path / "bge-reranker-v2-gemma"
    shutil.copytree(paths["gemma"], named)
    assert Reranker(str(named), device="cpu").kind == "llm"
    for name in ("bge-reranker-v2-minicpm-layerwise", "bge-reranker-v2.5-gemma2-lightweight"):
        folder = tmp_path / name
        shutil.copytree(paths["gemma"], folder)
        with pytest.raises(ModelLoadError, match="remote modelling code.*FlagEmbedding"):
            Reranker(str(folder), device="cpu")
    named_embedder = tmp_path / "bge-reranker-v2-m3"
    shutil.copytree(paths["xlmr"], named_embedder)
    with pytest.raises(ModelLoadError, match="is a reranker.*bgem3.Reranker"):
        Encoder(str(named_embedder), device="cpu")
    # more than one label is not a reranker
    multi = tmp_path / "multi"
    shutil.copytree(paths["xlmr"], multi)
    cfg = json.loads((multi / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b", "2": "c"}
    cfg["label2id"] = {"a": 0, "b": 1, "c": 2}
    (multi / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="3 labels"):
        Reranker(str(multi), device="cpu")


def test_hub_names_are_checked_before_any_download(monkeypatch):
    import huggingface_hub

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(ModelLoadError, match="bgem3.Reranker"):
        Encoder("BAAI/bge-reranker-v2-m3")
    with pytest.raises(ModelLoadError, match="the BAAI/bge-m3 embedding model.*bgem3.Encoder"):
        Reranker("BAAI/bge-m3")
    with pytest.raises(ModelLoadError, match="LayerWiseFlagLLMReranker"):
        Reranker("BAAI/bge-reranker-v2-minicpm-layerwise", trust_remote_code=True)


def test_m3_channel_rerankers_point_cross_encoder_names_at_reranker():
    from bgem3.rerank import HybridReranker

    with pytest.raises(ValueError, match="bgem3.Reranker"):
        HybridReranker("BAAI/bge-reranker-v2-m3")


def test_bf16_scores_stay_close(paths, tmp_path):
    """dtype='bf16' (CPU): on the tiny random XLM-R it runs in bf16; its fidelity is held to the same gates as int8 on
    the real MiniLM transformer over real text (a fixed bound on the random-weight toy failed at two threads: 0.119
    of a 2.5 score range, 1 thread passed; random weights make bf16 rounding a matter of the thread count)."""
    import torch

    from bgem3.quant.fidelity import TOP10_AGREEMENT_GATE, real_passages, real_queries, topk_agreement
    from bgem3.testing import make_trained_reranker_checkpoint

    rr = _ours(paths, "xlmr", dtype="bf16")
    assert rr.dtype == torch.bfloat16
    toy = np.asarray(rr.compute_score(PAIRS))
    assert np.isfinite(toy).all() and np.corrcoef(toy, _ours(paths, "xlmr").compute_score(PAIRS))[0, 1] > 0.99
    path = make_trained_reranker_checkpoint(str(tmp_path / "minilm-ce"))
    fp32 = Reranker(path, device="cpu", max_length=128)
    bf16 = Reranker(path, device="cpu", dtype="bf16", max_length=128)
    queries, passages = real_queries(12), real_passages(40)
    a = np.array([fp32.score(q, passages) for q in queries])
    b = np.array([bf16.score(q, passages) for q in queries])
    assert a.std() > 0.1 and np.abs(a - b).max() > 0  # scores spread, and bf16 really changed them
    assert topk_agreement(a, b, 10) >= TOP10_AGREEMENT_GATE
    assert min(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1] for x, y in zip(a, b)) >= 0.98
    assert np.abs(a - b).max() < 0.5 * a.std()


def test_channel_rerankers_point_at_the_cross_encoder_classes(paths):
    from langchain_bgem3 import BGEM3Reranker as LCChannels
    from llama_index_bgem3 import BGEM3Reranker as LIChannels

    with pytest.raises(Exception, match="cross-encoder reranker.*BGECrossEncoderReranker"):
        LCChannels(model_name="BAAI/bge-reranker-v2-m3")
    with pytest.raises(ValueError, match="cross-encoder reranker.*BGERerank"):
        LIChannels(model_name="BAAI/bge-reranker-v2-m3")
    rr = _ours(paths, "xlmr")
    with pytest.raises(Exception, match="A cross-encoder reranker goes to.*BGECrossEncoderReranker"):
        LCChannels(model=rr)


def test_doctests():
    import doctest

    import bgem3.families
    import bgem3.testing

    assert doctest.testmod(bgem3.families).failed == 0
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(bgem3.testing.make_reranker_checkpoint, "make_reranker_checkpoint",
                            globs={"__name__": "bgem3.testing"}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_pickled_reranker_loads_again_elsewhere(paths):
    import pickle

    from bgem3 import crossencoder

    rr = crossencoder.shared_reranker(paths["bert"], device="cpu", max_length=64)
    assert pickle.loads(pickle.dumps(rr)) is rr  # same process: the same object
    fn, args = rr.__reduce__()
    crossencoder._LIVE.pop(args[0])  # as in another process: loaded again from the folder with the same options
    crossencoder._CACHE.clear()
    again = fn(*args)
    assert again is not rr and again.max_length == 64 and again.kind == "encoder"
    np.testing.assert_allclose(again.compute_score(PAIRS[:4]), rr.compute_score(PAIRS[:4]), atol=1e-6)


def test_int8_on_real_hidden_states_passes_the_gates(tmp_path):
    """dtype='int8' (CPU): bgem3.quant on the encoder stack, held to the encoder's top-10 agreement gate on the
    real MiniLM transformer (random one-label head) over real queries and passages."""
    import torch

    from bgem3.quant import Int8Linear
    from bgem3.quant.fidelity import TOP10_AGREEMENT_GATE, real_passages, real_queries, topk_agreement
    from bgem3.testing import make_trained_reranker_checkpoint

    path = make_trained_reranker_checkpoint(str(tmp_path / "minilm-ce"))
    fp32 = Reranker(path, device="cpu", max_length=128)
    int8 = Reranker(path, device="cpu", dtype="int8", max_length=128)
    assert int8.dtype == torch.qint8 and int8.quantization["int8_layers"] > 0
    assert any(isinstance(m, Int8Linear) for m in int8.model.base_model.encoder.modules())
    assert not isinstance(int8.model.classifier, Int8Linear)  # the head stays fp32
    queries, passages = real_queries(12), real_passages(40)
    a = np.array([fp32.score(q, passages) for q in queries])
    b = np.array([int8.score(q, passages) for q in queries])
    assert a.std() > 0.1 and np.abs(a - b).max() > 0  # scores spread, and int8 really changed them
    assert topk_agreement(a, b, 10) >= TOP10_AGREEMENT_GATE  # measured 0.958 (VNNI CPU)
    assert min(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1] for x, y in zip(a, b)) >= 0.98
    assert np.abs(a - b).max() < 0.5 * a.std()  # measured 0.050 against a spread of 0.285


def test_max_length_beyond_the_model_is_refused_and_progress_is_shown(paths, capsys):
    rr = _ours(paths, "xlmr")
    assert rr.model_max_length == 512  # 514 positions less XLM-R's padding offset
    with pytest.raises(ValueError, match="max_length=600 is longer than"):
        Reranker(paths["xlmr"], device="cpu", max_length=600)
    with pytest.raises(ValueError, match="max_length=513"):
        rr.compute_score(PAIRS[:1], max_length=513)
    rr.compute_score(PAIRS, batch_size=2, show_progress=True)
    assert "Reranking" in capsys.readouterr().err
    rr.compute_score(PAIRS, batch_size=2, show_progress=False)
    assert "Reranking" not in capsys.readouterr().err


def test_oom_halves_the_batch_and_retries_as_the_encoder_does(paths, monkeypatch):
    """The reranker runs the encoder's batch loop (bgem3._batching): an out-of-memory error on a batch of
    several pairs retries it as two halves, same scores; any other error surfaces unchanged."""
    from _compare import oom_above

    rr = _ours(paths, "bert")
    sizes: list = []
    monkeypatch.setattr(rr, "_forward", oom_above(rr._forward, 2, sizes))
    got = rr.compute_score(PAIRS, batch_size=8)
    monkeypatch.undo()
    assert max(sizes) == 8 and 2 in sizes and sum(s for s in sizes if s <= 2) == len(PAIRS)
    np.testing.assert_allclose(got, rr.compute_score(PAIRS, batch_size=8), atol=1e-5)  # float32, other batch shapes

    def broken(*a):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(rr, "_forward", broken)
    with pytest.raises(RuntimeError, match="kernel exploded"):
        rr.compute_score(PAIRS[:3])


# --------------------------------------------------------------------------- CPU speed: token budget

def test_token_budget_defaults_per_device_and_a_given_one_is_used(paths):
    """max_tokens_per_batch: None -> 4096 on CPU (measured faster there), 16384 on an accelerator; any value
    given is used as given; reloading (pickling, shared_reranker) resolves 'not given' again for its device."""
    import torch

    from bgem3.encoder import CPU_MAX_TOKENS_PER_BATCH, DEFAULT_MAX_TOKENS_PER_BATCH, default_tokens_per_batch

    assert (CPU_MAX_TOKENS_PER_BATCH, DEFAULT_MAX_TOKENS_PER_BATCH) == (4096, 16384)
    assert default_tokens_per_batch("cpu") == 4096
    assert default_tokens_per_batch(torch.device("cuda", 1)) == 16384 == default_tokens_per_batch("mps")
    rr = _ours(paths, "xlmr")
    assert rr.max_tokens_per_batch == 4096
    assert _ours(paths, "xlmr", max_tokens_per_batch=16384).max_tokens_per_batch == 16384
    assert _ours(paths, "xlmr", max_tokens_per_batch=100).max_tokens_per_batch == 100
    with pytest.raises((TypeError, ValueError), match="max_tokens_per_batch"):
        _ours(paths, "xlmr", max_tokens_per_batch=0)
    assert rr._load_options["max_tokens_per_batch"] is None
