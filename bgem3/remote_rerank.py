"""RemoteReranker: the :class:`bgem3.Reranker` interface over HTTP, against ``bgem3 serve --reranker``.

``RemoteReranker(url)`` reads the server's ``GET /info`` (which reranker, its max length, the request
limits) and answers ``compute_score`` / ``score`` / ``rerank`` (and their async twins) with what a local
:class:`bgem3.Reranker` on the same folder returns: the server sends the raw scores (TEI ``/rerank`` with
``raw_scores: true``, float32 logits exactly as the model produced them) and ``normalize=True`` applies
FlagEmbedding's sigmoid here, so both are equal to the local scores.

Every answer is checked before it is used (one entry per candidate, each index once and in range, each
score a finite number; anything else is a :class:`~bgem3.remote.RemoteError` naming what was wrong), the
response body is read up to a bound derived from what was asked, and ``timeout`` is a *total* deadline for
the whole call: retries, backoff and every request of a split call included.

Example::

    >>> from bgem3.remote_rerank import RemoteReranker                      # doctest: +SKIP
    >>> rr = RemoteReranker("http://127.0.0.1:8080", api_key="s3cret")     # doctest: +SKIP
    >>> rr.rerank("what is BGE-M3?", ["a passage", "another"], top_n=1)   # doctest: +SKIP
    [RankedText(index=0, score=...)]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._checks import check_pairs, check_query, check_rank_texts, check_top_n, positive_int
from ._http_client import RETRY_STATUSES, HttpClient, RemoteError, RemoteUnavailable, seconds, server_message
from .types import RankedText

__all__ = ["RemoteReranker", "remote_reranker_for"]

#: extra tokens a pair may take beyond its characters (specials; the LLM rerankers' prompt)
_PAIR_OVERHEAD = {"encoder": 8, "llm": 256}
#: bytes of one answer entry, generously ({"index":123456,"score":-1.2345678901234567e+300},)
_ENTRY_BYTES = 96


def _sigmoid(x: float) -> float:
    with np.errstate(over="ignore"):
        return float(1 / (1 + np.exp(-x)))  # FlagEmbedding's normalize=True, same float64 arithmetic


class _Deadline:
    """The time left of one call's total budget."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.what = what

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise RemoteUnavailable(f"{self.what} did not finish within timeout={self.seconds:g} s (the whole call, "
                                    "retries included); raise RemoteReranker(timeout=...) or send fewer candidates")
        return left


class _TooLarge(Exception):
    """The server answered 413 for a request of several texts: split it and try again."""


