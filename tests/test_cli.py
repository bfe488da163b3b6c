"""The `bgem3` command end to end with the tiny offline checkpoint, plus bgem3.ingest / bgem3.explain.

Most tests call ``bgem3.cli.main(argv)`` in-process; one runs ``python -m bgem3`` for real.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bgem3 import Encoder, HybridIndex, scoring
from bgem3.cli import main
from bgem3.explain import display_token, explain, explain_many
from bgem3.ingest import IngestError, Manifest, find_files, read_source, split_text
from bgem3.testing import make_m3_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARIS = "Paris is the capital and most populous city of France."
BERLIN = "Berlin is the capital of Germany and has many museums."
MITO = "The mitochondria is the powerhouse of the cell."
BM25 = "BM25 ranks documents by term frequency."
QDRANT = "Qdrant is a vector similarity search engine."
MADRID = "Madrid is the capital of Spain."
EIFFEL = "The Eiffel tower stands in Paris."

COLBERT_ONLY = ["--weights", "0,0,1", "--exhaustive"]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def fd_model(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("fd_m3") / "tiny-m3"))


@pytest.fixture(scope="session")
def fd_other_model(tmp_path_factory) -> str:
    """Another model (other random weights): an index built with one refuses the other."""
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("fd_other") / "other-model"), seed=1)


@pytest.fixture(scope="session")
def fd_encoder(fd_model) -> Encoder:
    return Encoder(fd_model, device="cpu")


@pytest.fixture
def corpus(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    (docs / "cities.md").write_text(f"# Cities\n\n{PARIS}\n\n{BERLIN}\n", encoding="utf-8")
    (docs / "sub" / "bio.txt").write_text(MITO + "\n", encoding="utf-8")
    (docs / "records.jsonl").write_text(
        json.dumps({"id": "bm25", "text": BM25, "metadata": {"lang": "en", "topic": "ir"}}) + "\n\n"
        + json.dumps({"id": "qdrant", "text": QDRANT, "metadata": {"lang": "en", "topic": "db"}}) + "\n",
        encoding="utf-8")
    (docs / "ignored.csv").write_text("a,b\n", encoding="utf-8")
    (docs / ".hidden" / "secret.txt").write_text("hidden text", encoding="utf-8")
    return docs


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def search_json(capsys, index, query, *extra):
    code, out, err = run(capsys, "search", query, "--index", index, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def all_texts(capsys, index) -> list[str]:
    data = search_json(capsys, index, "anything", "-k", "1000", "--exhaustive")
    return [h["text"] for h in data["hits"]]


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("bgem3: error: "), lines[0]
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"


def snapshot(folder) -> dict:
    """Every file under ``folder`` (the index keeps its segments in sub-folders)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- index / search / update

def test_index_search_update_end_to_end(capsys, tmp_path, corpus, fd_model):
    idx = tmp_path / "idx"
    code, out, err = run(capsys, "index", corpus, "--index", idx, "--model", fd_model)
    assert code == 0, err
    assert "3 added" in out and "4 passages" in out  # Paris+Berlin one passage (small file), bio, 2 records
    assert (idx / "manifest.json").is_file() and (idx / "sources.json").is_file()
    manifest = Manifest.load(str(idx))
    assert sorted(os.path.basename(p) for p in manifest.files) == ["bio.txt", "cities.md", "records.jsonl"]
    texts = all_texts(capsys, idx)
    assert len(texts) == 4 and any(MITO in t for t in texts) and BM25 in texts
    assert not any("hidden text" in t for t in texts)

    # an exact passage is the top ColBERT hit (MaxSim of identical token vectors is the maximum, 1.0)
    data = search_json(capsys, idx, MITO, "-k", "2", *COLBERT_ONLY)
    assert data["hits"][0]["text"] == MITO
    assert data["hits"][0]["source"].endswith("bio.txt")
    assert data["hits"][0]["colbert_score"] == pytest.approx(1.0, abs=2e-3)

    # re-running with nothing changed is a no-op that rewrites nothing
    before = snapshot(idx)
    code, out, _ = run(capsys, "index", corpus, "--index", idx)
    assert code == 0 and "up to date" in out
    assert snapshot(idx) == before

    # change one file, add one, remove one
    (corpus / "cities.md").write_text(MADRID + "\n", encoding="utf-8")
    (corpus / "sub" / "new.txt").write_text(EIFFEL + "\n", encoding="utf-8")
    (corpus / "sub" / "bio.txt").unlink()
    code, out, err = run(capsys, "index", corpus, "--index", idx)  # model comes from the index
    assert code == 0, err
    assert "1 added, 1 changed, 1 removed, 1 unchanged" in out
    texts = all_texts(capsys, idx)
    assert not any(MITO in t for t in texts), "removed file's passages must be gone"
    assert not any(PARIS in t or BERLIN in t for t in texts), "changed file's old passages must be gone"
    assert MADRID in texts and EIFFEL in texts and BM25 in texts and QDRANT in texts
    assert len(texts) == 4
    data = search_json(capsys, idx, MADRID, "-k", "1", *COLBERT_ONLY)
    assert data["hits"][0]["text"] == MADRID and data["hits"][0]["source"].endswith("cities.md")
    # the manifest tracks the new state
    files = Manifest.load(str(idx)).files
    assert sorted(os.path.basename(p) for p in files) == ["cities.md", "new.txt", "records.jsonl"]
    # the saved index agrees with the manifest, id for id
    index = HybridIndex.load(str(idx), load_encoder=False)
    assert sorted(index.ids) == sorted(pid for e in files.values() for pid in e["ids"])


