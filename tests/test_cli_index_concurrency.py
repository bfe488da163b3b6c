"""``bgem3 index`` beside other writers (issue 25): the source list commits with the index, a
second run waits on the folder's writer lock saying who holds it; ``bgem3 embed`` reads bounded
lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bgem3.cli import main
from bgem3.testing import make_m3_checkpoint

linux_only = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork + flock")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("m3") / "tiny-m3"))


def texts(capsys, idx) -> list[str]:
    assert main(["search", "anything", "--index", str(idx), "--json", "-k", "1000", "--exhaustive"]) == 0
    return [h["text"] for h in json.loads(capsys.readouterr().out)["hits"]]


@linux_only
def test_a_crash_between_the_index_commit_and_sources_json_leaves_no_orphan_passages(tmp_path, model, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["index", str(docs), "--index", str(idx), "--model", model, "-q"]) == 0
    (docs / "new.txt").write_text("Mitochondria are the powerhouse of the cell.\n", encoding="utf-8")
    # the run dies right after the index commit, when it writes sources.json (a subprocess: torch
    # does not survive a fork once its threads started)
    script = (
        "import os, sys\n"
        "real = os.replace\n"
        "def dying(src, dst, *a, **kw):\n"
        "    if str(dst) == os.path.join(os.environ['IDX'], 'sources.json'):\n"
        "        os._exit(9)\n"
        "    return real(src, dst, *a, **kw)\n"
        "os.replace = dying\n"
        "from bgem3.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, "index", str(docs), "--index", str(idx), "-q"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "IDX": str(idx)})
    assert proc.returncode == 9, proc.stderr  # it did die in the window
    (docs / "new.txt").unlink()
    assert main(["index", str(docs), "--index", str(idx), "-q"]) == 0
    got = texts(capsys, idx)
    # before: the deleted file's passage stayed in every later search (in the index, not in sources.json)
    assert not any("Mitochondria" in t for t in got) and any("Paris" in t for t in got)


@linux_only
def test_a_second_index_run_waits_for_the_lock_and_names_its_holder(tmp_path, model, capsys):
    from bgem3.index.locking import writer_lock

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["index", str(docs), "--index", str(idx), "--model", model, "-q"]) == 0
    (docs / "b.txt").write_text("Berlin is the capital of Germany.\n", encoding="utf-8")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # another writer holds the lock for 1.5 s
        try:
            with writer_lock(idx):
                os.write(w, b"x")
                time.sleep(1.5)
        finally:
            os._exit(0)
    os.read(r, 1)
    t0 = time.monotonic()
    code = main(["index", str(docs), "--index", str(idx)])
    waited = time.monotonic() - t0
    os.waitpid(pid, 0)
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"waiting for pid {pid}" in err and waited >= 1.0  # it waited, and said for whom
    assert len(texts(capsys, idx)) == 2


def test_embed_input_lines_are_bounded_and_the_limit_is_named(tmp_path, monkeypatch, capsys):
    import bgem3.cli as cli

    monkeypatch.setattr(cli, "MAX_INPUT_LINE_CHARS", 1000)
    f = tmp_path / "one-line.txt"
    f.write_text("x" * 5000, encoding="utf-8")
    assert main(["embed", "--input", str(f)]) == 1
    err = capsys.readouterr().err
    assert "longer than 1000 characters" in err and "MAX_INPUT_LINE_CHARS" in err


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_embed_from_dev_zero_stops_at_the_limit(capsys):
    assert main(["embed", "--input", "/dev/zero"]) == 1
    assert "MAX_INPUT_LINE_CHARS" in capsys.readouterr().err


def test_the_committed_source_list_is_checked_against_the_index_manifest(tmp_path, model, capsys):
    from bgem3.ingest import IngestError, Manifest

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    idx = tmp_path / "idx"
    assert main(["index", str(docs), "--index", str(idx), "--model", model, "-q"]) == 0
    committed = Manifest.committed_path(str(idx))
    assert committed and os.path.basename(committed).startswith("attach-")
    assert list(Manifest.load(str(idx)).files) == [str(docs / "a.txt")]
    (idx / "sources.json").write_text("{}", encoding="utf-8")  # the copy for older versions is not read
    assert list(Manifest.load(str(idx)).files) == [str(docs / "a.txt")]
    with open(committed, "a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(IngestError, match="does not match its SHA-256"):
        Manifest.load(str(idx))
    os.unlink(committed)
    with pytest.raises(IngestError, match="is missing"):
        Manifest.load(str(idx))
