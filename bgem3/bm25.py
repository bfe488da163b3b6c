"""``bgem3.bm25``: the BM25 lexical channel, kept importable here (``from bgem3.bm25 import BM25``).

The code lives in :mod:`bgem3.index.bm25`, beside the lexical-channel interface it implements
(:mod:`bgem3.index.lexical`); this module re-exports its public names.
"""

from .index.bm25 import (DEFAULT_B, DEFAULT_K1, ENGLISH_STOPWORDS, MAX_WORD_CHARS, BM25, BM25Term, BM25Tokenizer,
                         __all__, term_id)

__all__ = list(__all__)  # noqa: F811 - the same names as bgem3.index.bm25
