"""The lexical channel: a pluggable object that scores a query against stored lexical rows.

Every row of every segment stores its lexical terms the same way (CSR ``term ids -> values``
plus an inverted copy, ``postings``, sorted by term), whatever the channel; what the VALUES
mean and how a query is scored is the channel's business:

* :class:`LearnedSparse` (``kind = "learned_sparse"``, BGE-M3's sparse head): values are the
  document's learned weights, score = ``sum over shared terms of w_q * w_d``;
* BM25 (``bgem3/bm25.py``, for dense-only models) stores term frequencies and computes idf and
  length normalisation from the live rows at query time.

A channel is registered by ``kind`` (:func:`register_lexical_channel`) so a saved index can
rebuild it from ``config()`` (JSON, in the manifest) without pickle.

The interface (see also /work/notes/lexical-interface.md)::

    class MyChannel(LexicalChannel):
        kind = "my_kind"                     # saved in the manifest
        uses_sparse_head = False             # True: the index asks the encoder for out.sparse
        def config(self) -> dict: ...        # JSON-serialisable constructor arguments
        @classmethod
        def from_config(cls, config): ...
        def document_rows(self, texts, encoded) -> list[dict[int, float]]   # what add() stores
        def query_row(self, text, encoded) -> dict[int, float]             # what search() scores
        def row_extras(self, block) -> dict[str, np.ndarray]               # per-row arrays saved with the segment
        def score(self, query: QueryTerms, segments: Sequence[LexicalView]) -> list[np.ndarray]
        def explain(self, query, segment, row) -> dict[int, float]         # per-term contributions

Example::

    >>> import numpy as np
    >>> from bgem3.index.lexical import LearnedSparse, LexicalBlock, LexicalView, QueryTerms
    >>> block = LexicalBlock.from_rows([{3: 0.5, 7: 0.2}, {7: 1.0}], vocab_size=10)
    >>> view = LexicalView.from_block(block, {})
    >>> [round(float(s), 3) for s in LearnedSparse().score(QueryTerms.from_mapping({7: 2.0}), [view])[0]]
    [0.4, 2.0]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

__all__ = ["LexicalChannel", "LearnedSparse", "LexicalBlock", "LexicalView", "QueryTerms",
           "register_lexical_channel", "lexical_channel_from_config", "MAX_TOKEN_ID"]

#: token ids are stored as int32; the largest id an index without ``vocab_size`` accepts
MAX_TOKEN_ID = 2**31 - 2


@dataclass
class QueryTerms:
    """A validated lexical query: unique term ids (sorted, int64) and their float32 weights."""

    terms: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_mapping(cls, query: Mapping[int, float], *, vocab_size: Optional[int] = None) -> "QueryTerms":
        if not isinstance(query, Mapping):
            raise TypeError(f"sparse query must be a dict {{token_id: weight}}; got {type(query).__name__}")
        n = len(query)
        terms = np.empty(n, dtype=np.int64)
        weights = np.empty(n, dtype=np.float64)
        for i, (t, w) in enumerate(query.items()):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"sparse query token ids must be integers; got {t!r}")
            if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
                raise TypeError(f"sparse query weight of token {t} must be a number; got {w!r}")
            terms[i], weights[i] = int(t), float(w)
        if n and not np.isfinite(weights).all():
            raise ValueError("the sparse query has a NaN or infinite weight; pass finite weights")
        if n and np.abs(weights).max() > 3.0e38:
            raise ValueError("the sparse query has a weight too large for float32; pass smaller weights")
        order = np.argsort(terms, kind="stable")
        terms, weights = terms[order], weights[order]
        if n > 1 and np.any(np.diff(terms) == 0):
            raise ValueError("the sparse query repeats a token id")
        keep = (terms >= 0) & (terms <= (MAX_TOKEN_ID if vocab_size is None else vocab_size - 1))
        return cls(terms[keep], weights[keep].astype(np.float32))

    def __len__(self) -> int:
        return len(self.terms)


@dataclass
class LexicalBlock:
    """Lexical rows of one batch (or one segment) in CSR form: ``indptr int64 [n+1]``, ``indices
    int32`` (term ids, unique and sorted within a row), ``values float32``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[int, float]], *, vocab_size: Optional[int] = None,
                  name: str = "sparse") -> "LexicalBlock":
        """Validate and pack ``{term id: value}`` rows (values finite, ids in the vocabulary)."""
        if isinstance(rows, Mapping):
            raise TypeError(f"{name} must be a list with one dict per document, not a single dict")
        rows = list(rows)
        n = len(rows)
        lengths = np.zeros(n, dtype=np.int64)
        for i, w in enumerate(rows):
            if not isinstance(w, Mapping):
                raise TypeError(f"{name}[{i}] must be a dict {{token_id: weight}}; got {type(w).__name__}")
            lengths[i] = len(w)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        total = int(indptr[-1])
        idx = np.empty(total, dtype=np.int64)
        val = np.empty(total, dtype=np.float64)
        for i, w in enumerate(rows):
            a, b = indptr[i], indptr[i + 1]
            if b > a:
                try:
                    idx[a:b] = np.fromiter((_as_term(t) for t in w.keys()), dtype=np.int64, count=b - a)
                    val[a:b] = np.fromiter((_as_value(v) for v in w.values()), dtype=np.float64, count=b - a)
                except TypeError as exc:
                    raise TypeError(f"{name}[{i}]: {exc}") from None
        return cls.from_csr(indptr, idx, val, vocab_size=vocab_size, name=name)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, *,
                 vocab_size: Optional[int] = None, name: str = "sparse") -> "LexicalBlock":
        indptr = np.asarray(indptr, dtype=np.int64)
        idx = np.asarray(indices, dtype=np.int64)
        val = np.asarray(values, dtype=np.float64)
        if len(idx):
            lo, hi = int(idx.min()), int(idx.max())
            top = MAX_TOKEN_ID if vocab_size is None else vocab_size - 1
            if lo < 0 or hi > top:
                bad = lo if lo < 0 else hi
                raise ValueError(f"lexical token id {bad} is outside the vocabulary [0, {top + 1})"
                                 + ("" if vocab_size is not None else " (token ids are stored as int32)"))
            if not np.isfinite(val).all():
                raise ValueError(f"{name} weights contain NaN or infinity")
            if np.abs(val).max() > 3.0e38:
                raise ValueError(f"{name} weights are too large for float32")
        # sort each row by term and merge duplicates (a scipy matrix may hold them)
        n = len(indptr) - 1
        row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        order = np.lexsort((idx, row_of))
        idx, val, row_of = idx[order], val[order], row_of[order]
        if len(idx) > 1:
            dup = (np.diff(idx) == 0) & (np.diff(row_of) == 0)
            if dup.any():
                first = np.concatenate([[True], ~dup])
                groups = np.cumsum(first) - 1
                val = np.bincount(groups, weights=val)
                idx, row_of = idx[first], row_of[first]
                indptr = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.bincount(row_of, minlength=n), out=indptr[1:])
        return cls(indptr, idx.astype(np.int32), val.astype(np.float32))


