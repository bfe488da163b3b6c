"""LangChain reranker: re-score any retriever's documents with BGE-M3's three channels."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from pydantic import ConfigDict, Field, field_validator, model_validator

from bgem3 import Encoder
from bgem3.rerank import rerank, resolve_encoder
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
        encoder: a :class:`bgem3.Encoder`, or a model name / local folder to load one from.
        encoder_kwargs: options for :class:`bgem3.Encoder` when ``encoder`` is a name.
        top_n: how many documents to keep (``None``: all, reordered). Default 3.
        weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)``.
        mode: ``"weighted"`` or ``"rrf"`` (reciprocal-rank fusion of the three channel rankings).
        rrf_k: the RRF constant.
        batch_size / max_length: encoder options.
        metadata_key_prefix: prefix for the score keys.

    Example::

        from langchain_classic.retrievers import ContextualCompressionRetriever
        from langchain_bgem3 import BGEM3Reranker

        reranker = BGEM3Reranker(encoder="BAAI/bge-m3", top_n=3)
        retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=bm25_retriever)
        docs = retriever.invoke("what is BGE M3?")
        # or directly:
        docs = reranker.compress_documents(candidates, "what is BGE M3?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    encoder: Encoder
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict, exclude=True)
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
        if isinstance(data, dict) and "encoder" in data and not isinstance(data["encoder"], Encoder):
            data = dict(data)
            data["encoder"] = resolve_encoder(data["encoder"], **(data.get("encoder_kwargs") or {}))
        return data

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, v: Any) -> tuple[float, float, float]:
        return check_weights(v)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v <= 0:
            raise ValueError(f"top_n must be a positive integer or None (keep all); got {v!r}")
        return v

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
