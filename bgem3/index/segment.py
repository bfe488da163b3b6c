"""Segments: the rows of an index, in memory (the growing tail) or memory-mapped from disk.

A segment holds, for each of its rows and for each channel the index has:

* dense: ``dense [n, dim]`` (float32 or float16) + ``dense_bits [n, ceil(dim/8)]`` (sign bits), and
  for a disk segment of at least ``dense_lists.MIN_ROWS`` rows its inverted lists
  (``dense_centroids / dense_list_ptr / dense_list_rows / dense_list_bits``, see :mod:`bgem3.index.dense_lists`);
* lexical: CSR ``lex_indptr / lex_indices / lex_values``, the inverted ``lex_terms / lex_term_ptr /
  lex_post_rows / lex_post_values`` and the channel's per-row ``lex_x_<name>`` arrays;
* ColBERT: ``col_codes [T, width]`` (+ ``col_aux [T]`` for quantised codecs) and ``col_offsets [n+1]``;
  a disk segment of the 1bit / int8 codecs also ``col_prefix [T, prefix_cols]``, the code columns
  the MaxSim estimate reads (``ColbertCodec.stored_prefix_cols``), contiguous;
* documents: ids, texts and metadata (JSON) as UTF-8 blobs + offsets;

and a ``dead`` mask (tombstones). Disk segments never change; a save writes the tail as a new
one and only rewrites a segment's small tombstone file when rows of it were deleted.

Example::

    >>> import numpy as np
    >>> from bgem3.index.segment import MemSegment
    >>> seg = MemSegment(dense_dim=2, dense_dtype="float32", colbert=None, lexical_extras=())
    >>> seg.append({"ids": ["a"], "texts": ["A"], "metas": [{}], "dense": np.ones((1, 2), "float32")})
    >>> seg.n, seg.doc_id(0)
    (1, 'a')
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .codecs import ColbertCodec, dense_bits
from .dense_lists import LIST_ARRAYS, MIN_ROWS, build_lists, check_lists
from .errors import IndexFormatError
from .lexical import LexicalBlock, LexicalView, build_postings, ranges
from .storage import (SEGMENT_DIR, VERIFY_AT_OPEN_BYTES, bad, check_blob_offsets, fsync_dir, json_blob, new_name,
                      open_npy, sha256_file, write_npy)

_preadv = getattr(os, "preadv", None)

__all__ = ["Segment", "MemSegment", "DiskSegment", "write_segment", "open_segment", "gather_rows"]


class _Buffer:
    """A numpy array with spare capacity: appends are amortised O(new rows)."""

    __slots__ = ("arr", "n")

    def __init__(self, shape_tail: tuple, dtype: Any) -> None:
        self.arr = np.empty((16,) + tuple(shape_tail), dtype=dtype)
        self.n = 0

    @property
    def view(self) -> np.ndarray:
        return self.arr[: self.n]

    def extend(self, block: np.ndarray) -> None:
        need = self.n + len(block)
        if need > len(self.arr):
            cap = max(need, int(len(self.arr) * 1.5) + 16)
            new = np.empty((cap,) + self.arr.shape[1:], dtype=self.arr.dtype)
            new[: self.n] = self.arr[: self.n]
            self.arr = new
        self.arr[self.n: need] = block
        self.n = need

    def trim(self) -> None:
        self.arr = self.arr[: self.n].copy()


class Segment:
    """What search and save need from a segment (see :class:`MemSegment`, :class:`DiskSegment`)."""

    n: int
    dead: np.ndarray
    name: Optional[str] = None

    # channel arrays -------------------------------------------------------------
    def array(self, name: str) -> Optional[np.ndarray]:
        raise NotImplementedError

    def lexical_view(self) -> LexicalView:
        raise NotImplementedError

    # documents ------------------------------------------------------------------
    def doc_id(self, r: int) -> str:
        raise NotImplementedError

    def doc_text(self, r: int) -> str:
        raise NotImplementedError

    def doc_meta(self, r: int) -> dict:
        raise NotImplementedError

    def ids_list(self) -> list[str]:
        raise NotImplementedError

    def metas_list(self) -> list[dict]:
        raise NotImplementedError

    def dense_lists(self) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(centroids, list_ptr, list_rows, list_bits)`` of the segment's dense inverted lists, or ``None``
        (a segment without them is scanned whole)."""
        return None

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of array ``name`` (a fresh array)."""
        return np.asarray(self.array(name)[np.asarray(rows, dtype=np.int64)])

    def take_ranges(self, name: str, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Rows ``starts[i] : starts[i] + lens[i]`` of array ``name``, concatenated (a fresh array)."""
        return np.asarray(self.array(name)[ranges(starts, lens)])

    @property
    def n_dead(self) -> int:
        return int(self.dead[: self.n].sum())

    @property
    def alive(self) -> np.ndarray:
        return ~self.dead[: self.n]

    def nbytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, names in _GROUPS.items():
            out[key] = sum(int(a.nbytes) for a in (self.array(x) for x in names) if a is not None)
        return out


