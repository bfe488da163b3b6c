"""Qdrant's failures as errors people can read: the URL that could not be reached, one line per answer.

qdrant-client raises ``ResponseHandlingException`` wrapping an ``httpx.ConnectError`` when the
server is down (the URL is nowhere in the message), ``UnexpectedResponse`` with the raw response
body over several lines, and gRPC's ``_InactiveRpcError`` whose text is a multi-line dump with a
``debug_error_string``. :func:`readable_errors` turns them into :class:`QdrantConnectionError`
(naming the URL) and :class:`QdrantServerError` (status and message on one line), with the
original as ``__cause__``.

Example::

    >>> describe(ValueError("bad\\n   request"))
    'ValueError: bad request'
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: What to install for the Qdrant store.
QDRANT_EXTRA = "pip install 'bgem3[qdrant]'"


class QdrantConnectionError(ConnectionError):
    """Qdrant could not be reached (connection refused, DNS, TLS, timeout); the message names the URL."""


class QdrantServerError(RuntimeError):
    """Qdrant answered a request with an error (HTTP status or gRPC code), in one readable line.

    Attributes:
        code: the HTTP status (int) or the gRPC status name (str), when known.
    """

    def __init__(self, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.code = code


def require_qdrant_client() -> None:
    """ImportError naming the extra when qdrant-client is missing (checked before any model loads)."""
    try:
        import qdrant_client  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"QdrantHybridStore needs the qdrant-client package: {QDRANT_EXTRA}") from exc


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (gRPC errors as ``code: details``)."""
    grpc_code = _grpc_code(exc)
    if grpc_code is not None:
        return f"gRPC {grpc_code}: {_one_line(_grpc_details(exc))}"
    msg = _one_line(str(exc))
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _grpc_code(exc: BaseException) -> Optional[str]:
    try:
        import grpc
    except Exception:  # pragma: no cover
        return None
    if not isinstance(exc, grpc.RpcError):
        return None
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    return getattr(code, "name", None) or str(code)


def _grpc_details(exc: BaseException) -> str:
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return str(details or "")


def _connection_failure(exc: BaseException) -> Optional[BaseException]:
    """The transport-level failure inside ``exc`` (connection refused, DNS, timeout), if that is what it is."""
    try:
        import httpx
    except Exception:  # pragma: no cover
        httpx = None  # type: ignore[assignment]
    seen = 0
    cur: Optional[BaseException] = exc
    while cur is not None and seen < 6:
        if isinstance(cur, (ConnectionError, TimeoutError)) and not isinstance(cur, QdrantConnectionError):
            return cur
        if httpx is not None and isinstance(cur, httpx.TransportError):
            return cur
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        cur = nxt
        seen += 1
    return None


def translate(exc: BaseException, where: str) -> Optional[BaseException]:
    """The readable error for ``exc`` raised while talking to Qdrant at ``where``; ``None`` to keep ``exc``."""
    if isinstance(exc, (QdrantConnectionError, QdrantServerError)):
        return None
    code = _grpc_code(exc)
    if code is not None:
        details = _one_line(_grpc_details(exc))
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return QdrantConnectionError(f"cannot reach Qdrant at {where} over gRPC ({code}: {details}); is the server "
                                         f"running and is the gRPC port (default 6334) right?")
        return QdrantServerError(f"Qdrant at {where} answered gRPC {code}: {details}", code=code)
    try:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    except Exception:  # pragma: no cover
        return None
    if isinstance(exc, UnexpectedResponse):
        content = exc.content.decode("utf-8", "replace") if isinstance(exc.content, bytes) else str(exc.content)
        return QdrantServerError(f"Qdrant at {where} answered HTTP {exc.status_code} {exc.reason_phrase or ''}: "
                                 f"{_one_line(content)}".replace("  ", " "), code=exc.status_code)
    failure = _connection_failure(exc)
    if failure is not None and (isinstance(exc, ResponseHandlingException) or failure is exc):
        return QdrantConnectionError(f"cannot reach Qdrant at {where} ({describe(failure)}); is the server running, "
                                     f"and are url=/port right?")
    return None


def readable_errors(method: F) -> F:
    """Decorate a store method: Qdrant transport and server errors leave it as readable ones."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            new = translate(exc, self._where())
            if new is None:
                raise
            raise new from exc

    return wrapper  # type: ignore[return-value]
