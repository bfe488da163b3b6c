"""What the two hybrid stores share: the store base class (``search`` over ``search_encoded``) and the
store-side argument checks.

:class:`bgem3.HybridIndex` (embedded) and :class:`bgem3.stores.qdrant.QdrantHybridStore`
(scale-out) implement the same protocol with the same semantics; the code that does not depend
on where the vectors live is here, once (the ranking itself is :func:`bgem3.scoring.rank`).

Example::

    >>> from bgem3.stores.base import check_documents, check_search_args
    >>> check_search_args(4, (0.4, 0.2, 0.4), 100, "rrf", 60)
    (0.4, 0.2, 0.4)
    >>> texts, ids, metas = check_documents(["a", "b"], ["x", "y"], None, store="the index")
    >>> ids, metas
    (['x', 'y'], [{}, {}])
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._checks import check_fusion_mode, positive_int
from .._checks import check_query as _check_query
from ..fingerprint import same_model_name
from ..scoring import DEFAULT_WEIGHTS, check_weights
from ..types import FusionMode, Hit

def check_str_list(values: Any, name: str) -> list[str]:
    """``list(values)`` if it is a list of strings; a clear ``TypeError`` otherwise."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, not a single string; wrap it: [{values[:30]!r}]")
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings; got {type(values).__name__}") from None
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] must be a string; got {type(v).__name__} ({v!r})")
    return values


def _utf8_or_error(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} holds a lone surrogate ({exc.object[exc.start:exc.end]!r} at position {exc.start}) "
                         "that cannot be stored as UTF-8; fix the string (e.g. decode its source with "
                         "errors='replace')") from None


def check_documents(
    texts: Any,
    ids: Optional[Sequence[str]],
    metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]],
    *,
    store: str,
    nonempty_ids: bool = False,
) -> tuple[list[str], list[str], list[dict]]:
    """Validate one ``add`` call's ``texts``, ``ids`` and ``metadatas`` before anything is stored.

    ``ids=None`` gives fresh ``uuid4().hex`` ids; ids must be unique within the call.
    Metadata is copied through JSON (what both stores keep); ``store`` names who stores it in
    the error message. ``nonempty_ids`` also refuses ``""`` as an id.
    Returns ``(texts, ids, metadatas)``.
    """
    texts = check_str_list(texts, "texts")
    n = len(texts)
    for i, t in enumerate(texts):
        _utf8_or_error(t, f"texts[{i}]")
    if ids is None:
        ids = [uuid.uuid4().hex for _ in range(n)]
    else:
        ids = check_str_list(ids, "ids")
        for i, x in enumerate(ids):
            _utf8_or_error(x, f"ids[{i}]")
        if len(ids) != n:
            raise ValueError(f"got {n} texts but {len(ids)} ids; pass one id per text (or ids=None)")
        if nonempty_ids:
            for i, x in enumerate(ids):
                if not x:
                    raise TypeError(f"ids[{i}] = {x!r}: ids must be non-empty strings")
        if len(set(ids)) != n:
            seen: set[str] = set()
            dups = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate ids in one add call: {dups[:10]}; ids must be unique within a call "
                             "(an id already in the index is replaced)")
    if metadatas is None:
        metas = [{} for _ in range(n)]
    else:
        if isinstance(metadatas, Mapping):
            raise TypeError("metadatas must be a list with one dict per text, not a single dict")
        metadatas = list(metadatas)
        if len(metadatas) != n:
            raise ValueError(f"got {n} texts but {len(metadatas)} metadatas; pass one dict (or None) per text")
        metas = []
        for i, m in enumerate(metadatas):
            if m is None:
                metas.append({})
                continue
            if not isinstance(m, Mapping):
                raise TypeError(f"metadatas[{i}] must be a dict or None; got {type(m).__name__}")
            try:
                encoded = json.dumps(dict(m), allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValueError(f"metadatas[{i}] (id {ids[i]!r}) is not JSON-serialisable ({exc}); {store} stores "
                                 "metadata as JSON: use str/int/float/bool/None, lists and dicts") from None
            _utf8_or_error(encoded, f"metadatas[{i}] (id {ids[i]!r})")
            try:
                metas.append(json.loads(encoded))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metadatas[{i}] (id {ids[i]!r}) is not JSON-serialisable ({exc}); {store} stores "
                                 "metadata as JSON: use str/int/float/bool/None, lists and dicts") from None
    return texts, list(ids), metas


