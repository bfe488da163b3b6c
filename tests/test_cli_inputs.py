"""`bgem3 index` with the inputs a new user really has: bad files, unreadable folders, FIFOs, devices,
symlinks, other extensions, huge files, model changes, odd flags. Tiny offline checkpoints only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bgem3.cli import main
from bgem3.ingest import SEGMENT_CHARS, Manifest, iter_passages, split_text
from bgem3.testing import make_m3_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARIS = "Paris is the capital and most populous city of France."
BERLIN = "Berlin is the capital of Germany and has many museums."
MITO = "The mitochondria is the powerhouse of the cell."


@pytest.fixture(scope="module")
def model_a(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("a") / "tiny-m3"), seed=0)


@pytest.fixture(scope="module")
def model_b(tmp_path_factory) -> str:
    """Another model in a folder of the same name."""
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("b") / "tiny-m3"), seed=1)


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "cities.md").write_text(f"# Cities\n\n{PARIS}\n\n{BERLIN}\n", encoding="utf-8")
    (d / "sub" / "bio.txt").write_text(MITO + "\n", encoding="utf-8")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bgem3: error: "), err
    return lines[0]


def indexed_sources(folder) -> list[str]:
    return sorted(os.path.relpath(p, os.path.dirname(str(folder))) for p in Manifest.load(str(folder)).files)


def snapshot(folder) -> dict:
    """Every file under ``folder`` (the index keeps segments in sub-folders)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- bad files

def test_every_bad_file_reported_at_once_then_skipped(capsys, tmp_path, docs, model_a):
    idx = tmp_path / "idx"
    assert run(capsys, "index", docs, "--index", idx, "--model", model_a)[0] == 0
    before = snapshot(idx)
    (docs / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (docs / "blob.md").write_bytes(b"PK\x03\x04\x00\x00binary\x00stuff")
    (docs / "utf16.txt").write_bytes("hello".encode("utf-16"))
    (docs / "broken.jsonl").write_bytes(b'{"text": "ok"}\n{"text": \n')
    (docs / "sub" / "bio.txt").write_bytes(b"\xff\xfe\xfd was fine, now broken")  # an indexed file turns bad
    code, _, err = run(capsys, "index", docs, "--index", idx)
    assert code == 1
    line = error_line(err)
    for name in ("latin1.txt", "blob.md", "utf16.txt", "broken.jsonl", "bio.txt", "--skip-bad"):
        assert name in line, name
    assert snapshot(idx) == before

    code, out, err = run(capsys, "index", docs, "--index", idx, "--skip-bad")
    assert code == 0, err
    for name in ("latin1.txt", "blob.md", "utf16.txt", "broken.jsonl", "bio.txt"):
        assert name in err, name
    assert "passages are kept" in err
    # the bad version of bio.txt did not delete its indexed passage
    assert "docs/sub/bio.txt" in indexed_sources(idx)


def test_unreadable_subfolder_never_deletes_its_passages(capsys, tmp_path, docs, model_a, monkeypatch):
    idx = tmp_path / "idx"
    assert run(capsys, "index", docs, "--index", idx, "--model", model_a)[0] == 0
    before = snapshot(idx)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(os.sep + "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what chmod 000 does (root ignores chmod)
    code, _, err = run(capsys, "index", docs, "--index", idx)
    assert code == 1
    assert "sub" in error_line(err) and "Permission denied" in err
    assert snapshot(idx) == before
    code, _, err = run(capsys, "index", docs, "--index", idx, "--skip-bad")
    assert code == 0 and "sub" in err
    assert "docs/sub/bio.txt" in indexed_sources(idx)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_symlink_to_dev_zero_never_hang(tmp_path, docs, model_a):
    os.mkfifo(docs / "pipe.txt")
    os.symlink("/dev/zero", docs / "zero.md")
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "bgem3", "index", str(docs), "--index", str(tmp_path / "idx"),
                           "--model", model_a], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "not regular files" in proc.stderr and "pipe.txt" in proc.stderr
    assert sorted(indexed_sources(tmp_path / "idx")) == ["docs/cities.md", "docs/sub/bio.txt"]


def test_symlinked_folder_next_to_target_indexed_once(capsys, tmp_path, docs, model_a):
    link = tmp_path / "docs-link"
    os.symlink(docs, link)
    code, out, err = run(capsys, "index", docs, link, "--index", tmp_path / "idx", "--model", model_a)
    assert code == 0, err
    assert len(Manifest.load(str(tmp_path / "idx")).files) == 2
    assert "reached twice" in err


def test_skipped_extensions_are_listed(capsys, tmp_path, docs, model_a):
    (docs / "guide.rst").write_text("Title\n=====\n", encoding="utf-8")
    (docs / "data.csv").write_text("a,b\n", encoding="utf-8")
    (docs / "Makefile").write_text("all:\n", encoding="utf-8")
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "idx", "--model", model_a)
    assert code == 0, err
    assert ".rst x1" in err and ".csv x1" in err and "(no extension) x1" in err


