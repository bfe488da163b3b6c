"""Metadata filters in Qdrant's form: the stores' ``{key: value}`` dict (:func:`to_qdrant_filter`) and a
:class:`bgem3.filters.Where` tree (:func:`to_qdrant`), translated to ``qdrant_client.models.Filter``.

The filter language itself (what each operator means) is :mod:`bgem3.filters`; this module only says
how Qdrant expresses it. :meth:`bgem3.stores.qdrant.QdrantHybridStore.native_filter` calls :func:`to_qdrant`.

Example::

    >>> from bgem3.filters import Cond, Where
    >>> f = to_qdrant(Where("or", [Cond("year", ">=", 2020), Cond("lang", "==", "de")]))
    >>> [type(c).__name__ for c in f.should]
    ['FieldCondition', 'FieldCondition']
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..filters import Cond, Where

__all__ = ["to_qdrant", "to_qdrant_filter"]


def _payload_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter keys must be non-empty strings (metadata field names); got {key!r}")
    if '"' in key:
        raise ValueError(f"filter key {key!r} contains a double quote, which Qdrant payload paths cannot express")
    plain = all(ch.isalnum() or ch in "_-" for ch in key)
    return f"metadata.{key}" if plain else f'metadata."{key}"'


#: Qdrant stores and matches integers as signed 64-bit
_INT64 = (-(2**63), 2**63 - 1)


def _check_int64(v: Any, key: str) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and not _INT64[0] <= v <= _INT64[1]:
        raise ValueError(f"filter value for {key!r} is {v}, outside the signed 64-bit range Qdrant stores integers "
                         f"in ([{_INT64[0]}, {_INT64[1]}]); no stored document can match it. Pass a value in that "
                         "range (or a str)")


def _condition(path: str, value: Any, key: str):
    from qdrant_client import models

    if value is None:  # like ``metadata.get(key) is None``: the key is missing or null
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=path))
    if isinstance(value, (bool, str)) or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        v = value.item() if isinstance(value, np.generic) else value
        _check_int64(v, key)
        return models.FieldCondition(key=path, match=models.MatchValue(value=v))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"filter value for {key!r} must be finite; got {value!r}")
        return models.FieldCondition(key=path, range=models.Range(gte=v, lte=v))
    raise ValueError(
        f"filter value for {key!r} must be a str, int, float, bool, None or a list/tuple of those; "
        f"got {type(value).__name__}"
    )


def to_qdrant_filter(filter: Optional[Mapping[str, Any]]):
    """Translate a metadata filter dict into a Qdrant ``Filter`` (``None`` for no filter).

    Every key must match (AND). A scalar value means ``metadata[key] == value``
    (``MatchValue``; floats as a closed ``Range``; ``None`` as ``IsEmptyCondition``: missing or
    null); a list, tuple or set means "any of" (``MatchAny`` for str/int lists, else an OR of
    conditions). The same filter dict selects the same documents as in :class:`bgem3.HybridIndex`
    for str/int/bool/None values and scalar metadata; see docs/qdrant.md for the corner cases
    (Python's ``1 == True == 1.0``, list-valued metadata).

    >>> f = to_qdrant_filter({"lang": "de", "year": [2023, 2024]})
    >>> [c.key for c in f.must], type(f.must[1].match).__name__
    (['metadata.lang', 'metadata.year'], 'MatchAny')
    """
    from qdrant_client import models

    if filter is None:
        return None
    if isinstance(filter, models.Filter):  # already Qdrant's form (bgem3.stores.qdrant_filters.to_qdrant)
        return filter
    if callable(filter) and not isinstance(filter, Mapping):
        raise TypeError("a callable filter cannot run inside Qdrant; pass a dict {key: value}, a "
                        "qdrant_client.models.Filter, or use the embedded bgem3.HybridIndex for predicate filters")
    if not isinstance(filter, Mapping):
        raise ValueError(f"filter must be a dict of metadata field -> value (or list of values); got {type(filter).__name__}")
    must: list = []
    for key, value in filter.items():
        path = _payload_key(key)
        if isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            if not values:
                raise ValueError(f"filter value for {key!r} is an empty list, which matches nothing; drop the key or give values")
            if all(isinstance(v, str) for v in values) or all(
                isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values
            ):
                vals = [v.item() if isinstance(v, np.generic) else v for v in values]
                for v in vals:
                    _check_int64(v, key)
                must.append(models.FieldCondition(key=path, match=models.MatchAny(any=vals)))
            else:
                must.append(models.Filter(should=[_condition(path, v, key) for v in values]))
        else:
            must.append(_condition(path, value, key))
    return models.Filter(must=must) if must else None


# ------------------------------------------------------------------ filter trees (bgem3.filters.Where)
def _nothing() -> Any:
    """A Qdrant filter no point passes (an empty ``should`` would pass every point)."""
    from qdrant_client import models

    return models.Filter(must=[models.HasIdCondition(has_id=[])])


def _qdrant_leaf(c: Cond) -> Any:
    from qdrant_client import models

    path = _payload_key(c.key)

    def field(match: Any = None, range: Any = None) -> Any:
        return models.FieldCondition(key=path, match=match, range=range)

    def value_match(v: Any) -> Any:
        if isinstance(v, bool) or isinstance(v, (str, int)):
            return field(match=models.MatchValue(value=v))
        if isinstance(v, float):
            return field(range=models.Range(gte=v, lte=v))
        raise NotImplementedError(
            f"filter on {c.key!r}: Qdrant compares str, int, float and bool values; got {type(v).__name__} ({v!r})")

    def any_of(values: Sequence[Any]) -> Any:
        values = list(values)
        if values and (all(isinstance(v, str) for v in values)
                       or all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
            return field(match=models.MatchAny(any=values))
        return models.Filter(should=[value_match(v) for v in values])

    op, v = c.op, c.value
    if op == "==":
        return value_match(v)
    if op == "!=":
        return models.Filter(must_not=[value_match(v)])
    if op in (">", "<", ">=", "<="):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise NotImplementedError(
                f"filter {c.key!r} {op} {v!r}: Qdrant ranges compare numbers only; use a number, or the embedded "
                "bgem3.HybridIndex, which compares any values")
        key = {">": "gt", "<": "lt", ">=": "gte", "<=": "lte"}[op]
        return field(range=models.Range(**{key: float(v)}))
    if op == "in":
        return any_of(v) if list(v) else _nothing()
    if op == "nin":
        return models.Filter(must_not=[any_of(v)]) if list(v) else models.Filter()
    if op == "contains":
        return value_match(v)
    if op == "any":
        return any_of(v) if list(v) else _nothing()
    if op == "all":
        return models.Filter(must=[value_match(x) for x in v])
    if op == "is_empty":
        return models.Filter(should=[models.IsEmptyCondition(is_empty=models.PayloadField(key=path)),
                                     models.IsNullCondition(is_null=models.PayloadField(key=path)),
                                     field(match=models.MatchValue(value=""))])
    raise NotImplementedError(f"filter operator {op!r} on key {c.key!r} has no Qdrant equivalent")


def _native(c: Cond) -> bool:
    """Whether Qdrant evaluates ``c`` itself with the same semantics as :meth:`Cond.matches`."""
    if c.op in ("text_match", "text_match_insensitive"):  # Qdrant's text match is by words, not substrings
        return False
    if c.op in (">", "<", ">=", "<="):
        return not isinstance(c.value, bool) and isinstance(c.value, (int, float))
    values = c.value if c.op in ("in", "nin", "any", "all") else ([] if c.op == "is_empty" else [c.value])
    return all(isinstance(v, (str, int, float)) for v in values)


def _scanned_ids(store: Any, c: Cond) -> Any:
    """``HasIdCondition`` over the points whose metadata passes ``c``, read from the collection
    (the generic evaluation, for tests Qdrant cannot run itself). Costs one scroll per query."""
    from qdrant_client import models

    ids: list = []
    offset = None
    while True:
        recs, offset = store.client.scroll(store.collection_name, limit=1024, offset=offset,
                                           with_payload=["metadata"], with_vectors=False)
        ids.extend(r.id for r in recs if c.matches((r.payload or {}).get("metadata") or {}))
        if offset is None:
            break
    return models.HasIdCondition(has_id=ids)


def to_qdrant(where: Where, store: Any = None) -> Any:
    """A ``qdrant_client.models.Filter`` selecting what :meth:`Where.matches` selects.

    Tests Qdrant has no equivalent for (substring text match, ranges over strings) are evaluated
    on the stored metadata of ``store`` (read with one scroll) and sent as an id condition;
    without a ``store`` they raise ``NotImplementedError``.
    """
    from qdrant_client import models

    def leaf(c: Cond) -> Any:
        if _native(c):
            return _qdrant_leaf(c)
        if store is None:
            raise NotImplementedError(f"filter operator {c.op!r} on key {c.key!r} with {c.value!r} has no Qdrant "
                                      "equivalent; pass the store to evaluate it on the stored metadata")
        return _scanned_ids(store, c)

    parts = [to_qdrant(i, store) if isinstance(i, Where) else leaf(i) for i in where.items]
    if where.condition == "and":
        return models.Filter(must=parts)
    if where.condition == "or":
        return models.Filter(should=parts) if parts else _nothing()
    return models.Filter(must_not=parts)
