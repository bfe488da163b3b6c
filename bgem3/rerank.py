"""Re-score candidate texts with all three BGE-M3 channels (framework-free).

A reranker takes the candidates some other retriever found (BM25, a vector store, a web
search...) and scores each one against the query with dense, lexical and ColBERT scores,
fused exactly as :class:`bgem3.HybridIndex` fuses them:

* the query is encoded with :meth:`Encoder.encode_queries`, the candidates with
  :meth:`Encoder.encode_documents` (so E5 prefixes apply);
* ``dense_score`` = dot product of the L2-normalised dense vectors;
* ``sparse_score`` = lexical matching score (:func:`bgem3.scoring.lexical_scores`);
* ``colbert_score`` = ColBERT MaxSim (:func:`bgem3.scoring.colbert_scores`);
* ``score`` (``mode="weighted"``) = ``(w_d*dense + w_l*sparse + w_c*colbert) / sum(w)``, which is
  FlagEmbedding's ``compute_score(...)["colbert+sparse+dense"]`` with
  ``weights_for_different_modes=w``; or (``mode="rrf"``) the weighted reciprocal-rank fusion of
  the three per-channel rankings of the candidates (:func:`bgem3.scoring.reciprocal_rank_fusion`;
  ranks from 1, candidates sharing no token with the query are not in the lexical ranking).

Ties keep the input order. The LangChain and LlamaIndex rerankers are thin wrappers over
:class:`HybridReranker`.

Models without BGE-M3's sparse/ColBERT heads (E5, MiniLM...) can rerank dense-only: pass
``weights=(1, 0, 0)``; their ``sparse``/``colbert`` scores are then ``None``.

Example::

    >>> from bgem3.rerank import HybridReranker                       # doctest: +SKIP
    >>> rr = HybridReranker("BAAI/bge-m3", top_n=2)                    # doctest: +SKIP
    >>> [(r.index, round(r.score, 3)) for r in rr.rerank(              # doctest: +SKIP
    ...     "what is BGE M3?", ["BGE M3 is an embedding model", "pandas eat bamboo", "M3 paper"])]
    [(0, 0.612), (2, 0.401)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._checks import FUSION_MODES as _STORE_FUSION_MODES
from ._checks import check_query, check_top_n, positive_int
from .encoder import Encoder
from .scoring import (
    DEFAULT_WEIGHTS,
    check_weights,
    colbert_scores,
    fuse_channels,
    fuse_rrf,
    lexical_scores,
)

__all__ = ["HybridReranker", "RerankResult", "RerankScores", "rerank", "resolve_encoder", "score_candidates"]

#: how a reranker fuses the channels: the stores' modes (:data:`bgem3._checks.FUSION_MODES`) but ``"auto"``,
#: which is a store's choice by its channels
FUSION_MODES = tuple(m for m in _STORE_FUSION_MODES if m != "auto")


@dataclass(frozen=True)
class RerankScores:
    """Scores of every candidate, in the order the candidates were given.

    Attributes:
        score: ``float64 [N]`` fused scores.
        dense: ``float64 [N]`` dense scores.
        sparse: ``float64 [N]`` lexical scores, or ``None`` for a model without heads.
        colbert: ``float64 [N]`` ColBERT scores, or ``None`` for a model without heads.
    """

    score: np.ndarray
    dense: np.ndarray
    sparse: Optional[np.ndarray]
    colbert: Optional[np.ndarray]

    def __len__(self) -> int:
        return len(self.score)

    def order(self, top_n: Optional[int] = None) -> np.ndarray:
        """Candidate indices best first (ties keep the input order), cut to ``top_n``."""
        idx = np.argsort(-self.score, kind="stable")
        return idx if top_n is None else idx[:top_n]

    def result(self, i: int) -> "RerankResult":
        """The scores of candidate ``i`` as a :class:`RerankResult`."""
        return RerankResult(
            index=int(i),
            score=float(self.score[i]),
            dense_score=float(self.dense[i]),
            sparse_score=None if self.sparse is None else float(self.sparse[i]),
            colbert_score=None if self.colbert is None else float(self.colbert[i]),
        )


@dataclass(frozen=True)
class RerankResult:
    """One reranked candidate: its position in the input and its scores."""

    index: int
    score: float
    dense_score: float
    sparse_score: Optional[float]
    colbert_score: Optional[float]


def resolve_encoder(encoder: Union[Encoder, str, os.PathLike], **encoder_kwargs: Any) -> Encoder:
    """Return ``encoder`` if it is an :class:`Encoder`, else load one from a hub id / folder / server URL
    (:func:`bgem3._loading.load_encoder`; a cross-encoder reranker's name is refused with the class to use)."""
    from ._loading import load_encoder

    return load_encoder(encoder, encoder_kwargs, owner="HybridReranker", reranking=True, require_encoder=True)


def _check_mode(mode: str) -> str:
    if mode not in FUSION_MODES:
        raise ValueError(f"mode must be one of {FUSION_MODES}; got {mode!r}")
    return mode


def score_candidates(
    encoder: Encoder,
    query: str,
    texts: Sequence[str],
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    *,
    mode: str = "weighted",
    rrf_k: int = 60,
    batch_size: Optional[int] = None,
    max_length: Optional[int] = None,
    show_progress: Optional[bool] = None,
) -> RerankScores:
    """Dense, lexical, ColBERT and fused scores of ``query`` against each of ``texts``.

    Args:
        encoder: a loaded :class:`~bgem3.Encoder`.
        query: the query text (encoded with the profile's query template).
        texts: the candidate texts (encoded with the passage template).
        weights: ``(dense, lexical, colbert)`` weights; default ``(0.4, 0.2, 0.4)`` (BGE-M3 paper).
        mode: ``"weighted"`` (weighted sum divided by the weight sum) or ``"rrf"``.
        rrf_k: the RRF constant (``mode="rrf"`` only).
        batch_size / max_length / show_progress: passed to the encoder.

    Example::

        >>> s = score_candidates(enc, "query", ["a", "b"])     # doctest: +SKIP
        >>> s.order()                                          # doctest: +SKIP
        array([1, 0])
    """
    w = check_weights(weights)
    _check_mode(mode)
    query = check_query(query)
    if isinstance(texts, str):
        raise TypeError("texts must be a list of candidate strings, not one string")
    texts = list(texts)
    heads = encoder.has_heads
    if not heads and (w[1] > 0 or w[2] > 0):
        raise ValueError(
            f"weights {tuple(weights)!r} give the lexical/ColBERT channels a non-zero weight, but the "
            f"encoder {encoder.model_name!r} has no BGE-M3 sparse/ColBERT heads. Use weights=(1, 0, 0) "
            "for dense-only reranking, or a BGE-M3 checkpoint."
        )
    n = len(texts)
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return RerankScores(empty, empty, empty if heads else None, empty if heads else None)

    enc_kw: dict = dict(dense=True, sparse=heads, colbert=heads, batch_size=batch_size, max_length=max_length)
    q = encoder.encode_queries([query], **enc_kw)
    d = encoder.encode_documents(texts, show_progress=show_progress, **enc_kw)

    dense = (d.dense.astype(np.float64) @ q.dense[0].astype(np.float64))
    sparse = colbert = None
    if heads:
        sparse = lexical_scores(q.sparse, d.sparse)[0]
        colbert = colbert_scores(q.colbert[0], d.colbert).astype(np.float64)

    if mode == "rrf" and rrf_k <= 0:
        raise ValueError(f"RRF constant k must be positive; got {rrf_k}")
    if heads:
        # as HybridIndex (the same function): in "rrf" mode ranks from 1, ties keep input order, and a
        # candidate sharing no token with the query (lexical score <= 0) is left out of the lexical ranking
        fused = fuse_channels(dense, sparse, colbert, w, mode=mode, rrf_k=rrf_k)
    elif mode == "weighted":  # w == (w_d, 0, 0): the normalised sum is the dense score itself
        fused = dense.copy()
    else:  # w == (w_d, 0, 0): only the dense ranking counts
        zeros = np.zeros(n, dtype=np.float64)
        fused = fuse_rrf(dense, zeros, zeros, w, rrf_k)
    return RerankScores(score=fused, dense=dense, sparse=sparse, colbert=colbert)


def rerank(
    encoder: Encoder,
    query: str,
    texts: Sequence[str],
    top_n: Optional[int] = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    **kwargs: Any,
) -> list[RerankResult]:
    """Rerank ``texts`` for ``query``: results best first, at most ``top_n`` (``None``: all).

    ``kwargs`` go to :func:`score_candidates` (``mode``, ``rrf_k``, ``batch_size``...).

    Example::

        >>> [r.index for r in rerank(enc, "panda", ["cars", "pandas eat bamboo"])]   # doctest: +SKIP
        [1, 0]
    """
    top_n = check_top_n(top_n)
    scores = score_candidates(encoder, query, texts, weights, **kwargs)
    return [scores.result(i) for i in scores.order(top_n)]


class HybridReranker:
    """A reusable reranker: one encoder, fixed weights / fusion mode / ``top_n``.

    Args:
        encoder: a :class:`~bgem3.Encoder` or a model name / folder to load one from.
        weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)``.
        top_n: keep this many results (``None``: all, reordered).
        mode: ``"weighted"`` or ``"rrf"``; ``rrf_k``: the RRF constant.
        batch_size / max_length: encoder options per call.
        **encoder_kwargs: passed to :class:`~bgem3.Encoder` when ``encoder`` is a name.

    Example::

        >>> rr = HybridReranker("BAAI/bge-m3", top_n=3)          # doctest: +SKIP
        >>> best = rr.rerank("query", candidate_texts)           # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: Union[Encoder, str, os.PathLike],
        *,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        top_n: Optional[int] = None,
        mode: str = "weighted",
        rrf_k: int = 60,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        **encoder_kwargs: Any,
    ) -> None:
        self.encoder = resolve_encoder(encoder, **encoder_kwargs)
        self.weights = check_weights(weights)
        self.top_n = check_top_n(top_n)
        self.mode = _check_mode(mode)
        self.rrf_k = positive_int(rrf_k, "rrf_k")
        self.batch_size = batch_size
        self.max_length = max_length

    def __repr__(self) -> str:
        return (f"HybridReranker({self.encoder.model_name!r}, weights={self.weights}, top_n={self.top_n}, "
                f"mode={self.mode!r})")

    def score(self, query: str, texts: Sequence[str], *, weights: Optional[Sequence[float]] = None,
              show_progress: Optional[bool] = None) -> RerankScores:
        """Scores of every candidate in input order (see :func:`score_candidates`)."""
        return score_candidates(
            self.encoder, query, texts, self.weights if weights is None else weights, mode=self.mode,
            rrf_k=self.rrf_k, batch_size=self.batch_size, max_length=self.max_length, show_progress=show_progress,
        )

    def rerank(self, query: str, texts: Sequence[str], *, top_n: Any = ..., weights: Optional[Sequence[float]] = None,
               show_progress: Optional[bool] = None) -> list[RerankResult]:
        """Results best first, at most ``top_n`` (default: the reranker's ``top_n``)."""
        top_n = self.top_n if top_n is ... else check_top_n(top_n)
        scores = self.score(query, texts, weights=weights, show_progress=show_progress)
        return [scores.result(i) for i in scores.order(top_n)]
