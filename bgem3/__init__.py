"""bgem3: BGE-M3 and multilingual E5 embeddings (dense, lexical, ColBERT) and the BGE rerankers for RAG pipelines.

Core, framework-free. Adapters live in ``langchain_bgem3`` and ``llama_index_bgem3``.

Example::

    from bgem3 import Encoder, Reranker
    enc = Encoder("BAAI/bge-m3")
    out = enc.encode(["hello"], dense=True, sparse=True, colbert=True)
    rr = Reranker("BAAI/bge-reranker-v2-m3")          # FlagReranker's scores (docs/rerank.md)
    rr.rerank("hello", ["hi there", "goodbye"], top_n=1)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names -> the submodule that defines them. Loaded on first use (PEP 562), so
# `import bgem3` and `bgem3 --help` do not pay for importing torch and transformers.
_LAZY = {
    "Encoder": "encoder",
    "EncodeOutput": "encoder",
    "ModelLoadError": "encoder",
    "resolve_device": "encoder",
    "resolve_dtype": "encoder",
    "Profile": "profiles",
    "detect_profile": "profiles",
    "get_profile": "profiles",
    "HybridIndex": "index",
    "IndexFormatError": "index",
    "HybridReranker": "rerank",
    "Reranker": "crossencoder",
    "RankedText": "types",
    "Hit": "types",
    "BM25": "bm25",
    "RemoteEncoder": "remote",
    "RemoteReranker": "remote_rerank",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import scoring
    from .encoder import EncodeOutput, Encoder, ModelLoadError, resolve_device, resolve_dtype
    from .index import HybridIndex, IndexFormatError
    from .profiles import Profile, detect_profile, get_profile
    from .bm25 import BM25
    from .remote import RemoteEncoder
    from .remote_rerank import RemoteReranker
    from .crossencoder import Reranker
    from .types import RankedText
    from .rerank import HybridReranker
    from .types import Hit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "scoring":
        return importlib.import_module(".scoring", __name__)
    raise AttributeError(f"module 'bgem3' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


from ._version import __version__

__all__ = [
    "BM25",
    "Encoder",
    "HybridIndex",
    "HybridReranker",
    "Hit",
    "IndexFormatError",
    "EncodeOutput",
    "ModelLoadError",
    "RemoteEncoder",
    "RemoteReranker",
    "RankedText",
    "Reranker",
    "Profile",
    "detect_profile",
    "get_profile",
    "resolve_device",
    "resolve_dtype",
    "scoring",
    "__version__",
]
