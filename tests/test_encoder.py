"""The core encoder: parity with the reference implementations, policies and bad input."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
import torch

from bgem3 import Encoder, ModelLoadError, resolve_device, resolve_dtype
from bgem3.scoring import colbert_score, lexical_score

TOL = 1e-5


# --------------------------------------------------------------------------- parity: FlagEmbedding

@pytest.fixture(scope="module")
def both_outputs(m3_encoder, flag_model, mixed_texts_module):
    texts = mixed_texts_module
    ours = m3_encoder.encode(texts, dense=True, sparse=True, colbert=True, max_length=128, batch_size=4)
    ref = flag_model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True,
                            max_length=128, batch_size=4)
    return texts, ours, ref


@pytest.fixture(scope="module")
def mixed_texts_module():
    from conftest import MIXED_TEXTS

    return list(MIXED_TEXTS)


def test_dense_matches_flagembedding(both_outputs):
    _, ours, ref = both_outputs
    assert ours.dense.dtype == np.float32
    assert ours.dense.shape == ref["dense_vecs"].shape
    np.testing.assert_allclose(ours.dense, ref["dense_vecs"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours.dense, axis=1), 1.0, atol=1e-5)


def test_sparse_matches_flagembedding(both_outputs):
    _, ours, ref = both_outputs
    assert len(ours.sparse) == len(ref["lexical_weights"])
    nonempty = 0
    for mine, theirs in zip(ours.sparse, ref["lexical_weights"]):
        assert all(isinstance(k, int) and isinstance(v, float) for k, v in mine.items())
        assert set(mine) == {int(k) for k in theirs}
        for k, v in theirs.items():
            assert abs(mine[int(k)] - float(v)) <= TOL
        nonempty += bool(mine)
    assert nonempty >= len(ours.sparse) - 2  # the checkpoint gives most texts real weights


def test_colbert_matches_flagembedding(both_outputs):
    texts, ours, ref = both_outputs
    for i, (mine, theirs) in enumerate(zip(ours.colbert, ref["colbert_vecs"])):
        assert mine.dtype == np.float32
        assert mine.shape == theirs.shape, texts[i]
        # CLS dropped, </s> kept: one vector per token after the first
        assert mine.shape[0] == ours.token_counts[i] - 1
        np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)


def test_scores_match_flagembedding(both_outputs, flag_model):
    _, ours, ref = both_outputs
    n = len(ours.dense)
    for i in range(n):
        for j in range(n):
            lex_ref = flag_model.compute_lexical_matching_score(ref["lexical_weights"][i], ref["lexical_weights"][j])
            assert abs(lexical_score(ours.sparse[i], ours.sparse[j]) - float(lex_ref)) <= TOL
            col_ref = float(flag_model.colbert_score(ref["colbert_vecs"][i], ref["colbert_vecs"][j]))
            assert abs(colbert_score(ours.colbert[i], ours.colbert[j]) - col_ref) <= TOL


def test_compute_score_matches_flagembedding(m3_encoder, flag_model):
    """FlagEmbedding's own pairwise compute_score (its separate code path) agrees with ours."""
    from bgem3.scoring import fuse_weighted

    queries = ["what is BGE M3", "LangChain 에 대해서 알려주세요."]
    docs = ["BGE M3 is an embedding model", "LangChain 은 프레임워크입니다. LangChain is a framework."]
    pairs = [(q, d) for q in queries for d in docs]
    ref = flag_model.compute_score(pairs, max_query_length=64, max_passage_length=64,
                                   weights_for_different_modes=[0.4, 0.2, 0.4])
    q = m3_encoder.encode(queries, sparse=True, colbert=True, max_length=64)
    d = m3_encoder.encode(docs, sparse=True, colbert=True, max_length=64)
    for n, (qi, di) in enumerate((a, b) for a in range(2) for b in range(2)):
        dense = float(q.dense[qi] @ d.dense[di])
        lex = lexical_score(q.sparse[qi], d.sparse[di])
        col = colbert_score(q.colbert[qi], d.colbert[di])
        assert abs(dense - ref["dense"][n]) <= TOL
        assert abs(lex - ref["sparse"][n]) <= TOL
        assert abs(col - ref["colbert"][n]) <= TOL
        fused = float(fuse_weighted(dense, lex, col, (0.4, 0.2, 0.4), normalize=True))
        assert abs(fused - ref["colbert+sparse+dense"][n]) <= TOL


def test_only_requested_heads_are_computed(m3_encoder, monkeypatch):
    calls = []
    for name in ("sparse_linear", "colbert_linear"):
        head = getattr(m3_encoder, name)
        monkeypatch.setattr(m3_encoder, name, _Spy(head, name, calls))
    out = m3_encoder.encode(["hello world"], dense=True)
    assert out.sparse is None and out.colbert is None and calls == []
    out = m3_encoder.encode(["hello world"], dense=False, sparse=True)
    assert out.dense is None and out.colbert is None and calls == ["sparse_linear"]


