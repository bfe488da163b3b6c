"""The layer rules of the package, read from the source with ``ast`` (so the house cannot drift back):

* no import circle among ``bgem3`` modules, counting the imports that run when a module is imported
  (module level, ``try`` / ``if`` blocks included; ``if TYPE_CHECKING:`` blocks and imports inside
  functions are not counted);
* the core (``bgem3/``) imports no framework (``langchain*``, ``llama_index*``);
* ``bgem3.remote`` imports nothing from ``bgem3.serve`` (anywhere in the file);
* ``bgem3/stores/*`` and ``bgem3/index/*`` import no adapter glue (``bgem3._adapters``, ``bgem3._shared``),
  anywhere in the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "bgem3"
FRAMEWORKS = ("langchain", "llama_index")
GLUE = ("bgem3._adapters", "bgem3._shared")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str], top_level_only: bool) -> set[str]:
    """Absolute names of what ``name`` imports; ``from .x import y`` counts ``pkg.x.y`` when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                names = [f"{mod}.{alias.name}" for alias in node.names]
                modules = [n for n in names if n in known]
                found.update(modules)
                if len(modules) < len(names):  # a name defined in `mod` itself: `mod` runs
                    found.add(mod)
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.ClassDef) and top_level_only:
                visit([n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))])
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, (ast.stmt, ast.ExceptHandler))])

    visit(tree.body)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path, known, top_level_only):
            # `import bgem3.a.b` also runs the packages above it, but those are the importer's own
            # ancestors or already counted where named; count the module named
            while imp and imp not in known:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(old)
    return out


