"""Issue 23, a newcomer's first run: a broken transformers install and a missing extra are explained
(not "unexpected ImportError ... please report it"), and transformers' LOAD REPORT is shown only when
it says something (a pooler bgem3 leaves out on purpose is not news)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from bgem3 import Encoder
from bgem3._hf import _report_keys
from bgem3.cli import _extra_for

from _adapter_fixtures import ROOT, minilm_path, tiny_m3_path


def _run(code: str, extra_path: str = "") -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (extra_path, ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_transformers_that_cannot_import_is_explained_at_load(tmp_path):
    # what `pip install langchain-huggingface` after bgem3 did: huggingface_hub 1.33 under a transformers needing 2.4
    fake = tmp_path / "site" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('huggingface-hub>=2.4.0,<3.0 is required for a normal functioning of this module, "
        "but found huggingface-hub==1.33.0.')\n")
    model = tiny_m3_path()
    code = ("import sys\nfrom bgem3 import Encoder\nfrom bgem3.encoder import ModelLoadError\n"
            f"try:\n    Encoder({model!r}, device='cpu')\nexcept ModelLoadError as e:\n    print('ERR', e)\n")
    out = _run(code, str(tmp_path / "site"))
    assert out.returncode == 0, out.stderr
    msg = out.stdout
    assert msg.startswith("ERR transformers cannot be imported here"), msg
    assert "huggingface-hub==1.33.0" in msg and "installed: transformers" in msg
    assert "one command" in msg and "transformers<5.25" in msg
    # the CLI says the same, not "unexpected ImportError ... please report it"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("hello world")
    cli = _run(f"import sys\nfrom bgem3.cli import main\nsys.exit(main(['index', {str(docs)!r}, '--index', "
               f"{str(tmp_path / 'ix')!r}, '--model', {model!r}]))", str(tmp_path / "site"))
    assert cli.returncode == 1
    assert "transformers cannot be imported here" in cli.stderr and "please report" not in cli.stderr


def test_serve_without_the_serve_extra_names_the_extra():
    code = ("import sys\nsys.modules['uvicorn'] = None\nfrom bgem3.cli import main\n"
            f"sys.exit(main(['serve', '--model', {tiny_m3_path()!r}]))")
    out = _run(code)
    assert out.returncode == 1
    assert "pip install 'bgem3[serve]'" in out.stderr and "please report" not in out.stderr, out.stderr


@pytest.mark.parametrize("module,extra", [("starlette", "serve"), ("uvicorn", "serve"), ("orjson", "serve"),
                                          ("httpx", "remote"), ("qdrant_client", "qdrant"),
                                          ("qdrant_edge", "qdrant-edge"), ("faiss", "scale"),
                                          ("langchain_core", "langchain"), ("llama_index.core", "llama-index")])
def test_every_extra_module_maps_to_its_extra(module, extra):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    assert extra in extras
    assert _extra_for(ModuleNotFoundError(f"No module named {module!r}", name=module)) == extra


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def hf_log():
    logger = logging.getLogger("transformers.modeling_utils")
    handler = _Capture()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_load_report_for_the_unused_pooler_is_not_shown(hf_log):
    from safetensors import safe_open

    with safe_open(os.path.join(minilm_path(), "model.safetensors"), "pt") as fh:
        assert any(k.startswith("pooler.") for k in fh.keys())  # the checkpoint has a pooler bgem3 leaves out
    Encoder(minilm_path(), device="cpu")
    assert not [m for m in hf_log.messages if "LOAD REPORT" in m]


def test_load_report_with_a_missing_weight_is_kept(hf_log, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = str(tmp_path / "m")
    shutil.copytree(tiny_m3_path(), broken)
    state = load_file(os.path.join(broken, "model.safetensors"))
    dropped = next(k for k in state if "encoder.layer.0.attention" in k)
    del state[dropped]
    save_file(state, os.path.join(broken, "model.safetensors"), metadata={"format": "pt"})
    Encoder(broken, device="cpu")
    reports = [m for m in hf_log.messages if "LOAD REPORT" in m]
    assert reports and dropped.split(".", 1)[-1] in reports[0] or dropped in reports[0]


def test_report_parser_reads_keys_and_statuses():
    table = ("\x1b[1mXLMRobertaModel LOAD REPORT\x1b[0m from: x\nKey                 | Status     |  | \n"
             "--------------------+------------+--+-\npooler.dense.weight | \x1b[33mUNEXPECTED\x1b[0m |  | \n"
             "encoder.layer.0.x   | MISSING    |  | \n\nNotes:\n- UNEXPECTED:\tcan be ignored")
    assert _report_keys(table) == [("pooler.dense.weight", "UNEXPECTED"), ("encoder.layer.0.x", "MISSING")]
    json.dumps(_report_keys(table))


def test_index_progress_counts_passages_encoded_from_the_start(tmp_path, monkeypatch):
    """The bar exists before the first passage is encoded, counts passages (not bytes), moves at least
    every PROGRESS_STEP passages, and ends with the exact total (so rate and ETA are about passages)."""
    from bgem3 import HybridIndex, cli

    events = []

    class Recorded(cli._PassageProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            events.append(("bar", self.unit))

        def encoded(self, n):
            super().encoded(n)
            events.append(("encoded", n, self.bar.total))

    orig_add = HybridIndex.add

    def add(self, texts, *a, **kw):
        events.append(("add", len(texts)))
        return orig_add(self, texts, *a, **kw)

    monkeypatch.setattr(cli, "_PassageProgress", Recorded)
    monkeypatch.setattr(HybridIndex, "add", add)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"f{i}.md").write_text("\n\n".join(f"Paragraph {i}.{j}: topic {j % 7}. " + "more words here " * 12
                                                  for j in range(60)))
    assert cli.main(["index", str(docs), "--index", str(tmp_path / "ix"), "--model", tiny_m3_path(),
                     "--chunk-size", "32", "--chunk-overlap", "4"]) == 0
    assert events[0] == ("bar", "passage")  # before the first encode call
    adds = [e[1] for e in events if e[0] == "add"]
    steps = [e for e in events if e[0] == "encoded"]
    assert len(adds) > 3 and max(adds) <= cli.PROGRESS_STEP and [e[1] for e in steps] == adds
    assert adds[0] == cli.PROGRESS_FIRST_STEP  # the first passages show up quickly
    assert steps[-1][2] == sum(adds)  # the exact total once every file is split


def test_ctrl_c_on_serve_says_the_server_stopped(monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from bgem3.cli import main

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt  # what uvicorn re-raises after its graceful shutdown on Ctrl-C

    monkeypatch.setattr(uvicorn.Server, "run", interrupted)
    code = main(["serve", "--model", tiny_m3_path(), "--port", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 130 and "bgem3 serve: stopped (Ctrl-C)" in err
    assert "index" not in err.split("stopped", 1)[1]  # not the indexing command's message


def test_a_missing_extra_skips_with_the_reason_and_a_real_import_bug_still_fails(tmp_path):
    tests_dir = os.path.join(ROOT, "tests")
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {tests_dir!r})\n"
        "from _extras_skip import pytest_make_collect_report, pytest_runtest_makereport\n")
    (tmp_path / "test_needs_extra_module.py").write_text(
        "raise ImportError(\"QdrantHybridStore needs the qdrant-client package: pip install 'bgem3[langchain-qdrant]'\")\n")
    (tmp_path / "test_runtime.py").write_text(
        "def test_needs_faiss():\n    raise ModuleNotFoundError(\"No module named 'faiss'\", name='faiss')\n\n"
        "def test_real_bug():\n    from bgem3 import no_such_name\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    tail = out.stdout
    assert "1 failed" in tail and "2 skipped" in tail, tail
    assert "pip install 'bgem3[langchain-qdrant]'" in tail and "pip install 'bgem3[scale]'" in tail


def test_hybrid_index_add_and_the_adapters_bulk_calls_show_texts_encoded_with_a_rate(capsys):
    from bgem3 import HybridIndex
    from langchain_bgem3 import BGEM3Embeddings
    from llama_index_bgem3 import BGEM3Embedding

    enc = Encoder(tiny_m3_path(), device="cpu", batch_size=4)
    texts = [f"passage number {i} about cats" for i in range(12)]
    HybridIndex(enc).add(texts, show_progress=True)
    BGEM3Embeddings(encoder=enc, show_progress=True).embed_documents(texts)
    BGEM3Embeddings(encoder=enc, encode_kwargs={"show_progress_bar": True}).embed_documents(texts)
    BGEM3Embedding(encoder=enc, show_progress_bar=True, embed_batch_size=12).get_text_embedding_batch(texts)
    err = capsys.readouterr().err
    bars = [ln for ln in err.replace("\r", "\n").splitlines() if "12/12" in ln]
    assert len({b.split("|")[0] for b in bars}) >= 1 and len(bars) >= 4, err[-2000:]
    assert all("text/s" in b or "s/text" in b for b in bars)  # a rate, as sentence-transformers shows
