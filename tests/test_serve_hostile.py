"""`bgem3 serve` against slow and hostile clients, with raw sockets on 127.0.0.1.

Slowloris headers, stalled and dripped bodies, more connections than the cap, a process with
128 file descriptors, browser-style POSTs, a key that can never match. Every attack is bounded
in sockets (<= 150) and time (a few seconds), and every test ends by checking that `/health`
answers again within seconds.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _serve_process import ROOT, ServerProcess  # noqa: E402

HEADER_T, BODY_T, CAP = 1.0, 1.5, 40


@pytest.fixture(scope="module")
def server(m3_path):
    srv = ServerProcess(m3_path, "--max-length", "64", "--header-timeout", str(HEADER_T), "--body-timeout",
                        str(BODY_T), "--keep-alive-timeout", "1", "--max-connections", str(CAP))
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr)[-2000:]


def _addr(url: str) -> tuple[str, int]:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def _open(url: str, n: int, first: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(_addr(url), timeout=5)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def _until_closed(socks: list[socket.socket], limit: float, drip: bytes = b"", every: float = 0.25) -> dict:
    """Wait (at most ``limit`` s) for the server to answer or close each socket, sending one byte of
    ``drip`` on every still-open socket each ``every`` s. Returns ``{socket: (seconds, bytes read)}``."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    t0 = time.monotonic()
    got: dict = {}
    pos = 0
    next_drip = t0 + every
    while len(got) < len(socks) and time.monotonic() - t0 < limit:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            got[s] = (time.monotonic() - t0, data)
            sel.unregister(s)
        if drip and time.monotonic() >= next_drip:
            byte = drip[pos % len(drip):pos % len(drip) + 1]
            pos += 1
            for s in socks:
                if s not in got:
                    try:
                        s.send(byte)
                    except OSError:
                        pass
            next_drip += every
    sel.close()
    return got


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _health_within(url: str, seconds: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/health did not answer 200 within {seconds} s")


def test_slowloris_headers_are_cut_at_the_header_deadline(server):
    socks = _open(server.url, 20, b"GET /hea")
    try:
        got = _until_closed(socks, HEADER_T + 4, drip=b"lth HTTP/1.1\r\nX-a: " + b"b" * 100, every=0.3)
        assert len(got) == 20, f"{20 - len(got)} slowloris sockets still held after {HEADER_T + 4} s"
        for t, data in got.values():
            assert t <= HEADER_T + 1.5  # total, not per byte: dripping does not extend it
            assert data.startswith(b"HTTP/1.1 408") and b"--header-timeout" in data
    finally:
        _close(socks)
    assert _health_within(server.url, 3) < 3


def test_a_silent_connection_is_cut_at_the_header_deadline(server):
    socks = _open(server.url, 3)
    try:
        got = _until_closed(socks, HEADER_T + 3)
        assert len(got) == 3 and all(t <= HEADER_T + 1.5 for t, _ in got.values())
    finally:
        _close(socks)


@pytest.mark.parametrize("drip", [b"", b"x"], ids=["stalled", "dripped"])
def test_stalled_or_dripped_body_is_cut_at_the_body_deadline(server, drip):
    head = (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"inputs": ["')
    socks = _open(server.url, 10, head)
    try:
        got = _until_closed(socks, BODY_T + 4, drip=drip, every=0.2)
        assert len(got) == 10, f"{10 - len(got)} stalled bodies still held after {BODY_T + 4} s"
        for t, data in got.values():
            assert t <= BODY_T + 1.5
            assert data.startswith(b"HTTP/1.1 408") and b"--body-timeout" in data
    finally:
        _close(socks)
    r = httpx.post(server.url + "/embed", json={"inputs": ["still serving"]}, timeout=10)
    assert r.status_code == 200 and len(r.json()) == 1


STALLED = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"


def test_connections_beyond_the_cap_are_refused_at_once_and_health_recovers(server):
    socks = _open(server.url, CAP, STALLED)  # the cap's worth of requests in progress (bodies stalled)
    try:
        time.sleep(0.2)
        extra = _open(server.url, 5)
        got = _until_closed(extra, 2.0)
        assert len(got) == 5 and all(t < 1.0 for t, _ in got.values())  # refused now, not at a deadline
        assert all(d.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in d.lower() for _, d in got.values())
        _close(extra)
    finally:
        _close(socks)
    assert _health_within(server.url, HEADER_T + 3) < HEADER_T + 3


def test_at_the_cap_slow_header_connections_make_room_for_new_ones(server):
    # the cap's worth of slowloris connections cannot keep an honest client out: each new
    # connection takes the place of the one that has waited longest without a request
    socks = _open(server.url, CAP, b"GET /hea")
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        for _ in range(5):
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - t0 < HEADER_T  # in, long before any deadline frees a place
        got = _until_closed(socks, 0.5)  # the first probe took the oldest one's place; it has been told
        assert len(got) == 1 and all(d.startswith(b"HTTP/1.1 503") for _, d in got.values())
    finally:
        _close(socks)


def test_declared_huge_body_is_refused_and_the_connection_not_held(server):
    s = _open(server.url, 1, b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 900000000\r\n\r\n{")[0]
    try:
        got = _until_closed([s], BODY_T + 3)
        t, data = got[s]
        assert data.startswith(b"HTTP/1.1 413")
        more = _until_closed([s], BODY_T + 3, drip=b"x", every=0.2)  # keeps dripping the body it declared
        assert s in more, "a client dripping the body it declared after its 413 is still held"
    finally:
        s.close()


def test_server_with_128_descriptors_survives_140_half_sent_requests(m3_path):
    srv = ServerProcess(m3_path, "--max-length", "64", "--header-timeout", "2", "--body-timeout", "2", nofile=128)
    try:
        head = (b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        socks = []
        for _ in range(140):
            try:
                socks.append(_open(srv.url, 1, head)[0])
            except OSError:
                break
        t0 = time.monotonic()
        try:
            # while they are held the server still answers at once (200, or 503 past its connection
            # cap): never a hang
            r = httpx.get(srv.url + "/health", timeout=5)
            assert r.status_code in (200, 503)
        finally:
            _close(socks)  # the attackers leave
        assert _health_within(srv.url, 8) < 8
        r = httpx.post(srv.url + "/embed", json={"inputs": ["after the attack"]}, timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - t0 < 20
    finally:
        assert srv.stop() == 0, "".join(srv.stderr)[-2000:]


def test_a_request_head_growing_past_the_size_bound_is_a_400(server):
    # 20 KB of header and no end in sight: refused at --max-header-bytes (16 KiB), not at the deadline
    s = _open(server.url, 1, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)[0]
    try:
        got = _until_closed([s], 3)
        assert got[s][1].startswith(b"HTTP/1.1 400") and got[s][0] < HEADER_T
    finally:
        s.close()


# --------------------------------------------------------------------------- requests

@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_post_bodies_must_be_declared_json(server, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = httpx.post(server.url + "/embed", content=b'{"inputs": ["x"]}', headers=headers, timeout=10)
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    ok = httpx.post(server.url + "/embed", content=b'{"inputs": ["x"]}',
                    headers={"content-type": "application/json; charset=utf-8"}, timeout=10)
    assert ok.status_code == 200


def test_non_ascii_api_key_is_refused_at_start_up(m3_path):
    from bgem3.serve import ServeConfig, create_app

    with pytest.raises(ValueError, match="api-key"):
        create_app(object(), ServeConfig(api_key="clé-secrète"))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "bgem3", "serve", "--model", m3_path, "--port", "0", "--api-key",
                        "pässword"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONPATH": ROOT})
    assert p.returncode == 1 and "--api-key" in p.stderr and "listening" not in p.stdout
    assert time.monotonic() - t0 < 60


def test_info_says_colbert_is_float16_by_default(server):
    info = httpx.get(server.url + "/info", timeout=10).json()
    assert info["bgem3"]["encode_defaults"]["colbert_dtype"] == "float16"
