"""The ASGI app of ``bgem3 serve`` (Starlette): TEI, OpenAI and bgem3 routes over one batcher.

Routes:

=========================  ===================================================================
``POST /embed``, ``POST /``  TEI: dense vectors ``[[float]]``
``POST /embed_sparse``       TEI: BGE-M3 lexical weights ``[[{"index", "value"}]]``
``GET /info``                TEI's model info (+ a ``bgem3`` section RemoteEncoder reads)
``GET /health``              200 while the batcher runs, 503 once shutdown began (never needs a key)
``POST /v1/embeddings``      OpenAI embeddings (``float`` or ``base64``)
``GET /v1/models``           OpenAI model list
``POST /encode``             ours: dense + lexical + ColBERT in one call, query/document side;
                             ColBERT is float16 unless ``"colbert_dtype": "float32"`` (``/info``
                             says so under ``bgem3.encode_defaults``; RemoteEncoder asks float32)
``POST /rerank``             TEI rerank (``--reranker``): ``[{"index", "score"}]``, best first
``POST /v1/rerank``          Cohere / Jina / infinity rerank (``--reranker``): ``{"results": [...]}``
``GET /metrics``             Prometheus text format
=========================  ===================================================================

With a reranker (``create_app(encoder, config, reranker=...)``; ``encoder`` may be ``None`` for a
reranker-only server) the rerank routes get their own batcher with the same bounds; the routes of the
model that is not served answer 404 saying how to serve it.

The event loop never runs the model: texts are tokenised in a thread pool and encoded by
the :class:`~bgem3.serve.scheduler.Batcher` worker thread. Each request is bounded (texts,
tokens per text and per request, body bytes, time); the queue is bounded (429 + Retry-After
when full); a client that goes away has its queued texts dropped.

Limits every route gets, and how a new route gets them: the connection-level ones (header and
body deadlines, keep-alive, the connection cap, the header size; :mod:`bgem3.serve.protocol`) act
before any route runs, so they need nothing. A route that reads a body calls
:meth:`_Server.read_json` (``Content-Type: application/json`` or 415, ``--max-body-bytes`` or 413);
one that tokenises texts calls :meth:`_Server.tokenize` (each text cut to what the model reads,
``--max-request-tokens`` counted as it goes) or :meth:`_Server.encode_texts` (templates too); one
that runs a model goes through :meth:`_Server.run` (the batcher, ``--request-timeout`` counted
from the end of the body: :meth:`_Server.deadline`), and is wrapped with :func:`_wrap` (auth,
errors in the API's shape, a client gone = 499, metrics).

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
import functools
import hmac
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .metrics import Metrics
from .scheduler import Batcher, BatchResult, QueueFull, ShuttingDown
from .rerank import (RerankBackend, cohere_answer, finite_or_500, parse_cohere_rerank, parse_tei_rerank,
                     tei_answer)
from .textcut import cut_texts
from .._wire import encode_array
from .shapes import ApiError, openai_error, parse_encode, parse_openai, parse_tei, tei_error

try:  # fast JSON (in the `serve` extra); the stdlib otherwise (~15x slower on a batch of vectors)
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

logger = logging.getLogger("bgem3.serve")

__all__ = ["ServeConfig", "create_app"]

#: requests of at most this many characters are tokenised on the event loop; longer ones in a thread
_INLINE_TOKENIZE_CHARS = 4096
#: longer requests are tokenised this many characters at a time (after the cut), so the running token
#: total and the deadline are checked between slices
_SLICE_CHARS = 65536


def _slices(texts: list[str], chars: int) -> list[tuple[int, int]]:
    """``(start, end)`` runs of ``texts`` of about ``chars`` characters each (at least one text)."""
    out, start, size = [], 0, 0
    for i, t in enumerate(texts):
        if i > start and size + len(t) > chars:
            out.append((start, i))
            start, size = i, 0
        size += len(t)
    out.append((start, len(texts)))
    return out


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
        max_batch_tokens / max_batch_size: one forward pass. ``max_batch_tokens=None`` (the default) takes
            the model's own budget, ``Encoder.max_tokens_per_batch`` / ``Reranker.max_tokens_per_batch``:
            4096 on CPU (measured faster there, docs/serve.md), 16384 on a GPU; ``/info`` shows the value used.
        max_queued_tokens / max_queued_texts: the queue bound (429 beyond).
        request_timeout: seconds from the end of a request's body to its vectors, tokenising and
            queueing included (504 beyond).
        served_reranker_name: the reranker's name in ``/info`` and ``/v1/models``, accepted as
            ``/v1/rerank``'s ``model`` (default: the reranker's model argument; with no embedder served,
            ``served_model_name`` names the reranker).
        reranker_max_length: most tokens of one (query, passage) pair (default: the reranker's
            ``max_length``, FlagEmbedding's 512); longer pairs are cut as FlagEmbedding cuts them (query
            kept up to 3/4 of it, passage cut), or refused (413) when the request says ``truncate: false``
            or ``auto_truncate`` is off.
    """

    api_key: Optional[str] = None
    served_model_name: Optional[str] = None
    max_client_batch_size: int = 256
    max_input_length: Optional[int] = None
    max_request_tokens: int = 131072
    max_body_bytes: int = 8 * 1024 * 1024
    auto_truncate: bool = True
    max_batch_tokens: Optional[int] = None
    max_batch_size: int = 64
    max_queued_tokens: int = 262144
    max_queued_texts: int = 4096
    request_timeout: float = 60.0
    served_reranker_name: Optional[str] = None
    reranker_max_length: Optional[int] = None


