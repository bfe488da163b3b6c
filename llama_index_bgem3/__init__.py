"""LlamaIndex adapters for bgem3: BGE-M3 / E5 dense embeddings, BGE-M3 sparse embeddings,
the sparse functions LlamaIndex's Qdrant store takes for hybrid search, the hybrid retriever
and the three-channel reranker.

Needs ``pip install 'bgem3[llama-index]'``.

Example::

    from llama_index.core import Settings
    from llama_index_bgem3 import BGEM3Embedding

    Settings.embed_model = BGEM3Embedding(model_name="BAAI/bge-m3")
"""

from llama_index_bgem3.crossencoders import BGERerank
from llama_index_bgem3.embeddings import BGEM3Embedding, E5Embedding
from llama_index_bgem3.postprocessors import BGEM3Reranker
from llama_index_bgem3.retrievers import BGEM3HybridRetriever
from llama_index_bgem3.sparse import BGEM3SparseEmbedding, qdrant_sparse_fns

__all__ = [
    "BGEM3Embedding",
    "BGEM3HybridRetriever",
    "BGEM3Reranker",
    "BGEM3SparseEmbedding",
    "BGERerank",
    "E5Embedding",
    "qdrant_sparse_fns",
]
