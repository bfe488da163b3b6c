"""Qdrant Edge (Qdrant's own Rust engine, in-process) behind the slice of ``QdrantClient`` the store uses.

:class:`EdgeClient` takes the very requests :class:`~bgem3.stores.qdrant.QdrantHybridStore`
sends to a Qdrant server -- ``qdrant_client.models`` objects: points, filters, prefetches,
re-scoring queries, search and quantisation parameters -- translates them one to one into
``qdrant_edge`` objects and has one Edge shard (``qdrant_edge.EdgeShard``) execute them. So
the query plans a server would run are executed by the same engine (segments, WAL, sparse
index, ``MAX_SIM`` multivectors, HNSW, quantisation, prefetch/rescore), without a server.
A request this translation does not know raises ``NotImplementedError`` naming it: nothing is
dropped silently.

An Edge shard is one collection. Its folder holds the engine's files (``edge_config.json``,
``segments/``, ``wal/``) and ``bgem3_collection.json``: the collection name and the metadata
the store records (model, dimensions), which Qdrant keeps in the collection config on a server.

Example::

    >>> import tempfile
    >>> from qdrant_client import models                                      # doctest: +SKIP
    >>> client = EdgeClient(tempfile.mkdtemp() + "/shard")                     # doctest: +SKIP
    >>> client.create_collection("c", vectors_config={"v": models.VectorParams(size=2,
    ...     distance=models.Distance.DOT)})                                    # doctest: +SKIP
    >>> client.upsert("c", points=[models.PointStruct(id=1, vector={"v": [1.0, 0.0]})])  # doctest: +SKIP
    >>> client.count("c").count                                                # doctest: +SKIP
    1
"""

from __future__ import annotations

import json
import os
import tarfile
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

#: The file in the shard folder that holds the collection name and the store's metadata.
SIDECAR = "bgem3_collection.json"
#: Files and folders that make a folder an Edge shard.
_SHARD_MARKERS = ("edge_config.json", "segments")

_EXTRA_HINT = "pip install 'bgem3[qdrant-edge]'  (qdrant-edge-py and qdrant-client)"


def import_edge():
    """``qdrant_edge``, or an ImportError naming the extra that installs it."""
    try:
        import qdrant_edge
    except ImportError as exc:
        raise ImportError(f"the Qdrant Edge backend (edge_path=) needs the qdrant-edge-py package: {_EXTRA_HINT}") from exc
    return qdrant_edge


