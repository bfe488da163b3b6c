"""BM25: a lexical channel computed from the corpus, for models without BGE-M3's lexical head.

E5, BGE v1.5 and sentence-transformers models give dense vectors only. :class:`BM25` gives
them the lexical half of hybrid retrieval: term statistics of the indexed passages, scored
with Okapi BM25 at query time, so the IDF and the average length are always those of the
documents alive now (adding or deleting a document updates them; nothing is precomputed).

Tokenisation (:class:`BM25Tokenizer`) works on one multilingual corpus:

* text is NFKC-normalised (full-width Latin and half-width katakana become ordinary
  characters) and case-folded;
* words of alphabetic scripts (Latin, Cyrillic, Greek, Arabic, Devanagari, ...) are runs of
  letters, marks and digits; English stop words are dropped and words are reduced to their
  Snowball stem (``"english"``, via PyStemmer; ``stemmer=None`` turns it off);
* Chinese, Japanese (kanji, hiragana, katakana) and Korean (hangul), written without spaces
  between words or with particles glued to them, become overlapping character **bigrams**,
  as Lucene's ``CJKAnalyzer`` does (``"서울은"`` -> ``"서울", "울은"``; a lone character is
  kept as a unigram), and so do Thai, Lao, Khmer and Myanmar runs.

Scoring is Lucene's BM25 (the same numbers as ``bm25s`` with ``method="lucene"``):
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
``score = sum over the query's distinct terms of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``,
vectorised over the postings of the query's terms (numpy, no per-document Python loop).
:meth:`BM25.normalized_scores` divides by the bound those scores approach for that query
(``sum idf(t)``), so the channel sits in ``[0, 1)`` next to a cosine.

Rows are positions, as in the stores: :meth:`BM25.add` appends rows, :meth:`BM25.delete`
tombstones them, :meth:`BM25.compact` drops the dead ones. :meth:`BM25.state` /
:meth:`BM25.from_state` give plain numpy arrays and a JSON-able dict (no pickle), which a store
saves next to its own arrays; :meth:`BM25.save` / :meth:`BM25.load` do it for a folder.

Example::

    >>> from bgem3.bm25 import BM25
    >>> bm = BM25()
    >>> bm.add(["Paris is the capital of France.", "BM25 ranks documents by term frequency.",
    ...         "서울은 대한민국의 수도이다.", "北京是中华人民共和国的首都。"])
    [0, 1, 2, 3]
    >>> [int(r) for r in bm.top_k("ranking documents", 1)[0]]
    [1]
    >>> [int(r) for r in bm.top_k("서울 수도", 1)[0]], [int(r) for r in bm.top_k("首都北京", 1)[0]]
    ([2], [3])
    >>> bm.tokenizer("서울은 Running!")
    ['서울', '울은', 'run']
    >>> bm.delete([1]), len(bm)
    (1, 3)
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import regex

__all__ = ["BM25", "BM25Tokenizer", "BM25Term", "BM25FormatError", "ENGLISH_STOPWORDS", "DEFAULT_K1", "DEFAULT_B"]

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
_STATE_FORMAT = "bgem3.BM25"
_STATE_VERSION = 1
#: words longer than this many characters are cut (a base64 blob is not a word)
MAX_WORD_CHARS = 64

#: A short English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions).
ENGLISH_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())

# Scripts written without spaces between words (or with particles glued on): bigrammed.
_BIGRAM_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}ー々〆"
_TOKEN_RE = regex.compile(rf"(?P<cjk>[{_BIGRAM_SCRIPTS}]+)|(?P<word>[^\W_{_BIGRAM_SCRIPTS}]+(?:\p{{M}}+[^\W_{_BIGRAM_SCRIPTS}]*)*)",
                          regex.V0)


class BM25FormatError(ValueError):
    """Saved BM25 state could not be read (missing, inconsistent or unknown format)."""


@dataclass
class BM25Term:
    """One query term a document matched: its part of the document's BM25 score."""

    term: str
    tf: int
    df: int
    idf: float
    contribution: float

    def to_dict(self) -> dict:
        return {"term": self.term, "tf": self.tf, "df": self.df, "idf": self.idf, "contribution": self.contribution}


