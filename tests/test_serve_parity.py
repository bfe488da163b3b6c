"""Same text, same vector, wherever it is encoded: local ``Encoder`` == ``RemoteEncoder`` == ``bgem3 serve``.

For every family the server serves — BGE-M3 (dense, lexical, ColBERT), e5-instruct with ``task``,
LLM-Embedder with ``task`` on both sides, a sentence-transformers folder with
``include_prompt=False`` (the prompt left out of pooling), bge-en-icl with few-shot ``examples=``
— queries and documents are encoded three ways: the local encoder's ``encode_queries`` /
``encode_documents``, a ``RemoteEncoder``'s (sync and async), and the server's own routes
(``POST /encode`` with ``side``, TEI's ``/embed`` with ``prompt_name``).
"""

from __future__ import annotations

import asyncio
import base64
import shutil

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _compare import assert_sparse_close  # noqa: E402
from _serve_process import ServerProcess  # noqa: E402

from bgem3 import Encoder  # noqa: E402
from bgem3.remote import RemoteEncoder  # noqa: E402

QUERIES = ["what is the capital of France?", "how do foxes hunt", "BGE M3 lexical weights"]
DOCS = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
        "BGE M3 supports dense, lexical and multi-vector retrieval."]
TOL = 1e-6
EXAMPLES = [{"instruct": "Given a question, retrieve passages that answer it",
             "query": "what is a fox", "response": "A fox is a small wild animal."}]


def _decode(part: dict, n: int) -> np.ndarray:
    d = part["dense"]
    assert d["shape"][0] == n
    return np.frombuffer(base64.b64decode(d["data"]), "<f4").reshape(d["shape"])


def _served(url: str, texts: list[str], side: str, **fields) -> dict:
    body = {"inputs": texts, "side": side, "colbert_dtype": "float32", **fields}
    r = httpx.post(url + "/encode", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _close(a, b, what: str) -> None:
    assert a.shape == b.shape, what
    assert float(np.abs(a - b).max()) <= TOL, f"{what}: max diff {float(np.abs(a - b).max())}"


def _check_three_ways(path: str, *, server_args: tuple = (), query_kw: dict = None, doc_kw: dict = None,
                      heads: bool = False) -> None:
    query_kw, doc_kw = query_kw or {}, doc_kw or {}
    local = Encoder(path, device="cpu")
    srv = ServerProcess(path, *server_args)
    try:
        remote = RemoteEncoder(srv.url, max_retries=0)
        flags = dict(dense=True, sparse=heads, colbert=heads)
        for side, texts, kw in (("query", QUERIES, query_kw), ("document", DOCS, doc_kw)):
            fn = "encode_queries" if side == "query" else "encode_documents"
            want = getattr(local, fn)(texts, **kw, **flags)
            got_remote = getattr(remote, fn)(texts, **kw, **flags)
            got_async = asyncio.run(getattr(remote, "a" + fn)(texts, **kw, **flags))
            served = _served(srv.url, texts, side, sparse=heads, colbert=heads, **kw)
            for name, out in (("RemoteEncoder", got_remote), ("RemoteEncoder async", got_async)):
                _close(out.dense, want.dense, f"{side} dense via {name}")
                assert out.token_counts.tolist() == want.token_counts.tolist(), f"{side} token counts via {name}"
            _close(_decode(served, len(texts)), want.dense, f"{side} dense via POST /encode")
            assert served["token_counts"] == want.token_counts.tolist()
            if heads:
                for name, out in (("RemoteEncoder", got_remote), ("RemoteEncoder async", got_async)):
                    for g, w in zip(out.sparse, want.sparse):
                        assert_sparse_close(g, w)
                    for g, w in zip(out.colbert, want.colbert):
                        _close(g, w, f"{side} ColBERT via {name}")
            if not kw:  # TEI's prompt_name applies the same templates
                r = httpx.post(srv.url + "/embed", json={"inputs": texts, "prompt_name": side}, timeout=60)
                assert r.status_code == 200, r.text
                _close(np.asarray(r.json(), np.float32), want.dense, f"{side} dense via TEI /embed")
        remote.close()
    finally:
        assert srv.stop() == 0, "".join(srv.stderr)[-2000:]


def test_m3_all_three_outputs(m3_path):
    _check_three_ways(m3_path, heads=True)


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    from bgem3.testing import make_bert_checkpoint

    return make_bert_checkpoint(str(tmp_path_factory.mktemp("bert") / "base"))


def _named(base: str, tmp_path, name: str) -> str:
    dst = str(tmp_path / name)
    shutil.copytree(base, dst)
    return dst


def test_e5_instruct_with_task(bert_base, tmp_path):
    _check_three_ways(_named(bert_base, tmp_path, "multilingual-e5-large-instruct"),
                      query_kw={"task": "Find the passage that answers the question"})


def test_llm_embedder_task_on_both_sides(bert_base, tmp_path):
    path = _named(bert_base, tmp_path, "llm-embedder")
    _check_three_ways(path, query_kw={"task": "chat"}, doc_kw={"task": "chat"})
    _check_three_ways(path)  # the default task ("qa")


def test_sentence_transformers_folder_with_include_prompt_false(minilm, tmp_path):
    from bgem3.testing import add_sentence_transformers_modules

    dst = tmp_path / "st-no-prompt"
    shutil.copytree(minilm, dst, ignore=shutil.ignore_patterns("modules.json", "1_Pooling", "2_Normalize",
                                                                "sentence_bert_config.json", "config_sentence_transformers.json"))
    path = add_sentence_transformers_modules(str(dst), pooling="mean", include_prompt=False, normalize=True,
                                             prompts={"query": "query: ", "document": "passage: "})
    assert Encoder(path, device="cpu").profile.include_prompt is False
    _check_three_ways(path)


def test_bge_en_icl_with_examples(tmp_path):
    from bgem3.testing import make_decoder_checkpoint

    path = make_decoder_checkpoint(str(tmp_path / "bge-en-icl"), "mistral", padding_side="left", seed=4)
    assert Encoder(path, device="cpu").profile.icl
    _check_three_ways(path, query_kw={"examples": EXAMPLES})


def test_a_normalize_choice_the_server_cannot_honour_is_refused(minilm):
    # a view with normalize=False of a server that normalises: refused by name, never normalised rows
    from bgem3._adapters.text_encoder import encoder_view

    srv = ServerProcess(minilm)
    try:
        remote = RemoteEncoder(srv.url, max_retries=0)
        assert remote.profile.normalize
        with pytest.raises(ValueError, match="normalize=False"):
            encoder_view(remote, False).encode_queries(["hello world"])
        # the view that keeps the server's normalisation still equals local
        local = Encoder(minilm, device="cpu")
        _close(encoder_view(remote, True).encode(["hello world"]).dense, local.encode(["hello world"]).dense, "dense")
        remote.close()
    finally:
        srv.stop()
