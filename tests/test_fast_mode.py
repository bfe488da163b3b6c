"""The opt-in fast CPU mode (``dtype="bf16"``) stays within its documented accuracy bounds.

Bounds (vs the exact fp32 encoder): dense cosine >= 0.99, ColBERT token-vector cosine >= 0.99,
lexical scores within 5% of the largest score, top-5 dense rankings mostly unchanged. Speed is
not asserted here (it lives in benchmarks/encode.py).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bgem3.encoder as encoder_mod  # noqa: E402
from bgem3 import Encoder  # noqa: E402
from bgem3.scoring import colbert_scores, lexical_scores  # noqa: E402
from bgem3.testing import SAMPLE_CORPUS, make_m3_checkpoint, minilm_path  # noqa: E402

TEXTS = list(SAMPLE_CORPUS) + [
    "a",
    " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 15),
    "LangChain 에 대해서 알려주세요. " * 6,
]


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("fast-m3")), seed=1)


@pytest.fixture(scope="module")
def both(m3_dir):
    ref = Encoder(m3_dir, device="cpu").encode(TEXTS, sparse=True, colbert=True)
    fast_enc = Encoder(m3_dir, device="cpu", dtype="bf16", backend="torch")  # PyTorch's bf16 path
    return ref, fast_enc, fast_enc.encode(TEXTS, sparse=True, colbert=True)


def test_bf16_mode_runs_in_bf16_and_returns_float32(both):
    _, fast_enc, fast = both
    assert fast_enc.dtype.is_floating_point and str(fast_enc.dtype) == "torch.bfloat16"
    assert next(fast_enc.model.parameters()).dtype == fast_enc.dtype
    assert fast.dense.dtype == np.float32 and fast.colbert[0].dtype == np.float32
    # normalised in fp32: unit norm to fp32 precision, not bf16's ~1e-2
    np.testing.assert_allclose(np.linalg.norm(fast.dense, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fast.colbert[0], axis=1), 1.0, atol=1e-5)


def test_bf16_dense_cosine_to_fp32(both):
    ref, _, fast = both
    cos = np.sum(ref.dense * fast.dense, axis=1)
    assert cos.min() >= 0.99, cos.min()


def test_bf16_colbert_vectors_close(both):
    ref, _, fast = both
    for a, b in zip(ref.colbert, fast.colbert):
        assert a.shape == b.shape
        if len(a):
            assert np.sum(a * b, axis=1).min() >= 0.99


def test_bf16_lexical_weights_and_scores_close(both):
    ref, _, fast = both
    for a, b in zip(ref.sparse, fast.sparse):
        top = max(a.values(), default=1.0)
        # a token may only appear/disappear if its weight is ~0 (relu at the boundary)
        for k in set(a) ^ set(b):
            assert max(a.get(k, 0.0), b.get(k, 0.0)) <= 0.05 * top
        for k in set(a) & set(b):
            assert abs(a[k] - b[k]) <= 0.05 * top
    s_ref = np.asarray(lexical_scores(ref.sparse, ref.sparse))
    s_fast = np.asarray(lexical_scores(fast.sparse, fast.sparse))
    assert np.abs(s_ref - s_fast).max() <= 0.05 * np.abs(s_ref).max()


def test_bf16_colbert_scores_close(both):
    ref, _, fast = both
    s_ref = np.stack([colbert_scores(q, ref.colbert) for q in ref.colbert[:8]])
    s_fast = np.stack([colbert_scores(q, fast.colbert) for q in fast.colbert[:8]])
    assert np.abs(s_ref - s_fast).max() <= 0.02


def test_bf16_dense_rankings_mostly_unchanged(both):
    ref, _, fast = both
    k = 5
    top_ref = np.argsort(-(ref.dense @ ref.dense.T), axis=1)[:, :k]
    top_fast = np.argsort(-(fast.dense @ fast.dense.T), axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_fast)])
    assert overlap >= 0.9, overlap
    assert (top_ref[:, 0] == top_fast[:, 0]).all()  # each text still finds itself first


def test_bf16_on_real_minilm_weights():
    """Random weights can hide outlier activations; the real MiniLM must hold the bound too."""
    path = minilm_path()
    ref = Encoder(path, device="cpu").encode(TEXTS).dense
    fast = Encoder(path, device="cpu", dtype="bf16").encode(TEXTS).dense
    assert np.sum(ref * fast, axis=1).min() >= 0.99


def test_cpu_bf16_detection_matches_cpuinfo():
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        assert encoder_mod.cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    else:
        assert isinstance(encoder_mod.cpu_has_fast_bf16(), bool)


def test_bf16_without_cpu_support_warns(m3_dir, monkeypatch, caplog):
    monkeypatch.setattr(encoder_mod, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="bgem3.encoder"):
        Encoder(m3_dir, device="cpu", dtype="bf16")
    assert any("avx512_bf16" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bgem3.encoder"):
        Encoder(m3_dir, device="cpu")  # fp32: no warning
    assert not any("avx512_bf16" in r.getMessage() for r in caplog.records)
