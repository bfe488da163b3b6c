"""BM25: a lexical channel computed from the corpus, for models without BGE-M3's lexical head.

E5, BGE v1.5 and sentence-transformers models give dense vectors only. :class:`BM25` gives
them the lexical half of hybrid retrieval: it plugs into :class:`bgem3.HybridIndex` as its
lexical channel (``HybridIndex(e5_encoder)`` picks it by default; ``lexical=BM25(k1=1.5, b=0.6)``
sets it), stores each passage's term frequencies, and scores Okapi BM25 at query time, so IDF
and average length are always those of the documents alive now (adding or deleting a passage
updates them; nothing is precomputed). For BGE-M3, ``HybridIndex(m3, lexical=BM25())`` uses
BM25 instead of the learned lexical weights.

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

Terms are stored as ids: a stable 64-bit BLAKE2 hash of the term modulo ``2**31 - 1`` (as
Qdrant's ``Bm25`` hashes terms), so the channel keeps no vocabulary that could drift from the
stored rows; two distinct terms share an id with probability ~``1 / 2**31`` per pair.

Scoring is Lucene's BM25 (the same numbers as ``bm25s`` with ``method="lucene"``):
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
``score = sum over the query's distinct terms of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``,
with N, df and avgdl over the live passages of every segment, vectorised over the postings of
the query's terms (numpy; no per-document Python loop).

Example::

    >>> import numpy as np
    >>> from bgem3 import HybridIndex
    >>> from bgem3.bm25 import BM25
    >>> bm = BM25()
    >>> index = HybridIndex(None, dim=2, channels=["lexical"], lexical=bm)
    >>> texts = ["Paris is the capital of France.", "BM25 ranks documents by term frequency.",
    ...          "서울은 대한민국의 수도이다.", "北京是中华人民共和国的首都。"]
    >>> _ = index.add_encoded(["paris", "bm25", "seoul", "beijing"], texts, None,
    ...                       sparse=bm.document_rows(texts, None))
    >>> [index.search_encoded(None, bm.query_row(q, None), None, k=1)[0].id
    ...  for q in ("ranking documents", "서울 수도", "首都北京")]
    ['bm25', 'seoul', 'beijing']
    >>> bm.tokenizer("서울은 Running!")
    ['서울', '울은', 'run']
"""

from __future__ import annotations

import functools
import hashlib
import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .lexical import MAX_TOKEN_ID, LexicalBlock, LexicalChannel, LexicalView, QueryTerms, register_lexical_channel

__all__ = ["BM25", "BM25Tokenizer", "BM25Term", "term_id", "ENGLISH_STOPWORDS", "DEFAULT_K1", "DEFAULT_B"]

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
_ID_SPACE = MAX_TOKEN_ID + 1  # ids 0 .. 2**31 - 2, what the index stores as int32
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
_TOKEN_PATTERN = rf"(?P<cjk>[{_BIGRAM_SCRIPTS}]+)|(?P<word>[^\W_{_BIGRAM_SCRIPTS}]+(?:\p{{M}}+[^\W_{_BIGRAM_SCRIPTS}]*)*)"


@functools.lru_cache(maxsize=None)
def _token_re() -> Any:
    """The tokenizer's pattern, compiled on first use: importing this module registers the channel
    for every index load, and ``regex`` plus this compile cost a fresh process ~25 ms."""
    import regex

    return regex.compile(_TOKEN_PATTERN, regex.V0)


