"""Connection-level limits of ``bgem3 serve``: header / body read deadlines and a connection cap.

uvicorn bounds only the idle time between two requests of a kept-alive connection
(``timeout_keep_alive``). A client that opens a connection and sends its headers one byte every
few seconds (slowloris), or declares ``Content-Length: 1000`` and stops, is otherwise held for as
long as it likes, and enough of them exhaust the process's file descriptors: then nobody, not
even the health probe, gets in. This module adds, for every route alike (the limits act on the
connection before any route runs, so a new endpoint gets them without doing anything):

* **header deadline** (``header_timeout``): from the first byte of a request (or from the
  connection's opening) to the end of its headers. Total, not per read: a byte every second
  does not extend it. On expiry: ``408`` + close.
* **body deadline** (``body_timeout``): from the end of the headers to the end of the body, total.
  On expiry: ``408`` + close if no response has started, else close; the route sees the client
  as gone (``http.disconnect``).
* **connection cap** (``max_connections``): at the cap, a new connection takes the place of the
  oldest one that has no request in progress (one still sending its headers, or idle between
  requests), which is closed; when every connection has a request in progress, the new one is
  answered ``503`` + ``Retry-After: 1`` + ``Connection: close`` at once and closed. So the
  descriptors held never exceed the cap (pick it below the soft ``RLIMIT_NOFILE``;
  :func:`raise_fd_limit` raises that), and slow-header clients cannot keep others out.

Example::

    >>> import uvicorn                                                    # doctest: +SKIP
    >>> proto = hardened_h11(header_timeout=10, body_timeout=30, max_connections=1000)  # doctest: +SKIP
    >>> uvicorn.Config(app, http=proto, timeout_keep_alive=5)             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

__all__ = ["hardened_h11", "raise_fd_limit", "fd_budget"]

logger = logging.getLogger("bgem3.serve")

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")
_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def _raw(template: bytes, message: str, kind: str) -> bytes:
    import json

    body = json.dumps({"error": message, "error_type": kind}).encode()
    return template % (len(body), body)


def hardened_h11(*, header_timeout: float, body_timeout: float, max_connections: Optional[int]) -> type:
    """A uvicorn ``H11Protocol`` subclass enforcing the deadlines and the cap (pass it as
    ``uvicorn.Config(http=...)``). ``None`` / ``0`` for a deadline turns it off (not advised)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HardenedH11Protocol(H11Protocol):
        _deadline: Optional[asyncio.TimerHandle] = None
        _phase: Optional[str] = None  # "header" / "body" while a deadline runs

        _since: float = 0.0  # when the connection began waiting for a request (for eviction)

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._since = self.loop.time()
            if max_connections is not None and len(self.connections) > max_connections and not self._evict():
                self.connections.discard(self)
                logger.warning("connection cap reached (%d, --max-connections): refusing a connection",
                               max_connections)
                msg = (f"the server holds its maximum of {max_connections} connections (--max-connections); "
                       "retry in a moment")
                transport.write(_raw(_503, msg, "Overloaded"))
                transport.close()
                return
            self._arm("header")

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._since = self.loop.time()
            self._track()

        def _waiting(self) -> bool:
            """No request in progress: headers not complete yet, or idle between two requests."""
            if self.transport is None or self.transport.is_closing():
                return False
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def _evict(self) -> bool:
            """Close the connection that has waited longest without a request in progress; ``False`` if none."""
            oldest = None
            for other in self.connections:
                if other is not self and isinstance(other, HardenedH11Protocol) and other._waiting() and \
                        (oldest is None or other._since < oldest._since):
                    oldest = other
            if oldest is None:
                return False
            logger.info("connection cap reached (%d): closing the longest-waiting connection from %s",
                        max_connections, oldest.client)
            oldest._disarm()
            oldest.connections.discard(oldest)
            msg = "the server is at its connection cap and this connection sent no request in time; reconnect"
            oldest.transport.write(_raw(_503, msg, "Overloaded"))
            oldest.transport.close()
            return True

        # -------------------------------------------------------------- deadlines
        def _track(self) -> None:
            """Arm / move / drop the deadline from h11's view of the client's side."""
            if self.transport is None or self.transport.is_closing():
                self._disarm()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                # waiting for (the rest of) a request's headers; an idle kept-alive connection with
                # nothing buffered is uvicorn's keep-alive timer's business
                if self.cycle is None or self.conn.trailing_data[0]:
                    self._arm("header")
                else:
                    self._disarm()
            elif state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()

        def _arm(self, phase: str) -> None:
            if self._phase == phase:
                return  # a deadline is total: more bytes do not extend it
            self._disarm()
            seconds = header_timeout if phase == "header" else body_timeout
            if seconds:
                self._phase = phase
                self._deadline = self.loop.call_later(seconds, self._expired, phase)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._phase = None, None

        def _expired(self, phase: str) -> None:
            self._deadline, self._phase = None, None
            if self.transport is None or self.transport.is_closing():
                return
            seconds = header_timeout if phase == "header" else body_timeout
            what = "request headers" if phase == "header" else "request body"
            cycle = self.cycle
            started = cycle is not None and not cycle.response_complete and cycle.response_started
            logger.info("closing a connection from %s: %s not received within %g s", self.client, what, seconds)
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the route's receive() now answers http.disconnect
                cycle.keep_alive = False
                cycle.message_event.set()
            if not started:
                flag = "--header-timeout" if phase == "header" else "--body-timeout"
                self.transport.write(_raw(_408, f"the {what} did not arrive within {seconds:g} s ({flag}); "
                                                "send the whole request at once", "Timeout"))
            self.transport.close()

    HardenedH11Protocol.__qualname__ = HardenedH11Protocol.__name__
    return HardenedH11Protocol


def raise_fd_limit(want: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``want`` (never above the hard limit, never lower it).
    Returns ``(soft, hard)`` after the change; ``(-1, -1)`` where the platform has no such limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - a sandbox may refuse
            pass
    return soft, hard


def fd_budget(soft_limit: int, reserve: int = 64) -> Optional[int]:
    """Connections that fit under ``soft_limit`` descriptors: the limit less those open now and a
    ``reserve`` for what the process opens later (model files, threads' pipes, log files)."""
    if soft_limit < 0:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - no procfs
        used = 32
    return max(1, soft_limit - used - reserve)
