"""LangChain retriever over a bgem3 hybrid store (dense + lexical + ColBERT fusion)."""

from __future__ import annotations

import uuid
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.indexing.base import DeleteResponse, DocumentIndex, UpsertResponse
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator, model_validator

from bgem3._adapters.rerankers import load_reranker, rerank_hits
from bgem3._adapters.retrieval import check_hybrid_store, store_builder_args, store_fusion_mode, store_weights
from bgem3._adapters.arguments import check_list_arg, unknown_options_error
from bgem3.scoring import DEFAULT_WEIGHTS, check_weights
from bgem3.types import FusionMode

from ._scores import scored_document

__all__ = ["BGEM3HybridRetriever"]

#: keys of ``search_kwargs`` (``VectorStoreRetriever``'s) and of ``invoke(query, **kwargs)``
SEARCH_KEYS = ("k", "filter", "weights", "candidates", "mode")
_HINTS = {
    "top_k": "use k= (how many documents to return)",
    "similarity_top_k": "use k= (how many documents to return)",
    "score_threshold": "not supported: the fused score has no fixed scale; filter the returned documents' "
                       "metadata['score'] yourself",
    "fetch_k": "use candidates= (the candidate pool)",
    "lambda_mult": "MMR is not supported; bgem3 fuses dense, lexical and ColBERT scores instead",
}


def _check_filter(value: Any) -> Any:
    if value is None or isinstance(value, Mapping) or callable(value):
        return value
    raise TypeError(f"filter must be a dict {{metadata key: value or [values]}} or a callable metadata -> bool; "
                    f"got {type(value).__name__} ({value!r}). Example: filter={{'source': 'a.txt'}}")


