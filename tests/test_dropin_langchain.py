"""Issue 13, LangChain side: every option a langchain-huggingface user writes is honoured or refused
with its name and the alternative; lone strings; model_name= everywhere; pickle; index(); filters."""

from __future__ import annotations

import copy
import pickle
import tempfile

import numpy as np
import pytest
import torch
from langchain_core.documents import Document
from langchain_core.indexing import InMemoryRecordManager, index

from bgem3 import Encoder, HybridIndex
from bgem3._adapters.instructions import FRAMEWORK_BGE_QUERY_INSTRUCTION
from bgem3._loading import shared_encoder
from bgem3.testing import make_m3_checkpoint
from langchain_bgem3 import BGEM3Embeddings, BGEM3HybridRetriever, BGEM3Reranker, BGEM3SparseEmbeddings, E5Embeddings

from _adapter_fixtures import RecordingSpy, _tmpdir, minilm_path, run_python, tiny_m3_path

TEXTS = ["the cat sat on the mat", "dogs bark loudly at night", "bread is baked in a hot oven",
         "cats chase mice around the house"]


@pytest.fixture(scope="module", autouse=True)
def _held():
    yield [shared_encoder(tiny_m3_path(), device="cpu"), shared_encoder(minilm_path(), device="cpu")]


@pytest.fixture(scope="module")
def other_m3_path() -> str:
    """A second BGE-M3-shaped checkpoint (other random weights): tells which model encoded what."""
    return make_m3_checkpoint(_tmpdir("bgem3-dropin-other-"), seed=7)


@pytest.fixture(scope="module")
def m3() -> BGEM3Embeddings:
    return BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu"})


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- model_name= means the model

