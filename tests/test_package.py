"""Package-level contract: public names, lazy imports, the core never imports a framework."""

from __future__ import annotations

import subprocess
import sys

import bgem3


def test_all_public_names_resolve():
    for name in bgem3.__all__:
        assert getattr(bgem3, name) is not None, name
    assert bgem3.Encoder.__module__ == "bgem3.encoder"
    assert bgem3.HybridIndex.__module__ == "bgem3.index"


def test_unknown_attribute_is_an_attribute_error():
    try:
        bgem3.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_is_light_and_core_imports_no_framework():
    out = _run(
        "import sys, bgem3, bgem3.cli\n"
        "print('torch' in sys.modules)\n"
        "from bgem3 import Encoder, HybridIndex, scoring\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index')))\n"
    )
    torch_loaded, frameworks = out.splitlines()
    assert torch_loaded == "False"
    assert frameworks == "[]"