def _batch_tokens(config: ServeConfig, model: Any) -> int:
    """Padded tokens per forward pass: ``config.max_batch_tokens`` when given, else the model's own
    ``max_tokens_per_batch`` (device-aware: 4096 on CPU, 16384 on a GPU), else the torch default for its device."""
    if config.max_batch_tokens is not None:
        return config.max_batch_tokens
    own = getattr(model, "max_tokens_per_batch", None)
    if isinstance(own, int) and own > 0:
        return own
    from ..encoder import default_tokens_per_batch

    return default_tokens_per_batch(getattr(model, "device", "cpu"))


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

    def __init__(self, encoder: Any, config: ServeConfig, reranker: Any = None) -> None:
        if encoder is None and reranker is None:
            raise ValueError("nothing to serve: give an encoder, a reranker, or both")
        self.encoder = encoder
        self.config = config
        self.metrics = Metrics()
        self._key = check_api_key(config.api_key).encode("ascii") if config.api_key else None
        self.draining = False
        self.batcher: Optional[Batcher] = None
        self._loop_tokenizer = None
        if encoder is not None:
            self.batcher = Batcher(encoder, max_batch_tokens=_batch_tokens(config, encoder),
                                   max_batch_size=config.max_batch_size, max_queued_tokens=config.max_queued_tokens,
                                   max_queued_texts=config.max_queued_texts, metrics=self.metrics)
            self.name = config.served_model_name or str(encoder.model_name)
            self.max_input_length = min(config.max_input_length or encoder.max_length, encoder.model_max_length)
            self.aliases = _aliases(self.name, encoder.model_name)
            tok = getattr(encoder, "tokenizer", None)
            self._loop_tokenizer = copy.deepcopy(tok) if tok is not None else None
        self.reranker = reranker
        self.rerank_batcher: Optional[Batcher] = None
        if reranker is not None:
            self.rerank_backend = RerankBackend(reranker)
            self.rerank_batcher = Batcher(self.rerank_backend, max_batch_tokens=_batch_tokens(config, reranker),
                                          max_batch_size=config.max_batch_size,
                                          max_queued_tokens=config.max_queued_tokens,
                                          max_queued_texts=config.max_queued_texts, metrics=self.metrics)
            self.rerank_name = (config.served_reranker_name
                                or (config.served_model_name if encoder is None else None) or str(reranker.model_name))
            self.rerank_aliases = _aliases(self.rerank_name, reranker.model_name)
            self.rerank_max_length = int(config.reranker_max_length or reranker.max_length)
            if encoder is None:
                self.name, self.aliases = self.rerank_name, self.rerank_aliases
                self.max_input_length = self.rerank_max_length

    def batchers(self) -> list[Batcher]:
        return [b for b in (self.batcher, self.rerank_batcher) if b is not None]

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
        # header values arrive latin-1 decoded: back to their bytes, compared with the (ASCII) key's
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1", "replace"),
                                                                 self._key):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api-key)", kind="Unauthorized",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(self, request: Request) -> Any:
        """The request's JSON body, within ``--max-body-bytes``. The body must be declared
        ``Content-Type: application/json`` (415 otherwise): a browser's cross-site "simple" POST
        (``text/plain``, form types) cannot send that without a CORS preflight, which this server
        never grants. Every route reading a body goes through here."""
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "application/json":
            shown = repr(ctype) if ctype else "none"
            raise ApiError(415, f"the request body must be JSON sent with 'Content-Type: application/json' "
                                f"(got {shown})", kind="Validation")
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

    def template(self, texts: list[str], side: str, task: Optional[str] = None,
                 examples: Optional[list] = None) -> list[str]:
        """The texts as the model's templates make them (what limits are counted on), with the
        checks a local ``Encoder.encode_queries`` / ``encode_documents`` makes (422 instead of ``ValueError``)."""
        prof = self.encoder.profile
        if examples is not None and not prof.icl:
            raise ApiError(422, f"`examples` are for in-context-learning models (bge-en-icl); {self.name!r} takes none",
                           param="examples")
        try:
            if side == "query":
                tmpl = prof.query_template
                if task is not None and not prof.icl and prof.task_instructions is None and \
                        not (tmpl and "{task}" in tmpl):
                    raise ValueError(f"`task` {task!r} was given but the {prof.name!r} profile's query template "
                                     f"({tmpl!r}) has no {{task}}")
                return [prof.format_query(t, task) for t in texts]
            if side == "document":
                return [prof.format_passage(t, task) for t in texts]
        except ValueError as exc:
            raise ApiError(422, str(exc), param="task") from None
        return texts

    def whole_request(self, side: str, task: Optional[str] = None) -> bool:
        """Whether ``side`` needs the encoder's own query / document path (not token-level batching):
        bge-en-icl queries (few-shot layout by tokens) and profiles that leave a prompt out of pooling."""
        prof = self.encoder.profile
        if side == "raw":
            return False
        if side == "query" and prof.icl:
            return True
        if prof.include_prompt:
            return False
        return bool(prof.query_prefix(task) if side == "query" else prof.passage_prefix(task))

    async def encode_texts(self, request: Request, texts: list[str], side: str, *, task: Optional[str] = None,
                           examples: Optional[list] = None, truncate: Optional[bool] = None,
                           max_length: Optional[int] = None, dense: bool = True, sparse: bool = False,
                           colbert: bool = False) -> BatchResult:
        """Template, check the limits, encode: the one way every route turns texts into rows, so a
        text gets the vector a local ``Encoder`` gives it (``encode`` / ``encode_queries`` /
        ``encode_documents`` by ``side``) whichever route it came by."""
        ids = await self.tokenize(self.template(texts, side, task, examples), truncate, max_length, request)
        if not self.whole_request(side, task):
            return await self.run(request, ids, dense=dense, sparse=sparse, colbert=colbert)
        enc = self.encoder
        ml = min(max_length or self.max_input_length, self.max_input_length)
        lock = getattr(enc, "_tokenizer_lock", None)
        cut = await asyncio.to_thread(cut_texts, enc.tokenizer, texts, ml, lock=lock)
        kwargs: dict = dict(task=task, dense=dense, sparse=sparse, colbert=colbert, max_length=ml, show_progress=False)
        if side == "query":
            fn = functools.partial(enc.encode_queries, cut, examples=examples, **kwargs)
        else:
            fn = functools.partial(enc.encode_documents, cut, **kwargs)
        tokens = sum(len(r) for r in ids)
        out = await self.run(request, None, dense=dense, sparse=sparse, colbert=colbert,
                             call=(fn, len(texts), tokens))
        return BatchResult(out.dense, out.sparse, out.colbert, np.asarray(out.token_counts, dtype=np.int64))

    def deadline(self, request: Request) -> float:
        """The request's deadline (``time.monotonic()``): ``--request-timeout`` seconds after its
        body was read, set on the first call. Tokenising and queueing both spend from it."""
        return request.scope.setdefault("bgem3.deadline", time.monotonic() + self.config.request_timeout)

    def timed_out(self) -> ApiError:
        return ApiError(504, f"the request did not finish within {self.config.request_timeout:g} s "
                             "(--request-timeout); the server is busy: retry, or send fewer texts",
                        kind="Timeout", headers={"Retry-After": "1"})

    async def tokenize(self, texts: list[str], truncate: Optional[bool], max_length: Optional[int],
                       request: Optional[Request] = None) -> list:
        """Token ids of ``texts`` under the request's limits. Each long text is first cut to what the
        model can read (:func:`~bgem3.serve.textcut.cut_texts`: the tokens kept are unchanged);
        texts are then tokenised a slice at a time, so a request over ``--max-request-tokens`` is
        refused as soon as its running total passes the limit, and one past its deadline gets 504."""
        ml = min(max_length or self.max_input_length, self.max_input_length)
        truncate = self.config.auto_truncate if truncate is None else truncate
        check = ml if truncate else ml + 1
        if not texts:
            return []
        deadline = self.deadline(request) if request is not None else time.monotonic() + self.config.request_timeout
        limit = self.config.max_request_tokens
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS and self._loop_tokenizer is not None:
            # short requests: tokenise right here with the event loop's own tokenizer copy (no lock
            # shared with other threads, no thread hop: under CPU contention each hop costs a time slice)
            ids = self._loop_tokenizer(list(texts), truncation=True, max_length=check, padding=False,
                                       return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            total = sum(len(r) for r in ids)
        else:
            ids, total = [], 0
            for a, b in _slices(texts, _SLICE_CHARS):
                if time.monotonic() > deadline:
                    raise self.timed_out()
                part = await asyncio.to_thread(self._tokenize_slice, texts[a:b], check)
                ids.extend(part)
                total += sum(len(r) for r in part)
                if total > limit:
                    break
        if not truncate:
            for i, row in enumerate(ids):
                if len(row) > ml:
                    raise ApiError(413, f"input {i} is longer than {ml} tokens; send shorter text or "
                                        "\"truncate\": true (the server truncates on the right)")
        if total > limit:
            more = "" if len(ids) == len(texts) else f" in its first {len(ids)} of {len(texts)} texts"
            raise ApiError(413, f"the request has {total} tokens{more}; this server takes at most "
                                f"{limit} per request (--max-request-tokens): split it")
        return ids

    def _tokenize_slice(self, texts: list[str], max_length: int) -> list:
        """Cut, then tokenise (in a worker thread)."""
        enc = self.encoder
        lock = getattr(enc, "_tokenizer_lock", None)
        cut = cut_texts(enc.tokenizer, texts, max_length, lock=lock)
        return enc.tokenize(cut, max_length)

    async def run(self, request: Request, ids: Optional[list], *, dense: bool, sparse: bool, colbert: bool,
                  call: Optional[tuple] = None, batcher: Optional[Batcher] = None) -> Any:
        """Submit to the batcher (the embedder's unless ``batcher`` is given) token ids, or ``call`` =
        ``(fn, texts, tokens)`` for :meth:`Batcher.submit_call`; give up on client disconnect or the
        request's deadline."""
        if (sparse or colbert) and not self.encoder.has_heads:
            raise ApiError(422, f"lexical / ColBERT output needs BGE-M3's head files, which the served model "
                                f"{self.name!r} does not have; ask for dense only", kind="Validation")
        batcher = batcher or self.batcher
        if call is not None:
            fn, n, tokens = call
            work = asyncio.ensure_future(batcher.submit_call(fn, texts=n, tokens=tokens))
        else:
            work = asyncio.ensure_future(batcher.submit(ids, dense=dense, sparse=sparse, colbert=colbert))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            left = max(0.0, self.deadline(request) - time.monotonic())
            done, _ = await asyncio.wait({work, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
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
        raise self.timed_out()

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
        res = await self.encode_texts(request, req.texts, req.side, truncate=req.truncate)
        return _json(np.ascontiguousarray(self.dense_rows(res, req.normalize), dtype=np.float32))

    async def tei_embed_sparse(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_tei(body, sparse=True, max_texts=self.config.max_client_batch_size)
        res = await self.encode_texts(request, req.texts, req.side, truncate=req.truncate, dense=False, sparse=True)
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
        res = await self.encode_texts(request, req.texts, "raw")
        dense = np.ascontiguousarray(self.dense_rows(res, True), dtype=np.float32)
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_array(row) if req.base64 else row} for i, row in enumerate(dense)]
        n = int(res.token_counts.sum())
        return _json({"object": "list", "data": data, "model": self.name,
                      "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def encode(self, request: Request) -> Response:
        body = await self.read_json(request)
        req = parse_encode(body, max_texts=self.config.max_client_batch_size)
        res = await self.encode_texts(request, req.texts, req.side, task=req.task, examples=req.examples,
                                      truncate=req.truncate, max_length=req.max_length, dense=req.dense,
                                      sparse=req.sparse, colbert=req.colbert)
        h = int(self.encoder.hidden_size)
        n = len(req.texts)
        out: dict[str, Any] = {"model": self.name, "dim": h, "count": n,
                               "token_counts": [int(x) for x in res.token_counts]}
        if req.dense:
            out["dense"] = ({"dtype": "float32", "shape": [n, h], "data": encode_array(res.dense)}
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

    # ------------------------------------------------------------------ rerank routes
    async def rerank_pairs(self, request: Request, query: str, texts: list[str],
                           truncate: Optional[bool]) -> tuple[np.ndarray, int]:
        """The raw scores of ``(query, text)`` for each text, through the rerank batcher; and the tokens."""
        ml = self.rerank_max_length
        truncate = self.config.auto_truncate if truncate is None else truncate
        query, texts = await asyncio.to_thread(self.rerank_backend.cut, query, texts, ml)
        ids = await asyncio.to_thread(self.rerank_backend.tokenize, query, texts, ml)
        if not truncate:
            cut = await asyncio.to_thread(self.rerank_backend.was_cut, query, texts, ids)
            for i, was_cut in enumerate(cut):
                if was_cut:
                    raise ApiError(413, f"the pair (query, texts[{i}]) is longer than {ml} tokens; send shorter text "
                                        "or \"truncate\": true (the passage is cut, the query kept, as FlagEmbedding "
                                        "does)")
        total = sum(len(r) for r in ids)
        if total > self.config.max_request_tokens:
            raise ApiError(413, f"the request has {total} tokens (query + passage, per candidate); this server takes at "
                                f"most {self.config.max_request_tokens} per request (--max-request-tokens): send "
                                "fewer candidates per request")
        res = await self.run(request, ids, dense=True, sparse=False, colbert=False, batcher=self.rerank_batcher)
        return finite_or_500(res.dense[:, 0]), total

    def _no_reranker(self) -> ApiError:
        return ApiError(404, f"this server serves no reranker (only the embedder {self.name!r}); start it with "
                             "`bgem3 serve --reranker MODEL` (beside --model, or alone)", kind="NotFound")

    async def tei_rerank(self, request: Request) -> Response:
        if self.reranker is None:
            raise self._no_reranker()
        body = await self.read_json(request)
        if isinstance(body, dict) and "documents" in body and "texts" not in body:
            return await self._cohere(body, request, "/rerank")  # infinity's shape on the same path
        req = parse_tei_rerank(body, max_texts=self.config.max_client_batch_size)
        raw, _ = await self.rerank_pairs(request, req.query, req.texts, req.truncate)
        return _json(tei_answer(req, raw))

    async def cohere_rerank(self, request: Request) -> Response:
        if self.reranker is None:
            raise self._no_reranker()
        return await self._cohere(await self.read_json(request), request, "/v1/rerank")

    async def _cohere(self, body: Any, request: Request, where: str) -> Response:
        req = parse_cohere_rerank(body, max_texts=self.config.max_client_batch_size, where=where)
        if req.model is not None and req.model not in self.rerank_aliases:
            raise ApiError(404, f"model {req.model!r} is not served here; this server's reranker is "
                                f"{self.rerank_name!r} (GET /v1/models)", param="model", kind="NotFound")
        raw, tokens = await self.rerank_pairs(request, req.query, req.texts, req.truncate)
        return _json(cohere_answer(req, raw, model=self.rerank_name, tokens=tokens))

    def reranker_info(self) -> dict:
        rr, c = self.reranker, self.config
        return {"model_id": self.rerank_name, "model": str(rr.model_name), "kind": str(getattr(rr, "kind", "encoder")),
                "max_input_length": self.rerank_max_length, "dtype": str(rr.dtype).replace("torch.", ""),
                "device": str(rr.device), "max_batch_tokens": self.rerank_batcher.max_batch_tokens,
                "max_client_batch_size": c.max_client_batch_size,
                "max_request_tokens": c.max_request_tokens, "max_body_bytes": c.max_body_bytes,
                "auto_truncate": c.auto_truncate, "normalize": "sigmoid",
                "routes": ["/rerank", "/v1/rerank"]}

    def no_embedder(self) -> ApiError:
        return ApiError(404, f"this server serves only the reranker {self.rerank_name!r}; for embeddings start "
                             "`bgem3 serve --model MODEL` (with --reranker to serve both)", kind="NotFound")

    async def info(self, request: Request) -> Response:
        enc = self.encoder
        c = self.config
        if enc is None:  # a reranker-only server: TEI's info for a reranker
            return _json({
                "model_id": self.rerank_name, "model_sha": None,
                "model_dtype": str(self.reranker.dtype).replace("torch.", ""),
                "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
                "max_concurrent_requests": c.max_queued_texts, "max_input_length": self.rerank_max_length,
                "max_batch_tokens": self.rerank_batcher.max_batch_tokens, "max_batch_requests": c.max_batch_size,
                "max_client_batch_size": c.max_client_batch_size, "auto_truncate": c.auto_truncate,
                "tokenization_workers": 1, "version": _version(), "sha": None, "docker_label": None,
                "bgem3": {"reranker": self.reranker_info(), "embedder": None},
            })
        prof = enc.profile
        body = {
            "model_id": self.name, "model_sha": None, "model_dtype": str(enc.dtype).replace("torch.", ""),
            "model_type": {"embedding": {"pooling": prof.pooling}},
            "max_concurrent_requests": c.max_queued_texts, "max_input_length": self.max_input_length,
            "max_batch_tokens": self.batcher.max_batch_tokens, "max_batch_requests": c.max_batch_size,
            "max_client_batch_size": c.max_client_batch_size, "auto_truncate": c.auto_truncate,
            "tokenization_workers": 1, "version": _version(), "sha": None, "docker_label": None,
            "bgem3": {
                "dim": int(enc.hidden_size), "has_heads": bool(enc.has_heads),
                "colbert_dim": int(enc.colbert_linear.out_features) if enc.colbert_linear is not None else None,
                "profile": asdict(prof), "vocab_size": int(enc.vocab_size),
                "model_max_length": int(enc.model_max_length), "max_request_tokens": c.max_request_tokens,
                "max_body_bytes": c.max_body_bytes, "device": str(enc.device),
                # POST /encode sends ColBERT rows as float16 unless the request says "colbert_dtype": "float32"
                "encode_defaults": {"colbert_dtype": "float16", "encoding": "base64", "side": "raw"},
            },
        }
        if self.reranker is not None:
            body["bgem3"]["reranker"] = self.reranker_info()
        return _json(body)

    async def health(self, request: Request) -> Response:
        if all(b.alive and not b.closing for b in self.batchers()) and not self.draining:
            return Response(b"", status_code=200)
        return Response(b"", status_code=503, headers={"Retry-After": "1"})

    async def models(self, request: Request) -> Response:
        names = ([self.name] if self.encoder is not None else []) + ([self.rerank_name] if self.reranker else [])
        return _json({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "bgem3"}
                                                 for n in names]})

    async def metrics_route(self, request: Request) -> Response:
        depths = [b.depth() for b in self.batchers()]  # both queues together (embedder + reranker)
        text = self.metrics.render(queue_texts=sum(d[0] for d in depths), queue_tokens=sum(d[1] for d in depths),
                                   in_flight=sum(b.in_flight for b in self.batchers()))
        return Response(text, media_type="text/plain; version=0.0.4")


def _aliases(name: str, model: Any) -> set:
    """The names a request may use for a served model: the served name, the model argument, their last path parts."""
    return {name, os.path.basename(os.path.normpath(name)), str(model), os.path.basename(os.path.normpath(str(model)))}


def check_api_key(key: str) -> str:
    """``key`` if it can be sent in an HTTP header and matched; else a ``ValueError`` saying why.

    Header values travel as bytes that servers read as latin-1, while clients encode a ``str``
    key in ways that differ (ASCII-only in httpx and requests, UTF-8 elsewhere): a key with
    non-ASCII characters, spaces or control characters would never match reliably."""
    if not isinstance(key, str) or not key:
        raise ValueError("--api-key must be a non-empty string")
    bad = [c for c in key if not (33 <= ord(c) <= 126)]
    if bad:
        raise ValueError(f"--api-key contains {bad[0]!r}, which an HTTP header cannot carry reliably; use printable "
                         "ASCII without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return key


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
        except (_ClientGone, ClientDisconnect):
            response = Response(b"", status_code=499)
        except Exception as exc:  # a bug: say so in the API's shape, keep serving
            logger.exception("unexpected error on %s", route)
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="Backend")
            response = _json(openai_error(err) if openai else tei_error(err), 500)
        server.metrics.observe_request(route, response.status_code, time.perf_counter() - t0)
        return response
    return endpoint


def create_app(encoder: Any, config: Optional[ServeConfig] = None, *, reranker: Any = None) -> Starlette:
    """The ASGI app serving ``encoder`` (a loaded :class:`~bgem3.Encoder`) with ``config``'s limits.

    ``reranker`` (a loaded :class:`bgem3.Reranker`) adds ``POST /rerank`` (TEI) and ``POST /v1/rerank``
    (Cohere / Jina / infinity); ``encoder`` may then be ``None`` (a reranker-only server).
    Run it with any ASGI server (``uvicorn.run(app)``); ``bgem3 serve`` does that for you.
    """
    server = _Server(encoder, config or ServeConfig(), reranker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        for b in server.batchers():
            b.start()
        try:
            yield
        finally:  # uvicorn has already waited for in-flight requests; finish whatever is queued
            for b in server.batchers():
                b.close()
            for b in server.batchers():
                await asyncio.to_thread(b.stop, 30.0)

    s = server
    if encoder is None:  # reranker only: the embedding routes say how to get embeddings
        async def _none(request: Request) -> Response:
            raise s.no_embedder()
        s.tei_embed = s.tei_embed_sparse = s.openai_embeddings = s.encode = _none  # type: ignore[method-assign]
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
        Route("/rerank", _wrap(s, "/rerank", s.tei_rerank), methods=["POST"]),
        Route("/v1/rerank", _wrap(s, "/v1/rerank", s.cohere_rerank, openai=True), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app
