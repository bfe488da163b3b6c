"""The ``POST /encode`` wire format that ``bgem3 serve`` and :class:`bgem3.remote.RemoteEncoder` share
(a leaf: stdlib and numpy), so the client imports nothing from the server package and both read one table.

Arrays travel as base64 of little-endian rows (:func:`encode_array` / :func:`decode_array`): dense as
float32, ColBERT as float16 or float32 (``colbert_dtype``).

    >>> float(decode_array(encode_array(np.ones((2, 3), np.float32)), "float32", (2, 3)).sum())
    6.0
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

__all__ = ["COLBERT_DTYPES", "ENCODE_FIELDS", "ENCODINGS", "SIDES", "decode_array", "encode_array"]

#: the fields a ``POST /encode`` body may carry (any other is refused by the server)
ENCODE_FIELDS = frozenset({"inputs", "side", "task", "examples", "dense", "sparse", "colbert", "colbert_dtype",
                           "encoding", "truncate", "max_length"})
#: ``side``: no template, the query template, the passage template
SIDES = ("raw", "query", "document")
#: ``colbert_dtype``: the bytes of each ColBERT number (the server's default is float16)
COLBERT_DTYPES = ("float16", "float32")
#: ``encoding``: arrays as base64 bytes, or as JSON numbers
ENCODINGS = ("base64", "float")


def encode_array(arr: np.ndarray, dtype: str = "float32") -> str:
    """Little-endian ``dtype`` bytes of ``arr`` (row-major), base64."""
    little = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode("ascii")


def decode_array(data: str, dtype: str, shape: tuple) -> np.ndarray:
    """Inverse of :func:`encode_array`: little-endian ``dtype`` rows of ``shape`` from base64 ``data``, as
    ``float32``. Refuses (``ValueError``) what is not strict base64 and a payload whose size does not match
    ``shape``."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64 ({exc})") from None
    dt = np.dtype(dtype).newbyteorder("<")
    want = int(np.prod(shape)) * dt.itemsize
    if len(raw) != want:
        raise ValueError(f"array payload has {len(raw)} bytes; shape {tuple(shape)} of {dtype} needs {want}")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.float32)
