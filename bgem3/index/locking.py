"""The writer lock of a saved index folder: one writer commits at a time.

``write.lock`` inside the folder is locked with ``fcntl.flock`` (exclusive) for the duration of a
commit (a :meth:`HybridIndex.save`) or of a whole ``bgem3 index`` run. The kernel releases the
lock when the process that holds it exits, however it exits (SIGKILL included): there is never a
stale lock to remove by hand, and the file itself is never deleted (deleting a lock file that
another process has open is how two processes end up "holding" two different locks).

Inside one process the lock is re-entrant for the thread holding it (the CLI holds it for its
whole run and its ``save`` takes it again); other threads wait on an in-process lock first, since
``flock`` does not tell two handles of one process apart.

While it holds the lock, the holder writes a line saying who it is (pid, host, command, start
time) into the file, so a process that has to wait can say whom it waits for.

A child forked while its parent holds the lock does not inherit it: the child closes its copies of
the lock's descriptors and starts with no lock held (``os.register_at_fork``), so it waits for the
parent's commit like any other writer, and a long-lived child (a worker pool) never keeps the folder
locked after the parent released it.

On platforms without ``fcntl`` (Windows) there is no writer lock: one writer per folder.

Example::

    >>> import tempfile
    >>> from bgem3.index.locking import writer_lock
    >>> d = tempfile.mkdtemp()
    >>> with writer_lock(d, timeout=5):
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "DEFAULT_LOCK_TIMEOUT", "IndexLockTimeout", "writer_lock", "lock_holder", "try_lock_dir"]

LOCK_NAME = "write.lock"
#: how long a save waits for another process's commit before giving up (seconds)
DEFAULT_LOCK_TIMEOUT = 600.0


class IndexLockTimeout(TimeoutError):
    """Another process held the folder's writer lock for longer than the timeout."""


class _Held:
    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.fd: Optional[int] = None
        self.depth = 0


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


def _forget_locks_in_child() -> None:
    """After ``fork``: the child holds none of the parent's writer locks. Its copies of the
    descriptors are closed (``flock`` stays with the parent, whose descriptors are still open) and
    the registry starts empty (the parent's in-process mutexes may be held by threads that do not
    exist in the child)."""
    global _registry, _registry_lock
    for held in _registry.values():
        fd, held.fd = held.fd, None  # a `with` the child unwinds later must not touch a reused fd number
        held.depth = 0
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _registry = {}
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def lock_holder(folder: Any) -> str:
    """What the current holder wrote into the lock file ('' if nothing / unreadable)."""
    try:
        with open(Path(folder) / LOCK_NAME, "rb") as f:
            return f.read(512).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _who() -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))[:160]
    return (f"pid {os.getpid()} on {socket.gethostname()} ({cmd or 'python'}), since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")


@contextlib.contextmanager
def writer_lock(folder: Any, *, timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT,
                on_wait: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold ``folder/write.lock`` exclusively (``folder`` must exist). Waits up to ``timeout``
    seconds (``None``: forever) for another holder, calling ``on_wait(holder)`` once when it
    has to wait; then raises :class:`IndexLockTimeout` naming the holder."""
    root = Path(folder)
    key = os.path.realpath(root)
    with _registry_lock:
        held = _registry.setdefault(key, _Held())
    deadline = None if timeout is None else time.monotonic() + timeout
    if not held.mutex.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
        raise IndexLockTimeout(f"another thread of this process is saving the index at {key!r}; "
                               f"gave up after {timeout:g} s")
    try:
        if held.depth == 0 and fcntl is not None:
            fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                told = False
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        who = lock_holder(root) or "another process"
                        if deadline is not None and time.monotonic() >= deadline:
                            raise IndexLockTimeout(
                                f"the index at {key!r} is being written by {who}; gave up waiting after "
                                f"{timeout:g} s. Retry when it has finished") from None
                        if not told and on_wait is not None:
                            on_wait(who)
                            told = True
                        time.sleep(0.02)
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, (_who() + "\n").encode("utf-8", "replace"), 0)
                except OSError:
                    pass  # the note is a courtesy; the lock is what counts
            except BaseException:
                os.close(fd)
                raise
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth = max(0, held.depth - 1)
            if held.depth == 0 and held.fd is not None:
                fd, held.fd = held.fd, None
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                os.close(fd)  # releases the flock
    finally:
        held.mutex.release()


def try_lock_dir(path: Path, shared: bool) -> Optional[int]:
    """``flock`` a directory (``LOCK_SH`` or ``LOCK_EX``, never waiting); returns the open fd
    (close it to release) or ``None`` if another process holds a conflicting lock. On
    platforms without ``fcntl`` returns -1 (nothing held)."""
    if fcntl is None:  # pragma: no cover
        return -1
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
