"""Run in a fresh interpreter by tests/test_index_spill.py (not collected by the suite itself: the name
does not match test_*.py). A process that loaded ONNX Runtime and OpenVINO graphs earlier (tests/test_backends.py)
was seen to die with SIGSEGV on a SIGINT sent to itself, before Python's handler ran; this case is about the
CLI's Ctrl-C handling, so it gets a process of its own."""

from __future__ import annotations

import os

import bgem3.cli as cli
from bgem3 import HybridIndex


def test_ctrl_c_during_the_save_finishes_the_commit_and_says_so(monkeypatch, capsys, m3_path, tmp_path):
    import signal

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Paris is the capital of France.\n", encoding="utf-8")
    idx = tmp_path / "idx"
    import bgem3.index.persistence as persistence

    save = persistence.save_index
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a process started in the background

    def save_with_ctrl_c(index, directory, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the index is written
        return save(index, directory, **kw)

    monkeypatch.setattr(persistence, "save_index", save_with_ctrl_c)
    assert cli.main(["index", str(src), "--index", str(idx), "--model", m3_path, "-q"]) == 130
    err = capsys.readouterr().err
    assert "after the index was saved" in err and "nothing was changed" not in err
    monkeypatch.setattr(persistence, "save_index", save)
    assert len(HybridIndex.load(str(idx), load_encoder=False, verify=True)) == 1
    assert cli.main(["index", str(src), "--index", str(idx), "-q"]) == 0  # sources list committed too: up to date
    assert signal.getsignal(signal.SIGINT) is before  # the CLI put the handler back
