"""Reading files into passages, and knowing what changed since the last run (framework-free).

This is what ``bgem3 index`` uses, and it works on its own:

* :func:`find_files` walks files and folders (recursively) for ``.txt``, ``.md`` and ``.jsonl``;
* :func:`read_source` turns one file into :class:`Passage` objects: a text file is split into
  passages of at most ``chunk_size`` units (characters or model tokens) with ``chunk_overlap``
  units repeated between neighbours, cut at paragraph, line, sentence and word boundaries
  before cutting inside a word; a ``.jsonl`` file gives one record per line
  (``{"id": ..., "text": ..., "metadata": {...}}``; only ``text`` is required), split the same
  way when a record is longer than ``chunk_size``;
* :class:`Manifest` remembers ``source file -> sha256 -> passage ids`` so a re-run only
  re-encodes added and changed files and deletes the passages of removed ones
  (:meth:`Manifest.plan`).

Example::

    >>> from bgem3.ingest import split_text
    >>> text = "First paragraph.\\n\\nSecond paragraph, a bit longer than the first one."
    >>> [text[a:b] for a, b in split_text(text, chunk_size=30, chunk_overlap=0)]
    ['First paragraph.', 'Second paragraph, a bit', 'longer than the first one.']
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

#: File types ``bgem3 index`` reads.
SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".jsonl")

#: Where text is preferably cut, best first ("" = anywhere).
SEPARATORS = ("\n\n", "\n", ". ", "! ", "? ", "。", "！", "？", "; ", ", ", " ", "")

#: Defaults of ``bgem3 index`` (tokens of the model's tokenizer).
DEFAULT_CHUNK_SIZE = 512
DEFAULT_CHUNK_OVERLAP = 64

MANIFEST_NAME = "sources.json"
MANIFEST_FORMAT = 1


class IngestError(ValueError):
    """A file could not be read or parsed; the message names the file (and line) and the fix."""


@dataclass
class Passage:
    """One unit that goes into the index.

    Attributes:
        id: a stable id: ``"<source>#<n>"`` for text files, the record's ``id`` for JSONL records
            (``"<id>#<n>"`` when a long record is split).
        text: the passage text.
        metadata: ``source`` (the file), ``passage`` (its number within the file or record),
            ``start_char``/``end_char`` (its span in the file's or record's text), plus a JSONL
            record's own metadata.
    """

    id: str
    text: str
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- finding files

def find_files(paths: Sequence[str], extensions: Sequence[str] = SUPPORTED_EXTENSIONS,
               exclude: Sequence[str] = ()) -> list[str]:
    """Absolute paths of the supported files named by ``paths`` (folders are walked recursively).

    Hidden files and folders (names starting with ``.``) inside a folder are skipped, and so
    is anything under ``exclude`` (e.g. the index folder itself). A file named explicitly must
    have a supported extension. Raises :class:`FileNotFoundError` for a path that does not exist.
    """
    exts = tuple(e.lower() for e in extensions)
    excluded = [os.path.realpath(e) for e in exclude]

    def is_excluded(p: str) -> bool:
        rp = os.path.realpath(p)
        return any(rp == e or rp.startswith(e + os.sep) for e in excluded)

    found: list[str] = []
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{raw!r} does not exist; pass existing files or folders to index")
        if os.path.isfile(path):
            if not path.lower().endswith(exts):
                raise IngestError(f"{raw!r} is not a supported file; bgem3 reads {', '.join(exts)} files")
            if not is_excluded(path):
                found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_excluded(os.path.join(root, d)))
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(exts):
                    continue
                full = os.path.join(root, name)
                if not is_excluded(full):
                    found.append(full)
    seen: set[str] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise IngestError(f"cannot read {path!r} ({exc.strerror or exc}); check that the file is readable") from None
    return h.hexdigest()


def is_under(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one of them (all absolute)."""
    for r in roots:
        r = os.path.abspath(r)
        if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


# --------------------------------------------------------------------------- splitting

