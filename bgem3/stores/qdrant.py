"""The BGE-M3 hybrid index on Qdrant: same protocol, same scores, for corpora past one machine.

:class:`QdrantHybridStore` keeps one Qdrant collection with three named vectors per document:

* ``dense``   -- the normalised CLS vector, dot-product distance (HNSW graph: candidate search);
* ``sparse``  -- the lexical weights as a Qdrant sparse vector (inverted index: candidate search);
* ``colbert`` -- the ColBERT multi-vector, ``MAX_SIM`` comparator, **no HNSW graph** (``m=0``):
  it is only used to re-score candidates, never to search.

The payload holds ``{"id": <your id>, "text": ..., "metadata": {...}}``; the Qdrant point id is
``uuid5(BGEM3_NAMESPACE, your_id)``, so adding a document with an id that is already there
replaces it.

Search is the embedded index's algorithm: candidates are the dense top-``candidates`` united
with the lexical top-``candidates`` (both with the metadata filter applied), every candidate
gets all three channel scores, and they are ranked by the fused score
``(w_d*s_dense + w_l*s_lex + w_c*s_colbert) / sum(w)`` (FlagEmbedding's ``compute_score``) or by
reciprocal-rank fusion.

Why not one Qdrant ``FormulaQuery``? Qdrant's ``MAX_SIM`` is the *sum* over query tokens of
the best document match, BGE-M3's ColBERT score is the *mean*. A formula could divide by the
query's token count, but it returns only the fused number (callers need the three channel
scores too), and it sees a channel's score only for the points that channel's prefetch
returned. So the store asks Qdrant for each channel's score over the candidate set (one
batched request of three re-scoring queries over the same two prefetches: Qdrant computes the
dot products, the sparse dot product and MaxSim server-side, only ids and scores travel) and
fuses on the client with :mod:`bgem3.scoring`: the ColBERT sum is divided by the number of
query vectors, which is exact. ``rescore="client"`` instead downloads the candidates' vectors
and scores them with :mod:`bgem3.scoring` (slower; a cross-check).

Example::

    >>> from bgem3 import Encoder                                            # doctest: +SKIP
    >>> from bgem3.stores.qdrant import QdrantHybridStore                     # doctest: +SKIP
    >>> store = QdrantHybridStore(Encoder("BAAI/bge-m3"), location=":memory:")  # doctest: +SKIP
    >>> store.add(["BGE-M3 has three outputs.", "Qdrant shards collections."], ids=["a", "b"])  # doctest: +SKIP
    ['a', 'b']
    >>> store.search("what does BGE-M3 output?", k=1)[0].id                 # doctest: +SKIP
    'a'
"""

from __future__ import annotations

import math
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from .. import scoring
from ..fingerprint import same_model_name
from ..scoring import rank
from .._checks import positive_int as _check_pos_int
from .._loading import load_encoder
from .base import StoreBase, check_documents
from .base import check_str_list, encoder_from_model_name, encoder_shape, scored_hit
from ..scoring import DEFAULT_WEIGHTS
from ..types import FusionMode, Hit
from .qdrant_filters import _payload_key, to_qdrant, to_qdrant_filter
from .qdrant_errors import QdrantConnectionError, QdrantServerError, describe, readable_errors, require_qdrant_client, translate

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import QdrantClient

    from ..encoder import Encoder

__all__ = [
    "BGEM3_NAMESPACE",
    "CollectionMismatchError",
    "COLBERT_DATATYPES",
    "COLBERT_QUANTIZATIONS",
    "QdrantConnectionError",
    "QdrantHybridStore",
    "QdrantServerError",
    "QdrantUpsertError",
    "point_id",
    "to_qdrant_filter",
]

#: Fixed namespace of the UUIDv5 point ids: ``point_id(doc_id) = uuid5(BGEM3_NAMESPACE, doc_id)``.
BGEM3_NAMESPACE = uuid.UUID("6b3c1a5e-0f4d-5c2b-9e71-b9e3a0c4d2f8")

#: Collection-metadata key under which the store records what built the collection.
META_KEY = "bgem3"
#: Version of the layout (vector names, payload keys) recorded in the collection metadata.
FORMAT_VERSION = 1

DENSE, SPARSE, COLBERT = "dense", "sparse", "colbert"

#: HTTP statuses worth retrying an upsert on.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: ``server_colbert_datatype`` values: how Qdrant stores the ColBERT vectors.
#: ``turbo4`` exists on a Qdrant server only (Qdrant Edge 0.9 has turbo8/turbo16).
COLBERT_DATATYPES = ("float32", "float16", "turbo16", "turbo8", "turbo4")
#: ``colbert_quantization`` values: a quantised copy Qdrant keeps beside the original vectors.
COLBERT_QUANTIZATIONS = ("int8", "binary", "binary-1.5bit", "binary-2bit", "turbo-1bit", "turbo-1.5bit",
                         "turbo-2bit", "turbo-4bit", "turbo-8bit")


class CollectionMismatchError(ValueError):
    """An existing collection was built with another model, dimension or layout."""


class QdrantUpsertError(RuntimeError):
    """Part of an ``add``/``add_encoded`` call was not written (a batch failed after the bounded
    retries, or encoding a later chunk failed after earlier chunks were written).

    Attributes:
        written_ids: ids of the documents written before the failure (they are in the store).
        failed_ids: ids of the documents that were not written (add them again).
    """

    def __init__(self, message: str, written_ids: list[str], failed_ids: list[str]) -> None:
        super().__init__(message)
        self.written_ids = written_ids
        self.failed_ids = failed_ids


def point_id(doc_id: str) -> str:
    """The Qdrant point id of a document id: ``str(uuid5(BGEM3_NAMESPACE, doc_id))``.

    >>> point_id("a") == point_id("a") != point_id("b")
    True
    """
    return str(uuid.uuid5(BGEM3_NAMESPACE, doc_id))


