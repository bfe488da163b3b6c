"""Streaming indexing: ``HybridIndex.spill`` (rows leave memory before the commit) and ``bgem3 index``
memory bounded by the spill size, not by the input file; ``--colbert-codec``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import bgem3.cli as cli
from bgem3 import HybridIndex
from bgem3.index.codecs import COLBERT_CODECS
from bgem3.index.storage import holds_only_uncommitted_segments


def _vecs(rng, n, d=8):
    v = rng.normal(size=(n, d)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _add(index, rng, ids):
    index.add_encoded(ids, [f"text {i}" for i in ids], [{"n": i} for i in ids], _vecs(rng, len(ids)),
                      [{1: 0.5, sum(map(ord, i)) % 50 + 2: 1.0} for i in ids], [_vecs(rng, 3) for _ in ids])


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- HybridIndex.spill

def test_spilled_rows_are_committed_by_save_as_written_and_not_before(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    index = HybridIndex(None, dim=8)
    _add(index, rng, [str(i) for i in range(20)])
    index.save(folder)
    before = snapshot(folder)
    _add(index, rng, [str(i) for i in range(20, 120)])
    assert index.pending_bytes > 0
    assert index.spill(folder) == 100
    assert index.pending_bytes < 2000 and index._tail.n == 0
    _add(index, rng, [str(i) for i in range(10, 30)] + [str(i) for i in range(120, 140)])  # upserts across segments
    index.delete(["0", "50"])
    assert index.spill(folder) == 40
    spilled = set(index._spilled)
    # nothing committed yet: a reader sees the saved index, byte for byte
    assert {k: v for k, v in snapshot(folder).items() if k in before} == before
    assert sorted(HybridIndex.load(folder, load_encoder=False).ids, key=int) == [str(i) for i in range(20)]
    assert len(index) == 138 and "50" not in index and index.get(["15"])[0].metadata == {"n": "15"}
    index.save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert spilled <= {s["name"] for s in manifest["segments"]}  # committed as written, not rewritten
    back = HybridIndex.load(folder, load_encoder=False, verify=True)
    assert sorted(back.ids, key=int) == sorted(index.ids, key=int) and len(back) == 138
    q, cq = _vecs(rng, 1)[0], _vecs(rng, 2)
    assert [(h.id, h.score) for h in back.search_encoded(q, {1: 1.0}, cq, k=5)] == \
        [(h.id, h.score) for h in index.search_encoded(q, {1: 1.0}, cq, k=5)]


def test_discarded_spills_leave_the_folder_as_it_was(tmp_path):
    rng = np.random.default_rng(1)
    new = tmp_path / "new"
    index = HybridIndex(None, dim=8)
    _add(index, rng, ["a", "b"])
    index.spill(new)
    assert holds_only_uncommitted_segments(new)
    index._discard_spilled()
    assert not new.exists()  # the folder the spill created is gone, nothing else was there

    saved = tmp_path / "saved"
    index = HybridIndex(None, dim=8)
    _add(index, rng, ["a", "b"])
    index.save(saved)
    before = snapshot(saved)
    _add(index, rng, ["c", "d"])
    index.spill(saved)
    assert snapshot(saved) != before
    index._discard_spilled()
    assert snapshot(saved) == before


def test_a_killed_first_run_leaves_a_folder_the_next_save_reuses(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "idx"
    dead = HybridIndex(None, dim=8)
    _add(dead, rng, ["x"])
    dead.spill(folder)  # ... and the process dies here: no manifest
    assert holds_only_uncommitted_segments(folder)
    from bgem3.index.persistence import _release_pending

    _release_pending(dead, list(dead._pending_fds))  # what the kernel does when the process dies
    index = HybridIndex(None, dim=8)
    _add(index, rng, ["y"])
    index.save(folder)
    assert HybridIndex.load(folder, load_encoder=False).ids == ["y"]
    assert len(list((folder / "segments").iterdir())) == 1  # the dead run's segment was removed
    # anything else in a folder is not ours: refused
    other = tmp_path / "other"
    (other / "segments").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved"):
        index.spill(other)
    assert not holds_only_uncommitted_segments(other)


# --------------------------------------------------------------------------- bgem3 index streams

def _prose(n_paragraphs: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = ["index", "memory", "stream", "batch", "passage", "token", "model", "search", "river", "stone",
             "garden", "window", "paper", "signal", "winter", "harbor", "copper", "violet", "engine", "canyon"]
    paras = []
    for _ in range(n_paragraphs):
        sents = [" ".join(rng.choice(words, size=int(rng.integers(6, 14)))).capitalize() + "."
                 for _ in range(int(rng.integers(2, 5)))]
        paras.append(" ".join(sents))
    return "\n\n".join(paras) + "\n"


def _index_and_watch(monkeypatch, capsys, m3_path, tmp_path, n_paragraphs: int, spill_bytes: int):
    """``bgem3 index`` of one prose file; returns (most bytes / rows held in memory after any add, segments)."""
    monkeypatch.setattr(cli, "SPILL_BYTES", spill_bytes)
    monkeypatch.setattr(cli, "INDEX_BATCH", 32)
    seen = {"bytes": 0, "rows": 0, "spills": 0}
    add, spill = HybridIndex.add, HybridIndex.spill

    def watched_add(self, *a, **kw):
        out = add(self, *a, **kw)
        seen["bytes"] = max(seen["bytes"], self.pending_bytes)
        seen["rows"] = max(seen["rows"], self._tail.n)
        return out

    def watched_spill(self, *a, **kw):
        seen["spills"] += 1
        return spill(self, *a, **kw)

    monkeypatch.setattr(HybridIndex, "add", watched_add)
    monkeypatch.setattr(HybridIndex, "spill", watched_spill)
    src = tmp_path / f"src{n_paragraphs}"
    src.mkdir()
    (src / "prose.txt").write_text(_prose(n_paragraphs, n_paragraphs), encoding="utf-8")
    idx = tmp_path / f"idx{n_paragraphs}"
    code = cli.main(["index", str(src), "--index", str(idx), "--model", m3_path, "--chunk-unit", "chars",
                     "--chunk-size", "200", "--chunk-overlap", "0", "-q"])
    assert code == 0, capsys.readouterr().err
    monkeypatch.setattr(HybridIndex, "add", add)
    monkeypatch.setattr(HybridIndex, "spill", spill)
    back = HybridIndex.load(str(idx), load_encoder=False, verify=True)
    n_passages = len(back)
    text = (src / "prose.txt").read_text()
    hits = back.get(sorted(back.ids, key=lambda s: int(s.rsplit("#", 1)[1])))
    assert [int(h.id.rsplit("#", 1)[1]) for h in hits] == list(range(n_passages))  # every passage, once
    assert all(text[h.metadata["start_char"]:h.metadata["end_char"]] == h.text for h in hits)
    assert hits[-1].metadata["end_char"] >= len(text.rstrip())
    return seen, n_passages


def test_index_memory_is_bounded_by_the_spill_size_not_by_the_file(monkeypatch, capsys, m3_path, tmp_path):
    """The issue: "Indexing must stream: memory bounded by a batch, not by the file." The rows the
    index holds in memory never exceed the spill size plus one batch, for a file 4x larger too
    (spilled segments are memory-mapped, committed at the end)."""
    budget = 512 << 10
    small, n_small = _index_and_watch(monkeypatch, capsys, m3_path, tmp_path, 150, budget)
    large, n_large = _index_and_watch(monkeypatch, capsys, m3_path, tmp_path, 600, budget)
    assert n_large > 3.5 * n_small
    assert small["spills"] >= 1 and large["spills"] > 3 * small["spills"]
    batch_rows = 32
    for seen in (small, large):
        assert seen["rows"] <= batch_rows + budget // 2000  # a budget's rows (> 2 KB each) + one batch
    # what is held does not grow with the file: the large run holds no more than the small one (+ a batch)
    assert large["bytes"] <= 1.5 * max(small["bytes"], budget) and large["rows"] <= small["rows"] + batch_rows


def test_interrupted_streaming_run_changes_nothing(monkeypatch, capsys, m3_path, tmp_path):
    monkeypatch.setattr(cli, "SPILL_BYTES", 64 << 10)
    monkeypatch.setattr(cli, "INDEX_BATCH", 16)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(_prose(40, 1), encoding="utf-8")
    idx = tmp_path / "idx"
    base = ["index", str(src), "--index", str(idx), "--chunk-unit", "chars", "--chunk-size", "300", "-q"]
    assert cli.main(base + ["--model", m3_path]) == 0
    before = snapshot(idx)
    (src / "b.txt").write_text(_prose(100, 2), encoding="utf-8")
    calls = {"n": 0}
    add = HybridIndex.add

    def add_then_ctrl_c(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # after spills were written into the index folder
            assert len(self._spilled) >= 1
            raise KeyboardInterrupt
        return add(self, *a, **kw)

    monkeypatch.setattr(HybridIndex, "add", add_then_ctrl_c)
    assert cli.main(base) == 130
    assert snapshot(idx) == before
    calls["n"] = 0
    new = tmp_path / "new"
    assert cli.main(["index", str(src / "b.txt"), "--index", str(new), "--model", m3_path, "--chunk-unit", "chars",
                     "--chunk-size", "300", "-q"]) == 130
    assert not new.exists()
    capsys.readouterr()


# --------------------------------------------------------------------------- --colbert-codec

def test_colbert_codec_option(capsys, m3_path, minilm, tmp_path):
    assert cli._COLBERT_CODECS == COLBERT_CODECS
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Paris is the capital of France.\n\nBM25 ranks documents.\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert cli.main(["index", str(src), "--index", str(idx), "--model", m3_path, "--colbert-codec", "2bit", "-q"]) == 0
    assert json.loads((idx / "manifest.json").read_text())["colbert_codec"] == "2bit"
    before = snapshot(idx)
    capsys.readouterr()
    # up to date, but another codec asked: refused, never ignored
    assert cli.main(["index", str(src), "--index", str(idx), "--colbert-codec", "int8"]) == 1
    err = capsys.readouterr().err
    assert "2bit" in err and "--rebuild" in err and snapshot(idx) == before
    assert cli.main(["index", str(src), "--index", str(idx), "--colbert-codec", "2bit", "-q"]) == 0
    assert cli.main(["index", str(src), "--index", str(idx), "--colbert-codec", "int8", "--rebuild", "-q"]) == 0
    assert json.loads((idx / "manifest.json").read_text())["colbert_codec"] == "int8"
    # a sibling: --lexical on an up-to-date index is checked too
    assert cli.main(["index", str(src), "--index", str(idx), "--lexical", "bm25"]) == 1
    assert "learned lexical weights, not BM25" in capsys.readouterr().err
    # a model without a ColBERT head
    assert cli.main(["index", str(src), "--index", str(tmp_path / "mini"), "--model", minilm,
                     "--colbert-codec", "int8"]) == 1
    assert "no ColBERT head" in capsys.readouterr().err and not (tmp_path / "mini").exists()
    assert cli.main(["index", str(src), "--index", str(idx), "--colbert-codec", "4bit"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_names_the_lexical_channel(capsys, m3_path, tmp_path):
    """`bgem3 info` printed `lexical: None` for every index (describe() never filled the field)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    for lexical, kind in (("learned", "learned_sparse"), ("bm25", "bm25")):
        idx = tmp_path / f"idx-{lexical}"
        assert cli.main(["index", str(src), "--index", str(idx), "--model", m3_path, "--lexical", lexical, "-q"]) == 0
        capsys.readouterr()
        assert cli.main(["info", "--index", str(idx), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["lexical"]["kind"] == kind
        if kind == "bm25":
            assert info["lexical"]["config"]["k1"] == 1.2


def test_ctrl_c_during_the_save_finishes_the_commit_and_says_so():
    """The case in tests/_ctrl_c_case.py, in a fresh interpreter (see its docstring for why)."""
    import subprocess
    import sys

    case = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ctrl_c_case.py")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", case],
                          capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(case)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_the_small_segment_merge_of_a_save_reads_a_bounded_amount(tmp_path, monkeypatch):
    # a long `bgem3 index` run commits many small spilled segments; a later save merges segments that
    # are small next to the index. It used to gather ALL of them into memory at once (the whole index
    # when every segment is small); now at most MERGE_BYTES of them per save, the smallest first
    import bgem3.index.persistence as persistence

    rng = np.random.default_rng(1)
    folder = tmp_path / "idx"
    index = HybridIndex(None, dim=8)
    _add(index, rng, [f"big{i}" for i in range(2000)])
    index.save(folder)
    for b in range(12):  # then twelve spilled segments of 30 rows (each < 1/64 of the index), one save
        _add(index, rng, [str(i) for i in range(30 * b, 30 * b + 30)])
        index.spill(folder)
    index.save(folder)
    assert len(index._segments) == 13
    one = sum(int(r["bytes"]) for r in index._segments[1].record["files"].values())
    monkeypatch.setattr(persistence, "MERGE_BYTES", 4 * one + one // 2, raising=False)   # room for four of them
    back = HybridIndex.load(folder, load_encoder=False)
    _add(back, rng, ["new"])
    gathered = []
    real = persistence.gather_rows

    def spy(seg, rows, **kw):
        gathered.append(len(rows))
        return real(seg, rows, **kw)

    monkeypatch.setattr(persistence, "gather_rows", spy)
    back.save(folder)
    assert sum(gathered) <= 4 * 30 and len(back._segments) == 13 - 4 + 1   # four merged with the new row
    again = HybridIndex.load(folder, load_encoder=False, verify=True)
    assert sorted(again.ids) == sorted([f"big{i}" for i in range(2000)] + [str(i) for i in range(360)] + ["new"])
    for _ in range(3):  # later saves go on merging, a bounded amount each time
        _add(again, rng, [f"more{len(again)}"])
        again.save(folder)
    assert len(again._segments) < 10 and len(HybridIndex.load(folder, load_encoder=False)) == 2364
