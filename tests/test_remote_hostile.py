"""RemoteEncoder against a broken or hostile server: a stdlib http.server on 127.0.0.1.

Every malformed ``/encode`` answer the issue saw (wrong shapes, missing rows, zero token counts,
NaN / inf, token ids out of the vocabulary, lengths that do not add up) is a ``RemoteError``
naming the field; a JSON list, a redirect, a 204 or an HTML page is a ``RemoteError`` saying what
was sent; a server dripping its answer is cut at ``timeout`` in all (sync and async); an answer
larger than what was asked can take is refused while it streams, unread.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from bgem3.remote import RemoteEncoder, RemoteError, RemoteUnavailable, answer_bytes_bound  # noqa: E402

DIM, CDIM, VOCAB, MAXLEN = 4, 4, 100, 16

INFO = {"model_id": "fake", "max_input_length": MAXLEN, "max_client_batch_size": 8, "model_dtype": "float32",
        "bgem3": {"dim": DIM, "has_heads": True, "colbert_dim": CDIM, "vocab_size": VOCAB, "max_request_tokens": 1000,
                  "max_body_bytes": 100000, "device": "cpu",
                  "profile": {"name": "m3", "pooling": "cls", "normalize": True, "query_template": None,
                              "passage_template": None, "task": None, "has_heads": True}}}


def _b64(a: np.ndarray, dtype: str = "float32") -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def good_answer(n: int, colbert_dtype: str = "float32") -> dict:
    counts = [3 + i % 3 for i in range(n)]
    lens = [c - 1 for c in counts]
    dense = np.full((n, DIM), 0.5, np.float32)
    col = np.full((sum(lens), CDIM), 0.5, np.float32)
    return {"model": "fake", "dim": DIM, "count": n, "token_counts": counts,
            "dense": {"dtype": "float32", "shape": [n, DIM], "data": _b64(dense)},
            "sparse": [{"indices": [5, 7], "values": [0.25, 0.5]} for _ in range(n)],
            "colbert": {"dtype": colbert_dtype, "dim": CDIM, "lengths": lens, "data": _b64(col, colbert_dtype)}}


def _dense(doc: dict, shape: tuple) -> None:
    doc["dense"] = {"dtype": "float32", "shape": list(shape), "data": _b64(np.zeros(shape, np.float32))}


def _mutate(doc: dict, how: str) -> dict:
    n = doc["count"]
    if how == "dense_6x2":
        _dense(doc, (2 * n, DIM // 2))
    elif how == "dense_3x8":
        _dense(doc, (n, 2 * DIM))
    elif how == "dense_4x4":
        _dense(doc, (n + 1, DIM))
    elif how == "dense_lying_shape":  # the shape says [n, DIM] but the bytes are another size
        doc["dense"]["data"] = _b64(np.zeros((n, 2 * DIM), np.float32))
    elif how == "colbert_dim":
        lens = doc["colbert"]["lengths"]
        doc["colbert"].update(dim=CDIM // 2, data=_b64(np.zeros((sum(lens), CDIM // 2), np.float32)))
    elif how == "sparse_rows":
        doc["sparse"] = doc["sparse"][:-1]
    elif how == "zero_counts":
        doc["token_counts"] = [0] * n
    elif how == "nan_dense":
        a = np.full((n, DIM), 0.5, np.float32)
        a[1, 2] = np.nan
        doc["dense"]["data"] = _b64(a)
    elif how == "inf_colbert":
        lens = doc["colbert"]["lengths"]
        a = np.full((sum(lens), CDIM), 0.5, np.float32)
        a[-1, 0] = np.inf
        doc["colbert"]["data"] = _b64(a)
    elif how == "nan_sparse":
        doc["sparse"][0]["values"][0] = float("nan")
    elif how == "negative_weight":
        doc["sparse"][0]["values"][0] = -0.5
    elif how == "negative_id":
        doc["sparse"][1]["indices"][0] = -1
    elif how == "huge_id":
        doc["sparse"][1]["indices"][0] = 2 ** 40
    elif how == "lengths_sum":
        doc["colbert"]["lengths"][0] += 1
    elif how == "count":
        doc["count"] = n + 1
    elif how == "colbert_dtype":
        lens = doc["colbert"]["lengths"]
        doc["colbert"].update(dtype="float16", data=_b64(np.zeros((sum(lens), CDIM)), "float16"))
    return doc


class _Handler(http.server.BaseHTTPRequestHandler):
    mode: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/info":
            self._send(200, json.dumps(INFO).encode())
        else:
            self._send(404, b'{"error": "no"}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        m = self.mode.get("encode", "good")
        n = len(body["inputs"])
        doc = _mutate(good_answer(n, body.get("colbert_dtype", "float32")), m)
        raw = json.dumps(doc).encode()
        if m == "list":
            self._send(200, b"[1, 2, 3]")
        elif m == "redirect":
            self._send(302, b"", extra={"Location": "http://elsewhere.example/encode"})
        elif m == "no_content":
            self.send_response(204)
            self.end_headers()
        elif m == "html":
            self._send(200, b"<html><body>Please log in</body></html>", "text/html; charset=utf-8")
        elif m == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.flush()
            self._drip(raw)
        elif m == "drip_head":
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 200)
        elif m == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"a" * (1 << 20)
            try:
                for _ in range(300):  # 300 MB, never declared
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.mode["sent"] = self.mode.get("sent", 0) + len(chunk)
            except OSError:
                return
        elif m == "huge_declared":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(300 << 20))
            self.end_headers()
            try:
                self.wfile.write(b"[" * (1 << 20))
            except OSError:
                return
        else:
            self._send(200, raw)

    def _drip(self, raw: bytes) -> None:
        try:
            for i in range(len(raw)):
                self.wfile.write(raw[i:i + 1])
                self.wfile.flush()
                time.sleep(0.5)
                if self.mode.get("stop"):
                    return
        except OSError:
            return


@pytest.fixture()
def fake():
    mode: dict = {}
    handler = type("H", (_Handler,), {"mode": mode})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", mode
    mode["stop"] = True
    srv.shutdown()
    srv.server_close()


TEXTS = ["one", "two", "three"]


def test_a_good_answer_passes(fake):
    url, mode = fake
    with RemoteEncoder(url, max_retries=0) as enc:
        out = enc.encode(TEXTS, dense=True, sparse=True, colbert=True)
    assert out.dense.shape == (3, DIM) and len(out.sparse) == 3 and [c.shape[0] for c in out.colbert] == [2, 3, 4]


@pytest.mark.parametrize("how, field", [
    ("dense_6x2", "`dense`"), ("dense_3x8", "`dense`"), ("dense_4x4", "`dense`"), ("dense_lying_shape", "`dense.data`"),
    ("colbert_dim", "`colbert.dim`"), ("sparse_rows", "`sparse` has 2 rows"), ("zero_counts", "`token_counts.0.`"),
    ("nan_dense", "`dense` row 1 has NaN"), ("inf_colbert", "`colbert` has NaN or infinite"),
    ("nan_sparse", "`sparse.0.` has a weight|not JSON"),  # NaN is not JSON: a strict parser refuses it first
    ("negative_weight", "`sparse.0.` has a weight"), ("negative_id", "`sparse.1.` has token id -1"),
    ("huge_id", "`sparse.1.` has token id 1099511627776"), ("lengths_sum", "`colbert.lengths.0.`"),
    ("count", "`count`"), ("colbert_dtype", "`colbert.dtype`"),
])
def test_malformed_answers_are_refused_naming_the_field(fake, how, field):
    url, mode = fake
    mode["encode"] = how
    with RemoteEncoder(url, max_retries=0) as enc:
        with pytest.raises(RemoteError, match=field) as info:
            enc.encode(TEXTS, dense=True, sparse=True, colbert=True)
    assert "/encode is wrong" in str(info.value) or "not JSON" in str(info.value)
    with RemoteEncoder(url, max_retries=0) as enc:  # the async path checks the same
        with pytest.raises(RemoteError, match=field):
            asyncio.run(enc.aencode(TEXTS, dense=True, sparse=True, colbert=True))


@pytest.mark.parametrize("how, words", [("list", "JSON list"), ("redirect", "redirect to http://elsewhere"),
                                        ("no_content", "204"), ("html", "text/html")])
def test_answers_that_are_not_a_json_object_say_what_was_sent(fake, how, words):
    url, mode = fake
    mode["encode"] = how
    with RemoteEncoder(url, max_retries=0) as enc:
        with pytest.raises(RemoteError, match=words):
            enc.encode(TEXTS)
        with pytest.raises(RemoteError, match=words):
            asyncio.run(enc.aencode(TEXTS))


@pytest.mark.parametrize("how", ["drip", "drip_head"])
@pytest.mark.parametrize("mode_", ["sync", "async"])
def test_a_dripping_server_is_cut_at_the_total_timeout(fake, how, mode_):
    url, mode = fake
    enc = RemoteEncoder(url, timeout=2, max_retries=0)
    mode["encode"] = how
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="Timeout"):
        if mode_ == "sync":
            enc.encode(TEXTS)
        else:
            asyncio.run(enc.aencode(TEXTS))
    assert time.monotonic() - t0 < 4.0  # 2 s in all, not 2 s per byte
    enc.close()


@pytest.mark.parametrize("how", ["huge", "huge_declared"])
def test_an_answer_larger_than_asked_is_refused_while_it_streams(fake, how):
    url, mode = fake
    mode["encode"] = how
    enc = RemoteEncoder(url, max_retries=0)
    bound = answer_bytes_bound(3, dense=True, sparse=False, colbert=False, dim=DIM, colbert_dim=CDIM,
                               colbert_dtype="float32", max_length=MAXLEN)
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="refused unread"):
        enc.encode(TEXTS)
    with pytest.raises(RemoteError, match="refused unread"):
        asyncio.run(enc.aencode(TEXTS))
    assert time.monotonic() - t0 < 10
    enc.close()
    # the server got to write no more than the bound plus what sockets buffer, not 300 MB
    assert mode.get("sent", 0) < bound + (32 << 20)


def test_info_with_nonsense_sizes_is_refused(fake, monkeypatch):
    url, mode = fake
    bad = json.loads(json.dumps(INFO))
    bad["bgem3"]["dim"] = -3
    monkeypatch.setitem(INFO, "bgem3", bad["bgem3"])
    with pytest.raises(RemoteError, match="does not look like"):
        RemoteEncoder(url, max_retries=0)
