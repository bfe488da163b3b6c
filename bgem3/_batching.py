"""The local models' batch loop, written once (a leaf: numpy, torch, tqdm).

:class:`bgem3.Encoder` and :class:`bgem3.Reranker` both sort their inputs longest first, cut batches under a
count and a padded-token budget (:func:`plan_batches`), and run them through :func:`run_batches`: one
forward pass per batch, a CUDA out-of-memory error retried as two halves of the batch (down to one input),
any other error raised as it is, and a tqdm bar over the inputs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["is_oom", "plan_batches", "run_batches"]


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (the one error a smaller batch can cure)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return bool(oom_types) and isinstance(exc, oom_types)


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens_per_batch: int
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Sort by length (longest first) and cut batches capped by count (``batch_size``) and padded-token
    budget (``max_tokens_per_batch``; a batch holds at least one input).

    Returns the sort order and ``(start, end)`` slices into it.

    >>> plan_batches(np.array([3, 10, 5]), batch_size=8, max_tokens_per_batch=20)
    (array([1, 2, 0]), [(0, 2), (2, 3)])
    """
    order = np.argsort(-lengths, kind="stable")
    batches = []
    i, n = 0, len(order)
    while i < n:
        longest = int(lengths[order[i]])
        cap = max(1, min(batch_size, max_tokens_per_batch // max(longest, 1)))
        batches.append((i, min(i + cap, n)))
        i += cap
    return order, batches


def progress_bar(batches: list[tuple[int, int]], show_progress: Optional[bool], *, desc: str, unit: str) -> tqdm:
    """The bar over the inputs of ``batches``; ``show_progress=None`` shows it for multi-batch work on a TTY."""
    if show_progress is None:
        show_progress = len(batches) > 1 and sys.stderr.isatty()
    return tqdm(total=int(sum(end - start for start, end in batches)), desc=desc, unit=unit, disable=not show_progress)


def run_batches(order: np.ndarray, batches: list[tuple[int, int]], forward: Callable[[np.ndarray], Any],
                store: Callable[[np.ndarray, Any], None], *, device: Any, show_progress: Optional[bool], desc: str,
                unit: str, log: Optional[logging.Logger] = None) -> None:
    """Run ``forward(idx)`` on each batch's input indices ``idx = order[start:end]``, in order, and hand
    each result to ``store(idx, result)``.

    A CUDA out-of-memory error on a batch of several inputs frees the cache (on a CUDA ``device``) and
    retries the batch as its two halves, first half first (``log`` says so when given); any other error,
    or an out-of-memory on a single input, is raised as it is. ``show_progress=None`` shows the bar for
    multi-batch work on a TTY.
    """
    bar = progress_bar(batches, show_progress, desc=desc, unit=unit)
    try:
        queue = list(batches)
        while queue:
            start, end = queue.pop(0)
            idx = order[start:end]
            try:
                res = forward(idx)
            except Exception as exc:  # only CUDA OOM is retried, with half the batch
                if not is_oom(exc) or end - start == 1:
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                mid = start + (end - start) // 2
                if log is not None:
                    log.warning("out of memory on a batch of %d %s; retrying as %d + %d", end - start, unit + "s",
                                mid - start, end - mid)
                queue[:0] = [(start, mid), (mid, end)]
                continue
            store(idx, res)
            bar.update(end - start)
    finally:
        bar.close()
