"""Writing bgem3 scores into LangChain ``Document`` metadata (shared by the retriever and reranker)."""

from __future__ import annotations

from typing import Mapping, Optional

from langchain_core.documents import Document

from bgem3._adapters.scores import merge_scores

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
    meta, _ = merge_scores(doc.metadata, scores.items(), prefix, warn_on_collision=warn_on_collision,
                           owner=owner, noun="document", returned="Document", verb="Set")
    return doc.model_copy(update={"metadata": meta})
