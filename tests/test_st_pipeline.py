"""sentence-transformers folders: the whole module pipeline as SentenceTransformer computes it, or a refusal.

Oracle: sentence_transformers.SentenceTransformer on the same folder (real all-MiniLM-L6-v2 weights,
with Dense / Normalize / prompts / pooling configs written around them), fp32 on CPU, 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from bgem3 import Encoder, ModelLoadError
from bgem3.testing import add_sentence_transformers_modules

TOL = 1e-5
TEXTS = ["how much protein should a female eat", "The quick brown fox jumps over the lazy dog.",
         "Paris is the capital and most populous city of France.", "",
         " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 8)]
WORDS400 = " ".join(f"word{i % 50} token text" for i in range(135))  # ~400 words, > 256 tokens


def _st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def _copy_weights(minilm, dst) -> str:
    """The MiniLM transformer alone (config, weights, tokenizer), no sentence-transformers files."""
    keep = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
            "special_tokens_map.json")
    os.makedirs(dst, exist_ok=True)
    for name in keep:
        if os.path.isfile(os.path.join(minilm, name)):
            shutil.copy(os.path.join(minilm, name), os.path.join(dst, name))
    return str(dst)


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_dense_normalize_prompts_and_include_prompt_false(minilm, tmp_path):
    path = add_sentence_transformers_modules(
        _copy_weights(minilm, tmp_path / "dense-model"), pooling="mean", include_prompt=False,
        dense=[(96, "torch.nn.modules.activation.Tanh")], normalize=True,
        prompts={"query": "query: ", "document": "passage: "})
    ref = _st(path)
    enc = Encoder(path, device="cpu")
    assert enc.dimension == enc.hidden_size == 96 and enc.model_hidden_size == 384
    assert enc.profile.include_prompt is False
    q = enc.encode_queries(TEXTS).dense
    assert q.shape == (len(TEXTS), 96)  # not the transformer's 384
    assert _max_diff(q, ref.encode_query(TEXTS)) <= TOL
    assert _max_diff(enc.encode_documents(TEXTS).dense, ref.encode_document(TEXTS)) <= TOL
    assert _max_diff(enc.encode(TEXTS).dense, ref.encode(TEXTS)) <= TOL


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len_tokens", "lasttoken"])
def test_other_poolings_and_no_normalize(minilm, tmp_path, pooling):
    path = add_sentence_transformers_modules(
        _copy_weights(minilm, tmp_path / f"p-{pooling}"), pooling=pooling, normalize=False,
        dense=[(48, "torch.nn.modules.linear.Identity"), (24, "torch.nn.modules.activation.ReLU")], st6=True)
    enc = Encoder(path, device="cpu", batch_size=2)
    assert _max_diff(enc.encode(TEXTS).dense, _st(path).encode(TEXTS)) <= TOL


def test_max_seq_length_truncates_like_sentence_transformers(minilm):
    enc = Encoder(minilm, device="cpu")
    assert enc.max_length == 256  # sentence_bert_config.json, not the tokenizer's 512
    out = enc.encode([WORDS400, "short"])
    assert out.token_counts[0] == 256
    assert _max_diff(out.dense, _st(minilm).encode([WORDS400, "short"])) <= TOL


def test_folder_saved_by_sentence_transformers_6(minilm, tmp_path):
    dst = str(tmp_path / "resaved")
    ref = _st(minilm)
    ref.save(dst)
    with open(os.path.join(dst, "1_Pooling", "config.json"), encoding="utf-8") as fh:
        assert json.load(fh)["pooling_mode"] == "mean"  # the 6.x format
    enc = Encoder(dst, device="cpu")
    assert (enc.profile.pooling, enc.profile.normalize, enc.max_length) == ("mean", True, 256)
    assert _max_diff(enc.encode(TEXTS + [WORDS400]).dense, ref.encode(TEXTS + [WORDS400])) <= TOL


def test_folder_pooling_config_wins_over_the_name(minilm, tmp_path):
    # named like an E5 model (mean pooling by name) but the folder says CLS: the folder wins
    path = add_sentence_transformers_modules(_copy_weights(minilm, tmp_path / "multilingual-e5-small"),
                                             pooling="cls", normalize=True)
    enc = Encoder(path, device="cpu")
    assert enc.profile.pooling == "cls" and enc.profile.query_template == "query: {text}"
    assert _max_diff(enc.encode(TEXTS).dense, _st(path).encode(TEXTS)) <= TOL


@pytest.mark.parametrize("edit,match", [
    (lambda p: _pool_cfg(p, {"pooling_mode": "weightedmean"}), "weightedmean"),
    (lambda p: _pool_cfg(p, {"pooling_mode": ["cls", "mean"]}), "concatenates"),
    (lambda p: _pool_cfg(p, {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}), "concatenates"),
    (lambda p: _add_module(p, "sentence_transformers.models.LayerNorm"), "LayerNorm"),
    (lambda p: _sbert(p, {"max_seq_length": 128, "do_lower_case": True}), "do_lower_case"),
    (lambda p: _dense_act(p, "my.custom.Act"), "activation"),
])
def test_what_cannot_be_reproduced_is_refused(minilm, tmp_path, edit, match):
    path = add_sentence_transformers_modules(_copy_weights(minilm, tmp_path / "m"), pooling="mean",
                                             dense=[(16, "torch.nn.modules.activation.Tanh")])
    edit(path)
    with pytest.raises(ModelLoadError, match=match):
        Encoder(path, device="cpu")


def _pool_cfg(path, cfg):
    with open(os.path.join(path, "1_Pooling", "config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)


def _add_module(path, kind):
    with open(os.path.join(path, "modules.json"), encoding="utf-8") as fh:
        mods = json.load(fh)
    mods.insert(2, {"idx": 9, "name": "9", "path": "9_X", "type": kind})
    with open(os.path.join(path, "modules.json"), "w", encoding="utf-8") as fh:
        json.dump(mods, fh)


def _sbert(path, cfg):
    with open(os.path.join(path, "sentence_bert_config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)


def _dense_act(path, act):
    cfg_path = os.path.join(path, "2_Dense", "config.json")
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg["activation_function"] = act
    with open(cfg_path, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)


def test_decoder_sentence_transformers_folder_keeps_the_task_selectable(tmp_path):
    """A Qwen3-Embedding folder whose ST query prompt is the family's template with the default
    task: equal to SentenceTransformer.encode_query, and task= still selects another instruction."""
    from bgem3.testing import make_decoder_checkpoint

    task = "Given a web search query, retrieve relevant passages that answer the query"
    path = make_decoder_checkpoint(str(tmp_path / "Qwen3-Embedding-0.6B"), "qwen3", bos=False, padding_side="left")
    add_sentence_transformers_modules(path, pooling="lasttoken", normalize=True, st6=True,
                                      prompts={"query": f"Instruct: {task}\nQuery:", "document": ""})
    enc = Encoder(path, device="cpu")
    assert enc.profile.query_template == "Instruct: {task}\nQuery:{text}"
    ref = _st(path)
    assert _max_diff(enc.encode_queries(TEXTS[:4]).dense, ref.encode_query(TEXTS[:4])) <= TOL
    assert _max_diff(enc.encode_documents(TEXTS[:4]).dense, ref.encode_document(TEXTS[:4])) <= TOL
    other = enc.encode_queries(["q"], task="Find code").dense
    assert _max_diff(other, enc.encode(["Instruct: Find code\nQuery:q"]).dense) <= TOL


def test_task_on_a_profile_without_task_is_refused(minilm):
    enc = Encoder(minilm, device="cpu", profile="e5")
    with pytest.raises(ValueError, match="has no \\{task\\}"):
        enc.encode_queries(["q"], task="Find the answer")
