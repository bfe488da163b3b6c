"""`bgem3 serve` as a real process on 127.0.0.1, driven by real HTTP clients.

One module-scoped server (tiny checkpoint, API key, small limits) answers every test here:
TEI / OpenAI / bgem3 routes, their exact shapes, equality with the local Encoder (float32,
dense <= 1e-6, sparse <= 1e-5), auth, limits, malformed bodies, wrong types, huge inputs, a client that hangs up,
metrics, and the real TEI / OpenAI client libraries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _compare import assert_sparse_close  # noqa: E402
from _serve_process import ServerProcess  # noqa: E402
from conftest import MIXED_TEXTS  # noqa: E402

KEY = "test-key-123"
MAX_LEN = 64
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(m3_path):
    srv = ServerProcess(m3_path, "--api-key", KEY, "--max-length", str(MAX_LEN), "--max-client-batch-size", "16",
                        "--max-request-tokens", "600", "--max-body-bytes", "20000", "--served-model-name", "tiny-m3")
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr)[-2000:]


@pytest.fixture(scope="module")
def local(m3_path):
    from bgem3 import Encoder

    return Encoder(m3_path, device="cpu", max_length=MAX_LEN)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


TEXTS = [t for t in MIXED_TEXTS]


# --------------------------------------------------------------------------- TEI

def test_tei_embed_shape_and_values(client, local):
    r = client.post("/embed", json={"inputs": TEXTS[:10]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    got = np.asarray(r.json(), dtype=np.float32)
    want = local.encode(TEXTS[:10]).dense
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6


def test_tei_single_string_is_one_text_and_root_route(client, local):
    r = client.post("/embed", json={"inputs": "hello world"})
    assert r.status_code == 200
    assert len(r.json()) == 1 and len(r.json()[0]) == local.hidden_size  # never split into characters
    r2 = client.post("/", json={"inputs": "hello world"})  # huggingface_hub posts to the URL itself
    assert r2.status_code == 200 and r2.json() == r.json()


def test_tei_prompt_name_applies_the_query_template(client, local):
    r = client.post("/embed", json={"inputs": ["what is m3?"], "prompt_name": "query"})
    want = local.encode_queries(["what is m3?"]).dense
    assert np.abs(np.asarray(r.json(), np.float32) - want).max() <= 1e-6
    bad = client.post("/embed", json={"inputs": ["x"], "prompt_name": "nonsense"})
    assert bad.status_code == 422 and "prompt_name" in bad.json()["error"]


def test_tei_embed_sparse_shape_and_values(client, local):
    r = client.post("/embed_sparse", json={"inputs": TEXTS[:6]})
    assert r.status_code == 200
    rows = r.json()
    want = local.encode(TEXTS[:6], dense=False, sparse=True).sparse
    assert len(rows) == 6
    for row, w in zip(rows, want):
        assert all(set(e) == {"index", "value"} for e in row)
        got = {e["index"]: e["value"] for e in row}
        assert_sparse_close(got, w)
        assert [e["index"] for e in row] == sorted(got)


def test_tei_normalize_false_and_dimensions_refused(client, local):
    r = client.post("/embed", json={"inputs": ["x"], "normalize": False})
    assert r.status_code == 422 and "normalize" in r.json()["error"]
    r = client.post("/embed", json={"inputs": ["x"], "dimensions": 8})
    assert r.status_code == 422 and "dimensions" in r.json()["error"]
    ok = client.post("/embed", json={"inputs": ["x"], "dimensions": local.hidden_size, "normalize": True})
    assert ok.status_code == 200


def test_tei_truncate_false_refuses_long_input(client):
    long = "word " * 500
    r = client.post("/embed", json={"inputs": [long], "truncate": False})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    assert f"longer than {MAX_LEN} tokens" in r.json()["error"]
    assert client.post("/embed", json={"inputs": [long], "truncate": True}).status_code == 200
    r = client.post("/embed", json={"inputs": ["x"], "truncation_direction": "Left"})
    assert r.status_code == 422 and "truncation_direction" in r.json()["error"]


def test_info_and_health(server, client, local):
    info = client.get("/info").json()
    for key in ("model_id", "model_dtype", "model_type", "max_input_length", "max_batch_tokens",
                "max_client_batch_size", "auto_truncate", "version"):
        assert key in info
    assert info["model_id"] == "tiny-m3" and info["max_input_length"] == MAX_LEN
    assert info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert info["bgem3"]["dim"] == local.hidden_size and info["bgem3"]["has_heads"] is True
    h = httpx.get(server.url + "/health")  # no key needed: load-balancer probes
    assert h.status_code == 200 and h.content == b""


# --------------------------------------------------------------------------- OpenAI

def test_openai_float_and_base64(client, local):
    body = {"input": TEXTS[:4], "model": "tiny-m3"}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200
    j = r.json()
    assert j["object"] == "list" and j["model"] == "tiny-m3"
    assert [d["index"] for d in j["data"]] == [0, 1, 2, 3] and all(d["object"] == "embedding" for d in j["data"])
    want = local.encode(TEXTS[:4])
    assert j["usage"] == {"prompt_tokens": int(want.token_counts.sum()), "total_tokens": int(want.token_counts.sum())}
    got = np.asarray([d["embedding"] for d in j["data"]], np.float32)
    assert np.abs(got - want.dense).max() <= 1e-6
    r64 = client.post("/v1/embeddings", json=dict(body, encoding_format="base64")).json()
    dec = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r64["data"]])
    assert np.array_equal(dec, got)


def test_openai_errors_have_openai_shape(client, local):
    r = client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-ada-002"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "model_not_found"
    # what is served, and how to answer to the client's name (issue 23)
    assert "'tiny-m3'" in err["message"] and "--served-model-name 'text-embedding-ada-002'" in err["message"]
    r = client.post("/v1/embeddings", json={"input": "x", "model": "tiny-m3", "dimensions": 3})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dimensions"
    r = client.post("/v1/embeddings", json={"input": [[1, 2, 3]], "model": "tiny-m3"})
    assert r.status_code == 422 and "token-id input is not supported" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": "x", "model": "tiny-m3", "encoding_format": "int8"})
    assert r.status_code == 422
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny-m3"


def test_openai_python_client(server, local):
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    res = c.embeddings.create(model="tiny-m3", input=["alpha beta", "gamma"])  # client asks for base64
    got = np.asarray([d.embedding for d in res.data], np.float32)
    assert np.abs(got - local.encode(["alpha beta", "gamma"]).dense).max() <= 1e-6
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="tiny-m3", input="x")


# --------------------------------------------------------------------------- ours

def test_encode_all_three_outputs_match_local(client, local):
    texts = TEXTS[:8]
    r = client.post("/encode", json={"inputs": texts, "dense": True, "sparse": True, "colbert": True,
                                     "colbert_dtype": "float32"})
    assert r.status_code == 200
    j = r.json()
    want = local.encode(texts, dense=True, sparse=True, colbert=True)
    dense = np.frombuffer(base64.b64decode(j["dense"]["data"]), "<f4").reshape(j["dense"]["shape"])
    assert np.abs(dense - want.dense).max() <= 1e-6
    assert j["token_counts"] == [int(x) for x in want.token_counts]
    for row, w in zip(j["sparse"], want.sparse):
        got = dict(zip(row["indices"], row["values"]))
        assert_sparse_close(got, w)
    c = j["colbert"]
    flat = np.frombuffer(base64.b64decode(c["data"]), "<f4").reshape(sum(c["lengths"]), c["dim"])
    parts = np.split(flat, np.cumsum(c["lengths"])[:-1])
    for got, w in zip(parts, want.colbert):
        assert got.shape == w.shape and np.abs(got - w).max() <= 1e-6


def test_encode_float16_colbert_is_half_the_bytes(client, local):
    body = {"inputs": ["a longer passage about hybrid retrieval"], "dense": False, "colbert": True}
    r16 = client.post("/encode", json=body).json()["colbert"]
    r32 = client.post("/encode", json=dict(body, colbert_dtype="float32")).json()["colbert"]
    assert r16["dtype"] == "float16"
    assert len(base64.b64decode(r16["data"])) * 2 == len(base64.b64decode(r32["data"]))
    a = np.frombuffer(base64.b64decode(r16["data"]), "<f2").astype(np.float32)
    b = np.frombuffer(base64.b64decode(r32["data"]), "<f4")
    assert np.abs(a - b).max() < 1e-3


def test_encode_sides_and_float_encoding(client, local):
    r = client.post("/encode", json={"inputs": ["q1"], "side": "query", "encoding": "float"}).json()
    assert np.abs(np.asarray(r["dense"], np.float32) - local.encode_queries(["q1"]).dense).max() <= 1e-6
    r = client.post("/encode", json={"inputs": ["d1"], "side": "document", "encoding": "float"}).json()
    assert np.abs(np.asarray(r["dense"], np.float32) - local.encode_documents(["d1"]).dense).max() <= 1e-6
    r = client.post("/encode", json={"inputs": [], "sparse": True})
    assert r.status_code == 200 and r.json()["count"] == 0
    for bad, field in (({"inputs": ["x"], "side": "passage"}, "side"),
                       ({"inputs": ["x"], "dense": False}, "nothing to compute"),
                       ({"inputs": ["x"], "dense": "yes"}, "dense"),
                       ({"inputs": ["x"], "colbert_dtype": "int8", "colbert": True}, "colbert_dtype"),
                       ({"inputs": ["x"], "task": "find"}, "task"),
                       ({"inputs": ["x"], "max_length": -1}, "max_length"),
                       ({"inputs": ["x"], "bogus": 1}, "bogus")):
        r = client.post("/encode", json=bad)
        assert r.status_code == 422, bad
        assert field in r.json()["error"]


# --------------------------------------------------------------------------- auth, limits, bad input

@pytest.mark.parametrize("route,body", [("/embed", {"inputs": "x"}), ("/embed_sparse", {"inputs": "x"}),
                                        ("/encode", {"inputs": ["x"]}),
                                        ("/v1/embeddings", {"input": "x", "model": "tiny-m3"})])
def test_auth_required(server, route, body):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = httpx.post(server.url + route, json=body, headers=headers)
        assert r.status_code == 401, (route, headers)
        assert r.headers.get("www-authenticate") == "Bearer"
    for route_get in ("/info", "/metrics"):
        assert httpx.get(server.url + route_get).status_code == 401


def test_limits(client):
    r = client.post("/embed", json={"inputs": ["x"] * 17})
    assert r.status_code == 413 and "at most 16" in r.json()["error"]
    r = client.post("/embed", json={"inputs": ["word " * 60] * 12})  # 12 x 64 tokens > 600
    assert r.status_code == 413 and "--max-request-tokens" in r.json()["error"]
    r = client.post("/embed", json={"inputs": ["é" * 30000]})  # > 20000 bytes
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]


def test_huge_body_is_refused_without_reading_it(server):
    # a declared 50 MB body is refused from its Content-Length, before the server reads it
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{\"inputs\": [\"")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 413")


def test_malformed_and_wrong_types(client):
    cases = [
        (b"{\"inputs\": ", 400, "not valid JSON"),
        (b"", 400, "empty request body"),
        (b"[1, 2]", 422, "must be an object"),
        (b"\"hello\"", 422, "must be an object"),
        (b"{\"inputs\": 5}", 422, "string or a list of strings"),
        (b"{\"inputs\": [\"a\", null]}", 422, "inputs[1]"),
        (b"{\"inputs\": []}", 422, "empty"),
        (b"{\"inputs\": {\"a\": 1}}", 422, "string or a list"),
        (b"{\"inputs\": [\"a\"], \"truncate\": \"yes\"}", 422, "truncate"),
        (b"\xff\xfe{", 400, "not valid JSON"),
    ]
    for raw, status, needle in cases:
        r = client.post("/embed", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, raw
        assert needle in r.json()["error"], (raw, r.json())
    assert client.get("/embed").status_code == 405


def test_client_disconnect_mid_request_leaves_server_serving(server, client):
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"inputs": ["some words to encode " * 3] * 16, "colbert": True, "sparse": True}).encode()
    for _ in range(5):  # hang up right after sending, before the answer
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        s.close()
    time.sleep(0.5)
    assert client.post("/embed", json={"inputs": ["still here"]}).status_code == 200
    text = client.get("/metrics").text
    assert "bgem3_in_flight_requests 0" in text and "bgem3_queue_texts 0" in text


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, local):
    texts = [f"query number {i} about topic {i % 7}" for i in range(48)]
    want = local.encode(texts).dense

    async def go():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/embed", json={"inputs": [t]}) for t in texts))
        return rs

    rs = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs)
    got = np.asarray([r.json()[0] for r in rs], np.float32)
    assert np.abs(got - want).max() <= 1e-6  # no response swapped between clients


def test_metrics_exposition(client):
    client.post("/embed", json={"inputs": ["metrics please"]})
    text = client.get("/metrics").text
    for name in ("bgem3_queue_texts", "bgem3_queue_tokens", "bgem3_batch_size_bucket", "bgem3_tokens_total",
                 "bgem3_request_seconds_bucket", "bgem3_rejected_total", 'route="/embed",status="200"'):
        assert name in text
    assert 'bgem3_batch_size_bucket{le="+Inf"}' in text


# --------------------------------------------------------------------------- framework clients

def test_llama_index_text_embeddings_inference(server, local):
    tei = pytest.importorskip("llama_index.embeddings.text_embeddings_inference")
    emb = tei.TextEmbeddingsInference(model_name="tiny-m3", base_url=server.url, auth_token=KEY, timeout=30)
    got = np.asarray(emb.get_text_embedding_batch(["one text", "two texts"]), np.float32)
    assert np.abs(got - local.encode(["one text", "two texts"]).dense).max() <= 1e-6
    q = np.asarray(asyncio.run(emb.aget_query_embedding("a question")), np.float32)
    assert np.abs(q - local.encode(["a question"]).dense[0]).max() <= 1e-6


def test_langchain_huggingface_endpoint_embeddings(server, local, monkeypatch):
    lc = pytest.importorskip("langchain_huggingface")
    import huggingface_hub.constants

    # the suite runs with HF_HUB_OFFLINE=1, which huggingface_hub applies to every URL, loopback included
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    emb = lc.HuggingFaceEndpointEmbeddings(model=server.url, huggingfacehub_api_token=KEY)
    got = np.asarray(emb.embed_documents(["one text", "two texts"]), np.float32)
    assert np.abs(got - local.encode(["one text", "two texts"]).dense).max() <= 1e-6
    q = np.asarray(emb.embed_query("a question"), np.float32)
    assert np.abs(q - local.encode(["a question"]).dense[0]).max() <= 1e-6
    aq = np.asarray(asyncio.run(emb.aembed_query("a question")), np.float32)
    assert np.abs(aq - q).max() == 0
