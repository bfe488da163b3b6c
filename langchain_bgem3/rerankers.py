"""LangChain reranker: re-score any retriever's documents with BGE-M3's three channels."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import ConfigDict, Field, field_validator, model_validator

from bgem3 import Encoder
from bgem3._adapters.rerankers import reranker_aliases, reranker_encoder
from bgem3.rerank import check_top_n, rerank
from bgem3.scoring import DEFAULT_WEIGHTS, check_weights

from ._scores import scored_document

__all__ = ["BGEM3Reranker"]


class BGEM3Reranker(BaseDocumentCompressor):
    """Rerank documents from any retriever by BGE-M3's fused dense + lexical + ColBERT score.

    The scores are those of :class:`bgem3.HybridIndex` (see :mod:`bgem3.rerank`): query encoded with
    the query template, each document's ``page_content`` with the passage template,
    ``score = (w_d*dense + w_l*sparse + w_c*colbert) / sum(w)``.

    Each returned document is a copy of the input with metadata ``score``, ``dense_score``,
    ``sparse_score``, ``colbert_score`` (prefixed by ``metadata_key_prefix``). Existing keys of those
    names (for example from an earlier retriever) are replaced: reranking replaces relevance scores.
    Models without BGE-M3 heads rerank dense-only with ``weights=(1, 0, 0)``; ``sparse_score`` and
    ``colbert_score`` are then not written.

    Args:
        model_name: hub id or local folder of the model (default ``"BAAI/bge-m3"``).
        model_kwargs: options for :class:`bgem3.Encoder` (``device``, ``dtype``, ``max_length``...).
        encoder: an already loaded :class:`bgem3.Encoder` (shared with other components);
            when given, ``model_name`` / ``model_kwargs`` are not used.
        top_n: how many documents to keep (``None``: all, reordered). Default 3.
        weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)``.
        mode: ``"weighted"`` or ``"rrf"`` (reciprocal-rank fusion of the three channel rankings).
        rrf_k: the RRF constant.
        batch_size / max_length: encoder options.
        metadata_key_prefix: prefix for the score keys.

    Example::

        from langchain_classic.retrievers import ContextualCompressionRetriever
        from langchain_bgem3 import BGEM3Reranker

        reranker = BGEM3Reranker(model_name="BAAI/bge-m3", top_n=3)
        retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=bm25_retriever)
        docs = retriever.invoke("what is BGE M3?")
        # or directly:
        docs = reranker.compress_documents(candidates, "what is BGE M3?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model_name: str = "BAAI/bge-m3"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    encoder: Optional[Encoder] = Field(default=None, exclude=True, repr=False)
    top_n: Optional[int] = 3
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    mode: Literal["weighted", "rrf"] = "weighted"
    rrf_k: int = Field(default=60, gt=0)
    batch_size: Optional[int] = Field(default=None, gt=0)
    max_length: Optional[int] = Field(default=None, gt=0)
    metadata_key_prefix: str = ""

    @model_validator(mode="before")
    @classmethod
    def _load_encoder(cls, data: Any) -> Any:
        data = reranker_aliases(data, "BGEM3Reranker", set(cls.model_fields), type_error=ValueError)
        if isinstance(data, dict):
            data = dict(data)
            data["encoder"] = reranker_encoder(data.get("encoder"), data.get("model_name", "BAAI/bge-m3"),
                                               data.get("model_kwargs"), type_error=ValueError)
            data["model_name"] = str(data["encoder"].model_name)
        return data

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, v: Any) -> tuple[float, float, float]:
        return check_weights(v)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Return the ``top_n`` best documents for ``query``, best first, with their scores in metadata."""
        docs = list(documents)
        if not docs:
            return []
        results = rerank(
            self.encoder, query, [d.page_content for d in docs], self.top_n, self.weights,
            mode=self.mode, rrf_k=self.rrf_k, batch_size=self.batch_size, max_length=self.max_length,
        )
        return [
            scored_document(
                docs[r.index],
                {"score": r.score, "dense_score": r.dense_score, "sparse_score": r.sparse_score,
                 "colbert_score": r.colbert_score},
                self.metadata_key_prefix, warn_on_collision=False, owner="BGEM3Reranker",
            )
            for r in results
        ]