@dataclass
class BM25Term:
    """One query term a document matched: its part of the document's BM25 score."""

    term: str
    tf: int
    df: int
    idf: float
    contribution: float
    #: the query word the term comes from, as written (case folded); ``term`` is its stem
    word: Optional[str] = None

    def to_dict(self) -> dict:
        return {"term": self.term, "word": self.word if self.word is not None else self.term, "tf": self.tf,
                "df": self.df, "idf": self.idf, "contribution": self.contribution}

    @property
    def label(self) -> str:
        """``word (stem)`` when stemming changed the word, else the term: what a reader recognises."""
        return self.term if self.word in (None, self.term) else f"{self.word} ({self.term})"


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
            raise ValueError(f"unknown BM25 tokenizer settings {sorted(unknown)}; written by a newer bgem3?")
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

    def words(self, text: str) -> dict[str, str]:
        """Each word term of ``text`` -> the first word it comes from, case folded (``"herebi"`` ->
        ``"hereby"``): how to show a stem to the person who typed the word."""
        out: dict[str, str] = {}
        for m in _token_re().finditer(unicodedata.normalize("NFKC", text)):
            word = m.group("word")
            if word is None:
                continue
            term = self._word(word)
            if term and term not in out:
                out[term] = word.casefold() if self.lowercase else word
        return out

    def __call__(self, text: str) -> list[str]:
        """The terms of ``text`` in order (repeats kept: term frequency counts them)."""
        if not isinstance(text, str):
            raise TypeError(f"BM25Tokenizer takes a string; got {type(text).__name__}")
        text = unicodedata.normalize("NFKC", text)
        out: list[str] = []
        for m in _token_re().finditer(text):
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
def term_id(term: str) -> int:
    """The stored id of a term: BLAKE2b-64 of its UTF-8 bytes modulo ``2**31 - 1`` (stable across runs)."""
    h = hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") % _ID_SPACE


