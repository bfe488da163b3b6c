"""The ASGI app of ``bgem3 serve`` (Starlette): TEI, OpenAI and bgem3 routes over one batcher.

Routes:

=========================  ===================================================================
``POST /embed``, ``POST /``  TEI: dense vectors ``[[float]]``
``POST /embed_sparse``       TEI: BGE-M3 lexical weights ``[[{"index", "value"}]]``
``GET /info``                TEI's model info (+ a ``bgem3`` section RemoteEncoder reads)
``GET /health``              200 while the batcher runs, 503 once shutdown began (never needs a key)
``POST /v1/embeddings``      OpenAI embeddings (``float`` or ``base64``)
``GET /v1/models``           OpenAI model list
``POST /encode``             ours: dense + lexical + ColBERT in one call, query/document side
``GET /metrics``             Prometheus text format
=========================  ===================================================================

The event loop never runs the model: texts are tokenised in a thread pool and encoded by
the :class:`~bgem3.serve.scheduler.Batcher` worker thread. Each request is bounded (texts,
tokens per text and per request, body bytes, time); the queue is bounded (429 + Retry-After
when full); a client that goes away has its queued texts dropped.

Example::

    >>> import tempfile
    >>> from starlette.testclient import TestClient
    >>> from bgem3 import Encoder
    >>> from bgem3.testing import make_m3_checkpoint
    >>> app = create_app(Encoder(make_m3_checkpoint(tempfile.mkdtemp()), device="cpu"))
    >>> with TestClient(app) as client:
    ...     r = client.post("/embed", json={"inputs": ["hello"]})
    >>> r.status_code, len(r.json()), len(r.json()[0])
    (200, 1, 32)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .metrics import Metrics
from .scheduler import Batcher, BatchResult, QueueFull, ShuttingDown
from .shapes import (ApiError, encode_array, openai_error, parse_encode, parse_openai, parse_tei, tei_error)

try:  # fast JSON (in the `serve` extra); the stdlib otherwise (~15x slower on a batch of vectors)
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

logger = logging.getLogger("bgem3.serve")

__all__ = ["ServeConfig", "create_app"]

#: requests of at most this many characters are tokenised on the event loop; longer ones in a thread
_INLINE_TOKENIZE_CHARS = 4096


@dataclass
class ServeConfig:
    """Limits and behaviour of the server (``bgem3 serve --help`` documents each flag).

    Attributes:
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        served_model_name: the name reported in ``/info`` and accepted as OpenAI's ``model``
            (default: the model argument as given).
        max_client_batch_size: most texts in one request (413 beyond).
        max_input_length: most tokens per text (default: the encoder's ``max_length``).
        max_request_tokens: most tokens in one request, summed over its texts (413 beyond).
        max_body_bytes: most bytes in a request body (413 beyond).
        auto_truncate: truncate texts longer than ``max_input_length`` when the request
            does not say (TEI's ``truncate``); when false such texts get a 413.
        max_batch_tokens / max_batch_size: one forward pass.
        max_queued_tokens / max_queued_texts: the queue bound (429 beyond).
        request_timeout: seconds a request may wait for its vectors (504 beyond).
    """

    api_key: Optional[str] = None
    served_model_name: Optional[str] = None
    max_client_batch_size: int = 256
    max_input_length: Optional[int] = None
    max_request_tokens: int = 131072
    max_body_bytes: int = 8 * 1024 * 1024
    auto_truncate: bool = True
    max_batch_tokens: int = 16384
    max_batch_size: int = 64
    max_queued_tokens: int = 262144
    max_queued_texts: int = 4096
    request_timeout: float = 60.0


def _dumps(obj: Any) -> bytes:
    """JSON bytes; numpy arrays are written as nested lists without a ``tolist()`` copy (float32
    in the shortest form that reads back to the same float32)."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, separators=(",", ":"), default=_plain).encode()


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _loads(raw: bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(raw)
    return json.loads(raw)


def _json(obj: Any, status: int = 200, headers: Optional[dict] = None) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json", headers=headers)


async def _wait_disconnect(request: Request) -> None:
    """Return when the client has gone away (the body is already read)."""
    while True:
        t0 = time.monotonic()
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return
        if time.monotonic() - t0 < 0.001:  # a spurious empty body message: do not spin
            await asyncio.sleep(0.05)


class _Server:
    """State of one app: encoder, config, batcher, metrics."""

    def __init__(self, encoder: Any, config: ServeConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.metrics = Metrics()
        self.batcher = Batcher(encoder, max_batch_tokens=config.max_batch_tokens, max_batch_size=config.max_batch_size,
                               max_queued_tokens=config.max_queued_tokens, max_queued_texts=config.max_queued_texts,
                               metrics=self.metrics)
        self.name = config.served_model_name or str(encoder.model_name)
        self.max_input_length = min(config.max_input_length or encoder.max_length, encoder.model_max_length)
        self.aliases = {self.name, os.path.basename(os.path.normpath(self.name)), str(encoder.model_name),
                        os.path.basename(os.path.normpath(str(encoder.model_name)))}
        self._key = config.api_key.encode() if config.api_key else None
        self.draining = False
        tok = getattr(encoder, "tokenizer", None)
        self._loop_tokenizer = copy.deepcopy(tok) if tok is not None else None

    # ------------------------------------------------------------------ plumbing
    def start_draining(self) -> None:
        """Shutdown has begun: ``/health`` answers 503 from now on; requests are still served
        until the server closes its socket (``bgem3 serve --drain-seconds``)."""
        self.draining = True

    def check_auth(self, request: Request) -> None:
        if self._key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api-key)", kind="Unauthorized",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is {int(declared)} bytes; this server takes at most {limit} "
                                "(--max-body-bytes): send fewer or shorter texts per request")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over {limit} bytes (--max-body-bytes): send fewer or "
                                    "shorter texts per request")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ApiError(400, "empty request body: send a JSON object, e.g. {\"inputs\": [\"text\"]}")
        try:
            return _loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON object with "
                                "'Content-Type: application/json'") from None

    def template(self, texts: list[str], side: str, task: Optional[str] = None) -> list[str]:
        prof = self.encoder.profile
        if side == "query":
            return [prof.format_query(t, task) for t in texts]
        if side == "document":
            return [prof.format_passage(t) for t in texts]
        return texts

    async def tokenize(self, texts: list[str], truncate: Optional[bool], max_length: Optional[int]) -> list:
        ml = min(max_length or self.max_input_length, self.max_input_length)
        truncate = self.config.auto_truncate if truncate is None else truncate
        check = ml if truncate else ml + 1
        if not texts:
            return []
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS and self._loop_tokenizer is not None:
            # short requests: tokenise right here with the event loop's own tokenizer copy (no lock
            # shared with other threads, no thread hop: under CPU contention each hop costs a time slice)
            ids = self._loop_tokenizer(list(texts), truncation=True, max_length=check, padding=False,
                                       return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        else:
            ids = await asyncio.to_thread(self.encoder.tokenize, texts, check)
        if not truncate:
            for i, row in enumerate(ids):
                if len(row) > ml:
                    raise ApiError(413, f"input {i} is longer than {ml} tokens; send shorter text or "
                                        "\"truncate\": true (the server truncates on the right)")
        total = sum(len(r) for r in ids)
        if total > self.config.max_request_tokens:
            raise ApiError(413, f"the request has {total} tokens; this server takes at most "
                                f"{self.config.max_request_tokens} per request (--max-request-tokens): split it")
        return ids

    async def run(self, request: Request, ids: list, *, dense: bool, sparse: bool, colbert: bool) -> BatchResult:
        """Submit to the batcher; give up on client disconnect or timeout."""
        if (sparse or colbert) and not self.encoder.has_heads:
            raise ApiError(422, f"lexical / ColBERT output needs BGE-M3's head files, which the served model "
                                f"{self.name!r} does not have; ask for dense only", kind="Validation")
        work = asyncio.ensure_future(self.batcher.submit(ids, dense=dense, sparse=sparse, colbert=colbert))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=self.config.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work in done:
            try:
                return work.result()
            except QueueFull as exc:
                raise ApiError(429, str(exc), kind="Overloaded",
                               headers={"Retry-After": str(exc.retry_after)}) from None
            except ShuttingDown as exc:
                raise ApiError(503, str(exc), kind="Unhealthy", headers={"Retry-After": "1"}) from None
            except ApiError:
                raise
            except Exception as exc:
                logger.exception("encoding failed")
                raise ApiError(500, f"encoding failed: {type(exc).__name__}: {exc}", kind="Backend") from None
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        if gone in done:
            raise _ClientGone()
        raise ApiError(504, f"the request did not finish within {self.config.request_timeout:g} s "
                            "(--request-timeout); the server is busy: retry, or send fewer texts",
                       kind="Timeout", headers={"Retry-After": "1"})

    def check_dims(self, dims: Optional[int]) -> None:
        if dims is not None and dims != self.encoder.hidden_size:
            raise ApiError(422, f"`dimensions`={dims} is not supported: {self.name!r} was not trained for shorter "
                                f"(Matryoshka) vectors, so truncating them would give wrong similarities; "
                                f"omit it or send {self.encoder.hidden_size}", param="dimensions")

    def check_normalize(self, normalize: bool) -> None:
        if not normalize and self.encoder.profile.normalize:
            raise ApiError(422, "`normalize`: false is not supported: this model's reference output is L2-normalised "
                                "and the server does not keep the raw pooled vector; drop the field",
                           param="normalize")

    def dense_rows(self, res: BatchResult, normalize: bool) -> np.ndarray:
        dense = res.dense
        if normalize and not self.encoder.profile.normalize:
            norms = np.linalg.norm(dense, axis=1, keepdims=True)
            dense = dense / np.maximum(norms, 1e-12)
        return dense

    # ------------------------------------------------------------------ routes
    async def tei_embed(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_tei(body, sparse=False, max_texts=self.config.max_client_batch_size)
        self.check_dims(req.dimensions)
        self.check_normalize(req.normalize)
        ids = await self.tokenize(self.template(req.texts, req.side), req.truncate, None)
        res = await self.run(request, ids, dense=True, sparse=False, colbert=False)
        return _json(np.ascontiguousarray(self.dense_rows(res, req.normalize), dtype=np.float32))

    async def tei_embed_sparse(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_tei(body, sparse=True, max_texts=self.config.max_client_batch_size)
        ids = await self.tokenize(self.template(req.texts, req.side), req.truncate, None)
        res = await self.run(request, ids, dense=False, sparse=True, colbert=False)
        return _json([[{"index": int(i), "value": float(w[i])} for i in sorted(w)] for w in res.sparse])

    async def openai_embeddings(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_openai(body, max_texts=self.config.max_client_batch_size)
        if req.model not in self.aliases:
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves {self.name!r} "
                                f"(accepted names: {', '.join(sorted(map(repr, self.aliases)))}; GET /v1/models). "
                                f"Send model={self.name!r}, or start `bgem3 serve` with --served-model-name "
                                f"{req.model!r} to answer to the name your client sends", param="model")
        self.check_dims(req.dimensions)
        ids = await self.tokenize(req.texts, None, None)
        res = await self.run(request, ids, dense=True, sparse=False, colbert=False)
        dense = np.ascontiguousarray(self.dense_rows(res, True), dtype=np.float32)
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_array(row) if req.base64 else row} for i, row in enumerate(dense)]
        n = int(res.token_counts.sum())
        return _json({"object": "list", "data": data, "model": self.name,
                      "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def encode(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_encode(body, max_texts=self.config.max_client_batch_size)
        ids = await self.tokenize(self.template(req.texts, req.side, req.task), req.truncate, req.max_length)
        res = await self.run(request, ids, dense=req.dense, sparse=req.sparse, colbert=req.colbert)
        h = int(self.encoder.hidden_size)
        out: dict[str, Any] = {"model": self.name, "dim": h, "count": len(ids),
                               "token_counts": [int(x) for x in res.token_counts]}
        if req.dense:
            out["dense"] = ({"dtype": "float32", "shape": [len(ids), h], "data": encode_array(res.dense)}
                            if req.encoding == "base64" else np.ascontiguousarray(res.dense, dtype=np.float32))
        if req.sparse:
            out["sparse"] = [{"indices": [int(i) for i in sorted(w)], "values": [float(w[i]) for i in sorted(w)]}
                             for w in res.sparse]
        if req.colbert:
            vecs = res.colbert
            if req.encoding == "base64":
                cat = np.concatenate(vecs, axis=0) if vecs else np.zeros((0, h), np.float32)
                out["colbert"] = {"dtype": req.colbert_dtype, "dim": int(cat.shape[1]) if cat.ndim == 2 else h,
                                  "lengths": [int(v.shape[0]) for v in vecs],
                                  "data": encode_array(cat, req.colbert_dtype)}
            else:
                out["colbert"] = [np.ascontiguousarray(v.astype(req.colbert_dtype), dtype=np.float32) for v in vecs]
        return _json(out)

    async def info(self, request: Request) -> Response:
        enc = self.encoder
        prof = enc.profile
        c = self.config
        body = {
            "model_id": self.name, "model_sha": None, "model_dtype": str(enc.dtype).replace("torch.", ""),
            "model_type": {"embedding": {"pooling": prof.pooling}},
            "max_concurrent_requests": c.max_queued_texts, "max_input_length": self.max_input_length,
            "max_batch_tokens": c.max_batch_tokens, "max_batch_requests": c.max_batch_size,
            "max_client_batch_size": c.max_client_batch_size, "auto_truncate": c.auto_truncate,
            "tokenization_workers": 1, "version": _version(), "sha": None, "docker_label": None,
            "bgem3": {
                "dim": int(enc.hidden_size), "has_heads": bool(enc.has_heads),
                "colbert_dim": int(enc.colbert_linear.out_features) if enc.colbert_linear is not None else None,
                "profile": asdict(prof), "vocab_size": int(enc.vocab_size),
                "model_max_length": int(enc.model_max_length), "max_request_tokens": c.max_request_tokens,
                "max_body_bytes": c.max_body_bytes, "device": str(enc.device),
            },
        }
        return _json(body)

    async def health(self, request: Request) -> Response:
        if self.batcher.alive and not self.batcher.closing and not self.draining:
            return Response(b"", status_code=200)
        return Response(b"", status_code=503, headers={"Retry-After": "1"})

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                  "owned_by": "bgem3"}]})

    async def metrics_route(self, request: Request) -> Response:
        texts, tokens = self.batcher.depth()
        text = self.metrics.render(queue_texts=texts, queue_tokens=tokens, in_flight=self.batcher.in_flight)
        return Response(text, media_type="text/plain; version=0.0.4")