# --------------------------------------------------------------------------- tokenizer
class BM25Tokenizer:
    """Multilingual word / CJK-bigram tokenizer for BM25 (see the module docstring).

    Args:
        stemmer: a Snowball algorithm name for PyStemmer (``"english"``, default; ``"german"``,
            ...), or ``None`` for no stemming.
        stopwords: ``"english"`` (default, :data:`ENGLISH_STOPWORDS`), ``None`` for none, or a
            list of words (compared after case folding, before stemming).
        lowercase: case-fold words (default True).

    Example::

        >>> tok = BM25Tokenizer()
        >>> tok("The Quick foxes — 東京は日本の首都です")
        ['quick', 'fox', '東京', '京は', 'は日', '日本', '本の', 'の首', '首都', '都で', 'です']
        >>> BM25Tokenizer(stemmer=None, stopwords=None)("The foxes")
        ['the', 'foxes']
    """

    def __init__(self, *, stemmer: Optional[str] = "english",
                 stopwords: Union[None, str, Iterable[str]] = "english", lowercase: bool = True) -> None:
        if stemmer is not None and not isinstance(stemmer, str):
            raise TypeError(f"stemmer must be a Snowball algorithm name such as 'english', or None; got {stemmer!r}")
        self.stemmer_name = stemmer
        self._stemmer = _load_stemmer(stemmer) if stemmer else None
        if stopwords is None:
            self.stopwords_spec: Union[None, str, list[str]] = None
            self.stopwords: frozenset[str] = frozenset()
        elif isinstance(stopwords, str):
            if stopwords.lower() not in ("english", "en"):
                raise ValueError(f"stopwords={stopwords!r}: the built-in list is 'english'; pass None or a list of words")
            self.stopwords_spec, self.stopwords = "english", ENGLISH_STOPWORDS
        else:
            words = list(stopwords)
            bad = [w for w in words if not isinstance(w, str)]
            if bad:
                raise TypeError(f"stopwords must be strings; got {bad[:3]!r}")
            self.stopwords_spec = sorted({w.casefold() for w in words})
            self.stopwords = frozenset(self.stopwords_spec)
        self.lowercase = bool(lowercase)
        self._cache: dict[str, Optional[str]] = {}

    # -- config (persisted with the index so queries are cut like the documents)
    def config(self) -> dict:
        return {"stemmer": self.stemmer_name, "stopwords": self.stopwords_spec, "lowercase": self.lowercase}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BM25Tokenizer":
        unknown = set(cfg) - {"stemmer", "stopwords", "lowercase"}
        if unknown:
            raise BM25FormatError(f"unknown BM25 tokenizer settings {sorted(unknown)}; written by a newer bgem3?")
        return cls(stemmer=cfg.get("stemmer"), stopwords=cfg.get("stopwords"), lowercase=cfg.get("lowercase", True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BM25Tokenizer) and self.config() == other.config()

    def __repr__(self) -> str:
        return f"BM25Tokenizer(stemmer={self.stemmer_name!r}, stopwords={self.stopwords_spec!r})"

    def _word(self, w: str) -> Optional[str]:
        out = self._cache.get(w)
        if out is None and w not in self._cache:
            x = w.casefold() if self.lowercase else w
            if x in self.stopwords:
                out = None
            else:
                x = x[:MAX_WORD_CHARS]
                out = self._stemmer.stemWord(x) if self._stemmer is not None else x
            if len(self._cache) < 1_000_000:
                self._cache[w] = out
        return out

    def __call__(self, text: str) -> list[str]:
        """The terms of ``text`` in order (repeats kept: term frequency counts them)."""
        if not isinstance(text, str):
            raise TypeError(f"BM25Tokenizer takes a string; got {type(text).__name__}")
        text = unicodedata.normalize("NFKC", text)
        out: list[str] = []
        for m in _TOKEN_RE.finditer(text):
            run = m.group("cjk")
            if run is not None:
                if self.lowercase:
                    run = run.casefold()
                if len(run) == 1:
                    out.append(run)
                else:
                    out.extend(run[i:i + 2] for i in range(len(run) - 1))
            else:
                w = self._word(m.group("word"))
                if w:
                    out.append(w)
        return out


def _load_stemmer(name: str):
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        raise ImportError(f"BM25 stemming ({name!r}) uses PyStemmer: pip install PyStemmer, or pass stemmer=None") from None
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise ValueError(f"unknown stemmer {name!r}; PyStemmer knows {', '.join(Stemmer.algorithms())}") from None


# --------------------------------------------------------------------------- the channel
class BM25:
    """Okapi BM25 over rows of passages, with IDF kept current on add / delete.

    Args:
        k1: term-frequency saturation (default 1.2; must be >= 0).
        b: length normalisation, 0 (none) to 1 (full; default 0.75).
        tokenizer: a :class:`BM25Tokenizer` (default: English stemming and stop words, CJK bigrams).

    Example::

        >>> bm = BM25(k1=1.5, b=0.5)
        >>> bm.add(["red apples and green apples", "green grass"])
        [0, 1]
        >>> s = bm.scores("apples"); bool(s[0] > 0 and s[1] == 0)
        True
        >>> [t.term for t in bm.explain("green apples", 0)]
        ['appl', 'green']
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B, tokenizer: Optional[BM25Tokenizer] = None) -> None:
        self.k1, self.b = _check_params(k1, b)
        if tokenizer is not None and not isinstance(tokenizer, BM25Tokenizer):
            raise TypeError(f"tokenizer must be a bgem3.bm25.BM25Tokenizer; got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer or BM25Tokenizer()
        self._vocab: dict[str, int] = {}
        self._terms_list: list[str] = []
        self._indptr = np.zeros(1, dtype=np.int64)
        self._term_ids = np.zeros(0, dtype=np.int32)
        self._tf = np.zeros(0, dtype=np.int32)
        self._doc_len = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=np.bool_)
        self._df = np.zeros(0, dtype=np.int64)
        self._live_len = 0
        self._csc: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Live (not deleted) rows."""
        return int(self._alive.sum())

    @property
    def n_rows(self) -> int:
        """All rows, deleted ones included (row numbers run ``0 .. n_rows-1``)."""
        return len(self._doc_len)

    @property
    def vocab_size(self) -> int:
        return len(self._terms_list)

    @property
    def avgdl(self) -> float:
        n = len(self)
        return self._live_len / n if n else 0.0

    def __repr__(self) -> str:
        return f"BM25(k1={self.k1}, b={self.b}, documents={len(self)}, terms={self.vocab_size}, tokenizer={self.tokenizer!r})"

    # ------------------------------------------------------------------ changes
    def add(self, texts: Sequence[str]) -> list[int]:
        """Tokenise ``texts`` and append them as new rows; returns their row numbers."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string; wrap it: [text]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a string; got {type(t).__name__}")
        return self.add_tokens([self.tokenizer(t) for t in texts])

    def add_tokens(self, docs: Sequence[Sequence[str]]) -> list[int]:
        """Append already tokenised documents (lists of terms) as new rows."""
        n_new = len(docs)
        start = self.n_rows
        if n_new == 0:
            return []
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n_new)
        vocab, terms = self._vocab, self._terms_list
        flat = np.empty(int(lengths.sum()), dtype=np.int64)
        pos = 0
        for d in docs:
            for t in d:
                tid = vocab.get(t)
                if tid is None:
                    tid = vocab[t] = len(terms)
                    terms.append(t)
                flat[pos] = tid
                pos += 1
        # (row, term) pairs -> counts, vectorised
        rows = np.repeat(np.arange(n_new, dtype=np.int64), lengths)
        v = max(len(terms), 1)
        keys, counts = np.unique(rows * v + flat, return_counts=True)
        r, tids = keys // v, (keys % v).astype(np.int32)
        per_row = np.bincount(r, minlength=n_new).astype(np.int64)
        indptr_new = self._indptr[-1] + np.cumsum(per_row)
        self._indptr = np.concatenate([self._indptr, indptr_new])
        self._term_ids = np.concatenate([self._term_ids, tids])
        self._tf = np.concatenate([self._tf, counts.astype(np.int32)])
        self._doc_len = np.concatenate([self._doc_len, lengths])
        self._alive = np.concatenate([self._alive, np.ones(n_new, dtype=np.bool_)])
        if len(self._df) < len(terms):
            self._df = np.concatenate([self._df, np.zeros(len(terms) - len(self._df), dtype=np.int64)])
        self._df += np.bincount(tids, minlength=len(terms)).astype(np.int64)
        self._live_len += int(lengths.sum())
        self._csc = None
        return list(range(start, start + n_new))

    def delete(self, rows: Iterable[int]) -> int:
        """Tombstone ``rows`` (already deleted ones are ignored); returns how many were deleted.

        Document frequencies and the average length drop their terms at once.
        """
        rows = np.unique(np.asarray(list(rows), dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row {int(rows.max() if rows.max() >= self.n_rows else rows.min())} is out of range "
                             f"0..{self.n_rows - 1}")
        rows = rows[self._alive[rows]]
        if not len(rows):
            return 0
        starts, ends = self._indptr[rows], self._indptr[rows + 1]
        pos = _ranges(starts, ends - starts)
        self._df -= np.bincount(self._term_ids[pos], minlength=len(self._df)).astype(np.int64)
        self._live_len -= int(self._doc_len[rows].sum())
        self._alive[rows] = False
        return len(rows)

    def compact(self, keep: Optional[np.ndarray] = None) -> np.ndarray:
        """Drop rows (default: the deleted ones; or those where the boolean ``keep`` is False).

        Returns the old row number of each remaining row. Terms no live document uses stay
        in the vocabulary (with df 0) until the index is rebuilt.
        """
        if keep is None:
            keep = self._alive.copy()
        keep = np.asarray(keep, dtype=np.bool_)
        if keep.shape != (self.n_rows,):
            raise ValueError(f"keep must be a boolean array of length {self.n_rows}; got shape {keep.shape}")
        dropping = keep ^ True
        self.delete(np.flatnonzero(dropping & self._alive))
        old = np.flatnonzero(keep)
        starts, ends = self._indptr[old], self._indptr[old + 1]
        pos = _ranges(starts, ends - starts)
        self._term_ids, self._tf = self._term_ids[pos], self._tf[pos]
        self._indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        self._doc_len, self._alive = self._doc_len[old], self._alive[old]
        self._csc = None
        return old

    # ------------------------------------------------------------------ scoring
    def query_terms(self, query: str) -> list[str]:
        """The query's distinct terms, in order of first appearance."""
        return list(dict.fromkeys(self.tokenizer(query)))

    def _postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._csc is None:
            order = np.argsort(self._term_ids, kind="stable")
            rows = np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self._indptr))
            col_ptr = np.zeros(self.vocab_size + 1, dtype=np.int64)
            np.cumsum(np.bincount(self._term_ids, minlength=self.vocab_size), out=col_ptr[1:])
            self._csc = (col_ptr, rows[order], self._tf[order])
        return self._csc

    def _query_ids(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        ids = [self._vocab[t] for t in self.query_terms(query) if t in self._vocab]
        tids = np.asarray(ids, dtype=np.int64)
        df = self._df[tids] if len(tids) else np.zeros(0, dtype=np.int64)
        keep = df > 0
        return tids[keep], df[keep]

    def idf(self, df: np.ndarray) -> np.ndarray:
        n = len(self)
        return np.log1p((n - df + 0.5) / (df + 0.5))

    def scores(self, query: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """BM25 score of every row (deleted rows score 0) as float32, or of ``rows`` only."""
        out = np.zeros(self.n_rows, dtype=np.float64)
        tids, df = self._query_ids(query)
        if len(tids) and len(self):
            col_ptr, post_rows, post_tf = self._postings()
            starts, ends = col_ptr[tids], col_ptr[tids + 1]
            pos = _ranges(starts, ends - starts)
            r, tf = post_rows[pos], post_tf[pos].astype(np.float64)
            idf = np.repeat(self.idf(df), ends - starts)
            norm = self.k1 * (1.0 - self.b + self.b * self._doc_len[r] / max(self.avgdl, 1e-9))
            contrib = idf * tf / (tf + norm)
            out = np.bincount(r, weights=contrib, minlength=self.n_rows)
            out[~self._alive] = 0.0
        out = out.astype(np.float32)
        return out if rows is None else out[np.asarray(rows, dtype=np.int64)]

    def max_score(self, query: str) -> float:
        """The bound BM25 scores approach for ``query`` (every term very frequent): ``sum idf(t)``."""
        _, df = self._query_ids(query)
        return float(self.idf(df).sum()) if len(df) else 0.0

    def normalized_scores(self, query: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """:meth:`scores` divided by :meth:`max_score`: in ``[0, 1]``, comparable across queries."""
        s = self.scores(query, rows)
        m = self.max_score(query)
        return s / np.float32(m) if m > 0 else s

    def top_k(self, query: str, k: int, mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of the ``k`` best live rows with a positive score (``mask``: allowed rows)."""
        s = self.scores(query)
        ok = self._alive & (s > 0)
        if mask is not None:
            ok &= np.asarray(mask, dtype=np.bool_)
        cand = np.flatnonzero(ok)
        if len(cand) > k:
            part = np.argpartition(-s[cand], k - 1)[:k]
            cand = cand[part]
        order = np.lexsort((cand, -s[cand]))
        return cand[order], s[cand[order]]

    def explain(self, query: str, row: int) -> list[BM25Term]:
        """The query terms ``row`` contains, biggest contribution first (they sum to its score)."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} is out of range 0..{self.n_rows - 1}")
        a, b = self._indptr[row], self._indptr[row + 1]
        doc = dict(zip(self._term_ids[a:b].tolist(), self._tf[a:b].tolist()))
        dl = float(self._doc_len[row])
        out = []
        for t in self.query_terms(query):
            tid = self._vocab.get(t)
            if tid is None or tid not in doc or not self._alive[row]:
                continue
            df = int(self._df[tid])
            idf = float(self.idf(np.asarray([df]))[0])
            tf = doc[tid]
            c = idf * tf / (tf + self.k1 * (1 - self.b + self.b * dl / max(self.avgdl, 1e-9)))
            out.append(BM25Term(t, int(tf), df, idf, float(c)))
        out.sort(key=lambda m: (-m.contribution, m.term))
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(config, arrays)``: a JSON-able dict and plain numpy arrays that :meth:`from_state` reads."""
        config = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "k1": self.k1, "b": self.b,
                  "tokenizer": self.tokenizer.config(), "terms": list(self._terms_list)}
        arrays = {"bm25_indptr": self._indptr, "bm25_terms": self._term_ids, "bm25_tf": self._tf,
                  "bm25_doc_len": self._doc_len, "bm25_alive": self._alive}
        return config, arrays

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "BM25":
        """Rebuild from :meth:`state`'s output, checking that every array fits the others."""
        if not isinstance(config, Mapping) or config.get("format") != _STATE_FORMAT:
            raise BM25FormatError(f"not BM25 state (format={config.get('format') if isinstance(config, Mapping) else config!r})")
        if config.get("version") != _STATE_VERSION:
            raise BM25FormatError(f"BM25 state version {config.get('version')!r}; this bgem3 reads {_STATE_VERSION}: "
                                  "upgrade bgem3 or rebuild the index")
        terms = config.get("terms")
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms) or len(set(terms)) != len(terms):
            raise BM25FormatError("BM25 state: 'terms' must be a list of distinct strings")
        try:
            bm = cls(k1=config["k1"], b=config["b"], tokenizer=BM25Tokenizer.from_config(config["tokenizer"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BM25FormatError(f"BM25 state has invalid settings ({exc})") from None
        want = {"bm25_indptr": np.int64, "bm25_terms": np.int32, "bm25_tf": np.int32, "bm25_doc_len": np.int64,
                "bm25_alive": np.bool_}
        a = {}
        for name, dtype in want.items():
            arr = arrays.get(name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != np.dtype(dtype):
                raise BM25FormatError(f"BM25 state: {name} must be a 1-d {np.dtype(dtype)} array")
            a[name] = np.array(arr)  # own, writable copy
        n, nnz = len(a["bm25_doc_len"]), len(a["bm25_terms"])
        p = a["bm25_indptr"]
        if (len(p) != n + 1 or p[0] != 0 or p[-1] != nnz or np.any(np.diff(p) < 0) or len(a["bm25_tf"]) != nnz
                or len(a["bm25_alive"]) != n):
            raise BM25FormatError("BM25 state: row pointers, term ids, frequencies and rows do not fit together")
        if nnz and (a["bm25_terms"].min() < 0 or a["bm25_terms"].max() >= len(terms) or a["bm25_tf"].min() <= 0):
            raise BM25FormatError("BM25 state: a term id is outside the vocabulary or a frequency is not positive")
        bm._terms_list = list(terms)
        bm._vocab = {t: i for i, t in enumerate(terms)}
        bm._indptr, bm._term_ids, bm._tf = p, a["bm25_terms"], a["bm25_tf"]
        bm._doc_len, bm._alive = a["bm25_doc_len"], a["bm25_alive"]
        live_pos = _ranges(p[:-1][bm._alive], np.diff(p)[bm._alive])
        bm._df = np.bincount(bm._term_ids[live_pos], minlength=len(terms)).astype(np.int64)
        bm._live_len = int(bm._doc_len[bm._alive].sum())
        return bm

    def save(self, folder: str) -> None:
        """Write ``bm25.json`` and ``bm25_*.npy`` into ``folder`` (created if missing; no pickle)."""
        os.makedirs(folder, exist_ok=True)
        config, arrays = self.state()
        for name, arr in arrays.items():
            with open(os.path.join(folder, name + ".npy"), "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        with open(os.path.join(folder, "bm25.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, ensure_ascii=False)

    @classmethod
    def load(cls, folder: str) -> "BM25":
        """Read what :meth:`save` wrote."""
        try:
            with open(os.path.join(folder, "bm25.json"), "r", encoding="utf-8") as fh:
                config = json.load(fh)
            arrays = {}
            for name in ("bm25_indptr", "bm25_terms", "bm25_tf", "bm25_doc_len", "bm25_alive"):
                arrays[name] = np.load(os.path.join(folder, name + ".npy"), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BM25FormatError(f"cannot read BM25 state from {folder!r} ({exc})") from None
        return cls.from_state(config, arrays)


def _check_params(k1: Any, b: Any) -> tuple[float, float]:
    for name, v in (("k1", k1), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"BM25 {name} must be a finite number; got {v!r}")
    if k1 < 0:
        raise ValueError(f"BM25 k1 must be >= 0 (typical 1.2-2.0); got {k1!r}")
    if not 0 <= b <= 1:
        raise ValueError(f"BM25 b must be between 0 and 1 (typical 0.75); got {b!r}")
    return float(k1), float(b)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s+l)`` for each pair, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    csum = np.cumsum(lengths)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (csum - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift
