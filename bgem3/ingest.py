"""Reading files into passages, and knowing what changed since the last run (framework-free).

This is what ``bgem3 index`` uses, and it works on its own:

* :func:`scan_paths` walks files and folders (recursively) for ``.txt``, ``.md`` and ``.jsonl``
  and says what it skipped and why (other extensions, FIFOs and devices, the same file reached
  twice through a symlink, unreadable folders); :func:`find_files` is its short form;
* :func:`check_source` reads a file once without splitting it, to report every bad file
  (not UTF-8, binary, broken JSONL) before anything is indexed;
* :func:`iter_passages` / :func:`read_source` turn one file into :class:`Passage` objects,
  streaming: the file is read in blocks and cut into segments of at most
  :data:`SEGMENT_CHARS` characters at paragraph (else line, sentence, word) boundaries, so
  memory and time grow with one segment, not with the file. A text file is split into
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

import codecs
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from ._checks import positive_int

#: File types ``bgem3 index`` reads.
SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".jsonl")

#: Where text is preferably cut, best first ("" = anywhere).
SEPARATORS = ("\n\n", "\n", ". ", "! ", "? ", "。", "！", "？", "; ", ", ", " ", "")

#: Defaults of ``bgem3 index`` (tokens of the model's tokenizer).
DEFAULT_CHUNK_SIZE = 512
DEFAULT_CHUNK_OVERLAP = 64

#: A text file is cut into segments of at most this many characters before splitting (streaming).
SEGMENT_CHARS = 1 << 18
_READ_BLOCK = 1 << 20

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

@dataclass
class Scan:
    """What :func:`scan_paths` found, and everything it left out (absolute paths)."""

    files: list[str] = field(default_factory=list)
    #: extension (``".rst"``, or ``""``) -> files with it that were not read
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    #: FIFOs, sockets, devices (``/dev/zero``) and broken symlinks: never opened
    not_regular: list[str] = field(default_factory=list)
    #: ``(path, same_as)``: one file reached twice (a symlinked folder next to its target)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    #: ``(folder, reason)``: folders that could not be listed
    unreadable_dirs: list[tuple[str, str]] = field(default_factory=list)

    def skipped_lines(self) -> list[str]:
        """One human line per kind of skipped input (empty when nothing was skipped)."""
        out = []
        if self.unsupported:
            n = sum(len(v) for v in self.unsupported.values())
            kinds = ", ".join(f"{ext or '(no extension)'} x{len(v)}" for ext, v in sorted(self.unsupported.items()))
            out.append(f"skipped {n} file{'s' * (n != 1)} with extensions bgem3 does not read ({kinds}); "
                       f"it reads {', '.join(SUPPORTED_EXTENSIONS)}")
        if self.not_regular:
            out.append(f"skipped {len(self.not_regular)} entries that are not regular files (FIFO, device, socket or "
                       f"broken link): {', '.join(self.not_regular[:5])}{' ...' if len(self.not_regular) > 5 else ''}")
        if self.duplicates:
            out.append(f"skipped {len(self.duplicates)} files reached twice through symlinks (e.g. "
                       f"{self.duplicates[0][0]} = {self.duplicates[0][1]})")
        return out


def scan_paths(paths: Sequence[str], extensions: Sequence[str] = SUPPORTED_EXTENSIONS,
               exclude: Sequence[str] = ()) -> Scan:
    """Find the supported files named by ``paths`` (folders are walked recursively).

    Hidden files and folders (names starting with ``.``) inside a folder are skipped, and so
    is anything under ``exclude`` (e.g. the index folder itself). Only regular files are
    returned: FIFOs, devices and sockets are never opened (reading one would block forever
    or never end). A file reached twice (through a symlinked folder or file) is kept once.
    A file named explicitly must be a regular file with a supported extension. Folders that
    cannot be listed are recorded in :attr:`Scan.unreadable_dirs`, never silently dropped.

    Raises:
        FileNotFoundError: a path does not exist.
        IngestError: a file named explicitly is not a regular file or not a supported type.
    """
    if isinstance(paths, str):
        raise TypeError("paths must be a list of paths, not a single string; wrap it: [path]")
    exts = tuple(e.lower() for e in extensions)
    excluded = [os.path.realpath(e) for e in exclude]
    scan = Scan()
    real_of: dict[str, str] = {}

    def is_excluded(p: str) -> bool:
        rp = os.path.realpath(p)
        return any(rp == e or rp.startswith(e + os.sep) for e in excluded)

    def consider(full: str, explicit: bool) -> None:
        try:
            st = os.stat(full)  # follows symlinks: a link to /dev/zero is a device
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            if explicit:
                raise IngestError(f"{full!r} is not a regular file (a FIFO, device, socket or broken link); "
                                  "pass text files or folders")
            scan.not_regular.append(full)
            return
        if not full.lower().endswith(exts):
            if explicit:
                raise IngestError(f"{full!r} is not a supported file; bgem3 reads {', '.join(exts)} files")
            scan.unsupported.setdefault(os.path.splitext(full)[1].lower(), []).append(full)
            return
        if is_excluded(full):
            return
        real = os.path.realpath(full)
        if real in real_of:
            if real_of[real] != full:
                scan.duplicates.append((full, real_of[real]))
            return
        real_of[real] = full
        scan.files.append(full)

    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{raw!r} does not exist; pass existing files or folders to index")
        if not os.path.isdir(path):
            consider(path, explicit=True)
            continue
        if is_excluded(path):
            continue

        def onerror(exc: OSError) -> None:
            scan.unreadable_dirs.append((exc.filename or path, exc.strerror or str(exc)))

        for root, dirs, files in os.walk(path, onerror=onerror):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_excluded(os.path.join(root, d)))
            for name in sorted(files):
                if not name.startswith("."):
                    consider(os.path.join(root, name), explicit=False)
    return scan


def find_files(paths: Sequence[str], extensions: Sequence[str] = SUPPORTED_EXTENSIONS,
               exclude: Sequence[str] = ()) -> list[str]:
    """Absolute paths of the supported files named by ``paths``: :func:`scan_paths`'s files.

    Raises :class:`IngestError` if a folder cannot be listed (so no file is taken for removed).
    """
    scan = scan_paths(paths, extensions, exclude)
    if scan.unreadable_dirs:
        d, why = scan.unreadable_dirs[0]
        raise IngestError(f"cannot list the folder {d!r} ({why}); fix its permissions or leave it out")
    return scan.files


def _open_regular(path: str):
    """A binary file object for ``path``, refusing anything but a regular file (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise IngestError(f"cannot read {path!r} ({exc.strerror or exc}); check that the file is readable") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IngestError(f"{path!r} is not a regular file (a FIFO, device or socket); leave it out")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(path: str) -> str:
    """Hex sha256 of a regular file's bytes."""
    h = hashlib.sha256()
    with _open_regular(path) as fh:
        try:
            for block in iter(lambda: fh.read(_READ_BLOCK), b""):
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
    chunk_size = positive_int(chunk_size, "chunk_size")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be an integer with 0 <= chunk_overlap < chunk_size ({chunk_size}); got {chunk_overlap!r}")
    length = length_function or len

    # 1. atoms: spans no longer than chunk_size, cut at the best separator available
    atoms: list[tuple[int, int, int]] = []  # (start, end, length)

    def cut(start: int, end: int, level: int, n: Optional[int] = None) -> None:
        if n is None:
            n = length(text[start:end])
        if n <= chunk_size or level >= len(SEPARATORS):
            atoms.append((start, end, n))
            return
        sep = SEPARATORS[level]
        if sep == "":
            hard_cut(start, end)
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
            cut(start, end, level + 1, n)  # same span: its length is known, do not measure it again
            return
        for a, b in pieces:
            cut(a, b, level + 1)

    def hard_cut(start: int, end: int) -> None:
        """Largest prefixes that fit, in time linear in the text: a window that doubles from
        ``chunk_size`` characters until it no longer fits, then a binary search inside it,
        so each measurement is about one passage long, never the rest of the text."""
        pos = start
        while pos < end:
            lo, hi = pos + 1, min(end, pos + max(chunk_size, 1))  # lo always fits (one character)
            if length(text[pos:hi]) <= chunk_size:
                lo = hi
                while hi < end:
                    nxt = min(end, pos + 2 * (hi - pos))
                    if length(text[pos:nxt]) > chunk_size:
                        hi = nxt - 1
                        break
                    lo = hi = nxt
            else:
                hi -= 1
            while lo < hi:  # largest e in [lo, hi] with length(text[pos:e]) <= chunk_size
                mid = (lo + hi + 1) // 2
                if length(text[pos:mid]) <= chunk_size:
                    lo = mid
                else:
                    hi = mid - 1
            atoms.append((pos, lo, length(text[pos:lo])))
            pos = lo

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

def _text_stream(path: str):
    """A text stream over a regular file: UTF-8 (BOM optional). UTF-16 is refused with the fix."""
    import io

    fh = _open_regular(path)
    try:
        head = fh.peek(4)[:4]
    except OSError as exc:
        fh.close()
        raise IngestError(f"cannot read {path!r} ({exc.strerror or exc}); check that the file is readable") from None
    if head.startswith(codecs.BOM_UTF8):
        enc = "utf-8-sig"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        fh.close()
        raise IngestError(f"cannot read {path!r}: it is not UTF-8 text (it starts with a UTF-16 byte-order mark); "
                          f"convert it to UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`) or leave it out")
    else:
        enc = "utf-8"
    return io.TextIOWrapper(fh, encoding=enc, errors="strict")


def _decode_error(path: str, exc: Exception) -> IngestError:
    if isinstance(exc, UnicodeDecodeError):
        return IngestError(f"cannot read {path!r}: it is not UTF-8 text ({exc.reason}); convert it to UTF-8 "
                           "or leave it out")
    return IngestError(f"cannot read {path!r} ({getattr(exc, 'strerror', None) or exc}); check that the file is readable")


def _binary_error(path: str) -> IngestError:
    return IngestError(f"cannot read {path!r}: it is not UTF-8 text (it holds NUL bytes: binary, or UTF-16); "
                       "leave it out or convert it to UTF-8")


def _segment_cut(buf: str, limit: int) -> int:
    """Where to end a segment of ``buf`` (<= ``limit``): after the last paragraph break in the
    second half, else line break, sentence end or space, else at ``limit``."""
    for sep in ("\n\n", "\n", ". ", "。", " "):
        i = buf.rfind(sep, limit // 2, limit)
        if i >= 0:
            return i + len(sep)
    return limit


def iter_segments(path: str, segment_chars: int = SEGMENT_CHARS) -> Iterator[tuple[int, str]]:
    """``(offset, text)`` segments of a text file, each at most ``segment_chars`` characters,
    cut at paragraph/line/sentence/word boundaries; the file is read block by block."""
    with _text_stream(path) as tw:
        base, buf, eof = 0, "", False
        while not eof or buf:
            if not eof and len(buf) < segment_chars:
                try:
                    block = tw.read(_READ_BLOCK)
                except (UnicodeDecodeError, OSError) as exc:
                    raise _decode_error(path, exc) from None
                if "\x00" in block:
                    raise _binary_error(path)
                if block:
                    buf += block
                    continue
                eof = True
            cut = len(buf) if eof and len(buf) <= segment_chars else _segment_cut(buf, segment_chars)
            yield base, buf[:cut]
            base += cut
            buf = buf[cut:]


def _iter_lines(path: str) -> Iterator[tuple[int, str]]:
    with _text_stream(path) as tw:
        lineno = 0
        while True:
            try:
                line = tw.readline()
            except (UnicodeDecodeError, OSError) as exc:
                raise _decode_error(path, exc) from None
            if not line:
                return
            lineno += 1
            if "\x00" in line:
                raise _binary_error(path)
            yield lineno, line


def _passages_of(text: str, base_id: str, metadata: dict, chunk_size: int, chunk_overlap: int,
                 length_function: Optional[Callable[[str], int]], keep_id_if_single: bool,
                 first: int = 0, offset: int = 0) -> list[Passage]:
    spans = split_text(text, chunk_size, chunk_overlap, length_function)
    out = []
    for n, (a, b) in enumerate(spans, start=first):
        pid = base_id if (keep_id_if_single and len(spans) == 1) else f"{base_id}#{n}"
        md = dict(metadata)
        md.update(passage=n, start_char=offset + a, end_char=offset + b)
        out.append(Passage(pid, text[a:b], md))
    return out


def _records(path: str, source: str) -> Iterator[tuple[str, str, dict]]:
    """``(id, text, metadata)`` of each JSONL record, checked."""
    seen: dict[str, int] = {}
    for lineno, line in _iter_lines(path):
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
        yield rid, text, md


def check_source(path: str) -> Optional[str]:
    """Read one file through without splitting it; ``None`` if it can be indexed, else why not
    (the message :func:`iter_passages` would raise). Cheap: no tokenizer, one pass."""
    try:
        if path.lower().endswith(".jsonl"):
            for _ in _records(path, path):
                pass
        else:
            for _ in iter_segments(path):
                pass
    except IngestError as exc:
        return str(exc)
    return None


def iter_passages(path: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
                  length_function: Optional[Callable[[str], int]] = None,
                  source: Optional[str] = None) -> Iterator[Passage]:
    """The passages of one ``.txt`` / ``.md`` / ``.jsonl`` file, one at a time (streaming).

    A text file is read in segments of at most :data:`SEGMENT_CHARS` characters (cut at a
    paragraph break where there is one), each split with :func:`split_text`; neighbouring
    passages overlap within a segment, not across a segment boundary. ``start_char`` /
    ``end_char`` are offsets into the whole file's text. See :func:`read_source` for the rest.
    """
    source = source or path
    if not path.lower().endswith(".jsonl"):
        n = 0
        for offset, segment in iter_segments(path):
            for p in _passages_of(segment, source, {"source": source}, chunk_size, chunk_overlap, length_function,
                                  keep_id_if_single=False, first=n, offset=offset):
                n += 1
                yield p
        return
    for rid, text, md in _records(path, source):
        yield from _passages_of(text, rid, md, chunk_size, chunk_overlap, length_function, keep_id_if_single=True)


def read_source(path: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
                length_function: Optional[Callable[[str], int]] = None, source: Optional[str] = None) -> list[Passage]:
    """The passages of one ``.txt`` / ``.md`` / ``.jsonl`` file (a list; :func:`iter_passages` streams).

    Args:
        path: the file (a regular file: FIFOs and devices are refused, never read).
        chunk_size / chunk_overlap / length_function: see :func:`split_text`.
        source: the name recorded in each passage's ``metadata["source"]`` and used in text
            passages' ids (default: ``path``).

    Text must be UTF-8 (a BOM is allowed); UTF-16 and binary files are refused with the fix.

    Raises:
        IngestError: unreadable file, not UTF-8, binary (NUL bytes), a JSONL line that is not a
            JSON object with a string ``text``, a non-dict ``metadata``, or a duplicate ``id``
            within the file.
    """
    return list(iter_passages(path, chunk_size, chunk_overlap, length_function, source))


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

    def __init__(self, files: Optional[dict] = None, settings: Optional[dict] = None,
                 model: Optional[dict] = None) -> None:
        self.files: dict[str, dict[str, Any]] = dict(files or {})
        self.settings: dict[str, Any] = dict(settings or {})
        #: ``{"name": ..., "fingerprint": ...}`` of the model the passages were encoded with
        self.model: dict[str, Any] = dict(model or {})

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

    def plan(self, roots: Sequence[str], current: dict[str, str], force: bool = False,
             keep: Sequence[str] = ()) -> Plan:
        """Compare the files found now under ``roots`` (``{path: sha256}``) with the manifest.

        Files in the manifest that are under one of ``roots`` but were not found are removed;
        files outside every root are left alone (so several folders can share one index), and
        so are files under ``keep`` (folders that could not be listed, files that could not
        be read: unreadable input never deletes indexed passages).
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
            if path not in current and is_under(path, roots) and not is_under(path, keep):
                plan.removed.append(path)
        return plan

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        out = {"format": MANIFEST_FORMAT, "settings": self.settings, "files": self.files}
        if self.model:
            out["model"] = self.model
        return out

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

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")

    @staticmethod
    def _committed(folder: str) -> Optional[tuple[str, Optional[str]]]:
        """``(path, sha256)`` of the source list the index's ``manifest.json`` names, or ``None``."""
        try:
            with open(os.path.join(folder, "manifest.json"), "rb") as fh:
                index_manifest = json.loads(fh.read(64 << 20).decode("utf-8"))
            rec = index_manifest.get("attachments", {}).get("sources")
        except (OSError, ValueError, AttributeError):
            return None
        name = rec.get("file") if isinstance(rec, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"attach-[0-9a-f]{16}\.json", name):
            return None
        sha = rec.get("sha256")
        return os.path.join(folder, name), sha if isinstance(sha, str) else None

    @classmethod
    def committed_path(cls, folder: str) -> Optional[str]:
        """The source list committed WITH the index: the file the index's ``manifest.json`` names
        (``attachments.sources``, written by ``bgem3 index`` in the same atomic commit as the
        passages), or ``None`` for an index without one (then ``sources.json`` is the list)."""
        c = cls._committed(folder)
        return c[0] if c else None

    @classmethod
    def load(cls, folder: str) -> "Manifest":
        """Read the source list committed with the index in ``folder`` (see :meth:`committed_path`),
        else ``folder/sources.json``; an empty manifest if there is none."""
        committed = cls._committed(folder)
        for _ in range(5):  # a commit that replaced the list meanwhile: read the new one
            path = committed[0] if committed else os.path.join(folder, MANIFEST_NAME)
            problem = None
            if committed is not None and not os.path.exists(path):
                problem = (f"the source list {path!r} that the index's manifest.json names is missing; the index "
                           "folder is incomplete: restore it, or rebuild with --rebuild")
            elif not os.path.exists(path):
                return cls()
            else:
                try:
                    with open(path, "rb") as fh:
                        raw = fh.read()
                except FileNotFoundError:
                    raw = None
                    problem = f"the source list {path!r} is missing"
                except OSError as exc:
                    raise IngestError(f"the source manifest {path!r} is unreadable ({exc}); rebuild the index into "
                                      "a new folder") from None
                if raw is not None and committed is not None and committed[1] is not None \
                        and hashlib.sha256(raw).hexdigest() != committed[1]:
                    problem = (f"the source list {path!r} does not match its SHA-256 in the index's manifest.json: "
                               "it is corrupted; rebuild with --rebuild")
            if problem is None:
                break
            again = cls._committed(folder)
            if again == committed:
                raise IngestError(problem)
            committed = again
        else:
            raise IngestError(f"the index at {folder!r} changed five times while its source list was read; retry")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IngestError(f"the source manifest {path!r} is unreadable ({exc}); rebuild the index into a new folder") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
            raise IngestError(f"the source manifest {path!r} has an unknown format; rebuild the index into a new folder")
        model = data.get("model") or {}
        if not isinstance(model, dict):
            raise IngestError(f"the source manifest {path!r} has an invalid \"model\" entry; rebuild the index")
        return cls(data["files"], data.get("settings") or {}, model)
