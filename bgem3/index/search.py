"""Search over segments: dense candidates (exact, or a sign-bit Hamming shortlist rescored
exactly), lexical candidates (the channel's postings), ColBERT MaxSim through the codec, fusion.

The candidate rule is the BGE-M3 paper's and FlagEmbedding's: the dense top-``candidates``
united with the lexical top-``candidates`` (rows that share at least one term); every
candidate gets every channel's score and the weighted mean (or RRF) ranks them.

Dense path: the exact scan of every stored row, or (where :func:`dense_path` estimates it cheaper,
or above a user's ``exact_dense_rows``) the dense top-N is found by
Hamming distance over the stored sign bits (``dim/8`` bytes per row; faiss's popcount kernel when
faiss is installed, numpy otherwise) of the rows in each segment's nearest inverted lists
(:mod:`bgem3.index.dense_lists`; every row of a segment without lists), the best ``shortlist``
rows are rescored exactly from the stored dense vectors, and the top-N of those are the dense
candidates.

Example::

    >>> import numpy as np
    >>> from bgem3.index.search import effective_weights
    >>> effective_weights((0.4, 0.2, 0.4), ("dense", "colbert"))
    (0.4, 0.0, 0.4)
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from ..scoring import rank
from .codecs import ColbertCodec
from .dense_lists import DEFAULT_PROBE, CentroidTable, lists_to_scan, probe_lists
from .errors import IndexFormatError
from .lexical import ranges
from .segment import Segment

__all__ = ["effective_weights", "dense_exact", "dense_costs", "dense_path", "dense_candidates", "colbert_scores", "top_positive", "fuse"]

CHANNELS = ("dense", "lexical", "colbert")
#: float values gathered and converted per scoring chunk (64 MiB of float32)
CHUNK_VALUES = 1 << 24
#: quantised ColBERT codecs, weighted fusion, more candidates than this: every candidate is first
#: scored with the cheap MaxSim estimate (an eighth of the rotated coordinates) and only this many,
#: the best by estimated fused score, get the full MaxSim (the others cannot reach the top-k)
DEFAULT_COLBERT_RERANK = 32
#: the default shortcut widens once ColBERT's share of the fused weight passes this: the estimate
#: then decides most of the ranking, and its error costs recall (see :func:`adaptive_rerank`)
RERANK_WIDEN_SHARE = 0.5


def adaptive_rerank(base: int, weights: Sequence[float]) -> int:
    """How many candidates get the full MaxSim by default, given the (effective) fused weights:
    ``base`` while ColBERT weighs at most half of the total (the dense and lexical scores, exact,
    carry the ranking and the estimate only has to keep the top in); above that
    ``base * share / (1 - share)`` (ColBERT 0.7: 75; 0.9: 288); ``0`` (every candidate) when
    ColBERT is the only weighted channel. Measured on real MiniLM token vectors in docs/index.md."""
    total = float(sum(weights))
    share = float(weights[2]) / total if total > 0 else 0.0
    if share <= RERANK_WIDEN_SHARE:
        return base
    if share >= 1.0:
        return 0
    return int(math.ceil(round(base * share / (1.0 - share), 6)))

def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: threads one search's ColBERT MaxSim is split over (its matrix products release the GIL); 1 on
#: a one-core machine. Searches never run concurrently on one index (its lock), so this is the
#: whole of a search's parallelism.
SEARCH_THREADS = min(2, _cores())
#: fewer coded tokens than this are scored on the calling thread alone
SPLIT_MIN_TOKENS = 4096
_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


_HELPER_NAME = "bgem3-search"


def _helper() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_HELPER_NAME)
        return _pool


def _forget_helper() -> None:
    """In a forked child the helper thread does not exist: start a new one on first use (a
    search in the child would otherwise wait for it forever)."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def _can_use_helper() -> bool:
    """A second core exists and this is not the helper itself (it never waits on itself)."""
    return SEARCH_THREADS >= 2 and not threading.current_thread().name.startswith(_HELPER_NAME)


try:  # optional fast Hamming kernel
    import faiss as _faiss  # type: ignore

    _hammings = getattr(_faiss, "hammings", None)
