"""The README's code runs as written: every ```python block (in order, one session, as a reader
would paste them) and every `bgem3 ...` shell line, offline, with tiny / real-MiniLM models in
place of hub ids. A block preceded by ``<!-- readme-test: skip (why) -->`` is left out (it needs
a server); the skip must say why."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
_BLOCK = re.compile(r"(<!-- readme-test: skip \((?P<why>[^)]*)\) -->\s*\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def readme_blocks(lang: str) -> list[str]:
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    out = []
    for m in _BLOCK.finditer(text):
        if m.group("lang") != lang:
            continue
        if m.group("why") is not None:
            assert m.group("why").strip(), "a skipped README block must say why"
            continue
        out.append(m.group("code"))
    return out


def _env(tmp_path, m3_path: str) -> dict:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "bgem3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bgem3 "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                BGEM3_MODEL=m3_path, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                MPLBACKEND="Agg")


# A line ``expr   # value, value…`` in a README block states what ``expr`` prints; "…" stands for more
# digits. The suite evaluates it and compares (issue 23: a README said 0.81… where the code gives 0.7135…).
_CHECK_PRINTED = r"""
def _check_printed(value, expected, line, split):
    import re
    def show(v):
        return repr(float(v)) if type(v).__name__.startswith("float") else repr(v)
    got = ", ".join(show(v) for v in value) if split else show(value)
    pattern = "".join(r"\d*" if ch == "\u2026" else re.escape(ch) for ch in expected)
    if not re.fullmatch(pattern, got):
        raise AssertionError(f"README line {line!r} prints {got}; the README says {expected}")
"""


def _with_printed_value_checks(code: str) -> tuple[str, int]:
    import ast

    out, n = [], 0
    for line in code.splitlines():
        expr, sep, comment = line.partition("   # ")
        if sep and "\u2026" in comment and not line.startswith((" ", "\t")):
            try:
                node = ast.parse(expr.strip(), mode="eval").body
            except SyntaxError:
                out.append(line)
                continue
            split = isinstance(node, ast.Tuple) and not expr.strip().startswith("(")
            out.append(f"_check_printed(({expr.strip()}), {comment.strip()!r}, {line.strip()!r}, {split})")
            n += 1
        else:
            out.append(line)
    return "\n".join(out), n


def test_printed_value_comments_become_checks():
    code, n = _with_printed_value_checks("x = 0.7135\nx, None   # 0.71\u2026, None\n")
    assert n == 1
    ns: dict = {}
    exec(_CHECK_PRINTED + code, ns)
    with pytest.raises(AssertionError, match="README says 0.81"):
        exec(_CHECK_PRINTED + _with_printed_value_checks("x = 0.7135\nx, None   # 0.81\u2026, None\n")[0], {})


def test_readme_has_code():
    assert len(readme_blocks("python")) >= 6 and any("bgem3 index" in b for b in readme_blocks("bash"))


def test_readme_python_blocks_run(tmp_path, m3_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("qdrant_client")
    from bgem3.testing import make_reranker_checkpoint

    reranker_path = make_reranker_checkpoint(str(tmp_path / "tiny-reranker"), "xlmr")
    blocks = readme_blocks("python")
    script = ["import sys", _CHECK_PRINTED]
    checked = 0
    for i, code in enumerate(blocks):
        code = code.replace('"BAAI/bge-m3"', repr(m3_path))
        code = code.replace('"BAAI/bge-reranker-v2-m3"', repr(reranker_path))
        code, n = _with_printed_value_checks(code)
        checked += n
        script.append(f"print('--- README python block {i + 1}', flush=True)")
        script.append(code)
    assert checked >= 1  # the README's "# 0.62…"-style printed values are checked, not just run
    path = tmp_path / "readme_blocks.py"
    path.write_text("\n".join(script), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=_env(tmp_path, m3_path))
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("--- README python block")]
    assert proc.returncode == 0, f"{last[-1] if last else 'before block 1'} failed:\n{proc.stderr[-3000:]}"


def test_readme_shell_commands_run(tmp_path, m3_path, monkeypatch, capsys):
    """Every `bgem3 ...` line of the README's shell blocks, as written (run in-process: same parser and code)."""
    import shlex

    from bgem3.cli import main

    for name in ("docs", "my-docs"):  # the folders the README's commands index
        (tmp_path / name).mkdir()
        for doc in ("cli.md", "index.md"):
            shutil.copy(os.path.join(REPO, "docs", doc), tmp_path / name / doc)
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            if line.startswith("bgem3 "):
                commands += [c.strip() for c in line.split("  #")[0].split("&&")]
    assert len(commands) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BGEM3_MODEL", m3_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "bgem3"
        code = main(argv[1:])
        err = capsys.readouterr().err
        assert code == 0, f"{command!r} failed:\n{err[-2000:]}"