class _ClientGone(Exception):
    """The client disconnected: nothing is sent."""


def _version() -> str:
    from .. import __version__
    return f"bgem3-{__version__}"


def _wrap(server: _Server, route: str, handler: Callable[[Request], Awaitable[Response]], *, openai: bool = False,
          auth: bool = True) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            if auth:
                server.check_auth(request)
            response = await handler(request)
        except ApiError as err:
            response = _json(openai_error(err) if openai else tei_error(err), err.status, err.headers)
        except _ClientGone:
            response = Response(b"", status_code=499)
        except Exception as exc:  # a bug: say so in the API's shape, keep serving
            logger.exception("unexpected error on %s", route)
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="Backend")
            response = _json(openai_error(err) if openai else tei_error(err), 500)
        server.metrics.observe_request(route, response.status_code, time.perf_counter() - t0)
        return response
    return endpoint


def create_app(encoder: Any, config: Optional[ServeConfig] = None) -> Starlette:
    """The ASGI app serving ``encoder`` (a loaded :class:`~bgem3.Encoder`) with ``config``'s limits.

    Run it with any ASGI server (``uvicorn.run(app)``); ``bgem3 serve`` does that for you.
    """
    server = _Server(encoder, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        server.batcher.start()
        try:
            yield
        finally:  # uvicorn has already waited for in-flight requests; finish whatever is queued
            server.batcher.close()
            await asyncio.to_thread(server.batcher.stop, 30.0)

    s = server
    routes = [
        Route("/embed", _wrap(s, "/embed", s.tei_embed), methods=["POST"]),
        Route("/", _wrap(s, "/", s.tei_embed), methods=["POST"]),
        Route("/embed_sparse", _wrap(s, "/embed_sparse", s.tei_embed_sparse), methods=["POST"]),
        Route("/info", _wrap(s, "/info", s.info), methods=["GET"]),
        Route("/health", _wrap(s, "/health", s.health, auth=False), methods=["GET"]),
        Route("/v1/embeddings", _wrap(s, "/v1/embeddings", s.openai_embeddings, openai=True), methods=["POST"]),
        Route("/v1/models", _wrap(s, "/v1/models", s.models, openai=True), methods=["GET"]),
        Route("/encode", _wrap(s, "/encode", s.encode), methods=["POST"]),
        Route("/metrics", _wrap(s, "/metrics", s.metrics_route), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
