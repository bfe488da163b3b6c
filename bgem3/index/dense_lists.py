"""Dense inverted lists of one segment (an IVF partition): the segment's rows grouped by their
nearest centroid, so a query scans the sign bits of the rows in its nearest lists only instead
of every row.

Written once, with the segment (:func:`build_lists` runs in ``write_segment``; a segment never
changes after), for segments of at least :data:`MIN_ROWS` rows; smaller segments (and the
in-memory tail) are scanned whole. Four arrays per segment:

* ``dense_centroids [C, dim] float32``: unit-length means of spherical k-means over the segment's
  dense vectors (C about ``sqrt(n)``, see :func:`n_lists`);
* ``dense_list_ptr [C + 1] int64`` and ``dense_list_rows [n] int32``: the rows of list ``c`` are
  ``dense_list_rows[ptr[c]:ptr[c + 1]]`` (every row of the segment exactly once);
* ``dense_list_bits [n, ceil(dim/8)] uint8``: the rows' sign bits in list order, so the lists a
  query scans are read sequentially (a gather of scattered rows would cost as much as scanning
  every row: memory latency, not bandwidth, bounds it). 128 bytes more per 1024-d row.

Each segment trains its own centroids from its own rows (as Milvus and LanceDB index sealed
segments), so there is no index-wide codebook to train before the first save or to keep in step
with later data; compaction rebuilds the lists of the segments it writes.

A query ranks each segment's centroids by inner product and scans the best
``ceil(probe x C)`` lists (more when a filter or deletions leave fewer rows eligible, see
:func:`lists_to_scan`); the rows found there compete by Hamming distance over all segments
and the best ``shortlist`` are rescored exactly, as in the full scan.

Example::

    >>> import numpy as np
    >>> from bgem3.index.dense_lists import build_lists, probe_positions
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(2000, 16)).astype("float32")
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> lists = build_lists(x, lists=8)
    >>> lists["dense_centroids"].shape, int(lists["dense_list_ptr"][-1])
    ((8, 16), 2000)
    >>> pos = probe_positions(lists["dense_centroids"], lists["dense_list_ptr"], x[0], 2)
    >>> rows = lists["dense_list_rows"][pos]
    >>> bool(0 in rows), len(rows) < 2000
    (True, True)
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .lexical import ranges

__all__ = ["MIN_ROWS", "DEFAULT_PROBE", "LIST_ARRAYS", "n_lists", "build_lists", "lists_to_scan", "probe_lists", "probe_positions",
           "check_lists"]

#: segments with fewer rows get no lists (scanning them whole is as cheap as probing)
MIN_ROWS = 16_384
#: default share of a segment's lists a query scans
DEFAULT_PROBE = 0.2
#: k-means training: at most this many sampled rows per list, this many iterations
TRAIN_ROWS_PER_LIST = 64
ITERATIONS = 10
#: the four arrays (file stems) of a segment's lists
LIST_ARRAYS = ("dense_centroids", "dense_list_ptr", "dense_list_rows", "dense_list_bits")
#: rows assigned per matrix product while building (bounded memory)
_ASSIGN_STEP = 8192


def n_lists(n: int) -> int:
    """Lists for a segment of ``n`` rows: about ``sqrt(n)`` (224 at 50,000 rows), 16 to 1024."""
    return int(min(1024, max(16, round(math.sqrt(n)))))


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    ct = np.ascontiguousarray(centroids.T)
    for a in range(0, len(x), _ASSIGN_STEP):
        out[a:a + _ASSIGN_STEP] = np.argmax(np.asarray(x[a:a + _ASSIGN_STEP], dtype=np.float32) @ ct, axis=1)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def build_lists(dense: np.ndarray, lists: Optional[int] = None, seed: int = 0,
                bits: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Spherical k-means over (a sample of) ``dense [n, dim]`` and every row's list; returns the
    four arrays of :data:`LIST_ARRAYS`. Deterministic for a given ``seed``. A list left empty by
    training is reseeded from the row farthest from its centroid. ``bits``: the rows' stored sign bits
    (computed from ``dense`` if not given)."""
    n = len(dense)
    c = n_lists(n) if lists is None else int(lists)
    c = max(1, min(c, n))
    rng = np.random.default_rng(seed)
    take = min(n, TRAIN_ROWS_PER_LIST * c)
    sample_rows = np.sort(rng.choice(n, size=take, replace=False)) if take < n else np.arange(n)
    sample = _unit(np.asarray(dense[sample_rows], dtype=np.float32))
    centroids = sample[rng.choice(len(sample), size=c, replace=False)].copy()
    for _ in range(ITERATIONS):
        sims = sample @ centroids.T
        assign = np.argmax(sims, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        counts = np.bincount(assign, minlength=c)
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # reseed from the worst-served sample rows
            worst = np.argsort(sims[np.arange(len(sample)), assign])[: len(empty)]
            sums[empty] = sample[worst]
        centroids = _unit(sums)
    assign = _nearest(dense, centroids)
    order = np.argsort(assign, kind="stable").astype(np.int32)
    ptr = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(np.bincount(assign, minlength=c), out=ptr[1:])
    if bits is None:
        bits = np.packbits(np.asarray(dense) > 0, axis=1)
    return {"dense_centroids": np.ascontiguousarray(centroids, dtype=np.float32), "dense_list_ptr": ptr,
            "dense_list_rows": order, "dense_list_bits": np.ascontiguousarray(np.asarray(bits)[order])}


def lists_to_scan(c: int, probe: float, eligible_share: float) -> int:
    """Lists to scan of a segment with ``c`` lists: ``ceil(probe * c)``, divided by the share of
    the segment's rows that are eligible (a filter or deletions), so about as many eligible rows
    are scanned as without them; ``c`` (scan everything) when that reaches half the lists."""
    if eligible_share <= 0:
        return 0
    want = math.ceil(probe * c / eligible_share)
    return c if want * 2 >= c else want


def probe_lists(centroids: np.ndarray, ptr: np.ndarray, q: np.ndarray, nprobe: int,
                scores: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``: the position ranges (in list order) of the ``nprobe`` lists whose
    centroids have the largest inner product with ``q`` (``scores``, when already computed), in
    storage order (reads run forward)."""
    c = len(centroids)
    if nprobe >= c:
        return np.zeros(1, dtype=np.int64), np.asarray(ptr[-1:], dtype=np.int64)
    if scores is None:
        scores = centroids @ q
    best = np.sort(np.argpartition(-scores, nprobe - 1)[:nprobe])
    return np.asarray(ptr[best], dtype=np.int64), np.asarray(ptr[best + 1], dtype=np.int64)


class CentroidTable:
    """The centroids of several segments' lists in one matrix, so a query ranks all of them with one
    matrix-vector product (20 segments of 50k rows: one ``[4480, 1024]`` product, not 20 small ones
    and their overhead). A copy, 4 KB per list at 1024-d, made on the first search over a given set
    of segments (the index makes a new one when its segments change).

    >>> import numpy as np
    >>> class Seg:
    ...     def __init__(self, c): self.c = c
    ...     def dense_lists(self): return None if self.c is None else (self.c, None, None, None)
    >>> segs = [Seg(np.eye(3, dtype="float32")), Seg(None), Seg(np.ones((2, 3), "float32"))]
    >>> t = CentroidTable(segs)
    >>> [None if s is None else s.tolist() for s in t.scores(np.array([1, 2, 3], "float32"))]
    [[1.0, 2.0, 3.0], None, [6.0, 6.0]]
    >>> t.matches(segs), t.matches(segs[:2])
    (True, False)
    """

    def __init__(self, segments: Sequence[Any]) -> None:
        self.segments = list(segments)
        mats: list[np.ndarray] = []
        self.spans: list[Optional[tuple[int, int]]] = []
        at = 0
        for seg in self.segments:
            lists = seg.dense_lists()
            if lists is None:
                self.spans.append(None)
                continue
            mats.append(np.asarray(lists[0], dtype=np.float32))
            self.spans.append((at, at + len(lists[0])))
            at += len(lists[0])
        self.matrix = np.concatenate(mats) if mats else None

    def matches(self, segments: Sequence[Any]) -> bool:
        """Built from exactly these segment objects, in this order."""
        return len(segments) == len(self.segments) and all(a is b for a, b in zip(segments, self.segments))

    def scores(self, q: np.ndarray) -> list[Optional[np.ndarray]]:
        """Per segment, its centroids' inner products with ``q`` (``None`` for one without lists)."""
        s = self.matrix @ q if self.matrix is not None else None
        return [None if sp is None else s[sp[0]:sp[1]] for sp in self.spans]


def probe_positions(centroids: np.ndarray, ptr: np.ndarray, q: np.ndarray, nprobe: int) -> np.ndarray:
    """The positions of :func:`probe_lists`' ranges, one array (index ``dense_list_rows`` /
    ``dense_list_bits`` with them)."""
    starts, ends = probe_lists(centroids, ptr, q, nprobe)
    return ranges(starts, ends - starts)


def check_lists(n: int, dim: int, arrays: dict[str, np.ndarray], bits: Optional[np.ndarray] = None) -> Optional[str]:
    """What is wrong with a segment's lists (``None`` if nothing): shapes, the pointers running
    from 0 to ``n`` and the rows being each of ``0 .. n-1`` exactly once, finite centroids; with
    ``bits`` (the segment's ``dense_bits``) also that the list-order copy equals them (O(n x dim/8),
    done by ``verify``; a wrong copy could only change which rows are rescored, never a score)."""
    cen, ptr, rows, lbits = (arrays[k] for k in LIST_ARRAYS)
    if cen.ndim != 2 or cen.shape[1] != dim or not 1 <= len(cen) <= n:
        return f"dense_centroids has shape {cen.shape}, not (1..{n}, {dim})"
    if ptr.shape != (len(cen) + 1,) or rows.shape != (n,):
        return "dense_list_ptr / dense_list_rows do not match the centroids and the rows"
    if int(ptr[0]) != 0 or int(ptr[-1]) != n or bool((np.diff(ptr) < 0).any()):
        return f"dense_list_ptr does not run from 0 to {n}"
    if n and (int(rows.min()) < 0 or int(rows.max()) >= n or int(np.bincount(rows, minlength=n).max()) != 1):
        return "dense_list_rows is not every row of the segment exactly once"
    if lbits.shape != (n, (dim + 7) // 8):
        return f"dense_list_bits has shape {lbits.shape}, not ({n}, {(dim + 7) // 8})"
    if not np.isfinite(cen).all():
        return "dense_centroids hold NaN or infinity"
    if bits is not None and not np.array_equal(np.asarray(bits)[np.asarray(rows)], lbits):
        return "dense_list_bits do not match dense_bits"
    return None
