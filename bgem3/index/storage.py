"""On-disk layout of a saved index: immutable segments, tombstones, one manifest, atomic commits.

::

    folder/
      manifest.json              the commit point: format, model, channels, codecs, and for every
                                 segment its files (bytes, SHA-256, shape, dtype) and tombstones
      codec-<hex>/rotation.npy   the ColBERT codec's rotation and centre (quantised codecs only)
      codec-<hex>/center.npy
      segments/seg-<hex>/*.npy   one immutable segment: dense, lexical CSR + postings, ColBERT
                                 codes + offsets, documents (ids, texts, metadata as UTF-8 blobs)
      segments/seg-<hex>/deleted-<hex>.npy   rows deleted since the segment was written
      attach-<hex>.json          a file committed with the index (``bgem3 index``'s source list)
      write.lock                 the writer lock (:mod:`bgem3.index.locking`); never deleted

A save writes only what is new (new segments, changed tombstone files), fsyncs them, then
writes ``manifest.json.tmp-<hex>`` and renames it over ``manifest.json``: that one rename is the
commit, so a crash at any moment leaves either the previous or the new manifest, and every file
a manifest names was complete before it was written. Files no manifest names (segments of an
interrupted save, replaced tombstones) are removed by the next save, except an uncommitted
segment a live process holds (its ``spill``). Nothing outside the names above is ever deleted,
and nothing through a symlink.

Opening memory-maps every array (``np.memmap``, read-only) after checking each ``.npy`` header
against the manifest (shape, dtype, exact file size) before anything is mapped; offsets and
document blobs are checked structurally; checksums and values (NaN/inf, ids, metadata) are
verified at open for small segments and by :func:`verify` / ``HybridIndex.verify()`` for all.

Example::

    >>> import tempfile, numpy as np
    >>> from bgem3.index.storage import is_saved_index
    >>> is_saved_index(tempfile.mkdtemp())
    False
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .errors import IndexFormatError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "is_saved_index", "read_manifest", "write_npy",
           "open_npy", "commit_manifest", "fsync_dir", "new_name", "SEGMENT_DIR", "check_blob_offsets",
           "MAX_MANIFEST_BYTES", "VERIFY_AT_OPEN_BYTES", "sha256_file"]

FORMAT_NAME = "bgem3.HybridIndex"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SEGMENT_DIR = "segments"
#: a manifest larger than this is not ours (1M segments would be ~200 MB; we write ~1 KB per segment)
MAX_MANIFEST_BYTES = 64 << 20
#: segments up to this size are checksummed and value-checked when opened; larger ones by verify()
VERIFY_AT_OPEN_BYTES = 64 << 20
_NAME_RE = re.compile(r"^(seg|codec|deleted)-[0-9a-f]{16}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ALLOWED_DTYPES = {"float32", "float16", "int8", "uint8", "int32", "int64", "bool"}
#: the first format's files (read by bgem3.index.legacy, removed once a v2 manifest replaces them)
V1_FILES = ("dense.npy", "sparse_indptr.npy", "sparse_indices.npy", "sparse_data.npy", "colbert.npy",
            "colbert_offsets.npy", "documents.json")


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def bad(root: Any, what: str) -> IndexFormatError:
    return IndexFormatError(f"the index at {str(root)!r} is inconsistent ({what}); rebuild it or restore a backup")


# --------------------------------------------------------------------------- writing
class _HashingWriter:
    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.h.update(mv)
        self.size += len(mv)
        return self.f.write(mv)


def write_npy(path: Path, arr: np.ndarray) -> dict:
    """Write ``arr`` as ``.npy`` (no pickle), fsync; returns its manifest record."""
    arr = np.ascontiguousarray(arr)
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        np.lib.format.write_array(w, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": w.size, "sha256": w.h.hexdigest(), "shape": list(arr.shape), "dtype": str(arr.dtype)}


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def commit_manifest(root: Path, manifest: dict) -> None:
    """The commit: write ``manifest.json.tmp-<hex>``, fsync, rename over ``manifest.json``, fsync the folder."""
    data = json.dumps(manifest, indent=1, ensure_ascii=True, allow_nan=False).encode("ascii")
    tmp = root / f"{MANIFEST}.tmp-{uuid.uuid4().hex[:16]}"
    try:
        write_bytes_durably(tmp, data)
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(root)


# --------------------------------------------------------------------------- reading
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _check_record(root: Any, name: str, rec: Any) -> dict:
    if not isinstance(rec, dict):
        raise bad(root, f"the manifest's record of {name!r} is not an object")
    size, sha = rec.get("bytes"), rec.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad(root, f"the manifest's size of {name!r} is {size!r}, not a non-negative integer")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise bad(root, f"the manifest's SHA-256 of {name!r} is not 64 hex digits")
    if "shape" in rec or "dtype" in rec:
        shape, dtype = rec.get("shape"), rec.get("dtype")
        if (not isinstance(shape, list) or len(shape) > 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**50 for s in shape)):
            raise bad(root, f"the manifest's shape of {name!r} is {shape!r}")
        if dtype not in _ALLOWED_DTYPES:
            raise bad(root, f"the manifest's dtype of {name!r} is {dtype!r}")
    return rec


def open_npy(path: Path, rec: Mapping[str, Any], *, root: Any, shape: Optional[tuple] = None,
             dtype: Optional[Any] = None, load: bool = False) -> np.ndarray:
    """Memory-map (or, with ``load``, read) one ``.npy`` after checking its header against the
    manifest record and the expected ``shape``/``dtype``, and its size against both, BEFORE
    anything is allocated. Raises :class:`IndexFormatError` naming the file."""
    rec = _check_record(root, path.name, rec)
    want_dtype = np.dtype(dtype if dtype is not None else rec["dtype"])
    want_shape = tuple(shape) if shape is not None else tuple(rec["shape"])
    if str(want_dtype) != rec.get("dtype") or list(want_shape) != rec.get("shape"):
        raise bad(root, f"{path.name} is listed as {rec.get('dtype')}{rec.get('shape')}, expected "
                        f"{want_dtype}{list(want_shape)}")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IndexFormatError(f"{str(path)!r} is missing; the index is incomplete: rebuild it or restore a "
                               "backup") from None
    if not path.is_file():
        raise IndexFormatError(f"{str(path)!r} is not a file; the index is corrupted: rebuild it")
    if st.st_size != rec["bytes"]:
        raise IndexFormatError(f"{str(path)!r} has {st.st_size} bytes but the manifest says {rec['bytes']}: the "
                               "file is truncated or was replaced; rebuild the index or restore a backup")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f, max_header_size=4096)
            elif version in ((2, 0), (3, 0)):
                hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(f, max_header_size=4096)
            else:  # pragma: no cover - read_magic rejects others
                raise ValueError(f"npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise IndexFormatError(f"{str(path)!r} is not a readable .npy array ({exc}); the index is corrupted: "
                               "rebuild it or restore a backup") from None
    if hdtype != want_dtype or tuple(hshape) != want_shape or fortran or hdtype.hasobject:
        raise IndexFormatError(f"{str(path)!r} holds {hdtype}{list(hshape)} but the manifest says "
                               f"{want_dtype}{list(want_shape)}; the index is corrupted: rebuild it")
    nbytes = int(np.prod(want_shape, dtype=np.int64)) * want_dtype.itemsize
    if offset + nbytes != st.st_size:
        raise IndexFormatError(f"{str(path)!r} has {st.st_size} bytes, but its header says {offset + nbytes}; "
                               "the file is truncated or corrupted: rebuild the index or restore a backup")
    if nbytes == 0:
        return np.zeros(want_shape, dtype=want_dtype)
    try:
        if load:
            with open(path, "rb") as f:
                f.seek(offset)
                return np.frombuffer(f.read(nbytes), dtype=want_dtype).reshape(want_shape).copy()
        return np.memmap(path, dtype=want_dtype, mode="r", offset=offset, shape=want_shape)
    except FileNotFoundError:  # removed since it was checked (a commit's cleanup raced this open)
        raise IndexFormatError(f"{str(path)!r} is missing; the index is incomplete: rebuild it or restore a "
                               "backup") from None


def check_blob_offsets(root: Any, name: str, offsets: np.ndarray, total: int) -> None:
    """``offsets`` run from 0 to ``total`` without going down (O(n), no copy of the data)."""
    if len(offsets) == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != total:
        raise bad(root, f"{name} offsets do not run from 0 to {total}")
    if len(offsets) > 1 and bool((np.diff(offsets) < 0).any()):
        raise bad(root, f"{name} offsets go down")


def read_manifest(root: Path) -> dict:
    """``manifest.json`` of a v1 or v2 index, parsed with bounded size and depth; its top-level
    fields are type-checked here, segment records by the segment reader."""
    path = root / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{str(path)!r} is missing: {str(root)!r} is not a saved HybridIndex "
                               "(save one with HybridIndex.save(folder))")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{str(path)!r} is {size} bytes, larger than any manifest bgem3 writes "
                               f"({MAX_MANIFEST_BYTES}); it is not a HybridIndex manifest")
    with open(path, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        kind = "nested too deeply" if isinstance(exc, RecursionError) else f"not valid JSON ({exc})"
        raise IndexFormatError(f"{str(path)!r} is {kind}; the index is corrupted: rebuild it "
                               "or restore a backup") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{str(path)!r} is not a HybridIndex manifest (a JSON {type(manifest).__name__}, "
                               "not an object)")
    if manifest.get("format") != FORMAT_NAME:
        fmt = manifest.get("format")
        raise IndexFormatError(f"{str(path)!r} is not a HybridIndex manifest (format={str(fmt)[:80]!r}); "
                               f"expected format {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in (1, FORMAT_VERSION):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = ("it was written by a newer bgem3: upgrade bgem3 (pip install -U bgem3)" if newer else
               "rebuild the index with this version of bgem3")
        raise IndexFormatError(f"{str(path)!r} has format_version {str(version)[:40]}, but this bgem3 reads "
                               f"versions 1 and {FORMAT_VERSION}; {fix}")
    return manifest


def _lists_only_existing_files(root: Path, manifest: dict) -> bool:
    """Every file the manifest names exists with the size it says (cheap: stat only)."""
    try:
        if manifest.get("format_version") == 1:
            files = manifest.get("files")
            if not isinstance(files, dict) or not files:
                return False
            return all(isinstance(rec, dict) and isinstance(rec.get("bytes"), int)
                       and (root / name).is_file() and (root / name).stat().st_size == rec["bytes"]
                       for name, rec in files.items() if name in V1_FILES)
        segments = manifest.get("segments")
        if not isinstance(segments, list):
            return False
        for seg in segments:
            name = seg.get("name") if isinstance(seg, dict) else None
            if not isinstance(name, str) or not _NAME_RE.match(name):
                return False
            files = seg.get("files")
            if not isinstance(files, dict):
                return False
            for fname, rec in files.items():
                p = root / SEGMENT_DIR / name / str(fname)
                if not (isinstance(rec, dict) and isinstance(rec.get("bytes"), int) and p.is_file()
                        and p.stat().st_size == rec["bytes"]):
                    return False
        return True
    except (OSError, AttributeError, TypeError, ValueError):
        return False


def is_saved_index(folder: Any) -> bool:
    """True only for a folder that verifiably holds a saved HybridIndex: its ``manifest.json`` is
    a HybridIndex manifest (format name and version) and every file it lists exists with the
    size it records. A folder that merely contains some ``manifest.json`` is NOT an index (it
    is never replaced or deleted)."""
    root = Path(folder)
    for _ in range(5):  # a commit that replaced the manifest (and removed old files) meanwhile: look again
        try:
            if not root.is_dir():
                return False
            manifest = read_manifest(root)
        except (IndexFormatError, OSError):
            return False
        if _lists_only_existing_files(root, manifest):
            return True
        try:
            if read_manifest(root) == manifest:
                return False
        except (IndexFormatError, OSError):
            return False
    return False


def holds_only_uncommitted_segments(folder: Any) -> bool:
    """True for a folder whose only content is ``segments/`` holding only segment folders of ours
    (``seg-<16 hex>`` with ``.npy`` files), and the writer lock file: what ``HybridIndex.spill``
    wrote into a new folder before any manifest was committed (a run killed before its save).
    Such a folder may be saved into (its segments are then removed as leftovers); anything else
    is not ours."""
    from .locking import LOCK_NAME

    root = Path(folder)
    try:
        if not root.is_dir() or root.is_symlink():
            return False
        entries = [p for p in root.iterdir() if not (p.name == LOCK_NAME and p.is_file() and not p.is_symlink())]
        if not entries:
            return True
        if [p.name for p in entries] != [SEGMENT_DIR] or not entries[0].is_dir() or entries[0].is_symlink():
            return False
        for seg in entries[0].iterdir():
            if not (seg.is_dir() and not seg.is_symlink() and _NAME_RE.match(seg.name) and seg.name.startswith("seg-")):
                return False
            for f in seg.iterdir():
                if not (f.is_file() and not f.is_symlink() and f.name.endswith(".npy")):
                    return False
        return True
    except OSError:
        return False


_ATTACH_RE = re.compile(r"^attach-[0-9a-f]{16}\.json$")


def our_leftovers(root: Path, manifest: Optional[dict]) -> list[Path]:
    """Files and folders inside ``root`` that a save of ours wrote and no committed manifest
    names: interrupted-save segments, replaced tombstones, codec folders and attachments, stale
    manifest temp files, and (after a v2 commit over a v1 index) the v1 files. Only our own
    names qualify; never anything reached through a symlink; never an uncommitted segment that
    a live process still holds (a spill of another writer: it keeps a shared ``flock`` on the
    segment folder until its save commits it). Call with the folder's writer lock held."""
    from .locking import try_lock_dir

    out: list[Path] = []
    keep_segments: set[str] = set()
    keep_files: dict[str, set[str]] = {}
    keep_codec: set[str] = set()
    keep_attach: set[str] = set()
    if manifest is not None and manifest.get("format_version") == FORMAT_VERSION:
        for seg in manifest.get("segments") or []:
            keep_segments.add(seg["name"])
            keep_files[seg["name"]] = set(seg["files"]) | ({seg["deleted"]["file"]} if seg.get("deleted") else set())
        codec = manifest.get("codec")
        if isinstance(codec, dict) and isinstance(codec.get("dir"), str):
            keep_codec.add(codec["dir"])
        for rec in (manifest.get("attachments") or {}).values():
            if isinstance(rec, dict) and isinstance(rec.get("file"), str):
                keep_attach.add(rec["file"])
        for name in V1_FILES:
            if (root / name).is_file() and not (root / name).is_symlink():
                out.append(root / name)
    for p in root.glob(f"{MANIFEST}.tmp-*"):
        out.append(p)
    for p in root.glob("attach-*.json"):
        if _ATTACH_RE.match(p.name) and p.name not in keep_attach and p.is_file() and not p.is_symlink():
            out.append(p)
    for p in root.glob("codec-*"):
        if p.is_dir() and not p.is_symlink() and _NAME_RE.match(p.name) and p.name not in keep_codec:
            out.append(p)
    segdir = root / SEGMENT_DIR
    if segdir.is_dir() and not segdir.is_symlink():
        for p in segdir.iterdir():
            if not (p.is_dir() and not p.is_symlink() and _NAME_RE.match(p.name) and p.name.startswith("seg-")):
                continue
            if p.name not in keep_segments:
                try:
                    fd = try_lock_dir(p, shared=False)
                except OSError:
                    continue
                if fd is None:
                    continue  # another live writer's uncommitted segment
                if fd >= 0:
                    os.close(fd)  # nobody can take it meanwhile: new segments are locked under the writer lock
                out.append(p)
                continue
            for f in p.iterdir():
                if f.name.startswith("deleted-") and f.name not in keep_files[p.name] and not f.is_symlink():
                    out.append(f)
    return out


def remove_ours(paths: Iterable[Path]) -> None:
    """Delete what :func:`our_leftovers` found (files, and folders holding only our files);
    never follows a symlink."""
    import shutil

    for p in paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            pass


def json_blob(values: Sequence[Any], *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 encode each value (strings as is, anything else as JSON) into one ``uint8`` blob and
    ``int64`` offsets ``[n+1]``."""
    parts: list[bytes] = []
    for i, v in enumerate(values):
        try:
            s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            parts.append(s.encode("utf-8"))
        except (UnicodeEncodeError, ValueError, TypeError) as exc:  # pragma: no cover - checked at add
            raise ValueError(f"{what}[{i}] cannot be saved ({exc})") from None
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    off = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    blob = np.frombuffer(b"".join(parts), dtype=np.uint8) if parts else np.zeros(0, dtype=np.uint8)
    return blob, off
