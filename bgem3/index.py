"""``HybridIndex``: the embedded hybrid store (dense + lexical + ColBERT), with persistence.

Every document is stored three ways, each in one contiguous array:

* dense: ``float32 [N, H]`` matrix (the encoder's L2-normalised CLS vectors);
* lexical: CSR rows (``int32`` token ids, ``float32`` weights, ``int64`` row pointers),
  searched through a cached CSC copy, so a query touches only the postings of its tokens;
* ColBERT: all token vectors of all documents in ONE ``float16`` (default) array
  ``[sum T_i, H_c]`` plus ``int64`` offsets ``[N+1]``.

Search (``mode="weighted"``, the default) follows the BGE-M3 paper: candidates are the dense
top-``candidates`` united with the lexical top-``candidates``; each candidate gets all three
scores, and they are ranked by ``(w_d*s_dense + w_l*s_lex + w_c*s_colbert) / sum(w)`` --
exactly FlagEmbedding's ``compute_score()['colbert+sparse+dense']``. ``exhaustive=True``
scores every document; ``mode="rrf"`` ranks candidates by reciprocal-rank fusion instead.

Example::

    >>> import tempfile
    >>> from bgem3 import HybridIndex
    >>> from bgem3.testing import make_m3_checkpoint
    >>> index = HybridIndex(make_m3_checkpoint(tempfile.mkdtemp()), device="cpu")
    >>> ids = index.add(["Paris is the capital of France.", "BM25 ranks by term frequency."],
    ...                 ids=["paris", "bm25"], metadatas=[{"lang": "en"}, {"lang": "en"}])
    >>> hits = index.search("capital of France", k=1, filter={"lang": "en"})
    >>> hits[0].id in ids, len(index)
    (True, 2)
    >>> d = tempfile.mkdtemp()
    >>> index.save(d)
    >>> len(HybridIndex.load(d, device="cpu"))
    2
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import shutil
import threading
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import scipy.sparse as sp

from ._store import StoreBase, check_documents, check_positive_int as _positive_int, check_search_args
from ._store import check_str_list as _check_str_list, encoder_shape, rank, resolve_encoder, scored_hit
from .scoring import DEFAULT_WEIGHTS, colbert_scores_packed
from .types import FusionMode, Hit

__all__ = ["HybridIndex", "IndexFormatError", "FORMAT_VERSION"]

#: Version of the on-disk layout written by :meth:`HybridIndex.save`.
FORMAT_VERSION = 1
_FORMAT_NAME = "bgem3.HybridIndex"
_MANIFEST = "manifest.json"
_DOCUMENTS = "documents.json"
_ARRAY_FILES = ("dense.npy", "sparse_indptr.npy", "sparse_indices.npy", "sparse_data.npy",
                "colbert.npy", "colbert_offsets.npy")
_COLBERT_DTYPES = {"float16": np.float16, "float32": np.float32}
#: ColBERT values (tokens x dim) gathered and cast to float32 per scoring chunk (64 MiB).
_COLBERT_CHUNK_VALUES = 1 << 24

PathLike = Union[str, "os.PathLike[str]"]


class IndexFormatError(ValueError):
    """A saved index could not be read: missing, truncated or corrupted file, unknown format
    version, or an index built with another model. The message names the file and the fix."""


# --------------------------------------------------------------------------- growable buffers
class _Buffer:
    """A numpy array with spare capacity: appends are amortised O(new rows)."""

    __slots__ = ("arr", "n")

    def __init__(self, shape_tail: tuple, dtype: Any, data: Optional[np.ndarray] = None) -> None:
        if data is None:
            self.arr = np.empty((0,) + tuple(shape_tail), dtype=dtype)
            self.n = 0
        else:
            self.arr = np.ascontiguousarray(data, dtype=dtype)
            self.n = len(self.arr)

    @property
    def view(self) -> np.ndarray:
        return self.arr[: self.n]

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        if need > len(self.arr):
            cap = max(need, int(len(self.arr) * 1.5) + 16)
            new = np.empty((cap,) + self.arr.shape[1:], dtype=self.arr.dtype)
            new[: self.n] = self.arr[: self.n]
            self.arr = new

    def write_tail(self, block: np.ndarray) -> None:
        """Write ``block`` after the used rows WITHOUT committing (call :meth:`commit`)."""
        self.reserve(len(block))
        self.arr[self.n: self.n + len(block)] = block

    def commit(self, count: int) -> None:
        self.n += count

    def replace(self, data: np.ndarray) -> None:
        self.arr = np.ascontiguousarray(data, dtype=self.arr.dtype)
        self.n = len(self.arr)

    @property
    def nbytes_used(self) -> int:
        return int(self.view.nbytes)

    @property
    def nbytes_allocated(self) -> int:
        return int(self.arr.nbytes)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s+l)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    csum = np.cumsum(lengths)
    shift = np.repeat(starts - (csum - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


# --------------------------------------------------------------------------- the index
class HybridIndex(StoreBase):
    """Embedded hybrid index over BGE-M3's dense, lexical and ColBERT outputs.

    Args:
        encoder: an :class:`bgem3.Encoder` (with BGE-M3 heads), a model name / folder (then
            ``Encoder(encoder, **encoder_kwargs)`` is built), or ``None`` for an index fed
            only with precomputed vectors (:meth:`add_encoded` / :meth:`search_encoded`);
            then ``dim`` is required and ``model_name`` describes where the vectors came from.
        model_name: the name recorded in saved manifests (default: the encoder's).
        dim: dense dimension (default: the encoder's hidden size).
        colbert_dim: ColBERT vector dimension (default: the encoder's ColBERT head, else ``dim``).
        vocab_size: lexical vocabulary size (default: the encoder's; ``None`` without an encoder
            means "grow with the largest token id seen").
        colbert_dtype: ``"float16"`` (default; half the memory, scores within ~1e-3 of fp32)
            or ``"float32"`` (bit-for-bit the encoder's vectors).
        **encoder_kwargs: passed to :class:`bgem3.Encoder` when ``encoder`` is a string
            (``device="cpu"``, ``dtype="fp16"``, ``max_length=...``).

    Ids are strings. Adding an id that is already present replaces that document (upsert).
    Deleted documents are tombstoned and never returned; storage is compacted when more
    than a quarter of the rows are dead, on :meth:`compact`, and on :meth:`save`.

    Example::

        >>> import numpy as np
        >>> from bgem3 import HybridIndex
        >>> index = HybridIndex(None, model_name="my-vectors", dim=4)
        >>> rng = np.random.default_rng(0)
        >>> dense = rng.normal(size=(3, 4)).astype("float32")
        >>> dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        >>> sparse = [{1: 0.5}, {2: 0.3, 5: 0.1}, {}]
        >>> colbert = [rng.normal(size=(t, 4)).astype("float32") for t in (2, 3, 1)]
        >>> index.add_encoded(["a", "b", "c"], ["A", "B", "C"], None, dense, sparse, colbert)
        ['a', 'b', 'c']
        >>> hit = index.search_encoded(dense[1], {2: 1.0}, colbert[1], k=1)[0]
        >>> hit.id
        'b'
    """

    def __init__(
        self,
        encoder: Any = None,
        *,
        model_name: Optional[str] = None,
        dim: Optional[int] = None,
        colbert_dim: Optional[int] = None,
        vocab_size: Optional[int] = None,
        colbert_dtype: str = "float16",
        **encoder_kwargs: Any,
    ) -> None:
        encoder = resolve_encoder(encoder, encoder_kwargs, "HybridIndex")
        if colbert_dtype not in _COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be 'float16' or 'float32'; got {colbert_dtype!r}")
        self.encoder = encoder
        if encoder is not None:
            enc_name, enc_dim, enc_cdim = encoder_shape(encoder, "HybridIndex")
            if dim is not None and int(dim) != enc_dim:
                raise ValueError(f"dim={dim} does not match the encoder's hidden size {enc_dim}; leave dim unset")
            dim = enc_dim
            if model_name is None:
                model_name = enc_name
            if colbert_dim is None:
                colbert_dim = enc_cdim
            if vocab_size is None:
                vocab_size = int(getattr(encoder, "vocab_size", 0)) or None
        else:
            if dim is None:
                raise ValueError("HybridIndex(None) stores precomputed vectors: pass dim=<dense dimension> "
                                 "(and model_name=... to record where the vectors come from)")
        self.dim = _positive_int(dim, "dim")
        self.colbert_dim = _positive_int(colbert_dim if colbert_dim is not None else dim, "colbert_dim")
        self.model_name = str(model_name) if model_name is not None else "unknown"
        self.vocab_size: Optional[int] = _positive_int(vocab_size, "vocab_size") if vocab_size is not None else None
        self.colbert_dtype = colbert_dtype
        self._lock = threading.RLock()
        self._reset_storage()

    # ------------------------------------------------------------------ storage
    def _reset_storage(self) -> None:
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._metas: list[dict] = []
        self._row: dict[str, int] = {}          # live id -> row
        self._alive = _Buffer((), np.bool_)
        self._dense = _Buffer((self.dim,), np.float32)
        self._sp_indptr = _Buffer((), np.int64, np.zeros(1, dtype=np.int64))
        self._sp_indices = _Buffer((), np.int32)
        self._sp_data = _Buffer((), np.float32)
        self._col = _Buffer((self.colbert_dim,), _COLBERT_DTYPES[self.colbert_dtype])
        self._col_offsets = _Buffer((), np.int64, np.zeros(1, dtype=np.int64))
        self._n_dead = 0
        self._max_token = -1
        self._invalidate()

    def _invalidate(self) -> None:
        self._csc: Optional[sp.csc_matrix] = None
        self._meta_index: dict[str, tuple[dict, list]] = {}

    @property
    def _n_rows(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._row

    @property
    def ids(self) -> list[str]:
        """Live ids, in storage order (insertion order; an upserted document moves to the end)."""
        with self._lock:
            alive = self._alive.view
            return [self._ids[i] for i in np.flatnonzero(alive)]

    def __repr__(self) -> str:
        return (f"HybridIndex(model_name={self.model_name!r}, dim={self.dim}, documents={len(self)}, "
                f"colbert_dtype={self.colbert_dtype!r})")

    def memory_usage(self) -> dict[str, int]:
        """Bytes held by the arrays (``used``: rows in use; ``allocated``: with spare capacity).

        The lexical CSC search copy is counted once it exists (it is built by the first search
        after a change). Python objects (ids, texts, metadata) are not counted.
        """
        with self._lock:
            bufs = [self._alive, self._dense, self._sp_indptr, self._sp_indices, self._sp_data,
                    self._col, self._col_offsets]
            csc = 0
            if self._csc is not None:
                csc = int(self._csc.data.nbytes + self._csc.indices.nbytes + self._csc.indptr.nbytes)
            return {
                "dense": self._dense.nbytes_used,
                "sparse": self._sp_indptr.nbytes_used + self._sp_indices.nbytes_used + self._sp_data.nbytes_used,
                "sparse_search_copy": csc,
                "colbert": self._col.nbytes_used + self._col_offsets.nbytes_used,
                "used": sum(b.nbytes_used for b in bufs) + csc,
                "allocated": sum(b.nbytes_allocated for b in bufs) + csc,
            }

    # ------------------------------------------------------------------ adding
    def add(
        self,
        texts: Sequence[str],
        ids: Optional[Sequence[str]] = None,
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        *,
        batch_size: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> list[str]:
        """Encode ``texts`` as documents (dense + lexical + ColBERT) and store them.

        ``ids`` default to fresh ``uuid4().hex`` strings. An id already in the index is
        replaced (upsert). All texts are encoded before anything is stored, so an error
        leaves the index unchanged. Returns the ids in input order.

        Raises:
            ValueError: duplicate ids in this call, length mismatches, metadata that is not
                JSON-serialisable.
            TypeError: non-string texts or ids, or no encoder.
        """
        enc = self._require_encoder("add")
        texts, ids, metas = check_documents(texts, ids, metadatas, store="the index")
        if not texts:
            return []
        kwargs: dict[str, Any] = {"dense": True, "sparse": True, "colbert": True}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        if show_progress is not None:
            kwargs["show_progress"] = show_progress
        out = enc.encode_documents(texts, **kwargs)
        return self._add_checked(ids, texts, metas, out.dense, out.sparse, out.colbert)

    def add_encoded(
        self,
        ids: Optional[Sequence[str]],
        texts: Sequence[str],
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]],
        dense: np.ndarray,
        sparse: Union[Sequence[Mapping[int, float]], sp.spmatrix],
        colbert: Union[Sequence[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> list[str]:
        """Store documents whose vectors are already computed (no encoder needed).

        Args:
            ids: strings, or ``None`` for fresh uuid4 hex ids.
            texts: the document texts.
            metadatas: one dict (or ``None``) per document, or ``None``.
            dense: ``[N, dim]`` float array (expected L2-normalised, stored as is).
            sparse: one ``{token_id: weight}`` dict per document, or a ``[N, vocab]`` scipy matrix.
            colbert: one ``[T_i, colbert_dim]`` array per document, or a packed
                ``(flat [sum T_i, colbert_dim], offsets [N+1])`` pair.
        """
        texts, ids, metas = check_documents(texts, ids, metadatas, store="the index")
        return self._add_checked(ids, texts, metas, dense, sparse, colbert)

    def _add_checked(self, ids: list[str], texts: list[str], metas: list[dict], dense: Any,
                     sparse: Any, colbert: Any) -> list[str]:
        n = len(ids)
        # ---- dense
        dense = np.asarray(dense, dtype=np.float32)
        if dense.ndim == 1 and n == 1:
            dense = dense[None, :]
        if dense.shape != (n, self.dim):
            raise ValueError(f"dense must have shape ({n}, {self.dim}); got {dense.shape}")
        if not np.isfinite(dense).all():
            raise ValueError("dense vectors contain NaN or infinity")
        # ---- sparse -> CSR pieces
        if sp.issparse(sparse):
            csr = sp.csr_matrix(sparse, dtype=np.float32)
            csr.sum_duplicates()
            if csr.shape[0] != n:
                raise ValueError(f"sparse has {csr.shape[0]} rows for {n} documents")
            s_indptr = csr.indptr.astype(np.int64)
            s_indices = csr.indices.astype(np.int64)
            s_data = csr.data.astype(np.float32)
        else:
            sparse = list(sparse)
            if len(sparse) != n:
                raise ValueError(f"got {len(sparse)} sparse weight dicts for {n} documents")
            lengths = np.fromiter((len(w) for w in sparse), dtype=np.int64, count=n)
            s_indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=s_indptr[1:])
            total = int(s_indptr[-1])
            s_indices = np.empty(total, dtype=np.int64)
            s_data = np.empty(total, dtype=np.float32)
            for i, w in enumerate(sparse):
                if not isinstance(w, Mapping):
                    raise TypeError(f"sparse[{i}] must be a dict {{token_id: weight}}; got {type(w).__name__}")
                a, b = s_indptr[i], s_indptr[i + 1]
                if b > a:
                    s_indices[a:b] = np.fromiter((int(t) for t in w.keys()), dtype=np.int64, count=b - a)
                    s_data[a:b] = np.fromiter(w.values(), dtype=np.float32, count=b - a)
        if len(s_indices):
            lo, hi = int(s_indices.min()), int(s_indices.max())
            if lo < 0 or (self.vocab_size is not None and hi >= self.vocab_size) or hi >= 2**31 - 1:
                bad = lo if lo < 0 else hi
                raise ValueError(f"lexical token id {bad} is outside the vocabulary [0, {self.vocab_size or 2**31 - 1})")
            if not np.isfinite(s_data).all():
                raise ValueError("lexical weights contain NaN or infinity")
        # ---- colbert -> packed
        if isinstance(colbert, tuple) and len(colbert) == 2 and np.ndim(colbert[1]) == 1 and np.ndim(colbert[0]) == 2:
            c_flat = np.asarray(colbert[0])
            c_offsets = np.asarray(colbert[1], dtype=np.int64)
            if len(c_offsets) != n + 1 or c_offsets[0] != 0 or np.any(np.diff(c_offsets) < 0) or c_offsets[-1] != len(c_flat):
                raise ValueError(f"packed ColBERT offsets must be non-decreasing, start at 0, end at {len(c_flat)} "
                                 f"and have {n + 1} entries")
        else:
            colbert = list(colbert)
            if len(colbert) != n:
                raise ValueError(f"got {len(colbert)} ColBERT arrays for {n} documents")
            c_offsets = np.zeros(n + 1, dtype=np.int64)
            c_offsets[1:] = np.cumsum([len(c) for c in colbert])
            for i, c in enumerate(colbert):
                if np.ndim(c) != 2 or np.shape(c)[1] != self.colbert_dim:
                    raise ValueError(f"colbert[{i}] must have shape (tokens, {self.colbert_dim}); got {np.shape(c)}")
            c_flat = (np.concatenate([np.asarray(c) for c in colbert], axis=0) if int(c_offsets[-1])
                      else np.zeros((0, self.colbert_dim), dtype=np.float32))
        if c_flat.ndim != 2 or c_flat.shape[1] != self.colbert_dim:
            raise ValueError(f"ColBERT vectors must have shape (tokens, {self.colbert_dim}); got {c_flat.shape}")
        step = max(1, _COLBERT_CHUNK_VALUES // self.colbert_dim)
        if not all(np.isfinite(c_flat[a:a + step]).all() for a in range(0, len(c_flat), step)):
            raise ValueError("ColBERT vectors contain NaN or infinity")

        with self._lock:
            base = self._n_rows
            # write everything after the used rows first; nothing is visible until committed
            self._dense.write_tail(dense)
            self._sp_indices.write_tail(s_indices.astype(np.int32))
            self._sp_data.write_tail(s_data)
            self._sp_indptr.write_tail(s_indptr[1:] + self._sp_indptr.view[-1])
            self._col.write_tail(c_flat.astype(self._col.arr.dtype, copy=False))
            self._col_offsets.write_tail(c_offsets[1:] + self._col_offsets.view[-1])
            self._alive.write_tail(np.ones(n, dtype=np.bool_))
            # commit (no allocation below this line)
            for buf, cnt in ((self._dense, n), (self._sp_indices, len(s_indices)), (self._sp_data, len(s_data)),
                             (self._sp_indptr, n), (self._col, len(c_flat)), (self._col_offsets, n), (self._alive, n)):
                buf.commit(cnt)
            alive = self._alive.arr
            for j, i in enumerate(ids):
                old = self._row.get(i)
                if old is not None:
                    alive[old] = False
                    self._n_dead += 1
                self._row[i] = base + j
            self._ids.extend(ids)
            self._texts.extend(texts)
            self._metas.extend(metas)
            if len(s_indices):
                self._max_token = max(self._max_token, int(s_indices.max()))
            self._invalidate()
            self._maybe_compact()
        return list(ids)

    # ------------------------------------------------------------------ delete / get
    def delete(self, ids: Sequence[str], *, ignore_missing: bool = False) -> None:
        """Delete documents by id.

        Unknown ids raise ``KeyError`` naming them and nothing is deleted, unless
        ``ignore_missing=True`` (then they are skipped).
        """
        ids = _check_str_list(ids, "ids")
        with self._lock:
            missing = [i for i in dict.fromkeys(ids) if i not in self._row]
            if missing and not ignore_missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}; nothing was deleted "
                               "(pass ignore_missing=True to skip unknown ids)")
            alive = self._alive.arr
            for i in dict.fromkeys(ids):
                row = self._row.pop(i, None)
                if row is not None:
                    alive[row] = False
                    self._n_dead += 1
            self._invalidate()
            self._maybe_compact()

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """Documents by id, in the order asked (scores are 0). Unknown ids raise ``KeyError``."""
        ids = _check_str_list(ids, "ids")
        with self._lock:
            missing = [i for i in ids if i not in self._row]
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}")
            return [self._hit(self._row[i]) for i in ids]

    def _hit(self, row: int, score: float = 0.0, d: float = 0.0, s: float = 0.0, c: float = 0.0) -> Hit:
        return scored_hit(self._ids[row], self._texts[row], copy.deepcopy(self._metas[row]), score, d, s, c)

    def vectors(self, id: str) -> tuple[np.ndarray, dict[int, float], np.ndarray]:
        """The stored ``(dense [dim], lexical {token: weight}, colbert [T, colbert_dim] float32)`` of one document."""
        with self._lock:
            if id not in self._row:
                raise KeyError(f"id {id!r} not in the index")
            r = self._row[id]
            a, b = self._sp_indptr.view[r], self._sp_indptr.view[r + 1]
            lex = {int(t): float(w) for t, w in zip(self._sp_indices.view[a:b], self._sp_data.view[a:b])}
            ca, cb = self._col_offsets.view[r], self._col_offsets.view[r + 1]
            return self._dense.view[r].copy(), lex, self._col.view[ca:cb].astype(np.float32)

    # ------------------------------------------------------------------ compaction
    def _maybe_compact(self) -> None:
        if self._n_dead and self._n_dead * 4 > self._n_rows:
            self.compact()

    def compact(self) -> None:
        """Drop deleted rows from storage and trim spare capacity."""
        with self._lock:
            keep = np.flatnonzero(self._alive.view)
            indptr = self._sp_indptr.view
            sp_lens = indptr[1:][keep] - indptr[:-1][keep]
            sp_rows = _ranges(indptr[:-1][keep], sp_lens)
            offs = self._col_offsets.view
            col_lens = offs[1:][keep] - offs[:-1][keep]
            col_rows = _ranges(offs[:-1][keep], col_lens)
            new_indptr = np.zeros(len(keep) + 1, dtype=np.int64)
            np.cumsum(sp_lens, out=new_indptr[1:])
            new_offs = np.zeros(len(keep) + 1, dtype=np.int64)
            np.cumsum(col_lens, out=new_offs[1:])
            dense = self._dense.view[keep]
            sp_idx = self._sp_indices.view[sp_rows]
            sp_dat = self._sp_data.view[sp_rows]
            col = self._col.view[col_rows]
            keep_list = keep.tolist()
            ids = [self._ids[i] for i in keep_list]
            texts = [self._texts[i] for i in keep_list]
            metas = [self._metas[i] for i in keep_list]
            # commit
            self._dense.replace(dense)
            self._sp_indices.replace(sp_idx)
            self._sp_data.replace(sp_dat)
            self._sp_indptr.replace(new_indptr)
            self._col.replace(col)
            self._col_offsets.replace(new_offs)
            self._alive.replace(np.ones(len(keep), dtype=np.bool_))
            self._ids, self._texts, self._metas = ids, texts, metas
            self._row = {i: r for r, i in enumerate(ids)}
            self._n_dead = 0
            self._invalidate()

    # ------------------------------------------------------------------ search
    # search(query, ...) is StoreBase.search: checks, encode_queries, then search_encoded
    _store_noun = "index"
    _encoder_fix = "create/load the index with an encoder"

    def _nothing_to_search(self) -> bool:
        return len(self) == 0

    def search_encoded(
        self,
        dense_q: np.ndarray,
        sparse_q: Mapping[int, float],
        colbert_q: np.ndarray,
        k: int = 4,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        *,
        filter: Optional[Mapping[str, Any]] = None,
        candidates: int = 100,
        mode: FusionMode = "weighted",
        rrf_k: int = 60,
        exhaustive: bool = False,
    ) -> list[Hit]:
        """:meth:`search` with a precomputed query: ``dense_q [dim]``, ``sparse_q {token: weight}``,
        ``colbert_q [Tq, colbert_dim]``. No encoder needed."""
        w = check_search_args(k, weights, candidates, mode, rrf_k)
        dense_q = np.asarray(dense_q, dtype=np.float32).reshape(-1)
        if dense_q.shape != (self.dim,):
            raise ValueError(f"dense query must have {self.dim} values; got shape {np.shape(dense_q)}")
        colbert_q = np.asarray(colbert_q, dtype=np.float32)
        if colbert_q.ndim != 2 or colbert_q.shape[1] != self.colbert_dim:
            raise ValueError(f"ColBERT query must have shape (tokens, {self.colbert_dim}); got {colbert_q.shape}")
        if not isinstance(sparse_q, Mapping):
            raise TypeError(f"sparse query must be a dict {{token_id: weight}}; got {type(sparse_q).__name__}")
        with self._lock:
            if len(self) == 0:
                return []
            eligible = self._alive.view
            if filter:
                eligible = eligible & self._filter_mask(filter)
            rows = np.flatnonzero(eligible)
            if len(rows) == 0:
                return []
            dense_all = self._dense.view @ dense_q                      # [N_rows] float32
            lex_all = self._lexical_all(sparse_q)                       # [N_rows] float32
            if exhaustive or len(rows) <= candidates:
                cand = rows
            else:
                cand = self._select_candidates(rows, dense_all, lex_all, candidates)
            d = dense_all[cand]
            s = lex_all[cand]
            c = self._colbert(colbert_q, cand)
            fused, order = rank(d, s, c, w, k, mode, rrf_k)
            return [self._hit(int(cand[i]), fused[i], d[i], s[i], c[i]) for i in order]

    def _lexical_all(self, sparse_q: Mapping[int, float]) -> np.ndarray:
        n = self._n_rows
        if not sparse_q or self._sp_indices.n == 0:
            return np.zeros(n, dtype=np.float32)
        if self._csc is None:
            width = self._max_token + 1
            csr = sp.csr_matrix((self._sp_data.view, self._sp_indices.view, self._sp_indptr.view),
                                shape=(n, max(width, 1)), copy=False)
            self._csc = csr.tocsc()
            self._csc.sum_duplicates()
        width = self._csc.shape[1]
        tok = np.fromiter((int(t) for t in sparse_q.keys()), dtype=np.int64, count=len(sparse_q))
        wq = np.fromiter(sparse_q.values(), dtype=np.float32, count=len(sparse_q))
        keep = (tok >= 0) & (tok < width)
        tok, wq = tok[keep], wq[keep]
        if len(tok) == 0:
            return np.zeros(n, dtype=np.float32)
        sub = self._csc[:, tok]
        return np.asarray(sub @ wq, dtype=np.float32).reshape(-1)

    @staticmethod
    def _select_candidates(rows: np.ndarray, dense_all: np.ndarray, lex_all: np.ndarray, n: int) -> np.ndarray:
        d = dense_all[rows]
        top_d = rows[np.argpartition(-d, n - 1)[:n]] if len(rows) > n else rows
        l = lex_all[rows]
        pos = np.flatnonzero(l > 0)
        if len(pos) > n:
            pos = pos[np.argpartition(-l[pos], n - 1)[:n]]
        return np.union1d(top_d, rows[pos])

    def _colbert(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """ColBERT scores of ``q`` against the candidate rows; gathers fp16 slices in chunks."""
        offs = self._col_offsets.view
        flat = self._col.view
        starts = offs[:-1][cand]
        lens = offs[1:][cand] - starts
        out = np.zeros(len(cand), dtype=np.float32)
        if len(q) == 0:
            return out
        budget = max(_COLBERT_CHUNK_VALUES // self.colbert_dim, int(lens.max(initial=0)))
        csum = np.cumsum(lens)
        contiguous = int(cand[-1]) - int(cand[0]) + 1 == len(cand) if len(cand) else False
        lo = 0
        while lo < len(cand):
            base = csum[lo - 1] if lo else 0
            hi = int(np.searchsorted(csum, base + budget, side="right"))
            hi = max(hi, lo + 1)
            l = lens[lo:hi]
            if contiguous:  # consecutive rows: one slice, no gather
                sub = flat[int(starts[lo]): int(starts[lo]) + int(l.sum())].astype(np.float32)
            else:
                sub = flat[_ranges(starts[lo:hi], l)].astype(np.float32, copy=False)
            sub_offs = np.zeros(hi - lo + 1, dtype=np.int64)
            np.cumsum(l, out=sub_offs[1:])
            out[lo:hi] = colbert_scores_packed(q, sub, sub_offs)
            lo = hi
        return out

    def _filter_mask(self, filter: Mapping[str, Any]) -> np.ndarray:
        n = self._n_rows
        if callable(filter) and not isinstance(filter, Mapping):  # a predicate metadata -> bool
            return np.fromiter((bool(filter(MappingProxyType(m))) for m in self._metas), dtype=np.bool_, count=n)
        if not isinstance(filter, Mapping):
            raise TypeError(f"filter must be a dict {{key: value}} or a callable metadata -> bool; "
                            f"got {type(filter).__name__}")
        mask = np.ones(n, dtype=np.bool_)
        for key, wanted in filter.items():
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            by_value, unhashable = self._value_index(key)
            m = np.zeros(n, dtype=np.bool_)
            for v in values:
                try:
                    rows = by_value.get(v)
                except TypeError:  # an unhashable filter value: compare one by one
                    m |= np.fromiter((meta.get(key) == v for meta in self._metas), dtype=np.bool_, count=n)
                    continue
                if rows is not None:
                    m[rows] = True
                for r, val in unhashable:
                    if val == v:
                        m[r] = True
            mask &= m
        return mask

    def _value_index(self, key: str) -> tuple[dict, list]:
        """``{value: rows}`` for one metadata key (built lazily, dropped on every change)."""
        idx = self._meta_index.get(key)
        if idx is None:
            by_value: dict = {}
            unhashable: list = []
            for r, meta in enumerate(self._metas):
                v = meta.get(key)
                try:
                    by_value.setdefault(v, []).append(r)
                except TypeError:
                    unhashable.append((r, v))
            by_value = {v: np.asarray(rs, dtype=np.int64) for v, rs in by_value.items()}
            idx = self._meta_index[key] = (by_value, unhashable)
        return idx

    # ------------------------------------------------------------------ persistence
    def save(self, directory: PathLike) -> None:
        """Write the index to ``directory`` atomically.

        Files go to a temporary folder beside ``directory``, are fsynced, and then replace
        ``directory`` by rename, so a crash mid-save leaves the previous index intact.
        Format: ``.npy`` arrays (no pickle), ``documents.json`` (ids, texts, metadata) and
        ``manifest.json`` (format version, model, sizes, SHA-256 of every file).
        """
        target = Path(directory).absolute()
        if target.exists() and not target.is_dir():
            raise ValueError(f"cannot save the index to {str(target)!r}: it is a file; pass a folder path")
        if target.is_dir() and any(target.iterdir()) and not (target / _MANIFEST).is_file():
            raise ValueError(f"refusing to save over {str(target)!r}: it is a non-empty folder that is not a saved "
                             "HybridIndex (no manifest.json); pass a new or empty folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._n_dead:
                self.compact()
            tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                files: dict[str, dict] = {}
                arrays = {
                    "dense.npy": self._dense.view,
                    "sparse_indptr.npy": self._sp_indptr.view,
                    "sparse_indices.npy": self._sp_indices.view,
                    "sparse_data.npy": self._sp_data.view,
                    "colbert.npy": self._col.view,
                    "colbert_offsets.npy": self._col_offsets.view,
                }
                for name, arr in arrays.items():
                    files[name] = _write_array(tmp / name, arr)
                docs = {"ids": self._ids, "texts": self._texts, "metadatas": self._metas}
                files[_DOCUMENTS] = _write_bytes(tmp / _DOCUMENTS,
                                                 json.dumps(docs, ensure_ascii=False, allow_nan=False).encode("utf-8"))
                from . import __version__

                manifest = {
                    "format": _FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "bgem3_version": __version__,
                    "model_name": self.model_name,
                    "dim": self.dim,
                    "colbert_dim": self.colbert_dim,
                    "vocab_size": self.vocab_size,
                    "colbert_dtype": self.colbert_dtype,
                    "count": self._n_rows,
                    "colbert_tokens": int(self._col.n),
                    "sparse_nnz": int(self._sp_indices.n),
                    "files": files,
                }
                _write_bytes(tmp / _MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))
                _fsync_dir(tmp)
                old = None
                if target.exists():
                    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                    os.rename(target, old)
                os.rename(tmp, target)
                _fsync_dir(target.parent)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(
        cls,
        directory: PathLike,
        encoder: Any = None,
        *,
        load_encoder: bool = True,
        allow_model_mismatch: bool = False,
        verify: bool = True,
        **encoder_kwargs: Any,
    ) -> "HybridIndex":
        """Read an index written by :meth:`save`.

        Args:
            directory: the folder given to :meth:`save`.
            encoder: an :class:`~bgem3.Encoder` or model name/folder; ``None`` loads
                ``Encoder(<manifest model_name>, **encoder_kwargs)`` (or no encoder with
                ``load_encoder=False``, for :meth:`search_encoded` only).
            allow_model_mismatch: accept an encoder whose name differs from the manifest's
                (the dense dimension must still match).
            verify: check every file's SHA-256 against the manifest (reads every byte once).

        Raises:
            FileNotFoundError: no such folder.
            IndexFormatError: missing/truncated/corrupted file, unknown format version, or an
                encoder for another model.
        """
        root = Path(directory).absolute()
        if not root.is_dir():
            hint = ""
            backups = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
            if backups:
                hint = (f"; a previous save was interrupted after moving the old index to {str(backups[-1])!r}: "
                        f"rename that folder to {str(root)!r} to recover it")
            raise FileNotFoundError(f"no saved HybridIndex at {str(root)!r}{hint}")
        manifest = _read_manifest(root)
        name = manifest["model_name"]
        if isinstance(encoder, (str, os.PathLike)):
            from .encoder import Encoder

            encoder = Encoder(encoder, **encoder_kwargs)
        elif encoder is None and load_encoder:
            from .encoder import Encoder

            try:
                encoder = Encoder(name, **encoder_kwargs)
            except OSError as exc:
                raise type(exc)(f"{exc}\n(while loading the encoder {name!r} recorded in {str(root / _MANIFEST)!r}: "
                                "pass encoder=... to use another copy of the model, or load_encoder=False to "
                                "search with precomputed vectors only)") from exc
        elif encoder_kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(encoder_kwargs)}: encoder options only apply "
                            "when the encoder is loaded by name")
        if encoder is not None:
            enc_dim = int(encoder.hidden_size)
            if enc_dim != manifest["dim"]:
                raise IndexFormatError(
                    f"the index at {str(root)!r} was built with {name!r} (dense dim {manifest['dim']}), but the encoder "
                    f"{encoder.model_name!r} has dim {enc_dim}; load it with the model it was built with")
            if not allow_model_mismatch and not _same_model(name, str(encoder.model_name)):
                raise IndexFormatError(
                    f"the index at {str(root)!r} was built with model {name!r}, but the encoder is {encoder.model_name!r}; "
                    "queries must be encoded by the model that encoded the documents. Load with that model, or pass "
                    "allow_model_mismatch=True if it is the same model under another name/path")
        arrays = {f: _read_array(root, f, manifest, verify) for f in _ARRAY_FILES}
        docs_raw = _read_file_bytes(root, _DOCUMENTS, manifest, verify)
        try:
            docs = json.loads(docs_raw.decode("utf-8"))
            ids, texts, metas = docs["ids"], docs["texts"], docs["metadatas"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{str(root / _DOCUMENTS)!r} is not a valid documents file ({exc}); "
                                   "the index is corrupted: rebuild it or restore a backup") from None
        _check_consistency(root, manifest, arrays, ids, texts, metas)

        index = cls.__new__(cls)
        index.encoder = encoder
        index.model_name = name
        index.dim = int(manifest["dim"])
        index.colbert_dim = int(manifest["colbert_dim"])
        index.vocab_size = manifest["vocab_size"]
        index.colbert_dtype = manifest["colbert_dtype"]
        index._lock = threading.RLock()
        index._reset_storage()
        n = len(ids)
        index._ids, index._texts, index._metas = list(ids), list(texts), list(metas)
        index._row = {i: r for r, i in enumerate(index._ids)}
        index._alive.replace(np.ones(n, dtype=np.bool_))
        index._dense.replace(arrays["dense.npy"])
        index._sp_indptr.replace(arrays["sparse_indptr.npy"])
        index._sp_indices.replace(arrays["sparse_indices.npy"])
        index._sp_data.replace(arrays["sparse_data.npy"])
        index._col.replace(arrays["colbert.npy"])
        index._col_offsets.replace(arrays["colbert_offsets.npy"])
        index._max_token = int(arrays["sparse_indices.npy"].max()) if len(arrays["sparse_indices.npy"]) else -1
        return index


# --------------------------------------------------------------------------- helpers
def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    norm = lambda x: os.path.basename(os.path.normpath(x)).lower()  # noqa: E731
    return norm(a) == norm(b) and norm(a) not in ("", ".")


class _HashingWriter:
    """File-like sink that hashes and counts what passes through."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.h.update(mv)
        self.size += len(mv)
        return self.f.write(mv)


def _write_array(path: Path, arr: np.ndarray) -> dict:
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        np.save(w, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": w.h.hexdigest(), "bytes": w.size, "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _write_bytes(path: Path, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _read_manifest(root: Path) -> dict:
    path = root / _MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{str(path)!r} is missing: {str(root)!r} is not a saved HybridIndex "
                               "(save one with HybridIndex.save(folder))")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{str(path)!r} is not valid JSON ({exc}); the index is corrupted: rebuild it "
                               "or restore a backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        raise IndexFormatError(f"{str(path)!r} is not a HybridIndex manifest (format={manifest.get('format')!r} "
                               f"if a dict); expected format {_FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        fix = ("it was written by a newer bgem3: upgrade bgem3 (pip install -U bgem3)" if newer else
               "rebuild the index with this version of bgem3")
        raise IndexFormatError(f"{str(path)!r} has format_version {version!r}, but this bgem3 reads version "
                               f"{FORMAT_VERSION}; {fix}")
    required = ("model_name", "dim", "colbert_dim", "vocab_size", "colbert_dtype", "count", "colbert_tokens",
                "sparse_nnz", "files")
    missing = [k for k in required if k not in manifest]
    if missing or manifest.get("colbert_dtype") not in _COLBERT_DTYPES:
        raise IndexFormatError(f"{str(path)!r} lacks or has invalid fields {missing or ['colbert_dtype']}; the index "
                               "is corrupted: rebuild it or restore a backup")
    return manifest


def _read_file_bytes(root: Path, name: str, manifest: dict, verify: bool) -> bytes:
    path = root / name
    meta = manifest["files"].get(name)
    if meta is None:
        raise IndexFormatError(f"{str(root / _MANIFEST)!r} does not list {name!r}; the index is corrupted: rebuild it")
    if not path.is_file():
        raise IndexFormatError(f"{str(path)!r} is missing; the index is incomplete: rebuild it or restore a backup")
    data = path.read_bytes()
    _check_bytes(path, data, meta, verify)
    return data


def _check_bytes(path: Path, data: Union[bytes, memoryview], meta: dict, verify: bool) -> None:
    if len(data) != meta["bytes"]:
        raise IndexFormatError(f"{str(path)!r} has {len(data)} bytes but the manifest says {meta['bytes']}: the file "
                               "is truncated or was replaced; rebuild the index or restore a backup")
    if verify and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise IndexFormatError(f"{str(path)!r} does not match its SHA-256 checksum in the manifest: the file is "
                               "corrupted; rebuild the index or restore a backup")


def _read_array(root: Path, name: str, manifest: dict, verify: bool) -> np.ndarray:
    path = root / name
    data = _read_file_bytes(root, name, manifest, verify)
    meta = manifest["files"][name]
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{str(path)!r} is not a readable .npy array ({exc}); the index is corrupted: "
                               "rebuild it or restore a backup") from None
    if list(arr.shape) != list(meta["shape"]) or str(arr.dtype) != meta["dtype"]:
        raise IndexFormatError(f"{str(path)!r} holds {arr.dtype}{list(arr.shape)} but the manifest says "
                               f"{meta['dtype']}{meta['shape']}; the index is corrupted: rebuild it")
    return arr


def _check_consistency(root: Path, m: dict, a: dict, ids: Any, texts: Any, metas: Any) -> None:
    n = m["count"]

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"the index at {str(root)!r} is inconsistent ({what}); rebuild it or restore a backup")

    if not (isinstance(ids, list) and isinstance(texts, list) and isinstance(metas, list)):
        raise bad("documents.json must hold lists")
    if not (len(ids) == len(texts) == len(metas) == n):
        raise bad(f"documents.json has {len(ids)} ids, {len(texts)} texts, {len(metas)} metadatas for count={n}")
    if len(set(ids)) != n:
        raise bad("duplicate ids in documents.json")
    expected = {
        "dense.npy": ((n, m["dim"]), np.float32),
        "sparse_indptr.npy": ((n + 1,), np.int64),
        "sparse_indices.npy": ((m["sparse_nnz"],), np.int32),
        "sparse_data.npy": ((m["sparse_nnz"],), np.float32),
        "colbert.npy": ((m["colbert_tokens"], m["colbert_dim"]), _COLBERT_DTYPES[m["colbert_dtype"]]),
        "colbert_offsets.npy": ((n + 1,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        arr = a[name]
        if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
            raise bad(f"{name} is {arr.dtype}{arr.shape}, expected {np.dtype(dtype)}{tuple(shape)}")
    for name, total in (("sparse_indptr.npy", m["sparse_nnz"]), ("colbert_offsets.npy", m["colbert_tokens"])):
        p = a[name]
        if p[0] != 0 or p[-1] != total or np.any(np.diff(p) < 0):
            raise bad(f"{name} offsets do not run from 0 to {total}")
    idx = a["sparse_indices.npy"]
    if len(idx) and (idx.min() < 0 or (m["vocab_size"] is not None and idx.max() >= m["vocab_size"])):
        raise bad("lexical token id outside the vocabulary")
