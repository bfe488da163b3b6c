"""backend="onnx" / "openvino": the transformer as a graph on ONNX Runtime / OpenVINO, the heads after it.

Exactness: fp32 outputs equal the references (FlagEmbedding's BGEM3FlagModel / FlagModel / FlagLLMModel,
sentence-transformers on the real MiniLM) within 1e-5, as the torch backend's do; the options
sentence-transformers takes (``backend=``, ``model_kwargs={"file_name": ...}``) through Encoder, both
frameworks' classes, the stores, the CLI and the serve batcher.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

from _compare import assert_sparse_close
from bgem3 import Encoder, ModelLoadError
from bgem3.testing import make_bert_checkpoint, make_decoder_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TOL = 1e-5
GRAPH_BACKENDS = ["onnx", "openvino"]
QUERIES = ["what is BGE M3", "capital of France?", "a much longer query about hybrid retrieval and fusion"]
PASSAGES = ["BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
            "Paris is the capital and most populous city of France.", "",
            " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 12)]


pytestmark = pytest.mark.usefixtures("graph_export_cache")  # exports go to a temporary cache


@pytest.fixture(scope="module")
def texts():
    from conftest import MIXED_TEXTS

    return list(MIXED_TEXTS)


# --------------------------------------------------------------------------- exactness: BGE-M3 (all three outputs)

@pytest.fixture(scope="module")
def flag_ref(flag_model, texts):
    return flag_model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True,
                             max_length=128, batch_size=4)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_m3_all_three_outputs_match_flagembedding(m3_path, backend, texts, flag_ref):
    enc = Encoder(m3_path, backend=backend)
    assert enc.backend_name == backend and enc.device.type == "cpu" and enc.graph is not None
    out = enc.encode(texts, dense=True, sparse=True, colbert=True, max_length=128, batch_size=4)
    np.testing.assert_allclose(out.dense, flag_ref["dense_vecs"], atol=TOL, rtol=0)
    for mine, theirs in zip(out.sparse, flag_ref["lexical_weights"]):
        assert_sparse_close(mine, {int(k): float(v) for k, v in theirs.items()})
    for i, (mine, theirs) in enumerate(zip(out.colbert, flag_ref["colbert_vecs"])):
        assert mine.shape == theirs.shape, texts[i]
        np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)
    # one text at a time (batch of 1, no padding) gives the same as the padded batches
    one = enc.encode(texts[:3], dense=True, batch_size=1, max_length=128).dense
    np.testing.assert_allclose(one, flag_ref["dense_vecs"][:3], atol=TOL, rtol=0)


# --------------------------------------------------------------------------- exactness: the other families

def _flag_model(path, pooling):
    from FlagEmbedding import FlagModel

    return FlagModel(path, pooling_method=pooling, query_instruction_for_retrieval="query: ",
                     use_fp16=False, devices="cpu", batch_size=3)


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
    base = make_bert_checkpoint(str(tmp_path_factory.mktemp("bert") / "base"), seed=5)
    out = {}
    for name in ("bge-small-en-v1.5", "e5-small-v2"):
        dst = str(tmp_path_factory.mktemp("fam") / name)
        shutil.copytree(base, dst)
        out[name] = dst
    return out


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("name,pooling", [("bge-small-en-v1.5", "cls"), ("e5-small-v2", "mean")])
def test_bert_families_match_flagmodel(bert_dirs, backend, name, pooling):
    path = bert_dirs[name]
    enc = Encoder(path, backend=backend, batch_size=3)
    assert enc.profile.pooling == pooling
    ref = _flag_model(path, pooling)
    np.testing.assert_allclose(enc.encode(PASSAGES).dense, ref.encode_corpus(PASSAGES), atol=TOL, rtol=0)  # no template


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory):
    def named(name):
        return str(tmp_path_factory.mktemp("dec") / name)
    return {
        "mistral": make_decoder_checkpoint(named("e5-mistral-7b-instruct"), "mistral", padding_side="left"),
        "qwen2": make_decoder_checkpoint(named("gte-Qwen2-1.5B-instruct"), "qwen2", bos=False, padding_side="right",
                                         seed=1),
        "qwen3": make_decoder_checkpoint(named("Qwen3-Embedding-0.6B"), "qwen3", bos=False, padding_side="left", seed=2),
        "gemma2": make_decoder_checkpoint(named("bge-multilingual-gemma2"), "gemma2", padding_side="right", seed=3),
    }


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("arch,fmt", [("mistral", "Instruct: {}\nQuery: {}"), ("qwen2", "Instruct: {}\nQuery: {}"),
                                      ("qwen3", "Instruct: {}\nQuery:{}"), ("gemma2", "<instruct>{}\n<query>{}")])
def test_decoder_last_token_families_match_flagllmmodel(decoder_dirs, backend, arch, fmt):
    from FlagEmbedding import FlagLLMModel

    path = decoder_dirs[arch]
    task = "Given a web search query, retrieve relevant passages that answer the query"
    enc = Encoder(path, backend=backend, batch_size=2)
    assert enc.is_decoder and enc.profile.pooling == "lasttoken"
    ref = FlagLLMModel(path, query_instruction_for_retrieval=task, query_instruction_format=fmt, use_fp16=False,
                       devices="cpu", batch_size=3)
    np.testing.assert_allclose(enc.encode_queries(QUERIES).dense, ref.encode_queries(QUERIES), atol=TOL, rtol=0)
    np.testing.assert_allclose(enc.encode(PASSAGES).dense, ref.encode_corpus(PASSAGES), atol=TOL, rtol=0)  # no template


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_real_minilm_matches_sentence_transformers(minilm, backend):
    from conftest import MIXED_TEXTS
    from sentence_transformers import SentenceTransformer

    texts = list(MIXED_TEXTS) + PASSAGES + QUERIES
    st = SentenceTransformer(minilm, device="cpu")
    ref = st.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    enc = Encoder(minilm, backend=backend, batch_size=16)
    np.testing.assert_allclose(enc.encode(texts).dense, ref, atol=TOL, rtol=0)


# --------------------------------------------------------------------------- which graph runs

def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("onnx", "openvino"))
    return dst


def test_the_folders_own_graph_is_used_and_file_name_picks_another(m3_path, tmp_path, texts):
    from bgem3.backends.export import export_graph

    folder = _copy(m3_path, str(tmp_path / "m3"))
    own = export_graph(folder, "onnx", folder)  # the sentence-transformers / BGE-M3 hub layout: onnx/model.onnx
    assert own == os.path.join(folder, "onnx", "model.onnx")
    enc = Encoder(folder, backend="onnx", model_kwargs={"export": False})
    assert enc.graph.path == own
    alt = os.path.join(folder, "onnx", "other.onnx")
    shutil.copy(own, alt)
    enc2 = Encoder(folder, backend="onnx", model_kwargs={"file_name": "onnx/other.onnx"})
    assert enc2.graph.path == alt
    enc3 = Encoder(folder, backend="onnx", model_kwargs={"file_name": "other.onnx", "subfolder": "onnx"})
    assert enc3.graph.path == alt
    ref = Encoder(folder).encode(texts[:4], sparse=True, colbert=True)
    out = enc2.encode(texts[:4], sparse=True, colbert=True)
    np.testing.assert_allclose(out.dense, ref.dense, atol=TOL, rtol=0)
    with pytest.raises(ModelLoadError, match=r"file_name'\]='onnx/nope.onnx': no such file"):
        Encoder(folder, backend="onnx", model_kwargs={"file_name": "onnx/nope.onnx"})
    with pytest.raises(ModelLoadError, match="inside the model folder"):
        Encoder(folder, backend="onnx", model_kwargs={"file_name": "../m3/onnx/model.onnx"})


def test_a_pickled_encoder_loads_again_on_the_backend_and_graph_it_was_given(m3_path, tmp_path):
    """The engine is a user's choice: an encoder unpickled in another process (the restore path, not the
    live one) runs the same backend, graph file and, for a named torch int8, the same engine."""
    from bgem3.encoder import _restore_encoder

    folder = _copy(m3_path, str(tmp_path / "m3"))
    Encoder(folder, backend="onnx")  # exports the graph into the cache
    enc = Encoder(folder, backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"})
    again = _restore_encoder("no-live-token", *enc._load_spec())
    assert again is not enc and again.backend_name == "onnx" and again.graph.path == enc.graph.path
    ov = Encoder(folder, backend="openvino")
    assert _restore_encoder("no-live-token", *ov._load_spec()).backend_name == "openvino"
    torch_int8 = Encoder(folder, dtype="int8", backend="torch")
    assert _restore_encoder("no-live-token", *torch_int8._load_spec()).backend_name == "torch"


def test_export_once_into_the_cache_then_reuse(m3_path, tmp_path, monkeypatch):
    from bgem3.backends import export as export_mod

    folder = _copy(m3_path, str(tmp_path / "m3"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("BGEM3_CACHE_DIR", str(cache))
    with pytest.raises(ModelLoadError, match="export'\\] is False"):
        Encoder(folder, backend="openvino", model_kwargs={"export": False})
    enc = Encoder(folder, backend="openvino")
    assert enc.graph.path.startswith(str(cache / "exports")) and enc.graph.path.endswith("openvino_model.xml")
    calls = []
    real = export_mod._export_openvino
    monkeypatch.setattr(export_mod, "_export_openvino", lambda *a: calls.append(a) or real(*a))
    again = Encoder(folder, backend="openvino")
    assert again.graph.path == enc.graph.path and calls == []  # reused, not exported again
    Encoder(folder, backend="openvino", model_kwargs={"export": True})
    assert len(calls) == 1  # export=True exports even when a graph is there
    assert not os.path.exists(os.path.join(folder, "openvino"))  # the model folder is not written to


def test_int8_export_and_file_name_from_the_cache(m3_path, tmp_path, monkeypatch):
    from bgem3.backends.export import cached_graph

    folder = _copy(m3_path, str(tmp_path / "m3"))
    monkeypatch.setenv("BGEM3_CACHE_DIR", str(tmp_path / "cache"))
    q = cached_graph(folder, "onnx", quantize="int8")
    assert q.endswith(os.path.join("onnx", "model_qint8.onnx"))
    enc = Encoder(folder, backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"})
    assert enc.graph.path == q
    ref = Encoder(folder).encode(PASSAGES).dense
    got = enc.encode(PASSAGES).dense
    cos = (got * ref).sum(1)
    assert cos.min() > 0.9 and np.abs(got - ref).max() > TOL  # int8: close, and really not the fp32 graph


# --------------------------------------------------------------------------- refusals

def test_options_are_checked_by_name(m3_path):
    with pytest.raises(ValueError, match="backend='ipex' is not one of"):
        Encoder(m3_path, backend="ipex")
    with pytest.raises(ValueError, match=r"\['opset'\], which backend='onnx' does not take"):
        Encoder(m3_path, backend="onnx", model_kwargs={"opset": 17})
    with pytest.raises(ValueError, match="backend='torch' takes none"):
        Encoder(m3_path, model_kwargs={"file_name": "onnx/model.onnx"})
    with pytest.raises(TypeError, match="export'\\] must be True, False or None"):
        Encoder(m3_path, backend="onnx", model_kwargs={"export": "yes"})
    with pytest.raises(ValueError, match="dtype='int8' with backend='onnx'"):
        Encoder(m3_path, backend="onnx", dtype="int8")
    with pytest.raises(ValueError, match="dtype='bf16' with backend='onnx'"):
        Encoder(m3_path, backend="onnx", dtype="bf16")
    with pytest.raises(ModelLoadError, match="provider.*not available"):
        Encoder(m3_path, backend="onnx", model_kwargs={"provider": "NoSuchExecutionProvider"})


@pytest.mark.parametrize("backend,module,extra", [("onnx", "onnxruntime", "bgem3[onnx]"),
                                                  ("openvino", "openvino", "bgem3[openvino]")])
def test_missing_runtime_names_the_extra(m3_path, monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=rf"pip install '{extra}'.*backend='torch'".replace("[", r"\[").replace("]", r"\]")):
        Encoder(m3_path, backend=backend)


def test_a_graph_with_the_heads_inside_is_refused(m3_path, tmp_path):
    """aapot/bge-m3-onnx style graphs output dense_vecs / sparse_vecs / colbert_vecs: not hidden states."""
    import onnx
    from onnx import TensorProto, helper

    folder = _copy(m3_path, str(tmp_path / "m3"))
    os.makedirs(os.path.join(folder, "onnx"))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["dense_vecs"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["attention_mask"], ["sparse_vecs"], to=TensorProto.FLOAT)], "heads",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("dense_vecs", TensorProto.FLOAT, ["b", "t"]),
         helper.make_tensor_value_info("sparse_vecs", TensorProto.FLOAT, ["b", "t"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), os.path.join(folder, "onnx", "model.onnx"))
    for backend in GRAPH_BACKENDS:
        with pytest.raises(ModelLoadError, match="heads already applied inside it"):
            Encoder(folder, backend=backend, model_kwargs={"file_name": "onnx/model.onnx"})


def test_openvino_bf16_is_asked_for_not_assumed(m3_path, texts):
    fp32 = Encoder(m3_path, backend="openvino")
    assert fp32.graph.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    with pytest.raises(ModelLoadError, match="INFERENCE_PRECISION_HINT"):
        Encoder(m3_path, backend="openvino", model_kwargs={"ov_config": {"INFERENCE_PRECISION_HINT": "bf16"}})


# --------------------------------------------------------------------------- everything that loads an encoder

def test_frameworks_take_backend_and_model_kwargs_as_sentence_transformers_does(m3_path, tmp_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from bgem3._loading import clear_encoder_cache
    from bgem3.backends.export import export_graph
    from langchain_bgem3 import BGEM3Embeddings
    from llama_index_bgem3 import BGEM3Embedding

    folder = _copy(m3_path, str(tmp_path / "m3"))
    graph = export_graph(folder, "onnx", folder)
    shutil.move(graph, os.path.join(folder, "onnx", "model_x.onnx"))
    clear_encoder_cache()
    # langchain-huggingface: HuggingFaceEmbeddings(model_kwargs={"backend": ..., "model_kwargs": {"file_name": ...}})
    lc = BGEM3Embeddings(model_name=folder, model_kwargs={"device": "cpu", "backend": "onnx",
                                                          "model_kwargs": {"file_name": "onnx/model_x.onnx"}})
    assert lc.encoder.backend_name == "onnx" and lc.encoder.graph.path.endswith("model_x.onnx")
    # LlamaIndex: HuggingFaceEmbedding(model_name, backend="onnx", model_kwargs={"file_name": ...})
    li = BGEM3Embedding(folder, device="cpu", backend="onnx", model_kwargs={"file_name": "onnx/model_x.onnx"})
    assert li.encoder.backend_name == "onnx" and li.encoder.graph.path.endswith("model_x.onnx")
    ref = Encoder(folder).encode_documents(PASSAGES[:2]).dense
    np.testing.assert_allclose(np.asarray(lc.embed_documents(PASSAGES[:2])), ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(li.get_text_embedding_batch(PASSAGES[:2])), ref, atol=TOL, rtol=0)


def test_hybrid_index_takes_the_backend(m3_path, tmp_path):
    from bgem3 import HybridIndex

    idx = HybridIndex(m3_path, backend="openvino")
    assert idx.encoder.backend_name == "openvino"
    idx.add(PASSAGES[:2])
    hits = idx.search("BGE M3 embedding model", k=1)
    assert hits and "BGE M3" in hits[0].text


def test_serve_batcher_runs_the_public_forward_batch(m3_path, texts):
    import asyncio

    from bgem3.serve.scheduler import Batcher

    enc = Encoder(m3_path, backend="onnx")
    called = []
    real = enc.forward_batch
    enc.forward_batch = lambda *a, **k: called.append(len(a[0])) or real(*a, **k)
    ids = enc.tokenize(texts[:5])
    b = Batcher(enc)
    b.start()
    try:
        res = asyncio.run(b.submit(ids, dense=True, sparse=True, colbert=False))
    finally:
        b.stop()
    ref = enc.encode(texts[:5], sparse=True)
    assert called == [5] and np.abs(res.dense - ref.dense).max() <= TOL
    for a, w in zip(res.sparse, ref.sparse):
        assert_sparse_close(a, w)


def test_cli_export_and_embed_with_backend(m3_path, tmp_path, capsys):
    from bgem3.cli import main

    folder = _copy(m3_path, str(tmp_path / "m3"))
    assert main(["export", folder, "--backend", "onnx", "--output", folder, "-q"]) == 0
    assert os.path.isfile(os.path.join(folder, "onnx", "model.onnx"))
    capsys.readouterr()
    out = tmp_path / "o.npy"
    assert main(["embed", "--model", folder, "--backend", "onnx", "-q", "--as", "raw", "-o", str(out)] + PASSAGES[:2]) == 0
    np.testing.assert_allclose(np.load(out), Encoder(folder).encode(PASSAGES[:2]).dense, atol=TOL, rtol=0)
    assert main(["embed", "--model", folder, "--backend-file", "onnx/model.onnx", "-q", "x"]) != 0
    err = capsys.readouterr().err
    assert "--backend-file" in err
    assert main(["export", folder, "--backend", "onnx", "--calibration", str(out), "-q"]) != 0
    assert "calibration texts are for --backend openvino --quantize int8" in capsys.readouterr().err


def test_cli_export_openvino_int8_with_a_calibration_file(m3_path, tmp_path, capsys):
    """`bgem3 export --backend openvino --quantize int8 --calibration FILE`: NNCF's int8 graph (+ how it was
    made, beside it) that backend='openvino', dtype='int8' then runs; a file too small is refused by name."""
    pytest.importorskip("nncf")
    import json

    from bgem3.cli import main

    folder = _copy(m3_path, str(tmp_path / "m3"))
    few = tmp_path / "few.txt"
    few.write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    assert main(["export", folder, "--backend", "openvino", "--quantize", "int8", "--output", folder,
                 "--calibration", str(few), "-q"]) != 0
    assert "has 3 non-empty texts; give at least 16" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(folder, "openvino"))  # refused before the export
    calib = tmp_path / "calib.txt"
    calib.write_text(("\n".join(PASSAGES[:2] + QUERIES) + "\n") * 5, encoding="utf-8")
    assert main(["export", folder, "--backend", "openvino", "--quantize", "int8", "--output", folder,
                 "--calibration", str(calib)]) == 0
    graph = os.path.join(folder, "openvino", "openvino_model_qint8_quantized.xml")
    assert capsys.readouterr().out.strip() == graph and os.path.isfile(graph[:-4] + ".bin")
    with open(graph[:-4] + ".json", encoding="utf-8") as fh:
        made = json.load(fh)
    assert made["calibration_texts"] == 25 and len(made["kept_out_of_int8"]) == 4  # 2 blocks x (FFN down, attention out)
    enc = Encoder(folder, backend="openvino", dtype="int8", model_kwargs={"file_name": os.path.basename(graph)})
    assert enc.graph.path == graph and enc.quantization["calibration_texts"] == 25
    with open(graph, encoding="utf-8") as fh:
        assert fh.read().count('type="FakeQuantize"') >= 8  # int8 inside the graph, not an fp32 copy
    ref = Encoder(folder).encode(PASSAGES, sparse=True, colbert=True)
    got = enc.encode(PASSAGES, sparse=True, colbert=True)
    assert ((got.dense * ref.dense).sum(1)).min() > 0.9 and np.abs(got.dense - ref.dense).max() > TOL
    assert [len(c) for c in got.colbert] == [len(c) for c in ref.colbert]
    assert [set(a) & set(b) for a, b in zip(got.sparse, ref.sparse)] != [set()] * len(PASSAGES)


def test_openvino_int8_passes_the_fidelity_gates_on_real_minilm(minilm):
    """NNCF's static int8 graph (built-in calibration texts; feed-forward down-projections and attention
    output projections kept out of int8) keeps the project's gates on the real MiniLM and real text, the reST tables that broke
    the min gate before included; ONNX Runtime's dynamic int8 does not (docs/benchmarks_encode.md)."""
    pytest.importorskip("nncf")
    from bgem3.quant.fidelity import (DENSE_COSINE_MEDIAN_GATE, DENSE_COSINE_MIN_GATE, TOP10_AGREEMENT_GATE,
                                      dense_fidelity, real_passages, real_queries, topk_agreement)

    fp = Encoder(minilm)
    q8 = Encoder(minilm, backend="openvino", dtype="int8")
    assert q8.graph.path.endswith("openvino_model_qint8_quantized.xml") and q8.quantization["engine"] == "openvino"
    kept = q8.quantization["kept_out_of_int8"]
    assert len(kept) == 12 and sum("output.dense" in k for k in kept) == 12 and q8.quantization["calibration_texts"] >= 250
    every = real_passages(300)
    tables = [p for p in every if p.startswith("+----")]  # reST ASCII tables: the hardest texts found
    assert len(tables) >= 3
    docs, queries = real_passages(120, offset=0, step=3) + tables, real_queries(40)
    d_ref, d = fp.encode(docs).dense, q8.encode(docs).dense
    fid = dense_fidelity(d_ref, d)
    assert fid["cosine_median"] >= DENSE_COSINE_MEDIAN_GATE and fid["cosine_min"] >= DENSE_COSINE_MIN_GATE, fid
    assert fid["cosine_median"] < 0.99999  # really int8 (bf16 alone is at 0.99999)
    agree = topk_agreement(fp.encode(queries).dense @ d_ref.T, q8.encode(queries).dense @ d.T, k=10)
    assert agree >= TOP10_AGREEMENT_GATE, agree


