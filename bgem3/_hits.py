"""Adapter plumbing shared by ``langchain_bgem3`` and ``llama_index_bgem3`` (framework-free, no math).

Example::

    >>> from bgem3._hits import merge_scores
    >>> merge_scores({"src": "a"}, [("score", 0.5), ("dense_score", None)], "bgem3_",
    ...              warn_on_collision=True, owner="demo", noun="document", returned="Document", verb="Set")
    ({'src': 'a', 'bgem3_score': 0.5}, ['bgem3_score'])
"""

from __future__ import annotations

import warnings
import inspect
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ._checks import check_fusion_mode
from ._loading import load_encoder
from .encoder import Encoder
from .scoring import check_weights
from .stores.base import StoreBase


def merge_scores(
    metadata: Mapping[str, Any],
    scores: Iterable[tuple[str, Optional[float]]],
    prefix: str = "",
    *,
    warn_on_collision: bool,
    owner: str,
    noun: str,
    returned: str,
    verb: str,
    stacklevel: int = 5,
) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``metadata`` with ``prefix + key`` set to ``float(value)`` for each score (``None``
    scores left out), and the list of keys written.

    If ``warn_on_collision`` and ``metadata`` already has one of those keys, a ``UserWarning`` says
    which key was shadowed and how to keep both; ``noun`` ("document" / "node") names what the
    metadata belongs to, ``returned`` what the caller returns, ``verb`` how to give the prefix.
    ``stacklevel`` is counted from this function (the default attributes the warning to the code that
    called the adapter's public method, two adapter frames up).
    """
    meta: dict[str, Any] = dict(metadata)
    keys: list[str] = []
    for key, value in scores:
        if value is None:
            continue
        name = prefix + key
        if warn_on_collision and name in meta:
            warnings.warn(
                f"{owner}: a {noun}'s metadata already has the key {name!r}; the returned {returned}'s "
                f"{name!r} holds bgem3's {key} instead (the stored metadata is unchanged). {verb} "
                f"metadata_key_prefix='bgem3_' (or another prefix) to keep both.",
                UserWarning,
                stacklevel=stacklevel,
            )
        meta[name] = float(value)
        keys.append(name)
    return meta, keys


def reranker_encoder(encoder: Any, model_name: str, model_kwargs: Optional[Mapping[str, Any]],
                     *, type_error: type[Exception] = TypeError) -> Encoder:
    """The encoder an adapter's reranker uses: ``encoder`` if given (it must be a
    :class:`bgem3.Encoder`, else ``type_error``; ``model_kwargs`` must then be empty, else
    ``ValueError``), or one loaded from ``model_name`` with ``model_kwargs``.

    ``type_error`` lets a pydantic ``model_validator`` raise ``ValueError`` (which pydantic turns
    into a ``ValidationError``) while a plain ``__init__`` raises ``TypeError``.
    """
    if encoder is None:
        return load_encoder(model_name, model_kwargs, owner="HybridReranker", reranking=True, require_encoder=True)
    if not isinstance(encoder, Encoder):
        raise type_error(f"encoder must be a bgem3.Encoder (or leave it out and pass model_name=...); "
                         f"got {type(encoder).__name__}")
    if model_kwargs:
        raise ValueError("model_kwargs are only used when the reranker loads the model by model_name; "
                         "an Encoder was given: configure it with Encoder(...) instead")
    return encoder


def reranker_aliases(data: Any, owner: str, fields: Any, *, type_error: type[Exception] = TypeError) -> Any:
    """Map the keywords a user of another framework reranker writes onto ours, or refuse them.

    ``model=`` (``CrossEncoderReranker`` / ``SentenceTransformerRerank``): a model name becomes
    ``model_name``, a :class:`bgem3.Encoder` becomes ``encoder``; ``top_k=`` is refused naming
    ``top_n=``; any other unknown keyword raises naming it (with the closest valid name).
    """
    from ._shared import unknown_options_error

    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "model" in data:
        model = data.pop("model")
        if isinstance(model, Encoder):
            if data.get("encoder") is not None and data["encoder"] is not model:
                raise ValueError("model= and encoder= are two different encoders; pass one")
            data["encoder"] = model
        elif isinstance(model, str):
            if data.get("model_name") not in (None, model):
                raise ValueError(f"model={model!r} and model_name={data['model_name']!r} disagree; set one")
            data["model_name"] = model
        else:
            cross = " A cross-encoder reranker goes to" if callable(getattr(model, "compute_score", None)) else " For a " \
                "cross-encoder use"
            raise type_error(f"{owner}: model= must be a model name or a bgem3.Encoder; got {type(model).__name__} "
                             f"({owner} re-scores with an embedding model's three BGE-M3 channels.{cross} "
                             "langchain_bgem3.BGECrossEncoderReranker / BGERerankerCrossEncoder or "
                             "llama_index_bgem3.BGERerank)")
    unknown = [k for k in data if k not in fields]
    if unknown:
        hints = {"top_k": "use top_n= for how many to keep", "k": "use top_n= for how many to keep",
                 "device": "use model_kwargs={'device': ...}", "use_fp16": "use model_kwargs={'dtype': 'fp16'}",
                 "normalize": "bgem3 reranker scores are raw fused scores; sort order is what top_n uses"}
        raise unknown_options_error(owner, unknown, fields, hints, exc=type_error)
    return data


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


# ------------------------------------------------------------------------------ queries

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


# ------------------------------------------------------------------------------ builders

def store_builder_args(owner: str, positional: Any, kwargs: dict, retriever_fields: Iterable[str],
                       hints: Optional[Mapping[str, str]] = None) -> tuple[Any, dict]:
    """Sort a retriever's ``from_texts`` / ``from_documents`` keywords: returns ``(model, store kwargs)``.

    ``model_name=`` / ``model=`` name the model to load (as on the embedding classes; the index
    records that name), ``encoder=`` passes a loaded :class:`bgem3.Encoder`; either may replace
    the positional ``model_name_or_encoder`` (given twice with different values: ``ValueError``).
    The rest must be :class:`bgem3.HybridIndex` / :class:`bgem3.Encoder` options; anything else
    raises ``TypeError`` naming it (``top_k`` -> ``k`` / ``similarity_top_k``).
    """
    from ._shared import ENCODER_OPTIONS, unknown_options_error
    from .index import HybridIndex

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


# ------------------------------------------------------------------------------ cross-encoder rerank

#: Keyword arguments :class:`bgem3.Reranker` accepts besides the model name.
def reranker_options() -> frozenset:
    from .crossencoder import Reranker

    return frozenset(n for n in inspect.signature(Reranker.__init__).parameters
                     if n not in ("self", "model_name_or_path", "kwargs"))


def load_reranker(owner: str, model: Any, model_kwargs: Optional[Mapping[str, Any]] = None) -> Any:
    """The reranker an adapter uses: ``model`` as is when it already is one (a :class:`bgem3.Reranker`, a
    ``RemoteReranker``, any object with ``compute_score`` and ``rerank``; ``model_kwargs`` must then be empty),
    else loaded from a name / folder / ``bgem3 serve`` URL with ``model_kwargs`` (each checked by name)."""
    from .crossencoder import is_reranker, resolve_reranker

    opts = dict(model_kwargs or {})
    if is_reranker(model):
        if opts:
            raise ValueError(f"{owner}: model_kwargs {sorted(opts)} are only used when the reranker is loaded by name; "
                             "a reranker was given: configure it with bgem3.Reranker(...) instead")
        return model
    if isinstance(model, Encoder):
        raise TypeError(f"{owner}: a bgem3.Encoder is an embedding model, not a cross-encoder; pass a reranker "
                        "(e.g. 'BAAI/bge-reranker-v2-m3'), or use BGEM3Reranker to re-score with the encoder's channels")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{owner}: model must be a reranker model name / folder, a bgem3 serve URL or a bgem3.Reranker; "
                        f"got {type(model).__name__}")
    valid = reranker_options()
    unknown = [k for k in opts if k not in valid]
    if unknown:
        from ._shared import unknown_options_error

        raise unknown_options_error(f"{owner} model_kwargs", unknown, valid,
                                    {"use_fp16": "use dtype='fp16' (GPU)", "devices": "use device='cuda:0'",
                                     "top_k": "top_n is the reranker's own field"}, exc=ValueError)
    return resolve_reranker(model, **opts)


def reranker_name(reranker: Any) -> str:
    """The model name a reranker reports (for configs and reprs)."""
    return str(getattr(reranker, "model_name", None) or type(reranker).__name__)


def rerank_hits(reranker: Any, query: str, hits: Sequence[Any], top_n: Optional[int],
                text: Any = None) -> list[tuple[Any, float]]:
    """``(hit, rerank score)`` best first (ties keep the retrieval order), at most ``top_n``: the store's
    candidates scored by a cross-encoder. ``text(hit)`` gives the text scored (default ``hit.text``)."""
    hits = list(hits)
    if not hits:
        return []
    texts = [text(h) if text is not None else h.text for h in hits]
    ranked = reranker.rerank(query, texts, top_n=top_n)
    return [(hits[r.index], float(r.score)) for r in ranked]
