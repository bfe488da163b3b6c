"""Which model a folder holds: a fingerprint of its files, so two models are never mixed.

A model's name says little: ``./models/e5`` today may hold other weights tomorrow, and two
different checkpoints can live in folders of the same name. ``bgem3 index`` records
:func:`model_fingerprint` of the model folder next to the passages and compares it on every
update and search.

The fingerprint hashes, for every file of the folder (two levels deep, hidden files left out;
the model card counts, since it can name the model family): its relative name, its size and the
SHA-256 of its first and last MiB.
That tells any two real checkpoints apart while reading at most 2 MiB per file (a 2 GB weights
file is not hashed in full on every search).

Example::

    >>> import tempfile, pathlib
    >>> a, b = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for d, w in ((a, b"weights-1"), (b, b"weights-2")):
    ...     _ = (pathlib.Path(d) / "config.json").write_text("{}")
    ...     _ = (pathlib.Path(d) / "model.safetensors").write_bytes(w)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["model_fingerprint", "same_model_name"]

_EDGE = 1 << 20


def _files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        depth = 0 if rel_root == "." else rel_root.count(os.sep) + 1
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 2 else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            out.append(os.path.normpath(os.path.join(rel_root, name)))
    return out


def model_fingerprint(folder: str) -> str:
    """``"sha256:<hex>"`` over the model folder's files (names, sizes, first and last MiB)."""
    h = hashlib.sha256()
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):  # never open a FIFO or a device
            continue
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                head = fh.read(_EDGE)
                tail = b""
                if size > _EDGE:
                    fh.seek(max(_EDGE, size - _EDGE))
                    tail = fh.read(_EDGE)
        except OSError:
            continue
        h.update(rel.replace(os.sep, "/").encode("utf-8") + b"\0" + str(size).encode() + b"\0")
        h.update(hashlib.sha256(head).digest() + hashlib.sha256(tail).digest())
    return "sha256:" + h.hexdigest()


def model_key(name: str) -> str:
    """What a model name is compared by: its last path component, lower-cased (``BAAI/bge-m3`` and
    ``/models/bge-m3`` give ``bge-m3``; a moved local folder keeps its key)."""
    return os.path.basename(os.path.normpath(str(name))).lower()


def same_model_name(a: str, b: str) -> bool:
    """The one rule for "same model" by name (a saved index, a Qdrant collection and ``model_name=`` beside an
    encoder all use it): equal names, or equal :func:`model_key` that is not empty or ``"."``.

    >>> same_model_name("BAAI/bge-m3", "/models/BGE-M3/"), same_model_name("BAAI/bge-m3", "BAAI/bge-small")
    (True, False)
    >>> same_model_name("/", "./")  # the root and the working folder name no model
    False
    """
    if a == b:
        return True
    key = model_key(a)
    return key == model_key(b) and key not in ("", ".")
