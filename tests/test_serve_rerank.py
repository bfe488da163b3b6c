"""`bgem3 serve --reranker`: TEI's /rerank and the Cohere/Jina/infinity /v1/rerank, RemoteReranker, real clients.

One module-scoped real server process (tiny BGE-M3 embedder + tiny XLM-R reranker, API key, small limits) and an
in-process reranker-only app (tiny BERT reranker, token type ids). Served scores must equal the local
`bgem3.Reranker`'s (raw and sigmoid), truncation included; every bad request is refused by name with 413 / 422.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import pickle
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _serve_process import ServerProcess  # noqa: E402
from conftest import MIXED_TEXTS  # noqa: E402

KEY = "rerank-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
RMAX = 64  # the served reranker's pair length: long passages below are cut
QUERY = "What do giant pandas eat in the wild?"
LONG = " ".join(["The giant panda lives in the mountains of central China and eats bamboo shoots and leaves."] * 12)
TEXTS = [LONG, *MIXED_TEXTS[:7], "x"]


def _sig(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


@pytest.fixture(scope="module")
def xlmr_path(tmp_path_factory):
    from bgem3.testing import make_reranker_checkpoint

    return make_reranker_checkpoint(str(tmp_path_factory.mktemp("rr-xlmr")), arch="xlmr")


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory):
    from bgem3.testing import make_reranker_checkpoint

    return make_reranker_checkpoint(str(tmp_path_factory.mktemp("rr-bert")), arch="bert")


@pytest.fixture(scope="module")
def local_rr(xlmr_path):
    from bgem3 import Reranker

    return Reranker(xlmr_path, device="cpu", max_length=RMAX)


@pytest.fixture(scope="module")
def server(m3_path, xlmr_path):
    srv = ServerProcess(m3_path, "--reranker", xlmr_path, "--reranker-max-length", str(RMAX), "--api-key", KEY,
                        "--max-client-batch-size", "16", "--max-request-tokens", "700", "--max-body-bytes", "40000",
                        "--served-model-name", "tiny-m3", "--served-reranker-name", "tiny-reranker")
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr)[-2000:]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


# --------------------------------------------------------------------------- TEI /rerank

def test_tei_rerank_equals_local_reranker_raw_and_sigmoid(client, local_rr):
    want = np.asarray(local_rr.compute_score([(QUERY, t) for t in TEXTS]))
    r = client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [row["index"] for row in body] == [int(i) for i in np.argsort(-want, kind="stable")]  # best first
    got = np.full(len(TEXTS), np.nan)
    for row in body:
        assert set(row) == {"index", "score"}
        got[row["index"]] = row["score"]
    assert np.abs(got - want).max() <= 1e-5
    # default raw_scores=false: the sigmoid, FlagEmbedding's normalize=True
    norm = np.asarray(local_rr.compute_score([(QUERY, t) for t in TEXTS], normalize=True))
    r = client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "return_text": True})
    got = {row["index"]: row for row in r.json()}
    assert all(0 < row["score"] < 1 for row in got.values())
    assert max(abs(got[i]["score"] - norm[i]) for i in range(len(TEXTS))) <= 1e-6
    assert all(got[i]["text"] == TEXTS[i] for i in range(len(TEXTS)))


def test_tei_rerank_truncation_is_the_references(client, local_rr):
    """The long passage is cut as FlagEmbedding cuts it (query kept, passage cut at RMAX tokens): its served score
    equals the local score at RMAX and differs from the score at a larger max_length."""
    ids, _ = local_rr.tokenize_pairs([(QUERY, LONG)], max_length=RMAX)
    assert len(ids[0]) == RMAX  # it is cut
    r = client.post("/rerank", json={"query": QUERY, "texts": [LONG], "raw_scores": True})
    served = r.json()[0]["score"]
    assert abs(served - local_rr.compute_score([(QUERY, LONG)])[0]) <= 1e-5
    assert abs(served - local_rr.compute_score([(QUERY, LONG)], max_length=256)[0]) > 1e-4
    # truncate=false: refused by name instead of cut
    r = client.post("/rerank", json={"query": QUERY, "texts": ["short", LONG], "truncate": False})
    assert r.status_code == 413 and "texts[1]" in r.json()["error"] and "truncate" in r.json()["error"]
    r = client.post("/rerank", json={"query": QUERY, "texts": ["short"], "truncate": False})
    assert r.status_code == 200


def test_concurrent_rerank_requests_are_batched_and_exact(server, local_rr):
    queries = [f"question number {i} about pandas" for i in range(12)]
    want = {q: local_rr.compute_score([(q, t) for t in TEXTS[1:6]]) for q in queries}

    async def go():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/rerank", json={"query": q, "texts": TEXTS[1:6], "raw_scores": True})
                                        for q in queries))
        return rs

    for q, r in zip(queries, asyncio.run(go())):
        assert r.status_code == 200
        got = {row["index"]: row["score"] for row in r.json()}
        assert max(abs(got[i] - want[q][i]) for i in range(5)) <= 1e-5


@pytest.mark.parametrize("body, status, needle", [
    ({"query": QUERY, "texts": "one string"}, 422, "one string"),
    ({"query": QUERY, "texts": ["ok", 3]}, 422, "texts[1]"),
    ({"query": QUERY, "texts": []}, 422, "empty"),
    ({"query": "  ", "texts": ["a"]}, 422, "query"),
    ({"query": 5, "texts": ["a"]}, 422, "query"),
    ({"texts": ["a"]}, 422, "query"),
    ({"query": QUERY}, 422, "texts"),
    ({"query": QUERY, "texts": ["a"], "top_k": 3}, 422, "top_k"),
    ({"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, 422, "raw_scores"),
    ({"query": QUERY, "texts": ["a"], "truncation_direction": "Left"}, 422, "truncation_direction"),
    ([QUERY, "a"], 422, "object"),
    ({"query": QUERY, "texts": ["t"] * 17}, 413, "max-client-batch-size"),
    ({"query": QUERY, "texts": ["panda bamboo " * 40] * 16}, 413, "max-request-tokens"),
])
def test_tei_rerank_refuses_bad_requests_by_name(client, body, status, needle):
    r = client.post("/rerank", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_rerank_body_limit_and_auth(server, client):
    r = client.post("/rerank", json={"query": QUERY, "texts": ["word " * 9000]})
    assert r.status_code == 413 and "max-body-bytes" in r.json()["error"]
    r = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["a"]}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": ["a"]}, timeout=30)
    assert r.status_code == 401 and "error" in r.json()


# --------------------------------------------------------------------------- Cohere / Jina / infinity

def test_v1_rerank_cohere_shape_top_n_and_scores(client, local_rr):
    norm = local_rr.compute_score([(QUERY, t) for t in TEXTS], normalize=True)
    docs = [{"text": t} if i % 2 else t for i, t in enumerate(TEXTS)]  # strings and Cohere's {"text"} objects
    r = client.post("/v1/rerank", json={"model": "tiny-reranker", "query": QUERY, "documents": docs, "top_n": 3,
                                        "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-reranker" and body["usage"]["total_tokens"] > 0 and body["id"]
    res = body["results"]
    order = [int(i) for i in np.argsort(-np.asarray(norm), kind="stable")[:3]]
    assert [x["index"] for x in res] == order
    for x in res:
        assert abs(x["relevance_score"] - norm[x["index"]]) <= 1e-6
        assert x["document"] == {"text": TEXTS[x["index"]]}
    # top_n above the count: all of them; no top_n: all of them
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS[:3], "top_n": 10})
    assert len(r.json()["results"]) == 3 and "document" not in r.json()["results"][0]
    # infinity clients post the same body to /rerank
    r2 = client.post("/rerank", json={"query": QUERY, "documents": TEXTS[:3], "top_n": 10})
    assert r2.status_code == 200 and r2.json()["results"] == r.json()["results"]


@pytest.mark.parametrize("body, status, needle", [
    ({"query": QUERY, "documents": ["a"], "model": "other"}, 404, "tiny-reranker"),
    ({"query": QUERY, "documents": ["a"], "model": "tiny-m3"}, 404, "tiny-reranker"),
    ({"query": QUERY, "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ({"query": QUERY, "documents": ["a"], "top_n": True}, 422, "top_n"),
    ({"query": QUERY, "documents": ["a"], "max_chunks_per_doc": 4}, 422, "max_chunks_per_doc"),
    ({"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, 422, "rank_fields"),
    ({"query": QUERY, "documents": [{"title": "a"}]}, 422, "documents[0]"),
    ({"query": QUERY, "documents": "a"}, 422, "one string"),
    ({"query": QUERY, "documents": ["a"], "stream": True}, 422, "stream"),
])
def test_v1_rerank_refuses_bad_requests_in_openai_error_shape(client, body, status, needle):
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_info_models_and_embedder_beside_reranker(client, m3_path):
    info = client.get("/info").json()
    assert info["model_id"] == "tiny-m3"  # the embedder's TEI info, as before
    rr = info["bgem3"]["reranker"]
    assert rr["model_id"] == "tiny-reranker" and rr["max_input_length"] == RMAX and rr["kind"] == "encoder"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["tiny-m3", "tiny-reranker"]
    # no --max-batch-tokens: each model's own budget for its device, shown (CPU: 4096, measured faster there)
    assert info["max_batch_tokens"] == 4096 and rr["max_batch_tokens"] == 4096
    r = client.post("/embed", json={"inputs": ["hello"]})
    assert r.status_code == 200 and len(r.json()[0]) == 32
    metrics = client.get("/metrics").text
    assert 'bgem3_requests_total{route="/rerank",status="200"}' in metrics


# --------------------------------------------------------------------------- reranker-only (in process)

def test_reranker_only_app_bert_token_types(bert_path):
    from starlette.testclient import TestClient

    from bgem3 import Reranker
    from bgem3.serve import ServeConfig, create_app

    rr = Reranker(bert_path, device="cpu")
    app = create_app(None, ServeConfig(served_model_name="bert-rr"), reranker=rr)
    pairs_texts = [LONG, "pandas eat bamboo", "cars have wheels", "der Panda frisst Bambus"]
    want = rr.compute_score([(QUERY, t) for t in pairs_texts])
    with TestClient(app) as c:
        r = c.post("/rerank", json={"query": QUERY, "texts": pairs_texts, "raw_scores": True})
        got = {row["index"]: row["score"] for row in r.json()}
        assert max(abs(got[i] - want[i]) for i in range(4)) <= 1e-5
        info = c.get("/info").json()
        assert info["model_id"] == "bert-rr" and "reranker" in info["model_type"]
        assert info["bgem3"]["embedder"] is None
        for path, body in (("/embed", {"inputs": ["x"]}), ("/encode", {"inputs": ["x"]}),
                           ("/v1/embeddings", {"input": ["x"], "model": "bert-rr"})):
            r = c.post(path, json=body)
            assert r.status_code == 404 and "--model" in r.text
        assert c.get("/health").status_code == 200


def test_embedder_only_server_says_how_to_serve_a_reranker(m3_encoder):
    from starlette.testclient import TestClient

    from bgem3.serve import create_app

    with TestClient(create_app(m3_encoder)) as c:
        for path, body in (("/rerank", {"query": "q", "texts": ["a"]}), ("/v1/rerank", {"query": "q",
                                                                                         "documents": ["a"]})):
            r = c.post(path, json=body)
            assert r.status_code == 404 and "--reranker" in r.text


def test_cli_refuses_embedder_max_length_without_embedder(xlmr_path, capsys):
    from bgem3.cli import main

    assert main(["serve", "--reranker", xlmr_path, "--max-length", "32", "--port", "0"]) == 2
    assert "--reranker-max-length" in capsys.readouterr().err


# --------------------------------------------------------------------------- RemoteReranker

def test_remote_reranker_equals_local(server, local_rr):
    from bgem3 import RankedText
    from bgem3.remote_rerank import RemoteReranker

    with RemoteReranker(server.url, api_key=KEY, batch_size=3) as remote:  # 9 texts -> 3 requests per query
        assert remote.model_name == "tiny-reranker" and remote.max_length == RMAX
        pairs = [(QUERY, t) for t in TEXTS] + [("another question", t) for t in TEXTS[:4]]
        got = remote.compute_score(pairs)
        want = local_rr.compute_score(pairs)
        assert len(got) == len(pairs) and max(abs(a - b) for a, b in zip(got, want)) <= 1e-5
        got_n = remote.compute_score(pairs, normalize=True)
        want_n = local_rr.compute_score(pairs, normalize=True)
        assert max(abs(a - b) for a, b in zip(got_n, want_n)) <= 1e-6
        assert len(remote.compute_score((QUERY, "one pair"))) == 1  # one pair, as FlagEmbedding takes it
        ranked = remote.rerank(QUERY, TEXTS, top_n=4)
        local = local_rr.rerank(QUERY, TEXTS, top_n=4)
        assert all(isinstance(h, RankedText) for h in ranked)
        assert [h.index for h in ranked] == [h.index for h in local]
        assert remote.rerank(QUERY, []) == []
        arank = asyncio.run(remote.arerank(QUERY, TEXTS, top_n=4))
        assert [h.index for h in arank] == [h.index for h in local]
        with pytest.raises(TypeError, match="one string"):
            remote.rerank(QUERY, "a string")
        with pytest.raises(ValueError, match="empty"):
            remote.rerank(" ", ["a"])
        with pytest.raises(ValueError, match="reranker-max-length"):
            remote.compute_score(pairs, max_length=512)
        clone = pickle.loads(pickle.dumps(remote))
        assert np.allclose(clone.compute_score(pairs[:2]), got[:2], atol=1e-5, rtol=0)
        clone.close()


def test_remote_reranker_for_options(server, monkeypatch):
    from bgem3.remote_rerank import remote_reranker_for

    monkeypatch.setenv("BGEM3_API_KEY", KEY)
    rr = remote_reranker_for(server.url, batch_size=2, normalize=True, device="cpu", dtype="float32")
    assert rr.batch_size == 2 and rr.normalize is True
    rr.close()

    with pytest.raises(ValueError, match="cache_dir"):
        remote_reranker_for(server.url, cache_dir="/tmp")
    with pytest.raises(ValueError, match="device"):
        remote_reranker_for(server.url, device="cuda")
    with pytest.raises(ValueError, match="max_length"):
        remote_reranker_for(server.url, max_length=RMAX * 2)


def test_remote_reranker_refuses_an_embedder_only_server(m3_path):
    from bgem3.remote import RemoteError
    from bgem3.remote_rerank import RemoteReranker

    srv = ServerProcess(m3_path)
    try:
        with pytest.raises(RemoteError, match="--reranker"):
            RemoteReranker(srv.url)
    finally:
        srv.stop()


# ----- hostile / broken peers: a stdlib HTTP server that answers /info right and /rerank wrong

_INFO = {"model_id": "fake", "bgem3": {"reranker": {"model_id": "fake", "kind": "encoder", "max_input_length": 512,
                                                    "max_client_batch_size": 8, "max_request_tokens": 100000,
                                                    "max_body_bytes": 1 << 20, "device": "cpu",
                                                    "dtype": "float32"}}}


class _Fake:
    def __init__(self, rerank_body, *, delay: float = 0.0, status: int = 200) -> None:
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, raw):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send(200, json.dumps(_INFO).encode())

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                req = json.loads(self.rfile.read(n))
                fake.calls += 1
                time.sleep(fake.delay)
                body = fake.body(req) if callable(fake.body) else fake.body
                self._send(fake.status, body if isinstance(body, bytes) else json.dumps(body).encode())

        self.body, self.delay, self.status, self.calls = rerank_body, delay, status, 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _rows(req, scores=None):
    n = len(req["texts"])
    return [{"index": i, "score": (scores or [0.5] * n)[i]} for i in range(n)]


@pytest.mark.parametrize("answer, needle", [
    (lambda req: _rows(req)[:-1], "entries for"),
    (lambda req: [{"index": 0, "score": 1.0}] * len(req["texts"]), "twice"),
    (lambda req: [{"index": i + 1, "score": 1.0} for i in range(len(req["texts"]))], "index"),
    (lambda req: [{"index": i, "score": "high"} for i in range(len(req["texts"]))], "score"),
    (lambda req: [{"index": i, "score": True} for i in range(len(req["texts"]))], "score"),
    (lambda req: b"[" + b",".join(b'{"index": %d, "score": NaN}' % i for i in range(len(req["texts"]))) + b"]",
     "finite"),
    (lambda req: {"results": []}, "not the list"),
    (lambda req: b"<html>ok</html>", "not JSON"),
    (lambda req: b"[" + b" " * 100_000 + b"]", "bytes"),
])
def test_remote_reranker_validates_answers(answer, needle):
    from bgem3.remote import RemoteError
    from bgem3.remote_rerank import RemoteReranker

    fake = _Fake(answer)
    try:
        rr = RemoteReranker(fake.url, max_retries=0)
        with pytest.raises(RemoteError, match=needle):
            rr.compute_score([("q", "a"), ("q", "b"), ("q", "c")])
        with pytest.raises(RemoteError, match=needle):
            asyncio.run(rr.acompute_score([("q", "a"), ("q", "b"), ("q", "c")]))
        rr.close()
    finally:
        fake.close()


def test_remote_reranker_total_deadline_sync_and_async():
    from bgem3.remote import RemoteUnavailable
    from bgem3.remote_rerank import RemoteReranker

    fake = _Fake(_rows, delay=0.6)
    try:
        rr = RemoteReranker(fake.url, timeout=1.0, batch_size=1, concurrency=1)
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailable, match="timeout"):
            rr.compute_score([("q", "a"), ("q", "b"), ("q", "c"), ("q", "d")])  # 4 requests x 0.6 s > 1 s
        assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        with pytest.raises(RemoteUnavailable, match="timeout"):
            asyncio.run(rr.acompute_score([("q", "a"), ("q", "b"), ("q", "c"), ("q", "d")]))
        assert time.monotonic() - t0 < 2.0
        rr.close()
    finally:
        fake.close()


def test_remote_reranker_retries_then_gives_up_and_splits_on_413():
    from bgem3.remote import RemoteUnavailable
    from bgem3.remote_rerank import RemoteReranker

    fake = _Fake({"error": "busy"}, status=503)
    try:
        rr = RemoteReranker(fake.url, max_retries=2, backoff=0.01)
        with pytest.raises(RemoteUnavailable, match="3 tries"):
            rr.compute_score([("q", "a")])
        assert fake.calls == 3
    finally:
        fake.close()

    def only_small(req):  # a server with a tighter limit than it advertised: 413 above 2 texts
        if len(req["texts"]) > 2:
            fake2.status = 413
            return {"error": "too many tokens"}
        fake2.status = 200
        return _rows(req, [float(len(t)) for t in req["texts"]])

    fake2 = _Fake(only_small)
    try:
        rr = RemoteReranker(fake2.url)
        texts = ["a", "bb", "ccc", "dddd", "eeeee"]
        assert rr.compute_score([("q", t) for t in texts]) == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert math.isclose(rr.compute_score([("q", "a")], normalize=True)[0], _sig(1.0))
    finally:
        fake2.close()


# --------------------------------------------------------------------------- framework clients

def test_llama_index_tei_rerank_client(server, local_rr):
    tei = pytest.importorskip("llama_index.postprocessor.tei_rerank",
                              reason="llama-index-postprocessor-tei-rerank is not installed")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    post = tei.TextEmbeddingInference(base_url=server.url, top_n=3, auth_token=f"Bearer {KEY}")
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    norm = local_rr.compute_score([(QUERY, t) for t in TEXTS], normalize=True)
    order = [int(i) for i in np.argsort(-np.asarray(norm), kind="stable")[:3]]
    assert [n.node.text for n in out] == [TEXTS[i] for i in order]
    assert max(abs(n.score - norm[i]) for n, i in zip(out, order)) <= 1e-6


# --------------------------------------------------------------------------- backpressure (in process)

class _SlowReranker:
    """A local Reranker whose forward pass takes at least ``delay`` seconds (to fill the rerank queue)."""

    def __init__(self, rr, delay: float) -> None:
        self.rr, self.delay = rr, delay
        self.model_name, self.max_length, self.kind = rr.model_name, rr.max_length, rr.kind
        self.device, self.dtype = rr.device, rr.dtype

    def tokenize_pairs(self, *a, **kw):
        return self.rr.tokenize_pairs(*a, **kw)

    def _forward(self, *a, **kw):
        time.sleep(self.delay)
        return self.rr._forward(*a, **kw)


def test_rerank_queue_full_is_429_with_retry_after_and_embedder_unaffected(m3_encoder, local_rr):
    from bgem3.serve import ServeConfig, create_app

    app = create_app(m3_encoder, ServeConfig(max_queued_texts=6, max_batch_size=2),
                     reranker=_SlowReranker(local_rr, 0.3))
    server = app.state.server
    for b in server.batchers():
        b.start()

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            reranks = [c.post("/rerank", json={"query": QUERY, "texts": TEXTS[1:4]}) for _ in range(6)]
            embed = c.post("/embed", json={"inputs": ["hello"]})
            return await asyncio.gather(embed, *reranks)

    try:
        embed, *rs = asyncio.run(go())
    finally:
        for b in server.batchers():
            b.stop(30)
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 429 in codes, codes
    refused = next(r for r in rs if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and "overloaded" in refused.json()["error"]
    assert embed.status_code == 200  # the embedder's queue is its own


def test_llm_reranker_served_equals_local(tmp_path):
    """bge-reranker-v2-gemma's shape (a causal LM scored by its "Yes" logit, FlagLLMReranker's prompt)."""
    from starlette.testclient import TestClient

    from bgem3 import Reranker
    from bgem3.serve import ServeConfig, create_app
    from bgem3.testing import make_reranker_checkpoint

    rr = Reranker(make_reranker_checkpoint(str(tmp_path / "gemma"), arch="gemma"), device="cpu", max_length=48,
                  kind="llm")
    assert rr.kind == "llm"
    texts = [LONG, "pandas eat bamboo", "cars have wheels", "BM25 ranks documents by term frequency."]
    want = rr.compute_score([(QUERY, t) for t in texts])
    with TestClient(create_app(None, ServeConfig(), reranker=rr)) as c:
        r = c.post("/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True})
        got = {row["index"]: row["score"] for row in r.json()}
        assert max(abs(got[i] - want[i]) for i in range(len(texts))) <= 1e-5
        assert c.get("/info").json()["bgem3"]["reranker"]["kind"] == "llm"
        r = c.post("/rerank", json={"query": QUERY, "texts": [LONG], "truncate": False})
        assert r.status_code == 413


# --------------------------------------------------------------------------- the adapters take the URL

def test_adapters_take_a_serve_url_and_score_as_local(server, local_rr, monkeypatch):
    """'RemoteReranker is accepted wherever a reranker is': the LangChain cross-encoder and the LlamaIndex
    postprocessor given the server's URL score exactly as the local Reranker."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from bgem3.remote_rerank import RemoteReranker
    from langchain_bgem3.crossencoders import BGERerankerCrossEncoder
    from llama_index_bgem3.crossencoders import BGERerank

    monkeypatch.setenv("BGEM3_API_KEY", KEY)
    pairs = [(QUERY, t) for t in TEXTS]
    ce = BGERerankerCrossEncoder(model_name=server.url)
    assert isinstance(ce.reranker, RemoteReranker)
    want = local_rr.compute_score(pairs)
    assert max(abs(a - b) for a, b in zip(ce.score(pairs), want)) <= 1e-5

    post = BGERerank(model=server.url, top_n=3, metadata_mode=MetadataMode.NONE)
    assert isinstance(post.reranker, RemoteReranker)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    order = [h.index for h in local_rr.rerank(QUERY, TEXTS, top_n=3)]
    assert [n.node.text for n in out] == [TEXTS[i] for i in order]


