"""BGE-M3 lexical (sparse) embeddings for ``langchain_qdrant.QdrantVectorStore`` hybrid search.

:class:`BGEM3SparseEmbeddings` implements langchain-qdrant's ``SparseEmbeddings``: each text
becomes a ``SparseVector(indices=token ids, values=BGE-M3 lexical weights)``. Qdrant's sparse
dot product over these is exactly BGE-M3's lexical score.

It needs ``langchain-qdrant`` (``pip install 'bgem3[langchain-qdrant]'``); the class can be
imported without it, and building one then raises an ``ImportError`` naming that extra.

Example::

    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from langchain_bgem3 import BGEM3Embeddings, BGEM3SparseEmbeddings

    dense = BGEM3Embeddings(model_name="BAAI/bge-m3")
    sparse = BGEM3SparseEmbeddings(encoder=dense.encoder)   # same weights, loaded once
    store = QdrantVectorStore.from_texts(
        ["BGE M3 is an embedding model.", "BM25 is a bag-of-words model."],
        embedding=dense, sparse_embedding=sparse, location=":memory:",
        collection_name="docs", retrieval_mode=RetrievalMode.HYBRID,
    )
    store.similarity_search("What is BGE M3?", k=1)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .embeddings import DEFAULT_BGEM3_MODEL, EncoderBacked  # first: it says what to install

from pydantic import model_validator

INSTALL_HINT = "pip install 'bgem3[langchain-qdrant]'"

try:
    from langchain_qdrant import SparseEmbeddings, SparseVector

    HAS_LANGCHAIN_QDRANT = True
except ImportError:  # the class stays importable; building one says what to install
    HAS_LANGCHAIN_QDRANT = False
    SparseVector = None  # type: ignore[assignment,misc]

    class SparseEmbeddings(ABC):  # type: ignore[no-redef]
        """Stand-in for ``langchain_qdrant.SparseEmbeddings`` when langchain-qdrant is missing."""

        @abstractmethod
        def embed_documents(self, texts: list[str]) -> list[Any]: ...

        @abstractmethod
        def embed_query(self, text: str) -> Any: ...

__all__ = ["BGEM3SparseEmbeddings"]


class BGEM3SparseEmbeddings(EncoderBacked, SparseEmbeddings):
    """BGE-M3 lexical weights as langchain-qdrant ``SparseVector`` s.

    Takes the same fields as :class:`~langchain_bgem3.BGEM3Embeddings`; pass
    ``encoder=dense.encoder`` (or the same ``model_name`` / ``model_kwargs``) and both facades
    use one loaded copy of the weights.

    Example::

        >>> sparse = BGEM3SparseEmbeddings(model_name="BAAI/bge-m3")     # doctest: +SKIP
        >>> v = sparse.embed_query("What is BGE M3?")                    # doctest: +SKIP
        >>> len(v.indices) == len(v.values)                              # doctest: +SKIP
        True
    """

    model_name: str = DEFAULT_BGEM3_MODEL

    @model_validator(mode="before")
    @classmethod
    def _needs_langchain_qdrant(cls, data: Any) -> Any:
        if not HAS_LANGCHAIN_QDRANT:
            raise ImportError(
                "BGEM3SparseEmbeddings implements langchain-qdrant's SparseEmbeddings, and langchain-qdrant "
                f"is not installed. Install it with: {INSTALL_HINT}"
            )
        return data

    def _check_encoder(self) -> None:
        self._text_encoder().check_sparse()
        for call, where in ((self._doc_call, "encode_kwargs"), (self._query_call, "query_encode_kwargs")):
            for key, name in (("truncate_dim", "truncate_dim"), ("normalize", "normalize_embeddings")):
                if call[key] is not None and not (key == "normalize" and call[key] is True):
                    raise ValueError(f"{name}={call[key]!r} applies to dense vectors; BGEM3SparseEmbeddings returns "
                                     f"lexical weights, which are not normalised or truncated. Drop it from "
                                     f"{where} / model_kwargs")

    def embed_documents(self, texts: list[str]) -> list["SparseVector"]:
        """One ``SparseVector`` (token ids, lexical weights) per document."""
        ids, vals = self._text_encoder().sparse_lists_documents(texts)
        return [SparseVector(indices=i, values=v) for i, v in zip(ids, vals)]

    def embed_query(self, text: str) -> "SparseVector":
        """The query's ``SparseVector``."""
        ids, vals = self._text_encoder(query=True).sparse_lists_queries(_query(text))
        return SparseVector(indices=ids[0], values=vals[0])

    async def aembed_documents(self, texts: list[str]) -> list["SparseVector"]:
        """Like :meth:`embed_documents`, awaitable (native HTTP for a :class:`bgem3.RemoteEncoder`,
        a worker thread for a local encoder)."""
        ids, vals = await self._text_encoder().asparse_lists_documents(texts)
        return [SparseVector(indices=i, values=v) for i, v in zip(ids, vals)]

    async def aembed_query(self, text: str) -> "SparseVector":
        """Like :meth:`embed_query`, awaitable."""
        ids, vals = await self._text_encoder(query=True).asparse_lists_queries(_query(text))
        return SparseVector(indices=ids[0], values=vals[0])


def _query(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"embed_query takes one string; got {type(text).__name__} (use embed_documents for a list)")
    return [text]
