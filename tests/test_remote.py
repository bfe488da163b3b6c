"""RemoteEncoder against a real `bgem3 serve` process: the Encoder contract (float32: dense and
ColBERT <= 1e-6, sparse <= 1e-5), async twins, retries / errors, and every adapter class taking it (or the URL) unchanged."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from _compare import assert_sparse_close  # noqa: E402
from _serve_process import ServerProcess  # noqa: E402
from conftest import MIXED_TEXTS  # noqa: E402

from bgem3.remote import RemoteEncoder, RemoteError, RemoteUnavailable, remote_encoder_for  # noqa: E402

DOCS = ["BGE M3 supports dense, lexical and multi-vector retrieval.", "Paris is the capital of France.",
        "BM25 is a bag-of-words ranking function.", "Qdrant is a vector database.",
        "The quick brown fox jumps over the lazy dog."]


KEY = "remote-key"


@pytest.fixture(scope="module")
def server(m3_path):
    # small batches: calls are split into several requests; a key, read by RemoteEncoder from the env
    srv = ServerProcess(m3_path, "--max-client-batch-size", "4", "--api-key", KEY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGEM3_API_KEY", KEY)
        yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local(m3_path):
    from bgem3 import Encoder

    return Encoder(m3_path, device="cpu")


@pytest.fixture(scope="module")
def remote(server):
    enc = RemoteEncoder(server.url)
    yield enc
    enc.close()


def _same(a, b):
    assert np.abs(a.dense - b.dense).max() <= 1e-6
    assert a.token_counts.tolist() == b.token_counts.tolist()
    for x, y in zip(a.sparse, b.sparse):
        assert_sparse_close(x, y)
    for x, y in zip(a.colbert, b.colbert):
        assert x.shape == y.shape and np.abs(x - y).max() <= 1e-6


def test_attributes_match_the_local_encoder(remote, local):
    from bgem3 import Encoder

    assert isinstance(remote, Encoder)
    assert remote.hidden_size == local.hidden_size and remote.has_heads is True
    assert remote.profile == local.profile and remote.model_max_length == local.model_max_length
    assert remote.vocab_size == local.vocab_size
    assert remote.server_batch_size == 4 and remote.batch_size == 4
    assert "RemoteEncoder(" in repr(remote)


def test_encode_queries_documents_equal_local(remote, local):
    texts = list(MIXED_TEXTS)  # 12 texts -> 3 requests of 4, sent concurrently
    kw = dict(dense=True, sparse=True, colbert=True)
    _same(remote.encode(texts, **kw), local.encode(texts, **kw))
    _same(remote.encode_queries(texts, **kw), local.encode_queries(texts, **kw))
    _same(remote.encode_documents(texts, **kw), local.encode_documents(texts, **kw))
    one = remote.encode("a single string")
    assert one.dense.shape == (1, local.hidden_size)  # never split into characters
    empty = remote.encode([], sparse=True)
    assert empty.dense.shape == (0, local.hidden_size) and empty.sparse == []


def test_async_twins(remote, local):
    async def go():
        return await asyncio.gather(remote.aencode_queries(DOCS, sparse=True), remote.aencode_documents(DOCS),
                                    remote.aencode(DOCS, colbert=True))

    q, d, c = asyncio.run(go())
    assert np.abs(q.dense - local.encode_queries(DOCS).dense).max() <= 1e-6
    assert [set(x) for x in q.sparse] == [set(y) for y in local.encode_queries(DOCS, sparse=True).sparse]
    assert np.abs(d.dense - local.encode_documents(DOCS).dense).max() <= 1e-6
    assert all(np.abs(x - y).max() <= 1e-6 for x, y in zip(c.colbert, local.encode(DOCS, colbert=True).colbert))


def test_float16_colbert_option(server, local):
    with RemoteEncoder(server.url, colbert_dtype="float16") as enc:
        out = enc.encode(DOCS, dense=False, colbert=True)
    assert all(np.abs(x - y).max() < 2e-3 for x, y in zip(out.colbert, local.encode(DOCS, colbert=True).colbert))


def test_bad_arguments_are_refused(server, remote):
    with pytest.raises(TypeError):
        remote.encode([1, 2])
    with pytest.raises(ValueError, match="nothing to compute"):
        remote.encode(["x"], dense=False)
    with pytest.raises(ValueError, match="http"):
        RemoteEncoder("localhost:8080")
    with pytest.raises(ValueError, match="colbert_dtype"):
        RemoteEncoder(server.url, colbert_dtype="int8")
    with pytest.raises(NotImplementedError, match="local bgem3.Encoder"):
        remote.tokenize(["x"])
    with pytest.raises(AttributeError, match="runs on the server"):
        remote.tokenizer  # noqa: B018
    with pytest.raises(ValueError, match="cache_dir"):
        remote_encoder_for(server.url, cache_dir="/tmp")
    with pytest.raises(ValueError, match="device='cuda' does not match"):
        remote_encoder_for(server.url, device="cuda")
    assert remote_encoder_for(server.url, device="cpu", dtype="fp32", batch_size=2).batch_size == 2


def test_unreachable_server_gives_up_after_bounded_retries():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(RemoteUnavailable, match="after 3 tries"):
        RemoteEncoder(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01, timeout=2)


def test_auth_errors_and_server_refusals(server, local):
    with pytest.raises(PermissionError, match="api_key"):
        RemoteEncoder(server.url, api_key="wrong")
    assert httpx.post(server.url + "/encode", json={"inputs": ["x"]}).status_code == 401
    long = "word " * 700
    r = httpx.post(server.url + "/encode", json={"inputs": [long], "truncate": False},
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413
    with RemoteEncoder(server.url, api_key=KEY) as enc:  # the client truncates, like the local Encoder
        assert enc.encode([long]).token_counts.tolist() == local.encode([long]).token_counts.tolist()
        with pytest.raises(RemoteError) as info:
            enc._request_sync("POST", "/encode", {"inputs": "x", "bogus": 1})
        assert info.value.status == 422 and "bogus" in str(info.value)


def test_retry_on_503_then_success():
    calls = {"n": 0}
    info = {"model_id": "m", "max_input_length": 8, "max_client_batch_size": 4, "model_dtype": "float32",
            "bgem3": {"dim": 2, "has_heads": False, "colbert_dim": None, "vocab_size": 10, "max_request_tokens": 100,
                      "max_body_bytes": 1000, "device": "cpu",
                      "profile": {"name": "bge", "pooling": "cls", "normalize": True, "query_template": None,
                                  "passage_template": None, "task": None, "has_heads": False}}}

    def handler(request):
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": "draining"})
        return httpx.Response(200, json=info)

    import bgem3.remote as remote_mod

    real = httpx.Client

    def fake_client(**kw):
        return real(transport=httpx.MockTransport(handler), **kw)

    from bgem3._http_client import HttpClient

    remote_mod_httpx = HttpClient._httpx()
    orig = remote_mod_httpx.Client
    remote_mod_httpx.Client = fake_client
    try:
        enc = RemoteEncoder("http://127.0.0.1:1", backoff=0.0)
    finally:
        remote_mod_httpx.Client = orig
    assert calls["n"] == 3 and enc.hidden_size == 2 and enc.has_heads is False
    with pytest.raises(ValueError, match="heads"):
        enc.encode(["x"], sparse=True)


# --------------------------------------------------------------------------- stores and adapters

def test_hybrid_index_with_remote_encoder_and_url(server, remote, local):
    from bgem3 import HybridIndex

    a, b = HybridIndex(remote), HybridIndex(local)
    for idx in (a, b):
        idx.add(DOCS, ids=[str(i) for i in range(len(DOCS))])
    ha, hb = a.search("capital of France", k=3), b.search("capital of France", k=3)
    assert [h.id for h in ha] == [h.id for h in hb]
    assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)
    by_url = HybridIndex(server.url)
    by_url.add(DOCS[:2])
    assert len(by_url) == 2


def test_qdrant_store_with_remote_encoder(remote, local):
    pytest.importorskip("qdrant_client")
    from bgem3.stores.qdrant import QdrantHybridStore

    stores = [QdrantHybridStore(enc, location=":memory:", collection_name=f"c{i}") for i, enc in
              enumerate((remote, local))]
    for st in stores:
        st.add(DOCS, ids=[str(i) for i in range(len(DOCS))])
    ra, rb = (st.search("vector database", k=3) for st in stores)
    assert [h.id for h in ra] == [h.id for h in rb]


def test_langchain_adapters_with_remote_encoder(server, remote, local):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from langchain_bgem3 import BGEM3Embeddings, BGEM3HybridRetriever, BGEM3Reranker, BGEM3SparseEmbeddings

    emb = BGEM3Embeddings(encoder=remote)
    ref = BGEM3Embeddings(encoder=local)
    assert np.abs(np.asarray(emb.embed_documents(DOCS)) - np.asarray(ref.embed_documents(DOCS))).max() <= 1e-6
    assert np.abs(np.asarray(emb.embed_query("q")) - np.asarray(ref.embed_query("q"))).max() <= 1e-6
    assert np.abs(np.asarray(asyncio.run(emb.aembed_query("q"))) - np.asarray(ref.embed_query("q"))).max() <= 1e-6
    by_url = BGEM3Embeddings(model_name=server.url)
    assert np.abs(np.asarray(by_url.embed_query("q")) - np.asarray(ref.embed_query("q"))).max() <= 1e-6
    try:
        sp = BGEM3SparseEmbeddings(encoder=remote)
        sr = BGEM3SparseEmbeddings(encoder=local)
        assert sp.embed_query("capital").indices == sr.embed_query("capital").indices
    except ImportError:
        pass  # langchain-qdrant not installed
    ret = BGEM3HybridRetriever.from_texts(DOCS, remote, k=2)
    assert ret.invoke("capital of France")[0].page_content == "Paris is the capital of France."
    rr = BGEM3Reranker(encoder=remote, top_n=2)
    out = rr.compress_documents([Document(page_content=d) for d in DOCS], "capital of France")
    ref_out = BGEM3Reranker(encoder=local, top_n=2).compress_documents([Document(page_content=d) for d in DOCS],
                                                                        "capital of France")
    assert [d.page_content for d in out] == [d.page_content for d in ref_out]


def test_llama_index_adapters_with_remote_encoder(server, remote, local):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llama_index_bgem3 import BGEM3Embedding, BGEM3HybridRetriever, BGEM3Reranker, BGEM3SparseEmbedding

    emb, ref = BGEM3Embedding(encoder=remote), BGEM3Embedding(encoder=local)
    a = np.asarray(emb.get_text_embedding_batch(DOCS))
    assert np.abs(a - np.asarray(ref.get_text_embedding_batch(DOCS))).max() <= 1e-6
    q = np.asarray(asyncio.run(emb.aget_query_embedding("q")))
    assert np.abs(q - np.asarray(ref.get_query_embedding("q"))).max() <= 1e-6
    by_url = BGEM3Embedding(model_name=server.url)
    assert np.abs(np.asarray(by_url.get_query_embedding("q")) - np.asarray(ref.get_query_embedding("q"))).max() <= 1e-6
    sp, sr = BGEM3SparseEmbedding(encoder=remote), BGEM3SparseEmbedding(encoder=local)
    assert set(sp.get_query_embedding("capital")) == set(sr.get_query_embedding("capital"))
    nodes = [TextNode(text=d, id_=str(i)) for i, d in enumerate(DOCS)]
    ret = BGEM3HybridRetriever.from_nodes(nodes, remote, similarity_top_k=2)
    assert ret.retrieve("capital of France")[0].node.get_content() == "Paris is the capital of France."
    rr = BGEM3Reranker(encoder=remote, top_n=2)
    out = rr.postprocess_nodes([NodeWithScore(node=n) for n in nodes], QueryBundle("capital of France"))
    ref_out = BGEM3Reranker(encoder=local, top_n=2).postprocess_nodes([NodeWithScore(node=n) for n in nodes],
                                                                       QueryBundle("capital of France"))
    assert [n.node.node_id for n in out] == [n.node.node_id for n in ref_out]


def test_adapters_async_methods_use_the_remote_encoders_native_async(remote, local, monkeypatch):
    # aembed_* / _aget_* with a RemoteEncoder await its aencode_* on the caller's event loop:
    # no sync request, no worker thread; same numbers as the local encoder
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    import threading

    from langchain_bgem3 import BGEM3Embeddings
    from llama_index_bgem3 import BGEM3Embedding, BGEM3SparseEmbedding

    def no_sync(*a, **k):
        raise AssertionError("the sync HTTP path ran (a worker thread) instead of aencode_*")

    threads: list = []
    real = RemoteEncoder._request_async

    async def spy(self, *a, **k):
        threads.append(threading.current_thread())
        return await real(self, *a, **k)

    monkeypatch.setattr(remote, "_request_sync", no_sync)
    monkeypatch.setattr(RemoteEncoder, "_request_async", spy)
    lc, lc_ref = BGEM3Embeddings(encoder=remote), BGEM3Embeddings(encoder=local)
    li, li_ref = BGEM3Embedding(encoder=remote), BGEM3Embedding(encoder=local)
    lis, lis_ref = BGEM3SparseEmbedding(encoder=remote), BGEM3SparseEmbedding(encoder=local)
    try:
        from langchain_bgem3 import BGEM3SparseEmbeddings

        lcs, lcs_ref = BGEM3SparseEmbeddings(encoder=remote), BGEM3SparseEmbeddings(encoder=local)
    except ImportError:  # langchain-qdrant not installed
        lcs = lcs_ref = None

    async def go():
        out = [await lc.aembed_documents(DOCS), await lc.aembed_query("q"),
               await li.aget_text_embedding_batch(DOCS), await li.aget_query_embedding("q"),
               await li.aget_text_embedding(DOCS[0]),
               await lis.aget_query_embedding("capital"), await lis.aget_text_embedding_batch(DOCS)]
        if lcs is not None:
            out += [await lcs.aembed_documents(DOCS), await lcs.aembed_query("capital")]
        await remote.aclose()
        return out

    got = asyncio.run(go())
    monkeypatch.undo()
    assert threads and all(t is threading.main_thread() for t in threads)
    want = [lc_ref.embed_documents(DOCS), lc_ref.embed_query("q"), li_ref.get_text_embedding_batch(DOCS),
            li_ref.get_query_embedding("q"), li_ref.get_text_embedding(DOCS[0])]
    for g, w in zip(got[:5], want):
        assert np.abs(np.asarray(g) - np.asarray(w)).max() <= 1e-6
    for g, w in ((got[5], lis_ref.get_query_embedding("capital")),) + tuple(zip(got[6], lis_ref.get_text_embedding_batch(DOCS))):
        assert_sparse_close(g, w)
    if lcs is not None:
        for g, w in zip(got[7] + [got[8]], lcs_ref.embed_documents(DOCS) + [lcs_ref.embed_query("capital")]):
            assert_sparse_close(dict(zip(g.indices, g.values)), dict(zip(w.indices, w.values)))


def test_async_pools_survive_one_event_loop_after_another(server, local):
    # every asyncio.run() is a new loop: each gets its own pool; aclose() on a later loop does not
    # touch the pools of loops already closed (it raised "Event loop is closed" before)
    enc = RemoteEncoder(server.url)
    want = local.encode(["loop one", "loop two"]).dense
    for i, text in enumerate(["loop one", "loop two"]):
        out = asyncio.run(enc.aencode([text]))
        assert np.abs(out.dense[0] - want[i]).max() <= 1e-6
    asyncio.run(enc.aclose())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_decision_is_the_same_sync_and_async(remote, monkeypatch, mode):
    # one decision for both loops: 429/503 retried (Retry-After honoured), other 4xx at once, give up after max_retries
    script: list = []
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        status = script.pop(0) if script else 200
        if status == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, json={"ok": calls["n"]} if status == 200 else {"error": f"status {status}"},
                              headers={"retry-after": "0"} if status in (429, 503) else {})

    monkeypatch.setattr(remote, "max_retries", 3)
    monkeypatch.setattr(remote, "backoff", 0.0)
    transport = httpx.MockTransport(handler)
    if mode == "sync":
        monkeypatch.setattr(remote, "_client", httpx.Client(base_url=remote.url, transport=transport))
        call = lambda: remote._request_sync("GET", "/x", None)  # noqa: E731
    else:
        monkeypatch.setattr(remote, "_async_client", lambda: httpx.AsyncClient(base_url=remote.url, transport=transport))
        call = lambda: asyncio.run(remote._request_async("GET", "/x", None))  # noqa: E731
    script[:] = [429, "drop", 503]
    assert call() == {"ok": 4} and calls["n"] == 4
    calls["n"] = 0
    script[:] = [503, 503, 503, 503, 200]
    with pytest.raises(RemoteUnavailable, match="after 4 tries .*HTTP 503"):
        call()
    assert calls["n"] == 4
    calls["n"] = 0
    script[:] = [422]
    with pytest.raises(RemoteError, match="422: status 422") as info:
        call()
    assert info.value.status == 422 and calls["n"] == 1
    script[:] = [401]
    with pytest.raises(PermissionError, match="api_key"):
        call()


def test_e5_facades_by_url_equal_the_local_facades(minilm, server):
    # E5Embeddings / E5Embedding(model_name=URL): the server's pooling, E5's prefixes added here,
    # the same vectors as the facade on the local folder; a BGE-M3 server is refused with the alternative
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_bgem3 import E5Embeddings
    from llama_index_bgem3 import E5Embedding

    srv = ServerProcess(minilm)
    try:
        lc_url, lc_local = E5Embeddings(model_name=srv.url), E5Embeddings(model_name=minilm)
        li_url, li_local = E5Embedding(model_name=srv.url), E5Embedding(model_name=minilm)
        assert isinstance(lc_url.encoder, RemoteEncoder) and isinstance(li_url.encoder, RemoteEncoder)
        docs = DOCS[:3]
        pairs = [(lc_url.embed_documents(docs), lc_local.embed_documents(docs)),
                 (lc_url.embed_query("capital"), lc_local.embed_query("capital")),
                 (asyncio.run(lc_url.aembed_query("capital")), lc_local.embed_query("capital")),
                 (li_url.get_text_embedding_batch(docs), li_local.get_text_embedding_batch(docs)),
                 (li_url.get_query_embedding("capital"), li_local.get_query_embedding("capital"))]
        for got, want in pairs:
            assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1e-6
        # the prefixes really were applied: "query: capital" differs from the bare text
        bare = RemoteEncoder(srv.url).encode(["capital"]).dense[0]
        assert np.abs(np.asarray(lc_url.embed_query("capital")) - bare).max() > 1e-3
        lc_task = E5Embeddings(model_name=srv.url, task="Find the city")
        want = E5Embeddings(model_name=minilm, task="Find the city").embed_query("capital")
        assert np.abs(np.asarray(lc_task.embed_query("capital")) - np.asarray(want)).max() <= 1e-6
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="BGEM3Embeddings"):
        E5Embeddings(model_name=server.url)
    with pytest.raises(ValueError, match="BGEM3Embeddings"):
        E5Embedding(model_name=server.url)