def _as_term(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"token ids must be integers; got {t!r}")
    return int(t)


def _as_value(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"weights must be numbers; got {v!r}")
    return float(v)


def build_postings(block: LexicalBlock) -> dict[str, np.ndarray]:
    """The inverted copy of a block: ``terms int32 [U]`` (sorted unique), ``term_ptr int64 [U+1]``,
    ``post_rows int32``, ``post_values float32`` (rows ascending within a term).

    Memory is O(nnz + distinct terms), never O(vocabulary)."""
    n = block.n_rows
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(block.indptr))
    order = np.argsort(block.indices, kind="stable")
    t = block.indices[order]
    if len(t):
        starts = np.flatnonzero(np.concatenate([[True], t[1:] != t[:-1]]))
        terms = t[starts].astype(np.int32)
        term_ptr = np.concatenate([starts, [len(t)]]).astype(np.int64)
    else:
        terms = np.zeros(0, dtype=np.int32)
        term_ptr = np.zeros(1, dtype=np.int64)
    return {"terms": terms, "term_ptr": term_ptr, "post_rows": rows[order].astype(np.int32),
            "post_values": block.values[order].astype(np.float32)}


@dataclass
class LexicalView:
    """What a channel sees of one segment: its rows' terms (CSR), the postings, which rows are
    alive, and the channel's own per-row arrays (``extras``)."""

    n_rows: int
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    terms: np.ndarray
    term_ptr: np.ndarray
    post_rows: np.ndarray
    post_values: np.ndarray
    alive: Optional[np.ndarray] = None       # bool [n_rows]; None = all alive
    extras: dict = field(default_factory=dict)
    #: posting slices ``(start, end)`` already checked to point inside the segment (a view's arrays never change)
    checked: set = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def from_block(cls, block: LexicalBlock, extras: dict, alive: Optional[np.ndarray] = None) -> "LexicalView":
        p = build_postings(block)
        return cls(block.n_rows, block.indptr, block.indices, block.values, p["terms"], p["term_ptr"],
                   p["post_rows"], p["post_values"], alive, extras)

    def postings(self, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows int64, values float32, query_position int64)`` of every posting of ``terms``
        (``terms`` sorted; a term absent from the segment contributes nothing)."""
        pos = np.searchsorted(self.terms, terms)
        pos_c = np.minimum(pos, max(len(self.terms) - 1, 0))
        hit = (pos < len(self.terms)) & (self.terms[pos_c] == terms) if len(self.terms) else np.zeros(len(terms), bool)
        qpos = np.flatnonzero(hit)
        if len(qpos) == 0:
            z = np.zeros(0, dtype=np.int64)
            return z, np.zeros(0, dtype=np.float32), z
        starts = self.term_ptr[pos[qpos]]
        lens = self.term_ptr[pos[qpos] + 1] - starts
        sel = ranges(starts, lens)
        return (self.post_rows[sel].astype(np.int64), np.asarray(self.post_values[sel], dtype=np.float32),
                np.repeat(qpos, lens))

    def posting_ranges(self, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query_position, start, end)`` int64 arrays: the slice of ``post_rows``/``post_values``
        holding each of ``terms`` (sorted) that the segment has."""
        if not len(self.terms):
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        pos = np.searchsorted(self.terms, _as_terms_dtype(terms, self.terms))
        pos_c = np.minimum(pos, len(self.terms) - 1)
        qpos = np.flatnonzero((pos < len(self.terms)) & (self.terms[pos_c] == terms))
        p = pos[qpos]
        return qpos, np.asarray(self.term_ptr[p], dtype=np.int64), np.asarray(self.term_ptr[p + 1], dtype=np.int64)

    def row_terms(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[row]), int(self.indptr[row + 1])
        return np.asarray(self.indices[a:b]), np.asarray(self.values[a:b])

    def document_frequency(self, terms: np.ndarray) -> np.ndarray:
        """How many rows (dead ones included) hold each of ``terms`` (sorted): posting-list lengths."""
        pos = np.searchsorted(self.terms, terms)
        pos_c = np.minimum(pos, max(len(self.terms) - 1, 0))
        if not len(self.terms):
            return np.zeros(len(terms), dtype=np.int64)
        hit = (pos < len(self.terms)) & (self.terms[pos_c] == terms)
        out = np.zeros(len(terms), dtype=np.int64)
        out[hit] = self.term_ptr[pos[hit] + 1] - self.term_ptr[pos[hit]]
        return out