def _edges_in(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    return sorted(f"{a} -> {b}" for a in comp for b in graph[a] if b in comp)


def test_the_checker_sees_a_circle():
    """The checker itself can fail: a made-up graph with a circle is reported."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_bgem3_modules():
    graph = _graph(top_level_only=True)
    assert "bgem3.index" in graph and "bgem3.encoder" in graph  # the walk found the package
    circles = _cycles(graph)
    assert not circles, "import circles (module-level imports):\n" + "\n".join(
        "  " + "; ".join(_edges_in(graph, c)) for c in circles)


#: Imports inside functions (deferred to call time) that still close a circle, each with why. A new circle,
#: deferred or not, fails the test below; remove an entry here when its import goes.
DEFERRED_CIRCLE_EDGES = {
    ("bgem3.encoder", "bgem3._loading"): "the one import that runs up a layer: an unpickled Encoder joins the "
                                         "process-wide encoder cache (bgem3.encoder._restore_encoder)",
}


def test_no_circle_even_counting_deferred_imports_but_the_listed_ones():
    graph = _graph(top_level_only=False)
    for (a, b), why in DEFERRED_CIRCLE_EDGES.items():
        assert b in graph.get(a, ()), f"{a} no longer imports {b}: drop it from DEFERRED_CIRCLE_EDGES ({why})"
        graph[a] = graph[a] - {b}
    circles = _cycles(graph)
    assert not circles, "import circles (deferred imports counted):\n" + "\n".join(
        "  " + "; ".join(_edges_in(graph, c)) for c in circles)


def test_the_core_imports_no_framework():
    mods = _modules()
    bad = sorted(f"{name} imports {imp}" for name, path in mods.items()
                 for imp in _imports(name, path, set(mods), top_level_only=False)
                 if imp.split(".")[0] in FRAMEWORKS)
    assert not bad, bad


def test_remote_imports_nothing_from_serve():
    mods = _modules()
    for name in ("bgem3.remote", "bgem3.remote_rerank"):
        imps = _imports(name, mods[name], set(mods), top_level_only=False)
        bad = sorted(i for i in imps if i == "bgem3.serve" or i.startswith("bgem3.serve."))
        assert not bad, f"{name} imports {bad}"


def test_stores_and_index_import_no_adapter_glue():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        if not name.startswith(("bgem3.stores", "bgem3.index")):
            continue
        for imp in _imports(name, path, set(mods), top_level_only=False):
            if any(imp == g or imp.startswith(g + ".") for g in GLUE):
                bad.append(f"{name} imports {imp}")
    assert not bad, sorted(bad)


def test_bm25_lives_beside_its_interface_and_a_saved_bm25_index_loads_without_importing_it(tmp_path):
    """``bgem3.bm25`` re-exports ``bgem3.index.bm25``; loading a saved BM25 index needs no import of it
    first (the index registers its built-in lexical channels; no hard-coded importlib fallback)."""
    import os
    import subprocess
    import sys

    import bgem3.bm25 as old
    import bgem3.index.bm25 as new

    assert old.BM25 is new.BM25 and old.BM25Tokenizer is new.BM25Tokenizer and old.term_id is new.term_id
    assert set(old.__all__) == set(new.__all__)
    assert "importlib" not in (PKG / "index" / "lexical.py").read_text(encoding="utf-8")

    bm = new.BM25(k1=1.6, b=0.4)
    idx = __import__("bgem3").HybridIndex(None, dim=2, channels=["lexical"], lexical=bm)
    texts = ["the capital of France", "mitochondria make energy"]
    idx.add_encoded(["a", "b"], texts, None, sparse=bm.document_rows(texts))
    idx.save(str(tmp_path / "idx"))
    code = ("import sys\nfrom bgem3.index import HybridIndex\n"
            f"back = HybridIndex.load({str(tmp_path / 'idx')!r}, load_encoder=False)\n"
            "assert type(back.lexical).__name__ == 'BM25' and back.lexical.k1 == 1.6\n"
            "assert 'bgem3.bm25' not in sys.modules\nprint('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _run_fresh(code: str) -> str:
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_http_reranker_client_imports_no_torch():
    """``import bgem3.remote_rerank`` loads no torch in a fresh interpreter (nor do the leaves it stands on:
    the shared checks, dtype names, the HTTP base class, ``RankedText``)."""
    code = ("import sys\n"
            "from bgem3 import RankedText\n"
            "from bgem3.remote_rerank import RemoteReranker, remote_reranker_for\n"
            "print('torch' in sys.modules)\n")
    assert _run_fresh(code) == "False"
    import bgem3
    import bgem3.crossencoder

    assert bgem3.crossencoder.RankedText is bgem3.RankedText  # the old home still names the same class


def _from_imports(path: Path, package: str) -> dict[str, set[str]]:
    """``{absolute module: names}`` of every ``from ... import ...`` in the file (function bodies included)."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.setdefault(mod, set()).update(a.name for a in node.names)
    return out


def test_the_clients_take_their_checks_codec_and_dtype_names_from_leaves():
    """The HTTP clients get argument checks, dtype names and the wire codec from the leaves, not from the
    model's module, the adapter glue or the server: the remote encoder takes only its base class (and
    ``EncodeOutput``) from ``bgem3.encoder``; the remote reranker nothing from the model side at all."""
    remote = _from_imports(PKG / "remote.py", "bgem3")
    assert remote.get("bgem3.encoder", set()) <= {"Encoder", "EncodeOutput"}, remote.get("bgem3.encoder")
    rr = _from_imports(PKG / "remote_rerank.py", "bgem3")
    touched = sorted(m for m in rr if m in ("bgem3.encoder", "bgem3._shared", "bgem3.crossencoder", "bgem3.remote")
                     or m.startswith("bgem3.serve"))
    assert not touched, touched
    for name in ("bgem3.remote", "bgem3.remote_rerank"):
        path = PKG / (name.split(".")[1] + ".py")
        assert not any(m.startswith("bgem3._shared") for m in _from_imports(path, "bgem3")), name


#: helpers that each had copies in the model and client modules; now defined once, in bgem3._checks / _batching
_ONCE = {"_check_positive_int", "_positive_int", "_check_texts", "_check_query", "check_query", "check_texts",
         "_check_pairs", "check_top_n", "_check_examples", "_is_oom", "_httpx", "_number", "dtype_name"}


def test_client_and_model_checks_and_the_batch_loop_are_written_once():
    files = ["encoder.py", "crossencoder.py", "remote.py", "remote_rerank.py", "rerank.py", "serve/shapes.py"]
    copies = sorted(f"{f}: def {node.name}" for f in files
                    for node in ast.walk(ast.parse((PKG / f).read_text(encoding="utf-8")))
                    if isinstance(node, ast.FunctionDef) and node.name in _ONCE)
    assert not copies, copies
    # one OOM-halving batch loop: the models call bgem3._batching.run_batches, neither spells the loop out
    for f in ("encoder.py", "crossencoder.py"):
        text = (PKG / f).read_text(encoding="utf-8")
        assert "run_batches(" in text and "queue[:0]" not in text and "_is_oom" not in text, f


def test_the_shared_leaves_examples_run():
    """The examples in the docstrings of the leaves the model, the clients and the server share."""
    import doctest
    import importlib

    for name in ("bgem3._checks", "bgem3._dtypes", "bgem3._wire", "bgem3._batching"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.attempted > 0 and result.failed == 0, name
