"""Overload (429 + Retry-After, then RemoteEncoder's retries) and SIGTERM under load, on a
second real server with a one-text queue."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from _serve_process import ServerProcess  # noqa: E402

LONG = [f"passage {i}: " + " ".join(f"w{j}" for j in range(400)) for i in range(48)]


@pytest.fixture(scope="module")
def busy_server(m3_path):
    srv = ServerProcess(m3_path, "--max-queue-texts", "1", "--max-client-batch-size", "8")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local(m3_path):
    from bgem3 import Encoder

    return Encoder(m3_path, device="cpu")


def test_queue_limit_enforced_under_overload(busy_server, local):
    async def go():
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(c.post("/embed", json={"inputs": [t]}) for t in LONG))

    rs = asyncio.run(go())
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429} and codes.count(429) >= 1, codes
    for r in rs:
        if r.status_code == 429:
            assert r.json()["error_type"] == "Overloaded" and int(r.headers["retry-after"]) >= 1
    want = local.encode(LONG).dense
    for i, r in enumerate(rs):
        if r.status_code == 200:
            assert np.abs(np.asarray(r.json()[0], np.float32) - want[i]).max() <= 1e-6
    metrics = httpx.get(busy_server.url + "/metrics").text
    assert f"bgem3_rejected_total {codes.count(429)}" in metrics


def test_remote_encoder_retries_through_429(busy_server, local):
    from bgem3.remote import RemoteEncoder

    enc = RemoteEncoder(busy_server.url, batch_size=1, concurrency=4, backoff=0.02, max_backoff=0.1, max_retries=1000)
    out = enc.encode(LONG[:24], sparse=True)
    want = local.encode(LONG[:24], sparse=True)
    assert np.abs(out.dense - want.dense).max() <= 1e-6
    assert [set(a) for a in out.sparse] == [set(b) for b in want.sparse]
    assert "bgem3_rejected_total 0" not in httpx.get(busy_server.url + "/metrics").text
    enc.close()


def test_sigterm_under_load_finishes_in_flight_work(busy_server, local):
    # the module's last test: it stops the module's server
    srv = busy_server
    texts = [f"shutdown text {i} " + "word " * 100 for i in range(48)]
    want = local.encode(texts).dense
    outcomes: list = [None] * len(texts)

    async def one(c, i):
        try:
            r = await c.post("/embed", json={"inputs": [texts[i]]})
            outcomes[i] = r
        except httpx.TransportError as exc:
            outcomes[i] = exc

    async def go():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            tasks = [asyncio.ensure_future(one(c, i)) for i in range(len(texts))]
            while True:  # SIGTERM once the server has work in flight
                m = httpx.get(srv.url + "/metrics").text
                if "bgem3_in_flight_requests 0" not in m or all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.005)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)

    t0 = time.monotonic()
    asyncio.run(go())
    rc = srv.proc.wait(60)
    assert rc == 0, "".join(srv.stderr)[-2000:]
    assert time.monotonic() - t0 < 60
    ok = [i for i, o in enumerate(outcomes) if isinstance(o, httpx.Response) and o.status_code == 200]
    assert ok, outcomes
    for i in ok:  # whatever was answered is complete and right
        assert np.abs(np.asarray(outcomes[i].json()[0], np.float32) - want[i]).max() <= 1e-6
    for o in outcomes:  # the rest were refused cleanly, never a half answer
        assert isinstance(o, httpx.TransportError) or o.status_code in (200, 429, 503), o


def test_health_is_503_while_draining_and_work_is_still_served(m3_path, local):
    # --drain-seconds: SIGTERM turns /health to 503 while the socket stays open and requests are
    # still answered (a load balancer's probe sees the drain before the server goes away); then exit 0
    srv = ServerProcess(m3_path, "--drain-seconds", "3")
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/health").status_code == 200
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 2.5
            health = c.get("/health")
            while health.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
                health = c.get("/health")
            assert health.status_code == 503 and health.headers["retry-after"] == "1"
            r = c.post("/embed", json={"inputs": ["still served while draining"]})
            assert r.status_code == 200
            want = local.encode(["still served while draining"]).dense[0]
            assert np.abs(np.asarray(r.json()[0], np.float32) - want).max() <= 1e-6
            assert srv.proc.poll() is None  # the drain is not over yet
        assert srv.proc.wait(30) == 0, "".join(srv.stderr)[-2000:]
    finally:
        srv.stop()
