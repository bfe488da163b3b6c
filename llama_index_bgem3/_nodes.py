"""Plumbing between LlamaIndex nodes / filters and bgem3 hybrid stores (no scoring here)."""

from __future__ import annotations

from typing import Any, Optional

from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from bgem3._hits import merge_scores
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
) -> NodeWithScore:
    """``NodeWithScore(score=fused)`` over a copy of ``node`` whose metadata has the channel scores.

    The score keys are added to the node's ``excluded_llm_metadata_keys`` and
    ``excluded_embed_metadata_keys`` so they never reach a prompt or an embedding.
    """
    node = node.model_copy()
    meta, keys = merge_scores(node.metadata, zip(CHANNEL_KEYS, (dense, sparse, colbert)), prefix,
                              warn_on_collision=warn_on_collision, owner=owner, noun="node", returned="node",
                              verb="Pass")
    node.metadata = meta
    node.excluded_llm_metadata_keys = list(dict.fromkeys([*node.excluded_llm_metadata_keys, *keys]))
    node.excluded_embed_metadata_keys = list(dict.fromkeys([*node.excluded_embed_metadata_keys, *keys]))
    return NodeWithScore(node=node, score=float(fused))


# ------------------------------------------------------------------------------ filters

_Allowed = dict  # key -> {value: None} (an insertion-ordered set of allowed values)


def _leaf(f: MetadataFilter) -> _Allowed:
    op = FilterOperator(f.operator)
    if op == FilterOperator.EQ:
        if isinstance(f.value, list):
            raise ValueError(
                f"MetadataFilter(key={f.key!r}, operator='==') got a list value {f.value!r}; "
                "use operator=FilterOperator.IN to match any of several values"
            )
        return {f.key: {f.value: None}}
    if op == FilterOperator.IN:
        values = f.value if isinstance(f.value, list) else [f.value]
        return {f.key: dict.fromkeys(values)}
    raise NotImplementedError(
        f"metadata filter operator {op.name} ({op.value!r}) on key {f.key!r} is not supported by bgem3 hybrid "
        "stores; supported: EQ ('==', ExactMatchFilter) and IN ('in'), combined with AND (or OR on one key)"
    )


def _merge_and(parts: list) -> Any:
    out: _Allowed = {}
    for part in parts:
        if part is NO_MATCH:
            return NO_MATCH
        for key, values in part.items():
            if key in out:
                values = {v: None for v in out[key] if v in values}
                if not values:
                    return NO_MATCH
            out[key] = values
    return out


def _translate(filters: MetadataFilters) -> Any:
    cond = FilterCondition(filters.condition or FilterCondition.AND)
    parts = [_translate(f) if isinstance(f, MetadataFilters) else _leaf(f) for f in filters.filters]
    if cond == FilterCondition.AND:
        return _merge_and(parts)
    if cond == FilterCondition.OR:
        parts = [p for p in parts if p is not NO_MATCH]
        if not parts:
            return NO_MATCH
        keys = {k for p in parts for k in p}
        if len(keys) != 1 or any(len(p) != 1 for p in parts):
            raise NotImplementedError(
                f"FilterCondition.OR across different keys ({sorted(keys)}) is not supported by bgem3 hybrid "
                "stores; OR works on one key (it becomes 'any of'), or use AND"
            )
        key = keys.pop()
        values: dict = {}
        for p in parts:
            values.update(p[key])
        return {key: values}
    raise NotImplementedError(
        f"FilterCondition.{cond.name} is not supported by bgem3 hybrid stores; use AND (or OR on one key)"
    )


def filters_to_store(filters: Optional[MetadataFilters]) -> Any:
    """Translate LlamaIndex ``MetadataFilters`` to a store filter dict.

    ``ExactMatchFilter`` / ``MetadataFilter(operator=EQ)`` -> ``{key: value}``; ``IN`` ->
    ``{key: [values]}`` (any of). Filters are ANDed; ``OR`` is allowed between filters on one
    key. Returns ``None`` (no filter), a dict, or :data:`NO_MATCH` when the filters contradict
    each other. Other operators / conditions raise ``NotImplementedError`` naming them.
    """
    if filters is None or not filters.filters:
        return None
    out = _translate(filters)
    if out is NO_MATCH:
        return NO_MATCH
    return {k: (next(iter(v)) if len(v) == 1 else list(v)) for k, v in out.items()}

