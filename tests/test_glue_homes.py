"""Issue 22: each piece of glue has one named home and each rule is written once."""

from __future__ import annotations


def test_one_rule_for_same_model():
    """A saved index, a Qdrant collection and ``model_name=`` beside an encoder compare model names by one
    function (before: the Qdrant store had its own ``_model_key`` rule, which called ``"./"`` and ``"."`` the
    same model while the index refused it)."""
    import bgem3.index.persistence as persistence
    import bgem3.stores.base as base
    import bgem3.stores.qdrant as qdrant
    from bgem3.fingerprint import same_model_name

    assert persistence.same_model_name is same_model_name
    assert qdrant.same_model_name is same_model_name and base.same_model_name is same_model_name
    assert not hasattr(qdrant, "_model_key")
    assert same_model_name("BAAI/bge-m3", "/models/BGE-M3/") and not same_model_name("BAAI/bge-m3", "bge-small")
    assert not same_model_name("./", ".") and same_model_name(".", ".")


def test_rank_lives_with_the_scores():
    import bgem3.index.search as search
    import bgem3.stores.qdrant as qdrant
    from bgem3.scoring import rank

    assert search.rank is rank and qdrant.rank is rank


def test_the_filter_language_is_a_leaf_and_each_store_says_its_native_form():
    """``bgem3.filters`` holds the language only (imports nothing from bgem3 or Qdrant); what a store takes
    for a tree is its own ``native_filter`` method, not a ``sys.modules`` type test."""
    import ast
    from pathlib import Path

    import bgem3.filters as filters
    from bgem3 import HybridIndex
    from bgem3.filters import Cond, Where, store_filter

    tree = ast.parse(Path(filters.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "math", "dataclasses", "typing"}, imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert "sys.modules" not in Path(filters.__file__).read_text(encoding="utf-8")

    where = Where("or", [Cond("year", ">=", 2020), Cond("lang", "text_match", "de")])

    class MyStore:
        def native_filter(self, w):
            return ("mine", w)

    assert store_filter(MyStore(), where) == ("mine", where)
    index = HybridIndex(None, dim=2, channels=["dense"])
    assert store_filter(index, where) == where.matches and index.native_filter(where) == where.matches
    assert store_filter(object(), where) == where.matches  # a store without the method: the predicate
    assert store_filter(MyStore(), Where("and", [Cond("lang", "==", "de")])) == {"lang": "de"}


def test_the_qdrant_store_translates_trees_with_its_own_method():
    import pytest

    pytest.importorskip("qdrant_client")
    from qdrant_client import models

    from bgem3.filters import Cond, Where, store_filter
    from bgem3.stores.qdrant import QdrantHybridStore, to_qdrant_filter
    from bgem3.stores.qdrant_filters import to_qdrant_filter as moved

    assert to_qdrant_filter is moved  # the public name stays importable from bgem3.stores.qdrant
    store = QdrantHybridStore(None, location=":memory:", dim=2, colbert_dim=2, collection_name="f")
    where = Where("or", [Cond("year", ">=", 2020), Cond("lang", "==", "de")])
    out = store_filter(store, where)
    assert isinstance(out, models.Filter) and out == store.native_filter(where) and len(out.should) == 2


def _count_checks(monkeypatch):
    """Wrap every module's reference to the weights and mode checks; returns the call counter."""
    import bgem3._checks
    import bgem3._adapters.retrieval
    import bgem3.scoring
    import bgem3.stores.base

    calls = {"weights": 0, "mode": 0}
    real_w, real_m = bgem3.scoring.check_weights, bgem3._checks.check_fusion_mode

    def weights(w):
        calls["weights"] += 1
        return real_w(w)

    def mode(m):
        calls["mode"] += 1
        return real_m(m)

    for mod in (bgem3.stores.base, bgem3._adapters.retrieval):
        monkeypatch.setattr(mod, "check_weights", weights, raising=False)
        monkeypatch.setattr(mod, "check_fusion_mode", mode, raising=False)
    return calls


def test_weights_and_mode_are_checked_once_per_search(m3_encoder, monkeypatch):
    """Before issue 22 one ``HybridIndex.search`` checked ``weights`` 3 times and ``mode`` 4 times (search,
    search_encoded, fusion_mode); a retriever added its own checks on top."""
    from bgem3 import HybridIndex

    index = HybridIndex(m3_encoder)
    index.add(["the capital of France is Paris", "mitochondria make energy"], ids=["a", "b"])
    calls = _count_checks(monkeypatch)
    hits = index.search("capital of France", k=1, weights=(0.4, 0.2, 0.4), mode="auto")
    assert hits[0].id == "a" and calls == {"weights": 1, "mode": 1}
    out = m3_encoder.encode_queries(["capital of France"], dense=True, sparse=True, colbert=True)
    calls.update(weights=0, mode=0)
    index.search_encoded(out.dense[0], out.sparse[0], out.colbert[0], k=1, mode="rrf")
    assert calls == {"weights": 1, "mode": 1}

    import pytest

    pytest.importorskip("langchain_core")
    from langchain_bgem3 import BGEM3HybridRetriever

    retriever = BGEM3HybridRetriever(store=index, k=1)
    calls.update(weights=0, mode=0)
    docs = retriever.invoke("capital of France", weights=(0.5, 0.0, 0.5), mode="rrf")
    assert docs[0].id == "a" and calls == {"weights": 1, "mode": 1}
    with pytest.raises(ValueError, match="mode must be 'auto', 'weighted' or 'rrf'"):
        retriever.invoke("capital of France", mode="fast")


def test_one_positive_int_and_one_fusion_mode_tuple():
    import ast
    from pathlib import Path

    import numpy as np

    from bgem3 import HybridIndex
    from bgem3._checks import FUSION_MODES
    from bgem3.types import FusionMode

    assert FUSION_MODES == FusionMode.__args__
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("bgem3/**/*.py"), *root.glob("langchain_bgem3/*.py"), *root.glob("llama_index_bgem3/*.py")]:
        if path == root / "bgem3" / "types.py":  # the one place: the FusionMode literal
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tuples = [n for n in ast.walk(tree) if isinstance(n, (ast.Tuple, ast.List))
                  and {getattr(e, "value", None) for e in n.elts} == {"auto", "weighted", "rrf"}]
        assert not tuples, f"{path}: the fusion modes written out again; use bgem3._checks.FUSION_MODES"
    assert HybridIndex(None, dim=np.int64(3)).dim == 3  # numpy integers pass the one check


