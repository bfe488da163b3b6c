"""``dtype="int8"``: the fidelity gates on the REAL all-MiniLM-L6-v2 weights and real text, the
BGE-M3 shape's three outputs, the int8 layer itself, and how the option is accepted or refused.

Gates (docs/encoder.md): dense cosine to fp32 median >= 0.999 and min >= 0.995; top-10 retrieval
agreement with fp32 >= 0.95. Speed is not asserted here (benchmarks/encode.py --workloads).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bgem3 import Encoder  # noqa: E402
from bgem3.encoder import dtype_name
from bgem3.encoder import resolve_dtype  # noqa: E402
from bgem3.quant import CALIBRATION_TEXTS, Int8Linear, quantize_linear_layers, smoothing_scales  # noqa: E402
from bgem3.quant import engine  # noqa: E402
from bgem3.quant.fidelity import (DENSE_COSINE_MEDIAN_GATE, DENSE_COSINE_MIN_GATE, TOP10_AGREEMENT_GATE,  # noqa: E402
                                  colbert_fidelity, dense_fidelity, lexical_fidelity, real_passages, real_queries,
                                  topk_agreement)
from bgem3.testing import SAMPLE_CORPUS, make_m3_checkpoint, minilm_path  # noqa: E402


@pytest.fixture(scope="module")
def minilm_pair():
    fp = Encoder(minilm_path(), device="cpu")
    q8 = Encoder(minilm_path(), device="cpu", dtype="int8", backend="torch")  # this file: PyTorch's int8
    return fp, q8


def test_int8_minilm_real_text_passes_the_gates(minilm_pair):
    fp, q8 = minilm_pair
    docs, queries = real_passages(120, offset=0, step=3), real_queries(40)
    d_ref, d8 = fp.encode(docs).dense, q8.encode(docs).dense
    fid = dense_fidelity(d_ref, d8)
    assert fid["cosine_median"] >= DENSE_COSINE_MEDIAN_GATE, fid
    assert fid["cosine_min"] >= DENSE_COSINE_MIN_GATE, fid
    agree = topk_agreement(fp.encode(queries).dense @ d_ref.T, q8.encode(queries).dense @ d8.T, k=10)
    assert agree >= TOP10_AGREEMENT_GATE, agree


def test_int8_encoder_really_runs_int8_and_keeps_the_rest_fp32(minilm_pair):
    _, q8 = minilm_pair
    assert q8.dtype == torch.qint8 and dtype_name(q8.dtype) == "int8"
    n_int8 = sum(isinstance(m, Int8Linear) for m in q8.model.modules())
    n_fp32 = sum(type(m) is torch.nn.Linear for m in q8.model.encoder.modules())
    rep = q8.quantization
    assert n_int8 == rep["int8_layers"] >= 30 and n_fp32 == len(rep["fp32_layers"])
    assert rep["fp32_flop_fraction"] <= 0.15 + 1e-9
    assert all(p.dtype == torch.float32 for p in q8.model.parameters())  # LayerNorm, embeddings
    assert rep["reduce_range"] == (not engine.has_vnni())
    out = q8.encode(["a", "int8 keeps the ranking"])
    assert out.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)


def test_int8_bge_m3_shape_dense_lexical_colbert(tmp_path):
    path = make_m3_checkpoint(str(tmp_path / "m3"), seed=3)
    texts = list(SAMPLE_CORPUS) + real_passages(20)
    ref = Encoder(path, device="cpu").encode(texts, sparse=True, colbert=True)
    got = Encoder(path, device="cpu", dtype="int8", backend="torch").encode(texts, sparse=True, colbert=True)
    dense = dense_fidelity(ref.dense, got.dense)
    # a hidden-32 random-weight toy checks the plumbing of all three outputs; random weights are
    # numerically chaotic (on the 384-wide random M3 shape even ONNX Runtime fp32 is at 0.9995), and
    # the toy differs run to run (the tokenizer trained on the spot is not deterministic: its worst
    # text measured 0.9889-0.9963 over seven trainings), so the M3-shaped gates are held on trained
    # weights below and this minimum only has to show nothing broke
    assert dense["cosine_median"] >= DENSE_COSINE_MEDIAN_GATE and dense["cosine_min"] >= 0.98, dense
    colbert = colbert_fidelity(ref.colbert, got.colbert)
    # per-token minimum over ~1.5k tokens of a 32-wide random toy: measured 0.974-0.996
    assert colbert["cosine_median"] >= 0.999 and colbert["cosine_min"] >= 0.95, colbert
    lexical = lexical_fidelity(ref.sparse, got.sparse)
    assert lexical["cosine_median"] >= 0.995 and lexical["cosine_min"] >= 0.98, lexical


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_int8_trained_m3_shape_passes_the_dense_gates(tmp_path, backend):
    """The BGE-M3 outputs on TRAINED weights (MiniLM's transformer, 6 x 384 like the benchmarks'
    small model, plus M3 heads; CLS dense): PyTorch int8 measured dense median 0.9994 / min 0.9986,
    ColBERT token median 0.9977, lexical median 0.9997 (186 texts). OpenVINO's NNCF int8 graph
    (heads in fp32 after it) is held to the same bounds."""
    from bgem3.testing import make_trained_m3_checkpoint

    if backend == "openvino":
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")

    path = make_trained_m3_checkpoint(str(tmp_path / "m3-trained"))
    texts = list(SAMPLE_CORPUS) + real_passages(60)
    fp = Encoder(path, device="cpu")
    assert fp.profile.name == "m3" and fp.has_heads
    ref = fp.encode(texts, sparse=True, colbert=True)
    got = Encoder(path, device="cpu", dtype="int8", backend=backend).encode(texts, sparse=True, colbert=True)
    dense = dense_fidelity(ref.dense, got.dense)
    assert dense["cosine_median"] >= DENSE_COSINE_MEDIAN_GATE and dense["cosine_min"] >= DENSE_COSINE_MIN_GATE, dense
    colbert = colbert_fidelity(ref.colbert, got.colbert)
    assert colbert["cosine_median"] >= 0.995 and colbert["cosine_min"] >= 0.9, colbert
    lexical = lexical_fidelity(ref.sparse, got.sparse)
    assert lexical["cosine_median"] >= 0.999 and lexical["cosine_min"] >= 0.99, lexical


def test_int8_linear_no_saturation_on_one_sided_inputs():
    """AVX2 (no VNNI) adds two u8 x s8 products in int16: full 8-bit activations would saturate
    on all-large inputs (measured 6.9% error); the default (7-bit there) must stay exact."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 256)
    lin.weight.data = torch.randn(256, 384)
    q = Int8Linear.from_linear(lin, reduce_range=not engine.has_vnni())
    for x in (torch.ones(64, 384), torch.rand(64, 384) * 2 - 0.2, torch.randn(64, 384)):
        ref = lin(x)
        err = float((q(x) - ref).norm() / ref.norm())
        assert err < 0.02, err


