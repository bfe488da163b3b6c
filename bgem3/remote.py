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
a timeout per request, long lists split into requests under the server's limits and sent
``concurrency`` at a time. Async twins (``aencode``, ``aencode_queries``,
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
import os
import random
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from .encoder import EncodeOutput, Encoder, _check_positive_int, _check_texts
from .profiles import Profile

__all__ = ["RemoteEncoder", "RemoteError", "RemoteUnavailable", "is_url", "remote_encoder_for"]

#: HTTP statuses worth retrying: overloaded, draining, a load balancer's bad gateway / timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RemoteError(ValueError):
    """The server refused the request (4xx/5xx that is not retried); ``status`` and the server's message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteUnavailable(ConnectionError):
    """The server could not be reached, or stayed overloaded, through every retry."""


def is_url(name: Any) -> bool:
    """Whether ``name`` is an ``http://`` / ``https://`` URL (a model name that means a server)."""
    return isinstance(name, str) and name.strip().lower().startswith(("http://", "https://"))


def _httpx():
    try:
        import httpx
    except ImportError:
        raise ImportError("RemoteEncoder needs httpx, which is not installed: pip install 'bgem3[remote]'") from None
    return httpx


class RemoteEncoder(Encoder):
    """An encoder whose forward pass runs on a ``bgem3 serve`` server.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8080"`` (a path prefix behind a proxy is kept).
        api_key: the server's ``--api-key`` (default: ``$BGEM3_API_KEY``), sent as a bearer token.
        timeout: seconds for one HTTP request (connect + wait + read).
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

    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 0.25, max_backoff: float = 8.0, batch_size: Optional[int] = None,
                 max_length: Optional[int] = None, colbert_dtype: str = "float32", concurrency: int = 4,
                 headers: Optional[dict] = None, verify: Union[bool, str] = True) -> None:  # noqa: D107
        httpx = _httpx()
        if not is_url(url):
            raise ValueError(f"url must start with http:// or https://; got {url!r}")
        if colbert_dtype not in ("float32", "float16"):
            raise ValueError(f"colbert_dtype must be 'float32' or 'float16'; got {colbert_dtype!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0; got {max_retries!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0; got {value!r}")
        self.url = url.strip().rstrip("/")
        self.path = self.url
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.colbert_dtype = colbert_dtype
        self.concurrency = _check_positive_int(concurrency, "concurrency")
        key = api_key if api_key is not None else os.environ.get("BGEM3_API_KEY")
        self._headers = {"accept": "application/json", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._verify = verify
        limits = httpx.Limits(max_connections=max(8, self.concurrency * 2), max_keepalive_connections=max(8, self.concurrency * 2))
        self._limits = limits
        self._client = httpx.Client(base_url=self.url, headers=self._headers, timeout=self.timeout, limits=limits,
                                    verify=verify)
        # one async pool per event loop (an httpx.AsyncClient is bound to the loop that made it); keyed by the
        # loop itself, weakly: a new loop can reuse a dead one's id(), never its pool
        self._aclients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._alock = threading.Lock()

        info = self._request_sync("GET", "/info", None)
        try:
            ours = info["bgem3"]
            prof = ours["profile"]
            self.model_name = str(info["model_id"])
            self.hidden_size = int(ours["dim"])
            self._has_heads = bool(ours["has_heads"])
            self.colbert_dim = int(ours["colbert_dim"]) if ours.get("colbert_dim") else None
            self.profile = Profile(**prof)
            self.model_max_length = int(info["max_input_length"])
            self.vocab_size = int(ours["vocab_size"])
            self.device = str(ours.get("device", "remote"))
            self.dtype = str(info.get("model_dtype", "float32"))
            self.server_batch_size = int(info["max_client_batch_size"])
            self.max_request_tokens = int(ours["max_request_tokens"])
            self.max_body_bytes = int(ours["max_body_bytes"])
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

    def close(self) -> None:
        """Close the pooled connections (or use the encoder as a context manager)."""
        client = self.__dict__.get("_client")
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the sync pool and this event loop's async pool (pools of loops that are already
        closed are dropped: their connections went with their loop)."""
        self.close()
        clients = self.__dict__.get("_aclients")
        if not clients:
            return
        mine = clients.pop(asyncio.get_running_loop(), None)
        clients.clear()
        if mine is not None:
            await mine.aclose()

    def __enter__(self) -> "RemoteEncoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the contract
    def encode(self, texts: Union[str, Sequence[str]], *, dense: bool = True, sparse: bool = False,  # type: ignore[override]
               colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
               show_progress: Optional[bool] = None) -> EncodeOutput:
        """Encode texts as they are (no template) on the server; same output as :meth:`Encoder.encode`."""
        texts, chunks, body = self._prepare(texts, dense, sparse, colbert, batch_size, max_length)
        if len(chunks) <= 1 or self.concurrency == 1:
            parts = [self._request_sync("POST", "/encode", dict(body, inputs=texts[a:b])) for a, b in
                     self._progress(chunks, show_progress)]
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = [pool.submit(self._request_sync, "POST", "/encode", dict(body, inputs=texts[a:b]))
                           for a, b in chunks]
                parts = [f.result() for f in self._progress(futures, show_progress)]
        return self._assemble(parts, [b - a for a, b in chunks], dense, sparse, colbert)

    async def aencode(self, texts: Union[str, Sequence[str]], *, dense: bool = True, sparse: bool = False,
                      colbert: bool = False, batch_size: Optional[int] = None, max_length: Optional[int] = None,
                      show_progress: Optional[bool] = None) -> EncodeOutput:
        """Async :meth:`encode` (requests in flight ``concurrency`` at a time)."""
        texts, chunks, body = self._prepare(texts, dense, sparse, colbert, batch_size, max_length)
        sem = asyncio.Semaphore(self.concurrency)

        async def one(a: int, b: int) -> dict:
            async with sem:
                return await self._request_async("POST", "/encode", dict(body, inputs=texts[a:b]))

        parts = await asyncio.gather(*(one(a, b) for a, b in chunks))
        return self._assemble(list(parts), [b - a for a, b in chunks], dense, sparse, colbert)

    async def aencode_queries(self, texts: Union[str, Sequence[str]], *, task: Optional[str] = None,
                              **kwargs: Any) -> EncodeOutput:
        """Async :meth:`encode_queries` (the profile's query template, applied here as the server would)."""
        texts = _check_texts(texts)
        return await self.aencode([self.profile.format_query(t, task) for t in texts], **kwargs)

    async def aencode_documents(self, texts: Union[str, Sequence[str]], **kwargs: Any) -> EncodeOutput:
        """Async :meth:`encode_documents` (the profile's passage template)."""
        texts = _check_texts(texts)
        return await self.aencode([self.profile.format_passage(t) for t in texts], **kwargs)

    # ------------------------------------------------------------------ internals
    def _prepare(self, texts, dense, sparse, colbert, batch_size, max_length):
        texts = _check_texts(texts)
        if (sparse or colbert) and not self.has_heads:
            wanted = [n for n, on in (("sparse", sparse), ("colbert", colbert)) if on]
            raise ValueError(f"{' and '.join(wanted)} output needs BGE-M3's heads, which the model served at "
                             f"{self.url} ({self.model_name!r}) does not have; ask for dense only")
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: set at least one of dense=True, sparse=True, colbert=True")
        bs = self.batch_size if batch_size is None else min(_check_positive_int(batch_size, "batch_size"),
                                                             self.server_batch_size)
        ml = self.max_length if max_length is None else min(_check_positive_int(max_length, "max_length"),
                                                             self.model_max_length)
        body = {"dense": bool(dense), "sparse": bool(sparse), "colbert": bool(colbert), "side": "raw",
                "encoding": "base64", "colbert_dtype": self.colbert_dtype, "max_length": ml, "truncate": True}
        return texts, self._chunks(texts, bs, ml), body

    def _chunks(self, texts: list[str], batch_size: int, max_length: int) -> list[tuple[int, int]]:
        """Cut ``texts`` into requests the server accepts: <= batch_size texts, a token bound
        (a text has at most ``len(chars) + 2`` tokens, and at most ``max_length``) and a byte bound."""
        chunks, start, tokens, size = [], 0, 0, 0
        byte_cap = int(self.max_body_bytes * 0.8)
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

    def _assemble(self, parts: list[dict], sizes: list[int], dense: bool, sparse: bool, colbert: bool) -> EncodeOutput:
        from .serve.shapes import decode_array

        n = sum(sizes)
        out = EncodeOutput(token_counts=np.zeros(n, dtype=np.int64))
        dense_rows, sparse_rows, colbert_rows, counts = [], [], [], []
        for part, size in zip(parts, sizes):
            try:
                if part.get("count") != size:
                    raise ValueError(f"asked for {size} rows, got {part.get('count')}")
                counts.extend(int(x) for x in part["token_counts"])
                if dense:
                    d = part["dense"]
                    dense_rows.append(decode_array(d["data"], d["dtype"], tuple(d["shape"])))
                if sparse:
                    sparse_rows.extend({int(i): float(v) for i, v in zip(r["indices"], r["values"])}
                                       for r in part["sparse"])
                if colbert:
                    c = part["colbert"]
                    lens = [int(x) for x in c["lengths"]]
                    flat = decode_array(c["data"], c["dtype"], (sum(lens), int(c["dim"])))
                    colbert_rows.extend(np.split(flat, np.cumsum(lens)[:-1]) if lens else [])
            except (KeyError, TypeError, ValueError) as exc:
                raise RemoteError(f"the answer from {self.url}/encode is malformed ({exc}); is it a bgem3 server "
                                  "of the same version?", 200) from None
        out.token_counts = np.asarray(counts, dtype=np.int64)
        if dense:
            out.dense = np.concatenate(dense_rows, axis=0) if dense_rows else np.zeros((0, self.hidden_size), np.float32)
        out.sparse = sparse_rows if sparse else None
        out.colbert = colbert_rows if colbert else None
        return out

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        return delay

    def _raise_for(self, path: str, response: Any) -> None:
        try:
            body = response.json()
            err = body.get("error") if isinstance(body, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err
        except ValueError:
            msg = None
        msg = msg or response.text[:300] or response.reason_phrase
        if response.status_code == 401:
            raise PermissionError(f"{self.url}{path}: {msg} (RemoteEncoder(url, api_key=...) or $BGEM3_API_KEY)")
        raise RemoteError(f"{self.url}{path} answered {response.status_code}: {msg}", response.status_code)

    def _give_up(self, path: str, tries: int, last: str) -> RemoteUnavailable:
        return RemoteUnavailable(f"{self.url}{path} did not answer after {tries} tries ({last}); is `bgem3 serve` "
                                 "running there, and not overloaded? (RemoteEncoder(max_retries=..., timeout=...))")

    def _retry_delay(self, path: str, attempt: int, response: Any, error: Optional[BaseException]) -> Optional[float]:
        """The retry decision after try number ``attempt`` (0-based), shared by the sync and async
        loops: ``None`` when ``response`` is the answer; the seconds to wait before the next try on
        a retryable status or connection error; raises for any other error status
        (:class:`RemoteError`, ``PermissionError``) and once the retries are spent (:class:`RemoteUnavailable`)."""
        if error is None:
            if response.status_code < 400:
                return None
            if response.status_code not in RETRY_STATUSES:
                self._raise_for(path, response)
            last, retry_after = f"HTTP {response.status_code}", response.headers.get("retry-after")
        else:
            last, retry_after = f"{type(error).__name__}: {error}", None
        if attempt >= self.max_retries:
            raise self._give_up(path, attempt + 1, last)
        return self._delay(attempt, retry_after)

    def _request_sync(self, method: str, path: str, body: Optional[dict]) -> Any:
        httpx = _httpx()
        for attempt in itertools.count():
            try:
                r, err = self._client.request(method, path, json=body), None
            except httpx.TransportError as exc:
                r, err = None, exc
            delay = self._retry_delay(path, attempt, r, err)
            if delay is None:
                return r.json()
            time.sleep(delay)

    def _async_client(self) -> Any:
        httpx = _httpx()
        loop = asyncio.get_running_loop()
        with self._alock:
            for dead in [lp for lp in list(self._aclients) if lp.is_closed()]:
                del self._aclients[dead]  # a pool can keep its loop alive: drop those of closed loops
            client = self._aclients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self.timeout,
                                           limits=self._limits, verify=self._verify)
                self._aclients[loop] = client
        return client

    async def _request_async(self, method: str, path: str, body: Optional[dict]) -> Any:
        httpx = _httpx()
        client = self._async_client()
        for attempt in itertools.count():
            try:
                r, err = await client.request(method, path, json=body), None
            except httpx.TransportError as exc:
                r, err = None, exc
            delay = self._retry_delay(path, attempt, r, err)
            if delay is None:
                return r.json()
            await asyncio.sleep(delay)


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
    given = {k: v for k, v in options.items() if v is not None and v is not ...}
    bad = [k for k in given if k in _LOCAL_ONLY or k not in ("device", "dtype", "batch_size", "max_length")]
    if bad:
        raise ValueError(f"{', '.join(sorted(bad))} applies to a model loaded in this process; the model at {url} is "
                         f"the server's: drop {', '.join(sorted(bad))} (configure `bgem3 serve` instead)")
    enc = RemoteEncoder(url, batch_size=given.get("batch_size"), max_length=given.get("max_length"))
    from ._shared import dtype_name

    for key, server in (("device", enc.device), ("dtype", dtype_name(enc.dtype))):
        if key in given:
            mine = str(given[key]) if key == "device" else dtype_name(given[key])
            if mine != server:
                enc.close()
                raise ValueError(f"{key}={given[key]!r} does not match the server at {url}, which runs {server}; "
                                 f"{key} is chosen by the server (bgem3 serve --{key}); drop it")
    return enc