def test_search_table_and_json_agree(capsys, tmp_path, corpus, fd_model):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    data = search_json(capsys, idx, "capital of France", "-k", "3")
    hits = data["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert data["model"] == fd_model and data["weights"] == [0.4, 0.2, 0.4]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    for h in hits:  # the fused score is the BGE-M3 weighted mean of the three channels
        expect = (0.4 * h["dense_score"] + 0.2 * h["sparse_score"] + 0.4 * h["colbert_score"]) / 1.0
        assert h["score"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
        assert h["source"] and h["id"] and h["text"]

    code, out, err = run(capsys, "search", "capital of France", "--index", idx, "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["#", "score", "dense", "lexical", "colbert", "source"]
    assert len(lines) == 6
    assert lines[-2].startswith("model ") and "channels dense + lexical (learned) + colbert" in lines[-2]
    # issue 23: one line says what each column is
    assert lines[-1].startswith("columns: score = weighted mean") and "dense = cosine" in lines[-1] \
        and "lexical = BGE-M3 lexical match" in lines[-1] and "colbert = ColBERT MaxSim" in lines[-1]
    for rank, (line, h) in enumerate(zip(lines[1:], hits), start=1):
        cols = line.split()
        assert cols[0] == str(rank)
        assert float(cols[1]) == pytest.approx(h["score"], abs=1e-3)
        assert float(cols[3]) == pytest.approx(h["sparse_score"], abs=1e-3)
        assert os.path.basename(h["source"]) in line


def test_search_filter_and_rrf(capsys, tmp_path, corpus, fd_model):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    data = search_json(capsys, idx, "search engine", "-k", "10", "--filter", "topic=db")
    assert [h["id"] for h in data["hits"]] == ["qdrant"]
    assert data["hits"][0]["metadata"]["lang"] == "en"
    rrf = search_json(capsys, idx, "search engine", "-k", "4", "--mode", "rrf")
    assert rrf["mode"] == "rrf" and len(rrf["hits"]) == 4
    assert all(0 < h["score"] < 0.1 for h in rrf["hits"])  # sum of w / (60 + rank)
    code, out, _ = run(capsys, "search", "x", "--index", idx, "--filter", "topic=nothing")
    assert code == 0 and "no results" in out


def test_explain_lexical_and_colbert(capsys, tmp_path, corpus, fd_model, fd_encoder):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    query = "capital of France"
    data = search_json(capsys, idx, query, "-k", "2", "--explain", "--explain-top", "50")
    q_ids = fd_encoder.tokenize([query])[0]
    q_tokens = fd_encoder.tokenizer.convert_ids_to_tokens(q_ids)[1:]  # ColBERT drops CLS
    for h in data["hits"]:
        ex = h["explain"]
        # the breakdown adds up to the index's channel scores
        assert sum(m["contribution"] for m in ex["lexical"]) == pytest.approx(h["sparse_score"], rel=1e-4, abs=1e-5)
        assert ex["colbert_score"] == pytest.approx(h["colbert_score"], abs=5e-3)  # index keeps fp16 ColBERT
        contribs = [m["contribution"] for m in ex["lexical"]]
        assert contribs == sorted(contribs, reverse=True)
        assert sorted(m["query_token"] for m in ex["colbert"]) == sorted(q_tokens)
        doc_tokens = fd_encoder.tokenizer.convert_ids_to_tokens(fd_encoder.tokenize([h["text"]])[0])
        for m in ex["colbert"]:
            assert m["doc_token"] == doc_tokens[m["doc_position"] + 1]
        for m in ex["lexical"]:
            assert m["token"] in q_tokens and m["token"] in doc_tokens

    code, out, err = run(capsys, "search", query, "--index", idx, "-k", "1", "--explain")
    assert code == 0, err
    top = data["hits"][0]["explain"]
    lex_line = next(ln for ln in out.splitlines() if ln.strip().startswith("lexical:"))
    best = top["lexical"][0]
    assert f"{display_token(best['token'])} {best['contribution']:.3f}" in lex_line
    col_text = out[out.index("colbert:"):]
    first = top["colbert"]  # in query order
    q0 = next(m for m in first if m["query_position"] == 0)
    assert f"{display_token(q0['query_token'])}→{display_token(q0['doc_token'])} {q0['similarity']:.2f}" in col_text


def test_explain_module_matches_scoring(fd_encoder):
    query, text = "capital of France", PARIS
    ex = explain(fd_encoder, query, text)
    q = fd_encoder.encode_queries([query], sparse=True, colbert=True)
    d = fd_encoder.encode_documents([text], sparse=True, colbert=True)
    assert ex.sparse_score == pytest.approx(scoring.lexical_score(q.sparse[0], d.sparse[0]), rel=1e-6)
    assert ex.colbert_score == pytest.approx(scoring.colbert_score(q.colbert[0], d.colbert[0]), rel=1e-5)
    assert ex.dense_score == pytest.approx(float(q.dense[0] @ d.dense[0]), rel=1e-6)
    assert ex.similarity.shape == (len(ex.query_tokens), len(ex.doc_tokens)) == (len(q.colbert[0]), len(d.colbert[0]))
    assert [m.similarity for m in ex.colbert] == pytest.approx(ex.similarity.max(axis=1).tolist())
    assert ex.query_tokens[-1] == "</s>" and ex.doc_tokens[-1] == "</s>"
    many = explain_many(fd_encoder, query, [text, MITO])
    assert many[0].sparse_score == pytest.approx(ex.sparse_score, rel=1e-5)
    assert many[1].text == MITO
    assert display_token("▁Paris") == "Paris" and display_token("▁") == "▁"


def test_chunking_and_resplit(capsys, tmp_path, fd_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = [f"Paragraph {i} talks about topic number {i} in some detail." for i in range(12)]
    (docs / "long.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    idx = tmp_path / "idx"
    code, out, err = run(capsys, "index", docs, "--index", idx, "--model", fd_model,
                         "--chunk-unit", "chars", "--chunk-size", "200", "--chunk-overlap", "0")
    assert code == 0, err
    texts = all_texts(capsys, idx)
    assert len(texts) >= 3 and all(len(t) <= 200 for t in texts)
    joined = "\n\n".join(sorted(texts, key=lambda t: int(t.split()[1])))
    for p in paragraphs:
        assert p in joined  # cut at paragraph boundaries: no paragraph is broken
    ids = Manifest.load(str(idx)).ids_of(str(docs / "long.txt"))
    assert ids == [f"{docs / 'long.txt'}#{i}" for i in range(len(texts))]
    # new chunk settings re-split the unchanged file
    code, out, err = run(capsys, "index", docs, "--index", idx, "--chunk-size", "100")
    assert code == 0, err and "re-split" in out
    assert "re-split" in out
    texts2 = all_texts(capsys, idx)
    assert len(texts2) > len(texts) and all(len(t) <= 100 for t in texts2)
    assert Manifest.load(str(idx)).settings == {"chunk_size": 100, "chunk_overlap": 0, "chunk_unit": "chars"}


def test_rebuild_and_info(capsys, tmp_path, corpus, fd_model):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    code, out, err = run(capsys, "index", corpus / "sub", "--index", idx, "--rebuild", "--model", fd_model)
    assert code == 0, err
    assert all_texts(capsys, idx) == [MITO]
    code, out, _ = run(capsys, "info", "--index", idx, "--json")
    info = json.loads(out)
    assert code == 0 and info["passages"] == 1 and info["files"] == 1 and info["model"] == fd_model
    assert list(info["sources"].values()) == [1]
    assert info["channels"] == ["dense", "lexical", "colbert"] and info["colbert_codec"]  # shown with a ColBERT channel


def test_two_folders_share_one_index(capsys, tmp_path, corpus, fd_model):
    other = tmp_path / "other"
    other.mkdir()
    (other / "e.txt").write_text(EIFFEL, encoding="utf-8")
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    assert run(capsys, "index", other, "--index", idx)[0] == 0
    texts = all_texts(capsys, idx)
    assert EIFFEL in texts and BM25 in texts  # indexing `other` did not remove `corpus`'s files


# --------------------------------------------------------------------------- embed

def test_embed_jsonl_stdout_matches_encoder(capsys, fd_model, fd_encoder):
    code, out, err = run(capsys, "embed", PARIS, MITO, "--model", fd_model)
    assert code == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    ref = fd_encoder.encode_documents([PARIS, MITO], sparse=True, colbert=True)
    assert [r["text"] for r in recs] == [PARIS, MITO]
    for i, r in enumerate(recs):
        np.testing.assert_allclose(r["dense"], ref.dense[i], atol=1e-6)
        assert {int(k): v for k, v in r["sparse"].items()} == pytest.approx(ref.sparse[i], abs=1e-6)
        np.testing.assert_allclose(np.array(r["colbert"]), ref.colbert[i], atol=1e-6)
        assert r["tokens"] == int(ref.token_counts[i])


def test_embed_npy_npz_and_inputs(capsys, tmp_path, monkeypatch, fd_model, fd_encoder):
    npy = tmp_path / "v.npy"
    assert run(capsys, "embed", PARIS, BM25, "--model", fd_model, "-o", npy)[0] == 0
    dense = np.load(npy, allow_pickle=False)
    np.testing.assert_allclose(dense, fd_encoder.encode_documents([PARIS, BM25]).dense, atol=1e-6)

    src = tmp_path / "in.txt"
    src.write_text(f"{PARIS}\n\n{BM25}\n{MITO}\n", encoding="utf-8")
    npz = tmp_path / "v.npz"
    assert run(capsys, "embed", "--input", src, "--model", fd_model, "-o", npz)[0] == 0
    ref = fd_encoder.encode_documents([PARIS, BM25, MITO], sparse=True, colbert=True)
    with np.load(npz, allow_pickle=False) as z:
        np.testing.assert_allclose(z["dense"], ref.dense, atol=1e-6)
        import scipy.sparse as sp
        csr = sp.csr_matrix((z["sparse_data"], z["sparse_indices"], z["sparse_indptr"]), shape=tuple(z["sparse_shape"]))
        for i in range(3):
            row = csr.getrow(i)
            assert dict(zip(row.indices.tolist(), row.data.tolist())) == pytest.approx(ref.sparse[i], abs=1e-6)
            off = z["colbert_offsets"]
            np.testing.assert_allclose(z["colbert_vectors"][off[i]:off[i + 1]], ref.colbert[i], atol=1e-6)

    # stdin, query template, only the requested output, token strings as sparse keys
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{MITO}\n"))
    code, out, err = run(capsys, "embed", "--model", fd_model, "--sparse", "--sparse-tokens", "--as", "query")
    assert code == 0, err
    rec = json.loads(out)
    assert set(rec) == {"index", "text", "tokens", "sparse"}
    q = fd_encoder.encode_queries([MITO], dense=False, sparse=True)
    names = fd_encoder.tokenizer.convert_ids_to_tokens(list(q.sparse[0]))
    assert rec["sparse"] == pytest.approx(dict(zip(names, q.sparse[0].values())), abs=1e-6)


# --------------------------------------------------------------------------- failures: one line, non-zero, nothing half-written

def test_fail_missing_path(capsys, tmp_path, fd_model):
    code, _, err = run(capsys, "index", tmp_path / "nope", "--index", tmp_path / "idx", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "nope", "does not exist")
    assert not (tmp_path / "idx").exists()


def test_fail_missing_index(capsys, tmp_path):
    code, _, err = run(capsys, "search", "q", "--index", tmp_path / "nope")
    assert code == 1
    assert_one_error_line(err, "does not exist", "bgem3 index")


def test_fail_hub_id_without_network(capsys, tmp_path, monkeypatch, corpus):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    code, _, err = run(capsys, "index", corpus, "--index", tmp_path / "idx", "--model", "BAAI/bge-m3")
    assert code == 1
    assert_one_error_line(err, "BAAI/bge-m3", "local folder")
    assert not (tmp_path / "idx").exists()


def test_fail_missing_model_folder(capsys, tmp_path):
    code, _, err = run(capsys, "embed", "hi", "--model", tmp_path / "no-model")
    assert code == 1
    assert_one_error_line(err, "no-model", "does not exist")


def test_fail_index_built_with_other_model(capsys, tmp_path, corpus, fd_model, fd_other_model):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    before = snapshot(idx)
    code, _, err = run(capsys, "search", "q", "--index", idx, "--model", fd_other_model)
    assert code == 1
    assert_one_error_line(err, "built with model", "tiny-m3", "leave out --model", "--rebuild")
    (corpus / "x.txt").write_text("new", encoding="utf-8")
    code, _, err = run(capsys, "index", corpus, "--index", idx, "--model", fd_other_model)
    assert code == 1
    assert_one_error_line(err, "built with model", "--rebuild")
    assert "allow_model_mismatch" not in err  # the CLI has no such flag
    assert snapshot(idx) == before
    # the same weights under another folder name are the same model: accepted
    copy = tmp_path / "copy-of-tiny"
    shutil.copytree(fd_model, copy)
    assert run(capsys, "search", "q", "--index", idx, "--model", copy)[0] == 0
    # --rebuild switches the model; info then names it
    code, _, err = run(capsys, "index", corpus, "--index", idx, "--model", fd_other_model, "--rebuild")
    assert code == 0, err
    code, out, _ = run(capsys, "info", "--index", idx, "--json")
    assert json.loads(out)["model"] == fd_other_model


@pytest.mark.parametrize("name,content,fragment", [
    ("bad.txt", b"\xff\xfe\x00 not utf-8 \xc3\x28", "not UTF-8"),
    ("bad.jsonl", b'{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', "line 2 is not valid JSON"),
    ("bad2.jsonl", b'{"id": "a", "text": 5}\n', "line 1 has no string \"text\""),
    ("dup.jsonl", b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "already used on line 1"),
])
def test_fail_unreadable_file_leaves_index_untouched(capsys, tmp_path, corpus, fd_model, name, content, fragment):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    before = snapshot(idx)
    (corpus / "cities.md").write_text(MADRID, encoding="utf-8")  # a good change in the same run...
    (corpus / name).write_bytes(content)                          # ...and a bad file
    code, _, err = run(capsys, "index", corpus, "--index", idx)
    assert code == 1
    assert_one_error_line(err, name, fragment)
    assert snapshot(idx) == before  # all or nothing
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".idx")]


def test_fail_duplicate_ids_across_files(capsys, tmp_path, corpus, fd_model):
    (corpus / "more.jsonl").write_text(json.dumps({"id": "bm25", "text": "other"}) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "index", corpus, "--index", tmp_path / "idx", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "'bm25'", "unique")
    assert not (tmp_path / "idx").exists()


def test_fail_empty_inputs(capsys, tmp_path, monkeypatch, fd_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b", encoding="utf-8")
    code, _, err = run(capsys, "index", empty, "--index", tmp_path / "idx", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "no .txt")
    (empty / "blank.txt").write_text("  \n\n", encoding="utf-8")
    code, _, err = run(capsys, "index", empty, "--index", tmp_path / "idx", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "nothing to index")
    assert not (tmp_path / "idx").exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "embed", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "no input texts")
    code, _, err = run(capsys, "search", "   ", "--index", tmp_path)
    assert code == 1
    assert_one_error_line(err, "query is empty")


def test_fail_index_into_foreign_folder(capsys, tmp_path, corpus, fd_model):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious", encoding="utf-8")
    code, _, err = run(capsys, "index", corpus, "--index", foreign, "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "not a bgem3 index")
    assert os.listdir(foreign) == ["thesis.tex"]


def test_fail_embed_bad_output(capsys, tmp_path, fd_model):
    code, _, err = run(capsys, "embed", "hi", "--colbert", "-o", tmp_path / "x.npy", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, ".npz")
    code, _, err = run(capsys, "embed", "hi", "-o", tmp_path / "x.parquet", "--model", fd_model)
    assert code == 1
    assert_one_error_line(err, "unknown format")


def test_usage_errors_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "search", "q", "--index", tmp_path, "-k", "0")
    assert code == 2
    assert_one_error_line(err, "-k", "positive")
    code, _, err = run(capsys, "search", "q", "--index", tmp_path, "--weights", "1,2")
    assert code == 2
    assert_one_error_line(err, "three")
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert_one_error_line(err, "frobnicate")


def test_crash_mid_save_keeps_previous_index(capsys, tmp_path, corpus, fd_model, monkeypatch):
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    before = snapshot(idx)
    (corpus / "sub" / "new.txt").write_text(EIFFEL, encoding="utf-8")

    def boom(*args, **kwargs):  # the disk fills up while the source list (committed with the index) is written
        raise OSError(28, "No space left on device")

    import bgem3.index.persistence as persistence

    monkeypatch.setattr(persistence, "write_bytes_durably", boom)
    code, _, err = run(capsys, "index", corpus, "--index", idx)
    assert code == 1
    assert_one_error_line(err, "No space left")
    assert snapshot(idx) == before
    assert sorted(os.listdir(tmp_path)) == ["docs", "idx"]  # no staging folder left behind
    monkeypatch.undo()
    assert EIFFEL not in all_texts(capsys, idx)
    assert run(capsys, "index", corpus, "--index", idx)[0] == 0  # and the next run picks the file up
    assert EIFFEL in all_texts(capsys, idx)


# --------------------------------------------------------------------------- a real process

def test_python_m_bgem3_subprocess(capsys, tmp_path, corpus, fd_model):
    """One real process (console entry point semantics: exit status, stdout JSON, quiet stderr)."""
    idx = tmp_path / "idx"
    assert run(capsys, "index", corpus, "--index", idx, "--model", fd_model)[0] == 0
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bgem3", "search", QDRANT, "--index", str(idx), "-k", "1",
                           "--json", *COLBERT_ONLY], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hits"][0]["id"] == "qdrant"
    assert proc.stderr.strip() == ""  # no library load bars or warnings on a successful run


# --------------------------------------------------------------------------- bgem3.ingest

def test_split_text_properties():
    text = " ".join(f"w{i}" for i in range(400)) + ".\n\nTail paragraph."
    for size, overlap in [(50, 0), (50, 20), (200, 40), (7, 3)]:
        spans = split_text(text, size, overlap)
        assert all(b - a <= size for a, b in spans)
        assert [a for a, _ in spans] == sorted(a for a, _ in spans)
        covered = np.zeros(len(text), bool)
        for a, b in spans:
            covered[a:b] = True
        assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())  # nothing lost
        if overlap:
            assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))
        else:
            assert all(spans[i + 1][0] >= spans[i][1] for i in range(len(spans) - 1))
    # a token counter as the length function
    words = "a b c d e f g h"
    spans = split_text(words, 3, 1, length_function=lambda s: len(s.split()))
    assert [words[a:b] for a, b in spans] == ["a b c", "c d e", "e f g", "g h"]
    with pytest.raises(ValueError, match="chunk_overlap"):
        split_text("x", 10, 10)


