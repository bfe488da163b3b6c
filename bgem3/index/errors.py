"""The one error a saved index raises when it cannot be read."""

from __future__ import annotations

__all__ = ["IndexFormatError"]


class IndexFormatError(ValueError):
    """A saved index could not be read: missing, truncated or corrupted file, unknown format
    version, values that cannot be right (NaN, offsets out of range, ids that are not strings),
    or an index built with another model. The message names the file and the fix.

    >>> issubclass(IndexFormatError, ValueError)
    True
    """


class SaveConflict(RuntimeError):
    """A save from a handle opened before other commits that changed the same document ids (or
    replaced the folder's index): nothing was written; load the folder again and redo the change.
    See docs/index.md, "Several writers, one folder"."""