def test_openvino_bf16_passes_the_fidelity_gates_on_real_minilm(minilm):
    """dtype='bf16' on OpenVINO (bf16 inference precision, heads/pooling fp32) keeps the project's
    gates on the real MiniLM weights and real text, as the torch int8/bf16 paths must."""
    from bgem3.quant.fidelity import (DENSE_COSINE_MEDIAN_GATE, DENSE_COSINE_MIN_GATE, TOP10_AGREEMENT_GATE,
                                      dense_fidelity, real_passages, real_queries, topk_agreement)

    fp = Encoder(minilm)
    bf = Encoder(minilm, backend="openvino", dtype="bf16")
    assert bf.graph.precision == "bf16"
    docs, queries = real_passages(120, offset=0, step=3), real_queries(40)
    d_ref, d = fp.encode(docs).dense, bf.encode(docs).dense
    fid = dense_fidelity(d_ref, d)
    assert fid["cosine_median"] >= DENSE_COSINE_MEDIAN_GATE and fid["cosine_min"] >= DENSE_COSINE_MIN_GATE, fid
    agree = topk_agreement(fp.encode(queries).dense @ d_ref.T, bf.encode(queries).dense @ d.T, k=10)
    assert agree >= TOP10_AGREEMENT_GATE, agree


def test_a_folder_with_only_a_graph_runs_on_the_graph_backends(m3_path, tmp_path, texts):
    """An export-only folder (config, tokenizer, heads, onnx/model.onnx; no PyTorch weights) runs with
    backend='onnx' (no torch weights are needed); backend='torch' refuses it and names the alternative."""
    from bgem3.backends.export import export_graph

    folder = _copy(m3_path, str(tmp_path / "m3"))
    export_graph(folder, "onnx", folder)
    ref = Encoder(folder).encode(texts[:4], sparse=True, colbert=True)
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(folder, f))
    with pytest.raises(ModelLoadError, match="backend='onnx'"):
        Encoder(folder)
    out = Encoder(folder, backend="onnx").encode(texts[:4], sparse=True, colbert=True)
    np.testing.assert_allclose(out.dense, ref.dense, atol=TOL, rtol=0)
    for a, b in zip(out.colbert, ref.colbert):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    with pytest.raises(ModelLoadError, match="Exporting needs the weights"):
        Encoder(folder, backend="openvino")  # no graph for it and nothing to export from


