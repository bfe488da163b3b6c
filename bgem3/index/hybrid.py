"""``HybridIndex``: the embedded hybrid store (any subset of dense + lexical + ColBERT), on disk.

Rows live in segments (:mod:`bgem3.index.segment`): the in-memory tail receives ``add``;
``save`` writes the tail as a new immutable segment (incremental: O(new data)); ``load``
memory-maps the saved segments (open time independent of the index size). Deletes are
tombstones until :meth:`HybridIndex.compact`.

Search (``mode="auto"``, the default, is ``"weighted"`` unless the lexical channel is BM25, then
``"rrf"``; see :meth:`HybridIndex.fusion_mode`). ``mode="weighted"`` follows the BGE-M3 paper: candidates are the dense
top-``candidates`` united with the lexical top-``candidates``; each candidate gets every channel's
score and they are ranked by ``sum(w_c * s_c) / sum(w_c)`` over the channels the index holds --
with all three channels, float32 ColBERT and ``exhaustive=True`` exactly FlagEmbedding's
``compute_score()['colbert+sparse+dense']``.

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

import os
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .._checks import positive_int as _positive_int
from .._loading import load_encoder
from ..stores.base import StoreBase, check_documents, check_query
from ..stores.base import check_str_list as _check_str_list, encoder_from_model_name, encoder_shape, scored_hit
from ..scoring import DEFAULT_WEIGHTS
from ..types import FusionMode, Hit
from .codecs import COLBERT_CODECS, DENSE_CODECS, FLOAT16_MAX, ColbertCodec, dense_bits
from .dense_lists import DEFAULT_PROBE, CentroidTable
from .errors import IndexFormatError
from .lexical import LearnedSparse, LexicalBlock, LexicalChannel, QueryTerms, joined
from .search import (CHANNELS, COST_RULE_ROWS, DEFAULT_COLBERT_RERANK, adaptive_rerank, check_finite, colbert_pruned, colbert_scores, dense_candidates,
                     beside, dense_exact, dense_path, effective_weights, fuse, one_blas_thread, top_positive)
from .segment import DiskSegment, MemSegment, Segment, gather_rows

__all__ = ["HybridIndex"]

PathLike = Union[str, "os.PathLike[str]"]
#: the former fixed rule's row count (an exact dense scan up to this many eligible rows); the default
#: now picks the dense path by its estimated cost (:func:`bgem3.index.search.dense_path`), and
#: ``exact_dense_rows=`` given by the user is that fixed rule at the user's row count
DEFAULT_EXACT_DENSE_ROWS = 50_000


class _UnsetProbe(float):
    """The default ``dense_probe`` (0.2) as no one set it: a search that the cost rule sends down the
    Hamming path below 50,000 rows scans every row's bits instead (any value a user sets, 0.2
    included, is a plain float and is used as given)."""


UNSET_PROBE = _UnsetProbe(DEFAULT_PROBE)


def _probe_share(value: Any, name: str) -> float:
    """A share in (0, 1] (``dense_probe``), or ``ValueError`` naming it."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer))
            or not 0 < float(value) <= 1):
        raise ValueError(f"{name} must be a number in (0, 1] (the share of the dense lists a search scans; 1 = every "
                         f"row); got {value!r}")
    return float(value)


def _resolve_codec(colbert_codec: Optional[str], colbert_dtype: Optional[str]) -> str:
    if colbert_dtype is not None:
        if colbert_dtype not in ("float16", "float32"):
            raise ValueError(f"colbert_dtype must be 'float16' or 'float32' (it is kept as an alias of colbert_codec=); "
                             f"got {colbert_dtype!r}. For compressed ColBERT use colbert_codec= one of "
                             f"{list(COLBERT_CODECS)}")
        if colbert_codec is not None and colbert_codec != colbert_dtype:
            raise ValueError(f"colbert_dtype={colbert_dtype!r} and colbert_codec={colbert_codec!r} disagree; pass only "
                             "colbert_codec=")
        return colbert_dtype
    if colbert_codec is None:
        return HybridIndex.DEFAULT_COLBERT_CODEC
    if colbert_codec not in COLBERT_CODECS:
        raise ValueError(f"colbert_codec must be one of {list(COLBERT_CODECS)}; got {colbert_codec!r}")
    return colbert_codec


def _resolve_channels(channels: Any, encoder: Any, lexical: Optional[LexicalChannel]) -> tuple[str, ...]:
    no_heads = encoder is not None and getattr(encoder, "has_heads", True) is False
    if channels is None:
        if no_heads:
            out = ["dense"]
            if lexical is not None:
                out.append("lexical")
            return tuple(out)
        return CHANNELS
    if isinstance(channels, str):
        raise TypeError(f"channels must be a list of channel names, not a single string; wrap it: [{channels!r}]")
    try:
        chans = list(channels)
    except TypeError:
        raise TypeError(f"channels must be a list of names from {list(CHANNELS)}; got {type(channels).__name__}") from None
    unknown = [c for c in chans if c not in CHANNELS]
    if unknown or not chans or len(set(chans)) != len(chans):
        raise ValueError(f"channels must be a non-empty list of distinct names from {list(CHANNELS)}; got {chans!r}")
    return tuple(c for c in CHANNELS if c in chans)


