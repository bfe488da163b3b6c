"""BGE-M3 lexical (sparse) embeddings for LlamaIndex, and the functions its Qdrant store takes.

* :class:`BGEM3SparseEmbedding` implements ``BaseSparseEmbedding``: each text becomes
  ``{token_id: weight}`` (BGE-M3's lexical weights).
* :func:`qdrant_sparse_fns` gives ``llama_index.vector_stores.qdrant.QdrantVectorStore`` the
  ``sparse_doc_fn`` / ``sparse_query_fn`` pair it calls for ``enable_hybrid=True`` (each maps a
  batch of texts to ``(indices per text, values per text)``), so hybrid search uses BGE-M3's
  lexical weights instead of downloading a SPLADE/FastEmbed model.

Example::

    from qdrant_client import QdrantClient
    from llama_index.core import Settings, StorageContext, VectorStoreIndex, Document
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from llama_index_bgem3 import BGEM3Embedding, BGEM3SparseEmbedding, qdrant_sparse_fns

    Settings.embed_model = BGEM3Embedding(model_name="BAAI/bge-m3")
    sparse = BGEM3SparseEmbedding(encoder=Settings.embed_model.encoder)   # same weights
    store = QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="docs",
                              enable_hybrid=True, **qdrant_sparse_fns(sparse))
"""

from __future__ import annotations

from .embeddings import DEFAULT_BATCH_SIZE, DEFAULT_BGEM3_MODEL, EncoderFields  # first: says what to install

import os
from typing import Any, Callable, Optional, Union

from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding, SparseEmbedding

from bgem3 import Encoder

__all__ = ["BGEM3SparseEmbedding", "qdrant_sparse_fns"]

#: What LlamaIndex's Qdrant store expects: texts -> (indices per text, values per text).
SparseEncoderFn = Callable[[list[str]], tuple[list[list[int]], list[list[float]]]]


class BGEM3SparseEmbedding(EncoderFields, BaseSparseEmbedding):
    """BGE-M3 lexical weights as LlamaIndex sparse embeddings (``dict[int, float]``).

    Takes the same arguments as :class:`~llama_index_bgem3.BGEM3Embedding`; pass
    ``encoder=dense.encoder`` (or the same model / device / dtype) to share one loaded model.

    Example::

        >>> from llama_index_bgem3 import BGEM3SparseEmbedding               # doctest: +SKIP
        >>> sparse = BGEM3SparseEmbedding(model_name="BAAI/bge-m3")          # doctest: +SKIP
        >>> w = sparse.get_query_embedding("What is BGE M3?")                # doctest: +SKIP
        >>> all(isinstance(k, int) and v > 0 for k, v in w.items())          # doctest: +SKIP
        True
    """

    def __init__(self, model_name: Optional[str] = None, *, encoder: Optional[Encoder] = None, **kwargs: Any) -> None:
        model_name, encoder, kwargs, token = self._prepare(DEFAULT_BGEM3_MODEL, model_name, encoder, kwargs)
        for key, ok in (("truncate_dim", None), ("normalize", True)):
            if kwargs.get(key, ok) != ok:
                raise ValueError(f"{key}={kwargs[key]!r} applies to dense vectors; BGEM3SparseEmbedding returns lexical "
                                 "weights, which are not normalised or truncated. Drop it")
        kwargs.setdefault("embed_batch_size", DEFAULT_BATCH_SIZE)
        super().__init__(model_name=model_name, **kwargs)
        self._finish_init(encoder, token)
        self._text_encoder().check_sparse()

    @classmethod
    def class_name(cls) -> str:
        return "BGEM3SparseEmbedding"

    def _get_query_embedding(self, query: str) -> SparseEmbedding:
        return self._text_encoder(query=True).sparse_queries([query])[0]

    def _get_text_embedding(self, text: str) -> SparseEmbedding:
        return self._text_encoder().sparse_documents([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return self._text_encoder().sparse_documents(texts)

    # awaitable: native HTTP for a bgem3.RemoteEncoder, a worker thread for a local encoder
    async def _aget_query_embedding(self, query: str) -> SparseEmbedding:
        return (await self._text_encoder(query=True).asparse_queries([query]))[0]

    async def _aget_text_embedding(self, text: str) -> SparseEmbedding:
        return (await self._text_encoder().asparse_documents([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[SparseEmbedding]:
        return await self._text_encoder().asparse_documents(texts)

    def qdrant_sparse_fns(self) -> dict[str, SparseEncoderFn]:
        """``{"sparse_doc_fn": ..., "sparse_query_fn": ...}`` for ``QdrantVectorStore(**...)``."""
        te = self._text_encoder

        def sparse_doc_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
            return te().sparse_lists_documents(texts)

        def sparse_query_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
            return te(query=True).sparse_lists_queries(texts)

        return {"sparse_doc_fn": sparse_doc_fn, "sparse_query_fn": sparse_query_fn}


def qdrant_sparse_fns(
    model: Union[BGEM3SparseEmbedding, Encoder, str, os.PathLike] = DEFAULT_BGEM3_MODEL,
    **kwargs: Any,
) -> dict[str, SparseEncoderFn]:
    """The ``sparse_doc_fn`` / ``sparse_query_fn`` pair for LlamaIndex's ``QdrantVectorStore``.

    Args:
        model: a :class:`BGEM3SparseEmbedding`, a loaded :class:`bgem3.Encoder`, or a hub id /
            folder of a BGE-M3 model (default ``"BAAI/bge-m3"``).
        **kwargs: :class:`BGEM3SparseEmbedding` arguments when ``model`` is a name or an encoder
            (``device``, ``dtype``, ``max_length``, ``embed_batch_size``, ...).

    Returns:
        ``{"sparse_doc_fn": f, "sparse_query_fn": g}``; each maps a list of texts to
        ``(token ids per text, weights per text)``. Splat it into the store.

    Example::

        >>> from qdrant_client import QdrantClient                             # doctest: +SKIP
        >>> from llama_index.vector_stores.qdrant import QdrantVectorStore     # doctest: +SKIP
        >>> store = QdrantVectorStore(                                         # doctest: +SKIP
        ...     client=QdrantClient(":memory:"), collection_name="docs",
        ...     enable_hybrid=True, **qdrant_sparse_fns("BAAI/bge-m3"))
    """
    if isinstance(model, BGEM3SparseEmbedding):
        if kwargs:
            raise ValueError(f"{sorted(kwargs)} cannot be applied to an existing BGEM3SparseEmbedding; "
                             "build it with those arguments instead")
        sparse = model
    elif isinstance(model, Encoder):
        sparse = BGEM3SparseEmbedding(encoder=model, **kwargs)
    elif isinstance(model, (str, os.PathLike)):
        sparse = BGEM3SparseEmbedding(model_name=os.fspath(model), **kwargs)
    else:
        raise TypeError(
            "model must be a BGEM3SparseEmbedding, a bgem3.Encoder, or a BGE-M3 hub id / folder; "
            f"got {type(model).__name__}"
        )
    return sparse.qdrant_sparse_fns()
