"""The argument checks that more than one part of the package makes, written once (a leaf: stdlib, numpy and
:mod:`bgem3.types` only).

The local model (:mod:`bgem3.encoder`, :mod:`bgem3.crossencoder`) and its HTTP twins (:mod:`bgem3.remote`,
:mod:`bgem3.remote_rerank`) check the same arguments the same way, so a client refuses what the model would
refuse, with the same words, and importing a client does not import the model's framework; the stores and the
adapters share the search checks (fusion mode, positive counts).

Example::

    >>> positive_int(3, "k"), check_fusion_mode("rrf"), FUSION_MODES
    (3, 'rrf', ('auto', 'weighted', 'rrf'))
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union, get_args

import numpy as np

from .types import FusionMode

__all__ = ["FUSION_MODES", "check_examples", "check_fusion_mode", "check_pairs", "check_query", "check_rank_texts",
           "check_texts", "check_top_n", "positive_int"]

def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is a Python or numpy integer > 0 (a bool is not); ``ValueError`` naming it.

    >>> positive_int(3, "batch_size"), positive_int(np.int64(2), "k")
    (3, 2)
    >>> positive_int(True, "batch_size")
    Traceback (most recent call last):
    ValueError: batch_size must be a positive integer; got True
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


# --- text and request checks (client and model) ---

def check_texts(texts: Union[str, Iterable[str]]) -> list[str]:
    """Texts to encode as a list of strings: one string is a list of one (the encoders' contract);
    ``None``, bytes, a dict or a non-string item are refused by name."""
    return [texts] if isinstance(texts, str) else _strings(texts, "texts")


def _strings(texts: Any, name: str) -> list[str]:
    """``texts`` (not one string) as a list of strings, or ``TypeError`` naming ``name`` and the bad item."""
    if texts is None or isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a list of strings; got {'None' if texts is None else type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, not str; every item must be a string")
    return texts


def check_examples(examples: Any) -> tuple:
    """Validate bge-en-icl few-shot examples: dicts with ``query``/``response`` (and optional ``instruct``)."""
    if isinstance(examples, (str, dict)) or not hasattr(examples, "__iter__"):
        raise TypeError("examples must be a list of dicts like {'instruct': ..., 'query': ..., 'response': ...}; "
                        f"got {type(examples).__name__}")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise TypeError(f"examples[{i}] is {type(ex).__name__}, not a dict with 'query' and 'response'")
        unknown = sorted(set(ex) - {"instruct", "query", "response"})
        if unknown:
            raise ValueError(f"examples[{i}] has unknown key(s) {unknown}; allowed: 'instruct', 'query', 'response'")
        for k, v in ex.items():
            if v is not None and not isinstance(v, str):
                raise TypeError(f"examples[{i}][{k!r}] must be a string, got {type(v).__name__}")
        out.append(dict(ex))
    return tuple(out)


def check_query(query: Any, fix: str = "reranking needs a query to score the texts against") -> str:
    """``query`` if it is a non-blank string; ``TypeError`` / ``ValueError`` naming the problem (an empty
    query's message ends with ``fix``)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string; got {type(query).__name__}")
    if not query.strip():
        raise ValueError(f"query is empty; {fix}")
    return query


def check_rank_texts(texts: Any, name: str = "texts") -> list[str]:
    """Candidates to rank as a list of strings; a single string is refused (never split into characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, not one string (wrap it: [text])")
    return _strings(texts, name)


def check_pairs(pairs: Any, name: str = "sentence_pairs") -> list[tuple[str, str]]:
    """``(query, passage)`` pairs as a list of string tuples; one pair (a tuple or a list of two strings)
    is a list of one, as FlagEmbedding takes it; an empty query is refused."""
    if isinstance(pairs, str) or pairs is None or isinstance(pairs, (bytes, dict)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"{name} must be a list of (query, passage) pairs (or one pair); got {type(pairs).__name__}")
    pairs = list(pairs)
    if len(pairs) == 2 and all(isinstance(x, str) for x in pairs):  # one (query, passage) pair, as FlagEmbedding
        pairs = [tuple(pairs)]
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, str) or not isinstance(p, (tuple, list)) or len(p) != 2:
            raise TypeError(f"{name}[{i}] must be a (query, passage) pair of strings; got {p!r:.80}")
        q, d = p
        if not isinstance(q, str) or not isinstance(d, str):
            raise TypeError(f"{name}[{i}] must hold two strings; got ({type(q).__name__}, {type(d).__name__})")
        if not q.strip():
            raise ValueError(f"{name}[{i}] has an empty query; reranking needs a query to score against")
        out.append((q, d))
    return out


def check_top_n(top_n: Optional[int]) -> Optional[int]:
    """``top_n`` if it is ``None`` (keep all) or a positive integer; ``ValueError`` otherwise.

    >>> check_top_n(3), check_top_n(None)
    (3, None)
    """
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n <= 0:
        raise ValueError(f"top_n must be a positive integer or None (keep all); got {top_n!r}")
    return int(top_n)


# --- store and search checks ---

#: the accepted ``mode=`` values of every store's ``search`` (the :data:`bgem3.types.FusionMode` literal):
#: ``"auto"`` (the store's own choice, see ``StoreBase.fusion_mode``), ``"weighted"`` (weighted mean) or
#: ``"rrf"`` (reciprocal rank)
FUSION_MODES: tuple[str, ...] = get_args(FusionMode)


def check_fusion_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`FUSION_MODES`; ``ValueError`` naming them otherwise."""
    if not isinstance(mode, str) or mode not in FUSION_MODES:
        raise ValueError(f"mode must be {', '.join(repr(m) for m in FUSION_MODES[:-1])} or {FUSION_MODES[-1]!r}; "
                         f"got {mode!r}")
    return mode
