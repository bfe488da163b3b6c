"""The rerank side of ``bgem3 serve --reranker MODEL``: TEI's ``POST /rerank`` and the Cohere / Jina /
infinity-style ``POST /v1/rerank``, batched across concurrent requests like ``/embed``.

* **TEI** ``POST /rerank``: ``{"query", "texts", "raw_scores", "return_text", "truncate",
  "truncation_direction"}`` -> ``[{"index", "score"(, "text")}]``, best first. ``raw_scores: false`` (the
  default) gives the sigmoid of the model's score (FlagEmbedding's ``normalize=True``), ``true`` the raw logit.
* **Cohere / Jina / infinity** ``POST /v1/rerank`` (and ``POST /rerank`` with ``documents`` instead of
  ``texts``, which is how infinity clients call it): ``{"query", "documents", "top_n", "model",
  "return_documents", "raw_scores"}`` -> ``{"object": "rerank", "id", "model", "results": [{"index",
  "relevance_score"(, "document": {"text"})}], "usage", "meta"}``, best first, ``top_n`` of them.

Ties keep the input order (a stable sort on the score, highest first). Every field is checked; an unknown
field is refused by name (422), never ignored.

The pairs go through the same :class:`~bgem3.serve.scheduler.Batcher` as the embedder's texts (its own
queue and worker thread, the same bounds, cancellation and metrics): :class:`RerankBackend` gives the
batcher a one-column "encoder" whose forward pass is the reranker's own on already-tokenised pairs.

Example::

    >>> parse_tei_rerank({"query": "q", "texts": ["a", "b"], "raw_scores": True}, max_texts=8).raw_scores
    True
    >>> parse_cohere_rerank({"query": "q", "documents": [{"text": "a"}, "b"], "top_n": 1}, max_texts=8).texts
    ['a', 'b']
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .shapes import ApiError, positive_field
from .textcut import cut_texts

__all__ = ["RerankBackend", "RerankRequest", "parse_cohere_rerank", "parse_tei_rerank", "sigmoid", "ranked"]


def sigmoid(x: float) -> float:
    """FlagEmbedding's ``normalize=True`` (``float(1 / (1 + np.exp(-x)))``), on a float64 copy of ``x``."""
    with np.errstate(over="ignore"):
        return float(1 / (1 + np.exp(-float(x))))


@dataclass
class RerankRequest:
    """A parsed ``/rerank`` or ``/v1/rerank`` request."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: Optional[bool] = None
    top_n: Optional[int] = None
    model: Optional[str] = None
    cohere: bool = False  # answer in the Cohere / infinity shape


def _fields(body: Any, allowed: frozenset, where: str, example: str) -> dict:
    if not isinstance(body, dict):
        raise ApiError(422, f"{where}: the JSON body must be an object like {example}; got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, f"{where}: unknown field(s) {unknown}; accepted fields are {sorted(allowed)}",
                       param=unknown[0])
    return body


def _flag(body: dict, name: str, default: Optional[bool]) -> Optional[bool]:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, f"`{name}` must be true or false; got {value!r}", param=name)
    return value


def _query(body: dict) -> str:
    q = body.get("query")
    if q is None:
        raise ApiError(422, "`query` is required: the text the candidates are ranked against", param="query")
    if not isinstance(q, str):
        raise ApiError(422, f"`query` must be a string; got {type(q).__name__}", param="query")
    if not q.strip():
        raise ApiError(422, "`query` is empty: send the text the candidates are ranked against", kind="Empty",
                       param="query")
    return q


def _candidates(value: Any, name: str, max_texts: int, *, objects: bool) -> list[str]:
    if value is None:
        raise ApiError(422, f"`{name}` is required: a list of the candidate texts", param=name)
    if isinstance(value, str):  # never split into characters, never guessed into a list of one
        raise ApiError(422, f"`{name}` must be a list of strings; got one string (send [\"...\"] for one candidate)",
                       param=name)
    if not isinstance(value, list):
        raise ApiError(422, f"`{name}` must be a list of strings; got {type(value).__name__}", param=name)
    texts = []
    for i, t in enumerate(value):
        if objects and isinstance(t, dict):  # Cohere's {"text": "..."} documents
            if set(t) != {"text"} or not isinstance(t["text"], str):
                raise ApiError(422, f"`{name}[{i}]` must be a string or {{\"text\": \"...\"}}; got keys {sorted(t)} "
                                    "(rank_fields over structured documents is not supported: send the text)",
                               param=name)
            t = t["text"]
        if not isinstance(t, str):
            raise ApiError(422, f"`{name}[{i}]` is {type(t).__name__}, not a string", param=name)
        texts.append(t)
    if not texts:
        raise ApiError(422, f"`{name}` is empty: send at least one candidate text", kind="Empty", param=name)
    if len(texts) > max_texts:
        raise ApiError(413, f"`{name}` has {len(texts)} texts; this server takes at most {max_texts} per request "
                            "(--max-client-batch-size): split the candidates into several requests", param=name)
    return texts


_TEI = frozenset({"query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction"})


def parse_tei_rerank(body: Any, *, max_texts: int) -> RerankRequest:
    """TEI's ``POST /rerank`` body."""
    body = _fields(body, _TEI, "/rerank", '{"query": "...", "texts": ["..."]}')
    req = RerankRequest(query=_query(body), texts=_candidates(body.get("texts"), "texts", max_texts, objects=False))
    req.raw_scores = bool(_flag(body, "raw_scores", False))
    req.return_text = bool(_flag(body, "return_text", False))
    req.truncate = _flag(body, "truncate", None)
    direction = body.get("truncation_direction")
    if direction is not None and direction not in ("Right", "right"):
        raise ApiError(422, f"`truncation_direction` {direction!r} is not supported: the reranker keeps the query and "
                            "cuts the passage on the right, as FlagEmbedding does (drop the field or send \"Right\")",
                       param="truncation_direction")
    return req