def split_text(text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
               length_function: Optional[Callable[[str], int]] = None) -> list[tuple[int, int]]:
    """Cut ``text`` into passages; returns ``(start, end)`` character spans into ``text``.

    Each passage measures at most ``chunk_size`` by ``length_function`` (default: characters;
    pass a token counter to measure in tokens), except where a single unbreakable piece is
    longer. Neighbouring passages share up to ``chunk_overlap`` of text. Cuts fall at the
    first separator of :data:`SEPARATORS` that makes the pieces small enough (paragraphs, then
    lines, sentences, clauses, words, and characters as a last resort). Leading/trailing
    whitespace is trimmed from each span and empty passages are dropped.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be an integer with 0 <= chunk_overlap < chunk_size ({chunk_size}); got {chunk_overlap!r}")
    length = length_function or len

    # 1. atoms: spans no longer than chunk_size, cut at the best separator available
    atoms: list[tuple[int, int, int]] = []  # (start, end, length)

    def cut(start: int, end: int, level: int) -> None:
        n = length(text[start:end])
        if n <= chunk_size or level >= len(SEPARATORS):
            atoms.append((start, end, n))
            return
        sep = SEPARATORS[level]
        if sep == "":
            # hard cut: largest prefixes that fit, measured with the length function
            pos = start
            while pos < end:
                lo, hi = pos + 1, end
                while lo < hi:  # largest e with length(text[pos:e]) <= chunk_size
                    mid = (lo + hi + 1) // 2
                    if length(text[pos:mid]) <= chunk_size:
                        lo = mid
                    else:
                        hi = mid - 1
                atoms.append((pos, lo, length(text[pos:lo])))
                pos = lo
            return
        pieces = []
        pos = start
        while True:
            i = text.find(sep, pos, end)
            if i < 0:
                pieces.append((pos, end))
                break
            pieces.append((pos, i + len(sep)))  # the separator stays with the piece before it
            pos = i + len(sep)
            if pos >= end:
                break
        if len(pieces) == 1:
            cut(start, end, level + 1)
            return
        for a, b in pieces:
            cut(a, b, level + 1)

    cut(0, len(text), 0)

    # 2. pack atoms greedily into passages, carrying up to chunk_overlap of the tail over
    spans: list[tuple[int, int]] = []
    cur: list[tuple[int, int, int]] = []
    cur_len = 0
    for atom in atoms:
        if cur and cur_len + atom[2] > chunk_size:
            spans.append((cur[0][0], cur[-1][1]))
            keep: list[tuple[int, int, int]] = []
            kept = 0
            for prev in reversed(cur):
                if kept + prev[2] > chunk_overlap or kept + prev[2] + atom[2] > chunk_size:
                    break
                keep.insert(0, prev)
                kept += prev[2]
            cur, cur_len = keep, kept
        cur.append(atom)
        cur_len += atom[2]
    if cur:
        spans.append((cur[0][0], cur[-1][1]))

    out: list[tuple[int, int]] = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a and (not out or out[-1] != (a, b)):
            out.append((a, b))
    return out


# --------------------------------------------------------------------------- reading

def _read_text(path: str) -> str:
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise IngestError(f"cannot read {path!r}: it is not UTF-8 text (byte {exc.start}); convert it to UTF-8 or leave it out") from None
    except OSError as exc:
        raise IngestError(f"cannot read {path!r} ({exc.strerror or exc}); check that the file is readable") from None


def _passages_of(text: str, base_id: str, metadata: dict, chunk_size: int, chunk_overlap: int,
                 length_function: Optional[Callable[[str], int]], keep_id_if_single: bool) -> list[Passage]:
    spans = split_text(text, chunk_size, chunk_overlap, length_function)
    out = []
    for n, (a, b) in enumerate(spans):
        pid = base_id if (keep_id_if_single and len(spans) == 1) else f"{base_id}#{n}"
        md = dict(metadata)
        md.update(passage=n, start_char=a, end_char=b)
        out.append(Passage(pid, text[a:b], md))
    return out


def read_source(path: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
                length_function: Optional[Callable[[str], int]] = None, source: Optional[str] = None) -> list[Passage]:
    """The passages of one ``.txt`` / ``.md`` / ``.jsonl`` file.

    Args:
        path: the file.
        chunk_size / chunk_overlap / length_function: see :func:`split_text`.
        source: the name recorded in each passage's ``metadata["source"]`` and used in text
            passages' ids (default: ``path``).

    Raises:
        IngestError: unreadable file, not UTF-8, a JSONL line that is not a JSON object with a
            string ``text``, a non-dict ``metadata``, or a duplicate ``id`` within the file.
    """
    source = source or path
    if not path.lower().endswith(".jsonl"):
        return _passages_of(_read_text(path), source, {"source": source}, chunk_size, chunk_overlap,
                            length_function, keep_id_if_single=False)
    out: list[Passage] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path!r} line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(f"{where} is not valid JSON ({exc.msg}); each line must be an object like "
                              '{"id": "a1", "text": "...", "metadata": {}}') from None
        if not isinstance(rec, dict):
            raise IngestError(f"{where} is a JSON {type(rec).__name__}, not an object with a \"text\" field")
        text = rec.get("text")
        if not isinstance(text, str):
            raise IngestError(f"{where} has no string \"text\" field (got {type(text).__name__}); every record needs one")
        rid = rec.get("id", f"{source}:{lineno}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise IngestError(f"{where}: \"id\" must be a string or an integer; got {type(rid).__name__}")
        rid = str(rid)
        if rid in seen:
            raise IngestError(f"{where}: id {rid!r} was already used on line {seen[rid]}; ids must be unique")
        seen[rid] = lineno
        meta = rec.get("metadata") or {}
        if not isinstance(meta, dict):
            raise IngestError(f"{where}: \"metadata\" must be an object; got {type(meta).__name__}")
        md = dict(meta)
        md.update(source=source, line=lineno, record_id=rid)
        out.extend(_passages_of(text, rid, md, chunk_size, chunk_overlap, length_function, keep_id_if_single=True))
    return out


# --------------------------------------------------------------------------- change detection

@dataclass
class Plan:
    """What an update has to do. Paths are absolute."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    hashes: dict = field(default_factory=dict)  # path -> sha256 of every file found now

    @property
    def to_read(self) -> list[str]:
        """Files whose passages must be (re-)encoded."""
        return self.added + self.changed

    @property
    def is_noop(self) -> bool:
        return not (self.added or self.changed or self.removed)