except Exception:  # pragma: no cover - faiss absent or broken
    _faiss = None
    _hammings = None


try:  # optional: hold BLAS at one thread during a search
    from threadpoolctl import ThreadpoolController as _ThreadpoolController
except Exception:  # pragma: no cover - threadpoolctl absent
    _ThreadpoolController = None

_blas_lock = threading.Lock()
_blas_state: dict = {"users": 0, "controller": None, "limiter": None}


class one_blas_thread:
    """BLAS at one thread for the duration of a search (re-entrant across threads; the previous
    setting comes back when the last search leaves). A search's matrix products are small
    (``[<=1024 tokens, dim] x [dim, query tokens]``): a second BLAS thread gains little on them and,
    on a busy machine, its spin-waiting costs far more. Needs ``threadpoolctl``; a no-op without it."""

    def __enter__(self) -> None:
        if _ThreadpoolController is None:
            return
        with _blas_lock:
            st = _blas_state
            if st["users"] == 0:
                try:
                    if st["controller"] is None:
                        st["controller"] = _ThreadpoolController().select(user_api="blas")
                    st["limiter"] = st["controller"].limit(limits=1)
                except Exception:  # pragma: no cover - a BLAS threadpoolctl cannot drive
                    st["limiter"] = None
            st["users"] += 1

    def __exit__(self, *exc: object) -> None:
        if _ThreadpoolController is None:
            return
        with _blas_lock:
            st = _blas_state
            st["users"] -= 1
            if st["users"] == 0 and st["limiter"] is not None:
                st["limiter"].restore_original_limits()
                st["limiter"] = None


class _faiss_one_thread:
    """faiss's OpenMP team at one thread for one call (a one-query scan gains nothing from a second
    thread, and on a busy machine the idle thread's barrier costs milliseconds); restored after."""

    def __enter__(self) -> None:
        self.n = _faiss.omp_get_max_threads()
        if self.n != 1:
            _faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.n != 1:
            _faiss.omp_set_num_threads(self.n)


def effective_weights(w: Sequence[float], channels: Sequence[str]) -> tuple[float, float, float]:
    """The weights of the channels the index holds (absent channels weigh 0); refuses weights that
    give every present channel 0."""
    eff = tuple(float(x) if c in channels else 0.0 for x, c in zip(w, CHANNELS))
    if sum(eff) == 0:
        raise ValueError(f"weights {tuple(w)} give weight 0 to every channel this index holds ({list(channels)}); "
                         "give at least one of them a positive weight")
    return eff  # type: ignore[return-value]


