"""The metadata filter language: expressions richer than the stores' ``{key: value}`` dicts (a leaf module:
no framework, no Qdrant).

The adapters translate a framework's filters (LlamaIndex ``MetadataFilters`` with every
``FilterOperator`` and ``FilterCondition``) into a :class:`Where` tree, and :func:`store_filter`
turns that tree into what a given store takes:

* a plain ``{key: value | [values]}`` dict when the tree is only ``==`` / ``in`` joined by AND
  (every :class:`bgem3.types.HybridStore` understands it);
* otherwise the store's own form, from its ``native_filter(where)`` method: a Qdrant ``Filter`` for
  :class:`bgem3.stores.qdrant.QdrantHybridStore` (:mod:`bgem3.stores.qdrant_filters`; evaluated inside
  Qdrant, the few tests Qdrant cannot express, such as substring matches, are evaluated on the stored
  metadata and sent as a point-id condition), the predicate ``metadata -> bool`` (:meth:`Where.matches`)
  for :class:`bgem3.HybridIndex`, which applies it before candidate selection.

The semantics are LlamaIndex's ``SimpleVectorStore`` ones: a missing (or ``None``) value
matches only ``!=`` and ``nin`` (and ``is_empty``); ``contains`` / ``any`` / ``all`` look inside
list values; ``text_match`` is a substring test. A comparison between values of different types
(``"a" > 3``) is "no match", in both stores.

Example::

    >>> from bgem3.filters import Cond, Where
    >>> w = Where("and", [Cond("year", ">=", 2020), Cond("tags", "contains", "ml")])
    >>> w.matches({"year": 2023, "tags": ["ml", "nlp"]}), w.matches({"year": 2019, "tags": ["ml"]})
    (True, False)
    >>> Where("and", [Cond("lang", "==", "de"), Cond("year", "in", [1, 2])]).as_dict()
    {'lang': 'de', 'year': [1, 2]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

__all__ = ["Cond", "OPERATORS", "Where", "store_filter"]

#: operator -> what it means (the names are LlamaIndex's ``FilterOperator`` values).
OPERATORS = {
    "==": "equal", "!=": "not equal", ">": "greater", "<": "less", ">=": "greater or equal",
    "<=": "less or equal", "in": "value in list", "nin": "value not in list",
    "any": "list value shares one of", "all": "list value holds all of", "contains": "list value holds",
    "text_match": "substring", "text_match_insensitive": "substring, any case",
    "is_empty": "missing, None, '' or []",
}
CONDITIONS = ("and", "or", "not")

_MISSING = object()


@dataclass(frozen=True)
class Cond:
    """One test on one metadata key: ``metadata[key] <op> value``."""

    key: str
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"a filter key must be a non-empty string; got {self.key!r}")
        if self.op not in OPERATORS:
            raise ValueError(f"unknown filter operator {self.op!r} on key {self.key!r}; supported: {sorted(OPERATORS)}")
        if self.op in ("in", "nin", "any", "all") and not isinstance(self.value, (list, tuple, set, frozenset)):
            raise ValueError(f"filter operator {self.op!r} on key {self.key!r} needs a list of values; got {self.value!r}")
        if self.op in ("text_match", "text_match_insensitive") and not isinstance(self.value, str):
            raise ValueError(f"filter operator {self.op!r} on key {self.key!r} needs a string; got {self.value!r}")

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        v = metadata.get(self.key, _MISSING)
        op, want = self.op, self.value
        if op == "is_empty":
            return v is _MISSING or v is None or v == "" or v == []
        if v is _MISSING or v is None:
            return op in ("!=", "nin")
        try:
            if op == "==":
                return v == want
            if op == "!=":
                return v != want
            if op in (">", "<", ">=", "<="):
                if isinstance(v, bool) != isinstance(want, bool) or isinstance(v, (list, dict)):
                    return False
                return {">": v > want, "<": v < want, ">=": v >= want, "<=": v <= want}[op]
            if op == "in":
                return v in list(want)
            if op == "nin":
                return v not in list(want)
            items = v if isinstance(v, (list, tuple)) else [v]
            if op == "contains":
                return want in items
            if op == "any":
                return any(x in items for x in want)
            if op == "all":
                return all(x in items for x in want)
            if not isinstance(v, str):
                return False
            if op == "text_match":
                return want in v
            return want.lower() in v.lower()  # text_match_insensitive
        except TypeError:  # values of types that do not compare: no match
            return False


@dataclass(frozen=True)
class Where:
    """Conditions joined by ``"and"``, ``"or"`` or ``"not"`` (none of them), nestable."""

    condition: str
    items: Sequence[Union[Cond, "Where"]]

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown filter condition {self.condition!r}; supported: {list(CONDITIONS)}")

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """The generic evaluation: does one document's metadata pass?"""
        hits = (item.matches(metadata) for item in self.items)
        if self.condition == "and":
            return all(hits)
        if self.condition == "or":
            return any(hits)
        return not any(hits)

    __call__ = matches

    def as_dict(self) -> Optional[dict]:
        """The store dict form ``{key: value | [values]}``, or ``None`` when the tree needs more
        than ``==`` / ``in`` joined by AND (OR between tests of one key becomes ``in``)."""
        allowed = _allowed(self)
        if allowed is None:
            return None
        return {k: (v[0] if len(v) == 1 else v) for k, v in allowed.items()}


def _allowed(item: Union[Cond, Where]) -> Optional[dict]:
    # key -> allowed values (ordered, no repeats), or None when not expressible as a store dict
    if isinstance(item, Cond):
        if item.op == "==" and _plain(item.value):
            return {item.key: [item.value]}
        if item.op == "in" and item.value and all(_plain(x) for x in item.value):
            return {item.key: list(dict.fromkeys(item.value))}
        return None
    parts = [_allowed(i) for i in item.items]
    if any(p is None for p in parts) or not parts:
        return None
    if item.condition == "and":
        out: dict = {}
        for part in parts:
            for key, values in part.items():
                if key in out:
                    values = [v for v in out[key] if v in values]
                    if not values:  # contradiction: the predicate says "no match"
                        return None
                out[key] = values
        return out
    if item.condition == "or":
        keys = {k for p in parts for k in p}
        if len(keys) != 1 or any(len(p) != 1 for p in parts):
            return None
        key = keys.pop()
        return {key: list(dict.fromkeys(v for p in parts for v in p[key]))}
    return None


def _plain(value: Any) -> bool:
    # what a store dict compares the same way in both stores (floats go through Qdrant ranges)
    return isinstance(value, (str, int)) and not (isinstance(value, float) and not math.isfinite(value))


def store_filter(store: Any, where: Optional[Where]) -> Union[None, dict, Callable[[Mapping[str, Any]], bool], Any]:
    """What ``store.search(filter=...)`` takes for ``where``: ``None``, a plain dict, or else what the store's
    own ``native_filter(where)`` makes of the tree (a Qdrant ``Filter`` for a
    :class:`~bgem3.stores.qdrant.QdrantHybridStore`, the predicate :meth:`Where.matches` for
    :class:`bgem3.HybridIndex` and for a store without that method).

    >>> store_filter(None, Where("and", [Cond("lang", "==", "de")]))
    {'lang': 'de'}
    """
    if where is None or not where.items:
        return None
    plain = where.as_dict()
    if plain is not None:
        return plain
    native = getattr(store, "native_filter", None)
    return where.matches if native is None else native(where)