def is_edge_shard(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is a folder holding an Edge shard (``edge_config.json`` + ``segments/``)."""
    return all(os.path.exists(os.path.join(path, m)) for m in _SHARD_MARKERS)


class EdgeError(RuntimeError):
    """The Edge engine refused a request; the message is the engine's, on one line."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class EdgeClient:
    """The ``QdrantClient`` methods :class:`~bgem3.stores.qdrant.QdrantHybridStore` calls, run by Qdrant Edge.

    Args:
        path: the shard folder. It is created (with the collection) by ``create_collection``;
            an existing shard is opened (the engine locks it: one open store per folder). A
            folder that exists, is not empty and is not an Edge shard is refused and left alone.
        optimizers: ``qdrant_edge.EdgeOptimizersConfig`` fields for a new shard
            (``indexing_threshold``, ``default_segment_number``, ...).
        max_search_threads: the engine's search thread pool size (default: from the CPU count).
    """

    def __init__(self, path: Union[str, os.PathLike], *, optimizers: Optional[Mapping[str, Any]] = None,
                 max_search_threads: Optional[int] = None) -> None:
        self._qe = import_edge()
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"edge_path {self.path!r} is a file, not a folder; give a folder for the Edge shard")
        if os.path.isdir(self.path) and os.listdir(self.path) and not is_edge_shard(self.path):
            raise ValueError(f"edge_path {self.path!r} is a folder that is not empty and holds no Qdrant Edge shard "
                             f"(no edge_config.json + segments/); it is left untouched: pick an empty or new folder")
        self._optimizers = dict(optimizers or {})
        self._max_search_threads = max_search_threads
        self.shard = None
        self._meta: dict = {}
        if is_edge_shard(self.path):
            self._open()

    # ------------------------------------------------------------------ shard lifecycle
    def _open(self) -> None:
        try:
            self.shard = self._qe.EdgeShard.load(self.path, self._edge_config_override())
        except Exception as exc:
            msg = _one_line(exc)
            if "WouldBlock" in msg or "lock" in msg.lower():
                raise EdgeError(f"the Edge shard at {self.path!r} is open in another store or process (the engine "
                                f"locks it); close() that store first") from exc
            raise EdgeError(f"cannot open the Edge shard at {self.path!r}: {msg}") from exc
        side = os.path.join(self.path, SIDECAR)
        if os.path.exists(side):
            try:
                with open(side, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as exc:
                raise EdgeError(f"{side!r} is unreadable ({_one_line(exc)}); it records the model the shard was built "
                                f"with: restore it or delete only that file (the check is then skipped)") from exc
            if not isinstance(meta, dict):
                raise EdgeError(f"{side!r} must hold a JSON object; got {type(meta).__name__}")
            self._meta = meta

    def _edge_config_override(self):
        if self._max_search_threads is None:
            return None
        return self._qe.EdgeConfig(max_search_threads=self._max_search_threads)

    def _require(self, name: str):
        if self.shard is None:
            raise ValueError(f"collection {name!r} does not exist: no Edge shard at {self.path!r}")
        return self.shard

    def _write_meta(self) -> None:
        side = os.path.join(self.path, SIDECAR)
        tmp = side + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, side)

    def close(self) -> None:
        """Flush and close the shard (releases the engine's lock on the folder)."""
        if self.shard is not None:
            try:
                self.shard.flush()
            finally:
                self.shard.close()
                self.shard = None

    def flush(self) -> None:
        if self.shard is not None:
            self.shard.flush()

    def optimize(self) -> bool:
        """Run the engine's segment optimizers now (HNSW graphs, quantised copies, vacuum)."""
        return bool(self.shard.optimize()) if self.shard is not None else False

    # ------------------------------------------------------------------ collections
    def collection_exists(self, collection_name: str) -> bool:
        return self.shard is not None

    def get_collection(self, collection_name: str):
        """A ``CollectionInfo``-shaped answer: ``config.params.vectors`` / ``sparse_vectors`` as
        ``qdrant_client.models`` (read back from the engine's ``edge_config.json``) and
        ``config.metadata``."""
        from qdrant_client import models

        self._require(collection_name)
        with open(os.path.join(self.path, "edge_config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        vectors = {name: models.VectorParams.model_validate(v) for name, v in (raw.get("vectors") or {}).items()}
        sparse = {name: models.SparseVectorParams.model_validate(v or {})
                  for name, v in (raw.get("sparse_vectors") or {}).items()}
        params = SimpleNamespace(vectors=vectors, sparse_vectors=sparse)
        return SimpleNamespace(config=SimpleNamespace(params=params, metadata=dict(self._meta.get("metadata") or {})),
                               points_count=self.shard.info().points_count)

    def create_collection(self, collection_name: str, vectors_config: Mapping[str, Any],
                          sparse_vectors_config: Optional[Mapping[str, Any]] = None, *,
                          shard_number: Optional[int] = None, replication_factor: Optional[int] = None,
                          write_consistency_factor: Optional[int] = None, metadata: Optional[Mapping] = None,
                          **kwargs: Any) -> bool:
        qe = self._qe
        for name, value in (("shard_number", shard_number), ("replication_factor", replication_factor),
                            ("write_consistency_factor", write_consistency_factor), *kwargs.items()):
            if value is not None:
                raise NotImplementedError(f"{name}= has no meaning for a Qdrant Edge shard (one shard, one node)")
        if self.shard is not None:
            raise ValueError(f"collection {collection_name!r} already exists at {self.path!r}")
        if not isinstance(vectors_config, Mapping):
            raise NotImplementedError("EdgeClient.create_collection takes named vectors (a dict name -> VectorParams)")
        vectors = {name: self._vector_params(p) for name, p in vectors_config.items()}
        sparse = {name: self._sparse_params(p) for name, p in (sparse_vectors_config or {}).items()}
        opt = None
        if self._optimizers:
            try:
                opt = qe.EdgeOptimizersConfig(**self._optimizers)
            except TypeError as exc:
                raise TypeError(f"edge optimizers {sorted(self._optimizers)}: {exc}; the fields are those of "
                                f"qdrant_edge.EdgeOptimizersConfig (indexing_threshold, default_segment_number, "
                                f"max_segment_size, deleted_threshold, vacuum_min_vector_number)") from None
        config = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse or None, optimizers=opt,
                               max_search_threads=self._max_search_threads)
        os.makedirs(self.path, exist_ok=True)
        self.shard = qe.EdgeShard.create(self.path, config)
        self._meta = {"collection_name": collection_name, "metadata": dict(metadata or {})}
        self._write_meta()
        return True

    def update_collection(self, collection_name: str, metadata: Optional[Mapping] = None, **kwargs: Any) -> bool:
        self._require(collection_name)
        if kwargs:
            raise NotImplementedError(f"EdgeClient.update_collection: only metadata= is supported, got {sorted(kwargs)}")
        if metadata is not None:
            self._meta.setdefault("metadata", {}).update(metadata)
            self._meta.setdefault("collection_name", collection_name)
            self._write_meta()
        return True

    def _vector_params(self, p):
        from qdrant_client import models

        qe = self._qe
        if p.distance != models.Distance.DOT:
            raise NotImplementedError(f"EdgeClient: distance {p.distance} (the store uses DOT only)")
        multi = None
        if p.multivector_config is not None:
            multi = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
        hnsw = None
        if p.hnsw_config is not None:
            h = p.hnsw_config
            hnsw = qe.HnswIndexConfig(m=16 if h.m is None else h.m, ef_construct=h.ef_construct or 100,
                                      full_scan_threshold=h.full_scan_threshold or 10000)
        return qe.EdgeVectorParams(size=p.size, distance=qe.Distance.Dot, on_disk=p.on_disk, multivector_config=multi,
                                   datatype=self._datatype(p.datatype), hnsw_config=hnsw,
                                   quantization_config=self._quantization(p.quantization_config))

    def _sparse_params(self, p):
        qe = self._qe
        on_disk = p.index.on_disk if p.index is not None else None
        if p.modifier is not None:
            raise NotImplementedError(f"EdgeClient: sparse modifier {p.modifier}")
        return qe.EdgeSparseVectorParams(on_disk=on_disk)

    def _datatype(self, dt):
        if dt is None:
            return None
        qe = self._qe
        table = {"float32": "Float32", "float16": "Float16", "uint8": "Uint8", "turbo8": "Turbo8", "turbo16": "Turbo16"}
        value = getattr(dt, "value", dt)
        if value not in table:
            raise NotImplementedError(f"Qdrant Edge has no vector datatype {value!r} (it has {sorted(table)})")
        return getattr(qe.VectorStorageDatatype, table[value])

    def _quantization(self, q):
        from qdrant_client import models

        if q is None:
            return None
        qe = self._qe
        if isinstance(q, models.ScalarQuantization):
            c = q.scalar
            return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=c.quantile, always_ram=c.always_ram)
        if isinstance(q, models.BinaryQuantization):
            c = q.binary
            enc = None
            if c.encoding is not None:
                enc = {"one_bit": qe.BinaryQuantizationEncoding.OneBit, "two_bits": qe.BinaryQuantizationEncoding.TwoBits,
                       "one_and_half_bits": qe.BinaryQuantizationEncoding.OneAndHalfBits}[c.encoding.value]
            return qe.BinaryQuantizationConfig(always_ram=c.always_ram, encoding=enc)
        if isinstance(q, models.TurboQuantization):
            c = q.turbo
            bits = None
            if c.bits is not None:
                bits = {"bits1": qe.TurboQuantBitSize.Bits1, "bits1_5": qe.TurboQuantBitSize.Bits1_5,
                        "bits2": qe.TurboQuantBitSize.Bits2, "bits4": qe.TurboQuantBitSize.Bits4,
                        "bits8": qe.TurboQuantBitSize.Bits8}[c.bits.value]
            return qe.TurboQuantQuantizationConfig(always_ram=c.always_ram, bits=bits)
        raise NotImplementedError(f"EdgeClient: quantization {type(q).__name__}")

    # ------------------------------------------------------------------ translation of requests
    def _filter(self, f):
        from qdrant_client import models

        if f is None:
            return None
        qe = self._qe
        if not isinstance(f, models.Filter):
            raise NotImplementedError(f"EdgeClient: filter of type {type(f).__name__}")
        if f.min_should is not None:
            raise NotImplementedError("EdgeClient: Filter.min_should")

        def conds(items):
            if items is None:
                return None
            if not isinstance(items, list):
                items = [items]
            return [self._condition(c) for c in items]

        return qe.Filter(must=conds(f.must), should=conds(f.should), must_not=conds(f.must_not))

    def _condition(self, c):
        from qdrant_client import models

        qe = self._qe
        if isinstance(c, models.Filter):
            return self._filter(c)
        if isinstance(c, models.IsEmptyCondition):
            return qe.IsEmptyCondition(c.is_empty.key)
        if isinstance(c, models.IsNullCondition):
            return qe.IsNullCondition(c.is_null.key)
        if isinstance(c, models.HasIdCondition):
            return qe.HasIdCondition(set(str(x) if not isinstance(x, int) else x for x in c.has_id))
        if isinstance(c, models.FieldCondition):
            unsupported = [n for n in ("geo_bounding_box", "geo_radius", "geo_polygon", "values_count")
                           if getattr(c, n, None) is not None]
            if unsupported:
                raise NotImplementedError(f"EdgeClient: FieldCondition.{unsupported[0]}")
            match = rng = None
            if c.match is not None:
                m = c.match
                if isinstance(m, models.MatchValue):
                    match = qe.MatchValue(self._match_value(m.value))
                elif isinstance(m, models.MatchAny):
                    match = qe.MatchAny(list(m.any))
                elif isinstance(m, models.MatchExcept):
                    match = qe.MatchExcept(list(m.except_))
                elif isinstance(m, models.MatchText):
                    match = qe.MatchText(m.text)
                else:
                    raise NotImplementedError(f"EdgeClient: match {type(m).__name__}")
            if c.range is not None:
                r = c.range
                if not isinstance(r, models.Range):
                    raise NotImplementedError(f"EdgeClient: range {type(r).__name__}")
                rng = qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
            return qe.FieldCondition(key=c.key, match=match, range=rng, is_empty=c.is_empty, is_null=c.is_null)
        raise NotImplementedError(f"EdgeClient: condition {type(c).__name__}")

    @staticmethod
    def _match_value(value):
        """qdrant-edge-py 0.9.0 reads a Python ``bool`` as an integer (``MatchValue(True)`` then
        matches no boolean payload: measured, and pinned by a test); a ``numpy.bool_`` reaches the
        engine as a boolean."""
        if isinstance(value, bool):
            import numpy as np

            return np.bool_(value)
        return value

    def _params(self, p):
        if p is None:
            return None
        qe = self._qe
        quant = None
        if p.quantization is not None:
            q = p.quantization
            quant = qe.QuantizationSearchParams(ignore=bool(q.ignore), rescore=q.rescore, oversampling=q.oversampling)
        return qe.SearchParams(hnsw_ef=p.hnsw_ef, exact=bool(p.exact), quantization=quant,
                               indexed_only=bool(p.indexed_only))

    def _vector(self, v):
        from qdrant_client import models

        if isinstance(v, models.SparseVector):
            return self._qe.SparseVector(indices=list(v.indices), values=list(v.values))
        if hasattr(v, "tolist"):
            v = v.tolist()
        return v

    def _query(self, query, using):
        from qdrant_client import models

        qe = self._qe
        if query is None:
            return None
        if isinstance(query, models.NearestQuery):
            query = query.nearest
        if isinstance(query, models.FusionQuery):
            if query.fusion == models.Fusion.RRF:
                return qe.Fusion.Rrf(k=60)
            raise NotImplementedError(f"EdgeClient: fusion {query.fusion}")
        if isinstance(query, models.RrfQuery):
            return qe.Fusion.Rrf(k=query.rrf.k if query.rrf.k is not None else 60, weights=query.rrf.weights)
        if isinstance(query, (list, models.SparseVector)) or hasattr(query, "tolist"):
            return qe.Query.Nearest(self._vector(query), using=using)
        raise NotImplementedError(f"EdgeClient: query {type(query).__name__}")

    def _prefetch(self, p):
        qe = self._qe
        nested = p.prefetch
        if nested is not None and not isinstance(nested, list):
            nested = [nested]
        return qe.Prefetch(limit=p.limit if p.limit is not None else 10, query=self._query(p.query, p.using),
                           prefetches=[self._prefetch(x) for x in nested] if nested else None,
                           params=self._params(p.params), filter=self._filter(p.filter),
                           score_threshold=p.score_threshold)

    @staticmethod
    def _with(value):
        if value is None:
            return None
        if isinstance(value, (bool, list)):
            return value
        raise NotImplementedError(f"EdgeClient: with_payload/with_vectors of type {type(value).__name__}")

    def _request(self, r):
        qe = self._qe
        if r.offset:
            raise NotImplementedError("EdgeClient: QueryRequest.offset")
        pre = r.prefetch
        if pre is not None and not isinstance(pre, list):
            pre = [pre]
        return qe.QueryRequest(limit=r.limit if r.limit is not None else 10, query=self._query(r.query, r.using),
                               prefetches=[self._prefetch(p) for p in pre] if pre else None,
                               with_vector=self._with(r.with_vector), with_payload=self._with(r.with_payload),
                               filter=self._filter(r.filter), score_threshold=r.score_threshold,
                               params=self._params(r.params))

    # ------------------------------------------------------------------ points
    def point(self, pid: str, dense, colbert, sparse, payload: dict, *, names: tuple[str, str, str]):
        """An Edge point straight from numpy arrays (``sparse``: ``(indices, values)`` or ``None``;
        ``colbert``: ``None`` for a document without ColBERT vectors)."""
        qe = self._qe
        vec: dict = {names[0]: dense}
        if colbert is not None:
            vec[names[1]] = colbert
        if sparse is not None:
            vec[names[2]] = qe.SparseVector(indices=sparse[0], values=sparse[1])
        return qe.Point(pid, vec, payload)

    def upsert(self, collection_name: str, points: Sequence[Any], wait: bool = True, **kwargs: Any) -> None:
        qe = self._qe
        shard = self._require(collection_name)
        if kwargs:
            raise NotImplementedError(f"EdgeClient.upsert: {sorted(kwargs)}")
        out = []
        for p in points:
            if isinstance(p, qe.Point):
                out.append(p)
                continue
            vec = p.vector
            if isinstance(vec, Mapping):
                vec = {name: self._vector(v) for name, v in vec.items()}
            else:
                vec = self._vector(vec)
            out.append(qe.Point(p.id, vec, p.payload))
        try:
            shard.update(qe.UpdateOperation.upsert_points(out))
        except Exception as exc:
            raise EdgeError(f"Qdrant Edge refused the upsert: {_one_line(exc)}") from exc

    def delete(self, collection_name: str, points_selector: Any, wait: bool = True, **kwargs: Any) -> None:
        from qdrant_client import models

        shard = self._require(collection_name)
        if isinstance(points_selector, models.PointIdsList):
            ids = list(points_selector.points)
        elif isinstance(points_selector, list):
            ids = points_selector
        else:
            raise NotImplementedError(f"EdgeClient.delete: selector {type(points_selector).__name__}")
        shard.update(self._qe.UpdateOperation.delete_points(ids))

    def retrieve(self, collection_name: str, ids: Sequence[Any], with_payload: Union[bool, list] = True,
                 with_vectors: Union[bool, list] = False, **kwargs: Any) -> list:
        shard = self._require(collection_name)
        if not ids:
            return []
        return shard.retrieve(list(ids), with_payload=self._with(with_payload), with_vector=self._with(with_vectors))

    def count(self, collection_name: str, count_filter: Any = None, exact: bool = True, **kwargs: Any):
        shard = self._require(collection_name)
        return SimpleNamespace(count=int(shard.count(self._qe.CountRequest(exact=bool(exact),
                                                                           filter=self._filter(count_filter)))))

    def scroll(self, collection_name: str, scroll_filter: Any = None, limit: int = 10, offset: Any = None,
               with_payload: Union[bool, list] = True, with_vectors: Union[bool, list] = False, **kwargs: Any):
        shard = self._require(collection_name)
        recs, nxt = shard.scroll(self._qe.ScrollRequest(offset=offset, limit=limit, filter=self._filter(scroll_filter),
                                                        with_payload=self._with(with_payload),
                                                        with_vector=self._with(with_vectors)))
        return list(recs), nxt

    def query_points(self, collection_name: str, **request: Any):
        from qdrant_client import models

        return self.query_batch_points(collection_name, [models.QueryRequest(**request)])[0]

    def query_batch_points(self, collection_name: str, requests: Iterable[Any], **kwargs: Any) -> list:
        shard = self._require(collection_name)
        batch = self._qe.QueryBatchRequest([self._request(r) for r in requests])
        try:
            answers = shard.query_batch(batch)
        except Exception as exc:
            raise EdgeError(f"Qdrant Edge refused the query: {_one_line(exc)}") from exc
        return [SimpleNamespace(points=list(points)) for points in answers]

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: Any, **kwargs: Any) -> None:
        qe = self._qe
        shard = self._require(collection_name)
        value = str(getattr(field_schema, "value", field_schema)).lower()
        table = {"keyword": "Keyword", "integer": "Integer", "float": "Float", "bool": "Bool", "geo": "Geo",
                 "text": "Text", "datetime": "Datetime", "uuid": "Uuid"}
        if value not in table:
            raise ValueError(f"payload index schema {field_schema!r} is not one of {sorted(table)}")
        shard.update(qe.UpdateOperation.create_field_index(field_name, getattr(qe.PayloadSchemaType, table[value])))

    # ------------------------------------------------------------------ snapshots
    def snapshot_manifest(self) -> Any:
        """The engine's snapshot manifest of the shard (segments and their file versions), after a flush."""
        shard = self._require("?")
        shard.flush()
        return shard.snapshot_manifest()

    def write_snapshot(self, target: Union[str, os.PathLike]) -> str:
        """Write the shard as a shard-snapshot archive (tar: ``segments/``, ``wal/``, ``edge_config.json``).

        The shard is flushed first; the archive has the layout of a Qdrant shard snapshot, which
        ``EdgeShard.unpack_snapshot`` restores and a Qdrant server recovers a shard from
        (``POST /collections/{name}/shards/0/snapshots/upload``). The target is written next to
        itself and renamed into place, so a failure leaves no half-written archive behind.
        """
        shard = self._require("?")
        target = os.path.abspath(os.fspath(target))
        if target == self.path or target.startswith(self.path + os.sep):
            raise ValueError(f"snapshot target {target!r} is inside the shard folder; write it elsewhere")
        if os.path.isdir(target):
            raise ValueError(f"snapshot target {target!r} is a folder; give a file name such as shard.snapshot")
        if os.path.lexists(target):
            raise FileExistsError(f"snapshot target {target!r} exists; it is left untouched: remove it or pick "
                                  f"another name")
        shard.flush()
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            with tarfile.open(tmp, "w") as tar:
                for name in sorted(os.listdir(self.path)):
                    if name == SIDECAR or name.endswith(".tmp"):
                        continue
                    tar.add(os.path.join(self.path, name), arcname=name)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return target