class HybridIndex(StoreBase):
    """Embedded hybrid index over dense, lexical and ColBERT outputs (any subset), on disk.

    Args:
        encoder: an :class:`bgem3.Encoder`, a model name / folder (then ``Encoder(encoder,
            **encoder_kwargs)``), or ``None`` for an index fed with precomputed vectors
            (:meth:`add_encoded` / :meth:`search_encoded`); then ``dim`` is required.
        model_name: the model, as everywhere in this package: with no ``encoder`` and no ``dim``,
            ``HybridIndex(model_name="BAAI/bge-m3")`` loads it; with precomputed vectors
            (``encoder=None, dim=...``) it records which model made them (saved in the manifest);
            beside an ``encoder`` it must name that same model (else ValueError).
        dim: dense dimension (default: the encoder's hidden size).
        colbert_dim: ColBERT vector dimension (default: the encoder's ColBERT head, else ``dim``).
        vocab_size: lexical vocabulary size (default: the encoder's; ``None`` without an encoder:
            any token id up to 2**31 - 2).
        channels: which of ``("dense", "lexical", "colbert")`` the index stores (default: all
            three; for an encoder without BGE-M3 heads, ``("dense",)`` plus ``"lexical"`` when a
            non-learned ``lexical`` channel such as BM25 is given).
        lexical: the lexical channel object (default :class:`~bgem3.index.lexical.LearnedSparse`,
            BGE-M3's learned weights); see :mod:`bgem3.index.lexical` for the interface.
        colbert_codec: ``"float32"``, ``"float16"``, ``"int8"``, ``"2bit"`` or ``"1bit"``
            (bytes per 1024-d token saved: 4096 / 2048 / 1092 / 260 / 140); default
            :attr:`DEFAULT_COLBERT_CODEC`. See docs/index.md for the fidelity of each.
        colbert_dtype: the former name, kept as an alias for ``"float16"`` / ``"float32"``.
        dense_codec: ``"float32"`` (default, exact) or ``"float16"`` (half the dense bytes).
        exact_dense_rows: default ``None``: the dense candidates come from whichever path is
            estimated cheaper (:func:`~bgem3.index.search.dense_path`): an exact scan of every
            stored row, or a sign-bit Hamming shortlist rescored exactly (every row's bits below
            50,000 eligible rows, where it keeps >= 0.99 of the exact top-10; the probed lists
            above). A number: exactly the fixed rule, an exact scan up to that many eligible rows
            and the Hamming path (probed lists) above it. Not saved: set ``index.exact_dense_rows``
            after :meth:`load`.
        dense_probe: share of each saved segment's dense inverted lists a search scans (default
            0.2; ``1.0`` scans every row; see :mod:`bgem3.index.dense_lists`). Not saved: set
            ``index.dense_probe`` after :meth:`load`, or pass ``search_encoded(dense_probe=)``.
            Left unset, the Hamming path that the cost rule picks below 50,000 rows scans every
            row's bits; a value set here, on the attribute or per search is always used.
        **encoder_kwargs: passed to :class:`bgem3.Encoder` when ``encoder`` is a string.

    Ids are strings. Adding an id that is already present replaces that document (upsert).

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
        >>> dense_only = HybridIndex(None, dim=4, channels=["dense"])
        >>> dense_only.add_encoded(["a"], ["A"], None, dense[:1])
        ['a']
        >>> dense_only.search_encoded(dense[0], k=1)[0].channels
        ('dense',)
    """

    DEFAULT_COLBERT_CODEC = "int8"

    def __init__(
        self,
        encoder: Any = None,
        *,
        model_name: Optional[str] = None,
        dim: Optional[int] = None,
        colbert_dim: Optional[int] = None,
        vocab_size: Optional[int] = None,
        channels: Optional[Sequence[str]] = None,
        lexical: Optional[LexicalChannel] = None,
        colbert_codec: Optional[str] = None,
        colbert_dtype: Optional[str] = None,
        dense_codec: str = "float32",
        exact_dense_rows: Optional[int] = None,
        dense_probe: Optional[float] = None,
        **encoder_kwargs: Any,
    ) -> None:
        encoder = load_encoder(encoder_from_model_name(encoder, model_name, dim, "HybridIndex"), encoder_kwargs,
                               owner="HybridIndex")
        codec_name = _resolve_codec(colbert_codec, colbert_dtype)
        if dense_codec not in DENSE_CODECS:
            raise ValueError(f"dense_codec must be one of {list(DENSE_CODECS)}; got {dense_codec!r}")
        if lexical is not None and not isinstance(lexical, LexicalChannel):
            raise TypeError(f"lexical must be a bgem3.index.lexical.LexicalChannel; got {type(lexical).__name__}")
        if (lexical is None and encoder is not None and not isinstance(encoder, (str, os.PathLike))
                and getattr(encoder, "has_heads", True) is False and (channels is None or "lexical" in channels)):
            from .bm25 import BM25  # a model without BGE-M3's lexical head: BM25 is its lexical channel

            lexical = BM25()
        chans = _resolve_channels(channels, encoder, lexical)
        if lexical is not None and "lexical" not in chans:
            raise ValueError(f"lexical={type(lexical).__name__}(...) was given but channels={list(chans)} has no "
                             "'lexical'; add it to channels")
        if "lexical" in chans and lexical is None:
            lexical = LearnedSparse()
        self.encoder = encoder
        if encoder is not None:
            if not all(hasattr(encoder, a) for a in ("encode_queries", "encode_documents", "hidden_size")):
                raise TypeError("encoder must be a bgem3.Encoder, a model name/folder or None; got "
                                f"{type(encoder).__name__}")
            if getattr(encoder, "has_heads", True) is False:
                needs = [c for c in chans if c == "colbert"] + (
                    ["lexical (learned)"] if lexical is not None and lexical.uses_sparse_head else [])
                if needs:
                    raise ValueError(f"channels {needs} need BGE-M3 heads, but the encoder for {encoder.model_name!r} "
                                     "has none (colbert_linear.pt, sparse_linear.pt); use channels=['dense'] (plus a "
                                     "BM25 lexical channel) or a BGE-M3 checkpoint such as 'BAAI/bge-m3'")
                enc_name, enc_dim, enc_cdim = str(encoder.model_name), int(encoder.hidden_size), int(encoder.hidden_size)
            else:
                enc_name, enc_dim, enc_cdim = encoder_shape(encoder, "HybridIndex")
            if dim is not None and int(dim) != enc_dim:
                raise ValueError(f"dim={dim} does not match the encoder's hidden size {enc_dim}; leave dim unset")
            dim = enc_dim
            model_name = enc_name if model_name is None else model_name
            colbert_dim = enc_cdim if colbert_dim is None else colbert_dim
            if vocab_size is None and (lexical is None or lexical.uses_sparse_head):  # BM25 ids are its own
                vocab_size = int(getattr(encoder, "vocab_size", 0) or 0) or None
        elif dim is None:
            raise ValueError("HybridIndex(None) stores precomputed vectors: pass dim=<dense dimension> "
                             "(and model_name=... to record where the vectors come from)")
        self.dim = _positive_int(dim, "dim")
        self.colbert_dim = _positive_int(colbert_dim if colbert_dim is not None else dim, "colbert_dim")
        self.model_name = str(model_name) if model_name is not None else "unknown"
        self.vocab_size: Optional[int] = _positive_int(vocab_size, "vocab_size") if vocab_size is not None else None
        if self.vocab_size is not None and self.vocab_size > 2**31 - 1:
            raise ValueError(f"vocab_size must be at most 2**31 - 1 (token ids are stored as int32); got {vocab_size}")
        self.channels = chans
        self.lexical = lexical
        self.colbert_codec = codec_name
        self.dense_codec = dense_codec
        self.exact_dense_rows: Optional[int] = (None if exact_dense_rows is None
                                                else _positive_int(exact_dense_rows, "exact_dense_rows"))
        self.dense_probe: float = UNSET_PROBE if dense_probe is None else _probe_share(dense_probe, "dense_probe")
        self.codec: Optional[ColbertCodec] = ColbertCodec(codec_name, self.colbert_dim) if "colbert" in chans else None
        self._init_state(uuid.uuid4().hex)

    def _init_state(self, index_uuid: str, home: Optional[Path] = None, segments: Sequence[DiskSegment] = (),
                    codec_dir: Optional[str] = None, base: Optional[dict] = None) -> None:
        """The handle's own state (after its configuration): one place for :meth:`__init__` (a new
        index) and :meth:`from_saved` (a saved one)."""
        self._lock = threading.RLock()
        self._segments: list[DiskSegment] = list(segments)
        self._tail = self._new_tail()
        self._idmap: Optional[dict[str, tuple[Segment, int]]] = None
        self._home: Optional[Path] = home
        self._uuid = index_uuid
        self._compact_pending = False  # compact() asked: the next save rewrites the saved segments
        self._centroids: Optional[CentroidTable] = None  # every segment's list centroids, one matrix (search)
        self._codec_dir: Optional[str] = codec_dir  # the committed codec's folder (see persistence)
        self._spilled: dict[str, Path] = {}  # segments spill() wrote that no save committed yet
        self._spill_created: set[Path] = set()
        self._pending_fds: dict[str, int] = {}  # shared flocks on the spilled segment folders
        self._pending_finalizer: Any = None  # closes them when the handle goes (see persistence)
        self._base: Optional[dict] = base  # the commit this handle last loaded / saved (see persistence)

    @classmethod
    def from_saved(cls, saved: Any) -> "HybridIndex":
        """The handle of a saved index, from the :class:`~bgem3.index.persistence.SavedIndex` record
        that :func:`~bgem3.index.persistence.load_index` read and checked (what :meth:`load`
        returns). ``exact_dense_rows`` and ``dense_probe`` are not saved: their defaults."""
        from .persistence import base_state

        self = cls.__new__(cls)
        self.encoder = saved.encoder
        self.model_name, self.dim, self.colbert_dim = saved.model_name, saved.dim, saved.colbert_dim
        self.vocab_size = saved.vocab_size
        self.channels, self.lexical = tuple(saved.channels), saved.lexical
        self.colbert_codec, self.dense_codec, self.codec = saved.colbert_codec, saved.dense_codec, saved.codec
        self.exact_dense_rows = None
        self.dense_probe = UNSET_PROBE
        self._init_state(saved.uuid, saved.root, saved.segments, saved.codec_dir,
                         base_state(saved.generation, saved.segments))
        return self

    # ------------------------------------------------------------------ basics
    @property
    def colbert_dtype(self) -> str:
        """The ColBERT codec's name (the former ``colbert_dtype``)."""
        return self.colbert_codec

    def _new_tail(self) -> MemSegment:
        extras = tuple(self.lexical.row_extras(LexicalBlock(np.zeros(1, np.int64), np.zeros(0, np.int32),
                                                            np.zeros(0, np.float32))).keys()) if self.lexical else ()
        return MemSegment(dense_dim=self.dim if "dense" in self.channels else None, dense_dtype=self.dense_codec,
                          colbert=self.codec, lexical_extras=extras, lexical="lexical" in self.channels)

    @property
    def _lexical_extras(self) -> tuple[str, ...]:
        return self._tail.lexical_extras

    def _all_segments(self) -> list[Segment]:
        segs: list[Segment] = list(self._segments)
        if self._tail.n:
            segs.append(self._tail)
        return segs

    def _id_map(self) -> dict[str, tuple[Segment, int]]:
        if self._idmap is None:
            m: dict[str, tuple[Segment, int]] = {}
            rows = 0
            for seg in self._all_segments():
                ids = seg.ids_list()
                dead = seg.dead
                live = np.flatnonzero(~dead[: seg.n]).tolist()
                rows += len(live)
                for r in live:
                    m[ids[r]] = (seg, r)
                if len(m) != rows:  # an id live in two rows: never made by add/upsert
                    raise IndexFormatError(
                        f"the index at {str(self._home)!r} is inconsistent (a document id is live in more than one "
                        f"row, segment {seg.name}; a segment may be listed twice); rebuild it or restore a backup")
            self._idmap = m
        return self._idmap

    def __len__(self) -> int:
        return sum(seg.n - seg.n_dead for seg in self._all_segments())

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._id_map()

    def __getstate__(self) -> dict:
        """Pickle / ``copy.deepcopy``: everything but the lock (a copy gets a fresh one)."""
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # pickled before from_saved / _init_state: a loaded handle then lacked these two
        self.__dict__.setdefault("_compact_pending", False)
        self.__dict__.setdefault("_pending_finalizer", None)

    @property
    def ids(self) -> list[str]:
        """Live ids, in storage order (insertion order; an upserted document moves to the end)."""
        with self._lock:
            out: list[str] = []
            for seg in self._all_segments():
                ids = seg.ids_list()
                out.extend(ids[r] for r in np.flatnonzero(seg.alive).tolist())
            return out

    @property
    def _n_dead(self) -> int:
        return sum(seg.n_dead for seg in self._all_segments())

    @property
    def _n_rows(self) -> int:
        return sum(seg.n for seg in self._all_segments())

    def __repr__(self) -> str:
        return (f"HybridIndex(model_name={self.model_name!r}, dim={self.dim}, documents={len(self)}, "
                f"channels={list(self.channels)}, colbert_codec={self.colbert_codec!r}, segments={len(self._segments)})")

    def memory_usage(self) -> dict[str, int]:
        """Bytes of the stored arrays, by part: ``dense``, ``dense_bits`` (the Hamming prefilter),
        ``sparse`` (lexical CSR), ``sparse_search_copy`` (the postings), ``colbert`` (codes,
        per-token floats, offsets); ``used`` is their sum, ``mapped`` the part memory-mapped
        from disk (resident only as far as the OS caches it), ``in_memory`` the rest."""
        with self._lock:
            out = {"dense": 0, "dense_bits": 0, "sparse": 0, "sparse_search_copy": 0, "colbert": 0}
            mapped = 0
            for seg in self._all_segments():
                part = seg.nbytes()
                bits = seg.array("dense_bits")
                nb = int(bits.nbytes) if bits is not None else 0
                part["dense"] -= nb
                part["dense_bits"] = nb
                for key, v in part.items():
                    out[key] += v
                if isinstance(seg, DiskSegment):
                    mapped += sum(part.values())
            out["used"] = sum(out.values())
            out["mapped"] = mapped
            out["in_memory"] = out["used"] - mapped
            out["allocated"] = out["used"]
            return out

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
        """Encode ``texts`` as documents (the index's channels) and store them.

        ``ids`` default to fresh ``uuid4().hex`` strings. An id already in the index is replaced
        (upsert). Everything is encoded and checked before anything is stored, so an error leaves
        the index unchanged. Returns the ids in input order.
        """
        enc = self._require_encoder("add")
        texts, ids, metas = check_documents(texts, ids, metadatas, store="the index")
        if not texts:
            return []
        kwargs: dict[str, Any] = {"dense": "dense" in self.channels,
                                  "sparse": bool(self.lexical is not None and self.lexical.uses_sparse_head),
                                  "colbert": "colbert" in self.channels}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        if show_progress is not None:
            kwargs["show_progress"] = show_progress
        out = enc.encode_documents(texts, **kwargs)
        rows = self.lexical.document_rows(texts, out) if self.lexical is not None else None
        return self._add_checked(ids, texts, metas, out.dense if kwargs["dense"] else None, rows,
                                 out.colbert if kwargs["colbert"] else None)

    def add_encoded(
        self,
        ids: Optional[Sequence[str]],
        texts: Sequence[str],
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]],
        dense: Optional[np.ndarray] = None,
        sparse: Any = None,
        colbert: Any = None,
    ) -> list[str]:
        """Store documents whose vectors are already computed (no encoder needed).

        Args:
            ids: strings, or ``None`` for fresh uuid4 hex ids.
            texts: the document texts.
            metadatas: one dict (or ``None``) per document, or ``None``.
            dense: ``[N, dim]`` float array (expected L2-normalised, stored as is).
            sparse: one ``{token_id: value}`` dict per document, or a ``[N, vocab]`` scipy matrix.
            colbert: one ``[T_i, colbert_dim]`` array per document, or a packed
                ``(flat [sum T_i, colbert_dim], offsets [N+1])`` pair.

        Pass ``None`` for a channel the index does not hold; a value for it is an error.
        """
        texts, ids, metas = check_documents(texts, ids, metadatas, store="the index")
        return self._add_checked(ids, texts, metas, dense, sparse, colbert)

    def _add_checked(self, ids: list[str], texts: list[str], metas: list[dict], dense: Any, sparse: Any,
                     colbert: Any) -> list[str]:
        batch = self._prepare(len(ids), dense, sparse, colbert)
        batch.update(ids=ids, texts=texts, metas=metas)
        self._commit_batch(batch)
        return list(ids)

    def _prepare(self, n: int, dense: Any, sparse: Any, colbert: Any, *, coded_colbert: bool = False) -> dict:
        """Validate and encode one batch's vectors; nothing is stored."""
        for name, value, present in (("dense", dense, "dense" in self.channels),
                                     ("sparse", sparse, "lexical" in self.channels),
                                     ("colbert", colbert, "colbert" in self.channels and not coded_colbert)):
            if present and value is None:
                raise ValueError(f"this index stores the {name} channel: pass {name}=... for every document")
            if not present and value is not None:
                raise ValueError(f"this index has no {name} channel (channels={list(self.channels)}); pass {name}=None "
                                 "or create the index with that channel")
        batch: dict[str, Any] = {}
        if dense is not None:
            d = np.asarray(dense, dtype=np.float32)
            if d.ndim == 1 and n == 1:
                d = d[None, :]
            if d.shape != (n, self.dim):
                raise ValueError(f"dense must have shape ({n}, {self.dim}); got {d.shape}")
            if not np.isfinite(d).all():
                raise ValueError("dense vectors contain NaN or infinity")
            if self.dense_codec == "float16" and n and float(np.abs(d).max()) > FLOAT16_MAX:
                raise ValueError(f"a dense value exceeds float16's range ({FLOAT16_MAX:g}); use dense_codec='float32'")
            batch["dense"] = d.astype(self.dense_codec, copy=False)
            batch["dense_bits"] = dense_bits(batch["dense"])  # of the stored values (float16 may round to 0)
        if sparse is not None:
            import scipy.sparse as sp

            if sp.issparse(sparse):
                csr = sp.csr_matrix(sparse)
                if csr.shape[0] != n:
                    raise ValueError(f"sparse has {csr.shape[0]} rows for {n} documents")
                blk = LexicalBlock.from_csr(csr.indptr, csr.indices, csr.data, vocab_size=self.vocab_size)
            else:
                if isinstance(sparse, (str, bytes)):
                    raise TypeError("sparse must be a list of {token_id: weight} dicts or a scipy matrix, not a string")
                rows = list(sparse)
                if len(rows) != n:
                    raise ValueError(f"got {len(rows)} sparse weight dicts for {n} documents")
                blk = LexicalBlock.from_rows(rows, vocab_size=self.vocab_size)
            batch["lexical"] = blk
            extras = self.lexical.row_extras(blk) if self.lexical is not None else {}
            if set(extras) != set(self._lexical_extras):
                raise ValueError(f"the lexical channel returned extras {sorted(extras)}, expected "
                                 f"{sorted(self._lexical_extras)}")
            for key, v in extras.items():
                v = np.asarray(v, dtype=np.float32)
                if v.shape != (n,) or not np.isfinite(v).all():
                    raise ValueError(f"lexical extra {key!r} must be {n} finite numbers")
                extras[key] = v
            batch["lexical_extras"] = extras
        if colbert is not None:
            flat, offsets = self._pack_colbert(n, colbert)
            codec = self.codec
            codec.check_values(flat)
            with self._lock:
                if not codec.fitted:
                    codec.fit(flat)
            codes, aux = codec.encode(flat)
            if aux is not None and not np.isfinite(aux).all():
                raise ValueError("ColBERT vectors are too large for the codec's per-token scale; normalise them")
            batch["col_codes"], batch["col_offsets"] = codes, offsets
            if aux is not None:
                batch["col_aux"] = aux
        return batch

    def _add_coded(self, ids: list[str], texts: list[str], metas: list[dict], dense: Optional[np.ndarray],
                   lexical: Optional[LexicalBlock], col_codes: Optional[np.ndarray], col_aux: Optional[np.ndarray],
                   col_offsets: Optional[np.ndarray]) -> list[str]:
        """Store rows whose ColBERT vectors are ALREADY in this index's codec (codes from
        ``index.codec.encode``): for benchmarks and converters that encode token vectors once and
        reuse the codes. Shapes and dtypes are checked; the codec must be fitted."""
        texts, ids, metas = check_documents(texts, ids, metas, store="the index")
        n = len(ids)
        batch = self._prepare(n, dense, [{}] * n if lexical is not None else None, None, coded_colbert=True)
        if lexical is not None:
            if lexical.n_rows != n:
                raise ValueError(f"the lexical block has {lexical.n_rows} rows for {n} documents")
            batch["lexical"] = LexicalBlock.from_csr(lexical.indptr, lexical.indices, lexical.values,
                                                     vocab_size=self.vocab_size)
            batch["lexical_extras"] = {k: np.asarray(v, np.float32) for k, v in
                                       (self.lexical.row_extras(batch["lexical"]) if self.lexical else {}).items()}
        if "colbert" in self.channels:
            codec = self.codec
            if not codec.fitted:
                raise ValueError("fit the codec first (index.codec.fit(sample_vectors))")
            col_offsets = np.asarray(col_offsets, dtype=np.int64)
            if (col_codes is None or col_codes.dtype != codec.code_dtype or col_codes.ndim != 2
                    or col_codes.shape[1] != codec.code_width or len(col_offsets) != n + 1 or col_offsets[0] != 0
                    or col_offsets[-1] != len(col_codes) or np.any(np.diff(col_offsets) < 0)):
                raise ValueError("col_codes/col_offsets do not match the codec and the documents")
            if codec.quantized:
                col_aux = np.asarray(col_aux, dtype=np.float32)
                if col_aux.shape != (len(col_codes),) or not np.isfinite(col_aux).all():
                    raise ValueError("col_aux must hold one finite float per token")
                batch["col_aux"] = col_aux
            batch["col_codes"], batch["col_offsets"] = col_codes, col_offsets
        batch.update(ids=ids, texts=texts, metas=metas)
        self._commit_batch(batch)
        return list(ids)

    def _pack_colbert(self, n: int, colbert: Any) -> tuple[np.ndarray, np.ndarray]:
        cd = self.colbert_dim
        if isinstance(colbert, tuple) and len(colbert) == 2 and np.ndim(colbert[1]) == 1 and np.ndim(colbert[0]) == 2:
            flat = np.asarray(colbert[0])
            offsets = np.asarray(colbert[1], dtype=np.int64)
            if (len(offsets) != n + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0)
                    or offsets[-1] != len(flat)):
                raise ValueError(f"packed ColBERT offsets must be non-decreasing, start at 0, end at {len(flat)} "
                                 f"and have {n + 1} entries")
        else:
            if isinstance(colbert, np.ndarray) and colbert.ndim == 2 and n == 1:
                colbert = [colbert]
            colbert = list(colbert)
            if len(colbert) != n:
                raise ValueError(f"got {len(colbert)} ColBERT arrays for {n} documents")
            offsets = np.zeros(n + 1, dtype=np.int64)
            for i, c in enumerate(colbert):
                if np.ndim(c) != 2 or np.shape(c)[1] != cd:
                    raise ValueError(f"colbert[{i}] must have shape (tokens, {cd}); got {np.shape(c)}")
                offsets[i + 1] = offsets[i] + len(c)
            flat = (np.concatenate([np.asarray(c, dtype=np.float32) for c in colbert], axis=0) if int(offsets[-1])
                    else np.zeros((0, cd), dtype=np.float32))
        if flat.ndim != 2 or flat.shape[1] != cd:
            raise ValueError(f"ColBERT vectors must have shape (tokens, {cd}); got {flat.shape}")
        flat = np.asarray(flat, dtype=np.float32)
        step = max(1, (1 << 24) // cd)
        if not all(np.isfinite(flat[a:a + step]).all() for a in range(0, len(flat), step)):
            raise ValueError("ColBERT vectors contain NaN or infinity")
        return flat, offsets

    def _commit_batch(self, batch: dict) -> None:
        with self._lock:
            idmap = self._id_map()
            for i in batch["ids"]:
                old = idmap.get(i)
                if old is not None:
                    seg, r = old
                    seg.dead[r] = True
            base = self._tail.n
            self._tail.append(batch)
            for j, i in enumerate(batch["ids"]):
                idmap[i] = (self._tail, base + j)
            self._invalidate()
            self._maybe_compact()

    def _invalidate(self) -> None:
        for seg in self._all_segments():
            if isinstance(seg, MemSegment):
                seg.__dict__.pop("_meta_index", None)

    # ------------------------------------------------------------------ delete / get
    def delete(self, ids: Sequence[str], *, ignore_missing: bool = False) -> None:
        """Delete documents by id (tombstones until :meth:`compact`).

        Unknown ids raise ``KeyError`` naming them and nothing is deleted, unless
        ``ignore_missing=True`` (then they are skipped).
        """
        ids = _check_str_list(ids, "ids")
        with self._lock:
            idmap = self._id_map()
            missing = [i for i in dict.fromkeys(ids) if i not in idmap]
            if missing and not ignore_missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}; nothing was deleted "
                               "(pass ignore_missing=True to skip unknown ids)")
            for i in dict.fromkeys(ids):
                loc = idmap.pop(i, None)
                if loc is not None:
                    loc[0].dead[loc[1]] = True
            self._maybe_compact()

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """Documents by id, in the order asked (scores are 0). Unknown ids raise ``KeyError``."""
        ids = _check_str_list(ids, "ids")
        with self._lock:
            idmap = self._id_map()
            missing = [i for i in ids if i not in idmap]
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}")
            out = []
            for i in ids:
                seg, r = idmap[i]
                out.append(scored_hit(seg.doc_id(r), seg.doc_text(r), seg.doc_meta(r)))
            return out

    def vectors(self, id: str) -> tuple[Optional[np.ndarray], Optional[dict[int, float]], Optional[np.ndarray]]:
        """The stored ``(dense [dim], lexical {token: value}, colbert [T, colbert_dim] float32)`` of one
        document (``None`` for a channel the index lacks; ColBERT decoded from its codec)."""
        with self._lock:
            loc = self._id_map().get(id) if isinstance(id, str) else None
            if loc is None:
                raise KeyError(f"id {id!r} not in the index")
            seg, r = loc
            dense = lex = col = None
            if "dense" in self.channels:
                dense = np.asarray(seg.array("dense")[r], dtype=np.float32).copy()
            if "lexical" in self.channels:
                terms, vals = seg.lexical_view().row_terms(r)
                lex = {int(t): float(v) for t, v in zip(terms.tolist(), vals.tolist())}
            if self.codec is not None:
                off = seg.array("col_offsets")
                a, b = int(off[r]), int(off[r + 1])
                aux = seg.array("col_aux")
                col = self.codec.decode(np.asarray(seg.array("col_codes")[a:b]),
                                        None if aux is None else np.asarray(aux[a:b]))
            return dense, lex, col

    # ------------------------------------------------------------------ compaction
    def _maybe_compact(self) -> None:
        """Compact the in-memory tail alone when more than a quarter of it is dead (disk segments
        keep their tombstones until :meth:`compact`)."""
        t = self._tail
        if t.n and t.n_dead * 4 > t.n and not self._segments:
            self.compact()

    def compact(self) -> None:
        """Drop deleted rows. In memory (rows not saved yet) at once: the live rows are gathered into
        one new in-memory segment. Saved segments are rewritten by the next :meth:`save`, streaming:
        their live rows go into new segments of about 512 MiB, written one at a time (memory stays
        bounded whatever the index size), committed by that save's manifest, the old segments
        removed after it. Until then searches skip the deleted rows as before."""
        with self._lock:
            if any(isinstance(seg, DiskSegment) for seg in self._segments):
                self._compact_pending = True
                t = self._tail
                if t.n and t.n_dead:
                    fresh = self._new_tail()
                    live = np.flatnonzero(t.alive)
                    if len(live):
                        fresh.append(gather_rows(t, live, codec=self.codec, lexical_extras=self._lexical_extras))
                    self._tail = fresh
                    self._idmap = None
                    self._invalidate()
                return
            new = self._new_tail()
            for seg in self._all_segments():
                live = np.flatnonzero(seg.alive)
                if len(live):
                    new.append(gather_rows(seg, live, codec=self.codec, lexical_extras=self._lexical_extras))
            for buf in new.bufs.values():
                buf.trim()
            self._segments = []
            self._tail = new
            self._idmap = None
            self._invalidate()

    # ------------------------------------------------------------------ search
    _store_noun = "index"
    _encoder_fix = "create/load the index with an encoder"

    def _nothing_to_search(self) -> bool:
        return len(self) == 0

    def _auto_fusion(self) -> str:
        """``mode="auto"``: the lexical channel's preferred fusion (``"rrf"`` for BM25, whose raw
        scores are not on the cosine's scale) when it is fused with another channel, else
        ``"weighted"``."""
        if self.lexical is not None and "lexical" in self.channels and len(self.channels) > 1:
            return getattr(self.lexical, "fusion", "weighted")
        return "weighted"

    def _search_args(self, k: Any, weights: Sequence[float], candidates: Any, mode: Any,
                     rrf_k: Any) -> tuple[tuple[float, float, float], str]:
        """:meth:`StoreBase._search_args` plus the weights of the channels this index holds, so weights that
        give every present channel 0 are refused before a query is encoded (:meth:`StoreBase.search
        <bgem3.stores.base.StoreBase.search>` for the arguments; weights of absent channels are ignored)."""
        w, mode = super()._search_args(k, weights, candidates, mode, rrf_k)
        effective_weights(w, self.channels)
        return w, mode

    def _encode_query(self, encoder: Any, query: str) -> tuple[Any, Any, Any]:
        """The query encoded for the channels the index holds (the lexical channel may be BM25's own)."""
        want_sparse = bool(self.lexical is not None and self.lexical.uses_sparse_head)
        out = encoder.encode_queries([query], dense="dense" in self.channels, sparse=want_sparse,
                                     colbert="colbert" in self.channels, **self._query_encode_kwargs)
        dq = out.dense[0] if "dense" in self.channels else None
        sq = self.lexical.query_row(query, out) if self.lexical is not None else None
        cq = out.colbert[0] if "colbert" in self.channels else None
        return dq, sq, cq

    def _check_queries(self, dense_q: Any, sparse_q: Any, colbert_q: Any) -> tuple:
        for name, value, present in (("dense", dense_q, "dense" in self.channels),
                                     ("sparse", sparse_q, "lexical" in self.channels),
                                     ("colbert", colbert_q, "colbert" in self.channels)):
            if not present and value is not None and not (isinstance(value, Mapping) and not value):
                raise ValueError(f"this index has no {name} channel (channels={list(self.channels)}); pass "
                                 f"{name} query None")
        dq = cq = qt = None
        if "dense" in self.channels:
            if dense_q is None:
                raise ValueError("this index stores dense vectors: pass the dense query vector")
            dq = np.asarray(dense_q, dtype=np.float32).reshape(-1)
            if dq.shape != (self.dim,):
                raise ValueError(f"dense query must have {self.dim} values; got shape {np.shape(dense_q)}")
            if not np.isfinite(dq).all():
                raise ValueError("the dense query vector contains NaN or infinity; encode the query again")
        if "colbert" in self.channels:
            if colbert_q is None:
                raise ValueError("this index stores ColBERT vectors: pass the ColBERT query vectors")
            cq = np.asarray(colbert_q, dtype=np.float32)
            if cq.ndim != 2 or cq.shape[1] != self.colbert_dim:
                raise ValueError(f"ColBERT query must have shape (tokens, {self.colbert_dim}); got {cq.shape}")
            if not np.isfinite(cq).all():
                raise ValueError("the ColBERT query vectors contain NaN or infinity; encode the query again")
        if "lexical" in self.channels:
            qt = QueryTerms.from_mapping({} if sparse_q is None else sparse_q, vocab_size=self.vocab_size)
        return dq, qt, cq

    def search_encoded(
        self,
        dense_q: Optional[np.ndarray],
        sparse_q: Optional[Mapping[int, float]] = None,
        colbert_q: Optional[np.ndarray] = None,
        k: int = 4,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        *,
        filter: Optional[Mapping[str, Any]] = None,
        candidates: int = 100,
        mode: FusionMode = "auto",
        rrf_k: int = 60,
        exhaustive: bool = False,
        shortlist: Optional[int] = None,
        colbert_rerank: Optional[int] = None,
        dense_probe: Optional[float] = None,
    ) -> list[Hit]:
        """:meth:`search` with a precomputed query: ``dense_q [dim]``, ``sparse_q {token: weight}``,
        ``colbert_q [Tq, colbert_dim]`` (``None`` for channels the index lacks). No encoder needed.
        ``shortlist``: rows (over all segments) rescored exactly after the Hamming prefilter (default
        ``max(1000, 10 * candidates)``; only used on the Hamming path: see ``exact_dense_rows``).
        ``colbert_rerank``: with a quantised ColBERT codec and weighted fusion, when there are more
        candidates than this (at least ``k``), all are ranked by an estimated fused score (a MaxSim
        estimate from an eighth of the coded coordinates) and only this many get the full MaxSim and
        are ranked; ``0`` = full MaxSim on every candidate. Default: 32 while ColBERT weighs at most
        half of the fused weight, more above it (``32 * share / (1 - share)``), every candidate when
        ColBERT alone is weighted (:func:`bgem3.index.search.adaptive_rerank`); an explicit value is
        used as given. An index (or a query) with no dense or lexical channel takes every eligible
        row as a candidate: a ColBERT-only index answers every query.
        ``dense_probe``: share of each saved segment's dense inverted lists whose rows the Hamming
        prefilter scans (default ``index.dense_probe``, 0.2; see :mod:`bgem3.index.dense_lists`);
        ``1.0`` scans every row."""
        w, mode = self._search_args(k, weights, candidates, mode, rrf_k)
        return self._search_checked(dense_q, sparse_q, colbert_q, k, w, filter=filter, candidates=candidates,
                                    mode=mode, rrf_k=rrf_k, exhaustive=exhaustive, shortlist=shortlist,
                                    colbert_rerank=colbert_rerank, dense_probe=dense_probe)

    def _search_checked(self, dense_q: Any, sparse_q: Any, colbert_q: Any, k: int, w: tuple[float, float, float],
                        *, filter: Any, candidates: int, mode: str, rrf_k: float, exhaustive: bool,
                        shortlist: Optional[int] = None, colbert_rerank: Optional[int] = None,
                        dense_probe: Optional[float] = None) -> list[Hit]:
        # search_encoded's work, its arguments checked once (w checked, mode resolved)
        w = effective_weights(w, self.channels)
        if filter is not None and not isinstance(filter, Mapping) and not callable(filter):
            raise TypeError(f"filter must be a dict {{key: value}} or a callable metadata -> bool; "
                            f"got {type(filter).__name__}")
        dq, qt, cq = self._check_queries(dense_q, sparse_q, colbert_q)
        short = _positive_int(shortlist, "shortlist") if shortlist is not None else max(1000, 10 * candidates)
        if colbert_rerank is None:
            rerank = adaptive_rerank(DEFAULT_COLBERT_RERANK, w)
        elif isinstance(colbert_rerank, bool) or not isinstance(colbert_rerank, (int, np.integer)) or colbert_rerank < 0:
            raise ValueError(f"colbert_rerank must be an int >= 0 (0 = full MaxSim on every candidate); "
                             f"got {colbert_rerank!r}")
        else:
            rerank = int(colbert_rerank)
        rerank = max(rerank, k) if rerank else 0
        probe_chosen = dense_probe is not None or not isinstance(self.dense_probe, _UnsetProbe)
        probe = _probe_share(self.dense_probe if dense_probe is None else dense_probe, "dense_probe")
        with self._lock, one_blas_thread():
            segs = self._all_segments()
            if not segs:
                return []
            sizes = np.array([s.n for s in segs], dtype=np.int64)
            bases = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            eligible = [seg.alive & self._filter_mask(seg, filter) if filter else seg.alive for seg in segs]
            total = int(sum(int(e.sum()) for e in eligible))
            if total == 0:
                return []
            el_all = np.concatenate(eligible)
            every_row = exhaustive or total <= candidates  # scored like exhaustive=True: no estimate shortcut
            # no dense or lexical query to draw candidates from (a ColBERT-only index): every eligible
            # row is a candidate, ranked by the MaxSim estimate and then exactly (never an empty answer)
            colbert_only = dq is None and qt is None
            if dq is None or every_row:
                scan = False
            elif self.exact_dense_rows is not None:  # the user's fixed rule, exactly as set
                scan = total > self.exact_dense_rows
            else:
                scan = dense_path(segs, total, short, self.dim, self.dense_codec)
                if scan and total <= COST_RULE_ROWS and not probe_chosen:
                    probe = 1.0  # every row's bits: the lists' recall loss is only worth it at scale

            def lexical_and_query() -> tuple:
                """The lexical scores and the prepared ColBERT query: on the helper thread while
                this one scans the dense lists (they share nothing)."""
                lex = None
                if qt is not None:
                    lex = joined(self.lexical.score(qt, [seg.lexical_view() for seg in segs]))
                    lex = lex.astype(np.float32, copy=False)
                return lex, (self.codec.prepare_query(cq) if cq is not None else None)

            side = beside(lexical_and_query, parallel=scan)
            dense_all = None
            try:
                if scan and (self._centroids is None or not self._centroids.matches(segs)):
                    self._centroids = CentroidTable(segs)
                dense_rows, dense_sc = (dense_candidates(segs, bases, dq, eligible, candidates, short, probe,
                                                         self._centroids) if scan else (None, None))
            finally:
                lex_all, prepared = side.result()
            if every_row or colbert_only:
                cand = np.flatnonzero(el_all)
            else:
                parts = []
                if dense_rows is not None:
                    parts.append(dense_rows)
                elif dq is not None:
                    dense_all = np.concatenate([dense_exact(seg, dq) for seg in segs])
                    rows = np.flatnonzero(el_all)
                    d = dense_all[rows]
                    parts.append(rows[np.argpartition(-d, candidates - 1)[:candidates]] if len(rows) > candidates
                                 else rows)
                if lex_all is not None:
                    masked = lex_all if total == len(el_all) else np.where(el_all, lex_all, 0.0)
                    parts.append(top_positive(masked, candidates))
                cand = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            if len(cand) == 0:
                return []
            seg_of = np.searchsorted(bases, cand, side="right") - 1
            d = s = c = None
            if dq is not None:
                if dense_all is not None:
                    d = dense_all[cand]
                else:  # the dense candidates' exact scores are known; the others are read now
                    d = np.empty(len(cand), dtype=np.float32)
                    todo = np.ones(len(cand), dtype=bool)
                    if dense_rows is not None and len(dense_rows):
                        at = np.searchsorted(cand, dense_rows)
                        d[at] = dense_sc
                        todo[at] = False
                    for si in np.unique(seg_of[todo]):
                        m = todo & (seg_of == si)
                        d[m] = dense_exact(segs[si], dq, cand[m] - bases[si])
            if lex_all is not None:
                s = lex_all[cand]
            if cq is not None:
                pruned = None
                if rerank and mode == "weighted" and self.codec.quantized and len(cand) > rerank and not every_row:
                    partial = np.zeros(len(cand), dtype=np.float32)
                    if d is not None:
                        partial += np.float32(w[0]) * d
                    if s is not None:
                        partial += np.float32(w[1]) * s
                    pruned = colbert_pruned(self.codec, prepared, segs, seg_of, cand - bases[seg_of], partial,
                                            w[2], rerank)
                if pruned is not None:
                    keep, c = pruned
                    cand, seg_of = cand[keep], seg_of[keep]
                    d = None if d is None else d[keep]
                    s = None if s is None else s[keep]
                else:
                    c = np.empty(len(cand), dtype=np.float32)
                    for si in np.unique(seg_of):
                        m = seg_of == si
                        c[m] = colbert_scores(self.codec, prepared, segs[si], cand[m] - bases[si])
            check_finite([d, s, c], "this index")
            fused, order = fuse(d, s, c, w, k, mode, rrf_k)
            hits = []
            for i in order.tolist():
                seg = segs[seg_of[i]]
                r = int(cand[i] - bases[seg_of[i]])
                hits.append(scored_hit(seg.doc_id(r), seg.doc_text(r), seg.doc_meta(r), fused[i],
                                       None if d is None else d[i], None if s is None else s[i],
                                       None if c is None else c[i]))
            return hits

    def _filter_mask(self, seg: Segment, filter: Any) -> np.ndarray:
        n = seg.n
        if callable(filter) and not isinstance(filter, Mapping):  # a predicate metadata -> bool
            from types import MappingProxyType

            return np.fromiter((bool(filter(MappingProxyType(m))) for m in seg.metas_list()), dtype=np.bool_, count=n)
        mask = np.ones(n, dtype=np.bool_)
        cache = seg.__dict__.setdefault("_meta_index", {})
        for key, wanted in filter.items():
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            idx = cache.get(key)
            if idx is None:
                by_value: dict = {}
                unhashable: list = []
                for r, meta in enumerate(seg.metas_list()):
                    v = meta.get(key)
                    try:
                        by_value.setdefault(v, []).append(r)
                    except TypeError:
                        unhashable.append((r, v))
                idx = cache[key] = ({v: np.asarray(rs, dtype=np.int64) for v, rs in by_value.items()}, unhashable)
            by_value, unhashable = idx
            m = np.zeros(n, dtype=np.bool_)
            for v in values:
                try:
                    rows = by_value.get(v)
                except TypeError:  # an unhashable filter value: compare one by one
                    m |= np.fromiter((meta.get(key) == v for meta in seg.metas_list()), dtype=np.bool_, count=n)
                    continue
                if rows is not None:
                    m[rows] = True
                for r, val in unhashable:
                    if val == v:
                        m[r] = True
            mask &= m
        return mask

    # ------------------------------------------------------------------ persistence
    @property
    def pending_bytes(self) -> int:
        """Bytes held in memory by the rows added since the last :meth:`save` / :meth:`spill`
        (their vectors with the buffers' spare capacity, texts and metadata, approximately)."""
        with self._lock:
            return self._tail.held_bytes()

    def spill(self, directory: PathLike) -> int:
        """Write the rows held in memory to ``directory`` as an uncommitted segment and map them
        back from disk: memory stays bounded while adding more than fits (``bgem3 index`` spills
        every ~64 MiB). Nothing is committed: the index saved in ``directory`` (if any) is
        unchanged until :meth:`save` to the same folder commits the spilled segments as they are
        (no second write). If the process dies first, the next save there removes the files.
        ``directory`` must be new, empty, or a saved index (the one :meth:`save` will write).
        Returns the number of rows written.

        Example::

            >>> import tempfile, numpy as np
            >>> from bgem3 import HybridIndex
            >>> idx = HybridIndex(None, dim=2, channels=["dense"])
            >>> d = tempfile.mkdtemp()
            >>> _ = idx.add_encoded(["a", "b"], ["A", "B"], None, np.eye(2, dtype="float32"))
            >>> idx.spill(d), idx.pending_bytes < 1000, len(idx)
            (2, True, 2)
            >>> HybridIndex.load(d, load_encoder=False)
            Traceback (most recent call last):
            ...
            bgem3.index.errors.IndexFormatError: ...is missing...
            >>> idx.save(d); len(HybridIndex.load(d, load_encoder=False))
            2
        """
        from .persistence import spill_tail

        return spill_tail(self, directory)

    def _discard_spilled(self) -> None:
        """Abandon a failed run: remove what :meth:`spill` wrote since the last save (and drop
        those rows from this object)."""
        from .persistence import discard_spilled

        discard_spilled(self)

    def save(self, directory: PathLike) -> None:
        """Commit the index to ``directory`` (see :mod:`bgem3.index.storage` for the layout).

        Saving again to the folder the index was loaded from or last saved to writes only what is
        new: the rows added since (one new segment) and the tombstones of segments that lost rows.
        The commit is one atomic rename of ``manifest.json``, so a crash at any moment leaves the
        previous or the new state loadable. ``save`` refuses a non-empty folder that is not a saved
        index (and a ``segments/`` that is a symlink), writes through a symlinked path into its
        target, and removes only files its own earlier saves left behind.

        Several processes (or handles) may save to one folder: each commit holds the folder's
        writer lock (``write.lock``, an OS file lock; waits up to 10 minutes, then
        ``IndexLockTimeout`` naming the holder). If others committed since this handle was loaded
        or last saved, its own changes (added rows, deletes) are replayed onto their commit; if both
        changed the same id, :class:`~bgem3.index.persistence.SaveConflict` names it and nothing is
        written (load again, redo, save). See docs/index.md, "Several writers, one folder".
        """
        from .persistence import save_index

        save_index(self, directory)

    @classmethod
    def load(
        cls,
        directory: PathLike,
        encoder: Any = None,
        *,
        load_encoder: bool = True,
        allow_model_mismatch: bool = False,
        verify: Optional[bool] = None,
        **encoder_kwargs: Any,
    ) -> "HybridIndex":
        """Open an index written by :meth:`save` (memory-mapped; also reads the first format).

        Args:
            directory: the folder given to :meth:`save`.
            encoder: an :class:`~bgem3.Encoder` or model name/folder; ``None`` loads
                ``Encoder(<manifest model_name>, **encoder_kwargs)`` (or no encoder with
                ``load_encoder=False``, for :meth:`search_encoded` only).
            allow_model_mismatch: accept an encoder whose name differs from the manifest's.
            verify: ``True``: SHA-256 and value checks of every file now (reads everything);
                ``None`` (default): that for segments up to 64 MiB, structure only for larger ones
                (run :meth:`verify` or ``bgem3 info --verify``); ``False``: structure only.

        Raises:
            FileNotFoundError: no such folder.
            IndexFormatError: missing/truncated/corrupted file, unknown format version, values
                that cannot be right, or an encoder for another model.
        """
        from .persistence import load_index

        return load_index(cls, directory, encoder, load_encoder=load_encoder,
                          allow_model_mismatch=allow_model_mismatch, verify=verify, **encoder_kwargs)

    def verify(self) -> None:
        """Check every saved segment's SHA-256 checksums and values, and that every live id is in
        exactly one row across the segments (reads the whole index)."""
        from .persistence import check_unique_ids

        with self._lock:
            for seg in self._segments:
                seg.verify()
            check_unique_ids(self._home, self._segments + ([self._tail] if self._tail.n else []))

    def native_filter(self, where: Any) -> Any:
        """What ``search(filter=...)`` takes for a :class:`bgem3.filters.Where` tree: its predicate
        (the index evaluates any tree on the stored metadata)."""
        return where.matches
