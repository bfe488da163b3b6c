"""The embedded hybrid index: segments on disk, ColBERT codecs, pluggable lexical channel.

One job per module:

* :mod:`~bgem3.index.hybrid` -- :class:`HybridIndex`, the public store;
* :mod:`~bgem3.index.segment` -- rows in memory (the tail) or memory-mapped (saved segments);
* :mod:`~bgem3.index.storage` -- the on-disk layout, manifest, atomic commit, header checks;
* :mod:`~bgem3.index.locking` -- the folder's writer lock (several writers, one folder);
* :mod:`~bgem3.index.persistence` -- save / load (format 2) and :mod:`~bgem3.index.legacy` (format 1);
* :mod:`~bgem3.index.codecs` -- ColBERT codecs (float32 / float16 / int8 / 2bit / 1bit), dense bits;
* :mod:`~bgem3.index.lexical` -- the lexical channel interface and BGE-M3's learned weights;
* :mod:`~bgem3.index.search` -- candidates, exact rescoring, MaxSim, fusion.

Example::

    >>> from bgem3.index import HybridIndex, IndexFormatError, FORMAT_VERSION
    >>> FORMAT_VERSION
    2
"""

from __future__ import annotations

from .codecs import COLBERT_CODECS, bytes_per_token
from .errors import IndexFormatError, SaveConflict
from .hybrid import HybridIndex
from .locking import IndexLockTimeout
from .lexical import LearnedSparse, LexicalChannel, register_lexical_channel
from .storage import FORMAT_VERSION, is_saved_index

HybridIndex.__module__ = __name__
IndexFormatError.__module__ = __name__
SaveConflict.__module__ = __name__
IndexLockTimeout.__module__ = __name__

__all__ = ["HybridIndex", "IndexFormatError", "FORMAT_VERSION", "COLBERT_CODECS", "bytes_per_token",
           "LexicalChannel", "LearnedSparse", "register_lexical_channel", "is_saved_index", "SaveConflict",
           "IndexLockTimeout"]
