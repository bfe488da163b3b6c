"""Start a real `bgem3 serve` process on 127.0.0.1 (ephemeral port) for the serve/remote tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Optional

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _limit_files(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


class ServerProcess:
    """A `bgem3 serve --port 0` child process; ``url`` once it answers /health."""

    def __init__(self, model: Optional[str], *args: str, env: Optional[dict] = None, startup_timeout: float = 120.0,
                 nofile: Optional[int] = None) -> None:
        """``model`` None: no ``--model`` (e.g. a ``--reranker``-only server). ``nofile``: the child's soft and
        hard ``RLIMIT_NOFILE`` (as ``ulimit -n`` would set them)."""
        e = dict(os.environ)
        e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
        e.setdefault("HF_HUB_OFFLINE", "1")
        e.setdefault("TOKENIZERS_PARALLELISM", "false")
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgem3", "serve", *(["--model", model] if model else []), "--host", "127.0.0.1",
             "--port", "0", "--device", "cpu", "-q", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT,
            preexec_fn=(lambda: _limit_files(nofile)) if nofile else None)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_err, daemon=True).start()
        self.url = self._wait_url(startup_timeout)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy: {''.join(self.stderr)[-2000:]}")

    def _drain_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _wait_url(self, timeout: float) -> str:
        box: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                if "listening on " in line:
                    box.append(line.strip().rsplit(" ", 1)[-1])
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            self.stop()
            raise RuntimeError(f"server did not start: {''.join(self.stderr)[-2000:]}")
        return box[0]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
