"""Every model family, by name, against its reference on a tiny offline checkpoint of its architecture.

References: FlagEmbedding 1.4's FlagModel (BGE v1/v1.5, E5, gte, BCE, LLM-Embedder), FlagLLMModel
(e5-mistral, gte-Qwen2, Qwen3-Embedding, bge-multilingual-gemma2) and FlagICLModel (bge-en-icl),
all in fp32 on CPU. Tolerance 1e-5 (max abs) on dense vectors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from bgem3 import Encoder, ModelLoadError
from bgem3.testing import make_bert_checkpoint, make_decoder_checkpoint

TOL = 1e-5
TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = ["what is BGE M3", "LangChain 에 대해서 알려주세요.", "capital of France?",
           "a much longer query about hybrid retrieval that fuses dense, sparse and late-interaction scores"]
PASSAGES = ["BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
            "Paris is the capital and most populous city of France.", "",
            " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 12)]
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)  # > 512 tokens on the tiny tokenizers


def _named(tmp_path_factory, name: str) -> str:
    return str(tmp_path_factory.mktemp("fam") / name)


# --------------------------------------------------------------------------- decoder-only checkpoints

@pytest.fixture(scope="module")
def mistral_left(tmp_path_factory):
    """e5-mistral-shaped: Mistral, <s> ... </s>, left padding (as its tokenizer)."""
    return make_decoder_checkpoint(_named(tmp_path_factory, "e5-mistral-7b-instruct"), "mistral", padding_side="left")


@pytest.fixture(scope="module")
def qwen2_right(tmp_path_factory):
    """gte-Qwen2-shaped: Qwen2, no BOS, </s> appended, right padding."""
    return make_decoder_checkpoint(_named(tmp_path_factory, "gte-Qwen2-1.5B-instruct"), "qwen2", bos=False,
                                   padding_side="right", seed=1)


@pytest.fixture(scope="module")
def qwen3_left(tmp_path_factory):
    return make_decoder_checkpoint(_named(tmp_path_factory, "Qwen3-Embedding-0.6B"), "qwen3", bos=False,
                                   padding_side="left", seed=2)


@pytest.fixture(scope="module")
def gemma2_right(tmp_path_factory):
    return make_decoder_checkpoint(_named(tmp_path_factory, "bge-multilingual-gemma2"), "gemma2", eos=True,
                                   padding_side="right", seed=3)


def _flag_llm(path, fmt, **kw):
    from FlagEmbedding import FlagLLMModel

    return FlagLLMModel(path, query_instruction_for_retrieval=TASK, query_instruction_format=fmt, use_fp16=False,
                        devices="cpu", batch_size=3, **kw)


@pytest.mark.parametrize("fixture,fmt,profile", [
    ("mistral_left", "Instruct: {}\nQuery: {}", "llm-instruct"),
    ("qwen2_right", "Instruct: {}\nQuery: {}", "llm-instruct"),
    ("qwen3_left", "Instruct: {}\nQuery:{}", "qwen3-embedding"),
    ("gemma2_right", "<instruct>{}\n<query>{}", "bge-llm"),
])
def test_decoder_family_matches_flagllmmodel(request, fixture, fmt, profile):
    path = request.getfixturevalue(fixture)
    enc = Encoder(path, device="cpu", batch_size=2)  # detected from the folder name
    assert (enc.profile.name, enc.profile.pooling) == (profile, "lasttoken")
    assert enc.is_decoder and enc.max_length == 512  # FlagLLMModel's default, not the 2048 context
    assert enc._pad_left == (enc.tokenizer.padding_side == "left")  # both sides are covered by the fixtures
    ref = _flag_llm(path, fmt)
    q, docs = enc.encode_queries(QUERIES).dense, enc.encode_documents(PASSAGES + [LONG])
    rq, rp = ref.encode_queries(QUERIES), ref.encode_corpus(PASSAGES + [LONG])
    assert q.shape == rq.shape and docs.dense.shape == rp.shape
    assert np.abs(q - rq).max() <= TOL
    assert np.abs(docs.dense - rp).max() <= TOL
    assert docs.token_counts[-1] == 512


def test_e5_mistral_is_last_token_not_mean(mistral_left):
    from bgem3.profiles import profile_for_hub_id

    assert profile_for_hub_id("intfloat/e5-mistral-7b-instruct").pooling == "lasttoken"
    enc = Encoder(mistral_left, device="cpu")
    mean = Encoder(mistral_left, device="cpu", profile="mean")
    ref = _flag_llm(mistral_left, "Instruct: {}\nQuery: {}").encode_corpus(PASSAGES)
    assert np.abs(enc.encode_documents(PASSAGES).dense - ref).max() <= TOL
    assert np.abs(mean.encode(PASSAGES).dense - ref).max() > 0.05  # what the old mapping computed


def test_decoder_without_pad_token_does_not_crash(tmp_path):
    path = make_decoder_checkpoint(str(tmp_path / "nopad"), "mistral", pad_token=False, padding_side="left")
    enc = Encoder(path, device="cpu", profile="lasttoken", batch_size=8)
    batch = enc.encode(PASSAGES).dense
    alone = np.vstack([enc.encode([t]).dense for t in PASSAGES])
    assert np.abs(batch - alone).max() <= TOL  # padding (with a stand-in id) changes nothing


def test_bge_en_icl_matches_flagiclmodel_and_truncates_the_query_not_the_examples(tmp_path):
    from FlagEmbedding import FlagICLModel

    path = make_decoder_checkpoint(str(tmp_path / "bge-en-icl"), "mistral", padding_side="left", seed=4)
    examples = [{"instruct": TASK, "query": "what is a fox", "response": "A fox is a small wild animal."},
                {"instruct": TASK, "query": "capital of Germany", "response": "Berlin is the capital of Germany."}]
    enc = Encoder(path, device="cpu", examples=examples)
    assert enc.profile.name == "bge-en-icl"
    ref = FlagICLModel(path, query_instruction_for_retrieval=TASK, examples_for_task=examples, use_fp16=False,
                       devices="cpu", batch_size=3)
    queries = QUERIES + [LONG]
    assert np.abs(enc.encode_queries(queries).dense - ref.encode_queries(queries)).max() <= TOL
    assert np.abs(enc.encode_documents(PASSAGES).dense - ref.encode_corpus(PASSAGES)).max() <= TOL
    short = enc.encode_queries([LONG], max_length=32)
    assert np.abs(short.dense - ref.encode_queries([LONG], max_length=32)).max() <= TOL
    # the examples survive a long query: the whole prefix is in the ids, the query was cut instead
    prefix_ids = enc.tokenizer("<s>" + "what is a fox", add_special_tokens=False)["input_ids"]
    assert short.token_counts[0] > len(prefix_ids) + 32 - 8
    # per-call examples equal constructor examples
    plain = Encoder(path, device="cpu")
    assert np.abs(plain.encode_queries(queries, examples=examples).dense - enc.encode_queries(queries).dense).max() <= TOL
    with pytest.raises(ValueError, match="unknown key"):
        plain.encode_queries(["q"], examples=[{"question": "x"}])


# --------------------------------------------------------------------------- encoder families

@pytest.fixture(scope="module")
def bert_factory(tmp_path_factory):
    base = make_bert_checkpoint(str(tmp_path_factory.mktemp("bert") / "base"))

    def named(name: str) -> str:
        dst = str(tmp_path_factory.mktemp("named") / name)
        shutil.copytree(base, dst)
        return dst
    return named


def _flag_model(path, pooling, query_instruction=None, passage_instruction=None, fmt="{}{}"):
    from FlagEmbedding import FlagModel

    kw = {"passage_instruction_for_retrieval": passage_instruction} if passage_instruction else {}
    return FlagModel(path, pooling_method=pooling, query_instruction_for_retrieval=query_instruction,
                     query_instruction_format=fmt, use_fp16=False, devices="cpu", batch_size=3, **kw)


ENCODER_FAMILIES = [
    # folder name, profile, pooling, query instruction, passage instruction, format
    ("bge-base-en-v1.5", "bge", "cls", "Represent this sentence for searching relevant passages: ", None, "{}{}"),
    ("bge-small-en", "bge", "cls", "Represent this sentence for searching relevant passages: ", None, "{}{}"),
    ("bge-large-zh", "bge-zh", "cls", "为这个句子生成表示以用于检索相关文章：", None, "{}{}"),
    ("e5-base-v2", "e5", "mean", "query: ", "passage: ", "{}{}"),
    ("e5-small", "e5", "mean", "query: ", "passage: ", "{}{}"),
    ("multilingual-e5-large-instruct", "e5-instruct", "mean", TASK, None, "Instruct: {}\nQuery: {}"),
    ("gte-base", "mean", "mean", None, None, "{}{}"),
    ("gte-base-zh", "cls", "cls", None, None, "{}{}"),
    ("bce-embedding-base_v1", "cls", "cls", None, None, "{}{}"),
    ("llm-embedder", "llm-embedder", "cls", "Represent this query for retrieving relevant documents: ",
     "Represent this document for retrieval: ", "{}{}"),
]


@pytest.mark.parametrize("name,profile,pooling,qi,pi,fmt", ENCODER_FAMILIES, ids=[f[0] for f in ENCODER_FAMILIES])
def test_encoder_family_matches_flagmodel(bert_factory, name, profile, pooling, qi, pi, fmt):
    path = bert_factory(name)
    enc = Encoder(path, device="cpu", batch_size=2)
    assert (enc.profile.name, enc.profile.pooling) == (profile, pooling)
    ref = _flag_model(path, pooling, qi, pi, fmt)
    q, p = enc.encode_queries(QUERIES).dense, enc.encode_documents(PASSAGES).dense
    assert np.abs(q - ref.encode_queries(QUERIES)).max() <= TOL
    assert np.abs(p - ref.encode_corpus(PASSAGES)).max() <= TOL


def test_llm_embedder_tasks_per_call(bert_factory):
    from bgem3.profiles import LLM_EMBEDDER_INSTRUCTIONS

    path = bert_factory("llm-embedder")
    enc = Encoder(path, device="cpu")
    ref = _flag_model(path, "cls", "x", "y")
    assert sorted(LLM_EMBEDDER_INSTRUCTIONS) == ["chat", "convsearch", "icl", "lrlm", "qa", "tool"]
    for task, (qi, ki) in LLM_EMBEDDER_INSTRUCTIONS.items():
        ref.query_instruction_for_retrieval = qi
        ref.kwargs["passage_instruction_for_retrieval"] = ki
        assert np.abs(enc.encode_queries(QUERIES, task=task).dense - ref.encode_queries(QUERIES)).max() <= TOL, task
        assert np.abs(enc.encode_documents(PASSAGES, task=task).dense - ref.encode_corpus(PASSAGES)).max() <= TOL, task
        fixed = Encoder(path, device="cpu", task=task)  # the default task, set once
        assert fixed.profile.format_query("x") == qi + "x" and fixed.profile.format_passage("x") == ki + "x"


def test_llm_embedder_unknown_task_is_refused(bert_factory):
    enc = Encoder(bert_factory("llm-embedder"), device="cpu")
    with pytest.raises(ValueError, match="unknown task 'search'.*chat"):
        enc.encode_queries(["q"], task="search")
    with pytest.raises(ValueError, match="unknown task"):
        Encoder(enc.path, device="cpu", task="search")


def test_passage_task_is_refused_where_passages_take_none(bert_factory):
    enc = Encoder(bert_factory("e5-base-v2"), device="cpu")
    with pytest.raises(ValueError, match="takes no task"):
        enc.encode_documents(["d"], task="qa")


# --------------------------------------------------------------------------- the name table

def test_every_flagembedding_auto_name_is_recognised_and_correct():
    from FlagEmbedding.inference.embedder.model_mapping import AUTO_EMBEDDER_MAPPING, EmbedderModelClass  # noqa: F401
    from FlagEmbedding import BGEM3FlagModel, FlagICLModel, FlagLLMModel, FlagModel

    from bgem3.families import family_for_name
    from bgem3.profiles import get_profile

    pooling = {"last_token": "lasttoken", "cls": "cls", "mean": "mean"}
    assert len(AUTO_EMBEDDER_MAPPING) >= 47
    for name, cfg in AUTO_EMBEDDER_MAPPING.items():
        fam = family_for_name(f"someorg/{name}")
        assert fam is not None, name
        prof = get_profile(fam.profile)
        assert prof.pooling == pooling[cfg.pooling_method.value], name
        import FlagEmbedding

        assert getattr(FlagEmbedding, fam.reference) is cfg.model_class, name
        assert fam.trust_remote_code == cfg.trust_remote_code, name
        if cfg.model_class is BGEM3FlagModel:
            assert prof.has_heads
        if cfg.model_class in (FlagLLMModel, FlagICLModel):
            # the query format, with FlagEmbedding's positional {} as our {task} / {text}
            assert prof.query_template == cfg.query_instruction_format.format("{task}", "{text}"), name
            assert prof.default_max_length == 512
        if cfg.model_class is FlagICLModel:
            assert prof.icl
        if cfg.model_class is FlagModel and cfg.query_instruction_format != "{}{}":
            assert prof.query_template == cfg.query_instruction_format.format("{task}", "{text}"), name
        # hub-id form, HF cache form and a folder named like it all resolve the same way
        assert family_for_name(f"/models/models--org--{name}/snapshots/abc") == fam
        assert family_for_name(f"/data/{name}") == fam


def test_profile_names_as_strings(bert_factory):
    from bgem3.profiles import get_profile

    for name, pooling in (("lasttoken", "lasttoken"), ("last_token", "lasttoken"), ("cls", "cls"), ("mean", "mean"),
                          ("llm-instruct", "lasttoken"), ("intfloat/e5-mistral-7b-instruct", "lasttoken")):
        assert get_profile(name).pooling == pooling
    enc = Encoder(bert_factory("plain"), device="cpu", profile="mean")
    assert enc.profile.pooling == "mean" and enc.profile.query_template is None
    with pytest.raises(ValueError, match="unknown profile 'meen'"):
        get_profile("meen")


# --------------------------------------------------------------------------- refused families

def test_t5_instructor_and_onnx_only_are_refused(tmp_path, m3_path):
    t5 = tmp_path / "some-t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    (t5 / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="T5"):
        Encoder(str(t5), device="cpu")
    instructor = tmp_path / "instructor-large"
    shutil.copytree(m3_path, instructor, ignore=shutil.ignore_patterns("*_linear.pt"))
    with pytest.raises(ModelLoadError, match="Instructor"):
        Encoder(str(instructor), device="cpu")
    onnx = tmp_path / "onnx-only"
    shutil.copytree(m3_path, onnx, ignore=shutil.ignore_patterns("*.safetensors", "*_linear.pt"))
    (onnx / "onnx").mkdir()
    (onnx / "onnx" / "model.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(ModelLoadError, match="ONNX exports and no PyTorch weights"):
        Encoder(str(onnx), device="cpu")


def test_folder_without_tokenizer_file_is_refused(tmp_path, m3_path):
    dst = tmp_path / "notok"
    shutil.copytree(m3_path, dst, ignore=shutil.ignore_patterns("tokenizer.json", "sentencepiece*", "*.model"))
    with pytest.raises(ModelLoadError, match="no tokenizer file"):
        Encoder(str(dst), device="cpu", profile="m3")


def test_max_length_one_is_refused_not_ignored(m3_encoder):
    with pytest.raises(ValueError, match="max_length=1 leaves no room"):
        m3_encoder.encode(["a b c d e f"], max_length=1)
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        Encoder(m3_encoder.path, device="cpu", max_length=2)
    out = m3_encoder.encode(["a b c d e f g h"], max_length=3)
    assert out.token_counts[0] == 3


# --------------------------------------------------------------------------- E5 told from the folder

def _e5_like(src: str, dst) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("README.md"))
    return str(dst)


def test_e5_is_told_from_the_model_card(minilm, tmp_path):
    path = _e5_like(minilm, tmp_path / "my-finetune")
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("---\nbase_model: intfloat/multilingual-e5-small\ntags:\n- sentence-transformers\n---\n# My model\n")
    enc = Encoder(path, device="cpu")
    assert enc.profile.query_template == "query: {text}" and enc.profile.passage_template == "passage: {text}"
    assert enc.profile.pooling == "mean"  # from the folder's own pooling config
    np.testing.assert_allclose(enc.encode_queries(["hi"]).dense, enc.encode(["query: hi"]).dense, atol=TOL)


def test_e5_is_told_from_config_name_or_path(minilm, tmp_path):
    path = _e5_like(minilm, tmp_path / "checkpoint-1000")
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg["_name_or_path"] = "intfloat/e5-base-v2"
    with open(cfg_path, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)
    assert Encoder(path, device="cpu").profile.name == "e5"


def test_unknown_family_warns_once_and_says_how(minilm, tmp_path, caplog):
    path = _e5_like(minilm, tmp_path / "mystery")
    with caplog.at_level(logging.WARNING, logger="bgem3.profiles"):
        Encoder(path, device="cpu")
        Encoder(path, device="cpu")
    msgs = [r.getMessage() for r in caplog.records if "could not tell which model family" in r.getMessage()]
    assert len(msgs) == 1 and "profile='e5'" in msgs[0]


def test_known_plain_model_does_not_warn(minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="bgem3.profiles"):
        Encoder(minilm, device="cpu")
    assert not [r for r in caplog.records if "could not tell" in r.getMessage()]


def test_prefix_is_never_doubled():
    from bgem3.profiles import get_profile

    e5 = get_profile("e5")
    assert e5.format_query("query: how are you") == "query: how are you"
    assert e5.format_query("how are you") == "query: how are you"
    assert e5.format_passage("passage: text") == "passage: text"
    assert e5.format_query("passage: text") == "query: passage: text"  # another prefix is text
    inst = get_profile("e5-instruct")
    once = inst.format_query("q")
    assert inst.format_query(once) == once


def test_e5_told_from_the_folder_reaches_the_cli_and_the_reranker(minilm, tmp_path, capsys):
    """#13: an E5 fine-tune in a folder with an unknown name gets its prefixes in `bgem3 embed` and rerank."""
    from bgem3.cli import main
    from bgem3.rerank import score_candidates

    path = _e5_like(minilm, tmp_path / "my-e5")
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("---\nbase_model:\n- intfloat/multilingual-e5-small\n---\n")
    enc = Encoder(path, device="cpu")
    assert main(["embed", "how are you", "--model", path, "--as", "query", "-q"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    np.testing.assert_allclose(rec["dense"], enc.encode(["query: how are you"]).dense[0], atol=1e-6)
    scores = score_candidates(enc, "how are you", ["fine thanks", "the weather"], weights=(1, 0, 0))
    q = enc.encode(["query: how are you"]).dense[0]
    d = enc.encode(["passage: fine thanks", "passage: the weather"]).dense
    np.testing.assert_allclose(np.asarray(scores.dense, dtype=np.float64), d @ q, atol=1e-5)
