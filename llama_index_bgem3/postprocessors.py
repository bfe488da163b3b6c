"""LlamaIndex node postprocessor: rerank any retriever's nodes with BGE-M3's three channels."""

from __future__ import annotations

from typing import Any, List, Literal, Optional, Tuple

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from bgem3 import Encoder
from bgem3._adapters.rerankers import reranker_aliases, reranker_encoder
from bgem3.rerank import check_top_n, rerank
from bgem3.scoring import DEFAULT_WEIGHTS, check_weights

from ._nodes import with_channel_scores

__all__ = ["BGEM3Reranker"]


class BGEM3Reranker(BaseNodePostprocessor):
    """Rerank nodes by BGE-M3's fused dense + lexical + ColBERT score (``top_n`` kept).

    Scores are those of :class:`bgem3.HybridIndex` (see :mod:`bgem3.rerank`):
    ``score = (w_d*dense + w_l*sparse + w_c*colbert) / sum(w)``. Each returned ``NodeWithScore``
    wraps a copy of the input node: ``score`` is the fused score, and the node's metadata gets
    ``dense_score``, ``sparse_score``, ``colbert_score`` (prefixed by ``metadata_key_prefix``;
    existing keys of those names, e.g. from an earlier retriever, are replaced), excluded from
    LLM and embedding text. The input nodes are not modified.

    Models without BGE-M3 heads rerank dense-only with ``weights=(1, 0, 0)``.

    Args:
        model_name: hub id or local folder of the model (default ``"BAAI/bge-m3"``).
        model_kwargs: options for :class:`bgem3.Encoder` (``device``, ``dtype``, ``max_length``...).
        encoder: an already loaded :class:`bgem3.Encoder` (shared with other components);
            when given, ``model_name`` / ``model_kwargs`` are not used.
        top_n: how many nodes to keep (``None``: all, reordered). Default 3.
        weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)``.
        mode: ``"weighted"`` or ``"rrf"``; ``rrf_k``: the RRF constant.
        metadata_mode: which node content is scored; default ``MetadataMode.NONE`` (the text
            alone, as the hybrid retriever indexes it); ``MetadataMode.EMBED`` includes the
            metadata the node marks for embedding.

    Example::

        >>> from llama_index_bgem3 import BGEM3Reranker                            # doctest: +SKIP
        >>> reranker = BGEM3Reranker(model_name="BAAI/bge-m3", top_n=3)               # doctest: +SKIP
        >>> query_engine = index.as_query_engine(similarity_top_k=20,
        ...                                      node_postprocessors=[reranker])    # doctest: +SKIP
        >>> best = reranker.postprocess_nodes(nodes, query_str="what is BGE M3?")   # doctest: +SKIP
    """

    model_name: str = Field(default="BAAI/bge-m3", description="hub id or local folder of the model")
    model_kwargs: dict = Field(default_factory=dict, description="options for bgem3.Encoder")
    encoder: Optional[Any] = Field(default=None, description="an already loaded bgem3.Encoder", exclude=True)
    top_n: Optional[int] = Field(default=3, description="nodes to keep; None keeps all")
    weights: Tuple[float, float, float] = Field(default=DEFAULT_WEIGHTS)
    mode: Literal["weighted", "rrf"] = "weighted"
    rrf_k: int = Field(default=60, gt=0)
    batch_size: Optional[int] = Field(default=None, gt=0)
    max_length: Optional[int] = Field(default=None, gt=0)
    metadata_mode: MetadataMode = MetadataMode.NONE
    metadata_key_prefix: str = ""

    _encoder: Encoder = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        data = reranker_aliases(data, "BGEM3Reranker", set(type(self).model_fields))
        super().__init__(**data)
        self._encoder = reranker_encoder(self.encoder, self.model_name, self.model_kwargs)
        self.encoder = self._encoder
        self.model_name = str(self._encoder.model_name)

    @field_validator("weights", mode="before")
    @classmethod
    def _check_weights(cls, v: Any) -> Tuple[float, float, float]:
        return check_weights(v)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    @classmethod
    def class_name(cls) -> str:
        return "BGEM3Reranker"

    def _postprocess_nodes(
        self,
        nodes: List[NodeWithScore],
        query_bundle: Optional[QueryBundle] = None,
    ) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BGEM3Reranker needs the query: call postprocess_nodes(nodes, query_str=...) "
                             "or pass a query_bundle")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        results = rerank(
            self._encoder, query_bundle.query_str, texts, self.top_n, self.weights,
            mode=self.mode, rrf_k=self.rrf_k, batch_size=self.batch_size, max_length=self.max_length,
        )
        return [
            with_channel_scores(nodes[r.index].node, r.dense_score, r.sparse_score, r.colbert_score, r.score,
                                self.metadata_key_prefix, warn_on_collision=False, owner="BGEM3Reranker")
            for r in results
        ]