class BGEM3HybridRetriever(DocumentIndex):
    """Hybrid retrieval with BGE-M3: dense, lexical and ColBERT scores fused per document.

    Works over any :class:`bgem3.types.HybridStore` — the embedded :class:`bgem3.HybridIndex`
    (what :meth:`from_texts` / :meth:`from_documents` build) or
    :class:`bgem3.stores.qdrant.QdrantHybridStore`. Every number comes from the store's ``search``.

    Each returned ``Document`` has ``id`` (the store id) and metadata ``score`` (fused),
    ``dense_score``, ``sparse_score`` and ``colbert_score`` (prefixed by ``metadata_key_prefix``).
    If a stored document's own metadata has a key of the same name, the returned copy holds the
    score and a ``UserWarning`` names the key; the stored metadata is untouched. Set
    ``metadata_key_prefix="bgem3_"`` to keep both.

    Per-call overrides: ``retriever.invoke(query, k=..., weights=..., filter=..., candidates=...,
    mode=...)``. ``ainvoke`` runs the search in a worker thread, so the event loop is not blocked.

    Args:
        store: the hybrid store to search.
        k: how many documents to return (default 4).
        weights: ``(dense, lexical, colbert)`` fusion weights; default ``(0.4, 0.2, 0.4)`` (BGE-M3 paper).
        candidates: the store's candidate pool from dense top-N and lexical top-N (default 100).
        mode: ``"auto"`` (default: the store decides, ``store.fusion_mode()``: reciprocal-rank fusion
            beside a BM25 lexical channel, whose raw scores would swamp a weighted mean; the weighted
            mean otherwise), ``"weighted"`` (weighted sum / weight sum) or ``"rrf"`` (reciprocal-rank
            fusion).
        filter: metadata filter: a dict of exact matches (a list value matches any of its items), or
            a callable ``metadata -> bool`` (embedded :class:`bgem3.HybridIndex`; applied before
            candidate selection).
        search_kwargs: ``VectorStoreRetriever``'s spelling, e.g. ``{"k": 1, "filter": {...}}``;
            keys ``k``, ``filter``, ``weights``, ``candidates``, ``mode`` set those fields.
        metadata_key_prefix: prefix for the score keys in the returned metadata.
        reranker: an optional cross-encoder (a :class:`bgem3.Reranker`, a ``RemoteReranker``, a model name
            such as ``"BAAI/bge-reranker-v2-m3"`` or a ``bgem3 serve`` URL): the store's best
            ``max(k, rerank_candidates)`` hits are rescored by it and the ``k`` best returned, each with
            metadata ``rerank_score`` beside the store's ``score`` (fused) and channel scores.
        rerank_candidates: how many store hits the reranker sees (default 50).

    It is a LangChain ``DocumentIndex`` (``upsert`` / ``delete`` / ``get``), so
    ``langchain_core.indexing.index(docs, record_manager, retriever, ...)`` keeps it in sync.
    Pickle / ``copy.deepcopy`` work over :class:`bgem3.HybridIndex` (the data is copied, the model is
    shared in-process or loaded again from its folder); a Qdrant-backed one refuses with the fix.

    Example::

        >>> from langchain_bgem3 import BGEM3HybridRetriever                           # doctest: +SKIP
        >>> retriever = BGEM3HybridRetriever.from_texts(
        ...     ["BGE M3 is an embedding model.", "Pandas eat bamboo."], "BAAI/bge-m3", k=1)  # doctest: +SKIP
        >>> doc = retriever.invoke("What is BGE M3?")[0]                                # doctest: +SKIP
        >>> doc.page_content, sorted(doc.metadata)                                      # doctest: +SKIP
        ('BGE M3 is an embedding model.', ['colbert_score', 'dense_score', 'score', 'sparse_score'])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    store: Any
    k: int = Field(default=4, gt=0)
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    candidates: int = Field(default=100, gt=0)
    mode: FusionMode = "auto"
    filter: Optional[Union[dict[str, Any], Callable[..., bool]]] = None
    search_kwargs: dict[str, Any] = Field(default_factory=dict)
    metadata_key_prefix: str = ""
    reranker: Any = None
    rerank_candidates: int = Field(default=50, gt=0)

    def __init__(self, **data: Any) -> None:
        # DocumentIndex is marked beta and warns on every construction; this class is stable API
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*DocumentIndex.*")
            super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            raise unknown_options_error("BGEM3HybridRetriever", unknown, cls.model_fields, _HINTS, exc=ValueError)
        sk = data.get("search_kwargs") or {}
        if not isinstance(sk, Mapping):
            raise ValueError(f"search_kwargs must be a dict like {{'k': 4}}; got {type(sk).__name__}")
        bad = [k for k in sk if k not in SEARCH_KEYS]
        if bad:
            raise unknown_options_error("search_kwargs", bad, SEARCH_KEYS, _HINTS, exc=ValueError)
        for key, value in sk.items():
            if key in data and data[key] != value:
                raise ValueError(f"{key}={data[key]!r} and search_kwargs[{key!r}]={value!r} disagree; set one")
            data[key] = value
        return data

    @field_validator("filter", mode="before")
    @classmethod
    def _validate_filter(cls, v: Any) -> Any:
        try:
            return _check_filter(v)
        except TypeError as exc:  # pydantic reports ValueError
            raise ValueError(str(exc)) from None

    @field_validator("reranker", mode="before")
    @classmethod
    def _load_reranker(cls, v: Any) -> Any:
        if v is None:
            return None
        try:
            return load_reranker("BGEM3HybridRetriever", v)
        except TypeError as exc:  # pydantic reports ValueError
            raise ValueError(str(exc)) from None

    @field_validator("store")
    @classmethod
    def _validate_store(cls, v: Any) -> Any:
        return check_hybrid_store(v, builder="from_texts", error=ValueError)

    @field_validator("weights", mode="before")
    @classmethod
    def _validate_weights(cls, v: Any) -> tuple[float, float, float]:
        return check_weights(v)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any], positional: Any, owner: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        fields = set(cls.model_fields) - {"store"}
        mine = {k: v for k, v in kwargs.items() if k in fields}
        rest = {k: v for k, v in kwargs.items() if k not in fields}
        model, rest = store_builder_args(owner, positional, rest, fields, _HINTS)
        return model, mine, rest

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        model_name_or_encoder: Any = None,
        metadatas: Optional[Sequence[Mapping[str, Any]]] = None,
        ids: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Build a :class:`bgem3.HybridIndex` over ``texts`` and a retriever on it.

        The model (default ``"BAAI/bge-m3"``) is ``model_name_or_encoder``, or ``model_name=`` /
        ``encoder=``: it encodes the documents, the queries, and is what the saved index records.
        ``kwargs`` that are retriever fields (``k``, ``weights``, ``candidates``, ``mode``, ``filter``,
        ``search_kwargs``, ``metadata_key_prefix``, ``tags``...) configure the retriever; the rest must
        be :class:`bgem3.HybridIndex` / :class:`bgem3.Encoder` options (``device``, ``max_length``,
        ``colbert_dtype``...). Anything else raises ``TypeError`` naming it.
        """
        from bgem3.index import HybridIndex

        model, mine, rest = cls._split_kwargs(kwargs, model_name_or_encoder, "BGEM3HybridRetriever.from_texts")
        texts = check_list_arg(texts, "texts")
        retriever = cls(store=HybridIndex(model, **rest), **mine)
        if texts:
            retriever.add_texts(texts, metadatas, ids)
        return retriever

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        model_name_or_encoder: Any = None,
        *,
        ids: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Like :meth:`from_texts`, from ``Document`` objects (their ``id`` is kept when set)."""
        from bgem3.index import HybridIndex

        model, mine, rest = cls._split_kwargs(kwargs, model_name_or_encoder, "BGEM3HybridRetriever.from_documents")
        retriever = cls(store=HybridIndex(model, **rest), **mine)
        retriever.add_documents(list(documents), ids=ids)
        return retriever

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[Sequence[Mapping[str, Any]]] = None,
        ids: Optional[Sequence[Optional[str]]] = None,
    ) -> list[str]:
        """Add (or, for an existing id, replace) texts in the store; returns their ids.

        A lone string for ``texts`` or ``ids`` raises ``TypeError`` (pass a list).
        """
        texts = check_list_arg(texts, "texts")
        if not texts:
            return []
        if ids is not None:
            if isinstance(ids, str):
                check_list_arg(ids, "ids")
            ids = list(ids)
            if len(ids) != len(texts):
                raise ValueError(f"got {len(ids)} ids for {len(texts)} texts; pass one id per text (or none)")
            ids = [str(uuid.uuid4()) if i is None else str(i) for i in ids]
        return list(self.store.add(texts, ids=ids, metadatas=list(metadatas) if metadatas is not None else None))

    def add_documents(self, documents: Sequence[Document], ids: Optional[Sequence[str]] = None) -> list[str]:
        """Add documents; ids come from ``ids``, else each ``Document.id``, else a new UUID."""
        documents = list(documents)
        if ids is None:
            ids = [d.id for d in documents]
            if all(i is None for i in ids):
                ids = None
        return self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents], ids)

    def delete(self, ids: Optional[Sequence[str]] = None, **kwargs: Any) -> DeleteResponse:
        """Delete documents by id from the store (a lone string raises ``TypeError``: pass a list).

        ``ignore_missing=True`` skips ids that are not stored. Returns LangChain's ``DeleteResponse``.
        """
        if ids is None:
            raise ValueError("delete() needs the ids to delete, e.g. retriever.delete(['id1', 'id2'])")
        ids = check_list_arg(ids, "ids")
        extra = set(kwargs) - {"ignore_missing"}
        if extra:
            raise unknown_options_error("BGEM3HybridRetriever.delete", extra, ["ids", "ignore_missing"])
        if kwargs.get("ignore_missing"):
            self.store.delete(ids, ignore_missing=True)
        else:
            self.store.delete(ids)
        return DeleteResponse(num_deleted=len(ids), succeeded=ids, failed=[], num_failed=0)

    def upsert(self, items: Sequence[Document], /, **kwargs: Any) -> UpsertResponse:
        """Add or replace documents (by ``Document.id``; new UUIDs where unset): LangChain's
        ``DocumentIndex`` interface, used by ``langchain_core.indexing.index``."""
        if kwargs:
            raise unknown_options_error("BGEM3HybridRetriever.upsert", kwargs, [])
        ids = self.add_documents(list(items))
        return UpsertResponse(succeeded=ids, failed=[])

    def get(self, ids: Sequence[str], /, **kwargs: Any) -> list[Document]:
        """The stored documents with these ids (unknown ids are skipped), without scores."""
        if kwargs:
            raise unknown_options_error("BGEM3HybridRetriever.get", kwargs, [])
        ids = [i for i in check_list_arg(ids, "ids") if i in self.store]
        if not ids:
            return []
        return [Document(page_content=h.text, metadata=dict(h.metadata or {}), id=h.id) for h in self.store.get(ids)]

    # ------------------------------------------------------------------ reading
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: Optional[int] = None,
        weights: Optional[Sequence[float]] = None,
        filter: Optional[Mapping[str, Any]] = None,
        candidates: Optional[int] = None,
        mode: Optional[str] = None,
        **kwargs: Any,
    ) -> list[Document]:
        if kwargs:
            raise unknown_options_error("BGEM3HybridRetriever.invoke", kwargs, SEARCH_KEYS, _HINTS)
        filter = _check_filter(filter)
        if filter is None:
            filter = self.filter
        elif isinstance(filter, Mapping):
            filter = dict(filter) or None  # {} lifts the retriever's filter
        k = self.k if k is None else k
        hits = self.store.search(
            query,
            k=k if self.reranker is None else max(k, self.rerank_candidates),
            weights=tuple(self.weights) if weights is None else store_weights(self.store, weights),
            filter=filter,
            candidates=self.candidates if candidates is None else candidates,
            mode=store_fusion_mode(self.store, self.mode if mode is None else mode),
        )
        if self.reranker is None:
            ranked = [(h, None) for h in hits]
        else:  # the store's candidates, rescored by the cross-encoder; the channel scores stay beside
            ranked = rerank_hits(self.reranker, query, hits, k)
        return [
            scored_document(
                Document(page_content=h.text, metadata=dict(h.metadata or {}), id=h.id),
                {"score": h.score, "dense_score": h.dense_score, "sparse_score": h.sparse_score,
                 "colbert_score": h.colbert_score, "rerank_score": rs},
                self.metadata_key_prefix, warn_on_collision=True, owner="BGEM3HybridRetriever",
            )
            for h, rs in ranked
        ]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        **kwargs: Any,
    ) -> list[Document]:
        # the store's search is CPU/GPU-bound synchronous work: run it in a worker thread
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )
