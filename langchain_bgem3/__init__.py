"""LangChain adapters for bgem3: BGE-M3 / E5 dense embeddings, BGE-M3 sparse embeddings,
the hybrid retriever, the three-channel reranker and the BGE cross-encoder rerankers.

Needs ``pip install 'bgem3[langchain]'`` (``BGEM3SparseEmbeddings`` also needs
``pip install 'bgem3[langchain-qdrant]'``).

Example::

    from langchain_bgem3 import BGEM3Embeddings, BGEM3SparseEmbeddings, E5Embeddings

    dense = BGEM3Embeddings(model_name="BAAI/bge-m3")
    sparse = BGEM3SparseEmbeddings(encoder=dense.encoder)
"""

from langchain_bgem3.crossencoders import BGECrossEncoderReranker, BGERerankerCrossEncoder
from langchain_bgem3.embeddings import BGEM3Embeddings, E5Embeddings
from langchain_bgem3.rerankers import BGEM3Reranker
from langchain_bgem3.retrievers import BGEM3HybridRetriever
from langchain_bgem3.sparse import BGEM3SparseEmbeddings

__all__ = [
    "BGECrossEncoderReranker",
    "BGEM3Embeddings",
    "BGEM3HybridRetriever",
    "BGEM3Reranker",
    "BGEM3SparseEmbeddings",
    "BGERerankerCrossEncoder",
    "E5Embeddings",
]
