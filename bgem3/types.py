"""Types shared by every hybrid store (the embedded index and Qdrant) and the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Protocol, Sequence, runtime_checkable

FusionMode = Literal["auto", "weighted", "rrf"]


@dataclass(frozen=True)
class RankedText:
    """One reranked text: its position in the input and its score (:class:`bgem3.Reranker` and
    :class:`bgem3.remote_rerank.RemoteReranker` answer these; also ``bgem3.crossencoder.RankedText``)."""

    index: int
    score: float


@dataclass
class Hit:
    """One search result.

    Attributes:
        id: the document id (a string).
        text: the document text.
        metadata: the document's metadata dict.
        score: the fused score (weighted sum of the channel scores, or the RRF score).
        dense_score: dot product of the normalised dense vectors.
        sparse_score: lexical matching score (sum of shared-token weight products, or the
            store's lexical channel, e.g. BM25).
        colbert_score: ColBERT MaxSim score (mean over query tokens).

    A channel the store does not hold has score ``None`` (not 0): ``hit.channels`` lists the
    channels that scored this hit.

    >>> Hit("a", "A", dense_score=0.5, sparse_score=None, colbert_score=None).channels
    ('dense',)
    """

    id: str
    text: str
    metadata: dict = field(default_factory=dict)
    score: float = 0.0
    dense_score: Optional[float] = 0.0
    sparse_score: Optional[float] = 0.0
    colbert_score: Optional[float] = 0.0

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels with a score: a subset of ``("dense", "lexical", "colbert")``."""
        return tuple(name for name, v in (("dense", self.dense_score), ("lexical", self.sparse_score),
                                          ("colbert", self.colbert_score)) if v is not None)


@runtime_checkable
class HybridStore(Protocol):
    """What ``BGEM3HybridRetriever`` (both frameworks) needs from a store.

    Implemented by :class:`bgem3.HybridIndex` (embedded) and
    :class:`bgem3.stores.qdrant.QdrantHybridStore` (scale-out).
    """

    def add(self, texts: Sequence[str], ids: Optional[Sequence[str]] = None,
            metadatas: Optional[Sequence[Mapping[str, Any]]] = None) -> list[str]: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def search(self, query: str, k: int = 4, weights: Sequence[float] = (0.4, 0.2, 0.4), *,
               filter: Optional[Mapping[str, Any]] = None, candidates: int = 100,
               mode: FusionMode = "auto") -> list[Hit]: ...

    def __len__(self) -> int: ...
