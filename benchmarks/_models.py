"""Shared helpers for the encode benchmarks: offline model folders and a deterministic corpus.

Models are random-weight checkpoints with BGE-M3's architecture, built offline by
:func:`bgem3.testing.make_m3_checkpoint` into a cache folder (``.bench_models/`` by default,
git-ignored) and reused across runs. Speed does not depend on the weight values.

Example::

    from benchmarks._models import model_path, make_corpus
    path = model_path("small")            # builds .bench_models/small once (a few seconds)
    texts = make_corpus(64, seed=0)       # mixed-length multilingual texts
"""

from __future__ import annotations

import os
import random
from typing import Optional

from bgem3.testing import BGE_M3_SIZES, SAMPLE_CORPUS, SMALL_SIZES, make_m3_checkpoint

#: name -> (sizes, description)
MODELS = {
    "full": (BGE_M3_SIZES, "BGE-M3 architecture: 24 layers, hidden 1024, 16 heads, FFN 4096, vocab 250002"),
    "small": (SMALL_SIZES, "small: 6 layers, hidden 384, 12 heads, FFN 1536"),
    "tiny": ({}, "tiny: 2 layers, hidden 32 (smoke runs only)"),
}

DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench_models")


def model_path(name: str, cache_dir: Optional[str] = None) -> str:
    """Folder of the benchmark model ``name`` ("full", "small", "tiny"), built once if missing.

    The folder also has sentence-transformers' ``modules.json`` + CLS pooling config, so
    ``SentenceTransformer(folder)`` loads the same weights with BGE-M3's pooling.
    """
    if name not in MODELS:
        raise ValueError(f"model {name!r} is unknown; use one of {sorted(MODELS)}")
    folder = os.path.join(cache_dir or DEFAULT_CACHE, name)
    done = os.path.join(folder, ".complete")
    if not os.path.isfile(done):
        sizes, desc = MODELS[name]
        print(f"[build] {desc} -> {folder} (once; the full model writes ~2.3 GB)", flush=True)
        make_m3_checkpoint(folder, seed=0, sentence_transformers=True, **sizes)
        with open(done, "w") as fh:
            fh.write("ok\n")
    return folder


def _words() -> list[str]:
    words = []
    for line in SAMPLE_CORPUS:
        words.extend(line.split())
    # CJK lines have few spaces: add their characters in short runs too
    for line in SAMPLE_CORPUS:
        if any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in line):
            words.extend(line[i:i + 3] for i in range(0, len(line), 3))
    return words


def make_corpus(n: int, *, seed: int = 0, min_tokens: int = 10, max_tokens: int = 500, tokenizer=None) -> list[str]:
    """``n`` deterministic multilingual texts whose token counts spread uniformly over [min, max].

    Each text is a run of words drawn (seeded) from :data:`bgem3.testing.SAMPLE_CORPUS`
    (English, Korean, Chinese, Japanese, Russian, Spanish, French, German, Arabic, Hindi,
    Greek, digits/symbols). With ``tokenizer`` given, each text is grown/trimmed word by word
    until the tokenizer's count (specials included) hits its target; without one, targets are
    approximated at ~2 tokens per word.
    """
    rng = random.Random(seed)
    words = _words()
    texts = []
    for i in range(n):
        target = min_tokens + (max_tokens - min_tokens) * (i + rng.random()) / n  # stratified
        start = rng.randrange(len(words))
        text_words: list[str] = []
        j = start
        if tokenizer is None:
            count = max(1, int(target / 2))
            text_words = [words[(j + k) % len(words)] for k in range(count)]
        else:
            while True:
                text_words.append(words[j % len(words)])
                j += 1 if rng.random() < 0.7 else rng.randrange(1, len(words))
                if len(text_words) % 8 == 0 or len(text_words) < 8:
                    n_tok = len(tokenizer(" ".join(text_words), add_special_tokens=True)["input_ids"])
                    if n_tok >= target:
                        break
            while len(text_words) > 1 and len(tokenizer(" ".join(text_words[:-1]))["input_ids"]) >= target:
                text_words.pop()
        texts.append(" ".join(text_words))
    rng.shuffle(texts)
    return texts