class Manifest:
    """``source file -> {sha256, passage ids}`` plus the settings the passages were cut with.

    Stored as ``sources.json`` inside the index folder (see :meth:`save` / :meth:`load`).

    Example::

        >>> m = Manifest(settings={"chunk_size": 512})
        >>> m.set("/docs/a.txt", "ab12", ["/docs/a.txt#0"])
        >>> plan = m.plan(["/docs"], {"/docs/b.txt": "cd34"})
        >>> plan.added, plan.removed
        (['/docs/b.txt'], ['/docs/a.txt'])
    """

    def __init__(self, files: Optional[dict] = None, settings: Optional[dict] = None) -> None:
        self.files: dict[str, dict[str, Any]] = dict(files or {})
        self.settings: dict[str, Any] = dict(settings or {})

    def set(self, path: str, sha256: str, ids: Sequence[str]) -> None:
        self.files[path] = {"sha256": sha256, "ids": list(ids)}

    def remove(self, path: str) -> list[str]:
        """Forget a file; returns the passage ids it had."""
        entry = self.files.pop(path, None)
        return list(entry["ids"]) if entry else []

    def ids_of(self, path: str) -> list[str]:
        entry = self.files.get(path)
        return list(entry["ids"]) if entry else []

    def owner_of_ids(self) -> dict[str, str]:
        """Passage id -> source file, for every file."""
        return {pid: path for path, entry in self.files.items() for pid in entry["ids"]}

    def plan(self, roots: Sequence[str], current: dict[str, str], force: bool = False) -> Plan:
        """Compare the files found now under ``roots`` (``{path: sha256}``) with the manifest.

        Files in the manifest that are under one of ``roots`` but were not found are removed;
        files outside every root are left alone (so several folders can share one index).
        ``force=True`` treats every known file as changed (e.g. the chunk settings changed).
        """
        plan = Plan(hashes=dict(current))
        for path, digest in current.items():
            entry = self.files.get(path)
            if entry is None:
                plan.added.append(path)
            elif force or entry["sha256"] != digest:
                plan.changed.append(path)
            else:
                plan.unchanged.append(path)
        roots = [os.path.abspath(r) for r in roots]
        for path in self.files:
            if path not in current and is_under(path, roots):
                plan.removed.append(path)
        return plan

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "settings": self.settings, "files": self.files}

    def save(self, folder: str) -> str:
        """Write ``folder/sources.json`` (temp file, fsync, rename)."""
        path = os.path.join(folder, MANIFEST_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, ensure_ascii=False, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str) -> "Manifest":
        """Read ``folder/sources.json``; an empty manifest if there is none."""
        path = os.path.join(folder, MANIFEST_NAME)
        if not os.path.exists(path):
            return cls()
        try:
            with open(path, "r", encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise IngestError(f"the source manifest {path!r} is unreadable ({exc}); rebuild the index into a new folder") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
            raise IngestError(f"the source manifest {path!r} has an unknown format; rebuild the index into a new folder")
        return cls(data["files"], data.get("settings") or {})
