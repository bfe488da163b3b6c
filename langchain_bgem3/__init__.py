"""LangChain adapters for bgem3."""

from .rerankers import BGEM3Reranker
from .retrievers import BGEM3HybridRetriever

__all__ = ["BGEM3HybridRetriever", "BGEM3Reranker"]
