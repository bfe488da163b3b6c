"""Every ```python block of docs/*.md runs as pasted (one session per page, blocks in order, offline,
"BAAI/bge-m3" replaced by a tiny checkpoint), unless the line before it says why it cannot:
``<!-- docs-test: skip (needs a Qdrant server) -->``. The reason must be given (issue 23: a reader
should know which blocks are fragments, pseudo-code or need a server)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"(<!-- docs-test: skip \((?P<why>.*?)\) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)
PAGES = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def blocks(page: str) -> list[tuple[int, str, str | None]]:
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    return [(text[:m.start("code")].count("\n"), m.group("code"), m.group("why")) for m in _BLOCK.finditer(text)]


def test_every_block_is_runnable_or_says_why_not():
    total = skipped = 0
    for page in PAGES:
        for line, _, why in blocks(page):
            total += 1
            if why is not None:
                skipped += 1
                assert len(why.strip()) > 10, f"{page}:{line}: a skipped block must say why"
    assert total >= 30 and total - skipped >= 10  # most pages show code that runs


@pytest.mark.parametrize("page", [p for p in PAGES if any(why is None for _, _, why in blocks(p))],
                         ids=os.path.basename)
def test_runnable_blocks_run(page, tmp_path, m3_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    script = ["import sys"]
    for line, code, why in blocks(page):
        if why is not None:
            continue
        script.append(f"print('--- {os.path.basename(page)}:{line}', flush=True)")
        script.append(code.replace('"BAAI/bge-m3"', repr(m3_path)))
    path = tmp_path / "blocks.py"
    path.write_text("\n".join(script), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=env)
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("--- ")]
    assert proc.returncode == 0, f"the block at {last[-1][4:] if last else '?'} failed:\n{proc.stderr[-3000:]}"


def test_every_jsonl_file_under_docs_is_an_indexable_record_file():
    """`make demo` (the README's main job) runs `bgem3 index README.md docs`, which reads .jsonl files as
    records with a "text" field: raw benchmark output kept as JSON lines there broke it (store it as .json)."""
    bad = []
    for path in glob.glob(os.path.join(REPO, "docs", "**", "*.jsonl"), recursive=True):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip() and not isinstance(json.loads(line).get("text"), str):
                    bad.append(f"{os.path.relpath(path, REPO)} line {n}")
                    break
    assert not bad, f"these .jsonl files under docs/ have records without a 'text' field: {bad}"