def test_smoothing_is_an_identity_before_rounding():
    torch.manual_seed(1)
    w, x = torch.randn(16, 32, dtype=torch.float64), torch.randn(8, 32, dtype=torch.float64)
    x[:, 3] *= 50  # an outlier channel
    s = smoothing_scales(x.abs().amax(0), w, 0.5).double()
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t())
    assert s[3] == s.max()


def test_quantize_reports_and_forces_fp32_layers():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    rep = quantize_linear_layers(model, lambda texts: model(torch.randn(16, 8)), texts=["x"], keep_fp32=["2"],
                                 max_fp32_fraction=1.0)
    assert isinstance(model[0], Int8Linear) and type(model[2]) is torch.nn.Linear
    assert rep["fp32_layers"] == ["2"] and rep["int8_layers"] == 1
    with pytest.raises(ValueError, match="alpha"):
        quantize_linear_layers(model, lambda t: None, alpha=1.5)


def test_int8_dtype_accepted_on_cpu_refused_elsewhere():
    assert resolve_dtype("int8", torch.device("cpu")) == torch.qint8
    assert resolve_dtype("INT8", torch.device("cpu")) == torch.qint8
    with pytest.raises(ValueError, match="int8.*CPU only"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int4", torch.device("cpu"))


def test_no_vnni_warns_and_no_engine_refuses(monkeypatch, caplog):
    monkeypatch.setattr(engine, "int8_cpu_features", lambda: frozenset({"avx2"}))
    engine._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="bgem3.quant.engine"):
        engine.warn_if_slow()
    assert any("VNNI" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="FBGEMM.*dtype='fp32'"):
        engine.select_engine(["qnnpack"])
    engine._warn_once.cache_clear()


def test_calibration_set_is_multilingual():
    text = " ".join(CALIBRATION_TEXTS)
    assert len(CALIBRATION_TEXTS) >= 30
    for probe in ("的", "は", "은", "и", "ü", "é", "¿", "ا", "न", "α", "def "):
        assert probe in text, probe


def test_int8_through_the_adapters(tmp_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_bgem3 import BGEM3Embeddings
    from llama_index_bgem3 import BGEM3Embedding

    path = make_m3_checkpoint(str(tmp_path / "m3a"), seed=4)
    lc = BGEM3Embeddings(model_name=path, model_kwargs={"device": "cpu", "dtype": "int8"})
    assert lc.encoder.dtype == torch.qint8 and len(lc.embed_query("hello")) == 32
    li = BGEM3Embedding(model_name=path, device="cpu", dtype="int8")
    assert li.dtype == "int8" and li.encoder.dtype == torch.qint8
    assert li.encoder is lc.encoder  # shared: same folder, device, dtype
