"""A shim for pickles written before issue 22 (remove at the next minor version).

The adapter glue that lived here has named homes now: :mod:`bgem3._adapters` (``text_encoder``, ``options``,
``instructions``, ``arguments``, ``scores``, ``rerankers``, ``retrieval``) and :mod:`bgem3._loading` (the shared
encoder cache). Old pickles name ``bgem3._shared._restore_encoder`` / ``_restore_without_locks``: those two
functions stay here so that they still load.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoder import Encoder

# --------------------------------------------------------------------------- old pickles
#
# Pickling is a method of each class now (Encoder.__reduce__, HybridIndex.__getstate__/__setstate__,
# QdrantHybridStore.__reduce__). Pickles written by bgem3 before that name these two functions:
# kept so that they still load, until the next minor version.

def _restore_encoder(token: str, path: str, options: dict) -> "Encoder":
    """Old pickles of an :class:`~bgem3.Encoder` (now ``bgem3.encoder._restore_encoder``)."""
    from .encoder import _restore_encoder as restore

    return restore(token, path, options)


def _restore_without_locks(cls: type, state: dict, locks: dict) -> Any:
    """Old pickles of a :class:`~bgem3.HybridIndex` (now ``HybridIndex.__setstate__``)."""
    obj = object.__new__(cls)
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None and getattr(cls, "__setstate__", None) is not getattr(object, "__setstate__", None):
        setstate(dict(state))  # the class's own restore: fills what old pickles lack, makes its locks
    else:
        obj.__dict__.update(state)
    for name, reentrant in locks.items():
        if not hasattr(obj, name):
            setattr(obj, name, threading.RLock() if reentrant else threading.Lock())
    return obj
