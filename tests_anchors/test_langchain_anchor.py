"""docs/langchain.md's migration table, row by row, against langchain_huggingface.HuggingFaceEmbeddings
itself on the real all-MiniLM-L6-v2 weights: the same vectors (max abs difference <= 1e-6) or a
documented refusal that names the option; then the same LangChain flows on both (InMemoryVectorStore
search and MMR, a retriever, an LCEL chain with invoke / batch / ainvoke)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_huggingface import HuggingFaceEmbeddings

from bgem3.testing import minilm_path
from langchain_bgem3 import BGEM3Embeddings

from _sample import QUERIES, sample_passages

TOL = 1e-6
P = minilm_path()
SAMPLE = sample_passages()
ROWS = SAMPLE[:12] + SAMPLE[-4:]  # per-row checks: prose, non-English lines, one text over the 256-token limit
PROMPTS = {"query": "query: ", "doc": "passage: "}

# (row of the migration table, keyword arguments given to both classes)
SAME = [
    ("defaults", {}),
    ("model= alias", {"model": P}),
    ("cache_folder", {"cache_folder": "CACHE"}),
    ("model_kwargs device", {"model_kwargs": {"device": "cpu"}}),
    ("model_kwargs model_kwargs.torch_dtype", {"model_kwargs": {"model_kwargs": {"torch_dtype": torch.float32}}}),
    ("model_kwargs trust_remote_code revision local_files_only",
     {"model_kwargs": {"trust_remote_code": False, "revision": None, "local_files_only": True}}),
    ("model_kwargs truncate_dim", {"model_kwargs": {"truncate_dim": 128}}),
    ("model_kwargs prompts default_prompt_name", {"model_kwargs": {"prompts": PROMPTS, "default_prompt_name": "doc"}}),
    ("model_kwargs backend torch", {"model_kwargs": {"backend": "torch"}}),
    ("encode_kwargs batch_size", {"encode_kwargs": {"batch_size": 4}}),
    ("encode_kwargs normalize_embeddings False", {"encode_kwargs": {"normalize_embeddings": False}}),
    ("encode_kwargs normalize_embeddings True", {"encode_kwargs": {"normalize_embeddings": True}}),
    ("encode_kwargs prompt", {"encode_kwargs": {"prompt": "Represent this text: "}}),
    ("encode_kwargs prompt_name", {"model_kwargs": {"prompts": PROMPTS}, "encode_kwargs": {"prompt_name": "doc"}}),
    ("encode_kwargs truncate_dim", {"encode_kwargs": {"truncate_dim": 64}}),
    ("encode_kwargs truncate_dim + normalize_embeddings",
     {"encode_kwargs": {"truncate_dim": 64, "normalize_embeddings": True}}),
    ("encode_kwargs precision float32", {"encode_kwargs": {"precision": "float32"}}),
    ("encode_kwargs convert_to_numpy", {"encode_kwargs": {"convert_to_numpy": True}}),
    ("encode_kwargs convert_to_tensor", {"encode_kwargs": {"convert_to_tensor": True}}),
    ("query_encode_kwargs", {"encode_kwargs": {"prompt": "passage: "}, "query_encode_kwargs": {"prompt": "query: "}}),
    ("show_progress", {"show_progress": True}),
]

# (row, keyword arguments, what the error names): refused by bgem3 with the reason and the alternative
REFUSED = [
    ("multi_process", {"multi_process": True}, "multi_process"),
    ("tokenizer_kwargs", {"model_kwargs": {"tokenizer_kwargs": {"model_max_length": 64}}}, "tokenizer_kwargs"),
    ("config_kwargs", {"model_kwargs": {"config_kwargs": {}}}, "config_kwargs"),
    ("similarity_fn_name", {"model_kwargs": {"similarity_fn_name": "cosine"}}, "similarity_fn_name"),
    ("precision int8", {"encode_kwargs": {"precision": "int8"}}, "precision"),
    ("encode_kwargs device", {"encode_kwargs": {"device": "cpu"}}, "device"),
    ("encode_kwargs output_value", {"encode_kwargs": {"output_value": "token_embeddings"}}, "output_value"),
]


def _kwargs(kw: dict, tmp_path) -> dict:
    kw = dict(kw)
    if kw.get("cache_folder") == "CACHE":
        kw["cache_folder"] = str(tmp_path)
    if "model" not in kw:
        kw["model_name"] = P
    return kw


def _diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("row,kw", SAME, ids=[r for r, _ in SAME])
def test_migration_table_row_gives_the_anchors_vectors(row, kw, tmp_path):
    anchor = HuggingFaceEmbeddings(**_kwargs(kw, tmp_path))
    ours = BGEM3Embeddings(**_kwargs(kw, tmp_path))
    assert _diff(ours.embed_documents(ROWS), anchor.embed_documents(ROWS)) <= TOL
    for q in QUERIES[:3]:
        assert _diff(ours.embed_query(q), anchor.embed_query(q)) <= TOL
    assert _diff(asyncio.run(ours.aembed_documents(ROWS[:3])), anchor.embed_documents(ROWS[:3])) <= TOL
    assert _diff(asyncio.run(ours.aembed_query(QUERIES[3])), anchor.embed_query(QUERIES[3])) <= TOL


def test_show_progress_bar_in_encode_kwargs_is_show_progress():
    # the anchor passes show_progress and encode_kwargs' show_progress_bar both to encode (a TypeError);
    # bgem3 takes either
    ours = BGEM3Embeddings(model_name=P, encode_kwargs={"show_progress_bar": True})
    assert _diff(ours.embed_documents(ROWS), HuggingFaceEmbeddings(model_name=P).embed_documents(ROWS)) <= TOL


def test_newlines_become_spaces_as_in_the_anchor():
    texts = [t for t in SAMPLE if "\n" in t][:5]
    assert texts
    ours, anchor = BGEM3Embeddings(model_name=P), HuggingFaceEmbeddings(model_name=P)
    assert _diff(ours.embed_documents(texts), anchor.embed_documents(texts)) <= TOL


@pytest.mark.parametrize("row,kw,named", REFUSED, ids=[r for r, _, _ in REFUSED])
def test_migration_table_refusals_name_the_option(row, kw, named, tmp_path):
    with pytest.raises((ValueError, TypeError)) as err:
        BGEM3Embeddings(**_kwargs(kw, tmp_path))
    assert named in str(err.value)


def test_backend_onnx_is_taken_and_names_its_extra_where_onnxruntime_is_missing(tmp_path):
    """backend='onnx' is supported since issue 26 (exactness is tested in tests/test_backends.py, where the
    extra is installed); this environment has no onnxruntime, so it must be an ImportError naming the extra,
    not a silent fall-back to torch."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        pytest.skip("onnxruntime is installed here")
    with pytest.raises(ImportError, match=r"bgem3\[onnx\]"):
        BGEM3Embeddings(**_kwargs({"model_kwargs": {"backend": "onnx"}}, tmp_path))


