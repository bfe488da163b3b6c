"""LangChain retriever over a bgem3 hybrid store (dense + lexical + ColBERT fusion)."""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator

from bgem3._hits import check_hybrid_store
from bgem3.scoring import DEFAULT_WEIGHTS, check_weights

from ._scores import scored_document

__all__ = ["BGEM3HybridRetriever"]

class BGEM3HybridRetriever(BaseRetriever):
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
        mode: ``"weighted"`` (weighted sum / weight sum) or ``"rrf"`` (reciprocal-rank fusion).
        filter: metadata filter, a dict of exact matches (a list value matches any of its items).
        metadata_key_prefix: prefix for the score keys in the returned metadata.

    Example::

        >>> from langchain_bgem3 import BGEM3HybridRetriever                           # doctest: +SKIP
        >>> retriever = BGEM3HybridRetriever.from_texts(
        ...     ["BGE M3 is an embedding model.", "Pandas eat bamboo."], "BAAI/bge-m3", k=1)  # doctest: +SKIP
        >>> doc = retriever.invoke("What is BGE M3?")[0]                                # doctest: +SKIP
        >>> doc.page_content, sorted(doc.metadata)                                      # doctest: +SKIP
        ('BGE M3 is an embedding model.', ['colbert_score', 'dense_score', 'score', 'sparse_score'])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = Field(default=4, gt=0)
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    candidates: int = Field(default=100, gt=0)
    mode: Literal["weighted", "rrf"] = "weighted"
    filter: Optional[dict[str, Any]] = None
    metadata_key_prefix: str = ""

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
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = set(cls.model_fields) - {"store"}
        mine = {k: v for k, v in kwargs.items() if k in fields}
        rest = {k: v for k, v in kwargs.items() if k not in fields}
        return mine, rest

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        model_name_or_encoder: Any = "BAAI/bge-m3",
        metadatas: Optional[Sequence[Mapping[str, Any]]] = None,
        ids: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Build a :class:`bgem3.HybridIndex` over ``texts`` and a retriever on it.

        ``kwargs`` that are retriever fields (``k``, ``weights``, ``candidates``, ``mode``, ``filter``,
        ``metadata_key_prefix``, ``tags``...) configure the retriever; the rest go to
        ``HybridIndex(model_name_or_encoder, **rest)`` (encoder options such as ``device``,
        ``max_length``, ``batch_size``).
        """
        from bgem3.index import HybridIndex

        mine, rest = cls._split_kwargs(kwargs)
        store = HybridIndex(model_name_or_encoder, **rest)
        texts = list(texts)
        if texts:
            store.add(texts, ids=list(ids) if ids is not None else None,
                      metadatas=list(metadatas) if metadatas is not None else None)
        return cls(store=store, **mine)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        model_name_or_encoder: Any = "BAAI/bge-m3",
        *,
        ids: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Like :meth:`from_texts`, from ``Document`` objects (their ``id`` is kept when set)."""
        from bgem3.index import HybridIndex

        mine, rest = cls._split_kwargs(kwargs)
        retriever = cls(store=HybridIndex(model_name_or_encoder, **rest), **mine)
        retriever.add_documents(list(documents), ids=ids)
        return retriever

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[Sequence[Mapping[str, Any]]] = None,
        ids: Optional[Sequence[Optional[str]]] = None,
    ) -> list[str]:
        """Add (or, for an existing id, replace) texts in the store; returns their ids."""
        texts = list(texts)
        if not texts:
            return []
        if ids is not None:
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

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents by id from the store."""
        self.store.delete(list(ids))

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
    ) -> list[Document]:
        hits = self.store.search(
            query,
            k=self.k if k is None else k,
            weights=tuple(self.weights if weights is None else check_weights(weights)),
            filter=self.filter if filter is None else (dict(filter) or None),
            candidates=self.candidates if candidates is None else candidates,
            mode=self.mode if mode is None else mode,
        )
        return [
            scored_document(
                Document(page_content=h.text, metadata=dict(h.metadata or {}), id=h.id),
                {"score": h.score, "dense_score": h.dense_score, "sparse_score": h.sparse_score,
                 "colbert_score": h.colbert_score},
                self.metadata_key_prefix, warn_on_collision=True, owner="BGEM3HybridRetriever",
            )
            for h in hits
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