@pytest.mark.parametrize("builder", ["from_texts", "from_documents"])
def test_model_name_keyword_is_the_model_that_encodes(builder, other_m3_path, tmp_path):
    kw = dict(model_name=other_m3_path, device="cpu")
    if builder == "from_texts":
        r = BGEM3HybridRetriever.from_texts(TEXTS, **kw)
    else:
        r = BGEM3HybridRetriever.from_documents([Document(page_content=t) for t in TEXTS], **kw)
    assert r.store.encoder.path == Encoder(other_m3_path, device="cpu").path
    assert r.store.model_name == other_m3_path
    want = Encoder(other_m3_path, device="cpu").encode_queries(["cat"]).dense[0]
    got = r.store.encoder.encode_queries(["cat"]).dense[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    r.store.save(tmp_path / "idx")
    loaded = HybridIndex.load(tmp_path / "idx", device="cpu")  # the saved label loads the same model
    np.testing.assert_allclose(loaded.encoder.encode_queries(["cat"]).dense[0], want, atol=1e-6)


def test_encoder_keyword_and_the_model_given_twice(other_m3_path):
    enc = shared_encoder(tiny_m3_path(), device="cpu")
    r = BGEM3HybridRetriever.from_texts(TEXTS, encoder=enc)
    assert r.store.encoder is enc
    with pytest.raises(ValueError, match="given twice"):
        BGEM3HybridRetriever.from_texts(TEXTS, tiny_m3_path(), model_name=other_m3_path)
    with pytest.raises(TypeError, match="encoder= must be a bgem3.Encoder"):
        BGEM3HybridRetriever.from_texts(TEXTS, encoder=tiny_m3_path())


def test_from_texts_names_an_unknown_keyword_and_the_alternative():
    with pytest.raises(TypeError, match=r"'top_k' \(use k="):
        BGEM3HybridRetriever.from_texts(TEXTS, tiny_m3_path(), top_k=3)
    with pytest.raises(TypeError, match=r"'devcie' \(did you mean 'device'"):
        BGEM3HybridRetriever.from_texts(TEXTS, tiny_m3_path(), devcie="cpu")


# --------------------------------------------------------------------------- retriever options

@pytest.fixture(scope="module")
def retriever() -> BGEM3HybridRetriever:
    metas = [{"topic": t, "n": i} for i, t in enumerate(["pets", "pets", "food", "pets"])]
    return BGEM3HybridRetriever.from_texts(TEXTS, encoder=shared_encoder(tiny_m3_path(), device="cpu"),
                                           metadatas=metas, ids=[f"d{i}" for i in range(4)], k=4)


def test_retriever_top_k_is_refused_and_search_kwargs_honoured(retriever):
    with pytest.raises(ValueError, match=r"'top_k' \(use k="):
        BGEM3HybridRetriever(store=retriever.store, top_k=1)
    r = BGEM3HybridRetriever(store=retriever.store, search_kwargs={"k": 1, "filter": {"topic": "food"}})
    assert r.k == 1
    assert [d.id for d in r.invoke("cat")] == ["d2"]
    with pytest.raises(ValueError, match=r"'fetch_k' \(use candidates="):
        BGEM3HybridRetriever(store=retriever.store, search_kwargs={"fetch_k": 10})
    with pytest.raises(ValueError, match="disagree"):
        BGEM3HybridRetriever(store=retriever.store, k=2, search_kwargs={"k": 1})


def test_filter_callable_and_bad_filter_messages(retriever):
    docs = retriever.invoke("cat", filter=lambda m: m["n"] % 2 == 1)
    assert sorted(d.id for d in docs) == ["d1", "d3"]
    assert sorted(d.id for d in BGEM3HybridRetriever(store=retriever.store, filter=lambda m: m["n"] == 0).invoke("x")) == ["d0"]
    with pytest.raises(TypeError, match="filter must be a dict"):
        retriever.invoke("cat", filter="i")
    with pytest.raises(ValueError, match="filter must be a dict"):
        BGEM3HybridRetriever(store=retriever.store, filter="i")


def test_lone_strings_are_refused_not_split(retriever):
    n = len(retriever.store)
    with pytest.raises(TypeError, match=r"wrap it: \['ab'\]"):
        retriever.delete("ab")
    with pytest.raises(TypeError, match=r"wrap it: \['hello'\]"):
        retriever.add_texts("hello")
    with pytest.raises(TypeError, match="wrap it"):
        retriever.add_texts(["hello"], ids="x")
    with pytest.raises(TypeError, match="wrap it"):
        BGEM3HybridRetriever.from_texts("hello", encoder=retriever.store.encoder)
    assert len(retriever.store) == n
    emb = BGEM3Embeddings(encoder=retriever.store.encoder)
    with pytest.raises(TypeError, match="wrap it"):
        emb.embed_documents("hello")
    with pytest.raises(TypeError, match="one string"):
        emb.embed_query(["hello"])


def test_record_manager_index_keeps_the_retriever_in_sync():
    r = BGEM3HybridRetriever.from_texts([], encoder=shared_encoder(tiny_m3_path(), device="cpu"))
    rm = InMemoryRecordManager(namespace="bgem3-test")
    rm.create_schema()
    docs = [Document(page_content=t, metadata={"source": f"s{i % 2}"}) for i, t in enumerate(TEXTS)]
    out = index(docs, rm, r, cleanup="full", source_id_key="source", key_encoder="sha256")
    assert out["num_added"] == 4 and len(r.store) == 4
    assert index(docs, rm, r, cleanup="full", source_id_key="source", key_encoder="sha256")["num_skipped"] == 4
    out = index(docs[:2], rm, r, cleanup="full", source_id_key="source", key_encoder="sha256")
    assert out["num_deleted"] == 2 and len(r.store) == 2
    got = r.get(list(r.store.ids) + ["missing"])
    assert sorted(d.page_content for d in got) == sorted(TEXTS[:2])
    assert r.delete(list(r.store.ids))["num_deleted"] == 2 and len(r.store) == 0


# --------------------------------------------------------------------------- HuggingFaceEmbeddings options

def test_model_alias_and_batch_size_reads_the_value_in_use():
    emb = BGEM3Embeddings(model=tiny_m3_path(), model_kwargs={"device": "cpu"})
    assert emb.model_name == tiny_m3_path() and emb.batch_size == 32
    both = BGEM3Embeddings(model=tiny_m3_path(), batch_size=32, encode_kwargs={"batch_size": 16},
                           model_kwargs={"device": "cpu"})
    assert both.batch_size == 16  # encode_kwargs wins (as in HuggingFaceEmbeddings)
    with pytest.raises(ValueError, match="alias"):
        BGEM3Embeddings(model=tiny_m3_path(), model_name="other")


def test_normalize_embeddings_false_gives_the_raw_pooled_vector(m3):
    raw = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"normalize_embeddings": False})
    v = np.asarray(raw.embed_documents(["the cat sat"])[0])
    u = np.asarray(m3.embed_documents(["the cat sat"])[0])
    assert abs(np.linalg.norm(v) - 1) > 1e-3
    np.testing.assert_allclose(_unit(v), u, atol=1e-5)
    # the CLS hidden state itself
    tok = m3.encoder.tokenizer(["the cat sat"], return_tensors="pt")
    with torch.no_grad():
        cls = m3.encoder.model(**tok).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(v, cls, atol=1e-4)
    assert m3.encoder.profile.normalize  # the shared encoder is untouched