_GROUPS = {
    "dense": ("dense", "dense_bits") + LIST_ARRAYS,
    "sparse": ("lex_indptr", "lex_indices", "lex_values"),
    "sparse_search_copy": ("lex_terms", "lex_term_ptr", "lex_post_rows", "lex_post_values"),
    "colbert": ("col_codes", "col_aux", "col_offsets", "col_prefix"),
}


class MemSegment(Segment):
    """The growing, in-memory tail of an index."""

    def __init__(self, *, dense_dim: Optional[int], dense_dtype: str, colbert: Optional[ColbertCodec],
                 lexical_extras: Sequence[str] = (), lexical: bool = False) -> None:
        self.n = 0
        self._doc_bytes = 0
        self._dead = _Buffer((), np.bool_)
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._metas: list[dict] = []
        self.bufs: dict[str, _Buffer] = {}
        if dense_dim is not None:
            self.bufs["dense"] = _Buffer((dense_dim,), np.dtype(dense_dtype))
            self.bufs["dense_bits"] = _Buffer(((dense_dim + 7) // 8,), np.uint8)
        self.lexical = lexical
        self.lexical_extras = tuple(lexical_extras)
        if lexical:
            self.bufs["lex_indices"] = _Buffer((), np.int32)
            self.bufs["lex_values"] = _Buffer((), np.float32)
            self.bufs["lex_indptr"] = _Buffer((), np.int64)
            self.bufs["lex_indptr"].extend(np.zeros(1, np.int64))
            for x in self.lexical_extras:
                self.bufs[f"lex_x_{x}"] = _Buffer((), np.float32)
        self.codec = colbert
        if colbert is not None:
            self.bufs["col_codes"] = _Buffer((colbert.code_width,), colbert.code_dtype)
            if colbert.quantized:
                self.bufs["col_aux"] = _Buffer((), np.float32)
            self.bufs["col_offsets"] = _Buffer((), np.int64)
            self.bufs["col_offsets"].extend(np.zeros(1, np.int64))
        self._lexview: Optional[LexicalView] = None

    @property
    def dead(self) -> np.ndarray:  # type: ignore[override]
        return self._dead.arr

    def append(self, batch: dict) -> None:
        """Append prepared rows (everything validated; see ``HybridIndex._prepare``)."""
        k = len(batch["ids"])
        if "dense" in self.bufs:
            self.bufs["dense"].extend(batch["dense"])
            self.bufs["dense_bits"].extend(batch["dense_bits"] if "dense_bits" in batch else dense_bits(batch["dense"]))
        if self.lexical:
            blk: LexicalBlock = batch["lexical"]
            self.bufs["lex_indices"].extend(blk.indices)
            self.bufs["lex_values"].extend(blk.values)
            self.bufs["lex_indptr"].extend(blk.indptr[1:] + self.bufs["lex_indptr"].view[-1])
            for x in self.lexical_extras:
                self.bufs[f"lex_x_{x}"].extend(np.asarray(batch["lexical_extras"][x], dtype=np.float32))
        if self.codec is not None:
            self.bufs["col_codes"].extend(batch["col_codes"])
            if self.codec.quantized:
                self.bufs["col_aux"].extend(batch["col_aux"])
            self.bufs["col_offsets"].extend(batch["col_offsets"][1:] + self.bufs["col_offsets"].view[-1])
        self._dead.extend(np.zeros(k, dtype=np.bool_))
        self._ids.extend(batch["ids"])
        self._texts.extend(batch["texts"])
        self._metas.extend(batch["metas"])
        # Python strings + a rough 200 bytes of dict per row for the id and metadata
        self._doc_bytes += sum(len(t) + len(i) + 200 for t, i in zip(batch["texts"], batch["ids"]))
        self.n += k
        self._lexview = None
        self.__dict__.pop("_meta_index", None)

    def array(self, name: str) -> Optional[np.ndarray]:
        if name.startswith("lex_") and name in ("lex_terms", "lex_term_ptr", "lex_post_rows", "lex_post_values"):
            if not self.lexical:
                return None
            v = self.lexical_view()
            return getattr(v, name[4:])
        b = self.bufs.get(name)
        return None if b is None else b.view

    def held_bytes(self) -> int:
        """Memory the tail holds: array buffers (with their spare capacity) and documents (approx.)."""
        return sum(int(b.arr.nbytes) for b in self.bufs.values()) + int(self._dead.arr.nbytes) + self._doc_bytes

    def lexical_view(self) -> LexicalView:
        if self._lexview is None:
            blk = LexicalBlock(self.bufs["lex_indptr"].view, self.bufs["lex_indices"].view, self.bufs["lex_values"].view)
            extras = {x: self.bufs[f"lex_x_{x}"].view for x in self.lexical_extras}
            self._lexview = LexicalView.from_block(blk, extras)
        self._lexview.alive = self.alive
        return self._lexview

    def doc_id(self, r: int) -> str:
        return self._ids[r]

    def doc_text(self, r: int) -> str:
        return self._texts[r]

    def doc_meta(self, r: int) -> dict:
        return copy.deepcopy(self._metas[r])

    def ids_list(self) -> list[str]:
        return self._ids

    def metas_list(self) -> list[dict]:
        return self._metas

    def doc_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for key, values in (("doc_ids", self._ids), ("doc_texts", self._texts), ("doc_metas", self._metas)):
            blob, off = json_blob(values, what=key)
            out[key], out[key + "_off"] = blob, off
        return out


class DiskSegment(Segment):
    """A committed segment, memory-mapped read-only."""

    def __init__(self, root: Path, record: dict, arrays: dict[str, np.ndarray], dead: np.ndarray,
                 lexical_extras: Sequence[str]) -> None:
        self.root = root
        self.name = record["name"]
        self.record = record
        self.n = int(record["rows"])
        self.arrays = arrays
        # plain ndarray views of the maps for search (slicing a np.memmap costs a Python-level
        # __array_finalize__ per slice); ``arrays`` keeps the maps (file name and offset for reads)
        self._plain = {k: (np.asarray(v) if isinstance(v, np.memmap) else v) for k, v in arrays.items()}
        self._dead = dead
        self.committed_dead = int(dead.sum())
        self.lexical_extras = tuple(lexical_extras)
        self._ids: Optional[list[str]] = None
        self._metas: Optional[list[dict]] = None
        self._lexview: Optional[LexicalView] = None
        self._lists_checked = False

    @property
    def dead(self) -> np.ndarray:  # type: ignore[override]
        return self._dead

    @property
    def folder(self) -> Path:
        return self.root / SEGMENT_DIR / self.name

    @property
    def file_bytes(self) -> int:
        """Bytes of the segment's array files (as its manifest record gives them)."""
        return sum(int(r["bytes"]) for r in self.record["files"].values())

    def array(self, name: str) -> Optional[np.ndarray]:
        return self._plain.get(name)

    def dense_lists(self) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The lists, checked in full the first time a search uses them (every row once, finite
        centroids: O(n) reads, kept out of the open)."""
        if "dense_list_rows" not in self._plain:
            return None
        if not self._lists_checked:
            problem = check_lists(self.n, self._plain["dense"].shape[1], self._plain)
            if problem:
                raise bad(self.folder, problem)
            self._lists_checked = True
        a = self._plain
        return a["dense_centroids"], a["dense_list_ptr"], a["dense_list_rows"], a["dense_list_bits"]

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Single rows (dense rescoring) are read through the map: a touched row's page stays mapped,
        the next query that needs a row near it pays nothing (at most the whole array becomes resident,
        2 KiB per float16 1024-d passage: 2 GB per million, all clean page cache)."""
        rows = np.asarray(rows, dtype=np.int64)
        a = self._plain.get(name)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(a)):
            raise IndexError(f"rows out of range for {name} of segment {self.name}")
        return np.asarray(a[rows])

    def take_ranges(self, name: str, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Reads the ranges from the file (``pread`` into one buffer) rather than through the memory
        map: the ColBERT tokens of the candidates (the bulk of the index, read at random) then never
        become pages mapped into the process (the kernel maps up to 64 KiB around each touched page
        of a mapping), so resident memory stays what the search really scans; the fallback is the
        mapping."""
        a = self.arrays.get(name)
        starts = np.asarray(starts, dtype=np.int64)
        lens = np.asarray(lens, dtype=np.int64)
        if len(starts) and (int(starts.min()) < 0 or int((starts + lens).max()) > len(a) or int(lens.min()) < 0):
            raise IndexError(f"rows out of range for {name} of segment {self.name}")
        if _preadv is None or not isinstance(a, np.memmap) or not getattr(a, "filename", None) or a.ndim == 0:
            return super().take_ranges(name, starts, lens)
        row_bytes = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
        out = np.empty((int(lens.sum()),) + a.shape[1:], dtype=a.dtype)
        if out.size == 0:
            return out
        view = memoryview(out.reshape(-1).view(np.uint8))
        try:
            fd = os.open(a.filename, os.O_RDONLY)
        except OSError:  # the file went away (another writer compacted): the mapping still reads it
            return super().take_ranges(name, starts, lens)
        try:
            pos = 0
            base = int(a.offset)
            for s, ln in zip(starts.tolist(), lens.tolist()):
                nb = ln * row_bytes
                if nb and _preadv(fd, [view[pos:pos + nb]], base + s * row_bytes) != nb:
                    raise bad(self.folder, f"{name}.npy is shorter than its header says")
                pos += nb
        finally:
            os.close(fd)
        return out

    def lexical_view(self) -> LexicalView:
        if self._lexview is None:
            a = self._plain
            self._lexview = LexicalView(self.n, a["lex_indptr"], a["lex_indices"], a["lex_values"], a["lex_terms"],
                                        a["lex_term_ptr"], a["lex_post_rows"], a["lex_post_values"], None,
                                        {x: a[f"lex_x_{x}"] for x in self.lexical_extras})
        self._lexview.alive = self.alive
        return self._lexview

    def _blob(self, key: str, r: int) -> str:
        off = self._plain[key + "_off"]
        a, b = int(off[r]), int(off[r + 1])
        try:
            return bytes(self._plain[key][a:b]).decode("utf-8")
        except UnicodeDecodeError:
            raise bad(self.folder, f"{key} of row {r} is not UTF-8") from None

    def doc_id(self, r: int) -> str:
        return self._ids[r] if self._ids is not None else self._blob("doc_ids", r)

    def doc_text(self, r: int) -> str:
        return self._blob("doc_texts", r)

    def doc_meta(self, r: int) -> dict:
        if self._metas is not None:
            return copy.deepcopy(self._metas[r])
        return _parse_meta(self.folder, r, self._blob("doc_metas", r))

    def ids_list(self) -> list[str]:
        if self._ids is None:
            self._ids = _split_blob(self.folder, "doc_ids", self.arrays["doc_ids"], self.arrays["doc_ids_off"])
        return self._ids

    def metas_list(self) -> list[dict]:
        if self._metas is None:
            raw = _split_blob(self.folder, "doc_metas", self.arrays["doc_metas"], self.arrays["doc_metas_off"])
            self._metas = [_parse_meta(self.folder, r, s) for r, s in enumerate(raw)]
        return self._metas

    def verify(self) -> None:
        """Checksums of every file and every value check (reads the whole segment)."""
        files = dict(self.record["files"])
        if self.record.get("deleted"):
            files[self.record["deleted"]["file"]] = self.record["deleted"]
        for fname, rec in files.items():
            try:
                digest = sha256_file(self.folder / fname)
            except FileNotFoundError:  # removed by a later commit's cleanup while this one was read
                raise IndexFormatError(f"{str(self.folder / fname)!r} is missing; the index is incomplete: rebuild "
                                       "it or restore a backup") from None
            if digest != rec["sha256"]:
                raise IndexFormatError(f"{str(self.folder / fname)!r} does not match its SHA-256 checksum in the "
                                       "manifest: the file is corrupted; rebuild the index or restore a backup")
        check_values(self)


def _split_blob(folder: Path, key: str, blob: np.ndarray, off: np.ndarray) -> list[str]:
    data = bytes(blob)
    offs = np.asarray(off).tolist()
    try:
        return [data[offs[i]:offs[i + 1]].decode("utf-8") for i in range(len(offs) - 1)]
    except UnicodeDecodeError:
        raise bad(folder, f"{key} is not UTF-8") from None


def _parse_meta(folder: Path, r: int, s: str) -> dict:
    try:
        m = json.loads(s)
    except (ValueError, RecursionError):
        raise bad(folder, f"the metadata of row {r} is not valid JSON") from None
    if not isinstance(m, dict):
        raise bad(folder, f"the metadata of row {r} is a {type(m).__name__}, not an object")
    return m


# --------------------------------------------------------------------------- writing / opening
def gather_rows(seg: Segment, rows: np.ndarray, *, codec: Optional[ColbertCodec], lexical_extras: Sequence[str]) -> dict:
    """A batch (as ``MemSegment.append`` takes) of the given rows of ``seg`` (for compaction)."""
    rows = np.asarray(rows, dtype=np.int64)
    batch: dict[str, Any] = {"ids": [seg.doc_id(int(r)) for r in rows], "texts": [seg.doc_text(int(r)) for r in rows],
                             "metas": [seg.doc_meta(int(r)) for r in rows]}
    d = seg.array("dense")
    if d is not None:
        batch["dense"] = np.asarray(d[rows])
        batch["dense_bits"] = np.asarray(seg.array("dense_bits")[rows])
    ip = seg.array("lex_indptr")
    if ip is not None:
        ip = np.asarray(ip)
        lens = ip[1:][rows] - ip[:-1][rows]
        sel = ranges(ip[:-1][rows], lens)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        batch["lexical"] = LexicalBlock(indptr, np.asarray(seg.array("lex_indices")[sel]),
                                        np.asarray(seg.array("lex_values")[sel]))
        batch["lexical_extras"] = {x: np.asarray(seg.array(f"lex_x_{x}")[rows]) for x in lexical_extras}
    off = seg.array("col_offsets")
    if off is not None and codec is not None:
        off = np.asarray(off)
        lens = off[1:][rows] - off[:-1][rows]
        sel = ranges(off[:-1][rows], lens)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        batch["col_codes"] = np.asarray(seg.array("col_codes")[sel])
        if codec.quantized:
            batch["col_aux"] = np.asarray(seg.array("col_aux")[sel])
        batch["col_offsets"] = offsets
    return batch


def write_segment(root: Path, seg: MemSegment, name: Optional[str] = None) -> dict:
    """Write the tail as a new segment folder under ``root/segments``; returns its manifest record
    (the segment is not part of the index until a manifest naming it is committed). ``name``: a
    segment folder the caller created (empty) for it."""
    if name is None:
        name = new_name("seg")
        (root / SEGMENT_DIR / name).mkdir(parents=True)
    folder = root / SEGMENT_DIR / name
    if not folder.is_dir() or folder.is_symlink():
        raise FileNotFoundError(f"the segment folder {str(folder)!r} is not there")
    arrays: dict[str, np.ndarray] = {}
    for key, buf in seg.bufs.items():
        arrays[key] = buf.view
    if "dense" in arrays and seg.n >= MIN_ROWS:
        arrays.update(build_lists(arrays["dense"], bits=arrays["dense_bits"]))
    cols = seg.codec.stored_prefix_cols() if seg.codec is not None else None
    if cols is not None:  # the MaxSim estimate's columns, contiguous (it reads 8 bytes a token, not 128)
        arrays["col_prefix"] = np.ascontiguousarray(arrays["col_codes"][:, :cols])
    if seg.lexical:
        v = seg.lexical_view()
        arrays.update({"lex_terms": v.terms, "lex_term_ptr": v.term_ptr, "lex_post_rows": v.post_rows,
                       "lex_post_values": v.post_values})
    arrays.update(seg.doc_arrays())
    files = {f"{k}.npy": write_npy(folder / f"{k}.npy", a) for k, a in arrays.items()}
    record: dict[str, Any] = {"name": name, "rows": seg.n, "files": files, "deleted": None}
    dead = np.flatnonzero(seg.dead[: seg.n])
    if len(dead):
        record["deleted"] = write_tombstones(folder, dead)
    fsync_dir(folder)
    fsync_dir(folder.parent)
    return record


def write_tombstones(folder: Path, dead_rows: np.ndarray) -> dict:
    fname = new_name("deleted") + ".npy"
    rec = write_npy(folder / fname, np.asarray(dead_rows, dtype=np.int64))
    rec["file"] = fname
    rec["count"] = int(len(dead_rows))
    return rec


def expected_arrays(n: int, rec: dict, *, dense: Optional[tuple[int, str]], lexical_extras: Optional[Sequence[str]],
                    codec: Optional[ColbertCodec], root: Any) -> dict[str, tuple[tuple, str]]:
    """``{array name: (shape, dtype)}`` a segment of ``n`` rows must hold (sizes of variable parts
    come from the manifest record and are cross-checked against the offsets after mapping)."""
    files = rec["files"]

    def length(fname: str) -> int:
        r = files.get(fname + ".npy")
        if not isinstance(r, dict) or not isinstance(r.get("shape"), list) or not r["shape"]:
            raise bad(root, f"segment {rec['name']} lacks {fname}.npy")
        s = r["shape"][0]
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise bad(root, f"segment {rec['name']}: bad length of {fname}.npy")
        return s

    out: dict[str, tuple[tuple, str]] = {}
    for key in ("doc_ids", "doc_texts", "doc_metas"):
        out[key] = ((length(key),), "uint8")
        out[key + "_off"] = ((n + 1,), "int64")
    if dense is not None:
        dim, dt = dense
        out["dense"] = ((n, dim), dt)
        out["dense_bits"] = ((n, (dim + 7) // 8), "uint8")
        if any(f"{k}.npy" in files for k in LIST_ARRAYS):  # optional: segments from MIN_ROWS rows
            c = length("dense_centroids")
            out.update({"dense_centroids": ((c, dim), "float32"), "dense_list_ptr": ((c + 1,), "int64"),
                        "dense_list_rows": ((n,), "int32"), "dense_list_bits": ((n, (dim + 7) // 8), "uint8")})
    if lexical_extras is not None:
        nnz = length("lex_indices")
        u = length("lex_terms")
        out.update({"lex_indptr": ((n + 1,), "int64"), "lex_indices": ((nnz,), "int32"),
                    "lex_values": ((nnz,), "float32"), "lex_terms": ((u,), "int32"),
                    "lex_term_ptr": ((u + 1,), "int64"), "lex_post_rows": ((nnz,), "int32"),
                    "lex_post_values": ((nnz,), "float32")})
        for x in lexical_extras:
            out[f"lex_x_{x}"] = ((n,), "float32")
    if codec is not None:
        t = length("col_codes")
        out["col_codes"] = ((t, codec.code_width), str(codec.code_dtype))
        if codec.quantized:
            out["col_aux"] = ((t,), "float32")
        out["col_offsets"] = ((n + 1,), "int64")
        if "col_prefix.npy" in files:  # optional (segments written before it existed lack it)
            r = files["col_prefix.npy"]
            shape = r.get("shape") if isinstance(r, dict) else None
            cols = shape[1] if isinstance(shape, list) and len(shape) == 2 else None
            if isinstance(cols, bool) or not isinstance(cols, int) or not 1 <= cols < codec.code_width:
                raise bad(root, f"segment {rec['name']}: bad shape of col_prefix.npy")
            out["col_prefix"] = ((t, cols), str(codec.code_dtype))
    return out


def open_segment(root: Path, rec: Any, *, dense: Optional[tuple[int, str]], lexical_extras: Optional[Sequence[str]],
                 codec: Optional[ColbertCodec], vocab_size: Optional[int], verify: Optional[bool]) -> DiskSegment:
    """Map one committed segment after checking its record, headers, sizes and offsets.
    ``verify``: True = checksums + values now; None = that only for segments under
    ``VERIFY_AT_OPEN_BYTES``; False = structure only."""
    from .storage import _NAME_RE, _check_record

    if not isinstance(rec, dict):
        raise bad(root, "a segment record is not an object")
    name, n, files = rec.get("name"), rec.get("rows"), rec.get("files")
    if not isinstance(name, str) or not _NAME_RE.match(name) or not name.startswith("seg-"):
        raise bad(root, f"segment name {str(name)[:80]!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**40:
        raise bad(root, f"segment {name} rows={str(n)[:40]!r}")
    if not isinstance(files, dict):
        raise bad(root, f"segment {name} has no file list")
    want = expected_arrays(n, rec, dense=dense, lexical_extras=lexical_extras, codec=codec, root=root)
    if set(files) != {f"{k}.npy" for k in want}:
        extra = sorted(set(files) - {f"{k}.npy" for k in want})
        missing = sorted({f"{k}.npy" for k in want} - set(files))
        raise bad(root, f"segment {name} files: missing {missing}, unexpected {extra[:5]}")
    folder = root / SEGMENT_DIR / name
    arrays = {k: open_npy(folder / f"{k}.npy", files[f"{k}.npy"], root=root, shape=shape, dtype=dt)
              for k, (shape, dt) in want.items()}
    dead = np.zeros(n, dtype=np.bool_)
    drec = rec.get("deleted")
    if drec is not None:
        drec = _check_record(root, "deleted", drec)
        fname, count = drec.get("file"), drec.get("count")
        if (not isinstance(fname, str) or not fname.endswith(".npy") or not _NAME_RE.match(fname[:-4])
                or isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n):
            raise bad(root, f"segment {name} tombstone record")
        rows = open_npy(folder / fname, drec, root=root, shape=(count,), dtype="int64", load=True)
        if count and (rows.min() < 0 or rows.max() >= n or np.any(np.diff(rows) <= 0)):
            raise bad(root, f"segment {name} tombstones are not sorted rows of the segment")
        dead[rows] = True
    # structure: O(n) reads of the offsets only
    for key in ("doc_ids", "doc_texts", "doc_metas"):
        check_blob_offsets(folder, key, arrays[key + "_off"], len(arrays[key]))
    if lexical_extras is not None:
        check_blob_offsets(folder, "lex_indptr", arrays["lex_indptr"], len(arrays["lex_indices"]))
        check_blob_offsets(folder, "lex_term_ptr", arrays["lex_term_ptr"], len(arrays["lex_post_rows"]))
        terms = arrays["lex_terms"]  # O(distinct terms): a query finds its terms by binary search in it
        if len(terms) and (int(terms[0]) < 0 or (len(terms) > 1 and bool((np.diff(terms) <= 0).any()))
                           or (vocab_size is not None and int(terms[-1]) >= vocab_size)):
            raise bad(folder, "lex_terms are not increasing term ids of the vocabulary")
    if codec is not None:
        check_blob_offsets(folder, "col_offsets", arrays["col_offsets"], len(arrays["col_codes"]))
    if "dense_list_ptr" in arrays:
        check_blob_offsets(folder, "dense_list_ptr", arrays["dense_list_ptr"], n)
    seg = DiskSegment(root, rec, arrays, dead, lexical_extras or ())
    seg.vocab_size = vocab_size  # type: ignore[attr-defined]
    seg.codec = codec  # type: ignore[attr-defined]
    if verify or (verify is None and seg.file_bytes <= VERIFY_AT_OPEN_BYTES):
        seg.verify()
    return seg


def check_values(seg: DiskSegment) -> None:
    """Every value check that needs the data: finite floats, term ids in range and sorted
    postings, unique string ids, object metadata. Raises :class:`IndexFormatError`."""
    folder = seg.folder
    a = seg.arrays
    step = 1 << 22

    def finite(key: str) -> None:
        arr = a.get(key)
        if arr is None:
            return
        flat = arr.reshape(-1) if arr.ndim > 1 else arr
        for i in range(0, len(flat), step):
            if not np.isfinite(flat[i:i + step]).all():
                raise bad(folder, f"{key} holds NaN or infinity")

    for key in ("dense", "lex_values", "lex_post_values", "col_aux") + tuple(f"lex_x_{x}" for x in seg.lexical_extras):
        finite(key)
    if "col_codes" in a and a["col_codes"].dtype.kind == "f":
        finite("col_codes")
    if "col_prefix" in a:
        pre, codes = a["col_prefix"], a["col_codes"]
        chunk = step // max(pre.shape[1], 1)
        for i in range(0, len(pre), chunk):
            if not np.array_equal(pre[i:i + chunk], codes[i:i + chunk, :pre.shape[1]]):
                raise bad(folder, "col_prefix does not match col_codes")
    if "dense" in a and len(a["dense"]):
        bits = np.packbits(np.asarray(a["dense"]) > 0, axis=1)
        if not np.array_equal(bits, a["dense_bits"]):
            raise bad(folder, "dense_bits do not match the dense vectors")
        if "dense_list_rows" in a:
            problem = check_lists(seg.n, a["dense"].shape[1], a, bits=a["dense_bits"])
            if problem:
                raise bad(folder, problem)
    vocab = getattr(seg, "vocab_size", None)
    if "lex_indices" in a and len(a["lex_indices"]):
        idx = a["lex_indices"]
        top = (2**31 - 2) if vocab is None else vocab - 1
        if int(idx.min()) < 0 or int(idx.max()) > top:
            raise bad(folder, "lexical token id outside the vocabulary")
        terms = a["lex_terms"]
        if len(terms) > 1 and bool(np.any(np.diff(terms) <= 0)):
            raise bad(folder, "lexical postings are not sorted by term")
        rows = a["lex_post_rows"]
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= seg.n):
            raise bad(folder, "lexical postings point outside the segment")
        # the postings must be the inverted CSR: same multiset of (row, term, value)
        blk = LexicalBlock(np.asarray(a["lex_indptr"]), np.asarray(idx), np.asarray(a["lex_values"]))
        p = build_postings(blk)
        if not (np.array_equal(p["terms"], terms) and np.array_equal(p["term_ptr"], a["lex_term_ptr"])
                and np.array_equal(p["post_rows"], rows) and np.array_equal(p["post_values"], a["lex_post_values"])):
            raise bad(folder, "the lexical postings do not match the lexical rows")
    ids = seg.ids_list()
    if len(set(ids)) != len(ids):
        raise bad(folder, "duplicate ids in one segment")
    seg.metas_list()
    for r in range(seg.n):  # texts must decode
        seg.doc_text(r)
