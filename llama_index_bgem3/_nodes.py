"""Plumbing between LlamaIndex nodes / filters and bgem3 hybrid stores (no scoring here)."""

from __future__ import annotations

from typing import Any, Optional

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from bgem3.filters import Cond, Where
from bgem3._adapters.scores import merge_scores
from bgem3.types import Hit

#: channel-score keys written into node metadata (the fused score is ``NodeWithScore.score``).
CHANNEL_KEYS = ("dense_score", "sparse_score", "colbert_score")


class NoMatch:
    """Marker: the filters can never match (e.g. ``a == 1 AND a == 2``)."""


NO_MATCH = NoMatch()


def node_text(node: BaseNode) -> str:
    """The text a node is indexed / reranked by: its content without metadata."""
    return node.get_content(metadata_mode=MetadataMode.NONE)


def node_to_store(node: BaseNode) -> tuple[str, str, dict[str, Any]]:
    """``(id, text, metadata)`` for a store: the node's own metadata at the top level (so filters
    see it) plus LlamaIndex's standard ``_node_content`` record, to rebuild the node on retrieval."""
    meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    return node.node_id, node_text(node), meta


def hit_to_node(hit: Hit) -> BaseNode:
    """Rebuild the node behind a hit (a plain ``TextNode`` for texts not added through LlamaIndex)."""
    meta = dict(hit.metadata or {})
    if "_node_content" in meta:
        node = metadata_dict_to_node(meta, text=hit.text)
        node.id_ = hit.id
        return node
    return TextNode(id_=hit.id, text=hit.text, metadata=meta)


# ------------------------------------------------------------------------------ hash-stable copies
#
# LlamaIndex identifies a node by ``node.hash`` (text + metadata) when QueryFusionRetriever merges
# the results of several retrievers. The score keys we add to the returned copy must not change it,
# or fusion returns the same node twice. The copy is an instance of a subclass (same class_name(),
# same fields) whose ``hash`` leaves the score keys out.

_SCORED: dict = {}


def _hash_without_scores(self: BaseNode) -> str:
    base = type(self).__mro__[1]
    keys = set(self._bgem3_score_keys)
    fields = {name: getattr(self, name) for name in base.model_fields}
    fields["metadata"] = {k: v for k, v in self.metadata.items() if k not in keys}
    return base.model_construct(**fields).hash


def _rebuild_scored(base: type, state: dict, keys: tuple) -> BaseNode:
    cls = scored_class(base)
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    obj._bgem3_score_keys = tuple(keys)
    return obj


def scored_class(base: type) -> type:
    """The subclass of ``base`` whose ``hash`` ignores bgem3's score keys (built once per class)."""
    cls = _SCORED.get(base)
    if cls is None:
        cls = type(base.__name__, (base,), {
            "__module__": __name__,
            "__qualname__": f"_Scored{base.__name__}",
            "__annotations__": {"_bgem3_score_keys": tuple},
            "_bgem3_score_keys": PrivateAttr(default=()),
            "hash": property(_hash_without_scores),
            "__reduce__": lambda self: (_rebuild_scored, (base, self.__getstate__(), self._bgem3_score_keys)),
            "__doc__": base.__doc__,
        })
        _SCORED[base] = cls
    return cls


def scored_copy(node: BaseNode, metadata: dict, score_keys: list) -> BaseNode:
    """A copy of ``node`` with ``metadata`` whose ``node.hash`` is the original node's."""
    base = type(node).__mro__[1] if type(node) in _SCORED.values() else type(node)
    keys = tuple(dict.fromkeys([*getattr(node, "_bgem3_score_keys", ()), *score_keys]))
    cls = scored_class(base)
    fields = {name: getattr(node, name) for name in base.model_fields}
    fields["metadata"] = metadata
    copy = cls.model_construct(**fields)
    copy._bgem3_score_keys = keys
    return copy


def with_channel_scores(
    node: BaseNode,
    dense: Optional[float],
    sparse: Optional[float],
    colbert: Optional[float],
    fused: float,
    prefix: str = "",
    *,
    warn_on_collision: bool,
    owner: str,
    retrieval_score: bool = False,
) -> NodeWithScore:
    """``NodeWithScore(score=fused)`` over a copy of ``node`` whose metadata has the channel scores
    (and, with ``retrieval_score``, the fused score as ``retrieval_score``: a reranker's score replaces it).

    The score keys are added to the node's ``excluded_llm_metadata_keys`` and
    ``excluded_embed_metadata_keys`` so they never reach a prompt or an embedding.
    """
    named = list(zip(CHANNEL_KEYS, (dense, sparse, colbert))) + ([("retrieval_score", fused)] if retrieval_score else [])
    meta, keys = merge_scores(node.metadata, named, prefix,
                              warn_on_collision=warn_on_collision, owner=owner, noun="node", returned="node",
                              verb="Pass")
    node = scored_copy(node, meta, keys)
    node.excluded_llm_metadata_keys = list(dict.fromkeys([*node.excluded_llm_metadata_keys, *keys]))
    node.excluded_embed_metadata_keys = list(dict.fromkeys([*node.excluded_embed_metadata_keys, *keys]))
    return NodeWithScore(node=node, score=float(fused))


# ------------------------------------------------------------------------------ filters

_CONDITIONS = {FilterCondition.AND: "and", FilterCondition.OR: "or", FilterCondition.NOT: "not"}


def _leaf(f: MetadataFilter) -> Cond:
    op = FilterOperator(f.operator)
    if op == FilterOperator.EQ and isinstance(f.value, list):
        raise ValueError(
            f"MetadataFilter(key={f.key!r}, operator='==') got a list value {f.value!r}; "
            "use operator=FilterOperator.IN to match any of several values"
        )
    value = f.value
    if op in (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL) \
            and not isinstance(value, list):
        value = [value]
    return Cond(f.key, op.value, value)


def filters_to_where(filters: Optional[MetadataFilters]) -> Optional[Where]:
    """LlamaIndex ``MetadataFilters`` (every ``FilterOperator``, ``FilterCondition`` AND / OR / NOT,
    nested) as a :class:`bgem3.filters.Where` tree; ``None`` for no filter."""
    if filters is None or not filters.filters:
        return None
    cond = FilterCondition(filters.condition or FilterCondition.AND)
    items = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            sub = filters_to_where(f)
            if sub is not None:
                items.append(sub)
        else:
            items.append(_leaf(f))
    return Where(_CONDITIONS[cond], items)


def filters_to_store(filters: Optional[MetadataFilters]) -> Any:
    """Translate LlamaIndex ``MetadataFilters`` for a store that takes plain dicts: ``None``, a
    dict (``EQ`` -> ``{key: value}``, ``IN`` -> ``{key: [values]}``, ANDed) or the
    :class:`~bgem3.filters.Where` tree for anything richer (see :func:`bgem3.filters.store_filter`)."""
    where = filters_to_where(filters)
    if where is None:
        return None
    plain = where.as_dict()
    return plain if plain is not None else where