class _Spy:
    def __init__(self, inner, name, calls):
        self.inner, self.name, self.calls = inner, name, calls

    def __call__(self, x):
        self.calls.append(self.name)
        return self.inner(x)


def test_order_is_restored_and_batching_does_not_change_results(m3_encoder, mixed_texts):
    full = m3_encoder.encode(mixed_texts, sparse=True, colbert=True, batch_size=64)
    tiny_batches = m3_encoder.encode(mixed_texts, sparse=True, colbert=True, batch_size=1)
    one_by_one = [m3_encoder.encode([t], sparse=True, colbert=True) for t in mixed_texts]
    for i, single in enumerate(one_by_one):
        np.testing.assert_allclose(full.dense[i], single.dense[0], atol=TOL)
        np.testing.assert_allclose(tiny_batches.dense[i], single.dense[0], atol=TOL)
        assert full.sparse[i].keys() == single.sparse[0].keys()
        np.testing.assert_allclose(full.colbert[i], single.colbert[0], atol=TOL)


def test_token_budget_caps_padded_tokens(m3_encoder):
    lengths = np.array([500, 480, 20, 10, 10, 10, 9, 8])
    order, batches = m3_encoder.plan_batches(lengths, batch_size=32)
    assert list(lengths[order]) == sorted(lengths, reverse=True)
    covered = []
    for start, end in batches:
        longest = lengths[order[start]]
        assert (end - start) == 1 or (end - start) * longest <= m3_encoder.max_tokens_per_batch
        covered.extend(order[start:end])
    assert sorted(covered) == list(range(len(lengths)))


# --------------------------------------------------------------------------- parity: sentence-transformers

def test_dense_matches_sentence_transformers_on_real_minilm(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "A man is riding a horse.", "", "Ein Mann isst.\nNeue Zeile",
             "The quick brown fox jumps over the lazy dog. " * 20]
    ours = Encoder(minilm, device="cpu")
    assert ours.profile.pooling == "mean" and ours.profile.normalize
    st = SentenceTransformer(minilm, device="cpu")
    ref = st.encode(texts, convert_to_numpy=True, batch_size=2)
    out = ours.encode(texts, batch_size=3)
    np.testing.assert_allclose(out.dense, ref, atol=TOL, rtol=0)


def test_semantic_ranking_on_real_minilm(minilm):
    enc = Encoder(minilm, device="cpu")
    docs = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        "Photosynthesis is how plants turn sunlight into chemical energy.",
        "Python is a popular programming language for data science.",
        "The Great Wall of China stretches thousands of kilometres.",
    ]
    queries = {
        "How do plants make energy from light?": 1,
        "famous landmark in Paris": 0,
        "Which language do data scientists code in?": 2,
    }
    d = enc.encode_documents(docs).dense
    for q, want in queries.items():
        scores = enc.encode_queries([q]).dense @ d.T
        assert int(np.argmax(scores)) == want, (q, scores)


# --------------------------------------------------------------------------- profiles and templates

def test_e5_templates_are_applied(minilm):
    enc = Encoder(minilm, device="cpu", profile="e5")
    q = enc.encode_queries(["how are you"]).dense
    p = enc.encode_documents(["how are you"]).dense
    np.testing.assert_allclose(q, enc.encode(["query: how are you"]).dense, atol=TOL)
    np.testing.assert_allclose(p, enc.encode(["passage: how are you"]).dense, atol=TOL)
    assert not np.allclose(q, p, atol=1e-3)


def test_e5_instruct_templates(minilm):
    enc = Encoder(minilm, device="cpu", profile="e5-instruct", task="Find the answer")
    assert enc.profile.format_query("q") == "Instruct: Find the answer\nQuery: q"
    assert enc.profile.format_query("q", task="Other") == "Instruct: Other\nQuery: q"
    assert enc.profile.format_passage("doc") == "doc"
    np.testing.assert_allclose(enc.encode_queries(["q"]).dense,
                               enc.encode(["Instruct: Find the answer\nQuery: q"]).dense, atol=TOL)


def test_templates_can_be_overridden_or_turned_off(minilm):
    off = Encoder(minilm, device="cpu", profile="e5", query_template=None, passage_template="")
    assert off.profile.format_query("x") == "x" and off.profile.format_passage("x") == "x"
    custom = Encoder(minilm, device="cpu", profile="e5", query_template="Q: {text}")
    assert custom.profile.format_query("x") == "Q: x"
    with pytest.raises(ValueError, match=r"\{text\}"):
        Encoder(minilm, device="cpu", profile="e5", query_template="query: ")


