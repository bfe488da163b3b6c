"""LangChain cross-encoder rerankers over :class:`bgem3.Reranker` (bge-reranker-v2-m3 and family).

* :class:`BGERerankerCrossEncoder` is a ``BaseCrossEncoder``: ``langchain_classic``'s
  ``CrossEncoderReranker(model=..., top_n=...)`` takes it unchanged (the drop-in for
  ``HuggingFaceCrossEncoder``, same ``model_name`` / ``model_kwargs`` fields).
* :class:`BGECrossEncoderReranker` is a ``BaseDocumentCompressor`` that also writes each kept
  document's score into its metadata (``relevance_score``, as LangChain's Cohere / FlashRank
  compressors do), with ``acompress_documents`` running the model in a worker thread.

Both pickle (the model is loaded again from its folder, or shared in-process) and accept a
``bgem3.Reranker``, a ``RemoteReranker`` or a ``bgem3 serve`` URL in place of a model name.

Example::

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_bgem3 import BGERerankerCrossEncoder, BGECrossEncoderReranker

    compressor = CrossEncoderReranker(model=BGERerankerCrossEncoder(model_name="BAAI/bge-reranker-v2-m3"), top_n=3)
    compressor = BGECrossEncoderReranker(model_name="BAAI/bge-reranker-v2-m3", top_n=3)   # or: scores in metadata
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence

try:
    from langchain_core.callbacks import Callbacks
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from bgem3._adapters.arguments import missing_framework

    raise missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain") from _exc
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bgem3._adapters.rerankers import load_reranker, reranker_name
from bgem3._adapters.arguments import unknown_options_error
from bgem3.crossencoder import check_query
from bgem3.rerank import check_top_n

from ._scores import scored_document

__all__ = ["BGECrossEncoderReranker", "BGERerankerCrossEncoder"]

DEFAULT_RERANKER = "BAAI/bge-reranker-v2-m3"


def _resolve(cls: type, owner: str, data: Any, hints: dict) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "model" in data:  # CrossEncoderReranker / SentenceTransformerRerank spelling
        model = data.pop("model")
        if data.get("model_name") not in (None, model) and not data.get("reranker"):
            raise ValueError(f"{owner}: model= and model_name= disagree; set one")
        if isinstance(model, str):
            data["model_name"] = model
        else:
            data["reranker"] = model
    unknown = [k for k in data if k not in cls.model_fields]
    if unknown:
        raise unknown_options_error(owner, unknown, cls.model_fields, hints, exc=ValueError)
    given = data.get("reranker")
    rr = load_reranker(owner, given if given is not None else data.get("model_name", DEFAULT_RERANKER),
                       data.get("model_kwargs"))
    data["reranker"] = rr
    data["model_name"] = reranker_name(rr)
    if given is not None:
        data["model_kwargs"] = {}
    return data


class BGERerankerCrossEncoder(BaseModel, BaseCrossEncoder):
    """A LangChain ``BaseCrossEncoder`` over a BGE reranker: :meth:`score` is
    :meth:`bgem3.Reranker.compute_score` (FlagReranker's numbers).

    Args:
        model_name: hub id / folder / ``bgem3 serve`` URL (default ``BAAI/bge-reranker-v2-m3``).
        model_kwargs: :class:`bgem3.Reranker` options (``device``, ``dtype``, ``max_length``...).
        reranker: an already loaded :class:`bgem3.Reranker` / ``RemoteReranker`` (or ``model=``).
        normalize: sigmoid scores in ``[0, 1]`` (``HuggingFaceCrossEncoder`` gives sentence-transformers'
            sigmoid for one-label models: set ``True`` to get the same scale); default raw logits.

    Example::

        >>> ce = BGERerankerCrossEncoder(model_name="BAAI/bge-reranker-v2-m3")     # doctest: +SKIP
        >>> ce.score([("what is a panda?", "The giant panda is a bear.")])          # doctest: +SKIP
        [5.26]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model_name: str = DEFAULT_RERANKER
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    reranker: Any = Field(default=None, exclude=True, repr=False)
    normalize: bool = False
    batch_size: Optional[int] = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _load(cls, data: Any) -> Any:
        return _resolve(cls, "BGERerankerCrossEncoder", data, {"top_n": "top_n belongs to CrossEncoderReranker(...)"})

    def score(self, text_pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, text)`` pairs, in order."""
        pairs = list(text_pairs)
        if not pairs:
            return []
        return list(self.reranker.compute_score(pairs, normalize=self.normalize, batch_size=self.batch_size))

    async def ascore(self, text_pairs: Sequence[tuple[str, str]]) -> list[float]:
        """:meth:`score` in a worker thread."""
        return await asyncio.to_thread(self.score, text_pairs)


class BGECrossEncoderReranker(BaseDocumentCompressor):
    """Rerank documents with a BGE cross-encoder; keep ``top_n``, best first, the score in metadata.

    Args:
        model_name / model_kwargs / reranker (or ``model=``): as :class:`BGERerankerCrossEncoder`.
        top_n: documents to keep (default 3, as ``CrossEncoderReranker``); ``None`` keeps all, reordered.
        normalize: sigmoid scores in ``[0, 1]``.
        score_key: the metadata key of the score (default ``relevance_score``).

    Example::

        >>> rr = BGECrossEncoderReranker(model_name="BAAI/bge-reranker-v2-m3", top_n=2)   # doctest: +SKIP
        >>> [d.metadata["relevance_score"] for d in rr.compress_documents(docs, "query")]  # doctest: +SKIP
        [4.1, 1.3]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model_name: str = DEFAULT_RERANKER
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    reranker: Any = Field(default=None, exclude=True, repr=False)
    top_n: Optional[int] = 3
    normalize: bool = False
    batch_size: Optional[int] = Field(default=None, gt=0)
    score_key: str = "relevance_score"

    @model_validator(mode="before")
    @classmethod
    def _load(cls, data: Any) -> Any:
        return _resolve(cls, "BGECrossEncoderReranker", data, {"top_k": "use top_n= for how many to keep",
                                                                "k": "use top_n= for how many to keep"})

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The ``top_n`` best documents for ``query``, best first; copies with ``metadata[score_key]``."""
        docs = list(documents)
        check_query(query)
        if not docs:
            return []
        ranked = self.reranker.rerank(query, [d.page_content for d in docs], top_n=self.top_n,
                                      normalize=self.normalize, batch_size=self.batch_size)
        return [scored_document(docs[r.index], {self.score_key: r.score}, warn_on_collision=False,
                                owner="BGECrossEncoderReranker") for r in ranked]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """:meth:`compress_documents`, awaitable: the model runs in a worker thread (a ``RemoteReranker``
        awaits its HTTP call)."""
        docs = list(documents)
        check_query(query)
        if not docs:
            return []
        arerank = getattr(self.reranker, "arerank", None)
        texts = [d.page_content for d in docs]
        if callable(arerank):
            ranked = await arerank(query, texts, self.top_n, normalize=self.normalize, batch_size=self.batch_size)
        else:
            ranked = await asyncio.to_thread(self.reranker.rerank, query, texts, top_n=self.top_n,
                                             normalize=self.normalize, batch_size=self.batch_size)
        return [scored_document(docs[r.index], {self.score_key: r.score}, warn_on_collision=False,
                                owner="BGECrossEncoderReranker") for r in ranked]
