"""The argument checks that more than one part of the package makes, written once (a leaf: stdlib, numpy and
:mod:`bgem3.types` only).

Example::

    >>> positive_int(3, "k"), check_fusion_mode("rrf"), FUSION_MODES
    (3, 'rrf', ('auto', 'weighted', 'rrf'))
"""

from __future__ import annotations

from typing import Any, get_args

import numpy as np

from .types import FusionMode

__all__ = ["FUSION_MODES", "check_fusion_mode", "positive_int"]


# --- store and search checks ---

def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is a Python or numpy integer > 0 (a bool is not); ``ValueError`` naming it.

    >>> positive_int(np.int64(2), "k")
    2
    >>> positive_int(True, "batch_size")
    Traceback (most recent call last):
    ValueError: batch_size must be a positive integer; got True
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


#: the accepted ``mode=`` values of every store's ``search`` (the :data:`bgem3.types.FusionMode` literal):
#: ``"auto"`` (the store's own choice, see ``StoreBase.fusion_mode``), ``"weighted"`` (weighted mean) or
#: ``"rrf"`` (reciprocal rank)
FUSION_MODES: tuple[str, ...] = get_args(FusionMode)


def check_fusion_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`FUSION_MODES`; ``ValueError`` naming them otherwise."""
    if not isinstance(mode, str) or mode not in FUSION_MODES:
        raise ValueError(f"mode must be {', '.join(repr(m) for m in FUSION_MODES[:-1])} or {FUSION_MODES[-1]!r}; "
                         f"got {mode!r}")
    return mode
