"""What the two HTTP clients of ``bgem3 serve`` share (a leaf: stdlib, and httpx when a client is made).

:class:`bgem3.remote.RemoteEncoder` and :class:`bgem3.remote_rerank.RemoteReranker` both derive from
:class:`HttpClient`: the settings checks (URL, retries, backoff, seconds), the API key and headers, one
pooled ``httpx.Client`` plus one ``httpx.AsyncClient`` per event loop, ``close`` / ``aclose`` / ``with``,
the jittered exponential backoff that honours ``Retry-After``, and the words of a refusal (401, another
error status, retries spent). Each client keeps its own request loop (the encoder bounds each request, the
reranker the whole call) and its own answer checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import weakref
from typing import Any, Optional, Union

from ._checks import positive_int
from ._dtypes import dtype_name

__all__ = ["HttpClient", "RETRY_STATUSES", "RemoteError", "RemoteUnavailable", "is_url"]

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


def seconds(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as float seconds if it is a number ``>= 0`` (``> 0`` with ``positive``); ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a number of seconds {'> 0' if positive else '>= 0'}; got {value!r}")
    return float(value)


def server_message(raw: bytes) -> Optional[str]:
    """The ``error`` (or ``error.message``) a bgem3 / TEI / OpenAI error body carries; ``None`` if none."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err
    return None if msg is None else str(msg)


class HttpClient:
    """The connection side of a client of ``bgem3 serve`` (see the module docs). A subclass sets the three
    names its messages use (``_client_name``, ``_server``, ``_what``) and calls :meth:`_connect` in
    ``__init__`` before its first request."""

    #: the client's public name, and how the server it talks to is started (both named in messages)
    _client_name = "HttpClient"
    _server = "bgem3 serve"
    #: what the server runs, in messages ("the model at URL", "the reranker at URL")
    _what = "model"

    @classmethod
    def _httpx(cls) -> Any:
        try:
            import httpx
        except ImportError:
            raise ImportError(f"{cls._client_name} needs httpx, which is not installed: pip install 'bgem3[remote]'"
                              ) from None
        return httpx

    def _connect(self, url: str, api_key: Optional[str], *, max_retries: int, backoff: float, max_backoff: float,
                 concurrency: int, headers: Optional[dict], verify: Union[bool, str],
                 client_timeout: Optional[float] = None) -> None:
        """Check the settings every client takes and open the sync pool (``client_timeout``: httpx's
        timeout for the pools; ``None`` leaves httpx's default, the request gives its own)."""
        httpx = self._httpx()
        if not is_url(url):
            raise ValueError(f"url must start with http:// or https://; got {url!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0; got {max_retries!r}")
        self.backoff = seconds("backoff", backoff)
        self.max_backoff = seconds("max_backoff", max_backoff)
        self.max_retries = max_retries
        self.concurrency = positive_int(concurrency, "concurrency")
        self.url = url.strip().rstrip("/")
        self.path = self.url
        key = api_key if api_key is not None else os.environ.get("BGEM3_API_KEY")
        self._headers = {"accept": "application/json", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._verify = verify
        self._limits = httpx.Limits(max_connections=max(8, 2 * self.concurrency),
                                    max_keepalive_connections=max(8, 2 * self.concurrency))
        self._pool_options = {} if client_timeout is None else {"timeout": client_timeout}
        self._client = httpx.Client(base_url=self.url, headers=self._headers, limits=self._limits, verify=verify,
                                    **self._pool_options)
        # one async pool per event loop (an httpx.AsyncClient is bound to the loop that made it); keyed by the
        # loop itself, weakly: a new loop can reuse a dead one's id(), never its pool
        self._aclients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._alock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the pooled connections (or use the client as a context manager)."""
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

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _async_client(self) -> Any:
        """This event loop's pool (made on first use)."""
        httpx = self._httpx()
        loop = asyncio.get_running_loop()
        with self._alock:
            for dead in [lp for lp in list(self._aclients) if lp.is_closed()]:
                del self._aclients[dead]  # a pool can keep its loop alive: drop those of closed loops
            client = self._aclients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(base_url=self.url, headers=self._headers, limits=self._limits,
                                           verify=self._verify, **self._pool_options)
                self._aclients[loop] = client
        return client

    # ------------------------------------------------------------------ retries and refusals
    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        """Seconds before try ``attempt + 1``: ``backoff * 2**attempt`` capped at ``max_backoff``, jittered
        down to half; a ``Retry-After`` (seconds) is honoured up to ``max_backoff``."""
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        return delay

    def _refusal(self, path: str, status: int, msg: str) -> Exception:
        """The error for a status that is not retried: ``PermissionError`` for 401 (naming the API key),
        else :class:`RemoteError`."""
        if status == 401:
            return PermissionError(f"{self.url}{path}: {msg} ({self._client_name}(url, api_key=...) or "
                                   "$BGEM3_API_KEY)")
        return RemoteError(f"{self.url}{path} answered {status}: {msg}", status)

    # ------------------------------------------------------------------ the *_for(url, **options) constructors
    @classmethod
    def _options_for(cls, url: str, options: dict, usable: tuple, local_only: tuple) -> dict:
        """The options a caller gave (``None`` / ``...`` mean unset) if each is one of ``usable``; an option
        for a model loaded in this process (``local_only``, or any other) is refused by name."""
        given = {k: v for k, v in options.items() if v is not None and v is not ...}
        bad = sorted(k for k in given if k in local_only or k not in usable)
        if bad:
            raise ValueError(f"{', '.join(bad)} applies to a model loaded in this process; the {cls._what} at {url} "
                             f"is the server's: drop {', '.join(bad)} (configure `{cls._server}` instead)")
        return given

    def _check_served_as(self, url: str, given: dict) -> None:
        """``device`` / ``dtype`` in ``given`` must be the server's (closes this client and says so otherwise)."""
        for key, server in (("device", self.device), ("dtype", dtype_name(self.dtype))):
            if key in given:
                mine = str(given[key]) if key == "device" else dtype_name(given[key])
                if mine != server:
                    self.close()
                    raise ValueError(f"{key}={given[key]!r} does not match the server at {url}, which runs {server}; "
                                     f"{key} is chosen by the server (bgem3 serve --{key}); drop it")

    def _give_up(self, path: str, tries: int, last: str) -> RemoteUnavailable:
        return RemoteUnavailable(f"{self.url}{path} did not answer after {tries} tries ({last}); is `{self._server}` "
                                 f"running there, and not overloaded? ({self._client_name}(max_retries=..., "
                                 "timeout=...))")
