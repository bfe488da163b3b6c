"""The retrievers' glue over a hybrid store: what counts as a store, a group of queries encoded as one, the
``mode=`` / ``weights=`` a retriever passes on, several queries searched, and the store builders' arguments."""

from __future__ import annotations

import inspect
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .._checks import check_fusion_mode
from ..encoder import Encoder
from ..scoring import check_weights
from ..stores.base import StoreBase

#: the methods of :class:`bgem3.types.HybridStore` an adapter's retriever calls.
STORE_METHODS = ("add", "delete", "search", "__len__")


def check_hybrid_store(store: Any, *, builder: str, error: type[Exception] = TypeError) -> Any:
    """``store`` if it has the :class:`bgem3.types.HybridStore` methods, else ``error`` naming the
    missing ones and ``BGEM3HybridRetriever.<builder>(...)`` as the way to get a store built.

    >>> check_hybrid_store(object(), builder="from_texts")
    Traceback (most recent call last):
    TypeError: store must implement bgem3.types.HybridStore (add, delete, search, __len__); object lacks add, delete, search, __len__. Use bgem3.HybridIndex, bgem3.stores.qdrant.QdrantHybridStore, or BGEM3HybridRetriever.from_texts(...)
    """
    missing = [m for m in STORE_METHODS if not callable(getattr(store, m, None))]
    if missing:
        raise error(
            f"store must implement bgem3.types.HybridStore (add, delete, search, __len__); "
            f"{type(store).__name__} lacks {', '.join(missing)}. Use bgem3.HybridIndex, "
            f"bgem3.stores.qdrant.QdrantHybridStore, or BGEM3HybridRetriever.{builder}(...)"
        )
    return store


def encode_query_group(encoder: Any, texts: Sequence[str], **encode_kwargs: Any) -> tuple[np.ndarray, dict, np.ndarray]:
    """One hybrid query from several query strings (LlamaIndex's ``custom_embedding_strs``, HyDE).

    Each string is encoded as a query; the dense query is the mean of their vectors (as
    LlamaIndex's ``mean_agg``, so the dense score is the mean of the per-string dense scores), the
    lexical query the mean of their weights (likewise for lexical scores), and the ColBERT query
    all their token vectors (MaxSim averages over every token of every string).
    Returns ``(dense [H], sparse {token: weight}, colbert [T, H])`` for ``store.search_encoded``.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"custom_embedding_strs must be non-empty strings; got {texts!r}")
    out = encoder.encode_queries(texts, dense=True, sparse=True, colbert=True, **encode_kwargs)
    n = len(texts)
    dense = out.dense.astype(np.float32).mean(axis=0)
    sparse: dict = {}
    for weights in out.sparse:
        for tok, w in weights.items():
            sparse[tok] = sparse.get(tok, 0.0) + float(w) / n
    colbert = np.concatenate([np.asarray(c, dtype=np.float32) for c in out.colbert], axis=0)
    return dense, sparse, colbert


def store_fusion_mode(store: Any, mode: Any) -> Any:
    """The ``mode=`` a retriever passes to ``store.search``. A bgem3 store (:class:`~bgem3.stores.base.StoreBase`)
    gets ``mode`` as given: its ``search`` checks it and resolves ``"auto"`` (RRF beside BM25), once per call.
    For another store ``mode`` is checked here (``"auto"``, ``"weighted"`` or ``"rrf"``) and ``"auto"`` resolved by
    the store's ``fusion_mode`` if it has one, else to ``"weighted"`` (a user's own HybridStore)."""
    if isinstance(store, StoreBase):
        return mode
    check_fusion_mode(mode)
    resolve = getattr(store, "fusion_mode", None)
    if callable(resolve):
        return str(resolve(mode))
    return "weighted" if mode == "auto" else mode


def store_weights(store: Any, weights: Any) -> Any:
    """The ``weights=`` a retriever passes to ``store.search``: as given to a bgem3 store (its ``search`` checks
    them, once per call), checked here (:func:`bgem3.scoring.check_weights`) for another store."""
    return weights if isinstance(store, StoreBase) else check_weights(weights)


def search_many(store: Any, queries: Sequence[str], **search_kwargs: Any) -> list:
    """``store.search`` for one query string, or :func:`encode_query_group` + ``search_encoded``
    for several (needs a store with an encoder)."""
    queries = list(queries)
    if len(queries) == 1:
        return store.search(queries[0], **search_kwargs)
    encoder = getattr(store, "encoder", None)
    if encoder is None or not callable(getattr(store, "search_encoded", None)):
        raise TypeError(f"several query strings (custom_embedding_strs) need a store with an encoder and "
                        f"search_encoded; {type(store).__name__} has none. Pass one query string")
    dense, sparse, colbert = encode_query_group(encoder, queries, **getattr(store, "_query_encode_kwargs", {}))
    k = search_kwargs.pop("k")
    weights = search_kwargs.pop("weights")
    return store.search_encoded(dense, sparse, colbert, k, weights, **search_kwargs)


def store_builder_args(owner: str, positional: Any, kwargs: dict, retriever_fields: Iterable[str],
                       hints: Optional[Mapping[str, str]] = None) -> tuple[Any, dict]:
    """Sort a retriever's ``from_texts`` / ``from_documents`` keywords: returns ``(model, store kwargs)``.

    ``model_name=`` / ``model=`` name the model to load (as on the embedding classes; the index
    records that name), ``encoder=`` passes a loaded :class:`bgem3.Encoder`; either may replace
    the positional ``model_name_or_encoder`` (given twice with different values: ``ValueError``).
    The rest must be :class:`bgem3.HybridIndex` / :class:`bgem3.Encoder` options; anything else
    raises ``TypeError`` naming it (``top_k`` -> ``k`` / ``similarity_top_k``).
    """
    from .._loading import ENCODER_OPTIONS
    from .arguments import unknown_options_error
    from ..index import HybridIndex

    kwargs = dict(kwargs)
    given = {name: kwargs.pop(name) for name in ("model_name", "model", "encoder") if name in kwargs}
    model = positional
    for name, value in given.items():
        if name == "encoder" and not isinstance(value, Encoder):
            raise TypeError(f"encoder= must be a bgem3.Encoder; got {type(value).__name__} (pass a name as model_name=)")
        if model is None or model is value or (isinstance(model, (str, os.PathLike)) and isinstance(value, (str, os.PathLike))
                                               and os.fspath(model) == os.fspath(value)):
            model = value
            continue
        raise ValueError(f"{owner}: the model is given twice ({model!r} and {name}={value!r}); pass it once "
                         "(positionally, or as model_name= / encoder=)")
    if model is None:
        model = "BAAI/bge-m3"
    store_params = set(inspect.signature(HybridIndex.__init__).parameters) - {"self", "encoder", "encoder_kwargs",
                                                                                "model_name"}
    valid = store_params | (set(ENCODER_OPTIONS) if isinstance(model, (str, os.PathLike)) else set())
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise unknown_options_error(owner, unknown, valid | set(retriever_fields) | {"model_name", "encoder"},
                                    hints)
    return model, kwargs
