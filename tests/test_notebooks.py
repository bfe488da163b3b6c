"""Execute every tutorial notebook top to bottom with tiny offline models (nbclient).

The notebooks read their models from BGEM3_MODEL / BGEM3_E5_MODEL; here those point at the
tiny random-weight BGE-M3 checkpoint and the real all-MiniLM-L6-v2 folder, and the kernel gets
PYTHONPATH=<repo root> so it imports this checkout. A failing cell fails the test.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from bgem3.testing import make_m3_checkpoint, minilm_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = ["01_langchain.ipynb", "02_llamaindex.ipynb", "03_hybrid_retrieval.ipynb"]


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", os.path.join(REPO, "scripts", "make_notebooks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def nb_models(tmp_path_factory):
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("nb_m3") / "tiny-m3")), minilm_path()


@pytest.fixture(scope="module")
def nb_reranker(tmp_path_factory):
    from bgem3.testing import make_reranker_checkpoint

    return make_reranker_checkpoint(str(tmp_path_factory.mktemp("nb_rr") / "tiny-reranker"), "xlmr")


def test_committed_notebooks_match_generator_and_have_no_outputs(tmp_path):
    written = _generator().main(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == NOTEBOOKS
    for name in NOTEBOOKS:
        committed = os.path.join(NB_DIR, name)
        with open(committed, encoding="utf-8") as fh, open(tmp_path / name, encoding="utf-8") as gh:
            assert fh.read() == gh.read(), f"{name} is stale: run `python scripts/make_notebooks.py`"
        nb = nbformat.read(committed, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, nb_models, nb_reranker, monkeypatch, tmp_path):
    m3, e5 = nb_models
    monkeypatch.setenv("BGEM3_MODEL", m3)
    monkeypatch.setenv("BGEM3_RERANKER_MODEL", nb_reranker)
    monkeypatch.setenv("BGEM3_E5_MODEL", e5)
    monkeypatch.setenv("BGEM3_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell if any cell fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # the kernel used this checkout's package and the test models
    assert m3 in text
    if name == "03_hybrid_retrieval.ipynb":
        images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert len(images) == 2, "expected the per-channel bar chart and the ColBERT heatmap"
        assert "candidates agree with exhaustive scoring: True" in text
        assert "12 documents; True False" in text  # add + delete survived save/load
    if name == "01_langchain.ipynb":
        assert "Question: What is BGE M3?" in text  # the echo LLM received the RAG prompt
        assert "embed_query(question) is the encoding of that string: True" in text  # E5 prefix applied
        assert "'query: Which city is the capital of France?'" in text
    if name in ("01_langchain.ipynb", "02_llamaindex.ipynb"):
        assert text.count("cross-encoder ") == 2  # the BGE cross-encoder kept its top 2
    if name == "02_llamaindex.ipynb":
        assert "sources:" in text
        assert "get_query_embedding(query) is the encoding of that string: True" in text
