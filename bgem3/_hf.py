"""Small guards around transformers at model-load time.

* :func:`transformers_attr` imports one name from transformers; an ``ImportError`` there (almost
  always two packages installed by separate pip commands, e.g. ``huggingface_hub`` moved back to 1.x
  under a transformers that needs 2.x) becomes a :class:`~bgem3.encoder.ModelLoadError` that names
  the installed versions and the fix, instead of an "unexpected ImportError".
* :func:`quiet_expected_load_report` hides transformers' "LOAD REPORT" table when the only keys it
  lists are ones bgem3 leaves out on purpose (the pooler it loads without, a saved ``position_ids``
  buffer); a report with anything else (missing or mismatched weights) is kept as is.
"""

from __future__ import annotations

import contextlib
import logging
import re
from importlib import metadata
from typing import Any, Iterator


class ModelLoadError(OSError):
    """A model could not be found or loaded; the message names the input and the fix (defined here, beside
    the transformers helpers that raise it; ``bgem3.encoder.ModelLoadError`` and ``bgem3.ModelLoadError`` are
    this class)."""

    __module__ = "bgem3.encoder"  # where users import it from (tracebacks and pickles name it so, as before)


#: checkpoint keys bgem3 does not use by design: the BERT/XLM-R pooler (loaded with add_pooling_layer=False)
#: and old checkpoints' position_ids buffers
EXPECTED_UNUSED = re.compile(r"^(.*\.)?(pooler\.(dense\.)?(weight|bias)|position_ids)$")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def transformers_import_message(exc: BaseException) -> str:
    """Why ``import transformers`` failed, the versions installed, and the fix."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    versions = ", ".join(f"{d} {_version(d)}" for d in ("transformers", "huggingface_hub", "tokenizers"))
    return (
        f"transformers cannot be imported here ({type(exc).__name__}: {first}); installed: {versions}. "
        "This happens when packages were installed by separate pip commands and a later one moved a dependency "
        "under transformers (e.g. `pip install langchain-huggingface` after bgem3 moved huggingface_hub back to "
        "1.x). Fix: install them in one command so pip picks versions that fit, e.g. "
        "`pip install \"bgem3[langchain,llama-index]\" langchain-huggingface llama-index-embeddings-huggingface`, "
        "or pin transformers to one that accepts your huggingface_hub: `pip install \"transformers<5.25\"`"
    )


def transformers_attr(name: str) -> Any:
    """``transformers.<name>``; a broken transformers install raises ``ModelLoadError`` with the fix."""
    try:
        import transformers

        return getattr(transformers, name)
    except ImportError as exc:
        raise ModelLoadError(transformers_import_message(exc)) from exc


def _report_keys(message: str) -> list[tuple[str, str]]:
    rows = []
    for line in _ANSI.sub("", message).splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[0] and cells[1] and cells[0] != "Key" and not set(cells[0]) <= {"-", "+"}:
            rows.append((cells[0], cells[1]))
    return rows


class _ExpectedKeysOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - a record we cannot format is not ours to drop
            return True
        if "LOAD REPORT" not in message:
            return True
        rows = _report_keys(message)
        expected = bool(rows) and all(status == "UNEXPECTED" and EXPECTED_UNUSED.match(key) for key, status in rows)
        return not expected


@contextlib.contextmanager
def quiet_expected_load_report() -> Iterator[None]:
    """While loading, drop transformers' LOAD REPORT when it lists only :data:`EXPECTED_UNUSED` keys."""
    logger = logging.getLogger("transformers.modeling_utils")
    flt = _ExpectedKeysOnly()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)
