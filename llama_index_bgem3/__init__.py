"""LlamaIndex adapters for bgem3."""

from .postprocessors import BGEM3Reranker
from .retrievers import BGEM3HybridRetriever

__all__ = ["BGEM3HybridRetriever", "BGEM3Reranker"]
