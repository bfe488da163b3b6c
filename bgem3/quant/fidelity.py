"""How close a lower-precision encoder stays to fp32: the gates ``dtype="int8"`` is held to.

* :func:`real_passages` — real English prose available offline everywhere Python is: the
  paragraphs of Python's own reference documentation (``pydoc_data.topics``);
* :func:`dense_fidelity` / :func:`colbert_fidelity` / :func:`lexical_fidelity` — cosine to fp32
  per text (or token), score errors;
* :func:`topk_agreement` — the share of fp32's top-k a faster encoder retrieves too.

Gates (docs/encoder.md): dense cosine to fp32 median >= 0.999 and min >= 0.995; top-10
agreement >= 0.95.

Example::

    >>> import numpy as np
    >>> from bgem3.quant.fidelity import topk_agreement
    >>> s = np.random.default_rng(0).normal(size=(4, 50))
    >>> topk_agreement(s, s, k=10)
    1.0
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

#: the gates int8 must pass (median, min dense cosine to fp32; top-10 agreement)
DENSE_COSINE_MEDIAN_GATE = 0.999
DENSE_COSINE_MIN_GATE = 0.995
TOP10_AGREEMENT_GATE = 0.95


def real_passages(n: int = 200, *, min_words: int = 30, offset: int = 0, step: int = 1) -> list[str]:
    """Up to ``n`` real paragraphs (>= ``min_words`` words) of Python's reference documentation.

    ``offset`` / ``step`` pick a deterministic subset (e.g. ``offset=1, step=3`` for a set
    disjoint from ``offset=0, step=3``).
    """
    import pydoc_data.topics as topics

    paras = []
    for key in sorted(topics.topics):
        for p in re.split(r"\n\s*\n", topics.topics[key]):
            p = " ".join(p.split())
            if len(p.split()) >= min_words and not p.startswith(("*", "-", "|", ">>>")):
                paras.append(p)
    return paras[offset::step][:n]


def real_queries(n: int = 50, *, words: int = 10) -> list[str]:
    """``n`` short real queries: the first ``words`` words of paragraphs not in the default passages."""
    return [" ".join(p.split()[:words]) for p in real_passages(n, offset=1, step=7)]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(den, 1e-30)


def dense_fidelity(ref: np.ndarray, other: np.ndarray) -> dict:
    """Per-text cosine of ``other`` to ``ref``: median, min, mean."""
    cos = _cos_rows(ref, other)
    return {"cosine_median": float(np.median(cos)), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def colbert_fidelity(ref: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict:
    """Per-token cosine of ColBERT vectors (same token counts required): median, min, mean."""
    for i, (a, b) in enumerate(zip(ref, other)):
        if a.shape != b.shape:
            raise ValueError(f"ColBERT vectors of text {i} differ in shape: {a.shape} vs {b.shape}")
    cos = _cos_rows(np.concatenate(list(ref)), np.concatenate(list(other)))
    return {"cosine_median": float(np.median(cos)), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def lexical_fidelity(ref: Sequence[dict], other: Sequence[dict]) -> dict:
    """Lexical weights: per-text cosine of the weight vectors (median, min) and token-set overlap."""
    cos, jac = [], []
    for a, b in zip(ref, other):
        keys = sorted(set(a) | set(b))
        va = np.array([a.get(k, 0.0) for k in keys])
        vb = np.array([b.get(k, 0.0) for k in keys])
        den = np.linalg.norm(va) * np.linalg.norm(vb)
        cos.append(float(va @ vb / den) if den > 0 else float(len(a) == len(b) == 0))
        jac.append(len(set(a) & set(b)) / max(1, len(keys)))
    return {"cosine_median": float(np.median(cos)), "cosine_min": float(np.min(cos)),
            "token_jaccard_mean": float(np.mean(jac))}


def topk_agreement(ref_scores: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's top-``k`` under ``ref_scores`` also in the top-``k`` of ``scores``."""
    ref_scores, scores = np.asarray(ref_scores), np.asarray(scores)
    k = min(k, ref_scores.shape[1])
    a = np.argsort(-ref_scores, axis=1, kind="stable")[:, :k]
    b = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
