"""The server cuts long texts before tokenising them, and the cut never changes a token the model reads.

Proof by construction over three tokenizer kinds (SentencePiece Unigram with metaspace, as
XLM-R / BGE-M3; WordPiece, as BERT / MiniLM; byte-level BPE, as GPT-2 / Qwen) and texts that
stress the boundary (words, CJK without spaces, emoji, one long blob, whitespace runs): the cut
text's first ``max_length`` tokens equal the whole text's. Then the server: a request's
tokenizer never sees more than the cut, and a request over ``--max-request-tokens`` stops
tokenising once its running total passes the limit.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from bgem3.serve.textcut import CHARS_PER_TOKEN, cut_texts


def _bytelevel_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "BGE M3 dense lexical multi-vector",
              "Paris est la capitale de la France", "北京是中国的首都", "emoji 🙂🙃 and more"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=["<|endoftext|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tokenizers(m3_path, minilm):
    from transformers import AutoTokenizer

    return {"unigram": AutoTokenizer.from_pretrained(m3_path), "wordpiece": AutoTokenizer.from_pretrained(minilm),
            "bytelevel": _bytelevel_bpe()}


def _texts() -> list[str]:
    rng = random.Random(0)
    words = ["retrieval", "dense", "BGE-M3", "lexical", "the", "a", "Paris,", "capitale", "fox.", "über", "naïve",
             "北京", "東京都", "🙂", "x" * 30, "don't", "(a)", "3.14159", "https://example.com/a?b=c"]
    out = []
    for n in (3000, 9000, 40000):
        out.append(" ".join(rng.choice(words) for _ in range(n // 6)))
    out.append("北京是中国的首都" * 2000)                  # no whitespace at all
    out.append("🙂" * 6000)                                  # 4-byte characters, no whitespace
    out.append("abc" * 8000)                                  # one long blob
    out.append(("word   \t\n  " * 50 + "x ") * 200)           # whitespace runs
    out.append(" " * 20000 + "hello world " * 300)            # a long run of whitespace first
    out.append("short text")                                  # never cut
    return out


@pytest.mark.parametrize("kind", ["unigram", "wordpiece", "bytelevel"])
@pytest.mark.parametrize("max_length", [16, 64, 200])
def test_cut_keeps_the_first_max_length_tokens(tokenizers, kind, max_length):
    tok = tokenizers[kind]
    texts = _texts()
    cut = cut_texts(tok, texts, max_length)
    full = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    mine = tok(cut, truncation=True, max_length=max_length)["input_ids"]
    for i, (a, b) in enumerate(zip(full, mine)):
        assert a == b, f"text {i} ({texts[i][:30]!r}...): the cut changed its first {max_length} tokens"
    assert any(len(c) < len(t) for c, t in zip(cut, texts))  # it does cut
    for c, t in zip(cut, texts):
        assert t.startswith(c)


def test_text_the_model_can_read_is_never_cut(tokenizers):
    tok = tokenizers["unigram"]
    # a long text of few tokens (whitespace is nearly free): more characters than the first bound
    text = ("a" + " " * 40) * 100
    n = len(tok(text)["input_ids"])
    assert len(text) > 64 * CHARS_PER_TOKEN
    assert cut_texts(tok, [text], n + 5) == [text]


class _Recording:
    """A tokenizer proxy that records the longest string it was given."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.longest = 0
        self.chars = 0

    def __call__(self, texts, *a, **kw):
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.longest = max([self.longest] + [len(t) for t in texts])
        self.chars += sum(len(t) for t in texts)
        return self.tok(texts, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _server(m3_path, **config):
    from bgem3 import Encoder
    from bgem3.serve.app import ServeConfig, _Server

    enc = Encoder(m3_path, device="cpu", max_length=64)
    server = _Server(enc, ServeConfig(**config))
    rec = _Recording(enc.tokenizer)
    enc.tokenizer = rec
    server._loop_tokenizer = rec
    return server, enc, rec


def test_server_tokenizer_never_reads_past_the_cut(m3_path):
    server, enc, rec = _server(m3_path)
    text = "retrieval with dense and lexical vectors " * 50000  # 2 MB
    ids = asyncio.run(server.tokenize([text], True, None))
    assert rec.longest <= 64 * CHARS_PER_TOKEN * 4, rec.longest  # not 2 MB
    want = rec.tok([text], truncation=True, max_length=64)["input_ids"]
    assert ids == want


def test_request_over_the_token_limit_stops_tokenising_early(m3_path):
    from bgem3.serve.shapes import ApiError

    server, enc, rec = _server(m3_path, max_request_tokens=1000)
    texts = ["lexical dense colbert " * 4000] * 200  # 200 texts of ~88 KB, each cut to ~64 tokens
    with pytest.raises(ApiError) as info:
        asyncio.run(server.tokenize(texts, True, None))
    assert info.value.status == 413 and "--max-request-tokens" in info.value.message
    # 1000 tokens are ~16 texts of 64: the tokenizer read a few slices' worth, not all 200 texts
    assert rec.chars < 60 * 64 * CHARS_PER_TOKEN * 2, rec.chars


def test_tokenising_past_the_deadline_is_a_504(m3_path):
    from bgem3.serve.shapes import ApiError

    server, enc, rec = _server(m3_path, request_timeout=0.001)
    texts = ["word " * 20000] * 40

    async def go():
        await asyncio.sleep(0)
        return await server.tokenize(texts, True, None)

    with pytest.raises(ApiError) as info:
        asyncio.run(go())
    assert info.value.status == 504
