"""The folder's writer lock across ``fork`` (issue 25): a child forked while its parent holds the
lock does not hold it too, and does not keep the folder locked after the parent released it."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bgem3.index.locking import IndexLockTimeout, writer_lock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork + flock")


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child (no torch threads are involved: this module imports no model);
    returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1] >> 8


def test_a_child_forked_under_the_lock_does_not_hold_it(tmp_path):
    def child() -> int:
        try:
            with writer_lock(tmp_path, timeout=0.3):
                return 3  # entered: two processes "held" the writer lock at once
        except IndexLockTimeout:
            return 0

    with writer_lock(tmp_path, timeout=5):
        assert _in_child(child) == 0


def test_a_forked_child_does_not_keep_the_folder_locked_after_the_parent_releases(tmp_path):
    r, w = os.pipe()
    with writer_lock(tmp_path, timeout=5):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the long-lived child (a worker pool, say)
            os.close(w)
            os.read(r, 1)  # lives until the parent has tried to lock again
            os._exit(0)
    os.close(r)
    try:
        t0 = time.monotonic()
        def other() -> int:
            try:
                with writer_lock(tmp_path, timeout=2):
                    return 0
            except IndexLockTimeout:
                return 4
        assert _in_child(other) == 0, "the forked child kept the writer lock after its parent released it"
        assert time.monotonic() - t0 < 2
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