# --------------------------------------------------------------------------- flags

def test_quiet_prints_nothing(capsys, tmp_path, docs, model_a):
    (docs / "guide.rst").write_text("x", encoding="utf-8")
    code, out, err = run(capsys, "index", docs, "--index", tmp_path / "idx", "--model", model_a, "-q")
    assert code == 0 and out == "" and err == ""
    code, out, err = run(capsys, "index", docs, "--index", tmp_path / "idx", "-q")
    assert code == 0 and out == "" and err == ""


@pytest.mark.parametrize("weights", ["nan,1,1", "inf,0,0", "1,-inf,1"])
def test_non_finite_weights_fail_before_the_model_loads(capsys, tmp_path, weights):
    code, _, err = run(capsys, "search", "q", "--index", tmp_path / "no-index", "--model", tmp_path / "no-model",
                       "--weights", weights)
    assert code == 2
    assert "--weights" in error_line(err) or "weights" in err


def test_max_length_1_never_disables_truncation(capsys, model_a):
    """Too small a --max-length is refused up front with the minimum (the encoder's check), not ignored."""
    code, out, err = run(capsys, "embed", "a rather long sentence with many words in it", "--model", model_a,
                         "--max-length", "1")
    assert code == 1 and out == ""
    line = error_line(err)
    assert "max_length=1" in line and ">= 3" in line
    code, out, err = run(capsys, "embed", "a rather long sentence with many words in it", "--model", model_a,
                         "--max-length", "4")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["tokens"] == 4  # capped: 2 special tokens + 2 text tokens


def test_interrupt_during_run_is_130_with_message(capsys, tmp_path, docs, monkeypatch):
    import bgem3.cli as cli

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "scan_paths", boom)
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "idx")
    assert code == 130 and "interrupted" in err and not (tmp_path / "idx").exists()