# ------------------------------------------------------------------------------------------ flows

@pytest.fixture(scope="module")
def pair():
    return HuggingFaceEmbeddings(model_name=P), BGEM3Embeddings(model_name=P)


def _stores(pair):
    docs = [Document(page_content=t, metadata={"n": i}, id=f"d{i}") for i, t in enumerate(SAMPLE)]
    return [InMemoryVectorStore.from_documents(docs, emb, ids=[d.id for d in docs]) for emb in pair]


def test_in_memory_vector_store_search_and_mmr(pair):
    anchor, ours = _stores(pair)
    for q in QUERIES:
        a = anchor.similarity_search_with_score(q, k=5)
        b = ours.similarity_search_with_score(q, k=5)
        assert [d.id for d, _ in a] == [d.id for d, _ in b]
        assert _diff([s for _, s in a], [s for _, s in b]) <= TOL
        a = anchor.max_marginal_relevance_search(q, k=4, fetch_k=12, lambda_mult=0.5)
        b = ours.max_marginal_relevance_search(q, k=4, fetch_k=12, lambda_mult=0.5)
        assert [d.id for d in a] == [d.id for d in b]


def test_retriever_and_lcel_chain_invoke_batch_ainvoke(pair):
    chains = []
    for store in _stores(pair):
        retriever = store.as_retriever(search_kwargs={"k": 3})
        prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
        context = retriever | RunnableLambda(lambda docs: "\n".join(f"[{d.id}] {d.page_content}" for d in docs))
        chains.append((retriever, {"context": context, "question": RunnablePassthrough()} | prompt))
    (ra, ca), (rb, cb) = chains
    for q in QUERIES:
        assert [d.id for d in ra.invoke(q)] == [d.id for d in rb.invoke(q)]
        assert ca.invoke(q).to_string() == cb.invoke(q).to_string()
    assert [p.to_string() for p in ca.batch(QUERIES)] == [p.to_string() for p in cb.batch(QUERIES)]
    a = asyncio.run(ca.ainvoke(QUERIES[0]))
    b = asyncio.run(cb.ainvoke(QUERIES[0]))
    assert a.to_string() == b.to_string()