def test_find_files_and_read_source(tmp_path, corpus):
    files = find_files([str(corpus)], exclude=[str(corpus / "sub")])
    assert [os.path.relpath(f, corpus) for f in files] == ["cities.md", "records.jsonl"]
    with pytest.raises(IngestError, match="not a supported file"):
        find_files([str(corpus / "ignored.csv")])
    recs = read_source(str(corpus / "records.jsonl"), source="R")
    assert [(p.id, p.text, p.metadata["topic"], p.metadata["line"]) for p in recs] == [
        ("bm25", BM25, "ir", 1), ("qdrant", QDRANT, "db", 3)]
    long = read_source(str(corpus / "records.jsonl"), chunk_size=20, chunk_overlap=0)
    assert long[0].id == "bm25#0" and all(p.metadata["record_id"] in ("bm25", "qdrant") for p in long)


def test_manifest_plan_and_roundtrip(tmp_path):
    m = Manifest(settings={"chunk_size": 5})
    m.set("/d/a.txt", "h1", ["a#0"])
    m.set("/d/b.txt", "h2", ["b#0", "b#1"])
    m.set("/e/c.txt", "h3", ["c#0"])
    plan = m.plan(["/d"], {"/d/a.txt": "h1", "/d/b.txt": "CHANGED", "/d/n.txt": "h4"})
    assert (plan.added, plan.changed, plan.removed, plan.unchanged) == (["/d/n.txt"], ["/d/b.txt"], [], ["/d/a.txt"])
    plan = m.plan(["/d"], {"/d/b.txt": "h2"})
    assert plan.removed == ["/d/a.txt"]  # /e/c.txt is outside the roots: kept
    assert m.plan(["/d"], {"/d/a.txt": "h1", "/d/b.txt": "h2"}, force=True).changed == ["/d/a.txt", "/d/b.txt"]
    m.save(str(tmp_path))
    back = Manifest.load(str(tmp_path))
    assert back.files == m.files and back.settings == m.settings
    (tmp_path / "sources.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(IngestError, match="unreadable"):
        Manifest.load(str(tmp_path))
