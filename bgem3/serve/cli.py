"""The ``bgem3 serve`` subcommand: its flags and its runner (``bgem3/cli.py`` only registers it).

Example::

    bgem3 serve --model BAAI/bge-m3 --port 8080                 # loopback only
    BGEM3_API_KEY=s3cret bgem3 serve --model BAAI/bge-m3 --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Optional

from .._argtypes import non_negative_seconds as _non_negative_seconds
from .._argtypes import port as _port
from .._argtypes import positive as _positive
from .._argtypes import positive_seconds as _seconds

__all__ = ["add_parser", "cmd_serve", "listen_socket"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``bgem3`` subcommands (``common`` carries --model/--device/--dtype/...)."""
    p = sub.add_parser(
        "serve", parents=[common], help="serve an encoder over HTTP (TEI, OpenAI and bgem3 APIs)",
        description="One shared encoder for many processes and machines: TEI's /embed, /embed_sparse, /info, "
                    "/health; OpenAI's /v1/embeddings; bgem3's /encode (dense + lexical + ColBERT); /metrics. "
                    "Requests from concurrent clients are batched together. Stateless: run N replicas behind "
                    "any HTTP load balancer. Needs: pip install 'bgem3[serve]'.")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for all interfaces)")
    g.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    g.add_argument("--api-key", default=os.environ.get("BGEM3_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $BGEM3_API_KEY; "
                        "none = open)")
    g.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="model name in /info and accepted as OpenAI's `model` (default: --model as given)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-client-batch-size", type=_positive, default=256, metavar="N",
                   help="most texts in one request (default 256)")
    g.add_argument("--max-request-tokens", type=_positive, default=131072, metavar="N",
                   help="most tokens in one request, all texts together (default 131072)")
    g.add_argument("--max-body-bytes", type=_positive, default=8 * 1024 * 1024, metavar="N",
                   help="most bytes in a request body (default 8 MiB)")
    g.add_argument("--no-auto-truncate", dest="auto_truncate", action="store_false",
                   help="refuse (413) texts longer than --max-length unless the request says truncate=true "
                        "(default: truncate, like the local Encoder)")
    g.add_argument("--max-batch-tokens", type=_positive, default=16384, metavar="N",
                   help="most padded tokens in one forward pass (default 16384)")
    g.add_argument("--max-queue-tokens", type=_positive, default=262144, metavar="N",
                   help="tokens allowed to wait; beyond it requests get 429 + Retry-After (default 262144)")
    g.add_argument("--max-queue-texts", type=_positive, default=4096, metavar="N",
                   help="texts allowed to wait; beyond it requests get 429 + Retry-After (default 4096)")
    g.add_argument("--request-timeout", type=_seconds, default=60.0, metavar="S",
                   help="seconds a request may wait for its vectors before a 504 (default 60)")
    g.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, seconds to finish in-flight requests (default 30)")
    g.add_argument("--drain-seconds", type=_non_negative_seconds, default=0.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, first answer /health with 503 for S seconds while still serving (so a "
                        "load balancer or Kubernetes readiness probe stops sending work), then close the socket and "
                        "finish in-flight requests (default 0)")
    g.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="torch CPU threads for the model (default on CPU: cores - 1, at least 1, so the HTTP event "
                        "loop keeps a core; more threads than free cores stall torch's OpenMP barriers)")
    g.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning; info logs every request)")
    p.set_defaults(func=cmd_serve)
    return p


def _set_threads(threads: "int | None", device: "str | None") -> None:
    """torch's intra-op threads: ``threads`` if given; on CPU, cores - 1 (at least 1) by default."""
    import torch

    from ..encoder import resolve_device

    if threads is None:
        if resolve_device(device).type != "cpu":
            return
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores - 1)
    torch.set_num_threads(threads)


def listen_socket(host: str, port: int) -> "tuple[socket.socket, int]":
    """A listening TCP socket on ``host:port`` (``port`` 0 = any free one) and its address family.

    It is created with ``proto=IPPROTO_TCP``: asyncio sets ``TCP_NODELAY`` only on sockets that say
    they are TCP, and without it every response with a body waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
                      "(0 = any free port) or stop what uses it") from None
    sock.listen(2048)
    return sock, family


def draining_server(config: Any, on_drain: Callable[[], None], drain_seconds: float) -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM / SIGINT starts a drain instead of closing at once.

    The signal calls ``on_drain`` (the app's ``/health`` turns 503) while the listening socket
    stays open and every route keeps serving; ``drain_seconds`` later uvicorn's own graceful
    shutdown runs (socket closed, in-flight requests finished, then the app's lifespan shutdown).
    A second signal skips the rest of the drain (a second Ctrl-C during the shutdown forces it,
    as in uvicorn).
    """
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        _exit_at: Optional[float] = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self._exit_at is None and not self.should_exit:
                on_drain()
                self._exit_at = time.monotonic() + drain_seconds
                if drain_seconds > 0:
                    captured = getattr(self, "_captured_signals", None)
                    if isinstance(captured, list):
                        captured.append(sig)  # re-raised after shutdown, as uvicorn does
                    return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self._exit_at is not None and time.monotonic() >= self._exit_at:
                self.should_exit = True
            return await super().on_tick(counter)

    return _DrainingServer(config)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the encoder, bind the socket, serve until SIGTERM / Ctrl-C (in-flight work finishes)."""
    try:
        import uvicorn
        import starlette  # noqa: F401
    except ImportError:
        raise ImportError("bgem3 serve needs starlette and uvicorn, which are not installed: "
                          "pip install 'bgem3[serve]'") from None
    from ..encoder import Encoder
    from .app import ServeConfig, create_app

    model = args.model or "BAAI/bge-m3"
    _set_threads(args.threads, args.device)
    from ..cli import backend_options

    options: dict = {"device": args.device, "dtype": args.dtype, "max_length": args.max_length, **backend_options(args)}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    encoder = Encoder(model, **options)
    config = ServeConfig(
        api_key=args.api_key or None, served_model_name=args.served_model_name,
        max_client_batch_size=args.max_client_batch_size, max_input_length=args.max_length,
        max_request_tokens=args.max_request_tokens, max_body_bytes=args.max_body_bytes,
        auto_truncate=args.auto_truncate, max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.batch_size or 64, max_queued_tokens=args.max_queue_tokens,
        max_queued_texts=args.max_queue_texts, request_timeout=args.request_timeout,
    )
    app = create_app(encoder, config)

    sock, family = listen_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if not args.quiet:
        auth = "bearer key required" if config.api_key else "no API key (open)"
        print(f"bgem3 serve: {model} on {encoder.device}, {auth}", file=sys.stderr)
    # one parseable line on stdout, for scripts and tests that start the server on port 0
    print(f"bgem3 serve: listening on http://{shown}:{port}", flush=True)
    uconfig = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=int(args.shutdown_timeout),
                             access_log=args.log_level in ("info", "debug"), lifespan="on",
                             limit_concurrency=None, backlog=2048)
    server = draining_server(uconfig, app.state.server.start_draining, args.drain_seconds)
    # uvicorn re-raises the signal it caught once it has shut down gracefully; a SIGTERM that
    # was handled (in-flight work finished) ends the process with status 0, not "killed".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
