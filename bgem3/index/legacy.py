"""Reading the first on-disk format (bgem3 0.1: one set of arrays + ``documents.json`` in the folder).

It is read whole into memory (as bgem3 0.1 did) and validated; the next ``save`` to the same
folder writes format 2 there and removes the format-1 files. One line converts a folder::

    from bgem3 import HybridIndex
    HybridIndex.load("my_index", load_encoder=False).save("my_index")

Example::

    >>> from bgem3.index.legacy import V1_ARRAYS
    >>> V1_ARRAYS[0]
    'dense.npy'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import ColbertCodec, dense_bits
from .errors import IndexFormatError
from .lexical import LearnedSparse, LexicalBlock
from .storage import MAX_MANIFEST_BYTES, _check_record, bad, open_npy, sha256_file

__all__ = ["load_v1", "V1_ARRAYS"]

V1_ARRAYS = ("dense.npy", "sparse_indptr.npy", "sparse_indices.npy", "sparse_data.npy", "colbert.npy",
             "colbert_offsets.npy")


def load_v1(cls: Any, root: Path, m: dict, encoder: Any, *, verify: bool) -> Any:
    def num(key: str, lo: int = 0) -> int:
        v = m.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**40:
            raise bad(root, f"manifest field {key!r} is {str(v)[:40]!r}")
        return v

    n, dim, cdim = num("count"), num("dim", 1), num("colbert_dim", 1)
    tokens, nnz = num("colbert_tokens"), num("sparse_nnz")
    vocab = m.get("vocab_size")
    if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab < 2**31):
        raise bad(root, "manifest field 'vocab_size'")
    cdt = m.get("colbert_dtype")
    if cdt not in ("float16", "float32"):
        raise bad(root, f"manifest field 'colbert_dtype' is {str(cdt)[:20]!r}")
    files = m.get("files")
    if not isinstance(files, dict):
        raise bad(root, "manifest field 'files' is not an object")
    want = {"dense.npy": ((n, dim), "float32"), "sparse_indptr.npy": ((n + 1,), "int64"),
            "sparse_indices.npy": ((nnz,), "int32"), "sparse_data.npy": ((nnz,), "float32"),
            "colbert.npy": ((tokens, cdim), cdt), "colbert_offsets.npy": ((n + 1,), "int64")}
    arrays = {}
    for fname, (shape, dt) in want.items():
        if fname not in files:
            raise IndexFormatError(f"{str(root / 'manifest.json')!r} does not list {fname!r}; the index is corrupted: "
                                   "rebuild it")
        rec = _check_record(root, fname, files[fname])
        if verify and (root / fname).is_file() and (root / fname).stat().st_size == rec["bytes"]:
            if sha256_file(root / fname) != rec["sha256"]:
                raise IndexFormatError(f"{str(root / fname)!r} does not match its SHA-256 checksum in the manifest: "
                                       "the file is corrupted; rebuild the index or restore a backup")
        arrays[fname] = open_npy(root / fname, rec, root=root, shape=shape, dtype=dt, load=True)
    drec = _check_record(root, "documents.json", files.get("documents.json"))
    dpath = root / "documents.json"
    if not dpath.is_file():
        raise IndexFormatError(f"{str(dpath)!r} is missing; the index is incomplete: rebuild it or restore a backup")
    size = dpath.stat().st_size
    if size != drec["bytes"] or size > 64 * MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{str(dpath)!r} has {size} bytes but the manifest says {drec['bytes']}: the file is "
                               "truncated or was replaced; rebuild the index or restore a backup")
    raw = dpath.read_bytes()
    if verify:
        import hashlib

        if hashlib.sha256(raw).hexdigest() != drec["sha256"]:
            raise IndexFormatError(f"{str(dpath)!r} does not match its SHA-256 checksum in the manifest: the file is "
                                   "corrupted; rebuild the index or restore a backup")
    try:
        docs = json.loads(raw.decode("utf-8"))
        ids, texts, metas = docs["ids"], docs["texts"], docs["metadatas"]
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{str(dpath)!r} is not a valid documents file ({type(exc).__name__}); the index is "
                               "corrupted: rebuild it or restore a backup") from None
    if not (isinstance(ids, list) and isinstance(texts, list) and isinstance(metas, list)
            and len(ids) == len(texts) == len(metas) == n):
        raise bad(root, "documents.json must hold one id, text and metadata object per document")
    for what, values in (("ids", ids), ("texts", texts)):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise bad(root, f"documents.json {what}[{i}] is a {type(v).__name__}, not a string")
    if any(not isinstance(x, dict) for x in metas):
        raise bad(root, "documents.json holds metadata that is not an object")
    if len(set(ids)) != n:
        raise bad(root, "duplicate ids in documents.json")
    for name, total in (("sparse_indptr.npy", nnz), ("colbert_offsets.npy", tokens)):
        p = arrays[name]
        if len(p) == 0 or p[0] != 0 or p[-1] != total or np.any(np.diff(p) < 0):
            raise bad(root, f"{name} offsets do not run from 0 to {total}")
    for name in ("dense.npy", "sparse_data.npy", "colbert.npy"):
        if not np.isfinite(arrays[name]).all():
            raise bad(root, f"{name} holds NaN or infinity")
    idx = arrays["sparse_indices.npy"]
    if len(idx) and (idx.min() < 0 or (vocab is not None and idx.max() >= vocab)):
        raise bad(root, "lexical token id outside the vocabulary")
    index = cls(None, model_name=m["model_name"], dim=dim, colbert_dim=cdim, vocab_size=vocab, colbert_codec=cdt)
    index.encoder = encoder
    try:
        blk = LexicalBlock.from_csr(arrays["sparse_indptr.npy"], idx, arrays["sparse_data.npy"], vocab_size=vocab)
    except ValueError as exc:
        raise bad(root, str(exc)) from None
    codec: ColbertCodec = index.codec
    codes, _ = codec.encode(arrays["colbert.npy"].astype(np.float32)) if cdt == "float32" else (arrays["colbert.npy"], None)
    batch = {"ids": list(ids), "texts": list(texts), "metas": list(metas), "dense": arrays["dense.npy"],
             "dense_bits": dense_bits(arrays["dense.npy"]), "lexical": blk, "lexical_extras": {},
             "col_codes": codes, "col_offsets": arrays["colbert_offsets.npy"]}
    assert isinstance(index.lexical, LearnedSparse)
    index._tail.append(batch)
    index._format1 = str(root)
    return index