def test_query_encode_kwargs_replace_encode_kwargs_for_queries(m3):
    both = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"normalize_embeddings": False},
                           query_encode_kwargs={"normalize_embeddings": True})
    assert np.linalg.norm(both.embed_query("cat")) == pytest.approx(1, abs=1e-5)
    assert abs(np.linalg.norm(both.embed_documents(["cat"])[0]) - 1) > 1e-3
    docs_only = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"normalize_embeddings": False})
    assert abs(np.linalg.norm(docs_only.embed_query("cat")) - 1) > 1e-3  # falls back to encode_kwargs


def test_truncate_dim_in_model_kwargs_and_encode_kwargs(m3):
    full = np.asarray(m3.embed_documents(["the cat sat"])[0])
    emb = BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu", "truncate_dim": 8})
    assert emb.encoder is m3.encoder  # truncation is applied on the output: same loaded model
    v = np.asarray(emb.embed_documents(["the cat sat"])[0])
    assert v.shape == (8,)
    # as HuggingFaceEmbeddings: the truncated vector as is; normalize_embeddings=True re-normalises it
    np.testing.assert_allclose(v, full[:8], atol=1e-5)
    u = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"truncate_dim": 8, "normalize_embeddings": True})
    np.testing.assert_allclose(u.embed_documents(["the cat sat"])[0], _unit(full[:8]), atol=1e-5)
    q = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"truncate_dim": 4}).embed_query("cat")
    assert len(q) == 4
    with pytest.raises(ValueError, match="larger than"):
        BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"truncate_dim": 4096})


def test_prompts_prompt_name_and_default_prompt_name(m3, monkeypatch):
    spy = RecordingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)
    BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"prompt": "doc: "}).embed_documents(["a"])
    assert spy.calls[-1][2] == ["doc: a"]
    e = BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={
        "device": "cpu", "prompts": {"query": "q: ", "passage": "p: "}, "default_prompt_name": "passage"},
        query_encode_kwargs={"prompt_name": "query"})
    monkeypatch.setattr(e.encoder, "encode", spy)
    e.embed_documents(["a"])
    assert spy.calls[-1][2] == ["p: a"]
    e.embed_query("b")
    assert spy.calls[-1][2] == ["q: b"]
    with pytest.raises(ValueError, match=r"prompt_name'\]='nope'"):
        BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"prompt_name": "nope"})
    with pytest.raises(ValueError, match="default_prompt_name"):
        BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"default_prompt_name": "x"})