def dense_exact(seg: Segment, q: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact dot products of ``q`` with the segment's stored dense vectors (all rows or ``rows``)."""
    d = seg.array("dense")
    if rows is not None:
        return (seg.take("dense", rows).astype(np.float32, copy=False) @ q).astype(np.float32)
    if d.dtype == np.float32:
        return np.asarray(d @ q, dtype=np.float32)
    step = max(1, CHUNK_VALUES // max(d.shape[1], 1))
    out = np.empty(len(d), dtype=np.float32)
    for a in range(0, len(d), step):
        out[a:a + step] = np.asarray(d[a:a + step], dtype=np.float32) @ q
    return out


#: the dense cost model (:func:`dense_path`), in nanoseconds, fitted to benchmarks/dense_path_cost.py on
#: a 2-core VM at one thread (docs/benchmarks_index.md, "Exact scan or Hamming path"): the exact scan
#: per stored value (float16 rows are converted to float32 first: ~25x a float32 value, which is read
#: from cache at these sizes), the Hamming scan per sign-bit byte, the rescoring per value of a
#: gathered shortlist row, and the Hamming path's fixed part
EXACT_NS_PER_VALUE = {"float32": 0.06, "float16": 1.55}
HAMMING_NS_PER_BYTE = 0.15
RESCORE_NS_PER_VALUE = {"float32": 0.19, "float16": 1.5}
HAMMING_FIXED_NS = 30_000.0
#: below this many eligible rows a search that lets the cost model choose scans every row's sign
#: bits (``dense_probe`` = 1) instead of probing the inverted lists: the lists keep 0.96-0.97 of the
#: exact top-10 on 20,000 real MiniLM vectors at probe 0.2, a price paid for speed at scale only; the
#: full bit scan keeps 0.997-1.0 of it at 5,000-50,000 rows (docs/benchmarks_index.md)
COST_RULE_ROWS = 50_000


def dense_costs(rows: int, eligible: int, shortlist: int, dim: int, codec: str) -> tuple[float, float]:
    """Estimated ``(exact, hamming)`` nanoseconds of the dense candidates over ``rows`` stored rows of
    which ``eligible`` can be returned: the exact scan reads every stored value; the Hamming path
    reads every row's ``dim/8`` sign-bit bytes and rescores ``min(shortlist, eligible)`` gathered rows.

    >>> e, h = dense_costs(10_000, 10_000, 1000, 1024, "float16")
    >>> h < e
    True
    >>> e, h = dense_costs(4_000, 4_000, 1000, 384, "float32")  # float32 rows, cached: exact is cheaper
    >>> h < e
    False
    """
    exact = rows * dim * EXACT_NS_PER_VALUE[codec]
    hamming = (HAMMING_FIXED_NS + rows * ((dim + 7) // 8) * HAMMING_NS_PER_BYTE
               + min(shortlist, eligible) * dim * RESCORE_NS_PER_VALUE[codec])
    return exact, hamming


def dense_path(segments: Sequence[Segment], eligible: int, shortlist: int, dim: int, codec: str) -> bool:
    """Whether the dense candidates should come from the Hamming path (``True``) rather than the exact
    scan, by :func:`dense_costs`: never when the shortlist would rescore every eligible row anyway
    (the exact scan is then the same answer for less work); always above :data:`COST_RULE_ROWS`."""
    if eligible <= shortlist:
        return False
    if eligible > COST_RULE_ROWS:
        return True
    exact, hamming = dense_costs(sum(int(s.n) for s in segments), eligible, shortlist, dim, codec)
    return hamming < exact


def _faiss_reads(bits: np.ndarray) -> bool:
    """Whether faiss's ``hammings`` kernel can take ``bits`` as they are (faiss there, contiguous
    ``uint8`` rows of whole 8-byte words)."""
    return (_hammings is not None and bits.shape[1] % 8 == 0 and bits.flags.c_contiguous
            and bits.dtype == np.uint8)


def _hamming_into(bits: np.ndarray, qbits: np.ndarray, out: np.ndarray) -> None:
    """Hamming distances of every row of ``bits [n, B] uint8`` to ``qbits [B]`` written into
    ``out [n] int32`` (faiss's popcount kernel when installed, numpy's ``bitwise_count`` otherwise)."""
    n, width = bits.shape
    if n == 0:
        return
    if _faiss_reads(bits):
        with _faiss_one_thread():
            _hammings(_faiss.swig_ptr(qbits), _faiss.swig_ptr(bits), 1, n, width, _faiss.swig_ptr(out))
        return
    step = 1 << 13
    if width % 8 == 0:
        b64 = bits.view(np.uint64) if bits.flags.c_contiguous else np.ascontiguousarray(bits).view(np.uint64)
        q64 = np.ascontiguousarray(qbits).view(np.uint64)
        for a in range(0, n, step):
            x = np.bitwise_count(np.bitwise_xor(b64[a:a + step], q64))
            out[a:a + step] = x.sum(axis=1, dtype=np.int32)
    else:
        for a in range(0, n, step):
            out[a:a + step] = np.bitwise_count(np.bitwise_xor(bits[a:a + step], qbits)).sum(axis=1, dtype=np.int32)


def _hamming_rows(bits: np.ndarray, pos: np.ndarray, qbits: np.ndarray) -> np.ndarray:
    """Hamming distances (``int32``) of the rows ``bits[pos]`` to ``qbits``: the rows gathered into
    one buffer first (one compiled copy, then one kernel call: a call per probed list cost more in
    Python than its distances, and more still beside the helper thread's Python)."""
    out = np.empty(len(pos), dtype=np.int32)
    if len(pos):
        _hamming_into(np.take(bits, pos, axis=0), qbits, out)
    return out


def smallest(values: np.ndarray, k: int, bound: int) -> np.ndarray:
    """Positions (ascending) of the ``k`` smallest entries of ``values`` (ints in ``[0, bound]``;
    entries equal to ``bound`` are never taken); ties at the threshold go to the lowest positions.
    A histogram finds the threshold: O(n), no sort."""
    hist = np.bincount(values, minlength=bound + 1)
    csum = np.cumsum(hist[:bound])
    if len(csum) == 0 or int(csum[-1]) <= k:
        return np.flatnonzero(values < bound)
    thr = int(np.searchsorted(csum, k))  # csum[thr] >= k > csum[thr - 1]
    sel = np.flatnonzero(values <= thr)    # one pass; then drop the surplus ties at thr (the last ones)
    extra = len(sel) - k
    if extra > 0:
        at = np.flatnonzero(values[sel] == thr)
        sel = np.delete(sel, at[len(at) - extra:])
    return sel


def dense_candidates(segments: Sequence[Segment], bases: np.ndarray, q: np.ndarray, eligible: Sequence[np.ndarray],
                     n: int, shortlist: int, probe: float = DEFAULT_PROBE,
                     table: Optional[CentroidTable] = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate dense top-``n`` (global rows, exact scores). Rows to consider: in a segment with
    inverted lists, the rows of its nearest lists (:func:`~bgem3.index.dense_lists.lists_to_scan`
    of them, ``probe`` = 1 scans all); in any other segment every row. The ``shortlist`` of them
    with the smallest Hamming distance over ALL segments (one histogram selection) are rescored
    exactly from the stored vectors (read row by row, so a query maps only the sign bits it scans).
    If the probed lists hold fewer than ``shortlist`` eligible rows, every row is scanned.
    ``table``: the segments' :class:`~bgem3.index.dense_lists.CentroidTable` (one product ranks
    every segment's lists), if the caller keeps one."""
    qbits = np.packbits(q > 0)
    cscores = table.scores(q) if table is not None and probe < 1.0 else None
    nbits = 8 * len(qbits)

    def scan(si: int) -> Optional[tuple[int, Optional[tuple], np.ndarray, int]]:
        """``(segment, probed positions or None = all rows, distances, eligible rows scanned)``."""
        seg, el = segments[si], eligible[si]
        n_el = int(np.count_nonzero(el))
        if n_el == 0:
            return None
        share = n_el / seg.n
        lists = seg.dense_lists() if probe < 1.0 else None
        if lists is not None:
            cen, ptr, lrows, lbits = lists
            nprobe = lists_to_scan(len(cen), probe, share)
            if nprobe < len(cen):
                starts, ends = probe_lists(cen, ptr, q, nprobe, None if cscores is None else cscores[si])
                at = ranges(starts, ends - starts)   # positions in list order
                dist = _hamming_rows(lbits, at, qbits)
                live = len(dist)
                if share < 1.0:
                    dead = ~el[np.asarray(lrows[at], dtype=np.int64)]
                    dist[dead] = nbits + 1
                    live -= int(dead.sum())
                return si, (at, lrows), dist, live
        dist = np.empty(seg.n, dtype=np.int32)
        _hamming_into(np.asarray(seg.array("dense_bits")), qbits, dist)
        if share < 1.0:
            dist[~el] = nbits + 1
        return si, None, dist, n_el

    # the segments are scanned by this thread and, once it is free (after the lexical scoring it was
    # given first), the helper, taking them one at a time from one iterator (the reads and the
    # popcounts release the GIL and are bound by memory, which two cores read faster than one)
    slots: list = [None] * len(segments)
    order = iter(range(len(segments)))

    def work() -> None:
        for si in iter(lambda: next(order, None), None):
            slots[si] = scan(si)

    helper = _helper().submit(work) if len(segments) > 1 and _can_use_helper() else None
    try:
        work()
    finally:
        if helper is not None and not helper.cancel():  # never started: nothing to wait for
            helper.result()
    pieces = [(si, probed, dist) for si, probed, dist, _ in (x for x in slots if x is not None)]
    found = sum(x[3] for x in slots if x is not None)
    if found < shortlist and any(probed is not None for _, probed, _ in pieces):
        return dense_candidates(segments, bases, q, eligible, n, shortlist, probe=1.0)
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    dist_all = np.concatenate([d for _, _, d in pieces]) if len(pieces) > 1 else pieces[0][2]
    picked = smallest(dist_all, shortlist, nbits + 1)
    if len(picked) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    first = np.cumsum([0] + [len(d) for _, _, d in pieces])
    piece_of = np.searchsorted(first, picked, side="right") - 1
    rows_out = np.empty(len(picked), dtype=np.int64)
    scores = np.empty(len(picked), dtype=np.float32)
    bounds = np.searchsorted(piece_of, np.arange(len(pieces) + 1))

    def rescore(piece_ids: range) -> None:
        for pi in piece_ids:
            si, probed, _ = pieces[pi]
            a, b = int(bounds[pi]), int(bounds[pi + 1])
            if a == b:
                continue
            local = picked[a:b] - first[pi]
            if probed is not None:  # position among the probed rows -> list position -> row
                at, lrows = probed
                local = np.asarray(lrows[at[local]], dtype=np.int64)
            scores[a:b] = dense_exact(segments[si], q, local)
            rows_out[a:b] = local + bases[si]

    # the rescoring (float16 conversion, scattered rows) in two halves: the later one on the helper
    half = int(np.searchsorted(bounds, len(picked) // 2))
    later = beside(lambda: rescore(range(half, len(pieces))), parallel=len(picked) >= 256 and 0 < half < len(pieces))
    try:
        rescore(range(half))
    finally:
        later.result()
    if len(rows_out) > n:
        top = np.argpartition(-scores, n - 1)[:n]
        rows_out, scores = rows_out[top], scores[top]
    return rows_out, scores


def top_positive(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions (ascending) of the ``n`` largest positive entries (fewer if fewer are positive).

    On a long array a threshold comes first: the value at rank ``2n/32 + 8`` of every 32nd entry;
    if at least ``n`` entries reach it, the top ``n`` are all among them (one comparison pass, no
    selection over the whole array); otherwise one selection over everything."""
    if len(scores) >= (1 << 16) and len(scores) > 64 * n:
        sample = scores[::32]
        r = min(len(sample) - 1, 2 * (n // 32) + 8)
        t = float(np.partition(sample, len(sample) - 1 - r)[len(sample) - 1 - r])
        if t > 0:
            sel = np.flatnonzero(scores >= t)
            if len(sel) >= n:
                top = sel[np.argpartition(-scores[sel], n - 1)[:n]]
                return np.sort(top)
    if len(scores) > 8 * n:  # one selection pass, no gather of the positive entries
        top = np.argpartition(-scores, n - 1)[:n]
        return np.sort(top[scores[top] > 0])
    pos = np.flatnonzero(scores > 0)
    if len(pos) > n:
        pos = pos[np.argpartition(-scores[pos], n - 1)[:n]]
    return pos


def colbert_scores(codec: ColbertCodec, prepared: tuple, seg: Segment, rows: np.ndarray) -> np.ndarray:
    """MaxSim of the prepared query against ``rows`` of one segment, through the codec
    (:meth:`ColbertCodec.maxsim`); reads the rows' codes in bounded groups. A row with no tokens scores 0."""
    offs = seg.array("col_offsets")
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float32)
    if len(rows) == 0 or len(prepared[0]) == 0:
        return out
    starts = np.asarray(offs[rows], dtype=np.int64)
    lens = np.asarray(offs[rows + 1], dtype=np.int64) - starts
    budget = max(CHUNK_VALUES // max(codec.dim, 1), int(lens.max(initial=0)))
    csum = np.cumsum(lens)
    has_aux = seg.array("col_aux") is not None
    lo = 0
    while lo < len(rows):
        base = int(csum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(csum, base + budget, side="right")), lo + 1)
        st, ln = starts[lo:hi], lens[lo:hi]
        if int(ln.sum()):
            if hi - lo > 1 and bool(np.all(st[1:] == st[:-1] + ln[:-1])):  # one contiguous run: one read
                st, rl = st[:1], np.array([int(ln.sum())])
            else:
                rl = ln
            codes = seg.take_ranges("col_codes", st, rl)
            aux = seg.take_ranges("col_aux", st, rl) if has_aux else None
            out[lo:hi] = codec.maxsim(prepared, codes, aux, ln)
        lo = hi
    return out


class _Done:
    """A finished call, with the interface of a future."""

    def __init__(self, fn) -> None:
        self.value = fn()

    def result(self):
        return self.value


def beside(fn, *, parallel: bool):
    """``fn()`` started on the helper thread (when ``parallel`` and :data:`SEARCH_THREADS` >= 2)
    or run now; ``.result()`` gives its value or raises its exception."""
    if parallel and _can_use_helper():
        return _helper().submit(fn)
    return _Done(fn)


def split_maxsim(codec: ColbertCodec, prepared: tuple, codes: np.ndarray, aux: Optional[np.ndarray],
                 lens: np.ndarray, *, prefix: bool = False) -> np.ndarray:
    """:meth:`ColbertCodec.maxsim` with the documents cut in two halves (by tokens), one scored on
    a helper thread while the calling thread scores the other (:data:`SEARCH_THREADS` = 2); the
    same numbers as one call."""
    lens = np.asarray(lens, dtype=np.int64)
    total = int(lens.sum())
    if len(lens) < 2 or total < SPLIT_MIN_TOKENS or not _can_use_helper():
        return codec.maxsim(prepared, codes, aux, lens, prefix=prefix)
    ends = np.cumsum(lens)
    cut = min(max(int(np.searchsorted(ends, total // 2)) + 1, 1), len(lens) - 1)
    t0 = int(ends[cut - 1])
    later = beside(lambda: codec.maxsim(prepared, codes[t0:], None if aux is None else aux[t0:], lens[cut:],
                                        prefix=prefix), parallel=True)
    first = codec.maxsim(prepared, codes[:t0], None if aux is None else aux[:t0], lens[:cut], prefix=prefix)
    return np.concatenate([first, later.result()])


def _mapped_ranges(seg: Segment, name: str, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Rows ``starts[i] : starts[i] + lens[i]`` of the segment's array ``name``, concatenated, read
    through the map (one gather, no system call per candidate; the pages touched stay mapped): the
    per-token ColBERT scales (4 bytes a token) and estimate columns (``col_prefix``)."""
    a = seg.array(name)
    if len(starts) and (int(starts.min()) < 0 or int((starts + lens).max()) > len(a) or int(lens.min()) < 0):
        raise IndexError(f"rows out of range for {name} of segment {seg.name}")
    return np.asarray(a[ranges(starts, lens)])


def _prefix_ranges(seg: Segment, starts: np.ndarray, lens: np.ndarray, cols: int) -> Optional[np.ndarray]:
    """The estimate's code columns of the ranges from the segment's ``col_prefix`` (``cols`` bytes a
    token), or ``None`` when it has none that wide."""
    a = seg.array("col_prefix")
    if a is None or a.shape[1] != cols:
        return None
    return _mapped_ranges(seg, "col_prefix", starts, lens)


def _token_ranges(segments: Sequence[Segment], seg_of: np.ndarray, rows: np.ndarray,
                  max_tokens: Optional[int] = None) -> Optional[list[tuple[Segment, np.ndarray, np.ndarray]]]:
    """``[(segment, token starts, token counts)]`` of the candidates (``rows`` local to
    ``segments[seg_of]``, ``seg_of`` ascending), one entry per segment, in candidate order;
    ``None`` when they hold more than ``max_tokens`` tokens."""
    parts = []
    bounds = np.searchsorted(seg_of, np.arange(len(segments) + 1))
    total = 0
    for si in range(len(segments)):
        a, b = int(bounds[si]), int(bounds[si + 1])
        if a == b:
            continue
        offs = segments[si].array("col_offsets")
        r = np.asarray(rows[a:b], dtype=np.int64)
        st = np.asarray(offs[r], dtype=np.int64)
        ln = np.asarray(offs[r + 1], dtype=np.int64) - st
        total += int(ln.sum())
        if max_tokens is not None and total > max_tokens:
            return None
        parts.append((segments[si], st, ln))
    return parts


def colbert_estimate(codec: ColbertCodec, prepared: tuple, segments: Sequence[Segment], seg_of: np.ndarray,
                     rows: np.ndarray) -> Optional[np.ndarray]:
    """The cheap prefix MaxSim estimate (:meth:`ColbertCodec.maxsim` with ``prefix=True``) of each
    candidate (``rows`` local to ``segments[seg_of]``, ``seg_of`` ascending); ``None`` if their
    tokens are too many to read at once. Reads a segment's ``col_prefix`` when it has one (the
    estimate's columns only), else its full codes."""
    out = np.zeros(len(rows), dtype=np.float32)
    parts = _token_ranges(segments, seg_of, rows, max_tokens=(1 << 26) // codec.bytes_per_token())
    if parts is None:
        return None
    if not parts:
        return out
    lens = np.concatenate([ln for _, _, ln in parts])
    aux = np.concatenate([_mapped_ranges(seg, "col_aux", st, ln) for seg, st, ln in parts]) if codec.quantized else None
    cols = codec.prefix_cols()
    pre = []
    for seg, st, ln in parts:
        p = _prefix_ranges(seg, st, ln, cols) if cols is not None else None
        if p is None:
            p = seg.take_ranges("col_codes", st, ln)
            p = p if cols is None else p[:, :cols]
        pre.append(p)
    return split_maxsim(codec, prepared, np.concatenate(pre) if len(pre) > 1 else pre[0], aux, lens, prefix=True)


def colbert_full(codec: ColbertCodec, prepared: tuple, segments: Sequence[Segment], seg_of: np.ndarray,
                 rows: np.ndarray) -> np.ndarray:
    """The full MaxSim of a few candidates (``rows`` local to ``segments[seg_of]``, ``seg_of``
    ascending), their codes read with one ``pread`` each, split over the helper thread."""
    parts = _token_ranges(segments, seg_of, rows)
    if not parts:
        return np.zeros(len(rows), dtype=np.float32)
    lens = np.concatenate([ln for _, _, ln in parts])
    codes = [seg.take_ranges("col_codes", st, ln) for seg, st, ln in parts]
    aux = np.concatenate([_mapped_ranges(seg, "col_aux", st, ln) for seg, st, ln in parts]) if codec.quantized else None
    return split_maxsim(codec, prepared, np.concatenate(codes) if len(codes) > 1 else codes[0], aux, lens)


def colbert_pruned(codec: ColbertCodec, prepared: tuple, segments: Sequence[Segment], seg_of: np.ndarray,
                   rows: np.ndarray, partial: np.ndarray, w_colbert: float, keep: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(positions, scores)``: the ``keep`` candidates with the best estimated fused score
    (``partial`` = the weighted other channels + ``w_colbert`` x the cheap prefix MaxSim estimate,
    :func:`colbert_estimate`), with their full MaxSim through the codec; ``None`` if the
    candidates' tokens are too many to read at once (then score them all the plain way). The full
    codes are read only for the ``keep`` candidates."""
    est = colbert_estimate(codec, prepared, segments, seg_of, rows)
    if est is None:
        return None
    pos = np.sort(np.argpartition(-(partial + w_colbert * est), keep - 1)[:keep])
    return pos, colbert_full(codec, prepared, segments, seg_of[pos], rows[pos])


def check_finite(values: Sequence[Optional[np.ndarray]], where: str) -> None:
    for v in values:
        if v is not None and len(v) and not np.isfinite(v).all():
            raise IndexFormatError(f"stored vectors of {where} give NaN or infinite scores: the index data is "
                                   "corrupted (run index.verify() to find the file); rebuild it or restore a backup")


def fuse(d: Optional[np.ndarray], s: Optional[np.ndarray], c: Optional[np.ndarray], w: tuple[float, float, float],
         k: int, mode: str, rrf_k: float) -> tuple[np.ndarray, np.ndarray]:
    """Fused scores and the top-``k`` positions over the channels present (``None`` = absent)."""
    n = len(next(x for x in (d, s, c) if x is not None))
    z = np.zeros(n, dtype=np.float32)
    return rank(d if d is not None else z, s if s is not None else z, c if c is not None else z, w, k, mode, rrf_k)