def test_doctests_of_the_rerank_modules():
    import doctest

    import bgem3.remote_rerank
    import bgem3.serve.rerank

    for mod in (bgem3.serve.rerank, bgem3.remote_rerank):
        assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0, mod.__name__


def test_rerank_tokenizer_never_reads_past_the_cut(xlmr_path, local_rr):
    """A huge passage or query costs the rerank route no more tokenizer work than the pair can read (the sibling
    of /embed's cut, issue 21): the tokenizer never sees the whole text, and the scores are the uncut ones."""
    from bgem3.serve.app import ServeConfig, _Server
    from bgem3.serve.textcut import CHARS_PER_TOKEN

    class Recording:
        def __init__(self, tok):
            self.tok, self.longest = tok, 0

        def __call__(self, texts, *a, **kw):
            seq = [texts] if isinstance(texts, str) else list(texts)
            self.longest = max([self.longest] + [len(t) if isinstance(t, str) else 0 for t in seq])
            return self.tok(texts, *a, **kw)

        def __getattr__(self, name):
            return getattr(self.tok, name)

    huge = "dense and lexical retrieval of long passages " * 40000  # ~1.8 MB
    pairs = [(QUERY, huge), (huge, TEXTS[0])]
    want = local_rr.compute_score(pairs)
    from bgem3 import Reranker

    rr = Reranker(xlmr_path, device="cpu", max_length=RMAX)
    server = _Server(None, ServeConfig(), reranker=rr)
    rec = Recording(rr.tokenizer)
    rr.tokenizer = rec
    q, texts = server.rerank_backend.cut(QUERY, [huge], RMAX)
    assert len(texts[0]) < len(huge) and q == QUERY
    items = server.rerank_backend.tokenize(q, texts, RMAX)
    assert server.rerank_backend.was_cut(q, texts, items) == [True]
    assert rec.longest <= RMAX * CHARS_PER_TOKEN * 4, rec.longest
    for (query, text), score in zip(pairs, want):
        q, texts = server.rerank_backend.cut(query, [text], RMAX)
        got = rr.forward_tokenized(server.rerank_backend.tokenize(q, texts, RMAX))[0]
        assert abs(got - score) <= 1e-5


