"""Why did a document match a query? Token-level breakdown of BGE-M3's three scores.

* lexical: the tokens both sides share, each with its query weight, document weight and
  contribution ``w_q * w_d`` (the lexical score is their sum);
* ColBERT: for every query token, the document token with the highest similarity (the
  ColBERT score is the mean of those maxima), plus the full query-token x document-token
  similarity matrix (what a heatmap draws);
* dense: the one cosine similarity (no token breakdown exists for it).

Everything is recomputed with the :class:`~bgem3.Encoder` from the two texts, so it works for
any hit of any store. Token strings come from the model's tokenizer.

Example::

    from bgem3 import Encoder
    from bgem3.explain import explain

    enc = Encoder("BAAI/bge-m3")
    ex = explain(enc, "capital of France", "Paris is the capital of France.")
    for m in ex.top_lexical(3):      # shared tokens, biggest contribution first
        print(m.token, m.query_weight, m.doc_weight, m.contribution)
    for m in ex.colbert:             # every query token -> its best document token
        print(m.query_token, "->", m.doc_token, m.similarity)
    ex.similarity.shape              # (query tokens, document tokens), for a heatmap
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["LexicalMatch", "ColbertMatch", "Explanation", "explain", "explain_many", "display_token"]


@dataclass
class LexicalMatch:
    """A token the query and the document share."""

    token: str
    token_id: int
    query_weight: float
    doc_weight: float

    @property
    def contribution(self) -> float:
        """``query_weight * doc_weight``: this token's part of the lexical score."""
        return self.query_weight * self.doc_weight


@dataclass
class ColbertMatch:
    """The document token a query token matched best (ColBERT MaxSim)."""

    query_token: str
    query_position: int
    doc_token: str
    doc_position: int
    similarity: float


@dataclass
class Explanation:
    """Token-level breakdown of one (query, document) pair.

    Attributes:
        query_tokens / doc_tokens: the tokens behind the ColBERT vectors (CLS dropped, ``</s>``
            kept), in order; they label the rows / columns of ``similarity``.
        dense_score: cosine similarity of the dense vectors.
        lexical: shared tokens, largest contribution first (empty without M3 heads).
        sparse_score: the lexical score, ``sum(m.contribution for m in lexical)``; ``None``
            without M3 heads.
        colbert: one entry per query token, in query order (empty without M3 heads).
        colbert_score: ``mean(m.similarity for m in colbert)``; ``None`` without M3 heads.
        similarity: ``float32 [len(query_tokens), len(doc_tokens)]`` ColBERT token similarities
            (``None`` without M3 heads).
    """

    query: str
    text: str
    dense_score: float
    query_tokens: list = field(default_factory=list)
    doc_tokens: list = field(default_factory=list)
    lexical: list = field(default_factory=list)
    sparse_score: Optional[float] = None
    colbert: list = field(default_factory=list)
    colbert_score: Optional[float] = None
    similarity: Optional[np.ndarray] = None

    def top_lexical(self, n: int = 5) -> list[LexicalMatch]:
        """The ``n`` shared tokens that add most to the lexical score."""
        return self.lexical[:n]

    def top_colbert(self, n: int = 5) -> list[ColbertMatch]:
        """The ``n`` query tokens with the strongest ColBERT match."""
        return sorted(self.colbert, key=lambda m: -m.similarity)[:n]

    def to_dict(self, top: Optional[int] = None) -> dict[str, Any]:
        """A JSON-ready dict (without the similarity matrix); ``top`` limits both token lists."""
        lex = self.lexical if top is None else self.top_lexical(top)
        col = self.colbert if top is None else self.top_colbert(top)
        return {
            "dense_score": self.dense_score,
            "sparse_score": self.sparse_score,
            "colbert_score": self.colbert_score,
            "lexical": [dict(asdict(m), contribution=m.contribution) for m in lex],
            "colbert": [asdict(m) for m in col],
        }


def display_token(token: str) -> str:
    """A token as a person reads it: sentencepiece / BPE word markers removed (``'▁Paris'`` -> ``'Paris'``)."""
    out = token.replace("▁", "").replace("Ġ", "")
    if out.startswith("##"):
        out = out[2:]
    return out or token


def _token_strings(encoder, formatted: str) -> tuple[list[int], list[str]]:
    ids = encoder.tokenize([formatted])[0]
    return ids, list(encoder.tokenizer.convert_ids_to_tokens(ids))


def explain_many(encoder, query: str, texts: Sequence[str]) -> list[Explanation]:
    """:func:`explain` for several documents, encoding the query once and the documents in one batch.

    Query and documents get the encoder's query / passage templates, as the index applies them.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    texts = list(texts)
    heads = bool(getattr(encoder, "has_heads", False))
    q = encoder.encode_queries([query], dense=True, sparse=heads, colbert=heads, show_progress=False)
    if not texts:
        return []
    d = encoder.encode_documents(texts, dense=True, sparse=heads, colbert=heads, show_progress=False)
    dense = (d.dense @ q.dense[0]).astype(float)
    out = []
    if not heads:
        return [Explanation(query=query, text=t, dense_score=float(s)) for t, s in zip(texts, dense)]

    q_fmt = encoder.profile.format_query(query, None)
    q_ids, q_toks = _token_strings(encoder, q_fmt)
    q_toks = q_toks[1:]  # ColBERT drops CLS
    q_vec = q.colbert[0]
    if len(q_toks) != len(q_vec):  # pragma: no cover - would mean the tokenizer and encoder disagree
        raise RuntimeError(f"query has {len(q_toks)} tokens but {len(q_vec)} ColBERT vectors")
    q_sparse = q.sparse[0]
    for i, text in enumerate(texts):
        _, d_toks = _token_strings(encoder, encoder.profile.format_passage(text))
        d_toks = d_toks[1:]
        d_vec = d.colbert[i]
        sim = (q_vec @ d_vec.T).astype(np.float32) if len(d_vec) and len(q_vec) else np.zeros((len(q_vec), len(d_vec)), np.float32)
        matches = []
        if sim.shape[1]:
            best = sim.argmax(axis=1)
            for qi, di in enumerate(best):
                matches.append(ColbertMatch(q_toks[qi], qi, d_toks[di], int(di), float(sim[qi, di])))
        d_sparse = d.sparse[i]
        shared = [t for t in q_sparse if t in d_sparse]
        names = encoder.tokenizer.convert_ids_to_tokens(shared) if shared else []
        lex = [LexicalMatch(name, int(t), float(q_sparse[t]), float(d_sparse[t])) for t, name in zip(shared, names)]
        lex.sort(key=lambda m: -m.contribution)
        out.append(Explanation(
            query=query, text=text, dense_score=float(dense[i]), query_tokens=q_toks, doc_tokens=d_toks,
            lexical=lex, sparse_score=float(sum(m.contribution for m in lex)),
            colbert=matches, colbert_score=float(np.mean([m.similarity for m in matches])) if matches else 0.0,
            similarity=sim,
        ))
    return out


def explain(encoder, query: str, text: str) -> Explanation:
    """Break down how ``text`` scores for ``query`` on each channel, token by token.

    Args:
        encoder: a :class:`bgem3.Encoder` (sparse and ColBERT parts need BGE-M3's heads; without
            them only ``dense_score`` is filled).
        query: the query, as typed (the query template is applied here).
        text: the document text (the passage template is applied here).
    """
    return explain_many(encoder, query, [text])[0]