def test_profile_detection(m3_path, minilm, tmp_path):
    from bgem3.profiles import detect_profile, profile_for_hub_id

    assert detect_profile(m3_path).name == "m3"
    st = detect_profile(minilm)
    assert (st.name, st.pooling, st.normalize) == ("st", "mean", True)
    assert profile_for_hub_id("intfloat/multilingual-e5-large").name == "e5"
    assert profile_for_hub_id("intfloat/multilingual-e5-large-instruct").name == "e5-instruct"
    assert profile_for_hub_id("/cache/models--intfloat--multilingual-e5-base/snapshots/abc").name == "e5"
    assert profile_for_hub_id("BAAI/bge-small-en-v1.5").name == "bge"
    assert profile_for_hub_id("someone/unknown-model") is None
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match="cannot tell how to pool"):
        detect_profile(str(bare))


def test_bge_profile_uses_cls_and_query_instruction(m3_no_heads_path):
    enc = Encoder(m3_no_heads_path, device="cpu", profile="bge")
    assert enc.profile.pooling == "cls"
    assert enc.profile.format_query("x").startswith("Represent this sentence")
    assert enc.profile.format_passage("x") == "x"


# --------------------------------------------------------------------------- heads

def test_missing_heads_refuse_sparse_and_colbert(m3_no_heads_path, m3_encoder):
    enc = Encoder(m3_no_heads_path, device="cpu", profile="m3")
    assert not enc.has_heads
    dense = enc.encode(["hello"]).dense
    np.testing.assert_allclose(dense, m3_encoder.encode(["hello"]).dense, atol=TOL)
    with pytest.raises(ValueError, match=r"sparse.*colbert_linear\.pt, sparse_linear\.pt"):
        enc.encode(["hello"], sparse=True)
    with pytest.raises(ValueError, match="colbert output needs BGE-M3's head files"):
        enc.encode(["hello"], colbert=True)


def test_head_files_load_with_weights_only(m3_path, tmp_path, monkeypatch):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Encoder(m3_path, device="cpu")
    assert seen == [True, True]