def test_batch_token_budget_resolution(m3_path, xlmr_path, capsys, monkeypatch):
    """ServeConfig(max_batch_tokens=None) -> each model's own max_tokens_per_batch (4096 on CPU, 16384 on a GPU);
    a value given (ServeConfig / --max-batch-tokens) is used for both batchers, and /info shows what is used."""
    import types

    import torch

    from bgem3 import Encoder, Reranker
    from bgem3.serve import ServeConfig
    from bgem3.serve.app import _batch_tokens, _Server

    enc = Encoder(m3_path, device="cpu")
    rr = Reranker(xlmr_path, device="cpu")
    server = _Server(enc, ServeConfig(), reranker=rr)
    assert server.batcher.max_batch_tokens == 4096 == server.rerank_batcher.max_batch_tokens
    given = _Server(enc, ServeConfig(max_batch_tokens=16384), reranker=rr)
    assert given.batcher.max_batch_tokens == 16384 == given.rerank_batcher.max_batch_tokens
    own = _Server(Encoder(m3_path, device="cpu", max_tokens_per_batch=777), ServeConfig())
    assert own.batcher.max_batch_tokens == 777
    gpu = types.SimpleNamespace(device=torch.device("cuda", 0))  # a model without its own budget
    assert _batch_tokens(ServeConfig(), gpu) == 16384 and _batch_tokens(ServeConfig(), types.SimpleNamespace()) == 4096
    assert _batch_tokens(ServeConfig(max_batch_tokens=2048), gpu) == 2048
    from bgem3.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).max_batch_tokens is None
    assert parser.parse_args(["serve", "--max-batch-tokens", "16384"]).max_batch_tokens == 16384
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    assert "4096 on CPU" in " ".join(capsys.readouterr().out.split())
    import uvicorn

    from bgem3.cli import main

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(uvicorn.Server, "run", interrupted)  # the start-up line, then stop at once
    for extra, shown in (([], 4096), (["--max-batch-tokens", "16384"], 16384)):
        assert main(["serve", "--model", m3_path, "--reranker", xlmr_path, "--port", "0", "--device", "cpu",
                     *extra]) == 130
        err = capsys.readouterr().err
        assert err.count(f"on cpu ({shown} tokens per pass)") == 2, err
