"""Scores with BGE-M3's reference semantics, and score fusion.

* lexical score: sum over the token ids both sides share of ``w_q * w_d``;
* ColBERT score: mean over query vectors of the max dot product over document vectors;
* dense score: dot product of L2-normalised vectors;
* fusion: weighted sum ``w_dense*s_dense + w_lex*s_lex + w_colbert*s_colbert`` (optionally
  divided by the weight sum, as FlagEmbedding's ``compute_score`` does), or reciprocal-rank
  fusion.

Single-pair forms take plain dicts/arrays; batched forms are vectorised (scipy CSR for
lexical weights, one contiguous array + offsets for ColBERT vectors).

Example::

    >>> import numpy as np
    >>> from bgem3.scoring import lexical_score, colbert_score
    >>> lexical_score({5: 0.5, 7: 0.25}, {5: 0.4, 9: 1.0})
    0.2
    >>> q = np.eye(2, dtype=np.float32); d = np.array([[1, 0]], dtype=np.float32)
    >>> float(colbert_score(q, d))
    0.5
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ._checks import positive_int

SparseWeights = Mapping[int, float]

#: BGE-M3 paper / model card weights for (dense, lexical, ColBERT).
DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)


def lexical_score(query: SparseWeights, doc: SparseWeights) -> float:
    """Lexical matching score of one pair: ``sum(w_q[t] * w_d[t] for t in shared ids)``."""
    if len(doc) < len(query):
        query, doc = doc, query
    return float(sum(w * doc[t] for t, w in query.items() if t in doc))


def sparse_to_csr(weights: Sequence[SparseWeights], vocab_size: Optional[int] = None) -> sp.csr_matrix:
    """Stack lexical-weight dicts into a float32 CSR matrix ``[N, vocab_size]``."""
    n = len(weights)
    indptr = np.zeros(n + 1, dtype=np.int64)
    lengths = np.fromiter((len(w) for w in weights), dtype=np.int64, count=n)
    np.cumsum(lengths, out=indptr[1:])
    total = int(indptr[-1])
    indices = np.empty(total, dtype=np.int64)
    data = np.empty(total, dtype=np.float32)
    pos = 0
    for w in weights:
        k = len(w)
        if k:
            indices[pos:pos + k] = np.fromiter(w.keys(), dtype=np.int64, count=k)
            data[pos:pos + k] = np.fromiter(w.values(), dtype=np.float32, count=k)
            pos += k
    max_id = int(indices.max()) + 1 if total else 0
    if vocab_size is None:
        vocab_size = max_id
    elif max_id > vocab_size:
        raise ValueError(f"token id {max_id - 1} is outside vocab_size={vocab_size}")
    mat = sp.csr_matrix((data, indices, indptr), shape=(n, vocab_size))
    mat.sum_duplicates()
    return mat


def lexical_scores(queries: Sequence[SparseWeights], docs: Sequence[SparseWeights]) -> np.ndarray:
    """All-pairs lexical scores ``[len(queries), len(docs)]`` via one sparse matrix product."""
    vocab = 0
    for group in (queries, docs):
        for w in group:
            if w:
                vocab = max(vocab, max(w) + 1)
    q = sparse_to_csr(queries, vocab)
    d = sparse_to_csr(docs, vocab)
    out = (q.astype(np.float64) @ d.astype(np.float64).T).toarray()
    return out


def colbert_score(query: np.ndarray, doc: np.ndarray) -> float:
    """ColBERT (MaxSim) score of one pair: mean over query vectors of the max dot product."""
    query = np.asarray(query, dtype=np.float32)
    doc = np.asarray(doc, dtype=np.float32)
    if query.ndim != 2 or doc.ndim != 2:
        raise ValueError(f"ColBERT vectors must be 2-D [tokens, dim]; got {query.shape} and {doc.shape}")
    if len(query) == 0 or len(doc) == 0:
        return 0.0
    return float((query @ doc.T).max(axis=1).mean())


def pack_multivectors(vectors: Sequence[np.ndarray], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-document ``[T_i, H]`` arrays into one array plus ``offsets`` ``[N+1]``."""
    if len(vectors) == 0:
        return np.zeros((0, 0), dtype=dtype), np.zeros(1, dtype=np.int64)
    lengths = np.fromiter((len(v) for v in vectors), dtype=np.int64, count=len(vectors))
    offsets = np.zeros(len(vectors) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(v, dtype=dtype) for v in vectors], axis=0)
    return flat, offsets


