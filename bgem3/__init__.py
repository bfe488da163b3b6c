"""bgem3: BGE-M3 and multilingual E5 embeddings (dense, lexical, ColBERT) for RAG pipelines.

Core, framework-free. Adapters live in ``langchain_bgem3`` and ``llama_index_bgem3``.

Example::

    from bgem3 import Encoder
    enc = Encoder("BAAI/bge-m3")
    out = enc.encode(["hello"], dense=True, sparse=True, colbert=True)
"""

from .encoder import EncodeOutput, Encoder, ModelLoadError, resolve_device, resolve_dtype
from .profiles import Profile, detect_profile, get_profile
from .index import HybridIndex, IndexFormatError
from .rerank import HybridReranker
from .types import Hit
from . import scoring

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "HybridIndex",
    "HybridReranker",
    "Hit",
    "IndexFormatError",
    "EncodeOutput",
    "ModelLoadError",
    "Profile",
    "detect_profile",
    "get_profile",
    "resolve_device",
    "resolve_dtype",
    "scoring",
    "__version__",
]
