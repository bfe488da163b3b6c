"""Saving and opening a :class:`~bgem3.index.HybridIndex` (format 2), and reading format 1.

``save_index`` writes new segments and changed tombstones, then commits the manifest by one
atomic rename (:func:`bgem3.index.storage.commit_manifest`) and removes what no manifest names.
``load_index`` validates the manifest field by field (types, ranges, names) and maps the
segments. A format-1 folder (one set of ``.npy`` files + ``documents.json``) is read whole, as
before, and converted by the next ``save`` to the same folder::

    HybridIndex.load("old_index", load_encoder=False).save("old_index")   # or: bgem3 info --index old_index --upgrade

Example::

    >>> import tempfile, numpy as np
    >>> from bgem3 import HybridIndex
    >>> idx = HybridIndex(None, dim=2, channels=["dense"])
    >>> _ = idx.add_encoded(["a"], ["A"], None, np.ones((1, 2), "float32"))
    >>> d = tempfile.mkdtemp(); idx.save(d); idx.save(d)   # the second save writes only the manifest
    >>> HybridIndex.load(d, load_encoder=False).ids
    ['a']
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .._version import __version__
from ..fingerprint import same_model_name
from .codecs import COLBERT_CODECS, DENSE_CODECS, ColbertCodec
from .errors import IndexFormatError, SaveConflict
from .lexical import LexicalChannel, lexical_channel_from_config
from .locking import DEFAULT_LOCK_TIMEOUT, LOCK_NAME, try_lock_dir, writer_lock
from .search import CHANNELS
from .segment import DiskSegment, MemSegment, gather_rows, open_segment, write_segment, write_tombstones
from .storage import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, SEGMENT_DIR, _NAME_RE, _check_record, bad,
                      commit_manifest, fsync_dir, holds_only_uncommitted_segments, is_saved_index, new_name, open_npy,
                      our_leftovers, read_manifest, remove_ours, write_bytes_durably, write_npy)

__all__ = ["save_index", "spill_tail", "discard_spilled", "load_index", "describe", "recover_interrupted_save",
           "MERGE_MIN_TINY", "SaveConflict", "LOAD_RETRIES"]

#: a reader whose open raced a writer's commit (the files of the manifest it read were replaced and
#: removed meanwhile) opens the new manifest instead, up to this many times
LOAD_RETRIES = 20

#: a save merges the segments smaller than 1/64 of the index once there are this many of them
MERGE_MIN_TINY = 8
#: a compaction writes the live rows of saved segments into new segments of about this many bytes,
#: one at a time (memory stays bounded by one of them whatever the index size)
COMPACT_SEGMENT_BYTES = 512 << 20
#: one save's small-segment merge gathers at most this many bytes of small segments into memory
#: (the smallest first; the others wait for the next saves), so the merge never holds the index
MERGE_BYTES = COMPACT_SEGMENT_BYTES


def _target(directory: Any) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path; got {type(directory).__name__}")
    # resolve symlinks: a symlinked path is saved INTO its target, the link stays a link
    try:
        return Path(directory).expanduser().resolve()
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from ..."
        raise OSError(errno.ELOOP, f"the index path {str(directory)!r} is a symlink loop ({exc}); point it at a "
                      "real folder") from None


def _refuse_symlinked_segments(target: Path, what: str) -> None:
    """A ``segments/`` that is a symlink may be shared with another index (moved to a bigger disk
    and linked back twice): a save's cleanup would delete the other index's segments through it."""
    seg = target / SEGMENT_DIR
    if seg.is_symlink():
        raise ValueError(f"refusing to {what} the index at {str(target)!r}: its {SEGMENT_DIR}/ is a symlink (to "
                         f"{os.readlink(seg)!r}), and a save removes the segments no manifest names there, which "
                         "could be another index's. Move the whole index folder instead (a symlink to the index "
                         "folder itself is fine), or replace the link by a real folder")


def _copy_segment(root: Path, seg: DiskSegment) -> dict:
    """Write a segment that lives in another folder into ``root`` (same arrays, new name)."""
    name = new_name("seg")
    folder = root / SEGMENT_DIR / name
    folder.mkdir(parents=True)
    files = {f"{k}.npy": write_npy(folder / f"{k}.npy", a) for k, a in seg.arrays.items()}
    rec: dict[str, Any] = {"name": name, "rows": seg.n, "files": files, "deleted": None}
    dead = np.flatnonzero(seg.dead)
    if len(dead):
        rec["deleted"] = write_tombstones(folder, dead)
    fsync_dir(folder)
    return rec


def _writable_target(directory: Any, what: str) -> tuple[Path, Optional[dict]]:
    """The folder a save / spill may write into, and its committed manifest (None: new folder).
    Called with the folder's writer lock held (no commit runs meanwhile)."""
    target = _target(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot {what} the index to {str(target)!r}: it is a file; pass a folder path")
    _refuse_symlinked_segments(target, what)
    if target.is_dir() and any(p.name != LOCK_NAME for p in target.iterdir()):
        if is_saved_index(target):
            return target, read_manifest(target)
        if not holds_only_uncommitted_segments(target):
            raise ValueError(f"refusing to {what} over {str(target)!r}: it is a non-empty folder that is not a saved "
                             "HybridIndex (its manifest.json is missing, is not a HybridIndex manifest, or lists "
                             "files that are not there); pass a new or empty folder")
    return target, None


def _spilled(index: Any) -> dict:
    """``{segment name: folder}`` of the segments :func:`spill_tail` wrote and no save committed yet."""
    return index._spilled


def _close_all(fds: dict) -> None:
    for fd in fds.values():
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    fds.clear()


def _pending_locks(index: Any) -> dict:
    """``{segment name: fd}``: a shared ``flock`` on each uncommitted segment folder this handle
    wrote, so that another writer's cleanup leaves it alone while this process lives (and while
    the handle does: a handle dropped without a save releases them, and the next save removes
    the segments)."""
    d = index._pending_fds
    if index._pending_finalizer is None:
        import weakref

        index._pending_finalizer = weakref.finalize(index, _close_all, d)
    return d


def _release_pending(index: Any, names: Any) -> None:
    fds = _pending_locks(index)
    for name in list(names):
        fd = fds.pop(name, None)
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _remove_created(target: Path) -> None:
    """Remove a folder a failed first spill / save created, if it holds nothing but our lock file."""
    try:
        if (target / SEGMENT_DIR).is_dir() and not (target / SEGMENT_DIR).is_symlink():
            (target / SEGMENT_DIR).rmdir()
        if [p.name for p in target.iterdir()] == [LOCK_NAME] and (target / LOCK_NAME).is_file():
            (target / LOCK_NAME).unlink()
        target.rmdir()  # only if empty: never anything else
    except OSError:
        pass


def spill_tail(index: Any, directory: Any, *, lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> int:
    """Write the in-memory rows as one segment in ``directory`` WITHOUT committing it, and map it
    back read-only: the rows leave memory (bounded memory for a long indexing run) but the index
    on disk does not change until ``save(directory)``, which commits the segment as written (no
    second write). A process that dies before that leaves files no manifest names; the next save
    into the folder removes them. While this process lives, other writers' saves leave the
    segment alone (it holds a shared ``flock`` on its folder). Returns the number of rows written."""
    target, _ = _writable_target(directory, "spill")  # refused before anything is written (again under the lock)
    with index._lock:
        tail = index._tail
        if not tail.n:
            return 0
        if tail.n_dead:
            live = np.flatnonzero(tail.alive)
            fresh = index._new_tail()
            if len(live):
                fresh.append(gather_rows(tail, live, codec=index.codec, lexical_extras=index._lexical_extras))
            tail = fresh
        if tail.n:
            created = not target.exists()
            target.mkdir(parents=True, exist_ok=True)
            if created:
                index._spill_created = index._spill_created | {target}
            name = new_name("seg")
            # the segment folder is created and locked under the writer lock: another writer's cleanup
            # (which runs under it) sees either no folder or a locked one, never an unlocked new one
            with writer_lock(target, timeout=lock_timeout):
                _writable_target(target, "spill")
                (target / SEGMENT_DIR).mkdir(exist_ok=True)
                (target / SEGMENT_DIR / name).mkdir()
                fd = try_lock_dir(target / SEGMENT_DIR / name, shared=True)
                _pending_locks(index)[name] = -1 if fd is None else fd
            try:
                rec = write_segment(target, tail, name=name)
            except BaseException:  # a half-written segment (full disk, Ctrl-C): removed, never committed
                remove_ours([target / SEGMENT_DIR / name])
                _release_pending(index, [name])
                if created:
                    _remove_created(target)
                raise
            seg = _reopen(index, target, rec)
            seg._ids = list(tail.ids_list())  # the id map needs them; texts and metadata stay on disk
            index._segments.append(seg)
            _spilled(index)[seg.name] = target
        index._tail = index._new_tail()
        index._idmap = None
        return tail.n


def discard_spilled(index: Any) -> None:
    """Remove the segment files :func:`spill_tail` wrote that no save committed (and a folder it
    created, if nothing else is in it), and drop those rows from ``index``: the on-disk state is
    what it was before the first spill. For a caller abandoning a failed run."""
    with index._lock:
        spilled = _spilled(index)
        if not spilled:
            return
        index._segments = [sg for sg in index._segments if sg.name not in spilled]
        index._idmap = None
        folders = set(spilled.values())
        remove_ours([folder / SEGMENT_DIR / name for name, folder in spilled.items()])
        _release_pending(index, list(spilled))
        spilled.clear()
        for folder in folders & index._spill_created:
            _remove_created(folder)
        index._spill_created = set()


def _mark_base(index: Any, generation: int) -> None:
    """Remember what this handle's saved state is (generation, and each segment's tombstones as
    committed): a later save computes its own changes against it."""
    index._base = base_state(generation, index._segments, index._spilled)


def base_state(generation: int, segments: list, spilled: Any = ()) -> dict:
    """A handle's base commit: the generation and each committed segment's tombstones as committed
    (``spilled``: names of uncommitted segments, left out)."""
    return {"generation": int(generation),
            "segments": {sg.name: (sg, np.array(sg.dead[:sg.n], dtype=bool)) for sg in segments
                         if sg.name not in spilled}}


def _ids_at(seg: Any, rows: np.ndarray) -> list[str]:
    return [seg.doc_id(int(r)) for r in rows.tolist()]


def _rebase(index: Any, target: Path, current: dict) -> None:
    """Make the handle what it would be had it loaded ``current`` (the manifest another writer
    committed since this handle's base) and then made its own changes: rows it deleted stay
    deleted, rows it added are added, rows the others added or deleted stay as they did.
    Raises :class:`SaveConflict` (changing nothing) when both sides changed the same id."""
    base = index._base
    base_segs = base["segments"]
    present = {id(sg) for sg in index._segments}
    # 1. this handle's changes since its base
    our_kill: dict[str, np.ndarray] = {}
    our_killed: set[str] = set()
    for name, (seg, mask) in base_segs.items():
        rows = np.flatnonzero(seg.dead[:seg.n] & ~mask) if id(seg) in present else np.flatnonzero(~mask)
        if len(rows):
            our_kill[name] = rows
            our_killed.update(_ids_at(seg, rows))
    ours_new = [sg for sg in index._segments if sg.name not in base_segs]
    our_added: set[str] = set()
    for sg in ours_new + [index._tail]:
        ids = sg.ids_list()
        our_added.update(ids[r] for r in np.flatnonzero(sg.alive).tolist())
    # 2. the others' changes: open the current segments (cheap: maps, tombstones)
    recs = current.get("segments") or []
    codec = _current_codec(index, target, current, bool(our_added))
    opened = []
    others_added: set[str] = set()
    others_killed: set[str] = set()
    for rec in recs:
        seg = open_segment(target, rec, dense=(index.dim, index.dense_codec) if "dense" in index.channels else None,
                           lexical_extras=index._lexical_extras if "lexical" in index.channels else None,
                           codec=codec, vocab_size=index.vocab_size, verify=False)
        opened.append(seg)
        if seg.name in base_segs:
            _, mask = base_segs[seg.name]
            if seg.n != len(mask):
                raise bad(target, f"segment {seg.name} changed its row count")
            others_killed.update(_ids_at(seg, np.flatnonzero(seg.dead[:seg.n] & ~mask)))
        else:
            ids = seg.ids_list()
            others_added.update(ids[r] for r in np.flatnonzero(seg.alive).tolist())
    current_names = {sg.name for sg in opened}
    for name, (seg, mask) in base_segs.items():
        if name not in current_names:  # compacted or merged away by another writer: moved (or deleted)
            others_killed.update(_ids_at(seg, np.flatnonzero(~mask)))
    conflict = (our_added & (others_added | others_killed)) | (our_killed & others_added)
    if conflict:
        shown = sorted(conflict)[:5]
        raise SaveConflict(
            f"cannot save to {str(target)!r}: since this index was loaded (generation {base['generation']}), another "
            f"writer committed generation {current.get('generation')} and changed {len(conflict)} of the same "
            f"document id(s) ({', '.join(map(repr, shown))}{', ...' if len(conflict) > 5 else ''}): added, deleted "
            "or moved by a compaction on both sides. Nothing was written. Load the index again "
            "(HybridIndex.load) and redo these changes on it, then save")
    # 3. apply this handle's changes to the current state (the base becomes the current commit;
    #    seg.committed_dead stays what is on disk, so the save below writes the new tombstones)
    index._base = {"generation": int(current.get("generation", 0)),
                   "segments": {sg.name: (sg, np.array(sg.dead[:sg.n], dtype=bool)) for sg in opened}}
    for seg in opened:
        rows = our_kill.get(seg.name)
        if rows is not None:
            seg.dead[rows] = True
    index.codec = codec
    index._codec_dir = current["codec"]["dir"] if isinstance(current.get("codec"), dict) else None
    index._segments = opened + ours_new
    index._idmap = None
    index._centroids = None


def _current_codec(index: Any, target: Path, current: dict, adding: bool) -> Any:
    """The ColBERT codec the current manifest's segments are coded with: this handle's, unless it
    was fitted independently (the handle started from an index without ColBERT rows)."""
    if index.codec is None or not index.codec.quantized:
        return index.codec
    crec = current.get("codec")
    cdir = crec.get("dir") if isinstance(crec, dict) else None
    if cdir is None or cdir == index._codec_dir:
        return index.codec
    theirs = _load_codec(target, current, index.colbert_codec, index.colbert_dim)
    if index.codec.fitted and adding and not np.array_equal(theirs.params()["rotation"],
                                                             index.codec.params()["rotation"]):
        raise SaveConflict(f"cannot save to {str(target)!r}: another writer committed ColBERT vectors coded with "
                           "a codec fitted on its own documents, and this handle fitted another one on its "
                           "documents. Nothing was written. Load the index again and add these documents to it")
    return theirs


def save_index(index: Any, directory: Any, *, attachments: Optional[dict] = None,
               lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> None:
    target, _ = _writable_target(directory, "save")  # refused before anything is written (again under the lock)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with writer_lock(target, timeout=lock_timeout), index._lock:
            _save_locked(index, target, attachments)
    except BaseException:
        if created:
            _remove_created(target)
        raise


def _save_locked(index: Any, target: Path, attachments: Optional[dict]) -> None:
    target, old_manifest = _writable_target(target, "save")
    v2 = old_manifest is not None and old_manifest.get("format_version") == FORMAT_VERSION
    if v2 and index._home == target and old_manifest.get("index_uuid") != index._uuid:
        raise SaveConflict(f"cannot save to {str(target)!r}: since this index was loaded from it, the folder was "
                           "replaced by another index (a save of a new HybridIndex, or bgem3 index --rebuild). "
                           "Nothing was written. Load the folder again, or save this index to another folder")
    same_home = v2 and old_manifest.get("index_uuid") == index._uuid and index._home == target
    base = index._base
    if same_home and (base is None or base["generation"] != old_manifest.get("generation")):
        if base is None:
            raise SaveConflict(f"cannot save to {str(target)!r}: this handle does not know which commit it started "
                               "from; load the index again")
        _rebase(index, target, old_manifest)
    old_records = {}
    if same_home:
        for rec in old_manifest.get("segments", []):
            if isinstance(rec, dict) and isinstance(rec.get("name"), str):
                old_records[rec["name"]] = rec
    before = set((target / SEGMENT_DIR).iterdir()) if (target / SEGMENT_DIR).is_dir() else set()
    try:
        manifest, kept, records, new_rec, codec_rec = _write_and_commit(index, target, old_manifest, same_home,
                                                                        old_records, attachments)
    except BaseException:
        # what this save wrote and did not commit (a full disk, Ctrl-C): removed now, not left for a later save
        after = set((target / SEGMENT_DIR).iterdir()) if (target / SEGMENT_DIR).is_dir() else set()
        try:
            committed = read_manifest(target) if (target / MANIFEST).is_file() else None
            named = {r.get("name") for r in (committed or {}).get("segments") or [] if isinstance(r, dict)}
        except IndexFormatError:
            named = set()
        remove_ours(p for p in after - before if _NAME_RE.match(p.name) and p.name not in named
                    and p.name not in _spilled(index))
        raise
    # after the commit: point the in-memory index at what is on disk now
    spilled = _spilled(index)
    new_segments: list[DiskSegment] = []
    for seg, rec in zip(kept, records):
        if seg is not None and seg.root == target and rec["name"] == seg.name:
            seg.record = rec
            seg.committed_dead = seg.n_dead
            new_segments.append(seg)
        else:
            new_segments.append(_reopen(index, target, rec))
    if new_rec is not None:
        new_segments.append(_reopen(index, target, new_rec))
    index._segments = new_segments
    index._tail = index._new_tail()
    index._idmap = None
    index._home = target
    index._codec_dir = codec_rec["dir"] if codec_rec else None
    # spilled segments are committed here now, or were copied here from another folder
    remove_ours([folder / SEGMENT_DIR / name for name, folder in spilled.items() if folder != target])
    _release_pending(index, list(spilled))
    spilled.clear()
    index._spill_created = set()
    index._compact_pending = False
    _mark_base(index, manifest["generation"])
    remove_ours(our_leftovers(target, manifest))


def _write_and_commit(index: Any, target: Path, old_manifest: Optional[dict], same_home: bool, old_records: dict,
                      attachments: Optional[dict]) -> tuple:
    # small-segment merge: many tiny segments (one per small save, or the spills of a long
    # `bgem3 index` run) slow every search down; once there are MERGE_MIN_TINY segments under
    # 1/64 of the rows, the live rows of the smallest of them, up to MERGE_BYTES, join the tail
    compacting = index._compact_pending
    total = sum(sg.n for sg in index._segments) + index._tail.n
    spilled = _spilled(index)
    tiny = [sg for sg in index._segments if sg.n * 64 < total and sg.name not in spilled]
    if len(tiny) >= MERGE_MIN_TINY and not compacting:
        picked, held = [], 0
        for sg in sorted(tiny, key=lambda sg: sg.n):
            if held + sg.file_bytes > MERGE_BYTES:
                break
            picked.append(sg)
            held += sg.file_bytes
        tiny = picked if len(picked) >= 2 else []   # one alone would only be rewritten
        tail = index._tail
        for sg in tiny:
            live = np.flatnonzero(sg.alive)
            if len(live):
                tail.append(gather_rows(sg, live, codec=index.codec, lexical_extras=index._lexical_extras))
        keep = {id(sg) for sg in tiny}
        index._segments = [sg for sg in index._segments if id(sg) not in keep]
        index._idmap = None  # rows moved: rebuilt on next use (also if this save fails below)
    # the tail: drop its dead rows first (they never need to reach the disk)
    tail = index._tail
    if tail.n and tail.n_dead:
        live = np.flatnonzero(tail.alive)
        fresh = index._new_tail()
        if len(live):
            fresh.append(gather_rows(tail, live, codec=index.codec, lexical_extras=index._lexical_extras))
        tail = fresh
    records: list[dict] = []
    kept: list[Optional[DiskSegment]] = []
    if compacting:  # every saved segment's live rows, streamed into new bounded segments
        for rec in _stream_compacted(index, target):
            records.append(rec)
            kept.append(None)
    for seg in ([] if compacting else index._segments):
        rec = old_records.get(seg.name) if seg.root == target else None
        if rec is None and seg.root == target and spilled.get(seg.name) == target:
            rec = seg.record  # spilled into this folder: committed as written
        if rec is not None and rec.get("files") == seg.record.get("files"):
            rec = dict(rec)
            if seg.n_dead != seg.committed_dead:
                rec["deleted"] = write_tombstones(seg.folder, np.flatnonzero(seg.dead))
                fsync_dir(seg.folder)
        else:
            rec = _copy_segment(target, seg)
        records.append(rec)
        kept.append(seg)
    new_rec = write_segment(target, tail) if tail.n else None
    if new_rec is not None:
        records.append(new_rec)
    fsync_dir(target / SEGMENT_DIR) if (target / SEGMENT_DIR).is_dir() else None
    codec_rec = None
    if index.codec is not None and index.codec.quantized and index.codec.fitted:
        cdir = index._codec_dir if same_home and index._codec_dir and (target / index._codec_dir).is_dir() else None
        if cdir is None:
            cdir = new_name("codec")
            (target / cdir).mkdir()
            files = {f"{k}.npy": write_npy(target / cdir / f"{k}.npy", v) for k, v in index.codec.params().items()}
            fsync_dir(target / cdir)
        else:
            files = old_manifest["codec"]["files"]
        codec_rec = {"dir": cdir, "files": files}
    attached = dict(old_manifest.get("attachments") or {}) if same_home else {}
    for key, data in (attachments or {}).items():
        fname = new_name("attach") + ".json"
        rec = {"file": fname, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        write_bytes_durably(target / fname, data)
        attached[key] = rec
    old_gen = old_manifest.get("generation", 0) if old_manifest is not None else 0
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bgem3_version": __version__,
        "index_uuid": index._uuid,
        # every commit to a folder has a higher generation than the one before it (also a new index
        # replacing another): a handle or a reader tells from it that the folder changed
        "generation": (int(old_gen) if isinstance(old_gen, int) and not isinstance(old_gen, bool) else 0) + 1,
        "model_name": index.model_name,
        "dim": index.dim,
        "colbert_dim": index.colbert_dim,
        "vocab_size": index.vocab_size,
        "channels": list(index.channels),
        "dense_codec": index.dense_codec,
        "colbert_codec": index.colbert_codec,
        "lexical": ({"kind": index.lexical.kind, "config": index.lexical.config(),
                     "extras": list(index._lexical_extras)} if index.lexical is not None else None),
        "codec": codec_rec,
        "count": len(index),
        "colbert_dtype": index.colbert_codec,
        "segments": records,
    }
    if attached:
        manifest["attachments"] = attached
    fsync_dir(target)
    commit_manifest(target, manifest)  # <- the commit
    return manifest, kept, records, new_rec, codec_rec


def _stream_compacted(index: Any, target: Path) -> Iterator[dict]:
    """Write the live rows of ``index._segments`` (in order) as new segments of about
    ``COMPACT_SEGMENT_BYTES`` each under ``target``; yields their records. Holds one new segment
    in memory at a time; nothing is committed here (the caller's manifest commit is)."""
    buf = index._new_tail()
    held = 0
    for seg in index._segments:
        live = np.flatnonzero(seg.alive)
        if not len(live):
            continue
        per_row = max(1, sum(seg.nbytes().values()) // max(seg.n, 1))
        step = max(1, COMPACT_SEGMENT_BYTES // per_row)
        for a in range(0, len(live), step):
            part = live[a:a + step]
            buf.append(gather_rows(seg, part, codec=index.codec, lexical_extras=index._lexical_extras))
            held += len(part) * per_row
            if held >= COMPACT_SEGMENT_BYTES:
                yield write_segment(target, buf)
                buf, held = index._new_tail(), 0
    if buf.n:
        yield write_segment(target, buf)


def _reopen(index: Any, root: Path, rec: dict) -> DiskSegment:
    return open_segment(root, rec, dense=(index.dim, index.dense_codec) if "dense" in index.channels else None,
                        lexical_extras=index._lexical_extras if "lexical" in index.channels else None,
                        codec=index.codec, vocab_size=index.vocab_size, verify=False)


def _int_field(root: Path, m: dict, key: str, *, allow_none: bool = False, lo: int = 1, hi: int = 2**31 - 1) -> Any:
    v = m.get(key)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise bad(root, f"manifest field {key!r} is {str(v)[:40]!r}, expected an integer in [{lo}, {hi}]")
    return v




def _resolve_load_encoder(root: Path, name: str, dim: int, encoder: Any, load_encoder: bool,
                          allow_model_mismatch: bool, encoder_kwargs: dict) -> Any:
    if isinstance(encoder, (str, os.PathLike)):
        from ..encoder import Encoder

        encoder = Encoder(encoder, **encoder_kwargs)
    elif encoder is None and load_encoder:
        from ..encoder import Encoder

        try:
            encoder = Encoder(name, **encoder_kwargs)
        except OSError as exc:
            raise type(exc)(f"{exc}\n(while loading the encoder {name!r} recorded in {str(root / MANIFEST)!r}: "
                            "pass encoder=... to use another copy of the model, or load_encoder=False to "
                            "search with precomputed vectors only)") from exc
    elif encoder_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(encoder_kwargs)}: encoder options only apply "
                        "when the encoder is loaded by name")
    if encoder is not None:
        enc_dim = int(encoder.hidden_size)
        if enc_dim != dim:
            raise IndexFormatError(
                f"the index at {str(root)!r} was built with {name!r} (dense dim {dim}), but the encoder "
                f"{encoder.model_name!r} has dim {enc_dim}; load it with the model it was built with")
        if not allow_model_mismatch and not same_model_name(name, str(encoder.model_name)):
            raise IndexFormatError(
                f"the index at {str(root)!r} was built with model {name!r}, but the encoder is {encoder.model_name!r}; "
                "queries must be encoded by the model that encoded the documents. Load with that model, or pass "
                "allow_model_mismatch=True if it is the same model under another name/path")
    return encoder


def interrupted_save_leftovers(directory: Any) -> list[Path]:
    """The ``.<name>.old-*`` / ``.<name>.new-*`` folders an interrupted format-1 save left beside ``directory``
    (the ``old-`` ones first; none verified: :func:`recover_interrupted_save` checks each before it uses one)."""
    root = _target(directory)
    if not root.parent.is_dir():
        return []
    return [p for pat in (f".{root.name}.old-*", f".{root.name}.new-*") for p in sorted(root.parent.glob(pat))]


def recover_interrupted_save(directory: Any) -> bool:
    """A format-1 save (bgem3 0.1, or its CLI) killed between its two folder renames left
    ``.<name>.old-*`` (or ``.<name>.new-*``) beside a missing folder: put the newest backup
    that verifiably is a saved index back in place. Returns True if it did. (Format 2 has no
    such window: its commit is one file rename inside the folder.)"""
    root = _target(directory)
    if root.exists():
        return False
    backups = sorted((p for p in interrupted_save_leftovers(root) if is_saved_index(p)), key=lambda p: p.stat().st_mtime)
    if not backups:
        return False
    os.rename(backups[-1] if backups[-1].name.startswith(f".{root.name}.old-") else backups[0], root)
    return True


_recover_v1_backup = recover_interrupted_save


def load_index(cls: Any, directory: Any, encoder: Any = None, *, load_encoder: bool = True,
               allow_model_mismatch: bool = False, verify: Optional[bool] = None, **encoder_kwargs: Any) -> Any:
    if verify is not None and not isinstance(verify, bool):
        raise TypeError(f"verify must be True, False or None; got {verify!r}")
    root = _target(directory)
    if not root.is_dir():
        backups = [p.name for p in interrupted_save_leftovers(root)]
        hint = (f"; an interrupted bgem3 0.1 save left {backups[0]!r} beside it: put it back with "
                f"bgem3.index.persistence.recover_interrupted_save({str(root)!r}) (or `bgem3 index` on it)"
                if backups else "")
        raise FileNotFoundError(f"no saved HybridIndex at {str(root)!r}{hint}")
    # a reader never takes the writer lock: if a commit replaced (and removed) files of the manifest
    # it read while it was opening them, it opens the manifest committed since instead
    state: dict = {}
    for attempt in range(LOAD_RETRIES + 1):
        m = read_manifest(root)
        try:
            return _load_manifest(cls, root, m, encoder, load_encoder, allow_model_mismatch, verify, encoder_kwargs,
                                  state)
        except IndexFormatError:
            try:
                again = read_manifest(root)
            except IndexFormatError:
                again = m
            if again == m or attempt == LOAD_RETRIES:
                raise
            if state.get("encoder") is not None:  # loaded once: reused (checked again against the new manifest)
                encoder, encoder_kwargs = state["encoder"], {}
    raise AssertionError("unreachable")  # pragma: no cover


def _load_codec(root: Path, m: dict, colbert_codec: str, colbert_dim: int) -> ColbertCodec:
    """The ColBERT codec a v2 manifest records (a quantised one with its rotation and centre)."""
    codec = ColbertCodec(colbert_codec, colbert_dim)
    crec = m.get("codec")
    if codec.quantized and crec is not None:
        if (not isinstance(crec, dict) or not isinstance(crec.get("dir"), str) or not _NAME_RE.match(crec["dir"])
                or not isinstance(crec.get("files"), dict) or set(crec["files"]) != {"rotation.npy", "center.npy"}):
            raise bad(root, "manifest field 'codec'")
        shapes = {"rotation": (colbert_dim, colbert_dim), "center": (colbert_dim,)}
        params = {}
        for key, shape in shapes.items():
            rec = _check_record(root, f"{key}.npy", crec["files"][f"{key}.npy"])
            params[key] = open_npy(root / crec["dir"] / f"{key}.npy", rec, root=root, shape=shape,
                                   dtype="float32", load=True)
        try:
            codec = ColbertCodec.from_params(colbert_codec, colbert_dim, params)
        except ValueError as exc:
            raise bad(root, f"codec: {exc}") from None
    elif codec.quantized and any(isinstance(s, dict) and s.get("rows") for s in m.get("segments") or []):
        raise bad(root, "a quantised ColBERT codec without its rotation and centre")
    return codec


@dataclass
class SavedIndex:
    """What :func:`load_index` read and checked of a saved (format 2) index: its configuration, its
    opened segments and the commit they are (``generation``); :meth:`HybridIndex.from_saved
    <bgem3.index.hybrid.HybridIndex.from_saved>` builds the handle from it."""

    root: Path
    uuid: str
    generation: int
    encoder: Any
    model_name: str
    dim: int
    colbert_dim: int
    vocab_size: Optional[int]
    channels: tuple
    lexical: Optional[LexicalChannel]
    dense_codec: str
    colbert_codec: str
    codec: Optional[ColbertCodec]
    codec_dir: Optional[str]  # the committed codec's folder (a quantised ColBERT codec), else None
    segments: list = field(default_factory=list)  # DiskSegment, in manifest order


def check_unique_ids(root: Any, segments: list) -> None:
    """Every live id is in exactly one row over all ``segments`` (an upsert kills the old row):
    a segment listed under two names, or rows that escaped their tombstones, fail here."""
    seen: set[str] = set()
    total = 0
    for seg in segments:
        ids = seg.ids_list()
        live = [ids[r] for r in np.flatnonzero(seg.alive).tolist()]
        seen.update(live)
        total += len(live)
        if len(seen) != total:
            raise bad(root, f"a document id is live in more than one row (segment {seg.name}, e.g. "
                            f"{_first_duplicate(segments)!r}); a segment may be listed twice")


def _first_duplicate(segments: list) -> str:
    seen: set[str] = set()
    for seg in segments:
        ids = seg.ids_list()
        for r in np.flatnonzero(seg.alive).tolist():
            if ids[r] in seen:
                return ids[r]
            seen.add(ids[r])
    return "?"


def _load_manifest(cls: Any, root: Path, m: dict, encoder: Any, load_encoder: bool, allow_model_mismatch: bool,
                   verify: Optional[bool], encoder_kwargs: dict, state: dict) -> Any:
    name = m.get("model_name")
    if not isinstance(name, str):
        raise bad(root, "manifest field 'model_name' is not a string")
    dim = _int_field(root, m, "dim", hi=1 << 20)
    if m.get("format_version") == 1:
        from .legacy import load_v1

        enc = _resolve_load_encoder(root, name, dim, encoder, load_encoder, allow_model_mismatch, encoder_kwargs)
        return load_v1(cls, root, m, enc, verify=verify is not False)
    colbert_dim = _int_field(root, m, "colbert_dim", hi=1 << 20)
    vocab_size = _int_field(root, m, "vocab_size", allow_none=True)
    channels = m.get("channels")
    if (not isinstance(channels, list) or not channels or any(c not in CHANNELS for c in channels)
            or len(set(channels)) != len(channels)):
        raise bad(root, f"manifest field 'channels' is {str(channels)[:80]!r}")
    dense_codec, colbert_codec = m.get("dense_codec"), m.get("colbert_codec")
    if dense_codec not in DENSE_CODECS or colbert_codec not in COLBERT_CODECS:
        raise bad(root, f"unknown codecs dense={str(dense_codec)[:20]!r} colbert={str(colbert_codec)[:20]!r}")
    lexical: Optional[LexicalChannel] = None
    extras: tuple[str, ...] = ()
    if "lexical" in channels:
        lex = m.get("lexical")
        if not isinstance(lex, dict):
            raise bad(root, "manifest field 'lexical' is not an object")
        try:
            if lex.get("kind") == "bm25":  # registers the BM25 channel; imported only for an index that has it
                from . import bm25  # noqa: F401 - (its module costs a fresh process's first load ~7 ms)
            lexical = lexical_channel_from_config(lex.get("kind"), lex.get("config"))
        except (ValueError, TypeError) as exc:
            raise IndexFormatError(f"the index at {str(root)!r}: {exc}") from None
        ex = lex.get("extras", [])
        if not isinstance(ex, list) or not all(isinstance(x, str) and x.isidentifier() for x in ex):
            raise bad(root, "manifest field 'lexical.extras'")
        extras = tuple(ex)
    uid = m.get("index_uuid")
    if not isinstance(uid, str) or not uid.isalnum() or len(uid) > 64:
        raise bad(root, "manifest field 'index_uuid'")
    _int_field(root, m, "generation", lo=0, hi=2**62)
    segments = m.get("segments")
    if not isinstance(segments, list):
        raise bad(root, "manifest field 'segments' is not a list")
    enc = state["encoder"] = _resolve_load_encoder(root, name, dim, encoder, load_encoder, allow_model_mismatch,
                                                   encoder_kwargs)

    chans = tuple(c for c in CHANNELS if c in channels)
    codec, codec_dir = None, None
    if "colbert" in chans:
        codec = _load_codec(root, m, colbert_codec, colbert_dim)
        crec = m.get("codec")
        codec_dir = crec["dir"] if codec.quantized and isinstance(crec, dict) else None
    names = set()
    opened = []
    for rec in segments:
        seg = open_segment(root, rec, dense=(dim, dense_codec) if "dense" in chans else None,
                           lexical_extras=extras if "lexical" in chans else None, codec=codec,
                           vocab_size=vocab_size, verify=verify)
        if seg.name in names:
            raise bad(root, f"segment {seg.name} is listed twice")
        names.add(seg.name)
        opened.append(seg)
    count = _int_field(root, m, "count", lo=0, hi=2**40)
    live = sum(s.n - s.n_dead for s in opened)
    if count != live:
        raise bad(root, f"the manifest says {count} documents but the segments hold {live}")
    # ids unique across segments: all of them with verify=True; by default over the segments whose ids
    # were read anyway (those checked at open); the id map checks them all when it is first built
    checked = opened if verify else [sg for sg in opened if sg._ids is not None]
    check_unique_ids(root, checked)
    return cls.from_saved(SavedIndex(root=root, uuid=uid, generation=int(m.get("generation", 0)), encoder=enc,
                                     model_name=name, dim=dim, colbert_dim=colbert_dim, vocab_size=vocab_size,
                                     channels=chans, lexical=lexical, dense_codec=dense_codec,
                                     colbert_codec=colbert_codec, codec=codec, codec_dir=codec_dir, segments=opened))


def describe(directory: Any) -> dict:
    """What ``bgem3 info`` prints about a saved index, from its manifest alone (no arrays read)."""
    root = _target(directory)
    m = read_manifest(root)
    segs = m.get("segments") if m.get("format_version") == FORMAT_VERSION else None
    channels = m.get("channels", ["dense", "lexical", "colbert"])
    lex = m.get("lexical")
    lexical = ({"kind": lex.get("kind"), "config": lex.get("config")} if isinstance(lex, dict)
               else {"kind": "learned_sparse", "config": {}} if "lexical" in channels else None)
    return {"model": m.get("model_name"), "passages": m.get("count"), "dim": m.get("dim"),
            "format_version": m.get("format_version"),
            "channels": channels, "lexical": lexical,
            "colbert_codec": m.get("colbert_codec", m.get("colbert_dtype")),
            "segments": len(segs) if isinstance(segs, list) else 1}