def _as_terms_dtype(terms: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """The query's term ids in the stored terms' integer type when they fit (``searchsorted`` would
    otherwise convert the whole stored array on every call)."""
    if stored.dtype != terms.dtype and stored.dtype.kind == "i" and len(terms):
        info = np.iinfo(stored.dtype)
        if int(terms.min()) >= info.min and int(terms.max()) <= info.max:
            return terms.astype(stored.dtype)
    return terms


try:  # scipy's compiled CSC mat-vec kernel: y[rows] += values * w over posting slices, no temporaries
    from scipy.sparse import _sparsetools as _sparsetools  # type: ignore

    _csc_matvec = getattr(_sparsetools, "csc_matvec", None)
except Exception:  # pragma: no cover - scipy without it
    _csc_matvec = None


def _check_slices(n: int, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, checked: Optional[set]) -> None:
    """Every row of ``rows[starts[i]:ends[i]]`` lies in ``[0, n)`` (a slice already in ``checked``
    is not read again; slices found good are added to it): the compiled kernel does not check, and
    a corrupted file must give an error, not a wild write."""
    for a, b in zip(starts.tolist(), ends.tolist()):
        if b <= a or (checked is not None and (a, b) in checked):
            continue
        r = rows[a:b]
        lo, hi = int(r.min()), int(r.max())
        if lo < 0 or hi >= n:
            from .errors import IndexFormatError

            raise IndexFormatError(f"lexical postings point at row {hi if hi >= n else lo} of a segment with "
                                   f"{n} rows: the index data is corrupted (run index.verify()); rebuild it")
        if checked is not None:
            checked.add((a, b))


def add_posting_slices(acc: np.ndarray, rows: np.ndarray, values: np.ndarray, starts: np.ndarray,
                       ends: np.ndarray, weights: np.ndarray, checked: Optional[set] = None) -> None:
    """``acc[rows[starts[i]:ends[i]]] += values[starts[i]:ends[i]] * weights[i]`` for every ``i``
    (rows unique within a slice, slices disjoint), bounds-checked (once per slice when ``checked``,
    a set of slices already checked against ``len(acc)``, is given).

    One call of scipy's compiled CSC mat-vec kernel does every slice when the dtypes fit (no
    temporaries, no Python per slice; about twice as fast as numpy's fancy-index add over long
    postings): the slices become the columns of one CSC matrix over ``rows``/``values`` with
    column pointers ``[s0, e0, s1, e1, ...]`` in descending order of start, so each column between
    two slices runs backwards (``e_i >= s_(i+1)``) and holds nothing; its weight is 0 besides.
    Otherwise (no scipy, other dtypes, overlapping slices) numpy, slice by slice.

    >>> acc = np.zeros(4, np.float32)
    >>> rows, vals = np.array([0, 2, 3, 1], np.int32), np.array([1, 2, 3, 4], np.float32)
    >>> add_posting_slices(acc, rows, vals, np.array([1, 3]), np.array([3, 4]), np.array([2, 10], np.float32))
    >>> acc.tolist()
    [0.0, 40.0, 4.0, 6.0]
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float32)
    keep = ends > starts
    if not keep.all():
        starts, ends, w = starts[keep], ends[keep], w[keep]
    if len(starts) == 0:
        return
    _check_slices(len(acc), rows, starts, ends, checked)
    order = np.argsort(-starts, kind="stable")
    s, e, w = starts[order], ends[order], w[order]
    if (_csc_matvec is not None and rows.dtype == np.int32 and values.dtype == np.float32 and acc.dtype == np.float32
            and rows.flags.c_contiguous and values.flags.c_contiguous and int(e[0]) < 2**31
            and bool(np.all(e[1:] <= s[:-1]))):
        ptr = np.empty(2 * len(s), dtype=np.int32)
        ptr[0::2], ptr[1::2] = s, e
        x = np.zeros(2 * len(s) - 1, dtype=np.float32)
        x[0::2] = w
        try:
            _csc_matvec(len(acc), len(x), ptr, rows, values, x, acc)
            return
        except Exception:  # pragma: no cover - an incompatible scipy: the numpy path below
            pass
    for a, b, wi in zip(s.tolist(), e.tolist(), w.tolist()):
        acc[rows[a:b]] += values[a:b] * np.float32(wi)


def joined(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, without the copy when the parts are consecutive views of one
    contiguous 1-d buffer (as :meth:`LearnedSparse.score` returns them).

    >>> whole = np.arange(5.0)
    >>> j = joined([whole[:2], whole[2:]])
    >>> bool(np.shares_memory(j, whole)), j.tolist()
    (True, [0.0, 1.0, 2.0, 3.0, 4.0])
    """
    if parts and all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts):
        first = parts[0]
        base = first.base
        if (isinstance(base, np.ndarray) and base.ndim == 1 and base.flags.c_contiguous
                and all(p.base is base and p.dtype == first.dtype and p.flags.c_contiguous for p in parts)):
            item = first.dtype.itemsize
            at = first.__array_interface__["data"][0]
            for p in parts:
                if p.__array_interface__["data"][0] != at:
                    break
                at += len(p) * item
            else:
                start = (first.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
                return base[start:start + sum(len(p) for p in parts)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each pair, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    csum = np.cumsum(lengths)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (csum - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


class LexicalChannel(ABC):
    """A lexical scorer over the stored rows. Subclass, set ``kind``, register.

    ``score`` returns one float32 array per segment (``[segment.n_rows]``); a row with no
    matching term must score exactly 0 (the index takes "score > 0" as "is a lexical
    candidate"), and dead rows may score anything (the index masks them).
    """

    kind: ClassVar[str] = ""
    #: True: ``add``/``search`` ask the encoder for its sparse head (``encoded.sparse``)
    uses_sparse_head: ClassVar[bool] = False
    #: what ``search(mode="auto")`` fuses this channel with the others by: ``"weighted"`` when its
    #: scores are on the dense cosine's scale (BGE-M3's learned weights), ``"rrf"`` when they are not
    #: (BM25's raw scores would drown the other channels in a weighted mean)
    fusion: ClassVar[str] = "weighted"

    def config(self) -> dict:
        """JSON-serialisable arguments that :meth:`from_config` rebuilds the channel from."""
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LexicalChannel":
        if config:
            raise ValueError(f"the {cls.kind} lexical channel takes no settings; got {dict(config)!r}")
        return cls()

    def document_rows(self, texts: Sequence[str], encoded: Any) -> list[Mapping[int, float]]:
        """The rows ``add`` stores for ``texts`` (``encoded`` is the encoder's output or ``None``)."""
        if encoded is None or getattr(encoded, "sparse", None) is None:
            raise TypeError(f"the {self.kind} lexical channel needs the encoder's lexical weights")
        return list(encoded.sparse)

    def query_row(self, text: str, encoded: Any) -> Mapping[int, float]:
        """The query row ``search`` scores (``encoded``: the encoder's output for ``[text]``)."""
        return self.document_rows([text], encoded)[0]

    def row_extras(self, block: LexicalBlock) -> dict[str, np.ndarray]:
        """Per-row arrays (``[block.n_rows]``, numeric) stored with each segment; default none."""
        return {}

    @abstractmethod
    def score(self, query: QueryTerms, segments: Sequence[LexicalView]) -> list[np.ndarray]:
        """One float32 ``[n_rows]`` array of scores per segment."""

    def explain(self, query: QueryTerms, segment: LexicalView, row: int) -> dict[int, float]:
        """``{term id: contribution}`` of one row's score (contributions sum to the score)."""
        raise NotImplementedError


class LearnedSparse(LexicalChannel):
    """BGE-M3's lexical matching: ``sum over shared terms of w_q * w_d`` (learned weights)."""

    kind = "learned_sparse"
    uses_sparse_head = True

    def score(self, query: QueryTerms, segments: Sequence[LexicalView]) -> list[np.ndarray]:
        # one buffer for every segment (the arrays returned are consecutive views of it, which the
        # index joins without a copy, see ``joined``)
        whole = np.zeros(sum(seg.n_rows for seg in segments), dtype=np.float32)
        out = []
        base = 0
        for seg in segments:
            acc = whole[base:base + seg.n_rows]
            base += seg.n_rows
            out.append(acc)
            if len(query) == 0 or seg.n_rows == 0:
                continue
            # one slice per query term (a term's rows are unique): scatter-add, no gather of all postings
            qp, a, b = seg.posting_ranges(query.terms)
            add_posting_slices(acc, seg.post_rows, seg.post_values, a, b, query.weights[qp], seg.checked)
        return out

    def explain(self, query: QueryTerms, segment: LexicalView, row: int) -> dict[int, float]:
        terms, vals = segment.row_terms(row)
        qmap = dict(zip(query.terms.tolist(), query.weights.tolist()))
        return {int(t): float(qmap[int(t)] * v) for t, v in zip(terms.tolist(), vals.tolist()) if int(t) in qmap}


_REGISTRY: dict[str, type] = {}


def register_lexical_channel(cls: type) -> type:
    """Make a :class:`LexicalChannel` subclass loadable by its ``kind`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, LexicalChannel)) or not cls.kind:
        raise TypeError("register a LexicalChannel subclass with a non-empty `kind`")
    _REGISTRY[cls.kind] = cls
    return cls


register_lexical_channel(LearnedSparse)


def lexical_channel_from_config(kind: Any, config: Any) -> LexicalChannel:
    """Rebuild a saved channel; ``ValueError`` naming the kind if it is unknown (the built-in ones,
    ``learned-sparse`` and ``bm25``, are registered whenever :mod:`bgem3.index` is imported; import the module
    that registers any other before loading)."""
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown lexical channel kind {kind!r}; known: {sorted(_REGISTRY)} (import the module "
                         "that defines it before loading)")
    if not isinstance(config, Mapping):
        raise ValueError(f"the lexical channel config must be an object; got {type(config).__name__}")
    return cls.from_config(config)