_COHERE = frozenset({"query", "documents", "top_n", "model", "return_documents", "raw_scores", "truncate",
                     "max_chunks_per_doc", "max_tokens_per_doc", "rank_fields"})
#: fields of the Cohere API that change the result in ways this server does not implement: refused by name
_COHERE_REFUSED = {
    "max_chunks_per_doc": "long documents are not split into chunks here: the passage is cut at the reranker's "
                          "max length (FlagEmbedding's rule); chunk the documents before sending them",
    "max_tokens_per_doc": "the cut is the server's --reranker-max-length for every request; drop the field",
    "rank_fields": "structured documents are not supported: send each document's text",
}


def parse_cohere_rerank(body: Any, *, max_texts: int, where: str = "/v1/rerank") -> RerankRequest:
    """The Cohere / Jina / infinity rerank body (``documents`` may hold strings or ``{"text": ...}``)."""
    body = _fields(body, _COHERE, where, '{"query": "...", "documents": ["..."], "top_n": 3}')
    for name, why in _COHERE_REFUSED.items():
        if body.get(name) is not None:
            raise ApiError(422, f"`{name}` is not supported: {why}", param=name)
    req = RerankRequest(query=_query(body),
                        texts=_candidates(body.get("documents"), "documents", max_texts, objects=True), cohere=True)
    top_n = body.get("top_n")
    if top_n is not None:
        req.top_n = positive_field(top_n, "top_n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f"`model` must be a string (the served reranker's name); got {type(model).__name__}",
                       param="model")
    req.model = model
    req.return_text = bool(_flag(body, "return_documents", False))
    req.raw_scores = bool(_flag(body, "raw_scores", False))
    req.truncate = _flag(body, "truncate", None)
    return req


def ranked(scores: np.ndarray, top_n: Optional[int] = None) -> list[int]:
    """Indices of ``scores``, highest first, ties in input order; the first ``top_n``."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in (order if top_n is None else order[:top_n])]


def tei_answer(req: RerankRequest, raw: np.ndarray) -> list[dict]:
    """TEI's ``[{"index", "score"(, "text")}]``, best first."""
    scores = [float(x) if req.raw_scores else sigmoid(x) for x in raw]
    out = []
    for i in ranked(np.asarray(scores), None):
        row: dict[str, Any] = {"index": i, "score": scores[i]}
        if req.return_text:
            row["text"] = req.texts[i]
        out.append(row)
    return out


def cohere_answer(req: RerankRequest, raw: np.ndarray, *, model: str, tokens: int) -> dict:
    """The Cohere / Jina / infinity answer: ``results`` best first, ``top_n`` of them."""
    scores = [float(x) if req.raw_scores else sigmoid(x) for x in raw]
    results = []
    for i in ranked(np.asarray(scores), req.top_n):
        row: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_text:
            row["document"] = {"text": req.texts[i]}
        results.append(row)
    return {"object": "rerank", "id": uuid.uuid4().hex, "model": model, "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}


class _Pair(list):
    """One tokenised (query, passage) pair: its token ids (``len`` = its tokens, which the batcher sorts and
    budgets by) and its token type ids (``None`` where the model takes none)."""

    __slots__ = ("tts",)


class RerankBackend:
    """What the :class:`~bgem3.serve.scheduler.Batcher` needs from a model, over a :class:`bgem3.Reranker`.

    The batcher asks for a ``hidden_size`` and calls ``forward_batch(items, dense, sparse, colbert)`` on one pass of
    tokenised items; here an item is one (query, passage) pair as the reranker tokenised it
    (:meth:`tokenize`, the reference's truncation) and the pass returns its raw scores as a one-column "dense"
    block. Length sorting, token budgets, the queue bound and cancellation are the batcher's.
    """

    hidden_size = 1

    def __init__(self, reranker: Any) -> None:
        forward = getattr(reranker, "forward_tokenized", None) or getattr(reranker, "_forward", None)
        if not callable(getattr(reranker, "tokenize_pairs", None)) or not callable(forward):
            raise TypeError(f"{type(reranker).__name__} cannot be served: it has no tokenize_pairs() / "
                            "forward_tokenized() (bgem3 serve --reranker takes a local bgem3.Reranker)")
        self.reranker = reranker
        self._score = forward

    def cut(self, query: str, texts: list[str], max_length: int) -> tuple[str, list[str]]:
        """The query and texts cut to a character bound that leaves their first ``max_length`` tokens as
        they are (:func:`~bgem3.serve.textcut.cut_texts`): a pair never reads more than ``max_length``
        tokens of either side, so the scores do not change, and a huge text does not cost the tokenizer
        its whole length. A text that was cut still has more than ``max_length`` tokens, so
        :meth:`was_cut` still sees it as cut."""
        tok = getattr(self.reranker, "tokenizer", None)
        if tok is None:
            return query, texts
        # the reranker's tokenizer lock, as /embed passes the encoder's: a fast tokenizer's truncation setting is
        # shared state, and tokenize_pairs (truncation="only_second") may run at the same time in another thread
        cut = cut_texts(tok, [query, *texts], max_length, lock=getattr(self.reranker, "_lock", None))
        return cut[0], cut[1:]

    def tokenize(self, query: str, texts: list[str], max_length: int) -> list:
        """Each pair's model input, cut at ``max_length`` as the reference cuts it."""
        pairs = [(query, t) for t in texts]
        ids, tts = self.reranker.tokenize_pairs(pairs, max_length=max_length)
        items = []
        for k, row in enumerate(ids):
            item = _Pair(row)
            item.tts = None if tts is None else tts[k]
            items.append(item)
        return items

    def was_cut(self, query: str, texts: list[str], items: list) -> list[bool]:
        """Whether each pair lost tokens to the cut: its uncut tokenisation is longer."""
        big = 1 << 30
        full, _ = self.reranker.tokenize_pairs([(query, t) for t in texts], max_length=big, query_max_length=big)
        return [len(f) != len(i) for f, i in zip(full, items)]

    def forward_batch(self, items: list, dense: bool, sparse: bool, colbert: bool):
        tts = None if items[0].tts is None else [it.tts for it in items]
        scores = np.asarray(self._score(items, tts), dtype=np.float64)
        if scores.shape != (len(items),):
            raise RuntimeError(f"the reranker returned {scores.shape} scores for {len(items)} pairs")
        return scores.astype(np.float32).reshape(-1, 1), None, None


def finite_or_500(raw: np.ndarray) -> np.ndarray:
    """The raw scores, or a 500 naming the problem when the model produced NaN / inf (never sent as a score)."""
    bad = [i for i, x in enumerate(raw) if not math.isfinite(float(x))]
    if bad:
        raise ApiError(500, f"the reranker produced a non-finite score for candidate(s) {bad[:5]} (a numeric "
                            "overflow in the model, e.g. fp16); serve it in fp32 (--dtype float32)", kind="Backend")
    return raw