class RemoteReranker(HttpClient):
    """A reranker whose model runs on a ``bgem3 serve --reranker`` server; the interface of :class:`bgem3.Reranker`.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8080"`` (a path prefix behind a proxy is kept).
        api_key: the server's ``--api-key`` (default: ``$BGEM3_API_KEY``), sent as a bearer token.
        timeout: seconds for one whole call (``compute_score`` / ``rerank`` ...), every request, retry and
            backoff included; ``RemoteUnavailable`` beyond it.
        max_retries: retries after the first try on 429/502/503/504 and connection errors.
        backoff / max_backoff: first retry delay (doubled each retry, jittered) and its cap; ``Retry-After`` is
            honoured up to ``max_backoff``.
        batch_size: most candidates per request (default and cap: the server's ``max_client_batch_size``).
        max_length: must be unset or equal to the server's pair length (``bgem3 serve --reranker-max-length``):
            the server cuts every pair at its own length.
        normalize: default of ``normalize`` for every call (``True``: the sigmoid, as FlagEmbedding).
        concurrency: requests in flight at once when a call is split into several.
        headers: extra HTTP headers (e.g. for a proxy). verify: TLS verification, passed to httpx.

    Attributes (as a local :class:`bgem3.Reranker`): ``model_name``, ``kind``, ``max_length``, ``device``,
    ``dtype`` (the server's), ``batch_size``, ``path`` / ``url``.
    """

    _client_name = "RemoteReranker"
    _server = "bgem3 serve --reranker"
    _what = "reranker"

    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 0.25, max_backoff: float = 8.0, batch_size: Optional[int] = None,
                 max_length: Optional[int] = None, normalize: bool = False, concurrency: int = 4,
                 headers: Optional[dict] = None, verify: Union[bool, str] = True) -> None:  # noqa: D107
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False; got {normalize!r}")
        self.timeout = seconds("timeout", timeout, positive=True)
        self.normalize = normalize
        self.model_name: Optional[str] = None  # from /info
        self._connect(url, api_key, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                      concurrency=concurrency, headers=headers, verify=verify)
        try:
            self._read_info(self._request_sync("GET", "/info", None, _Deadline(self.timeout, f"{self.url}/info"),
                                               64 * 1024))
            if batch_size is not None:
                positive_int(batch_size, "batch_size")
            self.batch_size = min(batch_size or self.server_batch_size, self.server_batch_size)
            if max_length is not None and positive_int(max_length, "max_length") != self.max_length:
                raise ValueError(f"max_length={max_length} cannot be honoured: the server at {self.url} cuts every "
                                 f"pair at {self.max_length} tokens (bgem3 serve --reranker-max-length); drop "
                                 "max_length or start the server with the length you want")
        except BaseException:
            self.close()
            raise

    def _read_info(self, info: Any) -> None:
        ours = info.get("bgem3") if isinstance(info, dict) else None
        if not isinstance(ours, dict):
            raise RemoteError(f"{self.url}/info does not look like a bgem3 server's (no 'bgem3' section); "
                              "RemoteReranker talks to `bgem3 serve --reranker` (a plain TEI server: use a TEI "
                              "client)", 200)
        rr = ours.get("reranker")
        if not isinstance(rr, dict):
            raise RemoteError(f"the bgem3 server at {self.url} serves no reranker; start it with "
                              "`bgem3 serve --reranker MODEL` (or use RemoteEncoder for its embedder)", 200)
        try:
            self.model_name = str(rr["model_id"])
            self.kind = str(rr.get("kind", "encoder"))
            self.max_length = positive_int(rr["max_input_length"], "max_input_length")
            self.server_batch_size = positive_int(rr["max_client_batch_size"], "max_client_batch_size")
            self.max_request_tokens = positive_int(rr["max_request_tokens"], "max_request_tokens")
            self.max_body_bytes = positive_int(rr["max_body_bytes"], "max_body_bytes")
            self.device = str(rr.get("device", "remote"))
            self.dtype = str(rr.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"{self.url}/info has a malformed reranker section ({exc}); is it a bgem3 server of "
                              "the same version?", 200) from None

    def __repr__(self) -> str:
        return f"RemoteReranker({self.url!r}, model={self.model_name!r})"

    # ------------------------------------------------------------------ lifecycle (close, aclose, with: HttpClient)
    def __getstate__(self) -> dict:  # pickle-able (the frameworks copy their components): the settings, no sockets
        keep = ("url", "timeout", "max_retries", "backoff", "max_backoff", "batch_size", "normalize", "concurrency",
                "_verify")
        state = {k: self.__dict__[k] for k in keep}
        state["_extra_headers"] = {k: v for k, v in self._headers.items() if k != "accept"}
        return state

    def __setstate__(self, state: dict) -> None:
        headers = state.pop("_extra_headers")
        auth = headers.pop("authorization", None)
        api_key = auth[len("Bearer "):] if auth else ""
        self.__init__(state["url"], api_key=api_key, timeout=state["timeout"], max_retries=state["max_retries"],
                      backoff=state["backoff"], max_backoff=state["max_backoff"], batch_size=state["batch_size"],
                      normalize=state["normalize"], concurrency=state["concurrency"], headers=headers,
                      verify=state["_verify"])

    # ------------------------------------------------------------------ the interface
    def compute_score(self, pairs: Union[Sequence[tuple[str, str]], tuple[str, str]], *,
                      normalize: Optional[bool] = None, batch_size: Optional[int] = None,
                      max_length: Optional[int] = None, show_progress: Optional[bool] = None) -> list[float]:
        """One score per (query, passage) pair, in input order (``normalize=True``: the sigmoid)."""
        pairs = check_pairs(pairs, "pairs")
        plan = self._plan(pairs, batch_size, max_length)
        deadline = _Deadline(self.timeout, f"{self.url}/rerank")
        raw = np.zeros(len(pairs), dtype=np.float64)
        if len(plan) <= 1 or self.concurrency == 1:
            for query, rows in plan:
                raw[rows] = self._score_sync(query, [pairs[i][1] for i in rows], deadline)
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(plan))) as pool:
                futures = [(rows, pool.submit(self._score_sync, query, [pairs[i][1] for i in rows], deadline))
                           for query, rows in plan]
                for rows, fut in futures:
                    raw[rows] = fut.result()
        return self._finish(raw, normalize)

    async def acompute_score(self, pairs: Union[Sequence[tuple[str, str]], tuple[str, str]], *,
                             normalize: Optional[bool] = None, batch_size: Optional[int] = None,
                             max_length: Optional[int] = None, show_progress: Optional[bool] = None) -> list[float]:
        """Async :meth:`compute_score` (requests in flight ``concurrency`` at a time, on the caller's loop)."""
        pairs = check_pairs(pairs, "pairs")
        plan = self._plan(pairs, batch_size, max_length)
        deadline = _Deadline(self.timeout, f"{self.url}/rerank")
        sem = asyncio.Semaphore(self.concurrency)

        async def one(query: str, rows: list[int]) -> np.ndarray:
            async with sem:
                return await self._score_async(query, [pairs[i][1] for i in rows], deadline)

        parts = await asyncio.gather(*(one(q, rows) for q, rows in plan))
        raw = np.zeros(len(pairs), dtype=np.float64)
        for (_, rows), part in zip(plan, parts):
            raw[rows] = part
        return self._finish(raw, normalize)

    def score(self, query: str, texts: Sequence[str], *, normalize: Optional[bool] = None,
              **kwargs: Any) -> np.ndarray:
        """Scores of ``texts`` against ``query``, input order, float64 ``[N]``."""
        q, texts = check_query(query), check_rank_texts(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.compute_score([(q, t) for t in texts], normalize=normalize, **kwargs), np.float64)

    async def ascore(self, query: str, texts: Sequence[str], *, normalize: Optional[bool] = None,
                     **kwargs: Any) -> np.ndarray:
        """Async :meth:`score`."""
        q, texts = check_query(query), check_rank_texts(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(await self.acompute_score([(q, t) for t in texts], normalize=normalize, **kwargs),
                          np.float64)

    def rerank(self, query: str, texts: Sequence[str], top_n: Optional[int] = None, *,
               normalize: Optional[bool] = None, **kwargs: Any) -> list:
        """``texts`` best first as :class:`bgem3.RankedText` ``(index, score)``, ties in input order; ``top_n`` of them."""
        check_top_n(top_n)
        return self._ranked(self.score(query, texts, normalize=normalize, **kwargs), top_n)

    async def arerank(self, query: str, texts: Sequence[str], top_n: Optional[int] = None, *,
                      normalize: Optional[bool] = None, **kwargs: Any) -> list:
        """Async :meth:`rerank`."""
        check_top_n(top_n)
        return self._ranked(await self.ascore(query, texts, normalize=normalize, **kwargs), top_n)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _ranked(scores: np.ndarray, top_n: Optional[int]) -> list:
        order = np.argsort(-scores, kind="stable")
        if top_n is not None:
            order = order[:top_n]
        return [RankedText(index=int(i), score=float(scores[i])) for i in order]

    def _finish(self, raw: np.ndarray, normalize: Optional[bool]) -> list[float]:
        norm = self.normalize if normalize is None else normalize
        if not isinstance(norm, bool):
            raise TypeError(f"normalize must be True or False; got {norm!r}")
        return [_sigmoid(x) for x in raw.tolist()] if norm else [float(x) for x in raw.tolist()]

    def _plan(self, pairs: list[tuple[str, str]], batch_size: Optional[int],
              max_length: Optional[int]) -> list[tuple[str, list[int]]]:
        """Requests to send: one query each (TEI's /rerank takes one query), under the server's limits."""
        if max_length is not None and positive_int(max_length, "max_length") != self.max_length:
            raise ValueError(f"max_length={max_length} cannot be honoured: the server at {self.url} cuts every pair at "
                             f"{self.max_length} tokens (bgem3 serve --reranker-max-length)")
        bs = self.batch_size if batch_size is None else min(positive_int(batch_size, "batch_size"),
                                                             self.server_batch_size)
        groups: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            groups.setdefault(q, []).append(i)
        overhead = _PAIR_OVERHEAD.get(self.kind, 256)
        byte_cap = int(self.max_body_bytes * 0.8)
        plan = []
        for q, rows in groups.items():
            qbytes = len(json.dumps(q)) + 64
            start, tokens, size = 0, 0, qbytes
            for k, i in enumerate(rows):
                text = pairs[i][1]
                tok = min(len(q) + len(text), self.max_length) + overhead
                nbytes = len(json.dumps(text)) + 2
                if k > start and (k - start >= bs or tokens + tok > self.max_request_tokens
                                  or size + nbytes > byte_cap):
                    plan.append((q, rows[start:k]))
                    start, tokens, size = k, 0, qbytes
                tokens += tok
                size += nbytes
            plan.append((q, rows[start:]))
        return plan

    def _body(self, query: str, texts: list[str]) -> dict:
        return {"query": query, "texts": texts, "raw_scores": True, "return_text": False, "truncate": True}

    def _cap(self, n: int) -> int:
        return 4096 + n * _ENTRY_BYTES

    def _score_sync(self, query: str, texts: list[str], deadline: _Deadline) -> np.ndarray:
        try:
            answer = self._request_sync("POST", "/rerank", self._body(query, texts), deadline, self._cap(len(texts)))
        except _TooLarge:
            half = len(texts) // 2
            return np.concatenate([self._score_sync(query, texts[:half], deadline),
                                   self._score_sync(query, texts[half:], deadline)])
        return self._check_answer(answer, len(texts))

    async def _score_async(self, query: str, texts: list[str], deadline: _Deadline) -> np.ndarray:
        try:
            answer = await self._request_async("POST", "/rerank", self._body(query, texts), deadline,
                                               self._cap(len(texts)))
        except _TooLarge:
            half = len(texts) // 2
            return np.concatenate([await self._score_async(query, texts[:half], deadline),
                                   await self._score_async(query, texts[half:], deadline)])
        return self._check_answer(answer, len(texts))

    def _check_answer(self, answer: Any, n: int) -> np.ndarray:
        """The raw scores in input order, or RemoteError naming what is wrong with the answer."""
        where = f"the answer from {self.url}/rerank"
        if not isinstance(answer, list):
            raise RemoteError(f"{where} is a JSON {type(answer).__name__}, not the list of {{index, score}} TEI sends",
                              200)
        if len(answer) != n:
            raise RemoteError(f"{where} has {len(answer)} entries for {n} candidates", 200)
        out = np.full(n, np.nan, dtype=np.float64)
        seen = np.zeros(n, dtype=bool)
        for k, row in enumerate(answer):
            if not isinstance(row, dict):
                raise RemoteError(f"{where}: entry {k} is a {type(row).__name__}, not an object", 200)
            i, s = row.get("index"), row.get("score")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise RemoteError(f"{where}: entry {k} has index {i!r}, not an integer in [0, {n})", 200)
            if seen[i]:
                raise RemoteError(f"{where}: index {i} appears twice", 200)
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise RemoteError(f"{where}: entry {k} (index {i}) has score {s!r}, not a finite number", 200)
            seen[i] = True
            out[i] = float(s)
        return out

    def _error(self, path: str, status: int, raw: bytes, n_texts: int) -> BaseException:
        if status == 413 and n_texts > 1:
            return _TooLarge()
        return self._refusal(path, status, str(server_message(raw) or raw[:300].decode("utf-8", "replace") or status))

    def _decide(self, path: str, attempt: int, status: Optional[int], raw: bytes, headers: Any,
                error: Optional[BaseException], n_texts: int, deadline: _Deadline) -> Optional[float]:
        """``None``: ``raw`` is the answer; else the seconds to wait before the next try (raises otherwise)."""
        if error is None:
            if 200 <= status < 300:
                return None
            if status not in RETRY_STATUSES:
                if 300 <= status < 400:
                    raise RemoteError(f"{self.url}{path} answered a redirect ({status}); give RemoteReranker the "
                                      "final URL of the server", status)
                raise self._error(path, status, raw, n_texts)
            last, retry_after = f"HTTP {status}", headers.get("retry-after")
        else:
            last, retry_after = f"{type(error).__name__}: {error}", None
        if attempt >= self.max_retries:
            raise self._give_up(path, attempt + 1, last)
        delay = self._delay(attempt, retry_after)
        if delay >= deadline.left():
            raise RemoteUnavailable(f"{self.url}{path} is not answering ({last}) and the next retry would end after "
                                    f"the call's timeout={deadline.seconds:g} s")
        return delay

    def _parse(self, path: str, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteError(f"{self.url}{path} answered 2xx with a body that is not JSON ({raw[:80]!r}...); is it "
                              "a bgem3 server?", 200) from None

    def _too_big(self, path: str, cap: int) -> RemoteError:
        return RemoteError(f"the answer from {self.url}{path} is over {cap} bytes, more than the question can need; "
                           "refused (is it a bgem3 server?)", 200)

    def _request_sync(self, method: str, path: str, body: Optional[dict], deadline: _Deadline, cap: int) -> Any:
        httpx = self._httpx()
        n = len(body["texts"]) if body else 0
        for attempt in itertools.count():
            status, raw, headers, err = None, b"", {}, None
            try:
                left = deadline.left()
                with self._client.stream(method, path, json=body, timeout=left) as r:
                    status, headers = r.status_code, r.headers
                    chunks, size = [], 0
                    for chunk in r.iter_bytes():
                        size += len(chunk)
                        if size > cap:
                            raise self._too_big(path, cap)
                        chunks.append(chunk)
                        deadline.left()
                    raw = b"".join(chunks)
            except httpx.TransportError as exc:
                err = exc
            delay = self._decide(path, attempt, status, raw, headers, err, n, deadline)
            if delay is None:
                return self._parse(path, raw)
            time.sleep(delay)

    async def _request_async(self, method: str, path: str, body: Optional[dict], deadline: _Deadline,
                             cap: int) -> Any:
        httpx = self._httpx()
        client = self._async_client()
        n = len(body["texts"]) if body else 0
        for attempt in itertools.count():
            status, raw, headers, err = None, b"", {}, None
            try:
                left = deadline.left()

                async def go() -> tuple:
                    async with client.stream(method, path, json=body, timeout=left) as r:
                        chunks, size = [], 0
                        async for chunk in r.aiter_bytes():
                            size += len(chunk)
                            if size > cap:
                                raise self._too_big(path, cap)
                            chunks.append(chunk)
                        return r.status_code, r.headers, b"".join(chunks)

                try:
                    status, headers, raw = await asyncio.wait_for(go(), timeout=left)
                except asyncio.TimeoutError:
                    deadline.left()
                    raise RemoteUnavailable(f"{self.url}{path} did not answer within the call's timeout="
                                            f"{deadline.seconds:g} s") from None
            except httpx.TransportError as exc:
                err = exc
            delay = self._decide(path, attempt, status, raw, headers, err, n, deadline)
            if delay is None:
                return self._parse(path, raw)
            await asyncio.sleep(delay)


#: Reranker options that only make sense for a model loaded in this process.
_LOCAL_ONLY = ("query_max_length", "prompt", "max_tokens_per_batch", "local_files_only", "cache_dir", "revision",
               "trust_remote_code", "use_fp16", "use_bf16", "cutoff_layers", "compress_ratio", "compress_layers")


def remote_reranker_for(url: str, **options: Any) -> RemoteReranker:
    """A :class:`RemoteReranker` for ``url`` from the keyword arguments a caller would give
    :class:`bgem3.Reranker`: ``batch_size``, ``max_length`` (must match the server's) and ``normalize`` are
    used, ``device`` / ``dtype`` must be unset or match the server's, loading options are refused by name.

    >>> remote_reranker_for("http://127.0.0.1:9", cache_dir="/tmp")
    Traceback (most recent call last):
    ValueError: cache_dir applies to a model loaded in this process; the reranker at http://127.0.0.1:9 is the server's: drop cache_dir (configure `bgem3 serve --reranker` instead)
    """
    given = RemoteReranker._options_for(url, options, ("device", "dtype", "batch_size", "max_length", "normalize"),
                                        _LOCAL_ONLY)
    rr = RemoteReranker(url, batch_size=given.get("batch_size"), max_length=given.get("max_length"),
                        normalize=bool(given.get("normalize", False)))
    rr._check_served_as(url, given)
    return rr