# --------------------------------------------------------------------------- retries
def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures and 408/429/5xx answers: worth another try."""
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except Exception:  # pragma: no cover
        ResponseHandlingException = UnexpectedResponse = ()  # type: ignore[assignment]
    if isinstance(exc, ResponseHandlingException):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _RETRY_STATUSES
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except Exception:  # pragma: no cover
        pass
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED)
    except Exception:  # pragma: no cover
        pass
    return False


class QdrantHybridStore(StoreBase):
    """BGE-M3 hybrid (dense + lexical + ColBERT) search on a Qdrant collection.

    Same protocol as :class:`bgem3.HybridIndex` (``add``, ``add_encoded``, ``delete``, ``get``,
    ``search``, ``search_encoded``, ``len``, ``in``), same hits and scores, so
    ``BGEM3HybridRetriever`` (LangChain and LlamaIndex) takes either.

    Args:
        encoder: a :class:`bgem3.Encoder`, a model name/path to load one from, or ``None``
            (then only ``add_encoded``/``search_encoded`` work; give ``dim`` or open an
            existing collection).
        client: a ready ``QdrantClient``. Otherwise one is made from ``location``
            (``":memory:"``), ``path`` (qdrant-client's local on-disk mode), ``url`` + ``api_key``
            (a server or cluster), or ``edge_path``; with none of them, ``":memory:"``.
        edge_path: a folder for a **Qdrant Edge** shard: Qdrant's own engine run in this
            process (``pip install 'bgem3[qdrant-edge]'``). The store sends it the same requests
            it sends a server (prefetches, re-scoring queries, filters, quantisation), so this is
            the server's query plan executed by the server's engine, without a server. Created
            if missing, opened if it holds a shard; one open store per folder (the engine locks
            it). :meth:`snapshot` turns it into a shard snapshot a Qdrant server loads.
        edge_optimizers: ``qdrant_edge.EdgeOptimizersConfig`` fields for a new Edge shard
            (e.g. ``{"indexing_threshold": 1000}``: segments above 1000 KB get an HNSW graph and
            their quantised copies when :meth:`optimize` runs).
        collection_name: the collection; created if missing (idempotent), checked if present.
        model_name: the model the vectors come from: beside an ``encoder`` it must name that same
            model (else ValueError); with ``encoder=None`` it is recorded and checked against the
            collection (pass the model itself as ``encoder`` to load it).
        dim / colbert_dim: what is recorded and checked (default: the encoder's hidden size and
            ColBERT head width).
        shard_number / replication_factor / write_consistency_factor: passed to
            ``create_collection`` when the collection is created (cluster set-up; ignored by
            the local modes and for an existing collection).
        on_disk: keep vectors on disk on the server (``on_disk=True`` for all three).
        colbert_dtype: precision of the ColBERT vectors, as in :class:`bgem3.HybridIndex`:
            ``"float16"`` (default; values are rounded to float16 before upload, so scores equal
            the embedded index's default) or ``"float32"``.
        server_colbert_datatype: the Qdrant ``datatype`` of the ColBERT vector: ``"float32"``
            (default: Qdrant scores in float32, identical to the embedded index),
            ``"float16"`` (half the memory for ColBERT, the largest part of the collection;
            Qdrant then also rounds the *query* to float16), ``"turbo16"`` / ``"turbo8"``
            (Qdrant's turbo storage datatypes; ``"turbo4"`` on a server only). Measured
            tolerances and bytes per token are in docs/qdrant.md. ``"uint8"`` is refused:
            Qdrant's uint8 storage keeps integers 0..255 and rounds the query too, which has no
            exact mapping for BGE-M3's signed, normalised vectors (every score becomes 0).
            qdrant-client's local mode ignores the datatype (it scores float32 lists).
        colbert_quantization: a quantised copy of the ColBERT vectors Qdrant keeps beside the
            originals (``None``: none): ``"int8"`` (scalar), ``"binary"`` / ``"binary-1.5bit"`` /
            ``"binary-2bit"``, ``"turbo-1bit"`` ... ``"turbo-8bit"`` (TurboQuant). Built by the
            engine's optimizer for indexed segments (a server does it in the background; on
            Edge call :meth:`optimize`). With ``on_disk=True`` the originals stay on disk and
            only the codes are held in RAM (``always_ram``).
        colbert_rescore: with ``colbert_quantization``: ``True`` (default) scores the candidates'
            ColBERT channel with the original vectors (exact, the codes only save RAM);
            ``False`` scores them with the codes (approximate; recall in docs/qdrant.md).
        batch_size: points per upsert request.
        max_retries / retry_backoff: a failed upsert batch is retried up to ``max_retries``
            times on transient errors (connection errors, 408/429/5xx), sleeping
            ``retry_backoff * 2**attempt`` seconds between tries.
        rescore: where the three channel scores of the candidates are computed. ``"qdrant"``:
            by Qdrant, in one batched request; only ids and scores travel (a server scores the
            candidates only). ``"client"``: the candidates' vectors are fetched and scored with
            :mod:`bgem3.scoring`, the embedded index's own arithmetic. ``"auto"`` (default):
            ``"qdrant"`` for a server, ``"client"`` for qdrant-client's local mode, whose
            brute-force re-scoring scans the whole collection once per channel (fetching the
            candidates' vectors is cheaper there; see docs/benchmarks_qdrant.md).
        hnsw_ef: the HNSW beam width of the dense candidate search on a server (higher: closer
            to the exact dense top-N the embedded index takes; default: the collection's).
        exact_candidates: take the dense top-N by an exact scan instead of HNSW (the embedded
            index's rule, so the same candidates, at the cost of reading every dense vector;
            ColBERT is still computed for the candidates only, unlike ``exhaustive=True``).
        client_kwargs: extra ``QdrantClient(...)`` arguments (``timeout``, ``prefer_grpc``...)
            when the store makes the client.
        **encoder_kwargs: passed to ``Encoder(...)`` when ``encoder`` is a name/path.

    Example::

        >>> store = QdrantHybridStore("BAAI/bge-m3", url="http://localhost:6333",      # doctest: +SKIP
        ...                           collection_name="docs", shard_number=6, replication_factor=2)
        >>> store.add(["a text"], ids=["doc-1"], metadatas=[{"lang": "en"}])           # doctest: +SKIP
        ['doc-1']
        >>> [h.id for h in store.search("text", k=1, filter={"lang": "en"})]          # doctest: +SKIP
        ['doc-1']
    """

    def __init__(
        self,
        encoder: Union["Encoder", str, None] = None,
        *,
        client: Optional["QdrantClient"] = None,
        location: Optional[str] = None,
        path: Optional[Union[str, os.PathLike]] = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        collection_name: str = "bgem3",
        model_name: Optional[str] = None,
        dim: Optional[int] = None,
        colbert_dim: Optional[int] = None,
        shard_number: Optional[int] = None,
        replication_factor: Optional[int] = None,
        write_consistency_factor: Optional[int] = None,
        on_disk: Optional[bool] = None,
        colbert_dtype: Literal["float16", "float32"] = "float16",
        server_colbert_datatype: Literal["float32", "float16", "turbo16", "turbo8", "turbo4"] = "float32",
        colbert_quantization: Optional[str] = None,
        colbert_rescore: bool = True,
        edge_path: Optional[Union[str, os.PathLike]] = None,
        edge_optimizers: Optional[Mapping[str, Any]] = None,
        batch_size: int = 64,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
        rescore: Literal["auto", "qdrant", "client"] = "auto",
        hnsw_ef: Optional[int] = None,
        exact_candidates: bool = False,
        client_kwargs: Optional[Mapping[str, Any]] = None,
        **encoder_kwargs: Any,
    ) -> None:
        # the packages first: a missing one is named before any model is loaded
        require_qdrant_client()
        if edge_path is not None:
            from .qdrant_edge import import_edge

            import_edge()
        elif edge_optimizers is not None:
            raise ValueError("edge_optimizers= applies to a Qdrant Edge shard only; pass edge_path= too")
        if not isinstance(collection_name, str) or not collection_name:
            raise ValueError(f"collection_name must be a non-empty string; got {collection_name!r}")
        self.collection_name = collection_name
        self.batch_size = _check_pos_int(batch_size, "batch_size")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0; got {max_retries!r}")
        self.max_retries = max_retries
        if not (isinstance(retry_backoff, (int, float)) and retry_backoff >= 0):
            raise ValueError(f"retry_backoff must be a number of seconds >= 0; got {retry_backoff!r}")
        self.retry_backoff = float(retry_backoff)
        self._url = url
        if colbert_dtype not in ("float16", "float32"):
            raise ValueError(f'colbert_dtype must be "float16" or "float32"; got {colbert_dtype!r}')
        self.colbert_dtype = colbert_dtype
        if server_colbert_datatype == "uint8":
            raise ValueError('server_colbert_datatype="uint8" is refused: Qdrant\'s uint8 storage keeps integers '
                             '0..255 and rounds the query to them too, so BGE-M3\'s signed, normalised ColBERT vectors '
                             'would all score 0. Use "float16", "turbo16" or "turbo8", or colbert_quantization="int8"')
        if server_colbert_datatype not in COLBERT_DATATYPES:
            raise ValueError(f"server_colbert_datatype must be one of {COLBERT_DATATYPES}; got {server_colbert_datatype!r}")
        if edge_path is not None and server_colbert_datatype == "turbo4":
            raise ValueError('server_colbert_datatype="turbo4" exists on a Qdrant server only; Qdrant Edge 0.9 has '
                             '"turbo8" and "turbo16"')
        self.server_colbert_datatype = server_colbert_datatype
        if colbert_quantization is not None and colbert_quantization not in COLBERT_QUANTIZATIONS:
            raise ValueError(f"colbert_quantization must be None or one of {COLBERT_QUANTIZATIONS}; "
                             f"got {colbert_quantization!r}")
        self.colbert_quantization = colbert_quantization
        if not isinstance(colbert_rescore, bool):
            raise ValueError(f"colbert_rescore must be True or False; got {colbert_rescore!r}")
        if not colbert_rescore and colbert_quantization is not None and colbert_quantization.startswith("binary"):
            raise ValueError(
                f"colbert_quantization={colbert_quantization!r} with colbert_rescore=False is refused: Qdrant scores "
                f"binary codes on another scale than the dot product (measured: ColBERT scores off by ~380 on "
                f"MiniLM vectors), so the fused score would be meaningless. Keep colbert_rescore=True (the codes still "
                f"save RAM), or use a turbo code (\"turbo-1bit\" ... \"turbo-8bit\": estimates on the dot-product scale)")
        self.colbert_rescore = colbert_rescore
        if edge_path is not None:
            cluster = [n for n, v in (("shard_number", shard_number), ("replication_factor", replication_factor),
                                      ("write_consistency_factor", write_consistency_factor)) if v is not None]
            if cluster:
                raise ValueError(f"{', '.join(cluster)}= configure a Qdrant cluster; a Qdrant Edge shard (edge_path=) "
                                 f"is one shard on one node: drop them, or use url=")
        if rescore not in ("auto", "qdrant", "client"):
            raise ValueError(f'rescore must be "auto", "qdrant" or "client"; got {rescore!r}')
        self._sleep: Callable[[float], None] = time.sleep
        self.client = None

        encoder = load_encoder(encoder_from_model_name(encoder, model_name, dim, "QdrantHybridStore", load=False),
                               encoder_kwargs, owner="QdrantHybridStore")
        self.encoder = encoder
        self.client = self._make_client(client, location, path, url, api_key, dict(client_kwargs or {}), edge_path,
                                        edge_optimizers)
        if rescore == "auto":
            rescore = "client" if self._is_local() else "qdrant"
        self.rescore = rescore
        self.hnsw_ef = None if hnsw_ef is None else _check_pos_int(hnsw_ef, "hnsw_ef")
        if not isinstance(exact_candidates, bool):
            raise ValueError(f"exact_candidates must be True or False; got {exact_candidates!r}")
        if exact_candidates and self.hnsw_ef is not None:
            raise ValueError("exact_candidates=True scans without HNSW, so hnsw_ef= would do nothing; give one of them")
        self.exact_candidates = exact_candidates

        enc_name = enc_dim = enc_cdim = None
        if encoder is not None:
            enc_name, enc_dim, enc_cdim = encoder_shape(encoder, "QdrantHybridStore")
        if dim is not None:
            dim = _check_pos_int(dim, "dim")
            if enc_dim is not None and dim != enc_dim:
                raise ValueError(f"dim={dim} does not match the encoder's hidden size {enc_dim}; leave dim unset")
        if colbert_dim is not None:
            colbert_dim = _check_pos_int(colbert_dim, "colbert_dim")
            if enc_cdim is not None and colbert_dim != enc_cdim:
                raise ValueError(f"colbert_dim={colbert_dim} does not match the encoder's ColBERT width {enc_cdim}; "
                                 f"leave colbert_dim unset")
        self.model_name: Optional[str] = str(model_name) if model_name is not None else enc_name
        self.dim: Optional[int] = dim if dim is not None else enc_dim
        self.colbert_dim: Optional[int] = colbert_dim if colbert_dim is not None else (enc_cdim or self.dim)
        self._last_seq = 0
        try:
            self._ensure_collection(shard_number=shard_number, replication_factor=replication_factor,
                                    write_consistency_factor=write_consistency_factor, on_disk=on_disk)
        except Exception as exc:
            if client is None:  # ours: release it (an Edge shard's lock, a local folder's lock)
                try:
                    self.client.close()
                except Exception:  # pragma: no cover - the original error matters more
                    pass
            new = translate(exc, self._where())
            if new is None:
                raise
            raise new from exc

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _make_client(client, location, path, url, api_key, client_kwargs, edge_path=None, edge_optimizers=None):
        given = [n for n, v in (("client", client), ("location", location), ("path", path), ("url", url),
                                ("edge_path", edge_path)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of client=, location=, path=, url=, edge_path=; got {', '.join(given)}")
        if edge_path is not None:
            from .qdrant_edge import EdgeClient

            if api_key is not None or client_kwargs:
                raise ValueError("api_key=/client_kwargs= configure a QdrantClient; a Qdrant Edge shard (edge_path=) "
                                 "takes neither")
            return EdgeClient(edge_path, optimizers=edge_optimizers)
        if client is not None:
            if api_key is not None or client_kwargs:
                raise ValueError("api_key=/client_kwargs= apply only when the store makes the client; "
                                 "configure your QdrantClient instead")
            return client
        from qdrant_client import QdrantClient

        if path is not None:
            return QdrantClient(path=os.fspath(path), **client_kwargs)
        if url is not None:
            return QdrantClient(url=url, api_key=api_key, **client_kwargs)
        return QdrantClient(location=location or ":memory:", api_key=api_key, **client_kwargs)

    def _meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, "model_name": self.model_name, "dim": self.dim,
                "colbert_dim": self.colbert_dim, "colbert_dtype": self.colbert_dtype}

    def _where(self) -> str:
        """The server this store talks to, for error messages."""
        if self._url:
            return str(self._url)
        inner = getattr(self.client, "_client", None)
        for attr in ("rest_uri", "_rest_uri"):
            uri = getattr(inner, attr, None)
            if isinstance(uri, str):
                return uri
        if self._is_edge():
            return f"the Qdrant Edge shard {self.client.path!r}"
        return "the Qdrant server"

    def _is_edge(self) -> bool:
        from .qdrant_edge import EdgeClient

        return isinstance(self.client, EdgeClient)

    def _colbert_quantization_config(self):
        """The ``quantization_config`` of the ColBERT vector for ``colbert_quantization``."""
        from qdrant_client import models

        q = self.colbert_quantization
        if q is None:
            return None
        if q == "int8":
            return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
        if q.startswith("binary"):
            enc = {"binary": models.BinaryQuantizationEncoding.ONE_BIT,
                   "binary-1.5bit": models.BinaryQuantizationEncoding.ONE_AND_HALF_BITS,
                   "binary-2bit": models.BinaryQuantizationEncoding.TWO_BITS}[q]
            return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True, encoding=enc))
        bits = {"turbo-1bit": models.TurboQuantBitSize.BITS1, "turbo-1.5bit": models.TurboQuantBitSize.BITS1_5,
                "turbo-2bit": models.TurboQuantBitSize.BITS2, "turbo-4bit": models.TurboQuantBitSize.BITS4,
                "turbo-8bit": models.TurboQuantBitSize.BITS8}[q]
        return models.TurboQuantization(turbo=models.TurboQuantQuantizationConfig(always_ram=True, bits=bits))

    def _ensure_collection(self, *, shard_number, replication_factor, write_consistency_factor, on_disk) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.collection_name):
            self._check_existing()
            return
        if self.dim is None:
            raise ValueError(f"collection {self.collection_name!r} does not exist and there is no encoder to "
                             f"size it; pass encoder= or dim=")
        colbert_params = dict(size=self.colbert_dim, distance=models.Distance.DOT,
                              multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                              hnsw_config=models.HnswConfigDiff(m=0), on_disk=on_disk)
        if self.server_colbert_datatype != "float32":
            colbert_params["datatype"] = models.Datatype(self.server_colbert_datatype)
        if self.colbert_quantization is not None:
            colbert_params["quantization_config"] = self._colbert_quantization_config()
        self.client.create_collection(
            self.collection_name,
            vectors_config={
                DENSE: models.VectorParams(size=self.dim, distance=models.Distance.DOT, on_disk=on_disk),
                COLBERT: models.VectorParams(**colbert_params),
            },
            sparse_vectors_config={SPARSE: models.SparseVectorParams(
                index=models.SparseIndexParams(on_disk=on_disk) if on_disk is not None else None)},
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
            metadata={META_KEY: self._meta()},
        )

    def _check_existing(self) -> None:
        name = self.collection_name
        info = self.client.get_collection(name)
        params = info.config.params
        vectors = params.vectors if isinstance(params.vectors, Mapping) else {}
        sparse = params.sparse_vectors or {}
        if DENSE not in vectors or COLBERT not in vectors or SPARSE not in sparse:
            have = sorted(vectors) if vectors else ["<one unnamed vector>" if params.vectors else "<none>"]
            raise CollectionMismatchError(
                f"collection {name!r} exists but was not made by QdrantHybridStore: it needs named vectors "
                f"'dense', 'colbert' and sparse vector 'sparse', it has vectors {have} and sparse vectors "
                f"{sorted(sparse)}; pick another collection_name or delete that collection")
        existing_dim = int(vectors[DENSE].size)
        existing_cdim = int(vectors[COLBERT].size)
        if vectors[COLBERT].multivector_config is None:
            raise CollectionMismatchError(f"collection {name!r}: vector 'colbert' is not a multi-vector; "
                                          f"pick another collection_name or delete that collection")
        meta = (getattr(info.config, "metadata", None) or {}).get(META_KEY) or {}
        if self.dim is not None and existing_dim != self.dim:
            raise CollectionMismatchError(
                f"collection {name!r} holds {existing_dim}-dimensional vectors "
                f"(model {meta.get('model_name', 'unknown')!r}) but this store's encoder makes {self.dim}-dimensional "
                f"ones ({self.model_name!r}); use the model the collection was built with, or another collection_name")
        if self.colbert_dim is not None and existing_cdim != self.colbert_dim:
            raise CollectionMismatchError(
                f"collection {name!r} holds {existing_cdim}-dimensional ColBERT vectors but this store's encoder "
                f"makes {self.colbert_dim}-dimensional ones ({self.model_name!r}); use the model the collection was "
                f"built with, or another collection_name")
        if meta:
            version = meta.get("format_version")
            if version != FORMAT_VERSION:
                raise CollectionMismatchError(
                    f"collection {name!r} was written by bgem3 layout version {version}, this bgem3 reads version "
                    f"{FORMAT_VERSION}; re-index into a new collection")
            stored = meta.get("model_name")
            if self.model_name is not None and stored is not None and not same_model_name(stored, self.model_name):
                raise CollectionMismatchError(
                    f"collection {name!r} was built with model {stored!r}, this store encodes with "
                    f"{self.model_name!r}: scores would be meaningless. Use {stored!r}, or another collection_name")
            if self.model_name is None:
                self.model_name = stored
            self.colbert_dtype = meta.get("colbert_dtype", self.colbert_dtype)
        else:
            # a collection from a server without collection metadata, or made by hand with our layout
            if self.model_name is not None:
                try:
                    self.client.update_collection(name, metadata={META_KEY: {
                        **self._meta(), "dim": existing_dim, "colbert_dim": existing_cdim}})
                except Exception:  # older servers: nothing to record it in; the dimension check stands
                    pass
        self.dim = existing_dim
        self.colbert_dim = existing_cdim
        # the collection's ColBERT storage wins; one asked for explicitly that differs is an error
        dt = getattr(vectors[COLBERT], "datatype", None)
        existing_dt = "float32" if dt is None else str(getattr(dt, "value", dt))
        if self.server_colbert_datatype not in ("float32", existing_dt):
            raise CollectionMismatchError(
                f"collection {name!r} stores ColBERT vectors as {existing_dt!r}, not server_colbert_datatype="
                f"{self.server_colbert_datatype!r}; a datatype is fixed when the collection is created: leave it "
                f"unset, or re-index into another collection_name")
        self.server_colbert_datatype = existing_dt
        qc = getattr(vectors[COLBERT], "quantization_config", None)
        existing_q = None if qc is None else self._quantization_name(qc)
        if self.colbert_quantization is not None and self.colbert_quantization != existing_q:
            raise CollectionMismatchError(
                f"collection {name!r} has ColBERT quantization {existing_q!r}, not colbert_quantization="
                f"{self.colbert_quantization!r}; leave it unset (Qdrant's update_collection can change a "
                f"quantization_config), or use another collection_name")
        self.colbert_quantization = existing_q

    @staticmethod
    def _quantization_name(q) -> Optional[str]:
        """``colbert_quantization``'s name for a collection's ColBERT ``quantization_config``."""
        from qdrant_client import models

        if isinstance(q, models.ScalarQuantization):
            return "int8"
        if isinstance(q, models.BinaryQuantization):
            enc = getattr(q.binary.encoding, "value", None)
            return {"two_bits": "binary-2bit", "one_and_half_bits": "binary-1.5bit"}.get(enc, "binary")
        if isinstance(q, models.TurboQuantization):
            bits = getattr(q.turbo.bits, "value", None) or "bits4"
            return {"bits1": "turbo-1bit", "bits1_5": "turbo-1.5bit", "bits2": "turbo-2bit", "bits4": "turbo-4bit",
                    "bits8": "turbo-8bit"}.get(bits)
        return None

    # ------------------------------------------------------------------ writing
    _store_noun = "store"
    _encoder_fix = "create the store with encoder="

    @readable_errors
    def add(
        self,
        texts: Sequence[str],
        ids: Optional[Sequence[str]] = None,
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        *,
        batch_size: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> list[str]:
        """Encode ``texts`` as documents and upsert them; returns their ids.

        Ids default to fresh ``uuid4().hex`` strings. An id that is already in the collection is
        replaced (text, metadata and vectors), never duplicated. ``batch_size`` is the
        encoder's batch size; upserts go ``self.batch_size`` points at a time.
        """
        encoder = self._require_encoder("add")
        texts, ids, metadatas = check_documents(texts, ids, metadatas, store="Qdrant")
        if not texts:
            return []
        chunk = max(self.batch_size, 256)
        if show_progress is None:
            show_progress = len(texts) > chunk
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="Indexing", unit="doc")
        try:
            for start in range(0, len(texts), chunk):
                sl = slice(start, start + chunk)
                try:
                    out = encoder.encode_documents(texts[sl], dense=True, sparse=True, colbert=True,
                                                   batch_size=batch_size, show_progress=False)
                except Exception as exc:
                    if start == 0:
                        raise  # nothing was written
                    failed = list(ids[start:])
                    raise QdrantUpsertError(
                        f"encoding documents {ids[start]!r}..{ids[min(start + chunk, len(ids)) - 1]!r} failed "
                        f"({describe(exc)}) after {start} documents were written to collection "
                        f"{self.collection_name!r} (in .written_ids); fix the input and add the {len(failed)} in "
                        f".failed_ids again",
                        written_ids=list(ids[:start]), failed_ids=failed,
                    ) from exc
                self._upsert(ids[sl], texts[sl], metadatas[sl], out.dense, out.sparse, out.colbert,
                             already_written=ids[:start])
                if bar is not None:
                    bar.update(len(texts[sl]))
        finally:
            if bar is not None:
                bar.close()
        return list(ids)

    @readable_errors
    def add_encoded(
        self,
        ids: Optional[Sequence[str]],
        texts: Sequence[str],
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]],
        dense: np.ndarray,
        sparse: Sequence[Mapping[int, float]],
        colbert: Sequence[np.ndarray],
    ) -> list[str]:
        """Upsert documents whose vectors were computed already (``Encoder.encode_documents``)."""
        texts, ids, metadatas = check_documents(texts, ids, metadatas, store="Qdrant")
        n = len(texts)
        dense = np.asarray(dense, dtype=np.float32)
        if dense.ndim != 2 or dense.shape[0] != n:
            raise ValueError(f"dense must be a [{n}, dim] array for {n} texts; got shape {dense.shape}")
        if len(sparse) != n or len(colbert) != n:
            raise ValueError(f"got {n} texts but {len(sparse)} sparse weight dicts and {len(colbert)} ColBERT arrays")
        if n:
            self._upsert(ids, texts, metadatas, dense, list(sparse), list(colbert), already_written=[])
        return list(ids)

    def _colbert_values(self, vecs: np.ndarray) -> np.ndarray:
        vecs = np.asarray(vecs, dtype=np.float32)
        if self.colbert_dtype == "float16":
            vecs = vecs.astype(np.float16).astype(np.float32)
        return vecs

    def _check_vectors(self, ids, dense, sparse, colbert) -> None:
        """Every vector of the call is checked before the first upsert, so bad input writes nothing."""
        if self.dim is not None and dense.shape[1] != self.dim:
            raise ValueError(f"dense vectors have dimension {dense.shape[1]}, collection "
                             f"{self.collection_name!r} stores {self.dim}")
        if not np.isfinite(dense).all():
            raise ValueError("dense vectors contain NaN or infinity")
        cdim = self.colbert_dim or dense.shape[1]
        for i, doc_id in enumerate(ids):
            cb = colbert[i]
            if np.ndim(cb) != 2 or np.shape(cb)[1] != cdim:
                raise ValueError(f"ColBERT vectors of document {doc_id!r} must have shape (tokens, {cdim}); "
                                 f"got {np.shape(cb)}")
            if not np.isfinite(cb).all():
                raise ValueError(f"ColBERT vectors of document {doc_id!r} contain NaN or infinity")
            sw = sparse[i]
            if not isinstance(sw, Mapping):
                raise TypeError(f"sparse[{i}] must be a dict {{token_id: weight}}; got {type(sw).__name__}")
            if sw:
                if min(int(t) for t in sw) < 0:
                    raise ValueError(f"lexical token ids of document {doc_id!r} must be >= 0")
                if not all(math.isfinite(float(v)) for v in sw.values()):
                    raise ValueError(f"lexical weights of document {doc_id!r} contain NaN or infinity")

    def _points(self, ids, texts, metadatas, dense, sparse, colbert) -> list:
        from qdrant_client import models

        # Qdrant Edge takes the numpy arrays as they are: the same points, without the list and
        # pydantic round trip a server's JSON/gRPC needs (3-4x faster upserts at BGE-M3's shape)
        edge = self.client if self._is_edge() else None
        points = []
        for i, doc_id in enumerate(ids):
            cb = self._colbert_values(colbert[i])
            sw = sparse[i]
            idx = sorted(int(t) for t in sw)
            payload = {"id": doc_id, "text": texts[i], "metadata": metadatas[i], "seq": self._next_seq()}
            if edge is not None:
                points.append(edge.point(point_id(doc_id), np.ascontiguousarray(dense[i], dtype=np.float32),
                                         np.ascontiguousarray(cb, dtype=np.float32) if len(cb) else None,
                                         (idx, [float(sw[t]) for t in idx]) if idx else None, payload,
                                         names=(DENSE, COLBERT, SPARSE)))
                continue
            vector: dict = {DENSE: dense[i].tolist()}
            if len(cb):  # a document without ColBERT vectors scores 0 on that channel
                vector[COLBERT] = cb.tolist()
            if idx:
                vector[SPARSE] = models.SparseVector(indices=idx, values=[float(sw[t]) for t in idx])
            points.append(models.PointStruct(
                id=point_id(doc_id), vector=vector,
                payload={"id": doc_id, "text": texts[i], "metadata": metadatas[i], "seq": self._next_seq()},
            ))
        return points

    def _next_seq(self) -> int:
        """Insertion stamp (nanoseconds, strictly increasing in this process): ties in the fused
        score are broken by it, oldest first, as :class:`bgem3.HybridIndex` breaks them by storage
        order (a re-added document moves to the end in both)."""
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def _upsert(self, ids, texts, metadatas, dense, sparse, colbert, already_written) -> None:
        self._check_vectors(ids, dense, sparse, colbert)
        written = list(already_written)
        for start in range(0, len(ids), self.batch_size):
            sl = slice(start, start + self.batch_size)
            points = self._points(ids[sl], texts[sl], metadatas[sl], dense[sl], sparse[sl], colbert[sl])
            attempt = 0
            while True:
                try:
                    self.client.upsert(self.collection_name, points=points, wait=True)
                    break
                except Exception as exc:
                    if not _is_transient(exc) or attempt >= self.max_retries:
                        failed = list(ids[start:])
                        tries = f" after {attempt + 1} tries" if _is_transient(exc) else ""
                        raise QdrantUpsertError(
                            f"writing documents {ids[sl][0]!r}..{ids[sl][-1]!r} to collection "
                            f"{self.collection_name!r} failed{tries}: {describe(exc)}. {len(written)} documents were "
                            f"written; add the {len(failed)} in .failed_ids again",
                            written_ids=written, failed_ids=failed,
                        ) from exc
                    self._sleep(self.retry_backoff * (2 ** attempt))
                    attempt += 1
            written.extend(ids[sl])

    # ------------------------------------------------------------------ reading / deleting
    def _retrieve(self, pids: list[str], with_vectors: Union[bool, list[str]] = False,
                  with_payload: Union[bool, list[str]] = True) -> dict:
        out = {}
        for start in range(0, len(pids), 1024):
            for rec in self.client.retrieve(self.collection_name, ids=pids[start:start + 1024],
                                            with_payload=with_payload, with_vectors=with_vectors):
                out[str(rec.id)] = rec
        return out

    @readable_errors
    def get(self, ids: Sequence[str]) -> list[Hit]:
        """The stored documents with these ids, in order (scores 0). Unknown ids raise ``KeyError``."""
        ids = check_str_list(ids, "ids")
        recs = self._retrieve([point_id(x) for x in ids])
        missing = [x for x in ids if point_id(x) not in recs]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in collection {self.collection_name!r}: {missing[:10]}")
        return [self._hit(recs[point_id(x)]) for x in ids]

    @readable_errors
    def delete(self, ids: Sequence[str], *, ignore_missing: bool = False) -> None:
        """Delete documents by id.

        Unknown ids raise ``KeyError`` naming them and nothing is deleted, unless
        ``ignore_missing=True`` (then they are skipped).
        """
        from qdrant_client import models

        ids = list(dict.fromkeys(check_str_list(ids, "ids")))
        if not ids:
            return
        pids = [point_id(x) for x in ids]
        if not ignore_missing:
            recs = self._retrieve(pids, with_payload=False)
            missing = [x for x, p in zip(ids, pids) if p not in recs]
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in collection {self.collection_name!r}: {missing[:10]}; "
                               f"nothing was deleted (pass ignore_missing=True to skip unknown ids)")
        self.client.delete(self.collection_name, points_selector=models.PointIdsList(points=pids), wait=True)

    @readable_errors
    def __len__(self) -> int:
        return int(self.client.count(self.collection_name, exact=True).count)

    @readable_errors
    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        try:
            doc_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: never an id of a stored document (add refuses it)
            return False
        return bool(self.client.retrieve(self.collection_name, ids=[point_id(doc_id)], with_payload=False))

    def __reduce__(self) -> tuple:
        raise TypeError(
            "QdrantHybridStore holds a live Qdrant client and cannot be pickled or deep-copied (nor can a retriever "
            "over it); build a new QdrantHybridStore(url=..., collection_name=...) where you need it, or use "
            "bgem3.HybridIndex, which pickles"
        )

    def __repr__(self) -> str:
        where = f"edge_path={self.client.path!r}, " if self._is_edge() else ""
        return (f"QdrantHybridStore({where}collection={self.collection_name!r}, model={self.model_name!r}, "
                f"dim={self.dim}, rescore={self.rescore!r})")

    @staticmethod
    def _hit(rec, score: float = 0.0, d: float = 0.0, s: float = 0.0, c: float = 0.0) -> Hit:
        payload = rec.payload or {}
        return scored_hit(payload.get("id", str(rec.id)), payload.get("text", ""), dict(payload.get("metadata") or {}),
                          score, d, s, c)

    # ------------------------------------------------------------------ search
    # search(query, ...) is StoreBase.search: checks, encode_queries, then search_encoded
    _query_encode_kwargs = {"show_progress": False}

    @readable_errors
    def native_filter(self, where: Any) -> Any:
        """What ``search(filter=...)`` takes for a :class:`bgem3.filters.Where` tree: a Qdrant ``Filter``
        (:func:`bgem3.stores.qdrant_filters.to_qdrant`; tests Qdrant cannot run are evaluated on this
        collection's stored metadata and sent as an id condition)."""
        return to_qdrant(where, self)

    def search_encoded(
        self,
        dense_q: np.ndarray,
        sparse_q: Mapping[int, float],
        colbert_q: np.ndarray,
        k: int = 4,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        *,
        filter: Optional[Mapping[str, Any]] = None,
        candidates: int = 100,
        mode: FusionMode = "auto",
        rrf_k: int = 60,
        exhaustive: bool = False,
    ) -> list[Hit]:
        """:meth:`search` with an already-encoded query (``Encoder.encode_queries`` outputs)."""
        w, mode = self._search_args(k, weights, candidates, mode, rrf_k)
        return self._search_checked(dense_q, sparse_q, colbert_q, k, w, filter=filter, candidates=candidates,
                                    mode=mode, rrf_k=rrf_k, exhaustive=exhaustive)

    def _search_checked(self, dense_q: Any, sparse_q: Any, colbert_q: Any, k: int, w: tuple[float, float, float],
                        *, filter: Any, candidates: int, mode: str, rrf_k: float, exhaustive: bool) -> list[Hit]:
        # search_encoded's work, its arguments checked once (w checked, mode resolved)
        qfilter = to_qdrant_filter(filter)
        dense_q = np.asarray(dense_q, dtype=np.float32).reshape(-1)
        colbert_q = np.asarray(colbert_q, dtype=np.float32)
        if self.dim is not None and dense_q.shape[0] != self.dim:
            raise ValueError(f"query dense vector has dimension {dense_q.shape[0]}, collection stores {self.dim}")
        cdim = self.colbert_dim or dense_q.shape[0]
        if colbert_q.ndim != 2 or colbert_q.shape[1] != cdim:
            raise ValueError(f"query ColBERT vectors must have shape (tokens, {cdim}); got {colbert_q.shape}")
        if not isinstance(sparse_q, Mapping):
            raise TypeError(f"sparse query must be a dict {{token_id: weight}}; got {type(sparse_q).__name__}")
        sparse_q = {int(t): float(v) for t, v in sparse_q.items()}

        if exhaustive:
            limit = int(self.client.count(self.collection_name, count_filter=qfilter, exact=True).count)
        else:
            limit = 2 * candidates
        if limit == 0:
            return []
        if self.rescore == "qdrant" and len(colbert_q) > 0:
            cand = self._scores_qdrant(dense_q, sparse_q, colbert_q, qfilter, candidates, limit, exhaustive)
        else:
            cand = self._scores_client(dense_q, sparse_q, colbert_q, qfilter, candidates, exhaustive)
        pids, seqs, d, s, c = cand
        if not pids:
            return []
        # candidates in insertion order, as HybridIndex holds them in storage order: ties keep it
        order = np.argsort(seqs, kind="stable")
        pids = [pids[i] for i in order]
        d, s, c = d[order], s[order], c[order]
        fused, top = rank(d, s, c, w, k, mode, rrf_k)
        recs = self._retrieve([pids[i] for i in top])
        return [self._hit(recs[pids[i]], fused[i], d[i], s[i], c[i]) for i in top if pids[i] in recs]

    def _is_local(self) -> bool:
        """qdrant-client's local mode (``:memory:`` / ``path=``) always searches exactly."""
        try:
            from qdrant_client.local.qdrant_local import QdrantLocal
        except Exception:  # pragma: no cover
            return False
        return isinstance(getattr(self.client, "_client", None), QdrantLocal)

    def _sparse_vector(self, sparse_q: Mapping[int, float]):
        from qdrant_client import models

        idx = sorted(sparse_q)
        return models.SparseVector(indices=idx, values=[sparse_q[t] for t in idx])

    def _prefetch(self, dense_q, sparse_q, qfilter, candidates) -> list:
        from qdrant_client import models

        params = None
        if self.exact_candidates and not self._is_local():
            params = models.SearchParams(exact=True)
        elif self.hnsw_ef is not None and not self._is_local():
            params = models.SearchParams(hnsw_ef=self.hnsw_ef)
        pre = [models.Prefetch(query=dense_q.tolist(), using=DENSE, limit=candidates, filter=qfilter, params=params)]
        if sparse_q:
            pre.append(models.Prefetch(query=self._sparse_vector(sparse_q), using=SPARSE, limit=candidates,
                                       filter=qfilter))
        return pre

    def _scores_qdrant(self, dense_q, sparse_q, colbert_q, qfilter, candidates, limit, exhaustive):
        """Each channel's score over the candidate set, computed by Qdrant (one batched request).

        Three re-scoring queries share the same two prefetches (dense top-N, lexical top-N), so
        each sees exactly the candidate set; the dense one also returns the insertion stamps.
        """
        from qdrant_client import models

        channel_queries = [(DENSE, dense_q.tolist()), (COLBERT, colbert_q.tolist())]
        if sparse_q:
            channel_queries.append((SPARSE, self._sparse_vector(sparse_q)))
        payload = {DENSE: ["seq"], COLBERT: False, SPARSE: False}
        quant = None
        if self.colbert_quantization is not None and not self._is_local():
            quant = models.QuantizationSearchParams(rescore=self.colbert_rescore)
        if exhaustive:
            exact = not self._is_local()

            def params(name):
                if not exact and name != COLBERT:
                    return None
                return models.SearchParams(exact=exact, quantization=quant if name == COLBERT else None) \
                    if (exact or quant is not None) else None

            requests = [models.QueryRequest(query=q, using=name, filter=qfilter, limit=limit,
                                            with_payload=payload[name], params=params(name))
                        for name, q in channel_queries]
        else:
            pre = self._prefetch(dense_q, sparse_q, qfilter, candidates)
            colbert_params = models.SearchParams(quantization=quant) if quant is not None else None
            requests = [models.QueryRequest(prefetch=pre, query=q, using=name, filter=qfilter, limit=limit,
                                            with_payload=payload[name], params=colbert_params if name == COLBERT else None)
                        for name, q in channel_queries]
        responses = self.client.query_batch_points(self.collection_name, requests=requests)
        by_channel = {name: {str(p.id): float(p.score) for p in resp.points}
                      for (name, _), resp in zip(channel_queries, responses)}
        # every document has a dense vector, so the dense list is the whole candidate set; a
        # sparse re-score leaves out documents sharing no token with the query (score 0), a
        # ColBERT one those stored without ColBERT vectors (score 0)
        dense_pts = responses[0].points
        pids = [str(p.id) for p in dense_pts]
        seqs = np.array([int((p.payload or {}).get("seq", 0)) for p in dense_pts], dtype=np.int64)
        d = np.array([p.score for p in dense_pts], dtype=np.float64)
        sparse_map = by_channel.get(SPARSE, {})
        s = np.array([sparse_map.get(p, 0.0) for p in pids], dtype=np.float64)
        # Qdrant's MAX_SIM sums over the query vectors; BGE-M3's ColBERT score is the mean
        c = np.array([by_channel[COLBERT].get(p, 0.0) for p in pids], dtype=np.float64) / float(len(colbert_q))
        return pids, seqs, d, s, c

    def _scores_client(self, dense_q, sparse_q, colbert_q, qfilter, candidates, exhaustive):
        """Each channel's score over the candidate set, computed here from the stored vectors."""
        from qdrant_client import models

        if exhaustive:
            pids = self._scroll_ids(qfilter)
        else:
            requests = [models.QueryRequest(query=p.query, using=p.using, filter=qfilter, limit=candidates,
                                            params=p.params, with_payload=False)
                        for p in self._prefetch(dense_q, sparse_q, qfilter, candidates)]
            responses = self.client.query_batch_points(self.collection_name, requests=requests)
            pids = list(dict.fromkeys(str(p.id) for resp in responses for p in resp.points))
        empty = np.zeros(0)
        if not pids:
            return [], np.zeros(0, dtype=np.int64), empty, empty, empty
        recs = self._retrieve(pids, with_vectors=[DENSE, SPARSE, COLBERT], with_payload=["seq"])
        pids = [p for p in pids if p in recs]
        seqs = np.array([int((recs[p].payload or {}).get("seq", 0)) for p in pids], dtype=np.int64)
        dense_docs = np.array([recs[p].vector[DENSE] for p in pids], dtype=np.float32)
        sparse_docs, colbert_docs = [], []
        for p in pids:
            vec = recs[p].vector
            sv = vec.get(SPARSE)
            sparse_docs.append({} if sv is None else dict(zip(sv.indices, sv.values)))
            cb = vec.get(COLBERT)
            colbert_docs.append(np.zeros((0, colbert_q.shape[1]), np.float32)
                                if cb is None else np.asarray(cb, dtype=np.float32))
        d = (dense_docs @ dense_q).astype(np.float64)
        s = scoring.lexical_scores([sparse_q], sparse_docs)[0] if sparse_q else np.zeros(len(pids))
        c = scoring.colbert_scores(colbert_q, colbert_docs).astype(np.float64)
        return pids, seqs, d, s, c

    def _scroll_ids(self, qfilter) -> list[str]:
        pids: list[str] = []
        offset = None
        while True:
            recs, offset = self.client.scroll(self.collection_name, scroll_filter=qfilter, limit=1024, offset=offset,
                                              with_payload=False, with_vectors=False)
            pids.extend(str(r.id) for r in recs)
            if offset is None:
                break
        return pids

    # ------------------------------------------------------------------ extras
    @readable_errors
    def create_metadata_index(self, field: str, schema: str = "keyword") -> None:
        """Create a Qdrant payload index on ``metadata.<field>`` (speeds up filters on a server).

        ``schema`` is a Qdrant payload schema type: ``"keyword"``, ``"integer"``, ``"float"``,
        ``"bool"``, ... Local mode has no payload indexes (it scans), so there this does nothing.
        """
        key = _payload_key(field)
        if self._is_local():
            return
        self.client.create_payload_index(self.collection_name, field_name=key, field_schema=schema)

    def iter_ids(self) -> Iterator[str]:
        """All document ids in the collection (scrolls through it)."""
        offset = None
        while True:
            try:
                recs, offset = self.client.scroll(self.collection_name, limit=1024, offset=offset,
                                                  with_payload=["id"], with_vectors=False)
            except Exception as exc:
                new = translate(exc, self._where())
                if new is None:
                    raise
                raise new from exc
            for r in recs:
                yield (r.payload or {}).get("id", str(r.id))
            if offset is None:
                break

    def close(self) -> None:
        """Close the client (flushes an Edge shard; releases a local ``path=`` or ``edge_path=`` store's lock)."""
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ Qdrant Edge: optimise, snapshot
    def _require_edge(self, what: str):
        if not self._is_edge():
            raise NotImplementedError(
                f"{what}() is for a Qdrant Edge store (edge_path=); a Qdrant server optimises in the background and "
                f"makes snapshots with its own API (client.create_shard_snapshot / POST /collections/NAME/snapshots)")
        return self.client

    def optimize(self) -> bool:
        """Run Qdrant Edge's segment optimizers now: merge segments, build HNSW graphs and the
        ``colbert_quantization`` codes for segments past ``indexing_threshold``, vacuum deleted
        points. A server does this by itself; returns whether anything changed.

        Example::

            >>> store = QdrantHybridStore(None, dim=8, colbert_dim=8, edge_path="./shard")  # doctest: +SKIP
            >>> store.optimize()                                                           # doctest: +SKIP
            False
        """
        return self._require_edge("optimize").optimize()

    def snapshot(self, target: Union[str, os.PathLike]) -> str:
        """Write this Edge store as a Qdrant **shard snapshot** archive; returns its path.

        Build offline, ship to a cluster: create the collection on the server with the same
        layout (``QdrantHybridStore(encoder, url=..., collection_name=...)`` with the same
        ``server_colbert_datatype`` / ``colbert_quantization``), then upload the archive as
        shard 0 (docs/qdrant.md has the ``curl`` command). ``qdrant_edge.EdgeShard.unpack_snapshot``
        restores it into an Edge shard folder, which ``QdrantHybridStore(edge_path=...)`` opens.
        The collection metadata (model, dimensions) is not part of a shard snapshot: the
        server's collection holds it.

        Example::

            >>> store.snapshot("docs.snapshot")                                 # doctest: +SKIP
            '/abs/path/docs.snapshot'
        """
        return self._require_edge("snapshot").write_snapshot(target)

    def snapshot_manifest(self) -> Any:
        """The Edge engine's snapshot manifest of this shard (segment ids -> file versions)."""
        return self._require_edge("snapshot_manifest").snapshot_manifest()
