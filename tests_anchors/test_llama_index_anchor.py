"""docs/llama_index.md's migration table, row by row, against
llama_index.embeddings.huggingface.HuggingFaceEmbedding itself on the real all-MiniLM-L6-v2 weights:
the same vectors (max abs difference <= 1e-6) or a documented refusal naming the argument; then the
same LlamaIndex flows on both (VectorStoreIndex + retriever, IngestionPipeline, a query engine with
a mock LLM)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from bgem3.testing import minilm_path
from llama_index_bgem3 import BGEM3Embedding

from _sample import QUERIES, sample_passages

TOL = 1e-6
P = minilm_path()
SAMPLE = sample_passages()
ROWS = SAMPLE[:12] + SAMPLE[-4:]

SAME = [
    ("defaults", {}),
    ("max_length", {"max_length": 64}),
    ("query_instruction text_instruction", {"query_instruction": "query: ", "text_instruction": "passage: "}),
    ("normalize False", {"normalize": False}),
    ("embed_batch_size", {"embed_batch_size": 4}),
    ("cache_folder device trust_remote_code", {"cache_folder": "CACHE", "device": "cpu", "trust_remote_code": False}),
    ("show_progress_bar", {"show_progress_bar": True}),
    ("callback_manager", {"callback_manager": CallbackManager([])}),
    ("truncate_dim", {"truncate_dim": 128}),
    ("truncate_dim normalize False", {"truncate_dim": 128, "normalize": False}),
    ("revision local_files_only", {"revision": None, "local_files_only": True}),
    ("model_kwargs torch_dtype", {"model_kwargs": {"torch_dtype": torch.float32}}),
    ("backend torch", {"backend": "torch"}),
]

REFUSED = [
    ("parallel_process", {"parallel_process": True}, "parallel_process"),
    ("target_devices", {"target_devices": ["cpu", "cpu"]}, "target_devices"),
    ("pooling", {"pooling": "cls"}, "pooling"),
    ("tokenizer_name", {"tokenizer_name": P}, "tokenizer_name"),
    ("prompts", {"prompts": {"query": "q: "}}, "prompts"),
    ("default_prompt_name", {"default_prompt_name": "query"}, "default_prompt_name"),
]


def _kwargs(kw: dict, tmp_path) -> dict:
    kw = dict(kw)
    if kw.get("cache_folder") == "CACHE":
        kw["cache_folder"] = str(tmp_path)
    return kw


def _diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("row,kw", SAME, ids=[r for r, _ in SAME])
def test_migration_table_row_gives_the_anchors_vectors(row, kw, tmp_path):
    anchor = HuggingFaceEmbedding(model_name=P, **_kwargs(kw, tmp_path))
    ours = BGEM3Embedding(model_name=P, **_kwargs(kw, tmp_path))
    assert ours.max_length == anchor.max_length
    assert _diff(ours.get_text_embedding_batch(ROWS), anchor.get_text_embedding_batch(ROWS)) <= TOL
    assert _diff(ours.get_text_embedding(ROWS[0]), anchor.get_text_embedding(ROWS[0])) <= TOL
    for q in QUERIES[:3]:
        assert _diff(ours.get_query_embedding(q), anchor.get_query_embedding(q)) <= TOL
    assert _diff(asyncio.run(ours.aget_query_embedding(QUERIES[3])), anchor.get_query_embedding(QUERIES[3])) <= TOL
    assert _diff(asyncio.run(ours.aget_text_embedding_batch(ROWS[:3])), anchor.get_text_embedding_batch(ROWS[:3])) <= TOL


@pytest.mark.parametrize("row,kw,named", REFUSED, ids=[r for r, _, _ in REFUSED])
def test_migration_table_refusals_name_the_argument(row, kw, named):
    with pytest.raises((ValueError, TypeError)) as err:
        BGEM3Embedding(model_name=P, **kw)
    assert named in str(err.value)


def test_backend_onnx_is_taken_and_names_its_extra_where_onnxruntime_is_missing(tmp_path):
    """backend='onnx' is supported since issue 26 (exactness is tested in tests/test_backends.py, where the
    extra is installed); this environment has no onnxruntime, so it must be an ImportError naming the extra,
    not a silent fall-back to torch."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        pytest.skip("onnxruntime is installed here")
    with pytest.raises(ImportError, match=r"bgem3\[onnx\]"):
        BGEM3Embedding(model_name=P, backend="onnx")


# ------------------------------------------------------------------------------------------ flows

@pytest.fixture(scope="module")
def pair():
    return HuggingFaceEmbedding(model_name=P), BGEM3Embedding(model_name=P)


def _docs():
    return [Document(text=t, id_=f"d{i}", metadata={"n": i}) for i, t in enumerate(SAMPLE)]


def test_vector_store_index_retriever_and_query_engine(pair):
    indexes = [VectorStoreIndex.from_documents(_docs(), embed_model=emb) for emb in pair]
    for q in QUERIES:
        a, b = (ix.as_retriever(similarity_top_k=5).retrieve(q) for ix in indexes)
        assert [n.node.ref_doc_id for n in a] == [n.node.ref_doc_id for n in b]
        assert _diff([n.score for n in a], [n.score for n in b]) <= TOL
    for q in QUERIES[:2]:
        ra, rb = (ix.as_query_engine(llm=MockLLM(), similarity_top_k=3).query(q) for ix in indexes)
        assert str(ra) == str(rb)
        assert [n.node.ref_doc_id for n in ra.source_nodes] == [n.node.ref_doc_id for n in rb.source_nodes]


def test_ingestion_pipeline(pair):
    outs = []
    for emb in pair:
        pipe = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=96, chunk_overlap=8), emb])
        outs.append(pipe.run(documents=_docs()))
    a, b = outs
    assert len(a) == len(b) > len(SAMPLE)
    assert [n.get_content() for n in a] == [n.get_content() for n in b]
    assert _diff([n.embedding for n in a], [n.embedding for n in b]) <= TOL