def check_search_args(k: Any, weights: Sequence[float], candidates: Any, mode: Any,
                      rrf_k: Any) -> tuple[float, float, float]:
    """Validate ``search``'s arguments; returns the checked ``(dense, lexical, colbert)`` weights."""
    positive_int(k, "k")
    positive_int(candidates, "candidates")
    check_fusion_mode(mode)
    if (isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float, np.integer, np.floating)) or not rrf_k > 0
            or not np.isfinite(rrf_k)):
        raise ValueError(f"rrf_k must be a positive finite number; got {rrf_k!r}")
    if isinstance(weights, (str, bytes)) or isinstance(weights, Mapping):
        raise ValueError(f"weights must be three numbers (dense, lexical, colbert), e.g. (0.4, 0.2, 0.4); got {weights!r}")
    return check_weights(weights)


def check_query(query: Any) -> str:
    """``query`` if it is a non-blank string; ``TypeError``/``ValueError`` otherwise (:func:`bgem3._checks.check_query`)."""
    return _check_query(query, fix="pass a non-empty string to search for")


def encoder_from_model_name(encoder: Any, model_name: Optional[str], dim: Optional[int], owner: str,
                            load: bool = True) -> Any:
    """``model_name=`` names the model everywhere in this package: the model to load.

    ``Store(model_name=X)`` with no encoder loads ``X``; ``Store(None, model_name=X, dim=...)`` (precomputed
    vectors) records that they came from ``X``; an encoder *and* a different ``model_name`` is refused instead
    of labelling one model's vectors with another model's name. With ``load=False`` (a Qdrant collection,
    whose dimensions the collection itself records) a lone ``model_name`` is only recorded and checked.
    """
    if model_name is None:
        return encoder
    if not isinstance(model_name, (str, os.PathLike)):
        raise TypeError(f"model_name must be a model name or folder; got {type(model_name).__name__}")
    if encoder is None:
        return str(model_name) if dim is None and load else None
    given = encoder if isinstance(encoder, (str, os.PathLike)) else getattr(encoder, "model_name", None)
    if given is not None and not same_model_name(str(given), str(model_name)):
        raise ValueError(
            f"{owner}: model_name={str(model_name)!r} names the model to load, but the encoder given is "
            f"{str(given)!r}; pass one of them ({owner}(model_name={str(model_name)!r}) or {owner}(encoder)), "
            "so that documents and queries are encoded by the model the store records")
    return encoder


def encoder_shape(encoder: Any, owner: str) -> tuple[str, int, int]:
    """``(model_name, dense dim, ColBERT dim)`` of a BGE-M3 encoder; refuses anything else."""
    if not all(hasattr(encoder, a) for a in ("encode_queries", "encode_documents", "hidden_size")):
        raise TypeError(f"encoder must be a bgem3.Encoder, a model name/folder or None; got {type(encoder).__name__}")
    if getattr(encoder, "has_heads", True) is False:
        raise ValueError(
            f"{owner} needs lexical and ColBERT outputs, but the encoder for {encoder.model_name!r} has no "
            "BGE-M3 heads (colbert_linear.pt, sparse_linear.pt). Use a BGE-M3 checkpoint such as 'BAAI/bge-m3'."
        )
    dim = int(encoder.hidden_size)
    lin = getattr(encoder, "colbert_linear", None)
    return str(encoder.model_name), dim, int(lin.out_features) if lin is not None else dim


def scored_hit(id: str, text: str, metadata: dict, score: float = 0.0, d: Optional[float] = 0.0,
               s: Optional[float] = 0.0, c: Optional[float] = 0.0) -> Hit:
    """A :class:`~bgem3.types.Hit` with its scores as Python floats (``None``: the store has no such channel)."""
    return Hit(id=id, text=text, metadata=metadata, score=float(score),
               dense_score=None if d is None else float(d), sparse_score=None if s is None else float(s),
               colbert_score=None if c is None else float(c))


