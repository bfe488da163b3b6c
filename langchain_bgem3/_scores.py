"""Writing bgem3 scores into LangChain ``Document`` metadata (shared by the retriever and reranker)."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

from langchain_core.documents import Document

#: metadata keys the retriever and reranker write (prefixed with ``metadata_key_prefix``).
SCORE_KEYS = ("score", "dense_score", "sparse_score", "colbert_score")


def scored_document(
    doc: Document,
    scores: Mapping[str, Optional[float]],
    prefix: str = "",
    *,
    warn_on_collision: bool,
    owner: str,
) -> Document:
    """A copy of ``doc`` whose metadata has ``prefix + key`` for each score (``None`` scores left out).

    The input document is not modified. If ``warn_on_collision`` and the document already has one
    of those keys, a ``UserWarning`` says which key was shadowed and how to keep both.
    """
    meta: dict[str, Any] = dict(doc.metadata)
    for key, value in scores.items():
        if value is None:
            continue
        name = prefix + key
        if warn_on_collision and name in meta:
            warnings.warn(
                f"{owner}: a document's metadata already has the key {name!r}; the returned Document's "
                f"{name!r} holds bgem3's {key} instead (the stored metadata is unchanged). Set "
                f"metadata_key_prefix='bgem3_' (or another prefix) to keep both.",
                UserWarning,
                stacklevel=4,
            )
        meta[name] = float(value)
    return doc.model_copy(update={"metadata": meta})
