"""`bgem3 search --rerank MODEL`: the index's candidates rescored by a cross-encoder, channel scores kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bgem3 import Reranker
from bgem3.cli import main
from bgem3.testing import make_m3_checkpoint, make_reranker_checkpoint

TEXTS = ["Paris is the capital and most populous city of France.", "Berlin is the capital of Germany.",
         "The mitochondria is the powerhouse of the cell.", "BM25 ranks documents by term frequency.",
         "Qdrant is a vector similarity search engine.", "The quick brown fox jumps over the lazy dog."]
QUERY = "what is the capital of France"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-rerank")
    model = make_m3_checkpoint(str(root / "tiny-m3"))
    rr = make_reranker_checkpoint(str(root / "tiny-reranker"), "bert")
    docs = root / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text("\n".join(json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(TEXTS)) + "\n",
                                  encoding="utf-8")
    index = root / "index"
    assert main(["index", str(docs), "--index", str(index), "--model", model, "-q"]) == 0
    return str(index), rr


def _search(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_search_rerank_json_and_table(capsys, setup):
    index, rr_path = setup
    code, out, err = _search(capsys, "search", QUERY, "--index", index, "--json", "-k", "3",
                             "--rerank", rr_path, "--rerank-candidates", "6", "--device", "cpu")
    assert code == 0, err
    data = json.loads(out)
    code, base_out, _ = _search(capsys, "search", QUERY, "--index", index, "--json", "-k", "6")
    base = json.loads(base_out)["hits"]
    texts = [h["text"] for h in base]
    s = np.asarray(Reranker(rr_path, device="cpu").compute_score([(QUERY, t) for t in texts]))
    order = list(np.argsort(-s, kind="stable"))[:3]
    assert [h["text"] for h in data["hits"]] == [texts[i] for i in order]
    np.testing.assert_allclose([h["rerank_score"] for h in data["hits"]], s[order], atol=1e-5)
    by_text = {h["text"]: h for h in base}
    for h in data["hits"]:  # the channel and fused scores stay beside the rerank score
        for key in ("score", "dense_score", "sparse_score", "colbert_score"):
            assert h[key] == pytest.approx(by_text[h["text"]][key])
    assert data["reranker"] == rr_path and data["rerank_candidates"] == 6
    assert [h["text"] for h in data["hits"]] != texts[:3]  # the reranker changed the order
    code, out, err = _search(capsys, "search", QUERY, "--index", index, "-k", "2", "--rerank", rr_path,
                             "--device", "cpu")
    assert code == 0, err
    assert "rerank" in out.splitlines()[0] and "reranked top 50 by" in out


def test_search_rerank_refuses_an_embedding_model(capsys, setup, tmp_path):
    index, _ = setup
    m3 = make_m3_checkpoint(str(tmp_path / "m3"))
    code, out, err = _search(capsys, "search", QUERY, "--index", index, "--rerank", m3, "--device", "cpu")
    assert code != 0 and "not a reranker" in err and "bgem3.Encoder" in err and "Traceback" not in err