class StoreBase:
    """``search`` and the encoder requirement, shared by the two stores.

    A subclass defines ``search_encoded(dense_q, sparse_q, colbert_q, k, weights, *, filter,
    candidates, mode, rrf_k, exhaustive)`` (public: checks its arguments with :meth:`_search_args`) over
    ``_search_checked`` (the same arguments, already checked once, ``mode`` resolved), ``_store_noun`` / ``_encoder_fix`` (wording of the
    "no encoder" error), ``_query_encode_kwargs`` and, if it can tell cheaply,
    ``_nothing_to_search``.
    """

    encoder: Any
    #: how the "needs an encoder" error names the store and the fix
    _store_noun = "store"
    _encoder_fix = "create the store with an encoder"
    #: extra keyword arguments of ``encoder.encode_queries`` in :meth:`search`
    _query_encode_kwargs: Mapping[str, Any] = {}

    def _nothing_to_search(self) -> bool:
        """True when the store is known to be empty (then :meth:`search` does not encode)."""
        return False

    def _auto_fusion(self) -> str:
        """What ``mode="auto"`` means for this store (a subclass may say otherwise)."""
        return "weighted"

    def fusion_mode(self, mode: str = "auto") -> str:
        """The fusion ``search(..., mode=mode)`` uses: ``mode`` itself, or for ``"auto"`` the
        store's choice: ``"rrf"`` when the lexical channel's scores are not on the dense cosine's
        scale (BM25), ``"weighted"`` (BGE-M3's weighted mean) otherwise.

        >>> from bgem3 import HybridIndex
        >>> HybridIndex(None, dim=4).fusion_mode()
        'weighted'
        """
        return self._resolved_mode(check_fusion_mode(mode))

    def _resolved_mode(self, mode: str) -> str:
        # an already checked mode: "auto" becomes the store's choice
        return self._auto_fusion() if mode == "auto" else mode

    def _search_args(self, k: Any, weights: Sequence[float], candidates: Any, mode: Any,
                     rrf_k: Any) -> tuple[tuple[float, float, float], str]:
        """``search``'s arguments checked once per call: ``(weights, mode)`` with ``"auto"`` resolved."""
        w = check_search_args(k, weights, candidates, mode, rrf_k)
        return w, self._resolved_mode(mode)

    def _require_encoder(self, what: str) -> Any:
        if self.encoder is None:
            raise TypeError(f"{what}() needs an encoder, but this {self._store_noun} has none (built for precomputed "
                            f"vectors); use {what}_encoded(...) or {self._encoder_fix}")
        return self.encoder

    def search(
        self,
        query: str,
        k: int = 4,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        *,
        filter: Optional[Mapping[str, Any]] = None,
        candidates: int = 100,
        mode: FusionMode = "auto",
        rrf_k: int = 60,
        exhaustive: bool = False,
    ) -> list[Hit]:
        """Top-``k`` documents for ``query``, best first.

        Args:
            query: a non-empty string (encoded with ``encoder.encode_queries``, so the profile's
                query template applies).
            k: how many hits (fewer if fewer documents match).
            weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)`` (BGE-M3 paper).
                The fused score is their weighted mean (divided by the weight sum, as
                FlagEmbedding's ``compute_score`` does).
            filter: ``{key: value}``; every key must match exactly, a list/tuple/set value means
                "any of". Applied before candidate selection.
            candidates: N in "dense top-N united with lexical top-N".
            mode: ``"auto"`` (default: :meth:`fusion_mode` decides: ``"rrf"`` beside a BM25
                lexical channel, ``"weighted"`` otherwise), ``"weighted"`` (score = weighted mean
                of the channel scores) or ``"rrf"`` (score = ``sum_c w_c / (rrf_k + rank_c)`` over
                the candidates).
            rrf_k: the RRF constant.
            exhaustive: score every (filtered) document instead of the candidates.
        """
        check_query(query)
        w, mode = self._search_args(k, weights, candidates, mode, rrf_k)
        enc = self._require_encoder("search")
        if self._nothing_to_search():
            return []
        dq, sq, cq = self._encode_query(enc, query)
        return self._search_checked(dq, sq, cq, k, w,  # type: ignore[attr-defined]
                                    filter=filter, candidates=candidates, mode=mode, rrf_k=rrf_k,
                                    exhaustive=exhaustive)

    def _encode_query(self, encoder: Any, query: str) -> tuple[Any, Any, Any]:
        """``(dense, sparse, colbert)`` of one query, as :meth:`search_encoded` takes them (a store that holds
        fewer channels encodes fewer: :class:`~bgem3.index.HybridIndex` overrides this)."""
        out = encoder.encode_queries([query], dense=True, sparse=True, colbert=True, **self._query_encode_kwargs)
        return out.dense[0], out.sparse[0], out.colbert[0]
