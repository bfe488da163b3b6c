"""LlamaIndex node postprocessor over :class:`bgem3.Reranker` (bge-reranker-v2-m3 and family).

:class:`BGERerank` takes the argument names of LlamaIndex's ``FlagEmbeddingReranker`` and
``SentenceTransformerRerank`` (``model``, ``top_n``, ``use_fp16``, ``device``,
``keep_retrieval_score``, ``trust_remote_code``), honoured or refused by name, and scores
what they score: each node's content with its embed-visible metadata (``MetadataMode.EMBED``).

Example::

    from llama_index_bgem3 import BGERerank

    rerank = BGERerank(model="BAAI/bge-reranker-v2-m3", top_n=3)
    query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[rerank])
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from bgem3._adapters.arguments import missing_framework

    raise missing_framework("llama_index_bgem3", "llama-index-core", "LlamaIndex", "llama-index") from _exc
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from bgem3._adapters.rerankers import load_reranker, reranker_name
from bgem3._adapters.arguments import unknown_options_error
from bgem3.crossencoder import check_query
from bgem3.rerank import check_top_n

from ._nodes import scored_copy

__all__ = ["BGERerank"]

_HINTS = {"top_k": "use top_n= for how many nodes to keep", "similarity_top_k": "that is the retriever's option",
          "devices": "use device='cuda:0'", "use_bf16": "use model_kwargs={'dtype': 'bf16'}",
          "max_length": "use model_kwargs={'max_length': ...}"}


class BGERerank(BaseNodePostprocessor):
    """Rerank nodes with a BGE cross-encoder / LLM reranker (FlagReranker's scores); keep ``top_n``.

    Args:
        model: hub id / folder / ``bgem3 serve`` URL, or a loaded :class:`bgem3.Reranker` /
            ``RemoteReranker`` (default ``BAAI/bge-reranker-v2-m3``).
        top_n: nodes to keep, best first (default 2, as FlagEmbeddingReranker); ``None`` keeps all.
        use_fp16: fp16 weights (GPU only: refused on CPU, where bgem3 runs fp32 or ``dtype='bf16'``).
        device: ``"cpu"``, ``"cuda"``...; default cuda > mps > cpu.
        keep_retrieval_score: keep each node's retrieval score in a copy's ``metadata["retrieval_score"]``.
        trust_remote_code: for models that ship their own code.
        normalize: sigmoid scores in ``[0, 1]`` (default raw logits, as FlagEmbeddingReranker).
        metadata_mode: what text of a node is scored (default ``EMBED``: content + embed-visible metadata,
            as FlagEmbeddingReranker / SentenceTransformerRerank; ``NONE`` for the content only).
        model_kwargs: other :class:`bgem3.Reranker` options (``dtype``, ``max_length``, ``batch_size``...).

    Nodes are never modified: a node whose metadata changes is a copy.
    """

    model: str = Field(default="BAAI/bge-reranker-v2-m3", description="reranker model name / folder / URL")
    top_n: Optional[int] = Field(default=2, description="nodes to keep; None keeps all")
    use_fp16: bool = False
    device: Optional[str] = None
    keep_retrieval_score: bool = False
    trust_remote_code: bool = False
    normalize: bool = False
    metadata_mode: MetadataMode = MetadataMode.EMBED
    model_kwargs: dict = Field(default_factory=dict)

    _reranker: Any = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        unknown = [k for k in data if k not in type(self).model_fields and k not in ("callback_manager",)]
        if unknown:
            raise unknown_options_error("BGERerank", unknown, type(self).model_fields, _HINTS)
        model = data.get("model", "BAAI/bge-reranker-v2-m3")
        given = None if isinstance(model, str) else model
        if given is not None:
            data["model"] = reranker_name(given)
        super().__init__(**data)
        opts = dict(self.model_kwargs)
        if given is None:
            for key, value, default in (("device", self.device, None), ("trust_remote_code", self.trust_remote_code, False)):
                if value != default:
                    if key in opts:
                        raise ValueError(f"BGERerank: {key} is given twice (as {key}= and in model_kwargs); set one")
                    opts[key] = value
            if self.use_fp16:
                if "dtype" in opts and opts["dtype"] not in ("fp16", "float16"):
                    raise ValueError(f"BGERerank: use_fp16=True and model_kwargs dtype={opts['dtype']!r} disagree; set one")
                from bgem3.encoder import resolve_device

                if resolve_device(self.device).type == "cpu":
                    raise ValueError("BGERerank: use_fp16=True on CPU is refused (fp16 is slow and inexact there); "
                                     "leave use_fp16=False (fp32, exact) or pass model_kwargs={'dtype': 'bf16'}")
                opts["dtype"] = "fp16"
        elif self.device is not None or self.use_fp16 or self.trust_remote_code:
            raise ValueError("BGERerank: device= / use_fp16= / trust_remote_code= configure a model loaded by name; a "
                             "loaded reranker was given: set them on bgem3.Reranker(...)")
        self._reranker = load_reranker("BGERerank", given if given is not None else self.model, opts)
        self.model = reranker_name(self._reranker)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    @property
    def reranker(self) -> Any:
        """The :class:`bgem3.Reranker` (or ``RemoteReranker``) doing the scoring."""
        return self._reranker

    @classmethod
    def class_name(cls) -> str:
        return "BGERerank"

    def _texts(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError("BGERerank needs the query: call postprocess_nodes(nodes, query_str=...) or pass a "
                             "query_bundle")
        return check_query(query_bundle.query_str), [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _finish(self, nodes: List[NodeWithScore], ranked: list) -> List[NodeWithScore]:
        out = []
        for r in ranked:
            n = nodes[r.index]
            node = n.node
            if self.keep_retrieval_score:
                meta = dict(node.metadata)
                meta["retrieval_score"] = n.score
                node = scored_copy(node, meta, ["retrieval_score"])
                node.excluded_llm_metadata_keys = list(dict.fromkeys([*node.excluded_llm_metadata_keys, "retrieval_score"]))
                node.excluded_embed_metadata_keys = list(dict.fromkeys([*node.excluded_embed_metadata_keys, "retrieval_score"]))
            out.append(NodeWithScore(node=node, score=float(r.score)))
        return out

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._texts(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model, EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: self.top_n}) as event:
            ranked = self._reranker.rerank(query, texts, top_n=self.top_n, normalize=self.normalize)
            new_nodes = self._finish(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        return new_nodes

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore],
                                  query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._texts(nodes, query_bundle)
        arerank = getattr(self._reranker, "arerank", None)
        if callable(arerank):
            ranked = await arerank(query, texts, self.top_n, normalize=self.normalize)
        else:
            ranked = await asyncio.to_thread(self._reranker.rerank, query, texts, top_n=self.top_n, normalize=self.normalize)
        return self._finish(nodes, ranked)