def test_one_loader_decides_what_the_user_passed(monkeypatch):
    """The stores, the embedding-channel reranker, the adapters' reranker glue and shared_encoder get an encoder
    from what the user passed through one function, bgem3._loading.load_encoder (four resolvers before)."""
    import pytest

    import bgem3.remote as remote
    import bgem3.stores.base as base
    from bgem3 import Encoder
    from bgem3 import HybridIndex
    from bgem3._adapters.rerankers import reranker_encoder
    from bgem3._loading import shared_encoder
    from bgem3.rerank import resolve_encoder

    seen = []

    class Remote(Encoder):  # stands for the RemoteEncoder a URL gives (no server needed)
        def __init__(self, url, **options):
            seen.append((url, options))

    monkeypatch.setattr(remote, "remote_encoder_for", Remote)
    url = "http://127.0.0.1:9/"
    assert isinstance(resolve_encoder(url, timeout=3), Remote)
    assert isinstance(reranker_encoder(None, url, {"timeout": 4}), Remote)
    assert isinstance(shared_encoder(url, device="cpu"), Remote)
    with pytest.raises(TypeError):  # the stub has no model: the store got it from the same loader, then checks it
        HybridIndex(url, timeout=5)
    assert seen == [(url, {"timeout": 3}), (url, {"timeout": 4}), (url, {"device": "cpu"}), (url, {"timeout": 5})]
    assert not hasattr(base, "resolve_encoder")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['device'\].*HybridIndex\('BAAI/bge-m3'"):
        HybridIndex(None, dim=4, device="cpu")
    with pytest.raises(ValueError, match="cross-encoder reranker"):
        reranker_encoder(None, "BAAI/bge-reranker-base", None)


def test_the_adapter_glue_lives_in_modules_named_by_what_they_hold():
    """``_shared.py`` (six jobs) and ``_hits.py`` (retriever and reranker glue, not hits) became ``bgem3._adapters``;
    ``bgem3._shared`` keeps only the two functions old pickles name."""
    import importlib
    import importlib.util

    import bgem3._shared as shim

    homes = {
        "text_encoder": ["TextEncoder", "encoder_view", "truncate_dense", "sparse_to_lists"],
        "options": ["split_model_kwargs", "check_encode_kwargs", "encode_call_options", "ENCODE_OPTIONS"],
        "instructions": ["FRAMEWORK_BGE_QUERY_INSTRUCTION", "framework_query_instruction", "e5_templates"],
        "arguments": ["missing_framework", "check_list_arg", "unknown_options_error"],
        "scores": ["merge_scores"],
        "retrieval": ["check_hybrid_store", "encode_query_group", "search_many", "store_builder_args"],
        "rerankers": ["reranker_encoder", "load_reranker", "rerank_hits"],
    }
    for module, names in homes.items():
        mod = importlib.import_module(f"bgem3._adapters.{module}")
        assert all(getattr(mod, n).__module__ == mod.__name__ for n in names if callable(getattr(mod, n))
                   and not isinstance(getattr(mod, n), (str, tuple, frozenset))), module
    assert importlib.util.find_spec("bgem3._hits") is None
    own = sorted(n for n, v in vars(shim).items() if callable(v) and getattr(v, "__module__", "") == shim.__name__)
    assert own == ["_restore_encoder", "_restore_without_locks"]


def test_a_facade_builds_its_text_encoders_and_encoder_views_once(m3_path, monkeypatch):
    """Before: a new TextEncoder on every embed call, and a new Encoder clone (encoder_view) on every encode
    whenever the facade's templates differ from the encoder's (E5 facades, instructions)."""
    import copy
    import pickle

    import pytest

    pytest.importorskip("langchain_core")
    import bgem3._adapters.text_encoder as te_mod
    from langchain_bgem3 import BGEM3Embeddings

    views = []
    real_view = te_mod.encoder_view
    monkeypatch.setattr(te_mod, "encoder_view", lambda *a, **k: views.append(1) or real_view(*a, **k))
    emb = BGEM3Embeddings(model_name=m3_path, model_kwargs={"device": "cpu"}, query_instruction="q: ")
    first = emb.embed_query("cat")
    te = emb._text_encoder(query=True)
    assert emb.embed_query("cat") == first and emb.embed_query("dog") != first
    assert emb._text_encoder(query=True) is te and emb._text_encoder() is not te
    assert len(views) == 1  # one view for the query side, made once
    emb.batch_size = 3  # a changed field is honoured: a new TextEncoder with it
    assert emb._text_encoder(query=True) is not te and emb._text_encoder(query=True).batch_size == 3
    for clone in (pickle.loads(pickle.dumps(emb)), copy.deepcopy(emb)):
        assert clone.embed_query("cat") == pytest.approx(first, abs=1e-6)


def test_the_loader_keeps_the_store_imports_light():
    """``import bgem3.index`` (a store for precomputed vectors) loads no torch: the loader imports the encoder
    only when it loads a name, folder or URL."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    code = ("import sys, bgem3.index, bgem3.stores.base, bgem3._loading\n"
            "from bgem3 import HybridIndex\nHybridIndex(None, dim=2, channels=['dense'])\n"
            "assert 'torch' not in sys.modules and 'bgem3.remote' not in sys.modules, 'heavy import'\nprint('ok')")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
