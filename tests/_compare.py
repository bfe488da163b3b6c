"""Comparison of sparse (lexical) weights between two float32 computations of the same model.

Sparse weights are relu(linear(h)) of the un-normalised last hidden state, so the rounding of two
runs that batch or pad differently (a server splitting a call into requests of 4 + 1, another
thread count) scales with |h|, not with the weight: 5.4e-7 measured for the tiny checkpoint's
weights of at most 0.75, 1.13e-6 in one CI run, where dense (L2-normalised) stays under 1e-6.
The tolerance is the oracle tests' 1e-5, relative above 1. A token whose weight sits at the ReLU
boundary may be present in one run and absent in the other; it must then be within it of 0.
"""

from __future__ import annotations

SPARSE_TOL = 1e-5


def assert_sparse_close(got: dict, want: dict, tol: float = SPARSE_TOL) -> None:
    """Same tokens (up to ~0 weights) with weights within `tol` (relative above 1)."""
    for k in set(got) | set(want):
        g, w = float(got.get(k, 0.0)), float(want.get(k, 0.0))
        assert abs(g - w) <= tol * max(1.0, abs(w)), f"token {k}: {g} != {w} (tolerance {tol}, relative above 1)"


def oom_above(forward, most: int, sizes: list):
    """``forward`` (a model's batch call) that raises torch's out-of-memory error for a batch of more than
    ``most`` inputs, as a GPU short of memory would; every batch size asked is appended to ``sizes``."""
    import torch

    def call(batch_ids, *rest):
        sizes.append(len(batch_ids))
        if len(batch_ids) > most:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(batch_ids, *rest)

    return call
