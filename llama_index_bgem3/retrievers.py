"""LlamaIndex retriever over a bgem3 hybrid store (dense + lexical + ColBERT fusion)."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence

from llama_index.core.callbacks import CallbackManager
from llama_index.core.ingestion import run_transformations
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, Document, NodeWithScore, QueryBundle, TransformComponent
from llama_index.core.settings import Settings
from llama_index.core.vector_stores.types import MetadataFilters

from bgem3._checks import check_fusion_mode, positive_int as _positive_int
from bgem3.filters import store_filter
from bgem3._adapters.rerankers import load_reranker, rerank_hits
from bgem3._adapters.retrieval import check_hybrid_store, search_many, store_builder_args, store_fusion_mode
from bgem3._adapters.arguments import check_list_arg, unknown_options_error
from bgem3.scoring import DEFAULT_WEIGHTS, check_weights

from ._nodes import filters_to_where, hit_to_node, node_to_store, with_channel_scores

__all__ = ["BGEM3HybridRetriever"]

_RETRIEVER_KWARGS = ("similarity_top_k", "weights", "candidates", "mode", "filters", "metadata_key_prefix",
                     "reranker", "rerank_candidates", "callback_manager", "verbose")


_HINTS = {
    "top_k": "use similarity_top_k= (how many nodes to return)",
    "k": "use similarity_top_k= (how many nodes to return)",
    "filter": "use filters=MetadataFilters(...)",
    "alpha": "use weights=(dense, lexical, colbert)",
    "vector_store_query_mode": "bgem3 always fuses dense, lexical and ColBERT; set weights= / mode=",
    "sparse_top_k": "use candidates= (the candidate pool of each channel)",
}


class BGEM3HybridRetriever(BaseRetriever):
    """Hybrid retrieval with BGE-M3 for LlamaIndex: dense, lexical and ColBERT scores fused.

    Works over any :class:`bgem3.types.HybridStore` (the embedded :class:`bgem3.HybridIndex`,
    which :meth:`from_documents` / :meth:`from_nodes` build, or
    :class:`bgem3.stores.qdrant.QdrantHybridStore`). Every number comes from the store's ``search``.

    Returns ``NodeWithScore`` with ``score`` = the fused score; the channel scores are in the node's
    metadata as ``dense_score``, ``sparse_score``, ``colbert_score`` (prefixed by
    ``metadata_key_prefix``) and are listed in ``excluded_llm_metadata_keys`` /
    ``excluded_embed_metadata_keys``, so they never reach a prompt. If a node's own metadata has a
    key of that name, the returned copy holds the score and a ``UserWarning`` names the key.

    Nodes are indexed by their text without metadata (``MetadataMode.NONE``); the whole node
    (relationships, templates, metadata) is kept as LlamaIndex's ``_node_content`` record and
    rebuilt on retrieval. Texts added to the store by other means come back as ``TextNode``.

    Args:
        store: the hybrid store to search.
        similarity_top_k: how many nodes to return (default 4).
        weights: ``(dense, lexical, colbert)``; default ``(0.4, 0.2, 0.4)`` (BGE-M3 paper).
        candidates: the store's candidate pool (dense top-N united with lexical top-N).
        mode: ``"auto"`` (default: the store decides, ``store.fusion_mode()``: reciprocal-rank fusion
            beside a BM25 lexical channel, the weighted mean otherwise), ``"weighted"`` or ``"rrf"``.
        filters: ``MetadataFilters`` with any ``FilterOperator`` (EQ, NE, GT, GTE, LT, LTE, IN, NIN,
            ANY, ALL, CONTAINS, TEXT_MATCH, TEXT_MATCH_INSENSITIVE, IS_EMPTY) and condition (AND, OR,
            NOT, nested), with the semantics of LlamaIndex's ``SimpleVectorStore``. On
            :class:`bgem3.HybridIndex` they are evaluated before candidate selection; on
            :class:`bgem3.stores.qdrant.QdrantHybridStore` they become a Qdrant filter (number
            ranges only; TEXT_MATCH_INSENSITIVE is refused there).
        metadata_key_prefix: prefix for the channel-score metadata keys.
        reranker: an optional cross-encoder (a :class:`bgem3.Reranker`, a ``RemoteReranker``, a model
            name such as ``"BAAI/bge-reranker-v2-m3"`` or a ``bgem3 serve`` URL): the store's best
            ``max(similarity_top_k, rerank_candidates)`` hits are rescored by it and the best
            ``similarity_top_k`` returned; ``score`` is then the rerank score, and the fused score is kept
            in metadata as ``retrieval_score`` beside the channel scores.
        rerank_candidates: how many store hits the reranker sees (default 50).

    ``QueryBundle.custom_embedding_strs`` (HyDE, ``HyDEQueryTransform``) are honoured: each string
    is encoded as a query and the channels are averaged (see :func:`bgem3._adapters.retrieval.encode_query_group`).
    Returned nodes keep the original ``node.hash`` although their metadata has the score keys, so
    ``QueryFusionRetriever`` deduplicates them against other retrievers' results.

    Example::

        >>> from llama_index.core import Document                                  # doctest: +SKIP
        >>> from llama_index_bgem3 import BGEM3HybridRetriever                     # doctest: +SKIP
        >>> retriever = BGEM3HybridRetriever.from_documents(
        ...     [Document(text="BGE M3 is an embedding model."), Document(text="Pandas eat bamboo.")],
        ...     "BAAI/bge-m3", similarity_top_k=1)                                 # doctest: +SKIP
        >>> hit = retriever.retrieve("What is BGE M3?")[0]                         # doctest: +SKIP
        >>> hit.node.text, round(hit.score, 3), hit.node.metadata["sparse_score"]  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Any,
        *,
        similarity_top_k: int = 4,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        candidates: int = 100,
        mode: str = "auto",
        filters: Optional[MetadataFilters] = None,
        metadata_key_prefix: str = "",
        reranker: Any = None,
        rerank_candidates: int = 50,
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise unknown_options_error("BGEM3HybridRetriever", kwargs, ["store", *_RETRIEVER_KWARGS], _HINTS)
        check_hybrid_store(store, builder="from_documents")
        check_fusion_mode(mode)  # a bad mode fails here, not at the first query
        store_fusion_mode(store, mode)
        if filters is not None and not isinstance(filters, MetadataFilters):
            raise TypeError(
                f"filters must be llama_index MetadataFilters; got {type(filters).__name__} "
                "(e.g. MetadataFilters(filters=[ExactMatchFilter(key='topic', value='pets')]))"
            )
        self.store = store
        self.similarity_top_k = _positive_int(similarity_top_k, "similarity_top_k")
        self.weights = check_weights(weights)
        self.candidates = _positive_int(candidates, "candidates")
        self.mode = mode
        self.filters = filters
        self._where = filters_to_where(filters)
        store_filter(store, self._where)  # bad filters fail here, not at the first query
        self.metadata_key_prefix = metadata_key_prefix
        self.reranker = None if reranker is None else load_reranker("BGEM3HybridRetriever", reranker)
        self.rerank_candidates = _positive_int(rerank_candidates, "rerank_candidates")
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[BaseNode],
        model_name_or_encoder: Any = None,
        *,
        show_progress: Optional[bool] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Build a :class:`bgem3.HybridIndex` holding ``nodes`` and a retriever on it.

        Retriever options (``similarity_top_k``, ``weights``, ``candidates``, ``mode``, ``filters``,
        ``metadata_key_prefix``, ``callback_manager``, ``verbose``) configure the retriever; other
        ``kwargs`` go to ``HybridIndex(model, **kwargs)`` (``device``, ``max_length``...); unknown ones
        raise ``TypeError`` naming them. The model (default ``"BAAI/bge-m3"``) is
        ``model_name_or_encoder``, or ``model_name=`` / ``encoder=``: it encodes nodes and queries.
        """
        from bgem3.index import HybridIndex

        mine = {k: kwargs.pop(k) for k in _RETRIEVER_KWARGS if k in kwargs}
        model, kwargs = store_builder_args("BGEM3HybridRetriever.from_nodes", model_name_or_encoder, kwargs,
                                           _RETRIEVER_KWARGS, _HINTS)
        if isinstance(nodes, (str, BaseNode)):
            raise TypeError(f"nodes must be a list of nodes; got one {type(nodes).__name__}: wrap it in a list")
        retriever = cls(HybridIndex(model, **kwargs), **mine)
        retriever.add_nodes(nodes, show_progress=show_progress)
        return retriever

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        model_name_or_encoder: Any = None,
        *,
        transformations: Optional[List[TransformComponent]] = None,
        show_progress: Optional[bool] = None,
        **kwargs: Any,
    ) -> "BGEM3HybridRetriever":
        """Split ``documents`` into nodes (``transformations``, default ``Settings.transformations``,
        i.e. a ``SentenceSplitter``, as ``VectorStoreIndex.from_documents`` does) and :meth:`from_nodes`.

        Pass ``transformations=[]`` to index each document whole.
        """
        nodes = cls._to_nodes(documents, transformations, show_progress)
        return cls.from_nodes(nodes, model_name_or_encoder, show_progress=show_progress, **kwargs)

    @staticmethod
    def _to_nodes(documents: Sequence[Document], transformations: Optional[List[TransformComponent]],
                  show_progress: Optional[bool]) -> List[BaseNode]:
        if transformations is None:
            transformations = Settings.transformations
        if isinstance(documents, (str, BaseNode)):
            raise TypeError(f"documents must be a list; got one {type(documents).__name__}: wrap it in a list")
        documents = list(documents)
        if not transformations:
            return documents
        return run_transformations(documents, transformations, show_progress=bool(show_progress))

    # ------------------------------------------------------------------ writing
    def add_nodes(self, nodes: Sequence[BaseNode], *, show_progress: Optional[bool] = None) -> List[str]:
        """Add (or, for an existing node id, replace) nodes in the store; returns their ids."""
        if isinstance(nodes, (str, BaseNode)):
            raise TypeError(f"nodes must be a list of nodes; got one {type(nodes).__name__}: wrap it in a list")
        records = [node_to_store(n) for n in nodes]
        if not records:
            return []
        ids, texts, metas = (list(x) for x in zip(*records))
        if show_progress is not None and self._store_takes("show_progress"):
            return list(self.store.add(texts, ids=ids, metadatas=metas, show_progress=show_progress))
        return list(self.store.add(texts, ids=ids, metadatas=metas))

    def add_documents(self, documents: Sequence[Document], *,
                      transformations: Optional[List[TransformComponent]] = None,
                      show_progress: Optional[bool] = None) -> List[str]:
        """Split documents into nodes (see :meth:`from_documents`) and add them; returns the node ids."""
        return self.add_nodes(self._to_nodes(documents, transformations, show_progress), show_progress=show_progress)

    def delete(self, node_ids: Sequence[str]) -> None:
        """Delete nodes by id from the store (a lone string raises ``TypeError``: pass a list)."""
        self.store.delete(check_list_arg(node_ids, "node_ids"))

    def _store_takes(self, name: str) -> bool:
        import inspect

        try:
            return name in inspect.signature(self.store.add).parameters
        except (TypeError, ValueError):
            return False

    # ------------------------------------------------------------------ reading
    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        queries = list(query_bundle.custom_embedding_strs or []) or [query_bundle.query_str]
        k = self.similarity_top_k
        hits = search_many(
            self.store, queries,
            k=k if self.reranker is None else max(k, self.rerank_candidates),
            weights=self.weights,
            filter=store_filter(self.store, self._where),  # per query: a Qdrant scan sees the current data
            candidates=self.candidates,
            mode=store_fusion_mode(self.store, self.mode),
        )
        if self.reranker is None:
            return [
                with_channel_scores(hit_to_node(h), h.dense_score, h.sparse_score, h.colbert_score, h.score,
                                    self.metadata_key_prefix, warn_on_collision=True, owner="BGEM3HybridRetriever")
                for h in hits
            ]
        # the store's candidates rescored by the cross-encoder (on the query string; the stored text); the
        # node's score is the rerank score, the fused score stays beside it as retrieval_score
        out = []
        for h, rs in rerank_hits(self.reranker, query_bundle.query_str, hits, k):
            nws = with_channel_scores(hit_to_node(h), h.dense_score, h.sparse_score, h.colbert_score, h.score,
                                      self.metadata_key_prefix, warn_on_collision=True, owner="BGEM3HybridRetriever",
                                      retrieval_score=True)
            nws.score = rs
            out.append(nws)
        return out

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        # the store's search is synchronous CPU/GPU work: keep it off the event loop
        return await asyncio.to_thread(self._retrieve, query_bundle)
