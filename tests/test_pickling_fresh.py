"""Pickling is a method of each class: it works in a fresh interpreter that imported no adapter module.

Before issue 22 it was registered with ``copyreg`` by ``bgem3._shared`` on import, so
``pickle.dumps(HybridIndex(...))`` raised ``cannot pickle '_thread.RLock'`` unless an adapter had
imported ``_shared`` first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bgem3.testing import make_m3_checkpoint


def _fresh(code: str, tmp_path) -> str:
    """Run ``code`` in a new interpreter (this worktree's bgem3 first on the path); its stdout."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


_NO_ADAPTER = """
        import sys
        glue = sorted(m for m in sys.modules if m in ("bgem3._shared",) or m.startswith("bgem3._adapters")
                      or m.startswith(("langchain", "llama_index")))
        assert not glue, glue
"""


def test_hybrid_index_pickles_and_deepcopies_without_any_adapter(tmp_path):
    out = _fresh("""
        import copy, pickle
        import numpy as np
        from bgem3 import HybridIndex
        idx = HybridIndex(None, dim=2, channels=["dense"])
        idx.add_encoded(["a", "b"], ["x", "y"], None, dense=np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
        for twin in (pickle.loads(pickle.dumps(idx)), copy.deepcopy(idx)):
            assert type(twin) is HybridIndex and twin is not idx
            assert twin._lock is not idx._lock
            with twin._lock:  # a working re-entrant lock
                with twin._lock:
                    pass
            assert sorted(twin.ids) == ["a", "b"], twin.ids
        empty = pickle.loads(pickle.dumps(HybridIndex(None, dim=2, channels=["dense"])))
        assert len(empty) == 0
    """ + _NO_ADAPTER + """
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_encoder_pickles_and_deepcopies_without_any_adapter(tmp_path):
    path = make_m3_checkpoint(str(tmp_path / "m3"))
    out = _fresh(f"""
        import copy, pickle
        from bgem3 import Encoder
        enc = Encoder({path!r}, device="cpu")
        assert pickle.loads(pickle.dumps(enc)) is enc          # same process, still alive: the same object
        assert copy.deepcopy(enc) is enc
        blob = pickle.dumps(enc)
    """ + _NO_ADAPTER + """
        import bgem3.encoder as m
        m._LIVE.clear()                                         # as in another process: loaded again
        again = pickle.loads(blob)
        assert again is not enc and isinstance(again, Encoder)
        assert again.path == enc.path and again.profile == enc.profile and str(again.device) == "cpu"
        import numpy as np
        a = enc.encode_queries(["hello"]).dense
        b = again.encode_queries(["hello"]).dense
        assert np.allclose(a, b), (a, b)
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_qdrant_store_refuses_clearly_without_any_adapter(tmp_path):
    pytest.importorskip("qdrant_client")
    out = _fresh("""
        import copy, pickle
        from bgem3.stores.qdrant import QdrantHybridStore
        store = QdrantHybridStore(location=":memory:", collection_name="c", dim=2)
        for attempt in (pickle.dumps, copy.deepcopy):
            try:
                attempt(store)
            except TypeError as exc:
                assert "QdrantHybridStore holds a live Qdrant client" in str(exc), exc
                assert "bgem3.HybridIndex" in str(exc)
            else:
                raise AssertionError(f"{attempt} did not refuse")
    """ + _NO_ADAPTER + """
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_old_pickles_naming_shared_restore_functions_still_load():
    """Pickles written before issue 22 name ``bgem3._shared._restore_*`` (shim kept until the next minor version)."""
    import copy
    import pickle
    import threading

    from bgem3 import HybridIndex
    from bgem3._shared import _restore_without_locks

    idx = HybridIndex(None, dim=2, channels=["dense"])
    state = {k: v for k, v in idx.__dict__.items() if k != "_lock"}
    old = _restore_without_locks(HybridIndex, copy.deepcopy(state), {"_lock": True})
    assert isinstance(old._lock, type(threading.RLock()))
    assert len(pickle.loads(pickle.dumps(old))) == 0


def test_an_old_pickle_without_the_newer_attributes_can_still_save(tmp_path):
    """A pre-issue-22 pickle of a HybridIndex lacks ``_compact_pending`` / ``_pending_finalizer``: the shim
    goes through ``HybridIndex.__setstate__``, which fills them, so the restored handle adds and saves."""
    import copy

    import numpy as np

    from bgem3 import HybridIndex
    from bgem3._shared import _restore_without_locks

    idx = HybridIndex(None, dim=2, channels=["dense"])
    state = {k: v for k, v in idx.__dict__.items() if k not in ("_lock", "_compact_pending", "_pending_finalizer")}
    old = _restore_without_locks(HybridIndex, copy.deepcopy(state), {"_lock": True})
    old.add_encoded(["a"], ["text a"], None, dense=np.array([[1.0, 0.0]], dtype=np.float32))
    old.save(tmp_path / "idx")
    assert HybridIndex.load(tmp_path / "idx", load_encoder=False).ids == ["a"]