def colbert_scores_packed(query: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """ColBERT scores of one query against documents packed by :func:`pack_multivectors`.

    ``flat`` is ``[sum T_i, H]`` and document ``i`` is ``flat[offsets[i]:offsets[i+1]]``.
    A document with no vectors scores 0.
    """
    query = np.asarray(query, dtype=np.float32)
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or len(query) == 0:
        return out
    sims = query @ np.asarray(flat, dtype=np.float32).T  # [Tq, total]
    starts = offsets[:-1]
    nonempty = offsets[1:] > starts
    if nonempty.any():
        maxes = np.maximum.reduceat(sims, starts[nonempty], axis=1)  # [Tq, n_nonempty]
        out[nonempty] = maxes.mean(axis=0)
    return out


def colbert_scores(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """ColBERT scores of one query against many documents ``[len(docs)]``."""
    flat, offsets = pack_multivectors(docs)
    return colbert_scores_packed(query, flat, offsets)


def fuse_weighted(
    dense: np.ndarray,
    lexical: np.ndarray,
    colbert: np.ndarray,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    normalize: bool = False,
) -> np.ndarray:
    """``w_d*dense + w_l*lexical + w_c*colbert``; divided by ``sum(weights)`` if ``normalize``.

    ``normalize=True`` reproduces FlagEmbedding's ``compute_score()['colbert+sparse+dense']``.
    The ranking is the same either way.
    """
    w = check_weights(weights)
    s = w[0] * np.asarray(dense, np.float64) + w[1] * np.asarray(lexical, np.float64) + w[2] * np.asarray(colbert, np.float64)
    if normalize:
        s = s / sum(w)
    return s


def fuse_rrf(
    dense: np.ndarray,
    lexical: np.ndarray,
    colbert: np.ndarray,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    k: float = 60,
) -> np.ndarray:
    """Weighted reciprocal-rank fusion of the three channel rankings of the same candidates.

    Each channel ranks the candidates by its score (ranks from 1, ties keep input order); a
    candidate's fused score is ``sum_c w_c / (k + rank_c)``, the same numbers as
    :func:`reciprocal_rank_fusion`. A channel with weight 0 is skipped, and a candidate with
    lexical score <= 0 (it shares no token with the query) is not in the lexical ranking.

    >>> fused = fuse_rrf(np.array([0.9, 0.1]), np.array([0.0, 0.3]), np.array([0.2, 0.8]), k=1)
    >>> [round(float(x), 3) for x in fused]
    [0.333, 0.433]
    """
    out = np.zeros(len(dense), dtype=np.float64)
    for weight, scores, positive_only in ((weights[0], dense, False), (weights[1], lexical, True),
                                          (weights[2], colbert, False)):
        if weight == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        if positive_only:
            order = order[scores[order] > 0]
        out[order] += weight / (k + np.arange(1, len(order) + 1, dtype=np.float64))
    return out


def fuse_channels(
    dense: np.ndarray,
    lexical: np.ndarray,
    colbert: np.ndarray,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    *,
    mode: str = "weighted",
    rrf_k: float = 60,
) -> np.ndarray:
    """The hybrid stores' fused score: ``mode="weighted"`` is :func:`fuse_weighted` with
    ``normalize=True`` (FlagEmbedding's ``compute_score``), ``mode="rrf"`` is :func:`fuse_rrf`."""
    if mode == "weighted":
        return fuse_weighted(dense, lexical, colbert, weights, normalize=True)
    return fuse_rrf(dense, lexical, colbert, weights, rrf_k)


def rank(d: np.ndarray, s: np.ndarray, c: np.ndarray, w: Sequence[float], k: int, mode: str,
         rrf_k: float) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the candidates' channel scores (:func:`fuse_channels`); returns ``(fused, top)`` where
    ``top`` are the positions of the ``k`` best, ties in input order (what both stores rank by)."""
    if mode == "weighted" and max(w) > 1.0:  # (1e308,)*3 would overflow; the weighted mean is scale-free
        top = max(w)
        w = tuple(x / top for x in w)
    fused = fuse_channels(d, s, c, w, mode=mode, rrf_k=rrf_k)
    return fused, np.argsort(-fused, kind="stable")[:k]


def check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(dense, lexical, colbert)`` weights: three finite, non-negative numbers, not all zero."""
    if isinstance(weights, (str, bytes)):
        raise ValueError(f"weights must be three numbers (dense, lexical, colbert), not a string; got {weights!r}")
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be three numbers (dense, lexical, colbert); got {weights!r}") from None
    if len(w) != 3 or not all(np.isfinite(w)) or min(w) < 0 or sum(w) == 0:
        raise ValueError(
            f"weights must be three finite, non-negative numbers (dense, lexical, colbert), "
            f"not all zero; got {weights!r}"
        )
    return w  # type: ignore[return-value]


def reciprocal_rank_fusion(rankings: Sequence[Sequence], k: int = 60, weights: Optional[Sequence[float]] = None) -> dict:
    """Reciprocal-rank fusion: ``score(x) = sum_r w_r / (k + rank_r(x))`` with ranks from 1.

    ``rankings`` are lists of ids, best first. Returns ``{id: score}``.
    """
    if k <= 0:
        raise ValueError(f"RRF constant k must be positive; got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    scores: dict = {}
    for w, ranking in zip(weights, rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return scores


# --------------------------------------------------------------------------- pairwise scoring

#: FlagEmbedding's ``BGEM3FlagModel.compute_score`` weights when none are given (dense, sparse, ColBERT).
COMPUTE_SCORE_WEIGHTS = (1.0, 1.0, 1.0)

#: The keys :func:`compute_score` returns, as FlagEmbedding names them.
SCORE_MODES = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


def _check_pairs(sentence_pairs) -> tuple[list[tuple[str, str]], bool]:
    if isinstance(sentence_pairs, tuple) and len(sentence_pairs) == 2 and all(isinstance(x, str) for x in sentence_pairs):
        return [sentence_pairs], True
    if isinstance(sentence_pairs, (str, bytes, dict)) or not hasattr(sentence_pairs, "__iter__"):
        raise TypeError("sentence_pairs must be a list of (query, passage) pairs of strings, or one such pair; "
                        f"got {type(sentence_pairs).__name__}")
    pairs = []
    for i, pair in enumerate(sentence_pairs):
        if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2 \
                or not all(isinstance(x, str) for x in pair):
            raise TypeError(f"sentence_pairs[{i}] must be a (query, passage) pair of strings; got {pair!r:.80}")
        pairs.append((pair[0], pair[1]))
    return pairs, False


def compute_score(
    encoder,
    sentence_pairs,
    *,
    weights: Optional[Sequence[float]] = None,
    batch_size: int = 256,
    max_query_length: int = 512,
    max_passage_length: int = 8192,
    show_progress: Optional[bool] = None,
) -> dict:
    """Scores of many ``(query, passage)`` pairs at once, as ``BGEM3FlagModel.compute_score`` computes them.

    Every distinct query and passage is encoded once (texts as given, no templates, like the
    reference); the scores of each pair are then ``dense`` (dot product), ``sparse`` (lexical
    match), ``colbert`` (MaxSim), ``sparse+dense`` = ``(w_s*sparse + w_d*dense) / (w_s + w_d)``
    and ``colbert+sparse+dense`` = ``(w_c*colbert + w_s*sparse + w_d*dense) / (w_d + w_s + w_c)``.

    Args:
        encoder: a :class:`bgem3.Encoder` (BGE-M3 with its heads; an encoder without heads gets
            the ``dense`` key only).
        sentence_pairs: a list of ``(query, passage)`` string pairs, or one pair (then every value
            is a float instead of a list).
        weights: ``(dense, sparse, colbert)``; default FlagEmbedding's ``(1, 1, 1)``
            (:data:`COMPUTE_SCORE_WEIGHTS`); the model card's are ``(0.4, 0.2, 0.4)``.
        batch_size: pairs per reference batch. FlagEmbedding pads the passages of a batch with
            zero ColBERT vectors, so a query token whose best real match is negative scores 0
            against a passage shorter than the longest of its batch; we reproduce that exactly.
            ``batch_size=1`` gives plain MaxSim (:func:`colbert_score`).
        max_query_length / max_passage_length: truncation (capped at the model's limit).
        show_progress: the encoder's progress bar.

    Returns:
        ``{"colbert": [...], "sparse": [...], "dense": [...], "sparse+dense": [...],
        "colbert+sparse+dense": [...]}``.

    Example::

        >>> import tempfile
        >>> from bgem3 import Encoder
        >>> from bgem3.testing import make_m3_checkpoint
        >>> from bgem3.scoring import compute_score
        >>> enc = Encoder(make_m3_checkpoint(tempfile.mkdtemp()), device="cpu")
        >>> s = compute_score(enc, [("what is BGE M3?", "BGE M3 is an embedding model."),
        ...                         ("what is BM25?", "BM25 is a bag-of-words model.")])
        >>> sorted(s), len(s["dense"])
        (['colbert', 'colbert+sparse+dense', 'dense', 'sparse', 'sparse+dense'], 2)
    """
    pairs, single = _check_pairs(sentence_pairs)
    batch_size = positive_int(batch_size, "batch_size")
    w = check_weights(COMPUTE_SCORE_WEIGHTS if weights is None else weights)
    heads = bool(getattr(encoder, "has_heads", False))
    if heads and w[0] + w[1] == 0:
        raise ValueError(f"weights {w}: 'sparse+dense' divides by the dense + sparse weight, which is 0; "
                         "give the dense or the sparse channel a positive weight")
    modes = SCORE_MODES if heads else ("dense",)
    if not pairs:
        return {k: [] for k in modes}
    cap = int(getattr(encoder, "model_max_length", max_passage_length))
    queries = list(dict.fromkeys(q for q, _ in pairs))
    passages = list(dict.fromkeys(p for _, p in pairs))
    qi = {t: i for i, t in enumerate(queries)}
    pi = {t: i for i, t in enumerate(passages)}
    q = encoder.encode(queries, sparse=heads, colbert=heads, max_length=min(max_query_length, cap),
                       show_progress=show_progress)
    d = encoder.encode(passages, sparse=heads, colbert=heads, max_length=min(max_passage_length, cap),
                       show_progress=show_progress)
    qidx = np.fromiter((qi[a] for a, _ in pairs), dtype=np.int64, count=len(pairs))
    pidx = np.fromiter((pi[b] for _, b in pairs), dtype=np.int64, count=len(pairs))
    dense = np.einsum("ij,ij->i", q.dense[qidx].astype(np.float64), d.dense[pidx].astype(np.float64))
    out: dict = {"dense": dense}
    if heads:
        sparse = np.array([lexical_score(q.sparse[a], d.sparse[b]) for a, b in zip(qidx, pidx)], dtype=np.float64)
        plen = d.token_counts[pidx]
        colbert = np.empty(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), batch_size):
            widest = plen[start:start + batch_size].max()
            for n in range(start, min(start + batch_size, len(pairs))):
                sims = q.colbert[qidx[n]] @ d.colbert[pidx[n]].T  # [Tq-1, Tp-1]
                best = sims.max(axis=1) if sims.shape[1] else np.zeros(sims.shape[0], dtype=sims.dtype)
                if plen[n] < widest:  # the reference's zero padding vectors
                    best = np.maximum(best, 0.0)
                colbert[n] = float(best.sum()) / max(len(best), 1)
        out.update(sparse=sparse, colbert=colbert,
                   **{"sparse+dense": (w[1] * sparse + w[0] * dense) / (w[1] + w[0]),
                      "colbert+sparse+dense": (w[2] * colbert + w[1] * sparse + w[0] * dense) / sum(w)})
    result = {k: [float(x) for x in out[k]] for k in modes}
    if single:
        return {k: v[0] for k, v in result.items()}
    return result
