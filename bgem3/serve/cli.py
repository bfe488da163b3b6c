"""The ``bgem3 serve`` subcommand: its flags and its runner (``bgem3/cli.py`` only registers it).

Example::

    bgem3 serve --model BAAI/bge-m3 --port 8080                 # loopback only
    bgem3 serve --model BAAI/bge-m3 --reranker BAAI/bge-reranker-v2-m3   # embedder + /rerank, /v1/rerank
    bgem3 serve --reranker BAAI/bge-reranker-v2-m3              # a reranker-only server
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

__all__ = ["add_parser", "cmd_serve", "connection_cap", "listen_socket", "uvicorn_config"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``bgem3`` subcommands (``common`` carries --model/--device/--dtype/...)."""
    p = sub.add_parser(
        "serve", parents=[common], help="serve an encoder over HTTP (TEI, OpenAI and bgem3 APIs)",
        description="One shared encoder for many processes and machines: TEI's /embed, /embed_sparse, /info, "
                    "/health; OpenAI's /v1/embeddings; bgem3's /encode (dense + lexical + ColBERT); /metrics. "
                    "With --reranker: TEI's /rerank and the Cohere/Jina/infinity-style /v1/rerank (beside the "
                    "embedder, or alone when --model is not given). "
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
    g = p.add_argument_group("reranker")
    g.add_argument("--reranker", default=None, metavar="MODEL",
                   help="also serve this cross-encoder / LLM reranker (hub id or folder, e.g. BAAI/bge-reranker-v2-m3) "
                        "on POST /rerank (TEI) and POST /v1/rerank (Cohere/Jina/infinity); without --model the server "
                        "serves the reranker only. --device / --dtype apply to it too")
    g.add_argument("--served-reranker-name", default=None, metavar="NAME",
                   help="the reranker's name in /info and /v1/models, accepted as /v1/rerank's `model` (default: "
                        "--reranker as given; --served-model-name when no embedder is served)")
    g.add_argument("--reranker-max-length", type=_positive, default=None, metavar="N",
                   help="most tokens of one (query, passage) pair (default: the reranker's, 512 as FlagEmbedding); "
                        "longer pairs are cut as FlagEmbedding cuts them (passage cut, query kept), or refused with "
                        "413 when a request says truncate=false / with --no-auto-truncate")
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
    g.add_argument("--max-batch-tokens", type=_positive, default=None, metavar="N",
                   help="most padded tokens in one forward pass (default: the model's own budget, 4096 on CPU "
                        "and 16384 on a GPU; shown in /info)")
    g.add_argument("--max-queue-tokens", type=_positive, default=262144, metavar="N",
                   help="tokens allowed to wait; beyond it requests get 429 + Retry-After (default 262144)")
    g.add_argument("--max-queue-texts", type=_positive, default=4096, metavar="N",
                   help="texts allowed to wait; beyond it requests get 429 + Retry-After (default 4096)")
    g.add_argument("--request-timeout", type=_seconds, default=60.0, metavar="S",
                   help="seconds from the end of a request's body to its vectors (tokenising and queueing included) "
                        "before a 504 (default 60)")
    g = p.add_argument_group("connections (slow or hostile clients)")
    g.add_argument("--header-timeout", type=_seconds, default=10.0, metavar="S",
                   help="seconds from a connection's opening (or a request's first byte) to the end of the request "
                        "headers, in total; beyond it 408 + close (slowloris) (default 10)")
    g.add_argument("--body-timeout", type=_seconds, default=30.0, metavar="S",
                   help="seconds from the end of the headers to the end of the body, in total; beyond it 408 + "
                        "close (a stalled or dripped body) (default 30)")
    g.add_argument("--keep-alive-timeout", type=_seconds, default=5.0, metavar="S",
                   help="seconds an idle kept-alive connection stays open between requests (default 5)")
    g.add_argument("--max-connections", type=_positive, default=1024, metavar="N",
                   help="most open client connections; at the cap a new one takes the place of the oldest connection "
                        "with no request in progress (slow headers, idle), else it gets 503 + Retry-After and is closed. "
                        "Lowered to what the file-descriptor limit allows (the soft RLIMIT_NOFILE is raised towards "
                        "the hard one at start-up) (default 1024)")
    g.add_argument("--max-header-bytes", type=_positive, default=16384, metavar="N",
                   help="most bytes of a request line + headers not yet complete; beyond it 400 + close (default 16384)")
    g = p.add_argument_group("shutdown")
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


def connection_cap(wanted: int, *, quiet: bool = False) -> int:
    """``wanted`` connections, or fewer when the file-descriptor limit cannot hold them: the soft
    ``RLIMIT_NOFILE`` is first raised towards the hard limit (as much as this process may)."""
    from .protocol import fd_budget, raise_fd_limit

    soft, hard = raise_fd_limit(wanted + 256)
    budget = fd_budget(soft)
    if budget is not None and budget < wanted:
        if not quiet:
            print(f"bgem3 serve: the file-descriptor limit ({soft}, hard {hard}) holds only {budget} connections; "
                  f"--max-connections lowered from {wanted} to {budget} (raise `ulimit -n` for more)", file=sys.stderr)
        return budget
    return wanted


def uvicorn_config(app: Any, *, header_timeout: float = 10.0, body_timeout: float = 30.0,
                   keep_alive_timeout: float = 5.0, max_connections: Optional[int] = 1024,
                   max_header_bytes: int = 16384, log_level: str = "warning",
                   timeout_graceful_shutdown: Optional[int] = 30) -> Any:
    """The ``uvicorn.Config`` ``bgem3 serve`` runs ``app`` with: the h11 protocol with header / body
    deadlines and the connection cap (:mod:`bgem3.serve.protocol`), the keep-alive timeout, the
    header size bound. Embedders running the app under their own uvicorn can use it too."""
    import uvicorn

    from .protocol import hardened_h11

    proto = hardened_h11(header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections)
    return uvicorn.Config(app, http=proto, log_level=log_level, timeout_graceful_shutdown=timeout_graceful_shutdown,
                          access_log=log_level in ("info", "debug"), lifespan="on", limit_concurrency=None,
                          backlog=2048, timeout_keep_alive=keep_alive_timeout,
                          h11_max_incomplete_event_size=max_header_bytes)


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
    from .app import ServeConfig, check_api_key, create_app

    if args.api_key:
        check_api_key(args.api_key)  # before the model loads: a key that can never match is refused at once
    reranker_name = getattr(args, "reranker", None)
    model = args.model or (None if reranker_name else "BAAI/bge-m3")
    if model is None and args.max_length is not None:
        from .._argtypes import UsageError

        raise UsageError("bgem3 serve: --max-length applies to the embedder (--model), which is not served; use "
                         "--reranker-max-length for the reranker")
    _set_threads(args.threads, args.device)
    from .._argtypes import backend_options

    encoder = reranker = None
    if model is not None:
        options: dict = {"device": args.device, "dtype": args.dtype, "max_length": args.max_length,
                         **backend_options(args)}
        if args.batch_size:
            options["batch_size"] = args.batch_size
        encoder = Encoder(model, **options)
    if reranker_name:
        from .. import Reranker

        ropts: dict = {"device": args.device, "dtype": args.dtype}
        if args.reranker_max_length:
            ropts["max_length"] = args.reranker_max_length
        reranker = Reranker(reranker_name, **ropts)
    config = ServeConfig(
        api_key=args.api_key or None, served_model_name=args.served_model_name,
        max_client_batch_size=args.max_client_batch_size, max_input_length=args.max_length,
        max_request_tokens=args.max_request_tokens, max_body_bytes=args.max_body_bytes,
        auto_truncate=args.auto_truncate, max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.batch_size or 64, max_queued_tokens=args.max_queue_tokens,
        max_queued_texts=args.max_queue_texts, request_timeout=args.request_timeout,
        served_reranker_name=getattr(args, "served_reranker_name", None),
        reranker_max_length=getattr(args, "reranker_max_length", None),
    )
    app = create_app(encoder, config, reranker=reranker)
    max_connections = connection_cap(args.max_connections, quiet=args.quiet)

    sock, family = listen_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if not args.quiet:
        auth = "bearer key required" if config.api_key else "no API key (open)"
        state = app.state.server
        served = [f"{model} on {encoder.device} ({state.batcher.max_batch_tokens} tokens per pass)"] \
            if encoder is not None else []
        served += [f"reranker {reranker_name} on {reranker.device} ({state.rerank_batcher.max_batch_tokens} tokens per "
                   "pass)"] if reranker is not None else []
        print(f"bgem3 serve: {', '.join(served)}, {auth}", file=sys.stderr)
    # one parseable line on stdout, for scripts and tests that start the server on port 0
    print(f"bgem3 serve: listening on http://{shown}:{port}", flush=True)
    uconfig = uvicorn_config(app, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                             keep_alive_timeout=args.keep_alive_timeout, max_connections=max_connections,
                             max_header_bytes=args.max_header_bytes, log_level=args.log_level,
                             timeout_graceful_shutdown=int(args.shutdown_timeout))
    server = draining_server(uconfig, app.state.server.start_draining, args.drain_seconds)
    # uvicorn re-raises the signal it caught once it has shut down gracefully; a SIGTERM that
    # was handled (in-flight work finished) ends the process with status 0, not "killed".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