def test_ctrl_c_after_success_exits_0():
    code = ("import os, signal, sys, time\n"
            "sys.argv = ['bgem3', 'info', '--index', '/nonexistent-index']\n"
            "from bgem3.cli import main\n"
            "rc = main()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"  # Ctrl-C while the process shuts down
            "time.sleep(0.5)\n"
            "sys.exit(0)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_hint_names_hf_download(capsys, tmp_path, docs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    code, _, err = run(capsys, "index", docs, "--index", tmp_path / "idx", "--model", "intfloat/e5-small-v2")
    assert code == 1
    line = error_line(err)
    assert "hf download intfloat/e5-small-v2" in line and "huggingface-cli" not in line


# --------------------------------------------------------------------------- model changes

def test_model_change_on_up_to_date_index_fails_clearly(capsys, tmp_path, docs, model_a, model_b):
    idx = tmp_path / "idx"
    assert run(capsys, "index", docs, "--index", idx, "--model", model_a)[0] == 0
    before = snapshot(idx)
    # nothing changed on disk, but another model (in a folder of the same name) was asked for
    code, out, err = run(capsys, "index", docs, "--index", idx, "--model", model_b)
    assert code == 1 and "up to date" not in out
    line = error_line(err)
    assert "different model" in line and "--rebuild" in line
    assert snapshot(idx) == before
    # a changed file with the other model: refused too, never mixed in
    (docs / "new.txt").write_text("A new file.", encoding="utf-8")
    code, _, err = run(capsys, "index", docs, "--index", idx, "--model", model_b)
    assert code == 1 and snapshot(idx) == before
    code, _, err = run(capsys, "search", "capital", "--index", idx, "--model", model_b)
    assert code == 1 and "leave out --model" in error_line(err)
    # --rebuild re-encodes everything with the new model, and info says so
    code, out, err = run(capsys, "index", docs, "--index", idx, "--model", model_b, "--rebuild")
    assert code == 0, err
    code, out, _ = run(capsys, "info", "--index", idx, "--json")
    info = json.loads(out)
    assert info["model"] == model_b and info["model_fingerprint"].startswith("sha256:")


def test_model_folder_replaced_in_place_is_refused(capsys, tmp_path, docs, model_b):
    import shutil

    path = tmp_path / "models" / "tiny-m3"
    make_m3_checkpoint(str(path), seed=0)
    idx = tmp_path / "idx"
    assert run(capsys, "index", docs, "--index", idx, "--model", path)[0] == 0
    shutil.rmtree(path)
    shutil.copytree(model_b, path)  # another model now lives at the recorded path
    code, _, err = run(capsys, "search", "capital", "--index", idx)
    assert code == 1 and "changed on disk" in error_line(err)


# --------------------------------------------------------------------------- chunking cost

def test_hard_cut_is_linear():
    measured = [0]

    def length(s: str) -> int:
        measured[0] += len(s)
        return len(s)

    for n in (20_000, 200_000):
        measured[0] = 0
        spans = split_text("x" * n, 100, 10, length)
        assert spans[0] == (0, 100) and spans[-1][1] == n
        assert measured[0] < 40 * n, f"{measured[0] / n:.0f} characters measured per character of text"


def test_long_file_is_streamed_in_bounded_segments(tmp_path):
    text = ("word " * 40 + "\n") * (3 * SEGMENT_CHARS // 200)
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    longest = [0]

    def length(s: str) -> int:
        longest[0] = max(longest[0], len(s))
        return len(s.split())

    n = 0
    for p in iter_passages(str(path), 64, 8, length):
        assert text[p.metadata["start_char"]:p.metadata["end_char"]] == p.text
        assert p.id == f"{path}#{n}"
        n += 1
    assert n > 1000
    assert longest[0] <= SEGMENT_CHARS  # never the whole file at once


# --------------------------------------------------------------------------- make demo

@pytest.mark.skipif(not os.path.exists("/usr/bin/make") and not os.path.exists("/bin/make"), reason="needs make")
def test_make_demo_never_creates_a_model_at_a_user_given_name(tmp_path):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    target = tmp_path / "BAAI" / "bge-m3"
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(["make", "-s", "-C", REPO, "demo", "DEMO_DEPS=", f"VENV={venv}", f"MODEL={target}",
                           f"DEMO={tmp_path / 'demo'}"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert not target.exists() and not (tmp_path / "BAAI").exists()
    assert "does not exist" in proc.stderr


# --------------------------------------------------------------------------- terminal safety

def test_file_names_and_texts_never_control_the_terminal(capsys, tmp_path, model_a, monkeypatch):
    """A file name or passage holding ESC sequences (clear screen, retitle the window), a newline or a
    bidi override is printed escaped: what is indexed is data, never instructions to the terminal."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "docs"
    d.mkdir()
    evil = "\x1b]0;pwned\x07\x1b[2J"
    (d / "ok\nfake.txt").write_text(f"Paris is the capital of France. {evil} hidden\n", encoding="utf-8")
    (d / "rev\u202etxt.md").write_text("Berlin is the capital of Germany.\n", encoding="utf-8")
    (d / "bad\x1b[31m.txt").write_bytes(b"\xff\xfe not utf-8")
    idx = tmp_path / "idx"
    code, out, err = run(capsys, "index", d, "--index", idx, "--model", model_a, "--skip-bad")
    assert code == 0
    code2, out2, err2 = run(capsys, "search", "capital of France", "--index", idx, "--explain")
    code3, out3, _ = run(capsys, "info", "--index", idx)
    assert code2 == 0 and code3 == 0
    for stream in (out, err, out2, err2, out3):
        assert "\x1b" not in stream and "\u202e" not in stream and "\x07" not in stream
    assert "\\x1b[31m" in err  # the skipped file is named, escaped
    assert "ok\\nfake.txt" in out2 and "\\x1b]0;pwned\\x07" in out2 and "rev\\u202etxt.md" in out2
    rows = [ln for ln in out2.splitlines() if ln.lstrip()[:1].isdigit()]
    assert len(rows) == 2  # one line per hit: the newline in the name did not split a row
    code4, out4, _ = run(capsys, "search", "capital", "--index", idx, "--json")
    sources = {h["source"] for h in json.loads(out4)["hits"]}
    assert str(d / "ok\nfake.txt") in sources  # JSON keeps the exact name