def test_dtype_spellings_token_and_backend(m3, monkeypatch):
    for mk in ({"torch_dtype": torch.float32}, {"torch_dtype": "float32"}, {"model_kwargs": {"torch_dtype": "auto"}},
               {"model_kwargs": {"dtype": torch.float32}}):
        e = BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu", **mk})
        assert e.encoder.dtype == torch.float32
    with pytest.raises(ValueError, match="conflicting dtypes"):
        BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"torch_dtype": "float16", "dtype": "fp32"})
    with pytest.raises(ValueError, match=r"backend='ipex' is not one of"):
        BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"backend": "ipex"})
    BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu", "backend": "torch"})
    # token= downloads with the token, then loads that copy
    import huggingface_hub

    seen = {}

    def fake_download(repo_id, token=None, **kw):
        seen.update(repo_id=repo_id, token=token)
        return tiny_m3_path()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    import bgem3.encoder as encoder_mod

    monkeypatch.setattr(encoder_mod, "resolve_model_path", lambda *a, **k: tiny_m3_path())
    e = BGEM3Embeddings(model_name="org/private-m3", model_kwargs={"device": "cpu", "token": "hf_secret"})
    assert seen == {"repo_id": "org/private-m3", "token": "hf_secret"}
    assert "hf_secret" not in repr(e) and "hf_secret" not in e.model_dump_json()


def test_other_encode_options(m3):
    base = m3.embed_documents(["cat"])
    for ek in ({"convert_to_numpy": True}, {"convert_to_tensor": True}, {"precision": "float32"},
               {"show_progress_bar": False}):
        assert BGEM3Embeddings(encoder=m3.encoder, encode_kwargs=ek).embed_documents(["cat"])[0] == pytest.approx(base[0])
    with pytest.raises(ValueError, match="multi_process"):
        BGEM3Embeddings(encoder=m3.encoder, multi_process=True)
    with pytest.raises(ValueError, match=r"'promt' \(did you mean 'prompt'"):
        BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"promt": "x"})
    with pytest.raises(ValueError, match="applies to dense vectors"):
        BGEM3SparseEmbeddings(encoder=m3.encoder, encode_kwargs={"truncate_dim": 4})


def test_bge_query_instruction_matches_langchain_huggingface_bge(m3, monkeypatch):
    bge = BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu", "profile": "bge"})
    spy = RecordingSpy(bge.encoder.encode)
    monkeypatch.setattr(bge.encoder, "encode", spy)
    bge.embed_query("what is a cat")
    assert FRAMEWORK_BGE_QUERY_INSTRUCTION == "Represent this question for searching relevant passages: "
    assert spy.calls[-1][2] == [FRAMEWORK_BGE_QUERY_INSTRUCTION + "what is a cat"]
    bge.embed_documents(["a cat"])
    assert spy.calls[-1][2] == ["a cat"]


@pytest.mark.parametrize("cls", [BGEM3Embeddings, E5Embeddings])
def test_facades_add_no_template_of_their_own(cls, monkeypatch):
    """BGEM3Embeddings formats exactly as the encoder's profile says (E5 folders get E5's
    prefixes when the encoder detects them); E5Embeddings adds E5's on top of a non-E5 profile."""
    emb = cls(model_name=minilm_path(), model_kwargs={"device": "cpu"})
    spy = RecordingSpy(emb.encoder.encode)
    monkeypatch.setattr(emb.encoder, "encode", spy)
    emb.embed_query("query: how tall is everest")
    emb.embed_documents(["Everest is tall"])
    if cls is BGEM3Embeddings:
        prof = emb.encoder.profile
        assert spy.calls[-2][2] == [prof.format_query("query: how tall is everest")]
        assert spy.calls[-1][2] == [prof.format_passage("Everest is tall")]
    else:
        assert spy.calls[-1][2] == ["passage: Everest is tall"]


# --------------------------------------------------------------------------- rerankers

def test_reranker_model_alias_and_top_k_refused(m3):
    rr = BGEM3Reranker(model=tiny_m3_path(), model_kwargs={"device": "cpu"}, top_n=2)
    assert rr.model_name == tiny_m3_path()
    assert BGEM3Reranker(model=m3.encoder).encoder is m3.encoder
    with pytest.raises(ValueError, match=r"'top_k' \(use top_n="):
        BGEM3Reranker(encoder=m3.encoder, top_k=2)
    with pytest.raises(ValueError, match="cross-encoder"):
        BGEM3Reranker(model=object())
    with pytest.raises(ValueError, match=r"did you mean 'weights'"):
        BGEM3Reranker(encoder=m3.encoder, weigths=(1, 0, 0))


