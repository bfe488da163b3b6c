"""Measure, per model family, the max abs difference between bgem3.Encoder and the family's reference.

Tiny random-weight checkpoints of each architecture are built offline (bgem3.testing); references:
FlagEmbedding 1.4 (FlagModel, FlagLLMModel, FlagICLModel, BGEM3FlagModel) and sentence-transformers,
fp32 on CPU. Prints a markdown table (docs/encoder.md quotes it).

    python benchmarks/family_parity.py
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bgem3 import Encoder  # noqa: E402
from bgem3.profiles import LLM_EMBEDDER_INSTRUCTIONS  # noqa: E402
from bgem3.testing import (add_sentence_transformers_modules, make_bert_checkpoint, make_decoder_checkpoint,  # noqa: E402
                           make_m3_checkpoint, minilm_path)

TASK = "Given a web search query, retrieve relevant passages that answer the query"
Q = ["what is BGE M3", "LangChain 에 대해서 알려주세요.", "capital of France?", "a longer query about hybrid retrieval"]
P = ["BGE M3 is an embedding model.", "Paris is the capital of France.", "",
     " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 12),
     " ".join(["The quick brown fox jumps over the lazy dog."] * 60)]
ROWS = []


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def row(family, profile, reference, q, p, extra=""):
    ROWS.append((family, profile, reference, q, p, extra))


def main() -> None:
    from FlagEmbedding import BGEM3FlagModel, FlagICLModel, FlagLLMModel, FlagModel
    from sentence_transformers import SentenceTransformer

    root = tempfile.mkdtemp()
    try:
        for name, arch, fmt, kw in [
            ("e5-mistral-7b-instruct", "mistral", "Instruct: {}\nQuery: {}", dict(padding_side="left")),
            ("gte-Qwen2-1.5B-instruct", "qwen2", "Instruct: {}\nQuery: {}", dict(bos=False)),
            ("Qwen3-Embedding-0.6B", "qwen3", "Instruct: {}\nQuery:{}", dict(bos=False, padding_side="left")),
            ("bge-multilingual-gemma2", "gemma2", "<instruct>{}\n<query>{}", dict()),
            ("SFR-Embedding-Mistral", "mistral", "Instruct: {}\nQuery: {}", dict(pad_token=True)),
        ]:
            path = make_decoder_checkpoint(os.path.join(root, name), arch, **kw)
            enc = Encoder(path, device="cpu", batch_size=2)
            ref = FlagLLMModel(path, query_instruction_for_retrieval=TASK, query_instruction_format=fmt,
                               use_fp16=False, devices="cpu", batch_size=3)
            row(name, enc.profile.name, "FlagLLMModel", diff(enc.encode_queries(Q).dense, ref.encode_queries(Q)),
                diff(enc.encode_documents(P).dense, ref.encode_corpus(P)), f"{arch}, {kw.get('padding_side', 'right')} padding")
        path = make_decoder_checkpoint(os.path.join(root, "bge-en-icl"), "mistral", padding_side="left")
        ex = [{"instruct": TASK, "query": "what is a fox", "response": "A fox is a small wild animal."}]
        enc = Encoder(path, device="cpu", examples=ex)
        ref = FlagICLModel(path, query_instruction_for_retrieval=TASK, examples_for_task=ex, use_fp16=False,
                           devices="cpu", batch_size=3)
        row("bge-en-icl", enc.profile.name, "FlagICLModel",
            max(diff(enc.encode_queries(Q + P[-1:]).dense, ref.encode_queries(Q + P[-1:])),
                diff(enc.encode_queries(P[-1:], max_length=32).dense, ref.encode_queries(P[-1:], max_length=32))),
            diff(enc.encode_documents(P).dense, ref.encode_corpus(P)), "mistral, 1 example; query cut at 32")

        bert = make_bert_checkpoint(os.path.join(root, "bert"))
        for name, pooling, qi, pi, fmt in [
            ("bge-base-en-v1.5", "cls", "Represent this sentence for searching relevant passages: ", None, "{}{}"),
            ("bge-small-en", "cls", "Represent this sentence for searching relevant passages: ", None, "{}{}"),
            ("bge-large-zh", "cls", "为这个句子生成表示以用于检索相关文章：", None, "{}{}"),
            ("e5-base-v2", "mean", "query: ", "passage: ", "{}{}"),
            ("gte-base", "mean", None, None, "{}{}"),
            ("gte-base-zh", "cls", None, None, "{}{}"),
        ] + [(f"llm-embedder ({t})", "cls", a, b, "{}{}") for t, (a, b) in LLM_EMBEDDER_INSTRUCTIONS.items()]:
            folder = name.split(" ")[0]
            path = os.path.join(root, folder)
            if not os.path.isdir(path):
                shutil.copytree(bert, path)
            enc = Encoder(path, device="cpu", batch_size=2)
            kw = {"passage_instruction_for_retrieval": pi} if pi else {}
            ref = FlagModel(path, pooling_method=pooling, query_instruction_for_retrieval=qi, query_instruction_format=fmt,
                            use_fp16=False, devices="cpu", **kw)
            task = name.split("(")[1].rstrip(")") if "(" in name else None
            dq = enc.encode_queries(Q, task=task).dense if task else enc.encode_queries(Q).dense
            dp = enc.encode_documents(P, task=task).dense if task else enc.encode_documents(P).dense
            row(name, enc.profile.name, "FlagModel", diff(dq, ref.encode_queries(Q)), diff(dp, ref.encode_corpus(P)), "BERT")

        m3 = make_m3_checkpoint(os.path.join(root, "m3"))
        for name, pooling, qi, fmt in [("multilingual-e5-large", "mean", "query: ", "{}{}"),
                                       ("multilingual-e5-large-instruct", "mean", TASK, "Instruct: {}\nQuery: {}"),
                                       ("bce-embedding-base_v1", "cls", None, "{}{}")]:
            path = os.path.join(root, name)
            shutil.copytree(m3, path, ignore=shutil.ignore_patterns("*_linear.pt"))
            enc = Encoder(path, device="cpu", batch_size=2)
            kw = {"passage_instruction_for_retrieval": "passage: "} if qi == "query: " else {}
            ref = FlagModel(path, pooling_method=pooling, query_instruction_for_retrieval=qi, query_instruction_format=fmt,
                            use_fp16=False, devices="cpu", **kw)
            row(name, enc.profile.name, "FlagModel", diff(enc.encode_queries(Q).dense, ref.encode_queries(Q)),
                diff(enc.encode_documents(P).dense, ref.encode_corpus(P)), "XLM-R")
        enc = Encoder(m3, device="cpu")
        ref = BGEM3FlagModel(m3, use_fp16=False, devices="cpu")
        o = enc.encode(P, sparse=True, colbert=True)
        r = ref.encode(P, return_dense=True, return_sparse=True, return_colbert_vecs=True)
        sp = max(abs(o.sparse[i].get(int(k), 0.0) - float(v)) for i in range(len(P)) for k, v in r["lexical_weights"][i].items())
        cb = max(diff(a, b) for a, b in zip(o.colbert, r["colbert_vecs"]))
        row("bge-m3", "m3", "BGEM3FlagModel", diff(enc.encode_queries(Q).dense, ref.encode_queries(Q)["dense_vecs"]),
            diff(o.dense, r["dense_vecs"]), f"XLM-R; sparse {sp:.1e}, ColBERT {cb:.1e}")

        mini = minilm_path()
        st = SentenceTransformer(mini, device="cpu")
        long_text = " ".join(f"word{i % 50} token text" for i in range(135))
        enc = Encoder(mini, device="cpu")
        row("all-MiniLM-L6-v2 (real weights)", enc.profile.name, "SentenceTransformer",
            diff(enc.encode_queries(Q).dense, st.encode_query(Q)), diff(enc.encode_documents(P + [long_text]).dense,
                                                                        st.encode_document(P + [long_text])),
            "max_seq_length 256")
        dense_dir = os.path.join(root, "st-dense")
        shutil.copytree(mini, dense_dir, ignore=shutil.ignore_patterns("1_Pooling", "modules.json", "README.md",
                                                                        "config_sentence_transformers.json"))
        add_sentence_transformers_modules(dense_dir, pooling="mean", include_prompt=False,
                                          dense=[(96, "torch.nn.modules.activation.Tanh")],
                                          prompts={"query": "query: ", "document": "passage: "}, max_seq_length=256)
        st = SentenceTransformer(dense_dir, device="cpu")
        enc = Encoder(dense_dir, device="cpu")
        row("ST pipeline: Dense 384->96 + Normalize, include_prompt=False", enc.profile.name, "SentenceTransformer",
            diff(enc.encode_queries(Q).dense, st.encode_query(Q)), diff(enc.encode_documents(P).dense, st.encode_document(P)),
            "MiniLM weights")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| family (checkpoint name) | profile | reference | queries max abs diff | passages max abs diff | notes |")
    print("|---|---|---|---|---|---|")
    for fam, prof, ref, q, p, extra in ROWS:
        print(f"| {fam} | `{prof}` | {ref} | {q:.1e} | {p:.1e} | {extra} |")


if __name__ == "__main__":
    main()
