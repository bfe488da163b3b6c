"""The one table of dtype names (a leaf: no torch), so a client can name a server's dtype without loading torch.

:mod:`bgem3.encoder` builds its ``torch.dtype`` table from :data:`DTYPE_NAMES`; everything that prints or
compares a dtype by name goes through :func:`dtype_name`.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["DTYPE_NAMES", "dtype_name"]

#: Every dtype name accepted where a dtype is given -> its short name ("fp32", "fp16", "bf16", "int8"); the
#: first alias of each short name is the short name itself. int8: CPU int8 linear layers, the rest fp32.
DTYPE_NAMES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "int8": "int8", "qint8": "int8",
}


def dtype_name(dtype: Any) -> Optional[str]:
    """``torch.float32`` / ``"float32"`` -> ``"fp32"`` (``None`` stays ``None``; an unknown name stays as
    written, lower-cased); for configs that serialise.

    >>> dtype_name("torch.bfloat16"), dtype_name("half"), dtype_name("qint8"), dtype_name(None)
    ('bf16', 'fp16', 'int8', None)
    """
    if dtype is None:
        return None
    text = str(dtype).replace("torch.", "").lower()
    return DTYPE_NAMES.get(text, text)
