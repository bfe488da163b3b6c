"""The ``bgem3`` command: build and update a hybrid index from files, search it, embed texts.

Usage::

    bgem3 index docs/ notes.md --index ./my-index          # build, or update after edits
    bgem3 search "how do I rotate the logs?" --index ./my-index -k 5 [--explain] [--json]
    bgem3 embed "first text" "second text" -o vectors.npz  # dense + lexical + ColBERT
    bgem3 info --index ./my-index

Every command takes ``--model`` (default ``$BGEM3_MODEL`` or ``BAAI/bge-m3``; any hub id or local
folder), ``--device`` and ``--dtype``. BGE-M3 gives dense + learned lexical + ColBERT; a model without
its heads (E5, BGE v1.5, sentence-transformers) gives dense + BM25 (``bgem3.bm25``). A failure you can cause (a missing file or folder, no network for a hub id,
an index built with another model, an unreadable file, empty input) ends with one line
``bgem3: error: ...`` on stderr and a non-zero exit status; the index on disk is only ever
replaced as a whole, so it is never left half-written.

Run it as ``bgem3 ...`` or ``python -m bgem3 ...``. ``main(argv)`` is callable in-process::

    >>> from bgem3.cli import main
    >>> main(["--version"])            # doctest: +SKIP
    bgem3 0.1.0
    0
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import signal
import shutil
import sys
import uuid
from typing import Any, Iterator, Optional, Sequence, TextIO

from . import __version__
from ._checks import FUSION_MODES
# CLIError, the one-line-usage-error parser and --backend's options are shared with `bgem3 serve`
# (bgem3/serve/cli.py): they live in bgem3/_argtypes.py, so neither CLI imports the other
from ._argtypes import CLIError, backend_options
from ._argtypes import OneLineParser as _Parser
from ._argtypes import UsageError as _UsageError
from ._argtypes import finite_float as _finite_float
from ._argtypes import non_negative as _non_negative
from ._argtypes import positive as _positive
from .ingest import (DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, SUPPORTED_EXTENSIONS, IngestError, Manifest,
                     check_source, file_sha256, iter_passages, read_source, scan_paths)

DEFAULT_MODEL = "BAAI/bge-m3"
#: Environment variable naming the model used when ``--model`` is not given (new index, embed).
MODEL_ENV = "BGEM3_MODEL"


def _default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


#: Exit statuses.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------- small helpers

@contextlib.contextmanager
def _quiet_libraries():
    """Keep stderr for our own messages: no transformers load bars or advisory warnings (restored after)."""
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # pragma: no cover - transformers is a hard dependency
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_arg(name: str) -> str:
    """A local folder as an absolute path (so the index can find it again from anywhere); hub ids as given."""
    expanded = os.path.expanduser(name)
    return os.path.abspath(expanded) if os.path.isdir(expanded) else name


def _load_encoder(args: argparse.Namespace, model: Optional[str] = None):
    from .encoder import Encoder

    kwargs: dict[str, Any] = backend_options(args)
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    return Encoder(_model_arg(model or args.model or _default_model()), device=args.device, dtype=args.dtype, **kwargs)


def _model_token_budget(encoder: Any) -> Optional[int]:
    """Text tokens the model reads per passage: its max length minus its special tokens."""
    try:
        return int(encoder.max_length) - int(encoder.tokenizer.num_special_tokens_to_add(pair=False))
    except Exception:
        return None


def _is_hybrid_index(folder: str) -> bool:
    """Verifiably a saved index (a HybridIndex manifest whose files are all there), not merely a
    folder holding some ``manifest.json``."""
    from .index.storage import is_saved_index

    return is_saved_index(folder)


def _is_unfinished(folder: str) -> bool:
    """Only the uncommitted segments of a first ``bgem3 index`` run that was killed: ours, reusable."""
    from .index.storage import holds_only_uncommitted_segments

    return holds_only_uncommitted_segments(folder)


def _recover(folder: str) -> None:
    """Put back an index that an interrupted bgem3 0.1 save left as ``.<name>.old-*`` (see
    :func:`bgem3.index.persistence.recover_interrupted_save`)."""
    from .index.persistence import recover_interrupted_save

    if recover_interrupted_save(folder):
        _err(f"bgem3: recovered the index at {folder} from the backup an interrupted save left beside it")


def _backup_hint(folder: str) -> str:
    """For a read command (``search``, ``info``) on a missing folder: a read never renames folders, so a
    backup that an interrupted bgem3 0.1 save left beside it is only named, with the command that puts it back."""
    from .index.persistence import interrupted_save_leftovers

    backups = interrupted_save_leftovers(folder)
    if not backups:
        return ""
    return (f"; an interrupted bgem3 0.1 save left {backups[0].name!r} beside it: `bgem3 index PATH... --index "
            f"{folder}` puts it back (or bgem3.index.persistence.recover_interrupted_save)")


def _index_model_name(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, "manifest.json"), "r", encoding="utf-8") as fh:
            return json.load(fh).get("model_name")
    except (OSError, ValueError, AttributeError):
        return None


def _fingerprint_of(encoder: Any) -> Optional[str]:
    path = getattr(encoder, "path", None)
    if not isinstance(path, str) or not os.path.isdir(path):
        return None
    from .fingerprint import model_fingerprint

    return model_fingerprint(path)


def _fingerprint_of_name(name: str) -> Optional[str]:
    """Fingerprint of a model named on the command line or in an index, without loading it
    (``None`` if it cannot be found here: loading it then fails with the encoder's message)."""
    from .encoder import ModelLoadError, resolve_model_path
    from .fingerprint import model_fingerprint

    try:
        return model_fingerprint(resolve_model_path(_model_arg(name), local_files_only=True))
    except (ModelLoadError, OSError, ValueError):
        return None


def _same_name(a: str, b: str) -> bool:
    norm = lambda x: os.path.normpath(os.path.abspath(x)) if os.path.isdir(x) else x  # noqa: E731
    return a == b or norm(a) == norm(b)


def _check_model(args: argparse.Namespace, folder: str, manifest: Manifest, action: str) -> bool:
    """Refuse a ``--model`` other than the one the index at ``folder`` was built with, or a model
    folder whose files changed since. Returns True when ``--model`` is that same model (under
    its recorded name or another). Runs before any model is loaded."""
    recorded = manifest.model.get("name") or _index_model_name(folder) or "?"
    recorded_fp = manifest.model.get("fingerprint")
    shown = _display_path(folder)
    if args.model:
        given = _model_arg(args.model)
        fp = _fingerprint_of_name(given) if recorded_fp else None
        same = (fp == recorded_fp) if (recorded_fp and fp) else _same_name(recorded, given)
        if not same:
            if action == "index":
                fix = (f"re-encode every file with it: `bgem3 index PATH... --index {shown} --model {args.model} "
                       f"--rebuild`; or use another --index folder; or leave out --model to keep {recorded!r}")
            else:
                fix = (f"leave out --model to search with {recorded!r}, or re-encode the index with the new model "
                       f"(`bgem3 index PATH... --index {shown} --model {args.model} --rebuild`)")
            raise CLIError(f"the index {shown} was built with model {recorded!r}, but --model {args.model!r} is "
                           f"a different model (queries and passages must be encoded by the same one): {fix}")
        return True
    if recorded_fp:
        fp = _fingerprint_of_name(recorded)
        if fp is not None and fp != recorded_fp:
            raise CLIError(f"the model {recorded!r} that built the index {shown} has changed on disk since (its "
                           f"files differ), so new queries would not match the stored passages; rebuild with "
                           f"`bgem3 index PATH... --index {shown} --model {recorded} --rebuild`")
    return False


def _resolve_model_for_index(args: argparse.Namespace, folder: str, manifest: Manifest, existing: bool) -> str:
    if existing:
        _check_model(args, folder, manifest, "index")
        return manifest.model.get("name") or _index_model_name(folder) or _default_model()
    if not args.model and args.rebuild and _is_hybrid_index(folder):  # --rebuild keeps the index's model
        return Manifest.load(folder).model.get("name") or _index_model_name(folder) or _default_model()
    return args.model or _default_model()


def _check_link(folder: str) -> None:
    """A symlink that leads nowhere (a loop, or a missing target) is named as such."""
    if os.path.islink(folder) and not os.path.exists(folder):
        try:
            os.stat(folder)
            why = "a missing target"
        except OSError as exc:
            why = "a symlink loop" if exc.errno == errno.ELOOP else "a missing target"
        raise CLIError(f"--index {_display_path(folder)} is a symlink to {os.readlink(folder)!r} that leads nowhere "
                       f"({why}); point it at a real folder or pass another --index")


def _load_index(args: argparse.Namespace, folder: str, manifest: Optional[Manifest] = None):
    """Load the index at ``folder`` with ``--model`` if given (checked to be the model it was built
    with), else with the model it was built with."""
    from .index import HybridIndex

    _check_link(folder)
    if not os.path.exists(folder):
        raise CLIError(f"index folder {folder!r} does not exist; build it with `bgem3 index PATH... --index {folder}`"
                       + _backup_hint(folder))
    if not os.path.isdir(folder):
        raise CLIError(f"--index {folder!r} is a file, not an index folder")
    if not _is_hybrid_index(folder):
        raise CLIError(f"{folder!r} is not a bgem3 index (no manifest.json); build one with "
                       f"`bgem3 index PATH... --index {folder}`")
    manifest = manifest if manifest is not None else Manifest.load(folder)
    _check_model(args, folder, manifest, "search" if getattr(args, "command", "") == "search" else "index")
    if args.model:
        return HybridIndex.load(folder, encoder=_load_encoder(args), allow_model_mismatch=True)
    kwargs: dict[str, Any] = {"device": args.device, "dtype": args.dtype, **backend_options(args)}
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    return HybridIndex.load(folder, **kwargs)


def _wanted_lexical(args: argparse.Namespace, encoder: Any):
    """The lexical channel ``--lexical`` / ``--bm25-k1`` / ``--bm25-b`` ask for (None: the model's own head)."""
    choice = getattr(args, "lexical", None) or "auto"
    tuned = getattr(args, "bm25_k1", None) is not None or getattr(args, "bm25_b", None) is not None
    has_heads = bool(getattr(encoder, "has_heads", False)) if encoder is not None else None
    if choice == "learned":
        if tuned:
            raise CLIError("--bm25-k1 / --bm25-b set BM25's parameters; they do not apply with --lexical learned")
        if has_heads is False:
            raise CLIError(f"--lexical learned needs BGE-M3's lexical head, which the model "
                           f"{getattr(encoder, 'model_name', '?')!r} does not have; use --lexical bm25 (the default "
                           "for such models)")
        return None
    if choice == "bm25" or tuned or has_heads is False:
        from .bm25 import DEFAULT_B, DEFAULT_K1, BM25

        k1 = args.bm25_k1 if getattr(args, "bm25_k1", None) is not None else DEFAULT_K1
        b = args.bm25_b if getattr(args, "bm25_b", None) is not None else DEFAULT_B
        try:
            return BM25(k1=k1, b=b)
        except ValueError as exc:
            raise CLIError(f"{exc} (--bm25-k1 / --bm25-b)") from None
    return None


def _new_index(encoder: Any, args: argparse.Namespace):
    """An empty store for ``encoder``: dense (+ ColBERT for BGE-M3) and a lexical channel: the
    model's learned head, or BM25 for a model without one (or with ``--lexical bm25``)."""
    from .index import HybridIndex

    lexical = _wanted_lexical(args, encoder)
    kwargs: dict[str, Any] = {} if lexical is None else {"lexical": lexical}
    codec = getattr(args, "colbert_codec", None)
    if codec is not None:
        if getattr(encoder, "has_heads", True) is False:
            raise CLIError(f"--colbert-codec sets how ColBERT vectors are stored, but the model "
                           f"{_display_path(str(encoder.model_name))!r} has no ColBERT head (the index is dense + "
                           "BM25); leave out --colbert-codec")
        kwargs["colbert_codec"] = codec
    return HybridIndex(encoder, **kwargs)


class _SavedLexical:
    """The lexical channel a saved manifest records (kind + settings), without building it."""

    def __init__(self, kind: str, config: dict) -> None:
        self.kind, self._config = kind, config

    def config(self) -> dict:
        return dict(self._config)


def _check_saved_layout(args: argparse.Namespace, folder: str) -> None:
    """``--lexical`` / ``--bm25-*`` / ``--colbert-codec`` against what the saved index holds, from
    its manifest: before the up-to-date shortcut and before any model is loaded, so a choice the
    index does not hold is never ignored."""
    import types
    from pathlib import Path

    from .index.storage import read_manifest

    try:
        m = read_manifest(Path(folder))
    except Exception:  # noqa: BLE001 - unreadable here: the load below reports it
        return
    lex = m.get("lexical")
    if m.get("format_version") != 2 or not isinstance(m.get("channels"), list):
        return  # a format-1 index: checked once loaded
    lexical = (_SavedLexical(str(lex.get("kind")), lex.get("config") if isinstance(lex.get("config"), dict) else {})
               if isinstance(lex, dict) else None)
    saved = types.SimpleNamespace(channels=tuple(m["channels"]), lexical=lexical, encoder=None,
                                  colbert_codec=m.get("colbert_codec"))
    _check_lexical_unchanged(args, saved, folder)
    _check_codec_unchanged(args, saved, folder)


def _check_codec_unchanged(args: argparse.Namespace, index: Any, folder: str) -> None:
    """``--colbert-codec`` on an existing index must be the codec it was built with (else --rebuild)."""
    codec = getattr(args, "colbert_codec", None)
    if codec is None:
        return
    if "colbert" not in index.channels:
        raise CLIError(f"--colbert-codec {codec}: the index {_display_path(folder)} has no ColBERT channel "
                       f"(channels {_channels_label(index)}); leave out --colbert-codec")
    if index.colbert_codec != codec:
        raise CLIError(f"the index {_display_path(folder)} stores ColBERT vectors as {index.colbert_codec}, not "
                       f"{codec}; pass --rebuild to re-encode it with --colbert-codec {codec}, or leave out "
                       "--colbert-codec")


def _check_lexical_unchanged(args: argparse.Namespace, index: Any, folder: str) -> None:
    """``--lexical`` / ``--bm25-*`` on an existing index must match what it holds (else --rebuild)."""
    choice = getattr(args, "lexical", None) or "auto"
    tuned = getattr(args, "bm25_k1", None) is not None or getattr(args, "bm25_b", None) is not None
    if choice == "auto" and not tuned:
        return
    want = _wanted_lexical(args, index.encoder)
    have = getattr(index, "lexical", None)
    same = (want is None and _lexical_kind(index) == "learned_sparse") or (
        want is not None and have is not None and getattr(have, "kind", None) == want.kind
        and have.config() == want.config())
    if not same:
        kind = _lexical_kind(index)
        held = ("no lexical channel" if have is None else "BM25 " + json.dumps(have.config(), sort_keys=True)
                if kind == "bm25" else "BGE-M3's learned lexical weights" if kind == "learned_sparse"
                else f"the lexical channel {kind!r}")
        asked = ("BGE-M3's learned lexical weights" if want is None
                 else "BM25 " + json.dumps(want.config(), sort_keys=True))
        raise CLIError(f"the index {_display_path(folder)} holds {held}, not {asked} as asked; pass --rebuild to "
                       "re-index with it, or leave out --lexical / --bm25-k1 / --bm25-b")


def _save_atomically(index, manifest: Manifest, folder: str) -> None:
    """Commit the index into ``folder`` together with its source list: the list is a file the
    index's ``manifest.json`` names, written before and committed by the same atomic manifest
    rename (incremental; it never replaces a folder that is not verifiably a saved index). A
    crash at any moment leaves the old index with the old list or the new index with the new
    list. ``sources.json`` is then rewritten as a copy for readers of earlier versions."""
    from .index.persistence import save_index

    with _commit_section():  # a Ctrl-C now waits for the commit, then says it happened
        save_index(index, folder, attachments={"sources": manifest.to_bytes()})
        try:
            manifest.save(folder)
        except OSError:
            pass  # the committed copy is the one bgem3 reads


class _InterruptedAfterCommit(KeyboardInterrupt):
    """Ctrl-C arrived while the index was being committed: the commit finished first."""


@contextlib.contextmanager
def _commit_section():
    """Defer Ctrl-C until the block is done, so an interrupted save is never half a save (and the
    message never says "nothing was changed" about an index that was in fact written)."""
    got: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread: signals are delivered elsewhere
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise _InterruptedAfterCommit()


def _display_path(path: str) -> str:
    """Relative to the working directory when the file is under it, else as stored; control
    characters escaped (a file name is shown, never obeyed by the terminal)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return _printable(path)
    return _printable(path if rel.startswith("..") else rel)


def _snippet(text: str, query: str, width: int) -> str:
    """One line of ``text`` around the first word of ``query`` it contains."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    low = flat.lower()
    pos = -1
    for word in sorted({w.strip(".,;:!?\"'()").lower() for w in query.split()}, key=len, reverse=True):
        if len(word) >= 3:
            pos = low.find(word)
            if pos >= 0:
                break
    start = max(0, min(pos - width // 3, len(flat) - width)) if pos > 0 else 0
    out = flat[start:start + width - 1]
    if start > 0:
        out = "…" + out[1:]
    return out + "…" if start + width - 1 < len(flat) else out


def _source_label(md: dict) -> str:
    src = md.get("source")
    if not src:
        return "-"
    label = _display_path(str(src))
    if "line" in md:
        return f"{label}:{md['line']}"
    if "passage" in md:
        return f"{label} #{md['passage']}"
    return label


def _parse_weights(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in value.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not three numbers; write e.g. 0.4,0.2,0.4") from None
    if len(parts) != 3 or not all(math.isfinite(x) for x in parts) or min(parts) < 0 or sum(parts) == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give three non-negative numbers (dense,lexical,colbert), not all zero")
    return parts  # type: ignore[return-value]


def _parse_filter(items: Optional[Sequence[str]]) -> Optional[dict]:
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--filter {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:  # numbers / true / false / null compare as JSON values; anything else as a string
            parsed = json.loads(value)
            if isinstance(parsed, (dict, list)):
                parsed = value
        except ValueError:
            parsed = value
        out[key] = parsed
    return out


#: what a terminal would obey instead of show: C0/C1 controls (ESC starts ANSI sequences that can
#: clear the screen, retitle the window or hide text), DEL, and the bidi overrides that reorder text
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``, ``\\u202e``):
    file names and passage texts are data, never instructions to the user's terminal.

    >>> _printable("a\x1b[2Jb\nc")
    'a\\x1b[2Jb\\nc'
    """
    def esc(m: "re.Match[str]") -> str:
        c = m.group(0)
        if keep_newlines and c == "\n":
            return c
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROLS.sub(esc, text)


def _err(msg: str) -> None:
    print(_printable(msg, keep_newlines=True), file=sys.stderr)


# --------------------------------------------------------------------------- bgem3 index

#: Passages encoded and added per step: memory is bounded by this, not by the size of a file.
INDEX_BATCH = 256
#: while indexing, rows held in memory are written to (uncommitted) segment files past this size
SPILL_BYTES = 64 << 20
#: passages per encode call inside a step: the progress bar moves at least this often
PROGRESS_STEP = 64
#: the first encode call of a run: the bar's first passages appear within seconds on a CPU
PROGRESS_FIRST_STEP = 16


class _PassageProgress:
    """The indexing bar: passages encoded, with a rate, and an ETA against the passages expected (estimated
    from the bytes split so far, exact once every file is split). Shown from the start, before the first
    passage is encoded."""

    def __init__(self, total_bytes: int, disable: Optional[bool]) -> None:
        from tqdm.auto import tqdm

        self.unit = "passage"
        self.total_bytes = max(int(total_bytes), 1)
        self.split_bytes = 0
        self.split_passages = 0
        self.done = 0
        self.bar = tqdm(total=None, unit=self.unit, desc="encoding passages", disable=disable, leave=False,
                        dynamic_ncols=True, mininterval=0.5)
        self.bar.refresh()

    def file_split(self, nbytes: int, passages: int, last: bool) -> None:
        self.split_bytes += int(nbytes)
        self.split_passages += int(passages)
        if last:
            total = self.split_passages
        elif self.split_passages:
            total = max(self.split_passages, round(self.split_passages * self.total_bytes / max(self.split_bytes, 1)))
        else:
            return
        total = max(total, self.bar.n)
        if total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    def encoded(self, n: int) -> None:
        self.done += int(n)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
#: ColBERT codecs of bgem3.index.codecs (listed here so the parser does not import numpy)
_COLBERT_CODECS = ("float32", "float16", "int8", "2bit", "1bit")


def _note(args: argparse.Namespace, msg: str) -> None:
    """A line on stderr unless ``-q``."""
    if not args.quiet:
        _err(msg)


def _bad_inputs_error(bad: dict[str, str], unreadable_dirs: list[tuple[str, str]]) -> CLIError:
    parts = [f"cannot list the folder {_display_path(d)} ({why})" for d, why in unreadable_dirs]
    parts += [msg.replace(repr(path), _display_path(path)) for path, msg in bad.items()]
    n = len(bad) + len(unreadable_dirs)
    return CLIError(f"{n} input{'s' * (n != 1)} cannot be indexed, nothing was changed: " + "; ".join(parts)
                    + ". Fix them, or pass --skip-bad to index the rest (files already indexed from them are kept)")


def cmd_index(args: argparse.Namespace) -> int:
    from ._malloc import bound_heap_growth

    bound_heap_growth()  # memory bounded by a batch, not by the input (see bgem3/_malloc.py)
    folder = os.path.abspath(os.path.expanduser(args.index))
    _check_link(folder)
    _recover(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CLIError(f"--index {args.index!r} is a file; pass a folder for the index")
    # one `bgem3 index` (or other writer) at a time on a folder: the run holds the folder's writer lock
    # from reading the source list to the commit (a second run waits, saying for whom)
    from .index.locking import writer_lock
    from .index.persistence import _remove_created

    if os.path.isdir(folder) and not _is_hybrid_index(folder) and not _is_unfinished(folder):
        raise CLIError(f"--index {args.index!r} is a non-empty folder that is not a bgem3 index; "
                       "pass a new or empty folder")  # checked before the lock file is written into it
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with writer_lock(folder, timeout=None,
                         on_wait=lambda who: _note(args, f"bgem3: waiting for {who}, which is writing the index "
                                                         f"{_display_path(folder)}")):
            return _index_locked(args, folder)
    except BaseException:
        if created:
            from pathlib import Path

            _remove_created(Path(folder))
        raise


def _index_locked(args: argparse.Namespace, folder: str) -> int:
    existing = os.path.isdir(folder) and _is_hybrid_index(folder) and not args.rebuild
    if os.path.isdir(folder) and not _is_hybrid_index(folder) and not _is_unfinished(folder):
        raise CLIError(f"--index {args.index!r} is a non-empty folder that is not a bgem3 index; "
                       "pass a new or empty folder")

    # 1. what is on disk now (cheap; fails before the model is loaded)
    scan = scan_paths(args.paths, exclude=[folder])
    notes = [f"bgem3: {line}" for line in scan.skipped_lines()]  # printed once the run succeeded
    manifest = Manifest.load(folder) if existing else Manifest()
    if existing:
        _check_saved_layout(args, folder)
    model = _resolve_model_for_index(args, folder, manifest, existing)
    bad: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for path in scan.files:
        try:
            hashes[path] = file_sha256(path)
        except IngestError as exc:
            bad[path] = str(exc)
    if not scan.files and not scan.unreadable_dirs:
        raise CLIError(f"no {', '.join(SUPPORTED_EXTENSIONS)} files found in {', '.join(map(repr, args.paths))}")

    defaults = {"chunk_size": DEFAULT_CHUNK_SIZE, "chunk_overlap": DEFAULT_CHUNK_OVERLAP, "chunk_unit": "tokens"}
    settings = {key: (getattr(args, key) if getattr(args, key) is not None else manifest.settings.get(key, default))
                for key, default in defaults.items()}
    if settings["chunk_overlap"] >= settings["chunk_size"]:
        raise CLIError(f"--chunk-overlap ({settings['chunk_overlap']}) must be smaller than --chunk-size "
                       f"({settings['chunk_size']})")
    resplit = bool(manifest.files) and bool(manifest.settings) and manifest.settings != settings
    keep = [d for d, _ in scan.unreadable_dirs] + list(bad)
    plan = manifest.plan(args.paths, hashes, force=resplit, keep=keep)
    # every file that must be (re-)read is read through once now: all bad files are reported together
    for path in plan.to_read:
        reason = check_source(path)
        if reason:
            bad[path] = reason
    if bad or scan.unreadable_dirs:
        if not args.skip_bad:
            raise _bad_inputs_error(bad, scan.unreadable_dirs)
        plan = manifest.plan(args.paths, {p: h for p, h in hashes.items() if p not in bad}, force=resplit,
                             keep=[d for d, _ in scan.unreadable_dirs] + list(bad))
        for path, msg in bad.items():
            kept = " (its indexed passages are kept)" if path in manifest.files else ""
            detail = msg.replace(repr(path), "").replace(path, "").strip().lstrip(":").strip()
            notes.append(f"bgem3: skipped {_display_path(path)}{kept}: {detail}")
        for d, why in scan.unreadable_dirs:
            notes.append(f"bgem3: skipped the folder {_display_path(d)} ({why}); passages indexed from it are kept")
    if existing and plan.is_noop:
        for line in notes:
            _note(args, line)
        if not args.quiet:
            print(f"{_display_path(folder)} is up to date ({len(plan.unchanged)} files unchanged)")
        return EXIT_OK
    if not plan.to_read and not existing and not plan.removed:
        raise CLIError("nothing to index: every file was skipped")

    # 2. the model and the index
    if existing:
        index = _load_index(args, folder, manifest)
        encoder = index.encoder
        _check_lexical_unchanged(args, index, folder)
        _check_codec_unchanged(args, index, folder)
    else:
        encoder = _load_encoder(args, model)
        index = _new_index(encoder, args)

    # 3. apply: drop old passages, then stream the new ones in batches (the folder is swapped in at the end)
    length = None
    if settings["chunk_unit"] == "tokens":
        tok = encoder.tokenizer
        if not manifest.settings and args.chunk_size is None:  # a new index: passages the model reads whole
            fit = _model_token_budget(encoder)
            if fit is not None and fit < settings["chunk_size"]:
                settings["chunk_size"] = fit
                if args.chunk_overlap is None:
                    settings["chunk_overlap"] = min(settings["chunk_overlap"], fit // 4)
                notes.append(f"bgem3: passages of at most {fit} tokens, what {_display_path(encoder.model_name)} "
                             "reads (--chunk-size sets another size)")

        def length(text: str) -> int:
            return len(tok(text, add_special_tokens=False, truncation=False)["input_ids"])

    replaced = set(plan.changed) | set(plan.removed)
    owners = {pid: path for pid, path in manifest.owner_of_ids().items() if path not in replaced}
    stale = [pid for path in replaced for pid in manifest.ids_of(path) if pid in index]
    if stale:
        index.delete(stale)
    for path in replaced:
        manifest.remove(path)
    total = 0
    batch: list = []

    def flush() -> None:
        if batch:
            batch.sort(key=lambda p: len(p.text))  # similar lengths per encode call: little padding
            i = 0
            while i < len(batch):
                # the run's first call is small: the first passages show up within seconds of encoding
                step = PROGRESS_FIRST_STEP if bar.done == 0 else PROGRESS_STEP
                part = batch[i:i + step]
                index.add([p.text for p in part], [p.id for p in part], [p.metadata for p in part],
                          show_progress=False)
                bar.encoded(len(part))
                i += step
            batch.clear()
            if index.pending_bytes > SPILL_BYTES:  # memory bounded by a spill, not by the input
                index.spill(folder)

    bar = _PassageProgress(sum(os.path.getsize(p) for p in plan.to_read), disable=args.quiet or None)
    try:
        for n_read, path in enumerate(plan.to_read, start=1):
            ids = []
            for p in iter_passages(path, settings["chunk_size"], settings["chunk_overlap"], length):
                if p.id in owners:
                    raise CLIError(f"id {p.id!r} from {_display_path(path)} is already used by "
                                   f"{_display_path(owners[p.id])}; ids must be unique across the indexed files")
                owners[p.id] = path
                ids.append(p.id)
                batch.append(p)
                if len(batch) >= INDEX_BATCH:
                    flush()
            total += len(ids)
            manifest.set(path, plan.hashes[path], ids)
            bar.file_split(os.path.getsize(path), len(ids), last=n_read == len(plan.to_read))
        flush()
        if len(index) == 0:
            raise CLIError("nothing to index: the files hold no text")
        manifest.settings = settings
        manifest.model = {"name": index.model_name, "fingerprint": _fingerprint_of(encoder)}
        _save_atomically(index, manifest, folder)
    except BaseException:
        index._discard_spilled()  # the segments written during this run were never committed
        raise
    finally:
        bar.close()

    for line in notes:
        _note(args, line)
    if not args.quiet:
        summary = (f"{len(plan.added)} added, {len(plan.changed)} changed, {len(plan.removed)} removed, "
                   f"{len(plan.unchanged)} unchanged")
        note = " (chunk settings changed: files re-split)" if resplit else ""
        print(f"indexed {total} passages from {len(plan.to_read)} files ({summary}){note}; "
              f"{_display_path(folder)} holds {len(index)} passages from {len(manifest.files)} files "
              f"[model {_display_path(index.model_name)}; channels {_channels_label(index)}]")
    return EXIT_OK


# --------------------------------------------------------------------------- bgem3 search

def cmd_search(args: argparse.Namespace) -> int:
    if not args.query.strip():
        raise CLIError("the query is empty; pass the question to search for")
    folder = os.path.abspath(os.path.expanduser(args.index))
    filt = _parse_filter(args.filter)
    index = _load_index(args, folder)
    mode = _fusion_mode(args, index)
    reranker = _load_reranker(args) if args.rerank else None
    pool = args.k if reranker is None else max(args.k, args.rerank_candidates)
    hits = index.search(args.query, k=pool, weights=args.weights, filter=filt, candidates=args.candidates,
                        mode=mode, exhaustive=args.exhaustive)
    rerank_scores = None
    if reranker is not None:  # the index's candidates rescored by the cross-encoder; channel scores kept
        from ._adapters.rerankers import rerank_hits

        ranked = rerank_hits(reranker, args.query, hits, args.k)
        hits = [h for h, _ in ranked]
        rerank_scores = [s for _, s in ranked]
    explanations = bm25_terms = None
    if args.explain and hits:
        explanations, bm25_terms = _explain_hits(index, args.query, hits)

    if args.json:
        out = {"query": args.query, "index": folder, "model": index.model_name, "channels": list(index.channels),
               "lexical": _lexical_kind(index), "mode": mode, "weights": list(args.weights), "hits": []}
        if reranker is not None:
            out["reranker"] = str(getattr(reranker, "model_name", args.rerank))
            out["rerank_candidates"] = pool
        for rank, h in enumerate(hits, start=1):
            row = {"rank": rank, "id": h.id, "score": h.score, "dense_score": h.dense_score,
                   "sparse_score": h.sparse_score, "colbert_score": h.colbert_score,
                   "source": h.metadata.get("source"), "text": h.text, "metadata": h.metadata}
            if rerank_scores is not None:
                row["rerank_score"] = rerank_scores[rank - 1]
            if explanations is not None or bm25_terms is not None:
                ex = explanations[rank - 1].to_dict(top=args.explain_top) if explanations is not None else {}
                if bm25_terms is not None:
                    ex["lexical"] = [t.to_dict() for t in bm25_terms[rank - 1][: args.explain_top]]
                    ex["lexical_kind"] = "bm25"
                row["explain"] = ex
            out["hits"].append(row)
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK

    if not hits:
        print("no results" + (" (the index is empty)" if len(index) == 0 else " (nothing matches the filter)" if filt else ""))
        return EXIT_OK
    _print_table(hits, args.query, explanations, bm25_terms, args.explain_top, sys.stdout, rerank_scores)
    if not args.quiet:
        tail = "" if reranker is None else (f" · reranked top {pool} by "
                                            f"{_display_path(str(getattr(reranker, 'model_name', args.rerank)))}")
        print(f"model {_display_path(index.model_name)} · channels {_channels_label(index)} · {mode} fusion{tail}")
        print(_columns_legend(index, mode, args.weights, reranked=reranker is not None))
    return EXIT_OK


def _load_reranker(args: argparse.Namespace) -> Any:
    """The cross-encoder of ``--rerank`` (a model name, folder or ``bgem3 serve`` URL), on ``--device`` /
    ``--dtype``, truncating pairs at ``--rerank-max-length``."""
    from .crossencoder import resolve_reranker
    from .remote import is_url

    opts: dict[str, Any] = {"max_length": args.rerank_max_length}
    if not is_url(args.rerank):
        opts.update(device=args.device, dtype=args.dtype)
    return resolve_reranker(args.rerank, **{k: v for k, v in opts.items() if v is not None})



def _columns_legend(index: Any, mode: str, weights: Sequence[float], *, reranked: bool = False) -> str:
    """One line saying what each score column of ``bgem3 search`` is (docs/cli.md has the same)."""
    if mode == "rrf":
        score = "reciprocal-rank fusion, sum of w/(60+rank) over the channels (small numbers: only the order counts)"
    else:
        score = "weighted mean of the channel scores (weights " + " ".join(f"{w:g}" for w in weights) + ")"
    parts = [f"score = {score}"]
    if reranked:
        parts.insert(0, "rerank = the cross-encoder's score (--rerank; the hits are ordered by it)")
    if "dense" in index.channels:
        parts.append("dense = cosine similarity (-1..1)")
    if "lexical" in index.channels:
        parts.append("lexical = BM25 score (unbounded, not on the cosine scale)" if _lexical_kind(index) == "bm25"
                     else "lexical = BGE-M3 lexical match (sum over shared tokens of query x document weight)")
    if "colbert" in index.channels:
        parts.append("colbert = ColBERT MaxSim (mean over query tokens of the best cosine, -1..1)")
    return "columns: " + " · ".join(parts) + "; - = channel not in the index"


def _lexical_kind(index: Any) -> Optional[str]:
    lex = getattr(index, "lexical", None)
    return None if lex is None else getattr(lex, "kind", type(lex).__name__)


def _channels_label(index: Any) -> str:
    kind = _lexical_kind(index)
    names = {"lexical": f"lexical ({'BM25' if kind == 'bm25' else 'learned' if kind == 'learned_sparse' else kind})"}
    return " + ".join(names.get(c, c) for c in index.channels)


def _fusion_mode(args: argparse.Namespace, index: Any) -> str:
    """``--mode auto``: reciprocal-rank fusion when the lexical channel is BM25 (its raw scores are not on
    a cosine's scale), the BGE-M3 weighted mean otherwise."""
    return index.fusion_mode(args.mode)


def _explain_hits(index: Any, query: str, hits: list):
    """(token-level explanations from the encoder's heads or None, BM25 terms per hit or None)."""
    explanations = bm25_terms = None
    enc = index.encoder
    if getattr(enc, "has_heads", False) and ("colbert" in index.channels or _lexical_kind(index) == "learned_sparse"):
        from .explain import explain_many

        explanations = explain_many(enc, query, [h.text for h in hits])
    if _lexical_kind(index) == "bm25":
        bm25_terms = [index.lexical.explain_text(query, h.text) for h in hits]
    return explanations, bm25_terms


def _fmt(value: Optional[float], width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3f}"


def _print_table(hits, query: str, explanations, bm25_terms, top: int, out: TextIO,
                 rerank_scores: Optional[list] = None) -> None:
    from .explain import display_token

    width = shutil.get_terminal_size((120, 24)).columns
    sources = [_printable(_source_label(h.metadata)) for h in hits]
    src_w = min(max(len("source"), *(len(s) for s in sources)), 40)
    rr_head = "" if rerank_scores is None else f"{'rerank':>7}  "
    head = f"{'#':>3}  {rr_head}{'score':>6}  {'dense':>6}  {'lexical':>7}  {'colbert':>7}  {'source':<{src_w}}  "
    snip_w = max(20, width - len(head))
    digits = 4 if max(abs(h.score) for h in hits) < 0.1 else 3  # RRF scores are small: keep them apart
    print(head + "snippet", file=out)
    for rank, (h, src) in enumerate(zip(hits, sources), start=1):
        if len(src) > src_w:
            src = "…" + src[-(src_w - 1):]
        rr_col = "" if rerank_scores is None else f"{rerank_scores[rank - 1]:7.3f}  "
        _println(f"{rank:>3}  {rr_col}{h.score:6.{digits}f}  {_fmt(h.dense_score, 6)}  {_fmt(h.sparse_score, 7)}  "
              f"{_fmt(h.colbert_score, 7)}  {src:<{src_w}}  {_snippet(h.text, query, snip_w)}", file=out)
        if bm25_terms is not None:
            terms = bm25_terms[rank - 1][:top]
            parts = [f"{t.label} {t.contribution:.3f} (tf {t.tf}, df {t.df}, idf {t.idf:.2f})" for t in terms]
            _print_parts("bm25:", parts or ["no query term in this passage"], width, out)
        if explanations is None:
            continue
        ex = explanations[rank - 1]
        if bm25_terms is None:
            lex = ex.top_lexical(top)
            parts = [f"{display_token(m.token)} {m.contribution:.3f} (q {m.query_weight:.2f} × d {m.doc_weight:.2f})"
                     for m in lex]
            _print_parts("lexical:", parts or ["no shared tokens"], width, out)
        shown = ex.colbert[: max(top * 2, 8)]
        parts = [f"{display_token(m.query_token)}→{display_token(m.doc_token)} {m.similarity:.2f}" for m in shown]
        if len(ex.colbert) > len(shown):
            parts.append(f"… {len(ex.colbert) - len(shown)} more")
        _print_parts("colbert:", parts, width, out)


def _println(line: str, file: TextIO) -> None:
    print(_printable(line), file=file)


def _print_parts(label: str, parts: list[str], width: int, out: TextIO, indent: int = 5) -> None:
    """``label part · part · ...`` wrapped at ``width`` between parts, never inside one."""
    parts = [_printable(p) for p in parts]
    line = " " * indent + label
    for i, part in enumerate(parts):
        piece = (" " if i == 0 else " · ") + part
        if len(line) + len(piece) > width and line.strip() != label:
            print(line + (" ·" if i else ""), file=out)
            line = " " * (indent + len(label) + 1) + part
        else:
            line += piece
    print(line, file=out)


# --------------------------------------------------------------------------- bgem3 embed

#: ``bgem3 embed``: the longest input line read (characters); a longer one (a file with no newline,
#: ``/dev/zero``) is refused before it fills memory. A model reads at most a few thousand tokens.
MAX_INPUT_LINE_CHARS = 1 << 22


def _bounded_lines(fh: Any, source: str) -> Iterator[str]:
    """The non-blank lines of ``fh`` (newline stripped), each read with a bound."""
    while True:
        line = fh.readline(MAX_INPUT_LINE_CHARS + 1)
        if not line:
            return
        if len(line) > MAX_INPUT_LINE_CHARS and not line.endswith("\n"):
            raise CLIError(f"{source} has a line longer than {MAX_INPUT_LINE_CHARS} characters "
                           "(bgem3.cli.MAX_INPUT_LINE_CHARS); pass one text per line, or index long documents "
                           "with `bgem3 index`, which cuts them into passages")
        if line.strip():
            yield line.rstrip("\n")


def _read_inputs(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.input:
        if args.input == "-":
            texts.extend(_bounded_lines(sys.stdin, "stdin"))
        else:
            if not os.path.exists(args.input):
                raise CLIError(f"--input {args.input!r} does not exist")
            if args.input.lower().endswith(".jsonl"):
                texts.extend(p.text for p in read_source(os.path.abspath(args.input), chunk_size=10**12,
                                                         chunk_overlap=0))
            else:
                try:
                    with open(args.input, "r", encoding="utf-8-sig") as fh:
                        texts.extend(_bounded_lines(fh, f"--input {args.input!r}"))
                except UnicodeDecodeError:
                    raise CLIError(f"cannot read --input {args.input!r}: it is not UTF-8 text") from None
                except OSError as exc:
                    raise CLIError(f"cannot read --input {args.input!r} ({exc.strerror or exc})") from None
    elif not texts and not sys.stdin.isatty():
        texts.extend(_bounded_lines(sys.stdin, "stdin"))
    if not texts:
        raise CLIError("no input texts: pass texts as arguments, --input FILE (one text per line, or .jsonl "
                       "with a \"text\" field), or pipe them on stdin")
    return texts


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    out_path = args.output
    fmt = "jsonl" if out_path in (None, "-") else os.path.splitext(out_path)[1].lower().lstrip(".")
    if fmt not in ("jsonl", "npy", "npz"):
        raise CLIError(f"--output {out_path!r}: unknown format; use a .jsonl, .npy or .npz file name (or - for stdout)")
    asked = [name for name in ("dense", "sparse", "colbert") if getattr(args, name)]
    if fmt == "npy" and (set(asked) - {"dense"} or args.bm25):
        raise CLIError("a .npy file holds one array (the dense vectors); use .npz or .jsonl for --sparse / --colbert "
                       "/ --bm25")
    if out_path not in (None, "-"):
        parent = os.path.dirname(os.path.abspath(out_path))
        if not os.path.isdir(parent):
            raise CLIError(f"--output {out_path!r}: the folder {parent!r} does not exist")
    texts = _read_inputs(args)
    encoder = _load_encoder(args)
    if asked:
        want = set(asked)
        if want - {"dense"} and not encoder.has_heads:
            raise CLIError(f"the model {encoder.model_name!r} has no BGE-M3 heads, so it gives dense vectors only; "
                           "drop --sparse/--colbert (--bm25 writes BM25 term frequencies for any model)")
    elif fmt == "npy":
        want = {"dense"}
    else:
        want = {"dense", "sparse", "colbert"} if encoder.has_heads else {"dense"}
    fn = {"query": encoder.encode_queries, "passage": encoder.encode_documents, "raw": encoder.encode}[args.as_]
    res = fn(texts, dense="dense" in want, sparse="sparse" in want, colbert="colbert" in want,
             show_progress=False if args.quiet else None)
    bm25 = None
    if args.bm25:  # what a BM25 index stores per passage: term -> frequency (IDF needs a corpus)
        from .bm25 import BM25, term_id

        tok = BM25().tokenizer
        bm25 = []
        for text in texts:
            counts: dict[str, int] = {}
            for t in tok(text):
                counts[t] = counts.get(t, 0) + 1
            bm25.append(counts)
        want = want | {"bm25"}

    def write(path: str, writer) -> None:  # temp file + rename: never a half-written output
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            writer(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    if fmt == "npy":
        def w_npy(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, res.dense, allow_pickle=False)
        write(out_path, w_npy)
    elif fmt == "npz":
        from .scoring import pack_multivectors, sparse_to_csr

        arrays: dict[str, np.ndarray] = {"token_counts": res.token_counts}
        if res.dense is not None:
            arrays["dense"] = res.dense
        if res.sparse is not None:
            csr = sparse_to_csr(res.sparse, encoder.vocab_size)
            arrays.update(sparse_indptr=csr.indptr.astype(np.int64), sparse_indices=csr.indices.astype(np.int64),
                          sparse_data=csr.data.astype(np.float32),
                          sparse_shape=np.asarray(csr.shape, dtype=np.int64))
        if res.colbert is not None:
            flat, offsets = pack_multivectors(res.colbert)
            arrays.update(colbert_vectors=flat.astype(np.float32), colbert_offsets=offsets)
        if bm25 is not None:  # CSR over the hashed term ids bgem3.bm25 stores (bgem3.bm25.term_id)
            lengths = np.array([len(c) for c in bm25], dtype=np.int64)
            arrays.update(bm25_indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          bm25_indices=np.array([term_id(t) for c in bm25 for t in c], dtype=np.int64),
                          bm25_data=np.array([v for c in bm25 for v in c.values()], dtype=np.float32))

        def w_npz(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        write(out_path, w_npz)
    else:
        tokens = encoder.tokenizer.convert_ids_to_tokens if args.sparse_tokens else None

        def lines():
            for i, text in enumerate(texts):
                rec: dict[str, Any] = {"index": i, "text": text, "tokens": int(res.token_counts[i])}
                if res.dense is not None:
                    rec["dense"] = [round(float(x), 7) for x in res.dense[i]]
                if bm25 is not None:
                    rec["bm25"] = bm25[i]
                if res.sparse is not None:
                    sp_ = res.sparse[i]
                    keys = tokens(list(sp_)) if tokens else [str(t) for t in sp_]
                    rec["sparse"] = {k: round(float(v), 7) for k, v in zip(keys, sp_.values())}
                if res.colbert is not None:
                    rec["colbert"] = [[round(float(x), 7) for x in row] for row in res.colbert[i]]
                yield json.dumps(rec, ensure_ascii=False) + "\n"

        if out_path in (None, "-"):
            for line in lines():
                sys.stdout.write(line)
            sys.stdout.flush()
            return EXIT_OK

        def w_jsonl(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(lines())
        write(out_path, w_jsonl)
    if not args.quiet:
        _err(f"wrote {', '.join(sorted(want))} of {len(texts)} texts to {out_path}")
    return EXIT_OK


# --------------------------------------------------------------------------- bgem3 info

def cmd_export(args: argparse.Namespace) -> int:
    """``bgem3 export MODEL --backend onnx|openvino [--quantize int8] [--output DIR]``."""
    from .backends.export import export_dir_for, export_graph
    from .encoder import resolve_model_path

    name = args.model_path or args.model or _default_model()
    try:
        path = resolve_model_path(_model_arg(name))
    except OSError as exc:
        raise CLIError(str(exc)) from None
    out_dir = os.path.abspath(os.path.expanduser(args.output)) if args.output else export_dir_for(path)
    try:
        if args.quantize and args.backend == "openvino" and not args.quiet:  # NNCF logs its progress bars
            print("quantising to int8: exporting fp32, then calibrating over "
                  f"{'the texts of ' + args.calibration if args.calibration else 'the built-in texts'} "
                  "(a minute for a small model, longer for BGE-M3)", file=sys.stderr)
        graph = export_graph(path, args.backend, out_dir, quantize=args.quantize, reuse=not args.force,
                             trust_remote_code=args.trust_remote_code, calibration=args.calibration)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not args.quiet:
        print(graph)
        if not args.output:
            print(f"(in bgem3's export cache: `--backend {args.backend}` uses it for {name}; delete "
                  f"{out_dir} to drop it)", file=sys.stderr)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    folder = os.path.abspath(os.path.expanduser(args.index))
    if not os.path.isdir(folder) or not _is_hybrid_index(folder):
        raise CLIError(f"{args.index!r} is not a bgem3 index folder; build one with `bgem3 index PATH... --index "
                       f"{args.index}`" + ("" if os.path.exists(folder) else _backup_hint(folder)))
    from .index.persistence import describe

    meta = describe(folder)
    sources = Manifest.load(folder)
    info = {"index": folder, "model": meta["model"], "model_fingerprint": sources.model.get("fingerprint"),
            "passages": meta["passages"],
            "dim": meta["dim"], "channels": meta["channels"], "lexical": meta.get("lexical"),
            "segments": meta["segments"],
            "format_version": meta["format_version"],
            "files": len(sources.files), "chunking": sources.settings,
            "bytes_on_disk": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)}
    if "colbert" in (meta["channels"] or ()):  # a codec is only news when there are ColBERT vectors to store
        info["colbert_codec"] = info["colbert_dtype"] = meta["colbert_codec"]
    if getattr(args, "verify", False):
        from .index import HybridIndex

        HybridIndex.load(folder, load_encoder=False, verify=True)  # raises IndexFormatError naming the file
        info["verified"] = "every checksum and value checked"
    if args.json:
        info["sources"] = {p: len(e["ids"]) for p, e in sources.files.items()}
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return EXIT_OK
    for key, value in info.items():
        print(_printable(f"{key:>13}: {value}"))
    return EXIT_OK


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation tools and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="NAME_OR_DIR",
                   help=f"hub id or local model folder (default: ${MODEL_ENV} if set, else {DEFAULT_MODEL}; for an existing "
                        "index, the model "
                        "it was built with)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda > mps > cpu)")
    g.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="weights precision (default: fp16 on GPUs, fp32 on CPU)")
    g.add_argument("--backend", default="torch", choices=["torch", "onnx", "openvino"],
                   help="what runs the model: torch (exact, default), onnx (ONNX Runtime, bgem3[onnx]) or openvino "
                        "(bgem3[openvino]); the graph is the folder's onnx/ or openvino/ one, else exported once "
                        "into the cache (see `bgem3 export`)")
    g.add_argument("--backend-file", default=None, metavar="FILE",
                   help="with --backend onnx/openvino: the graph file inside the model folder, e.g. "
                        "onnx/model_qint8.onnx (sentence-transformers' model_kwargs={'file_name': ...})")
    g.add_argument("--max-length", type=_positive, default=None, metavar="TOKENS",
                   help="truncate texts to this many tokens (default: the model's limit, 8192 for BGE-M3)")
    g.add_argument("--batch-size", type=_positive, default=None, metavar="N", help="texts per forward pass (default 32)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries on stderr")

    parser = _Parser(prog="bgem3", description="BGE-M3 hybrid retrieval (dense + lexical + ColBERT) from the shell.")
    parser.add_argument("--version", action="version", version=f"bgem3 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("index", parents=[common], help="build or update an index from files and folders",
                       description="Index .txt, .md and .jsonl files (folders are walked recursively). Re-running "
                                   "updates the index: added and changed files are (re-)encoded, removed files' "
                                   "passages are deleted, unchanged files are not touched.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--index", "-i", required=True, metavar="DIR", help="index folder (created if missing)")
    p.add_argument("--chunk-size", type=_positive, default=None, metavar="N",
                   help=f"passage size in --chunk-unit units (default {DEFAULT_CHUNK_SIZE}, or the index's setting)")
    p.add_argument("--chunk-overlap", type=_non_negative, default=None, metavar="N",
                   help=f"overlap between neighbouring passages (default {DEFAULT_CHUNK_OVERLAP})")
    p.add_argument("--chunk-unit", choices=["tokens", "chars"], default=None,
                   help="measure passages in model tokens (default) or characters")
    p.add_argument("--lexical", choices=["auto", "learned", "bm25"], default=None,
                   help="lexical channel: the model's learned weights (BGE-M3) or BM25 computed from the corpus; "
                        "auto (default): learned when the model has BGE-M3's head, else BM25. Saved with the index")
    p.add_argument("--bm25-k1", type=_finite_float, default=None, metavar="K1",
                   help="BM25 term-frequency saturation (default 1.2; implies --lexical bm25)")
    p.add_argument("--bm25-b", type=_finite_float, default=None, metavar="B",
                   help="BM25 length normalisation, 0..1 (default 0.75; implies --lexical bm25)")
    p.add_argument("--colbert-codec", choices=list(_COLBERT_CODECS), default=None,
                   help="how ColBERT token vectors are stored (BGE-M3 models): float32, float16, int8 (default; "
                        "1 byte per dimension), 2bit or 1bit. Saved with the index; changing it needs --rebuild")
    p.add_argument("--rebuild", action="store_true",
                   help="start from an empty index instead of updating: re-encode everything (with the model it "
                        "was built with, unless --model names another; needed to switch --model or --colbert-codec)")
    p.add_argument("--skip-bad", action="store_true",
                   help="index the readable files and skip the bad ones (not UTF-8, binary, broken JSONL, "
                        "unreadable folders), listing each; passages already indexed from them are kept. "
                        "Without it, every bad input is listed and nothing is changed")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search an index",
                       description="Hybrid search: candidates from dense and lexical top-N, ranked by the weighted "
                                   "BGE-M3 score (or RRF).")
    p.add_argument("query", help="the question")
    p.add_argument("--index", "-i", required=True, metavar="DIR", help="index folder")
    p.add_argument("-k", type=_positive, default=5, help="number of hits (default 5)")
    p.add_argument("--weights", type=_parse_weights, default=(0.4, 0.2, 0.4), metavar="D,L,C",
                   help="dense,lexical,colbert weights (default 0.4,0.2,0.4, the BGE-M3 paper's); the weights of "
                        "channels the index does not hold are dropped")
    p.add_argument("--mode", choices=list(FUSION_MODES), default="auto",
                   help="score fusion: weighted mean of the channel scores, or reciprocal-rank fusion; auto "
                        "(default): rrf when the lexical channel is BM25, weighted otherwise")
    p.add_argument("--candidates", type=_positive, default=100, metavar="N",
                   help="dense top-N and lexical top-N candidates (default 100)")
    p.add_argument("--exhaustive", action="store_true", help="score every passage (slow, exact)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata must match (repeatable)")
    p.add_argument("--explain", action="store_true",
                   help="show the query tokens with the largest lexical contributions and, for ColBERT, the "
                        "document token each query token matched")
    p.add_argument("--explain-top", type=_positive, default=5, metavar="N", help="tokens shown by --explain (default 5)")
    p.add_argument("--rerank", default=None, metavar="MODEL",
                   help="rescore the best --rerank-candidates hits with a cross-encoder (e.g. BAAI/bge-reranker-v2-m3, "
                        "a local reranker folder, or a `bgem3 serve --reranker` URL) and show the best -k; the "
                        "channel scores stay beside the rerank score. Runs on --device / --dtype")
    p.add_argument("--rerank-candidates", type=_positive, default=50, metavar="N",
                   help="how many hits the reranker rescores (default 50)")
    p.add_argument("--rerank-max-length", type=_positive, default=None, metavar="TOKENS",
                   help="longest query+passage pair the reranker reads (default 512, as FlagReranker)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("embed", parents=[common], help="write dense / lexical / ColBERT outputs of texts",
                       description="Encode texts (arguments, --input FILE, or stdin) and write JSONL (default, to "
                                   "stdout), .npy (dense matrix) or .npz (dense, CSR lexical weights, packed ColBERT).")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to encode")
    p.add_argument("--input", metavar="FILE", help="one text per line, or .jsonl with a \"text\" field; - for stdin")
    p.add_argument("--output", "-o", metavar="FILE", help="out.jsonl, out.npy or out.npz (default: JSONL on stdout)")
    p.add_argument("--dense", action="store_true", help="dense vectors")
    p.add_argument("--sparse", action="store_true", help="lexical weights {token id: weight}")
    p.add_argument("--colbert", action="store_true", help="ColBERT token vectors")
    p.add_argument("--as", dest="as_", choices=["passage", "query", "raw"], default="passage",
                   help="apply the model's passage or query template, or none (default passage)")
    p.add_argument("--sparse-tokens", action="store_true", help="JSONL: key lexical weights by token string, not id")
    p.add_argument("--bm25", action="store_true",
                   help="also write BM25 term frequencies ({term: count}, the terms bgem3's BM25 channel stores), "
                        "for any model; .npz: CSR over hashed term ids (bgem3.bm25.term_id)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("info", help="describe an index", description="Model, size and sources of an index.")
    p.add_argument("--index", "-i", required=True, metavar="DIR", help="index folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true",
                   help="also check every file's SHA-256 and every stored value (reads the whole index)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a model to ONNX / OpenVINO for --backend onnx|openvino",
                       description="Export the model's transformer (fp32, last hidden states out; bgem3 applies the "
                                   "BGE-M3 heads and pooling after it) to an ONNX or OpenVINO graph. Default: into "
                                   "bgem3's cache, where --backend onnx|openvino finds it (delete the printed folder "
                                   "to drop it). --output DIR writes sentence-transformers' layout (DIR/onnx/model.onnx, "
                                   "DIR/openvino/openvino_model.xml): use the model folder itself to ship the graph "
                                   "with the model.")
    p.add_argument("model_path", nargs="?", default=None, metavar="MODEL",
                   help="hub id or local model folder (default: --model, $BGEM3_MODEL or BAAI/bge-m3)")
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", required=True, choices=["onnx", "openvino"], help="the graph format")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="also write an int8 graph. --backend openvino: NNCF static int8 calibrated on real text "
                        "(openvino/openvino_model_qint8_quantized.xml, what dtype='int8' runs on VNNI CPUs; keeps the "
                        "fidelity gates). --backend onnx: ONNX Runtime's dynamic int8 (onnx/model_qint8.onnx), fast "
                        "but less exact: see docs/benchmarks_encode.md before using it for ranking")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="with --backend openvino --quantize int8: calibrate on these texts (UTF-8, one per line, "
                        "or a .json list; 16 to 2000) instead of the built-in set")
    p.add_argument("--output", default=None, metavar="DIR", help="write here instead of into the cache")
    p.add_argument("--force", action="store_true", help="export again even if the graph is already there")
    p.add_argument("--trust-remote-code", action="store_true", help="the model ships its own modelling code")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_export)

    from .serve.cli import add_parser as _add_serve_parser  # `bgem3 serve` lives in bgem3/serve/cli.py
    _add_serve_parser(sub, common)
    return parser


def _ignore_sigint() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread / no signals here
        pass


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]
    return " ".join(msg.split()) or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``bgem3`` command; returns the exit status (0 ok, 1 error, 2 usage error, 130 interrupted).

    As the ``bgem3`` process (``argv=None``), once the command has finished a Ctrl-C during the
    interpreter's shutdown no longer changes the exit status or prints a traceback.
    """
    try:
        return _run(argv)
    finally:
        if argv is None:
            _ignore_sigint()


#: top-level modules of the optional extras (pyproject.toml), for an ImportError that does not name its extra
_EXTRA_OF_MODULE = {"starlette": "serve", "uvicorn": "serve", "orjson": "serve", "httpx": "remote",
                    "qdrant_client": "qdrant", "qdrant_edge": "qdrant-edge", "faiss": "scale", "threadpoolctl": "scale",
                    "langchain_core": "langchain", "llama_index": "llama-index"}


def _extra_for(exc: ImportError) -> Optional[str]:
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return _EXTRA_OF_MODULE.get(name)


def _run(argv: Optional[Sequence[str]]) -> int:
    debug = os.environ.get("BGEM3_DEBUG", "").lower() in ("1", "true", "yes")
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        with (contextlib.nullcontext() if debug else _quiet_libraries()):
            return int(args.func(args) or EXIT_OK)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except _InterruptedAfterCommit:
        _err("bgem3: interrupted after the index was saved: it is complete and consistent; nothing else was done")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if getattr(args, "command", None) == "serve":  # uvicorn re-raises the Ctrl-C once it has shut down
            _err("bgem3 serve: stopped (Ctrl-C)")
            return EXIT_INTERRUPTED
        _err("bgem3: interrupted: nothing was changed (an index or output file is only written when complete)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bgem3 search ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except _UsageError as exc:
        _err(f"bgem3: error: {_one_line(exc)}")
        return EXIT_USAGE
    except Exception as exc:
        if debug:
            raise
        from .encoder import ModelLoadError
        from .index import IndexFormatError, SaveConflict

        # ImportError: an optional extra is missing (its message names `pip install 'bgem3[extra]'`)
        known = (CLIError, ModelLoadError, IndexFormatError, IngestError, OSError, ValueError, KeyError, TypeError,
                 ImportError, SaveConflict)
        if isinstance(exc, ImportError) and "bgem3[" not in str(exc) and _extra_for(exc):
            _err(f"bgem3: error: {_one_line(exc)}: install the extra that provides it: pip install 'bgem3[{_extra_for(exc)}]'")
        elif isinstance(exc, known):
            _err(f"bgem3: error: {_one_line(exc)}")
        else:
            _err(f"bgem3: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
                 "(run with BGEM3_DEBUG=1 for the traceback, and please report it)")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
