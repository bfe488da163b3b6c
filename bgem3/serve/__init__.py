"""``bgem3 serve``: one shared encoder over HTTP for many processes and machines.

Speaks text-embeddings-inference's API (``/embed``, ``/embed_sparse``, ``/info``, ``/health``),
OpenAI's (``/v1/embeddings``) and its own ``/encode`` (dense + lexical + ColBERT), with
dynamic batching across concurrent requests. With ``--reranker MODEL`` it also serves a
:class:`bgem3.Reranker` on TEI's ``/rerank`` and the Cohere / Jina / infinity-style ``/v1/rerank``
(beside the embedder or alone). Clients: :class:`bgem3.remote.RemoteEncoder`,
:class:`bgem3.remote_rerank.RemoteReranker`, or any TEI / OpenAI / Cohere-style client. Needs the
``serve`` extra: ``pip install 'bgem3[serve]'``.

Example (a shell)::

    bgem3 serve --model BAAI/bge-m3 --host 0.0.0.0 --port 8080
    curl -s localhost:8080/embed -H 'content-type: application/json' -d '{"inputs": ["hello"]}'

Example (Python, in-process)::

    >>> from bgem3.serve import ServeConfig, create_app   # doctest: +SKIP
    >>> app = create_app(Encoder("BAAI/bge-m3"), ServeConfig(api_key="s3cret"))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app", "Batcher"]


def __getattr__(name: str) -> Any:
    if name in ("ServeConfig", "create_app"):
        from . import app
        return getattr(app, name)
    if name == "Batcher":
        from .scheduler import Batcher
        return Batcher
    raise AttributeError(f"module 'bgem3.serve' has no attribute {name!r}")