@register_lexical_channel
class BM25(LexicalChannel):
    """Okapi BM25 as :class:`bgem3.HybridIndex`'s lexical channel (see the module docstring).

    Args:
        k1: term-frequency saturation (default 1.2; >= 0).
        b: length normalisation, 0 (none) to 1 (full; default 0.75).
        tokenizer: a :class:`BM25Tokenizer` (default: English stemming and stop words, CJK bigrams).

    The settings are saved with the index (``manifest.json``: ``"lexical": {"kind": "bm25",
    "config": ...}``) and restored by :meth:`bgem3.HybridIndex.load`, so queries are always cut
    and scored like the stored passages.

    Example::

        >>> bm = BM25(k1=1.5, b=0.5)
        >>> bm.config()["k1"], bm.query_row("red apples and green apples", None) == {
        ...     term_id("red"): 1.0, term_id("appl"): 1.0, term_id("green"): 1.0}
        (1.5, True)
    """

    kind = "bm25"
    uses_sparse_head = False
    #: raw BM25 scores (0..~20) are not on the dense cosine's scale: ``search(mode="auto")`` fuses by rank
    fusion = "rrf"

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B, tokenizer: Optional[BM25Tokenizer] = None) -> None:
        self.k1, self.b = _check_params(k1, b)
        if tokenizer is not None and not isinstance(tokenizer, BM25Tokenizer):
            raise TypeError(f"tokenizer must be a bgem3.bm25.BM25Tokenizer; got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer or BM25Tokenizer()
        self._ids: dict[str, int] = {}
        self._last: Optional[tuple[tuple[int, ...], np.ndarray, np.ndarray, float, int]] = None

    def __repr__(self) -> str:
        return f"BM25(k1={self.k1}, b={self.b}, tokenizer={self.tokenizer!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BM25) and self.config() == other.config()

    # -- settings (saved in the index manifest)
    def config(self) -> dict:
        return {"k1": self.k1, "b": self.b, "tokenizer": self.tokenizer.config()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "BM25":
        unknown = set(config) - {"k1", "b", "tokenizer"}
        if unknown:
            raise ValueError(f"unknown BM25 settings {sorted(unknown)} in the index manifest; written by a newer bgem3?")
        tok = config.get("tokenizer")
        return cls(k1=config.get("k1", DEFAULT_K1), b=config.get("b", DEFAULT_B),
                   tokenizer=BM25Tokenizer.from_config(tok) if tok is not None else None)

    # -- rows
    def _id(self, term: str) -> int:
        tid = self._ids.get(term)
        if tid is None:
            tid = term_id(term)
            if len(self._ids) < 2_000_000:
                self._ids[term] = tid
        return tid

    def terms(self, text: str) -> list[str]:
        """The terms of ``text`` in order (repeats kept)."""
        return self.tokenizer(text)

    def document_rows(self, texts: Sequence[str], encoded: Any = None) -> list[dict[int, float]]:
        """``{term id: term frequency}`` of each text (``encoded`` is not needed)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string; wrap it: [text]")
        out = []
        for text in texts:
            row: dict[int, float] = {}
            for t in self.tokenizer(text):
                tid = self._id(t)
                row[tid] = row.get(tid, 0.0) + 1.0
            out.append(row)
        return out

    def query_row(self, text: str, encoded: Any = None) -> dict[int, float]:
        """Weight 1 for each distinct term of the query."""
        return {self._id(t): 1.0 for t in self.tokenizer(text)}

    def row_extras(self, block: LexicalBlock) -> dict[str, np.ndarray]:
        """``doclen``: each passage's number of terms (the sum of its term frequencies)."""
        rows = np.repeat(np.arange(block.n_rows, dtype=np.int64), np.diff(block.indptr))
        return {"doclen": np.bincount(rows, weights=np.asarray(block.values, dtype=np.float64),
                                      minlength=block.n_rows).astype(np.float32)}

    # -- scoring
    def _stats(self, query: QueryTerms, segments: Sequence[LexicalView]):
        n_live, total_len = 0, 0.0
        df = np.zeros(len(query), dtype=np.float64)
        postings = []
        for seg in segments:
            alive = seg.alive if seg.alive is not None else np.ones(seg.n_rows, dtype=np.bool_)
            n_live += int(alive.sum())
            dl = np.asarray(seg.extras["doclen"], dtype=np.float64)
            total_len += float(dl[alive].sum())
            rows, tf, qpos = seg.postings(query.terms) if len(query) else (np.zeros(0, np.int64),) * 3
            live = alive[rows]
            df += np.bincount(qpos[live], minlength=len(query))
            postings.append((rows, np.asarray(tf, dtype=np.float64), qpos, dl))
        idf = np.log1p((n_live - df + 0.5) / (df + 0.5)) if n_live else np.zeros(len(query))
        avgdl = total_len / n_live if n_live else 0.0
        return postings, idf, df, avgdl, n_live

    def score(self, query: QueryTerms, segments: Sequence[LexicalView]) -> list[np.ndarray]:
        """BM25 of every row of every segment (0 where no query term occurs)."""
        postings, idf, df, avgdl, n_live = self._stats(query, segments)
        self._last = (tuple(query.terms.tolist()), idf, df, avgdl, n_live)
        weights = np.asarray(query.weights, dtype=np.float64)
        out = []
        for seg, (rows, tf, qpos, dl) in zip(segments, postings):
            if not len(rows) or not n_live:
                out.append(np.zeros(seg.n_rows, dtype=np.float32))
                continue
            norm = self.k1 * (1.0 - self.b + self.b * dl[rows] / max(avgdl, 1e-9))
            contrib = weights[qpos] * idf[qpos] * tf / (tf + norm)
            out.append(np.bincount(rows, weights=contrib, minlength=seg.n_rows).astype(np.float32))
        return out

    def explain_text(self, query: str, text: str) -> list[BM25Term]:
        """The query terms a passage contains and their share of its BM25 score, biggest first,
        with the corpus statistics of the last :meth:`score` call for this query (what the
        index just searched with). They sum to the hit's lexical score."""
        qrow = self.query_row(query)
        qterms = list(dict.fromkeys(self.tokenizer(query)))
        words = self.tokenizer.words(query)
        key = tuple(sorted(set(qrow)))
        if self._last is None or self._last[0] != key:
            raise ValueError("explain_text explains the last search: search the index with this query first")
        _, idf, df, avgdl, _ = self._last
        pos = {t: i for i, t in enumerate(key)}
        doc = self.tokenizer(text)
        counts: dict[int, int] = {}
        for t in doc:
            tid = self._id(t)
            counts[tid] = counts.get(tid, 0) + 1
        out = []
        dl = float(len(doc))
        for t in qterms:
            tid = self._id(t)
            tf = counts.get(tid, 0)
            if not tf:
                continue
            i = pos[tid]
            c = float(idf[i]) * tf / (tf + self.k1 * (1 - self.b + self.b * dl / max(avgdl, 1e-9)))
            out.append(BM25Term(t, int(tf), int(df[i]), float(idf[i]), c, words.get(t, t)))
        out.sort(key=lambda m: (-m.contribution, m.term))
        return out


def _check_params(k1: Any, b: Any) -> tuple[float, float]:
    for name, v in (("k1", k1), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"BM25 {name} must be a finite number; got {v!r}")
    if k1 < 0:
        raise ValueError(f"BM25 k1 must be >= 0 (typical 1.2-2.0); got {k1!r}")
    if not 0 <= b <= 1:
        raise ValueError(f"BM25 b must be between 0 and 1 (typical 0.75); got {b!r}")
    return float(k1), float(b)
