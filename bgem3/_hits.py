"""Adapter plumbing shared by ``langchain_bgem3`` and ``llama_index_bgem3`` (framework-free, no math).

Example::

    >>> from bgem3._hits import merge_scores
    >>> merge_scores({"src": "a"}, [("score", 0.5), ("dense_score", None)], "bgem3_",
    ...              warn_on_collision=True, owner="demo", noun="document", returned="Document", verb="Set")
    ({'src': 'a', 'bgem3_score': 0.5}, ['bgem3_score'])
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Optional

from .encoder import Encoder
from .rerank import resolve_encoder


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
        return resolve_encoder(model_name, **(model_kwargs or {}))
    if not isinstance(encoder, Encoder):
        raise type_error(f"encoder must be a bgem3.Encoder (or leave it out and pass model_name=...); "
                         f"got {type(encoder).__name__}")
    if model_kwargs:
        raise ValueError("model_kwargs are only used when the reranker loads the model by model_name; "
                         "an Encoder was given: configure it with Encoder(...) instead")
    return encoder


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