# --------------------------------------------------------------------------- dtype picks the engine

def test_bf16_without_a_backend_picks_openvino_where_it_is_fast_and_says_so(m3_path, monkeypatch, caplog):
    import logging

    from bgem3 import encoder as encoder_mod
    from bgem3.backends import export as export_mod

    monkeypatch.setattr(encoder_mod, "cpu_has_fast_bf16", lambda: True)
    with caplog.at_level(logging.INFO, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="bf16")
    assert enc.backend_name == "openvino" and enc.graph.precision == "bf16"
    assert any("dtype='bf16' runs on OpenVINO" in r.getMessage() for r in caplog.records)
    assert Encoder(m3_path, dtype="bf16", backend="torch").graph is None  # asked for: kept
    # a CPU without native bf16: PyTorch, said once
    monkeypatch.setattr(encoder_mod, "cpu_has_fast_bf16", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="bf16")
    assert enc.backend_name == "torch" and enc.graph is None
    assert any("runs on PyTorch" in r.getMessage() for r in caplog.records)
    # where the graph cannot be made, the chosen-for-speed path falls back to PyTorch (never fails)
    monkeypatch.setattr(encoder_mod, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("BGEM3_CACHE_DIR", str(m3_path) + "-nocache")

    def broken(*a, **k):
        raise ValueError("cannot export this one")
    monkeypatch.setattr(export_mod, "_export_openvino", broken)
    with caplog.at_level(logging.WARNING, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="bf16")
    assert enc.backend_name == "torch" and next(enc.model.parameters()).dtype.is_floating_point
    assert any("cannot export this one" in r.getMessage() for r in caplog.records)
    assert enc.encode(["hello"]).dense.shape[0] == 1


def test_int8_without_a_backend_picks_openvino_on_vnni_cpus_and_says_so(m3_path, monkeypatch, caplog):
    """dtype='int8': the NNCF graph on OpenVINO where VNNI makes it the fastest gated int8 (one log line),
    PyTorch's SmoothQuant int8 without VNNI or without NNCF (also said)."""
    pytest.importorskip("nncf")
    import logging

    from bgem3.quant import engine

    monkeypatch.setattr(engine, "has_vnni", lambda: True)
    with caplog.at_level(logging.INFO, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="int8")
    assert enc.backend_name == "openvino" and enc.quantization["engine"] == "openvino"
    assert enc.graph.path.endswith("openvino_model_qint8_quantized.xml")
    said = [r.getMessage() for r in caplog.records if "dtype='int8' runs on" in r.getMessage()]
    assert len(said) == 1 and "runs on OpenVINO" in said[0] and "NNCF" in said[0]
    out = enc.encode(PASSAGES, sparse=True, colbert=True)
    assert out.dense.shape[0] == len(PASSAGES) and len(out.colbert) == len(PASSAGES)
    monkeypatch.setattr(engine, "has_vnni", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="int8")
    assert enc.backend_name == "torch" and enc.quantization["int8_layers"] > 0
    assert any("dtype='int8' runs on PyTorch" in r.getMessage() and "no VNNI" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(engine, "has_vnni", lambda: True)
    monkeypatch.setitem(sys.modules, "nncf", None)  # not installed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bgem3.encoder"):
        enc = Encoder(m3_path, dtype="int8")
    assert enc.backend_name == "torch"
    assert any("pip install 'bgem3[openvino]'" in r.getMessage() for r in caplog.records)


def test_openvino_int8_without_nncf_names_the_extra(m3_path, tmp_path, monkeypatch):
    from bgem3.backends.export import export_graph

    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match=r"pip install 'bgem3\[openvino\]'"):
        export_graph(m3_path, "openvino", str(tmp_path / "out"), quantize="int8")
    assert not os.path.exists(tmp_path / "out")  # refused before the export
