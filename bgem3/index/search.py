"""Search over segments: dense candidates (exact, or a sign-bit Hamming shortlist rescored
exactly), lexical candidates (the channel's postings), ColBERT MaxSim through the codec, fusion.

The candidate rule is the BGE-M3 paper's and FlagEmbedding's: the dense top-``candidates``
united with the lexical top-``candidates`` (rows that share at least one term); every
candidate gets every channel's score and the weighted mean (or RRF) ranks them.

Dense scan at scale: above ``exact_dense_rows`` eligible rows the dense top-N is found by
Hamming distance over the stored sign bits (``dim/8`` bytes per row; faiss's popcount kernel when
faiss is installed, numpy otherwise), the best ``shortlist`` rows are rescored exactly from the
stored dense vectors, and the top-N of those are the dense candidates.

Example::

    >>> import numpy as np
    >>> from bgem3.index.search import effective_weights
    >>> effective_weights((0.4, 0.2, 0.4), ("dense", "colbert"))
    (0.4, 0.0, 0.4)
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._store import rank
from .codecs import ColbertCodec
from .errors import IndexFormatError
from .lexical import ranges
from .segment import Segment

__all__ = ["effective_weights", "dense_exact", "dense_candidates", "colbert_scores", "top_positive", "fuse"]

CHANNELS = ("dense", "lexical", "colbert")
#: float values gathered and converted per scoring chunk (64 MiB of float32)
CHUNK_VALUES = 1 << 24

try:  # optional fast Hamming kernel
    import faiss as _faiss  # type: ignore

    _knn_hamming = getattr(_faiss, "knn_hamming", None)
except Exception:  # pragma: no cover - faiss absent or broken
    _knn_hamming = None


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
        return (np.asarray(d[rows], dtype=np.float32) @ q).astype(np.float32)
    if d.dtype == np.float32:
        return np.asarray(d @ q, dtype=np.float32)
    step = max(1, CHUNK_VALUES // max(d.shape[1], 1))
    out = np.empty(len(d), dtype=np.float32)
    for a in range(0, len(d), step):
        out[a:a + step] = np.asarray(d[a:a + step], dtype=np.float32) @ q
    return out


def _hamming_shortlist(bits: np.ndarray, qbits: np.ndarray, eligible: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, distances)``: the (at most) ``k`` eligible rows of ``bits`` nearest to ``qbits`` in Hamming distance."""
    n = len(bits)
    n_bad = n - int(eligible.sum())
    if _knn_hamming is not None and n_bad <= k and bits.flags.c_contiguous:
        kk = min(n, k + n_bad)
        dist, idx = _knn_hamming(np.ascontiguousarray(qbits[None, :]), bits, kk)
        idx, dist = idx[0], dist[0]
        ok = (idx >= 0) & (idx < n)
        idx, dist = idx[ok], dist[ok]
        ok = eligible[idx]
        return idx[ok][:k].astype(np.int64), dist[ok][:k].astype(np.int64)
    dist = np.empty(n, dtype=np.uint16)
    step = 1 << 15
    if bits.shape[1] % 8 == 0:
        b64 = np.ascontiguousarray(bits).view(np.uint64)
        q64 = np.ascontiguousarray(qbits).view(np.uint64)
        for a in range(0, n, step):
            dist[a:a + step] = np.bitwise_count(b64[a:a + step] ^ q64).sum(axis=1, dtype=np.uint16)
    else:
        for a in range(0, n, step):
            dist[a:a + step] = np.bitwise_count(bits[a:a + step] ^ qbits).sum(axis=1, dtype=np.uint16)
    cand = np.flatnonzero(eligible)
    if len(cand) > k:
        cand = cand[np.argpartition(dist[cand], k - 1)[:k]]
    return cand.astype(np.int64), dist[cand].astype(np.int64)


def dense_candidates(segments: Sequence[Segment], bases: np.ndarray, q: np.ndarray, eligible: Sequence[np.ndarray],
                     n: int, shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate dense top-``n`` (global rows, exact scores): the ``shortlist`` rows with the
    smallest Hamming distance over ALL segments are rescored exactly from the stored vectors."""
    qbits = np.packbits(q > 0)
    rows_all, dist_all, seg_all = [], [], []
    for si, (seg, el) in enumerate(zip(segments, eligible)):
        if not el.any():
            continue
        r, dist = _hamming_shortlist(np.asarray(seg.array("dense_bits")), qbits, el, shortlist)
        rows_all.append(r)
        dist_all.append(dist)
        seg_all.append(np.full(len(r), si, dtype=np.int64))
    if not rows_all:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, dist, segi = np.concatenate(rows_all), np.concatenate(dist_all), np.concatenate(seg_all)
    if len(rows) > shortlist:
        keep = np.argsort(dist, kind="stable")[:shortlist]
        rows, segi = rows[keep], segi[keep]
    out_rows, out_scores = [], []
    for si in np.unique(segi):
        r = np.sort(rows[segi == si])
        out_rows.append(r + bases[si])
        out_scores.append(dense_exact(segments[si], q, r))
    rows, scores = np.concatenate(out_rows), np.concatenate(out_scores)
    if len(rows) > n:
        top = np.argpartition(-scores, n - 1)[:n]
        rows, scores = rows[top], scores[top]
    return rows, scores


def top_positive(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest positive entries (fewer if fewer are positive)."""
    pos = np.flatnonzero(scores > 0)
    if len(pos) > n:
        pos = pos[np.argpartition(-scores[pos], n - 1)[:n]]
    return pos


def colbert_scores(codec: ColbertCodec, prepared: tuple, seg: Segment, rows: np.ndarray) -> np.ndarray:
    """MaxSim of the prepared query against ``rows`` of one segment, through the codec; gathers
    the rows' codes in bounded chunks. A row with no tokens scores 0."""
    offs = seg.array("col_offsets")
    codes = seg.array("col_codes")
    aux = seg.array("col_aux")
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float32)
    qtok = prepared[0]
    if len(rows) == 0 or len(qtok) == 0:
        return out
    starts = np.asarray(offs[:-1][rows], dtype=np.int64)
    lens = np.asarray(offs[1:][rows], dtype=np.int64) - starts
    budget = max(CHUNK_VALUES // max(codec.dim, 1), int(lens.max(initial=0)))
    csum = np.cumsum(lens)
    contiguous = len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and bool(np.all(np.diff(rows) == 1))
    lo = 0
    while lo < len(rows):
        base = int(csum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(csum, base + budget, side="right")), lo + 1)
        ln = lens[lo:hi]
        if contiguous:
            a = int(starts[lo])
            sel = slice(a, a + int(ln.sum()))
        else:
            sel = ranges(starts[lo:hi], ln)
        sub_codes = np.asarray(codes[sel])
        sub_aux = np.asarray(aux[sel]) if aux is not None else None
        nonempty = ln > 0
        if sub_codes.shape[0]:
            sims = codec.similarities(prepared, sub_codes, sub_aux)
            sub_starts = np.concatenate([[0], np.cumsum(ln)[:-1]])[nonempty]
            maxes = np.maximum.reduceat(sims, sub_starts, axis=1)
            chunk = np.zeros(hi - lo, dtype=np.float32)
            chunk[nonempty] = maxes.mean(axis=0)
            out[lo:hi] = chunk
        lo = hi
    return out


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
