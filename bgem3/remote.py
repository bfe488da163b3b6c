"""RemoteEncoder: the :class:`~bgem3.Encoder` contract over HTTP, against ``bgem3 serve``.

``RemoteEncoder(url)`` asks the server's ``GET /info`` what it serves (dimension, heads,
query / passage templates, limits) and then answers ``encode`` / ``encode_queries`` /
``encode_documents`` with the same :class:`~bgem3.EncodeOutput` a local encoder returns
(float32 exact: dense and ColBERT travel as little-endian float32 bytes). It *is* an
``Encoder`` for every class that takes one (``HybridIndex``, ``QdrantHybridStore``, the
LangChain and LlamaIndex embeddings, sparse embeddings, retrievers and rerankers), and those
classes also accept the URL itself where they take a model name.

Transport: one pooled ``httpx`` client (keep-alive), bounded retries with exponential
backoff on 429 / 502 / 503 / 504 and connection errors (``Retry-After`` honoured, capped),
a total deadline per request (``timeout``: connect to last byte, however the server paces its
bytes), answers checked field by field against what was asked and ``/info`` and bounded in size
while they stream (:func:`check_encode_answer`, :func:`answer_bytes_bound`), long lists split into
requests under the server's limits and sent ``concurrency`` at a time. Async twins (``aencode``, ``aencode_queries``,
``aencode_documents``) for the frameworks' ``aembed_*``.

Example::

    >>> from bgem3 import HybridIndex                                   # doctest: +SKIP
    >>> from bgem3.remote import RemoteEncoder                          # doctest: +SKIP
    >>> enc = RemoteEncoder("http://127.0.0.1:8080", api_key="s3cret")  # doctest: +SKIP
    >>> out = enc.encode_queries(["what is BGE-M3?"], sparse=True)      # doctest: +SKIP
    >>> out.dense.shape, type(out.sparse[0])                            # doctest: +SKIP
    ((1, 1024), <class 'dict'>)
    >>> index = HybridIndex(enc)                                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ._checks import check_examples, check_texts as _check_texts, positive_int as _check_positive_int
from ._http_client import (RETRY_STATUSES, HttpClient, RemoteError, RemoteUnavailable, is_url, seconds,
                           server_message)
from ._wire import COLBERT_DTYPES, decode_array
from .encoder import EncodeOutput, Encoder
from .profiles import Profile

__all__ = ["RemoteEncoder", "RemoteError", "RemoteUnavailable", "answer_bytes_bound", "check_encode_answer", "is_url",
           "remote_encoder_for"]

class RemoteEncoder(HttpClient, Encoder):
    """An encoder whose forward pass runs on a ``bgem3 serve`` server.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8080"`` (a path prefix behind a proxy is kept).
        api_key: the server's ``--api-key`` (default: ``$BGEM3_API_KEY``), sent as a bearer token.
        timeout: seconds one HTTP request may take in all, connect to last byte (each retry gets its own).
        max_retries: retries after the first try on 429/502/503/504 and connection errors.
        backoff: first retry delay in seconds, doubled each retry (with jitter), capped at ``max_backoff``.
        batch_size: most texts per request (default and cap: the server's ``max_client_batch_size``).
        max_length: truncation length sent with each request (default: the server's).
        colbert_dtype: ``"float32"`` (exact, default) or ``"float16"`` (half the bytes) for ColBERT.
        concurrency: requests in flight at once when a call is split into several.
        headers: extra HTTP headers (e.g. for a proxy).
        verify: TLS verification (``False`` or a CA bundle path), passed to httpx.

    Attributes (the same names a local :class:`~bgem3.Encoder` has): ``model_name``, ``hidden_size``,
    ``has_heads``, ``profile`` (query / passage templates), ``max_length``, ``model_max_length``,
    ``vocab_size``, ``device`` and ``dtype`` (the server's), ``path`` (the URL).
    """

    _client_name = "RemoteEncoder"

    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 0.25, max_backoff: float = 8.0, batch_size: Optional[int] = None,
                 max_length: Optional[int] = None, colbert_dtype: str = "float32", concurrency: int = 4,
                 headers: Optional[dict] = None, verify: Union[bool, str] = True) -> None:  # noqa: D107
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be 'float32' or 'float16'; got {colbert_dtype!r}")
        self.timeout = seconds("timeout", timeout)
        self.colbert_dtype = colbert_dtype
        self._connect(url, api_key, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                      concurrency=concurrency, headers=headers, verify=verify, client_timeout=self.timeout)
        _install_deadlines(self._client)  # `timeout` bounds each request in all, not each socket wait

        info = self._request_sync("GET", "/info", None)
        try:
            ours = info["bgem3"]
            prof = ours["profile"]
            self.model_name = str(info["model_id"])
            self.hidden_size = int(ours["dim"])
            self._has_heads = bool(ours["has_heads"])
            self.colbert_dim = int(ours["colbert_dim"]) if ours.get("colbert_dim") else None
            self.profile = Profile(**prof)
            if self.profile.examples is not None:
                self.profile = replace(self.profile, examples=tuple(self.profile.examples))
            self._server_profile = self.profile  # templates the server applies itself (see _side)
            self.model_max_length = int(info["max_input_length"])
            self.vocab_size = int(ours["vocab_size"])
            self.device = str(ours.get("device", "remote"))
            self.dtype = str(info.get("model_dtype", "float32"))
            self.server_batch_size = int(info["max_client_batch_size"])
            self.max_request_tokens = int(ours["max_request_tokens"])
            self.max_body_bytes = int(ours["max_body_bytes"])
            for name in ("hidden_size", "model_max_length", "vocab_size", "server_batch_size", "max_request_tokens",
                         "max_body_bytes"):
                if not 0 < getattr(self, name) < 1 << 40:
                    raise ValueError(f"{name}={getattr(self, name)} is not a size")
            if self.colbert_dim is not None and not 0 < self.colbert_dim < 1 << 20:
                raise ValueError(f"colbert_dim={self.colbert_dim} is not a size")
        except (KeyError, TypeError, ValueError) as exc:
            self.close()
            raise RemoteError(f"{self.url}/info does not look like a bgem3 server's ({exc!r}); RemoteEncoder talks to "
                              "`bgem3 serve` (for a plain TEI server use a TEI client)", 200) from None
        if batch_size is not None:
            _check_positive_int(batch_size, "batch_size")
        self.batch_size = min(batch_size or self.server_batch_size, self.server_batch_size)
        if max_length is not None:
            _check_positive_int(max_length, "max_length")
        self.max_length = min(max_length or self.model_max_length, self.model_max_length)
        self.colbert_linear = None  # no local heads: the stores read the ColBERT size from colbert_dim
        self.sparse_linear = None

    # ------------------------------------------------------------------ what it is
    @property
    def has_heads(self) -> bool:  # type: ignore[override]
        """Whether the served model has BGE-M3's lexical and ColBERT heads."""
        return self._has_heads

    def __repr__(self) -> str:
        return f"RemoteEncoder({self.url!r}, model={self.model_name!r}, dim={self.hidden_size})"

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes a local Encoder has and a remote one does not hold
        if name in ("model", "tokenizer", "_packed", "_special_ids", "_tokenizer_lock", "pad_token_id"):
            raise AttributeError(f"RemoteEncoder has no {name!r}: the model runs on the server at "
                                 f"{self.__dict__.get('url', '?')}; use a local bgem3.Encoder for that")
        raise AttributeError(f"'RemoteEncoder' object has no attribute {name!r}")

    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> list[list[int]]:  # type: ignore[override]
        raise NotImplementedError("RemoteEncoder does not tokenise locally; token-level features (explain, token "
                                  "chunking) need a local bgem3.Encoder")

    def _forward(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("RemoteEncoder has no local forward pass; call encode()")

    def forward_batch(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("RemoteEncoder has no local forward pass; call encode()")

    # ------------------------------------------------------------------ the contract
    def encode(self, texts: Union[str, Sequence[str]], *, dense: bool = True, sparse: bool = False,  # type: ignore[override]
               colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
               show_progress: Optional[bool] = None) -> EncodeOutput:
        """Encode texts as they are (no template) on the server; same output as :meth:`Encoder.encode`."""
        return self._send(_check_texts(texts), None, dense, sparse, colbert, batch_size, max_length, show_progress)

    async def aencode(self, texts: Union[str, Sequence[str]], *, dense: bool = True, sparse: bool = False,
                      colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
                      show_progress: Optional[bool] = None) -> EncodeOutput:
        """Async :meth:`encode` (requests in flight ``concurrency`` at a time)."""
        return await self._asend(_check_texts(texts), None, dense, sparse, colbert, batch_size, max_length)

    def encode_queries(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,  # type: ignore[override]
                       examples: Optional[Sequence[dict]] = None, **kwargs: Any) -> EncodeOutput:
        """:meth:`Encoder.encode_queries` on the server: with the server's own profile the server applies
        the template (``"side": "query"``, with ``task`` and bge-en-icl ``examples``), exactly as a local
        encoder of the same folder would (prompt left out of pooling, few-shot layout included)."""
        texts = _check_texts(texts)
        side = self._side("query", texts, task, examples)
        if side is None:  # a facade's own templates on a plain profile: applied here, sent raw
            return super().encode_queries(texts, task=task, examples=examples, **kwargs)
        return self._send(texts, side, **_encode_kwargs(kwargs))

    def encode_documents(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,  # type: ignore[override]
                         **kwargs: Any) -> EncodeOutput:
        """:meth:`Encoder.encode_documents` on the server (``"side": "document"``; see :meth:`encode_queries`)."""
        texts = _check_texts(texts)
        side = self._side("document", texts, task, None)
        if side is None:
            return super().encode_documents(texts, task=task, **kwargs)
        return self._send(texts, side, **_encode_kwargs(kwargs))

    async def aencode_queries(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,
                              examples: Optional[Sequence[dict]] = None, **kwargs: Any) -> EncodeOutput:
        """Async :meth:`encode_queries`."""
        texts = _check_texts(texts)
        side = self._side("query", texts, task, examples)
        if side is None:
            formatted = [self.profile.format_query(t, task) for t in texts]
            return await self.aencode(formatted, **kwargs)
        kw = _encode_kwargs(kwargs)
        kw.pop("show_progress", None)
        return await self._asend(texts, side, **kw)

    async def aencode_documents(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,
                                **kwargs: Any) -> EncodeOutput:
        """Async :meth:`encode_documents`."""
        texts = _check_texts(texts)
        side = self._side("document", texts, task, None)
        if side is None:
            return await self.aencode([self.profile.format_passage(t, task) for t in texts], **kwargs)
        kw = _encode_kwargs(kwargs)
        kw.pop("show_progress", None)
        return await self._asend(texts, side, **kw)

    # ------------------------------------------------------------------ internals
    def _side(self, side: str, texts: list[str], task: Optional[str], examples: Any) -> Optional[dict]:
        """The request fields that let the server template ``texts`` (``None``: template them here).

        The server templates whenever this encoder's profile is the server's (the usual case): one
        templating path, the server's, with its tokenizer (which a prompt left out of pooling and
        bge-en-icl's few-shot layout need). A view with a facade's own templates is templated here
        when its profile needs no tokenizer for that, and refused otherwise."""
        prof = self.profile
        server = self.__dict__.get("_server_profile", prof)
        if examples is not None and not prof.icl:
            raise ValueError(f"examples= is for in-context-learning profiles (bge-en-icl); the {prof.name!r} profile "
                             "takes none")
        same = replace(prof, normalize=server.normalize) == server
        if not same:
            if prof.icl or not prof.include_prompt:
                raise ValueError(f"custom templates on the {prof.name!r} profile need the model's tokenizer (the "
                                 "prompt is left out of pooling, or few-shot examples are laid out by tokens), which "
                                 f"is on the server at {self.url}: start `bgem3 serve` with those templates instead")
            return None
        # the same checks as a local encoder, before anything is sent
        if side == "query" and task is not None and not prof.icl and prof.task_instructions is None and \
                not (prof.query_template and "{task}" in prof.query_template):
            raise ValueError(f"task={task!r} was given but the {prof.name!r} profile's query template "
                             f"({prof.query_template!r}) has no {{task}}; use an instruct profile")
        fmt = prof.format_query if side == "query" else prof.format_passage
        est = [fmt(t, task) for t in texts]  # raises like a local encoder for a task the profile lacks
        fields: dict = {"side": side}
        if task is not None:
            fields["task"] = task
        if examples is not None:
            fields["examples"] = [dict(e) for e in check_examples(examples)]
        return {"fields": fields, "est": est}

    def _send(self, texts: list[str], side: Optional[dict], dense: bool = True, sparse: bool = False,
              colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
              show_progress: Optional[bool] = None) -> EncodeOutput:
        chunks, body = self._prepare(texts, side, dense, sparse, colbert, batch_size, max_length)
        if len(chunks) <= 1 or self.concurrency == 1:
            parts = [self._request_sync("POST", "/encode", dict(body, inputs=texts[a:b])) for a, b in
                     self._progress(chunks, show_progress)]
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = [pool.submit(self._request_sync, "POST", "/encode", dict(body, inputs=texts[a:b]))
                           for a, b in chunks]
                parts = [f.result() for f in self._progress(futures, show_progress)]
        return self._assemble(parts, [b - a for a, b in chunks], dense, sparse, colbert, texts, body["max_length"])

    async def _asend(self, texts: list[str], side: Optional[dict], dense: bool = True, sparse: bool = False,
                     colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
                     ) -> EncodeOutput:
        chunks, body = self._prepare(texts, side, dense, sparse, colbert, batch_size, max_length)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(a: int, b: int) -> dict:
            async with sem:
                return await self._request_async("POST", "/encode", dict(body, inputs=texts[a:b]))

        parts = await asyncio.gather(*(one(a, b) for a, b in chunks))
        return self._assemble(list(parts), [b - a for a, b in chunks], dense, sparse, colbert, texts,
                              body["max_length"])

    def _prepare(self, texts, side, dense, sparse, colbert, batch_size, max_length):
        if (sparse or colbert) and not self.has_heads:
            wanted = [n for n, on in (("sparse", sparse), ("colbert", colbert)) if on]
            raise ValueError(f"{' and '.join(wanted)} output needs BGE-M3's heads, which the model served at "
                             f"{self.url} ({self.model_name!r}) does not have; ask for dense only")
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: set at least one of dense=True, sparse=True, colbert=True")
        server = self.__dict__.get("_server_profile", self.profile)
        if dense and server.normalize and not self.profile.normalize:
            raise ValueError(f"normalize=False: the model served at {self.url} L2-normalises its dense vectors and the "
                             "server does not send the raw pooled vector, so unnormalised vectors cannot be had "
                             "remotely; drop normalize=False (or use a local bgem3.Encoder)")
        bs = self.batch_size if batch_size is None else min(_check_positive_int(batch_size, "batch_size"),
                                                             self.server_batch_size)
        ml = self.max_length if max_length is None else min(_check_positive_int(max_length, "max_length"),
                                                             self.model_max_length)
        body = {"dense": bool(dense), "sparse": bool(sparse), "colbert": bool(colbert), "side": "raw",
                "encoding": "base64", "colbert_dtype": self.colbert_dtype, "max_length": ml, "truncate": True}
        if side is not None:
            body.update(side["fields"])
        est = side["est"] if side is not None else texts
        return self._chunks(est, bs, ml, extra_bytes=len(repr(body))), body

    def _chunks(self, texts: list[str], batch_size: int, max_length: int, extra_bytes: int = 0
                ) -> list[tuple[int, int]]:
        """Cut ``texts`` (as the server will tokenise them: templated) into requests the server
        accepts: <= batch_size texts, a token bound (a text has at most ``len(chars) + 2`` tokens,
        and at most ``max_length``) and a byte bound (``extra_bytes``: the rest of the body)."""
        chunks, start, tokens, size = [], 0, 0, 0
        byte_cap = max(1, int(self.max_body_bytes * 0.8) - 2 * extra_bytes)
        for i, t in enumerate(texts):
            tok = min(len(t) + 2, max_length)
            nbytes = len(t.encode("utf-8", "surrogatepass")) * 2 + 8  # JSON escaping headroom
            if i > start and (i - start >= batch_size or tokens + tok > self.max_request_tokens
                              or size + nbytes > byte_cap):
                chunks.append((start, i))
                start, tokens, size = i, 0, 0
            tokens += tok
            size += nbytes
        if start < len(texts) or not chunks:
            chunks.append((start, len(texts)))
        return chunks

    @staticmethod
    def _progress(items: list, show: Optional[bool]) -> Iterator:
        if show and len(items) > 1:
            from tqdm.auto import tqdm
            return iter(tqdm(items, desc="Encoding (remote)", unit="request"))
        return iter(items)

    def _assemble(self, parts: list[Any], sizes: list[int], dense: bool, sparse: bool, colbert: bool,
                  texts: Optional[list[str]] = None, max_length: Optional[int] = None) -> EncodeOutput:
        """Check every answer against what was asked and what ``/info`` said (:func:`check_encode_answer`),
        then join them in order."""
        n = sum(sizes)
        out = EncodeOutput(token_counts=np.zeros(n, dtype=np.int64))
        dense_rows, sparse_rows, colbert_rows, counts = [], [], [], []
        start = 0
        for k, (part, size) in enumerate(zip(parts, sizes)):
            where = f"the answer from {self.url}/encode" + (f" (request {k + 1} of {len(parts)})" if len(parts) > 1 else "")
            got = check_encode_answer(
                part, where=where, n=size, dense=dense, sparse=sparse, colbert=colbert, dim=self.hidden_size,
                colbert_dim=self.colbert_dim, colbert_dtype=self.colbert_dtype, vocab_size=self.vocab_size,
                max_length=max_length or self.max_length,
                empty=[t == "" for t in texts[start:start + size]] if texts is not None else None)
            start += size
            counts.append(got["token_counts"])
            if dense:
                dense_rows.append(got["dense"])
            if sparse:
                sparse_rows.extend(got["sparse"])
            if colbert:
                colbert_rows.extend(got["colbert"])
        out.token_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        if dense:
            out.dense = np.concatenate(dense_rows, axis=0) if dense_rows else np.zeros((0, self.hidden_size), np.float32)
            server = self.__dict__.get("_server_profile", self.profile)
            if self.profile.normalize and not server.normalize:  # a view asking normalised rows of a raw model
                out.dense = out.dense / np.maximum(np.linalg.norm(out.dense, axis=1, keepdims=True), 1e-12)
                out.dense = out.dense.astype(np.float32, copy=False)
        out.sparse = sparse_rows if sparse else None
        out.colbert = colbert_rows if colbert else None
        return out

    def _raise_for(self, path: str, status: int, content: bytes, reason: str = "") -> None:
        raise self._refusal(path, status, server_message(content) or _shown(content) or reason)

    def _retry_delay(self, path: str, attempt: int, answer: Optional["_Answer"], error: Optional[BaseException]
                     ) -> Optional[float]:
        """The retry decision after try number ``attempt`` (0-based), shared by the sync and async
        loops: ``None`` when ``answer`` is the answer; the seconds to wait before the next try on
        a retryable status or connection error; raises for any other error status
        (:class:`RemoteError`, ``PermissionError``) and once the retries are spent (:class:`RemoteUnavailable`)."""
        if error is None:
            if answer.status < 400:
                return None
            if answer.status not in RETRY_STATUSES:
                self._raise_for(path, answer.status, answer.content, answer.reason)
            last, retry_after = f"HTTP {answer.status}", answer.headers.get("retry-after")
        else:
            last, retry_after = f"{type(error).__name__}: {error}", None
        if attempt >= self.max_retries:
            raise self._give_up(path, attempt + 1, last)
        return self._delay(attempt, retry_after)

    def _limit_for(self, path: str, body: Optional[dict]) -> int:
        """Most bytes an answer to ``body`` can take (:func:`answer_bytes_bound`); 1 MiB for the rest."""
        if path == "/encode" and body is not None:
            return answer_bytes_bound(len(body.get("inputs") or ()), dense=body.get("dense", True),
                                      sparse=body.get("sparse", False), colbert=body.get("colbert", False),
                                      dim=self.hidden_size, colbert_dim=self.colbert_dim or self.hidden_size,
                                      colbert_dtype=body.get("colbert_dtype", "float32"),
                                      max_length=int(body.get("max_length") or self.max_length))
        return _SMALL_ANSWER

    def _json_answer(self, path: str, answer: "_Answer") -> Any:
        """The JSON document of a 2xx answer, or a :class:`RemoteError` saying what the server sent."""
        where = f"{self.url}{path}"
        if answer.status != 200:
            if 300 <= answer.status < 400:
                to = answer.headers.get("location", "?")
                raise RemoteError(f"{where} answered {answer.status} (a redirect to {to}); RemoteEncoder does not "
                                  "follow redirects, so the API key never goes to another host: use the final URL",
                                  answer.status)
            raise RemoteError(f"{where} answered {answer.status} {answer.reason} with "
                              f"{len(answer.content)} bytes ({_shown(answer.content) or 'no body'}); a bgem3 server "
                              "answers 200 with a JSON object", answer.status)
        ctype = answer.headers.get("content-type", "")
        if ctype and "json" not in ctype.lower():
            raise RemoteError(f"{where} answered 200 with content-type {ctype!r}, not JSON "
                              f"({_shown(answer.content)}); is {self.url} a bgem3 server, not a proxy's page?", 200)
        try:
            doc = _loads(answer.content)
        except ValueError as exc:
            raise RemoteError(f"{where} answered 200 with a body that is not JSON ({exc}; "
                              f"{_shown(answer.content) or 'empty'})", 200) from None
        if not isinstance(doc, dict):
            raise RemoteError(f"{where} answered a JSON {type(doc).__name__}, not the object a bgem3 server "
                              "sends", 200)
        return doc

    def _request_sync(self, method: str, path: str, body: Optional[dict]) -> Any:
        httpx = self._httpx()
        limit = self._limit_for(path, body)
        for attempt in itertools.count():
            try:
                answer, err = self._attempt_sync(method, path, body, limit), None
            except httpx.TransportError as exc:
                answer, err = None, exc
            delay = self._retry_delay(path, attempt, answer, err)
            if delay is None:
                return self._json_answer(path, answer)
            time.sleep(delay)

    def _attempt_sync(self, method: str, path: str, body: Optional[dict], limit: int) -> "_Answer":
        """One HTTP request, ``timeout`` seconds in all (connect, send, wait, every read: each socket
        wait is clamped to what is left, so a server dripping its answer is cut off), reading at
        most ``limit`` bytes of the answer."""
        deadline = time.monotonic() + self.timeout
        _DEADLINE.at = deadline
        try:
            with self._client.stream(method, path, json=body, timeout=self.timeout) as r:
                return self._read_sync(path, r, limit, deadline)
        finally:
            _DEADLINE.at = None

    def _read_sync(self, path: str, r: Any, limit: int, deadline: float) -> "_Answer":
        cap = limit if r.status_code < 300 else _SMALL_ANSWER
        buf = bytearray()
        declared = _declared_length(r)
        if declared is not None and declared > cap and r.status_code < 300:
            raise self._too_big(path, declared, limit)
        for chunk in (r.iter_raw() if not r.is_stream_consumed else [r.content]):  # (a test's in-memory answer)
            buf += chunk
            if len(buf) > cap:
                if r.status_code < 300:
                    raise self._too_big(path, len(buf), limit)
                break
            if time.monotonic() > deadline:
                raise self._httpx().ReadTimeout(f"the answer took more than timeout={self.timeout:g} s in all")
        return _Answer(r.status_code, r.reason_phrase, r.headers, _decoded(r, bytes(buf), cap))

    def _too_big(self, path: str, size: int, limit: int) -> RemoteError:
        return RemoteError(f"the answer from {self.url}{path} is over {size} bytes; what was asked takes at most "
                           f"{limit} (rows x dimension x dtype, with headroom): refused unread", 200)

    async def _request_async(self, method: str, path: str, body: Optional[dict]) -> Any:
        httpx = self._httpx()
        client = self._async_client()
        limit = self._limit_for(path, body)
        for attempt in itertools.count():
            try:
                answer = await asyncio.wait_for(self._attempt_async(client, method, path, body, limit), self.timeout)
                err = None
            except httpx.TransportError as exc:
                answer, err = None, exc
            except asyncio.TimeoutError:
                answer, err = None, httpx.ReadTimeout(f"no whole answer within timeout={self.timeout:g} s")
            delay = self._retry_delay(path, attempt, answer, err)
            if delay is None:
                return self._json_answer(path, answer)
            await asyncio.sleep(delay)

    async def _attempt_async(self, client: Any, method: str, path: str, body: Optional[dict], limit: int) -> "_Answer":
        async with client.stream(method, path, json=body) as r:
            cap = limit if r.status_code < 300 else _SMALL_ANSWER
            declared = _declared_length(r)
            if declared is not None and declared > cap and r.status_code < 300:
                raise self._too_big(path, declared, limit)
            buf = bytearray()
            async for chunk in (r.aiter_raw() if not r.is_stream_consumed else _one(r.content)):
                buf += chunk
                if len(buf) > cap:
                    if r.status_code < 300:
                        raise self._too_big(path, len(buf), limit)
                    break
            return _Answer(r.status_code, r.reason_phrase, r.headers, _decoded(r, bytes(buf), cap))


async def _one(content: bytes) -> Any:
    yield content


def _encode_kwargs(kwargs: dict) -> dict:
    allowed = ("dense", "sparse", "colbert", "batch_size", "max_length", "show_progress")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; encode takes {', '.join(allowed)}")
    return dict(kwargs)


#: answers other than /encode's (/info, errors) are read up to this many bytes
_SMALL_ANSWER = 1 << 20


class _Answer:
    """What one HTTP request got back: status, reason, headers, body (bounded)."""

    __slots__ = ("status", "reason", "headers", "content")

    def __init__(self, status: int, reason: str, headers: Any, content: bytes) -> None:
        self.status, self.reason, self.headers, self.content = status, reason, headers, content


def _declared_length(r: Any) -> Optional[int]:
    value = r.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _decoded(r: Any, raw: bytes, cap: int) -> bytes:
    """``raw`` undone of its content-encoding (gzip, ...), at most ``cap`` bytes out (a zip bomb stops there)."""
    if not r.headers.get("content-encoding") or not raw:
        return raw
    import zlib

    enc = r.headers["content-encoding"].strip().lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(zlib.MAX_WBITS | 32 if enc != "deflate" else zlib.MAX_WBITS)
        out = d.decompress(raw, cap + 1)
        if len(out) > cap:
            raise RemoteError(f"the answer inflates to over {cap} bytes; refused", r.status_code)
        return out
    if enc == "identity":
        return raw
    raise RemoteError(f"the answer's content-encoding {enc!r} is not one RemoteEncoder reads (gzip, deflate)",
                      r.status_code)


def _shown(content: bytes, n: int = 200) -> str:
    """The first bytes of a body, for a message."""
    text = content[:n].decode("utf-8", "replace").strip()
    return repr(text + ("..." if len(content) > n else "")) if text else ""


def _loads(raw: bytes) -> Any:
    try:
        import orjson
    except ImportError:  # pragma: no cover
        import json

        return json.loads(raw)
    return orjson.loads(raw)


class _Deadline(threading.local):
    at: Optional[float] = None


#: the running sync request's deadline (per thread: ``encode`` may send from a thread pool)
_DEADLINE = _Deadline()


def _clamp(timeout: Optional[float]) -> Optional[float]:
    at = _DEADLINE.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        import httpcore

        raise httpcore.ReadTimeout("the request took more than its timeout in all")
    return left if timeout is None else min(timeout, left)


def _deadline_backend(inner: Any) -> Any:
    """An httpcore network backend whose every socket wait (connect, read, write) is clamped to the
    running sync request's total deadline: httpx's own timeouts are per socket wait, so a server
    answering one byte every half second would hold a request for ever."""
    import httpcore

    class Stream(httpcore.NetworkStream):
        def __init__(self, s: Any) -> None:
            self._s = s

        def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
            return self._s.read(max_bytes, _clamp(timeout))

        def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
            self._s.write(buffer, _clamp(timeout))

        def close(self) -> None:
            self._s.close()

        def start_tls(self, ssl_context: Any, server_hostname: Optional[str] = None,
                      timeout: Optional[float] = None) -> Any:
            return Stream(self._s.start_tls(ssl_context, server_hostname, _clamp(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self._s.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, local_address: Any = None,
                        socket_options: Any = None) -> Any:
            return Stream(inner.connect_tcp(host, port, _clamp(timeout), local_address, socket_options))

        def connect_unix_socket(self, path: str, timeout: Optional[float] = None, socket_options: Any = None) -> Any:
            return Stream(inner.connect_unix_socket(path, _clamp(timeout), socket_options))

        def sleep(self, seconds: float) -> None:
            inner.sleep(seconds)

    return Backend()


def _install_deadlines(client: Any) -> bool:
    """Put :func:`_deadline_backend` under every connection pool of an ``httpx.Client`` (its default
    transport and any proxy mounts). Returns whether it could (else the body loop's check still
    bounds a dripped body, not a dripped status line)."""
    done = False
    for transport in [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _deadline_backend(pool._network_backend)
            done = True
    return done


def answer_bytes_bound(n: int, *, dense: bool, sparse: bool, colbert: bool, dim: int, colbert_dim: int,
                       colbert_dtype: str, max_length: int) -> int:
    """Most bytes a well-formed ``/encode`` answer for ``n`` texts can take, with headroom: base64
    dense rows, ColBERT rows (at most ``max_length`` per text), JSON lexical weights (at most
    ``max_length`` per text, ~48 bytes each), token counts; x1.5 + 64 KiB."""
    b64 = 4 / 3
    size = 1024 + 24 * n
    if dense:
        size += n * dim * 4 * b64
    if colbert:
        size += n * max_length * colbert_dim * (2 if colbert_dtype == "float16" else 4) * b64 + 16 * n
    if sparse:
        size += n * max_length * 48 + 32 * n
    return int(size * 1.5) + 65536


def check_encode_answer(doc: Any, *, where: str, n: int, dense: bool, sparse: bool, colbert: bool, dim: int,
                        colbert_dim: Optional[int], colbert_dtype: str, vocab_size: int, max_length: int,
                        empty: Optional[list] = None) -> dict:
    """Decode one ``/encode`` answer for ``n`` texts and check every field against what was asked
    and what ``/info`` said: row counts, shapes, dtypes, finiteness, token ids in ``[0, vocab_size)``,
    unique ids and positive weights per row, token counts in ``[1, max_length]`` (0 only for an
    empty text), ColBERT lengths equal to the token counts less the CLS and summing to the rows
    sent. Returns ``{"token_counts", "dense", "sparse", "colbert"}``; raises :class:`RemoteError`
    naming the field that is wrong."""
    def bad(what: str) -> RemoteError:
        return RemoteError(f"{where} is wrong: {what}; refused (is it a bgem3 server of the same version, "
                           "or is something between you and it changing answers?)", 200)

    if not isinstance(doc, dict):
        raise bad(f"a JSON {type(doc).__name__}, not an object")
    if doc.get("count") != n or isinstance(doc.get("count"), bool):
        raise bad(f"`count` is {doc.get('count')!r} for {n} texts sent")
    if "dim" in doc and doc["dim"] != dim:
        raise bad(f"`dim` is {doc['dim']!r}; /info said {dim}")
    tc = doc.get("token_counts")
    if not isinstance(tc, list) or len(tc) != n or not all(type(x) is int for x in tc):
        raise bad(f"`token_counts` is not a list of {n} integers")
    counts = np.asarray(tc, dtype=np.int64)
    for i, c in enumerate(tc):
        lo = 0 if (empty is not None and empty[i]) else 1
        if not lo <= c <= max_length:
            raise bad(f"`token_counts[{i}]` is {c}, outside [{lo}, {max_length}] (max_length sent)")
    out: dict = {"token_counts": counts, "dense": None, "sparse": None, "colbert": None}
    for name, wanted in (("dense", dense), ("sparse", sparse), ("colbert", colbert)):
        if wanted and name not in doc:
            raise bad(f"`{name}` was asked for and is missing")
    if dense:
        d = doc["dense"]
        if not isinstance(d, dict) or d.get("dtype") != "float32" or d.get("shape") != [n, dim] \
                or not isinstance(d.get("data"), str):
            shown = {k: d.get(k) for k in ("dtype", "shape")} if isinstance(d, dict) else type(d).__name__
            raise bad(f"`dense` is {shown}; expected float32 of shape [{n}, {dim}] (base64)")
        try:
            arr = decode_array(d["data"], "float32", (n, dim))
        except ValueError as exc:
            raise bad(f"`dense.data`: {exc}") from None
        if not np.isfinite(arr).all():
            raise bad(f"`dense` row {int(np.argwhere(~np.isfinite(arr))[0][0])} has NaN or infinite values")
        out["dense"] = arr
    if sparse:
        rows = doc["sparse"]
        if not isinstance(rows, list) or len(rows) != n:
            raise bad(f"`sparse` has {len(rows) if isinstance(rows, list) else type(rows).__name__} rows for {n} texts")
        got = []
        for i, r in enumerate(rows):
            idx = r.get("indices") if isinstance(r, dict) else None
            val = r.get("values") if isinstance(r, dict) else None
            if not isinstance(idx, list) or not isinstance(val, list) or len(idx) != len(val) \
                    or not all(type(x) is int for x in idx) \
                    or not all(type(x) in (int, float) for x in val):
                raise bad(f"`sparse[{i}]` is not {{indices: [int], values: [float]}} of equal lengths")
            if len(idx) > max_length:
                raise bad(f"`sparse[{i}]` has {len(idx)} weights for at most {max_length} tokens")
            if idx and (min(idx) < 0 or max(idx) >= vocab_size):
                raise bad(f"`sparse[{i}]` has token id {min(idx) if min(idx) < 0 else max(idx)}, outside "
                          f"[0, {vocab_size}) (the vocabulary /info reported)")
            if len(set(idx)) != len(idx):
                raise bad(f"`sparse[{i}]` repeats a token id")
            w = np.asarray(val, dtype=np.float64)
            if not np.isfinite(w).all() or (w <= 0).any():
                raise bad(f"`sparse[{i}]` has a weight that is NaN, infinite or not positive")
            got.append({int(a): float(b) for a, b in zip(idx, val)})
        out["sparse"] = got
    if colbert:
        c = doc["colbert"]
        if not isinstance(c, dict):
            raise bad(f"`colbert` is a {type(c).__name__}, not an object")
        if c.get("dtype") != colbert_dtype:
            raise bad(f"`colbert.dtype` is {c.get('dtype')!r}; {colbert_dtype!r} was asked")
        cd = colbert_dim or dim
        if c.get("dim") != cd or isinstance(c.get("dim"), bool):
            raise bad(f"`colbert.dim` is {c.get('dim')!r}; /info said {cd}")
        lens = c.get("lengths")
        if not isinstance(lens, list) or len(lens) != n or not all(type(x) is int and x >= 0 for x in lens):
            raise bad(f"`colbert.lengths` is not a list of {n} integers >= 0")
        want = np.maximum(counts - 1, 0)
        if lens != want.tolist():
            i = int(np.flatnonzero(np.asarray(lens) != want)[0])
            raise bad(f"`colbert.lengths[{i}]` is {lens[i]}; its token count {int(counts[i])} gives "
                      f"{int(want[i])} vectors (the CLS is dropped)")
        if not isinstance(c.get("data"), str):
            raise bad("`colbert.data` is not a base64 string")
        try:
            flat = decode_array(c["data"], colbert_dtype, (int(sum(lens)), cd))
        except ValueError as exc:
            raise bad(f"`colbert.data`: {exc}") from None
        if not np.isfinite(flat).all():
            raise bad("`colbert` has NaN or infinite values")
        out["colbert"] = np.split(flat, np.cumsum(lens)[:-1]) if lens else []
    return out


#: Encoder options that only make sense for a model loaded here.
_LOCAL_ONLY = ("profile", "query_template", "passage_template", "task", "max_tokens_per_batch", "local_files_only",
               "cache_dir", "revision", "trust_remote_code")


def remote_encoder_for(url: str, **options: Any) -> RemoteEncoder:
    """A :class:`RemoteEncoder` for ``url`` from the keyword arguments an adapter would give
    :class:`~bgem3.Encoder`: ``batch_size`` / ``max_length`` are used, ``device`` / ``dtype``
    must be unset or match the server's, loading options (``cache_dir``, ...) are refused.

    >>> remote_encoder_for("http://127.0.0.1:9", cache_dir="/tmp")
    Traceback (most recent call last):
    ValueError: cache_dir applies to a model loaded in this process; the model at http://127.0.0.1:9 is the server's: drop cache_dir (configure `bgem3 serve` instead)
    """
    given = RemoteEncoder._options_for(url, options, ("device", "dtype", "batch_size", "max_length"), _LOCAL_ONLY)
    enc = RemoteEncoder(url, batch_size=given.get("batch_size"), max_length=given.get("max_length"))
    enc._check_served_as(url, given)
    return enc