# --------------------------------------------------------------------------- pickle / deepcopy

def test_every_class_pickles_and_deep_copies(m3, retriever):
    docs = [Document(page_content=t) for t in TEXTS]
    objs = [m3, E5Embeddings(model_name=minilm_path(), model_kwargs={"device": "cpu"}),
            BGEM3SparseEmbeddings(encoder=m3.encoder), retriever, BGEM3Reranker(encoder=m3.encoder, top_n=2)]
    for obj in objs:
        for clone in (pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj)):
            assert type(clone) is type(obj)
            enc = clone.store.encoder if isinstance(obj, BGEM3HybridRetriever) else clone.encoder
            orig = obj.store.encoder if isinstance(obj, BGEM3HybridRetriever) else obj.encoder
            assert enc is orig  # in-process: the model is shared, not loaded again
            if isinstance(obj, BGEM3HybridRetriever):
                assert [d.id for d in clone.invoke("cat")] == [d.id for d in obj.invoke("cat")]
                assert clone.store is not obj.store  # the data is copied
            elif isinstance(obj, BGEM3Reranker):
                assert [d.page_content for d in clone.compress_documents(docs, "cat")] == \
                    [d.page_content for d in obj.compress_documents(docs, "cat")]
            elif isinstance(obj, BGEM3SparseEmbeddings):
                assert clone.embed_query("cat") == obj.embed_query("cat")
            else:
                assert clone.embed_query("cat") == obj.embed_query("cat")


def test_a_pickle_loads_the_model_again_in_another_process(m3):
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump(m3, f)
        path = f.name
    want = m3.embed_query("cat")
    out = run_python(f"import pickle, json; e = pickle.load(open({path!r}, 'rb')); print(json.dumps(e.embed_query('cat')))")
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    assert json.loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(want, abs=1e-6)


def test_over_qdrant_a_callable_filter_and_pickling_are_refused_clearly():
    from qdrant_client import QdrantClient

    from bgem3.stores.qdrant import QdrantHybridStore

    store = QdrantHybridStore(shared_encoder(tiny_m3_path(), device="cpu"), client=QdrantClient(":memory:"),
                              collection_name="lc-dropin")
    r = BGEM3HybridRetriever(store=store)
    r.add_texts(TEXTS, metadatas=[{"n": i} for i in range(len(TEXTS))])
    assert [d.metadata["n"] for d in r.invoke("cat", filter={"n": 1})] == [1]
    with pytest.raises(TypeError, match="callable filter cannot run inside Qdrant"):
        r.invoke("cat", filter=lambda m: True)
    with pytest.raises(TypeError, match="live Qdrant client"):
        pickle.dumps(r)
    with pytest.raises(TypeError, match="live Qdrant client"):
        copy.deepcopy(r)


def test_an_e5_folder_gets_e5_prefixes_once_from_the_encoder_profile(tmp_path, monkeypatch):
    """BGEM3Embeddings(model_name=<an E5 fine-tune in a folder>) adds E5's prefixes because the encoder
    tells E5 from the folder (its model card); the facade adds nothing of its own, and never doubles them."""
    import os
    import shutil

    path = str(tmp_path / "my-e5")
    shutil.copytree(minilm_path(), path, ignore=shutil.ignore_patterns("README.md"))
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("---\nbase_model: intfloat/multilingual-e5-small\n---\n")
    emb = BGEM3Embeddings(model_name=path, model_kwargs={"device": "cpu"})
    spy = RecordingSpy(emb.encoder.encode)
    monkeypatch.setattr(emb.encoder, "encode", spy)
    emb.embed_query("how are you")
    emb.embed_query("query: how are you")
    emb.embed_documents(["fine thanks"])
    assert [c[2] for c in spy.calls] == [["query: how are you"], ["query: how are you"], ["passage: fine thanks"]]
