"""Cut a text to what the model can read *before* tokenising it, without changing its tokens.

A tokenizer reads the whole string before it truncates, so one 8 MB text costs seconds of CPU
for a model that reads its first 512 tokens. :func:`cut_texts` cuts each long text to a character
bound derived from ``max_length`` (like TEI's ``auto_truncate``), and keeps the cut only where
it provably leaves the first ``max_length`` tokens unchanged:

* the cut falls just before a whitespace character (the end of a word), so whitespace-splitting
  pre-tokenizers (WordPiece, SentencePiece's metaspace, byte-level BPE) see the same words up
  to the cut; a window with no whitespace (CJK, a long blob) is cut at the bound;
* the cut text must still tokenise to more than ``max_length + MARGIN`` tokens, so whatever the
  cut changes at its end (the last word, a Unigram segmentation near the end) lies beyond the
  tokens the model reads. Otherwise the bound grows 4x and the text is tried again, up to the
  whole text (so a text the model can fully read is never cut).

Example::

    >>> from transformers import AutoTokenizer                                   # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained("BAAI/bge-m3")                       # doctest: +SKIP
    >>> cut = cut_texts(tok, ["word " * 2_000_000], 512)                         # doctest: +SKIP
    >>> len(cut[0])                                                              # doctest: +SKIP
    6143
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["cut_texts", "CHARS_PER_TOKEN", "MARGIN"]

#: first character bound per token of ``max_length`` (English is ~4-5 characters a token)
CHARS_PER_TOKEN = 12
#: tokens the cut text must have beyond ``max_length`` for the cut to be kept
MARGIN = 16
#: how far back from the bound a whitespace is looked for
_WORD_WINDOW = 256


def _cut_at(text: str, bound: int) -> str:
    """``text[:bound]``, moved back to just before the last whitespace in the last few hundred characters."""
    head = text[:bound]
    lo = max(0, bound - _WORD_WINDOW)
    for i in range(len(head) - 1, lo - 1, -1):
        if head[i].isspace():
            return head[:i]
    return head


def _count(tokenizer: Any, texts: list[str], limit: int) -> list[int]:
    """Tokens of each text (specials included), counting stops at ``limit``."""
    ids = tokenizer(texts, truncation=True, max_length=limit, padding=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return [len(r) for r in ids]


def cut_texts(tokenizer: Any, texts: Sequence[str], max_length: int, *, lock: Any = None) -> list[str]:
    """Each text, cut to a character bound where that leaves its first ``max_length`` tokens as they
    are (see the module docstring); texts shorter than the first bound are returned as they are.
    ``lock`` (a ``threading.Lock``), when given, is held around each tokenizer call."""
    out = list(texts)
    need = max_length + MARGIN
    bound = max(256, max_length * CHARS_PER_TOKEN)
    todo = [i for i, t in enumerate(out) if len(t) > bound]
    while todo:
        cuts = [_cut_at(texts[i], bound) for i in todo]
        if lock is not None:
            with lock:
                counts = _count(tokenizer, cuts, need + 1)
        else:
            counts = _count(tokenizer, cuts, need + 1)
        bound *= 4
        again = []
        for i, cut, n in zip(todo, cuts, counts):
            if n > need:
                out[i] = cut
            elif len(texts[i]) > bound:
                again.append(i)
            # else: the next bound covers the whole text, which is kept as it is
        todo = again
    return out