def test_malicious_head_file_is_refused(m3_path, tmp_path):
    import pickle

    dst = tmp_path / "evil"
    shutil.copytree(m3_path, dst)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(dst / "sparse_linear.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(ModelLoadError, match="sparse_linear.pt"):
        Encoder(str(dst), device="cpu")


def test_head_of_wrong_shape_is_refused(m3_path, tmp_path):
    dst = tmp_path / "wrong"
    shutil.copytree(m3_path, dst)
    torch.save(torch.nn.Linear(7, 7).state_dict(), dst / "colbert_linear.pt")
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt.*shape \(7, 7\)"):
        Encoder(str(dst), device="cpu")


# --------------------------------------------------------------------------- device and precision policy

def test_device_policy():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("tpu9")
    auto = resolve_device(None)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert auto.type == expected


def test_dtype_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype(None, cuda) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    assert resolve_dtype(torch.float32, cuda) == torch.float32
    with pytest.raises(ValueError, match="fp16 on CPU is not supported"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype("int4", cpu)


def test_cpu_default_is_exact_fp32(m3_encoder):
    assert m3_encoder.device.type == "cpu"
    assert m3_encoder.dtype == torch.float32
    assert next(m3_encoder.model.parameters()).dtype == torch.float32
    assert not m3_encoder.model.training


def test_bf16_on_cpu_when_asked(m3_path, m3_encoder):
    enc = Encoder(m3_path, device="cpu", dtype="bf16", backend="torch")  # PyTorch's bf16 path
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    out = enc.encode(["hello world", "LangChain"], sparse=True, colbert=True)
    assert out.dense.dtype == np.float32 and out.colbert[0].dtype == np.float32
    ref = m3_encoder.encode(["hello world", "LangChain"]).dense
    assert float(np.min(np.sum(out.dense * ref, axis=1))) > 0.98


def test_max_length_default_and_truncation(m3_encoder):
    assert m3_encoder.model_max_length == 512  # tokenizer limit of the tiny checkpoint
    long = "word " * 2000
    out = m3_encoder.encode([long], colbert=True)
    assert out.token_counts[0] == 512 and out.colbert[0].shape[0] == 511
    short = m3_encoder.encode([long], max_length=16, colbert=True)
    assert short.token_counts[0] == 16 and short.colbert[0].shape[0] == 15


def test_oom_halves_the_batch_and_retries(m3_encoder, monkeypatch, mixed_texts):
    real = m3_encoder._forward
    sizes = []

    def flaky(batch_ids, *a):
        sizes.append(len(batch_ids))
        if len(batch_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch_ids, *a)

    monkeypatch.setattr(m3_encoder, "_forward", flaky)
    out = m3_encoder.encode(mixed_texts, sparse=True, colbert=True, batch_size=8)
    monkeypatch.undo()
    ref = m3_encoder.encode(mixed_texts, sparse=True, colbert=True, batch_size=8)
    assert max(sizes) == 8 and 2 in sizes
    np.testing.assert_allclose(out.dense, ref.dense, atol=TOL)
    assert [s.keys() for s in out.sparse] == [s.keys() for s in ref.sparse]


def test_other_errors_surface_unchanged(m3_encoder, monkeypatch):
    def broken(*a):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(m3_encoder, "_forward", broken)
    with pytest.raises(RuntimeError, match="kernel exploded"):
        m3_encoder.encode(["a", "b", "c"])


def test_thread_safe(m3_encoder, mixed_texts):
    ref = m3_encoder.encode(mixed_texts, sparse=True).dense
    results, errors = {}, []

    def work(k):
        try:
            results[k] = m3_encoder.encode(mixed_texts[k % 3:], sparse=True).dense
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, dense in results.items():
        np.testing.assert_allclose(dense, ref[k % 3:], atol=TOL)


def test_progress_bar(m3_encoder, capsys):
    m3_encoder.encode(["a b c"] * 10, batch_size=2, show_progress=True)
    err = capsys.readouterr().err
    assert "Encoding" in err and "10/10" in err
    m3_encoder.encode(["a b c"] * 10, batch_size=2, show_progress=False)
    assert "Encoding" not in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input

def test_empty_list_gives_empty_outputs(m3_encoder):
    out = m3_encoder.encode([], sparse=True, colbert=True)
    assert out.dense.shape == (0, m3_encoder.hidden_size)
    assert out.sparse == [] and out.colbert == [] and len(out) == 0


def test_empty_string_encodes_like_reference(m3_encoder, flag_model):
    ours = m3_encoder.encode([""], sparse=True, colbert=True)
    ref = flag_model.encode([""], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(ours.dense, ref["dense_vecs"], atol=TOL)
    assert ours.sparse[0] == {} and len(ref["lexical_weights"][0]) == 0
    assert ours.colbert[0].shape == ref["colbert_vecs"][0].shape == (1, m3_encoder.hidden_size)


def test_single_string_is_a_list_of_one(m3_encoder):
    assert m3_encoder.encode("hello").dense.shape == (1, m3_encoder.hidden_size)


@pytest.mark.parametrize("bad, index, typename", [
    (["ok", 3, "ok"], 1, "int"),
    (["ok", None], 1, "NoneType"),
    ([b"bytes"], 0, "bytes"),
])
def test_non_string_item_names_its_index(m3_encoder, bad, index, typename):
    with pytest.raises(TypeError, match=rf"texts\[{index}\] is {typename}, not str"):
        m3_encoder.encode(bad)


@pytest.mark.parametrize("bad", [None, 42, b"raw", {"a": 1}])
def test_texts_of_wrong_type(m3_encoder, bad):
    with pytest.raises(TypeError, match="texts must be a list of strings"):
        m3_encoder.encode(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"max_length": -1}, "max_length must be a positive integer"),
    ({"dense": False}, "nothing to compute"),
])
def test_bad_encode_arguments(m3_encoder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        m3_encoder.encode(["x"], **kwargs)


def test_missing_folder_is_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=rf"model folder '{missing}' does not exist"):
        Encoder(missing)


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a folder"):
        Encoder(str(f))


def test_folder_without_config_is_named(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelLoadError, match=rf"{tmp_path}"):
        Encoder(str(tmp_path), profile="m3")


def test_wrong_type_of_model_argument():
    with pytest.raises(TypeError, match="hub id like 'BAAI/bge-m3' or a local folder"):
        Encoder(123)  # type: ignore[arg-type]


def test_uncached_hub_id_fails_at_once_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        Encoder("BAAI/bge-m3")
    msg = str(info.value)
    assert "'BAAI/bge-m3' is not in the local Hugging Face cache" in msg
    assert "pass that local folder" in msg


def test_uncached_hub_id_without_network_says_so(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(ModelLoadError, match=r"could not be downloaded \(ConnectionError.*If there is no network here"):
        Encoder("someone/some-model")
    assert calls == [True, None]


def test_cached_hub_id_is_used_without_network(monkeypatch, m3_path):
    import huggingface_hub

    def fake_download(repo_id, **kwargs):
        assert kwargs.get("local_files_only") is True, "must look in the cache first"
        return m3_path

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    enc = Encoder("BAAI/bge-m3", device="cpu")
    assert enc.path == m3_path and enc.profile.name == "m3" and enc.model_name == "BAAI/bge-m3"
