"""Issue 13, LlamaIndex side: HuggingFaceEmbedding's arguments honoured or refused by name, lone
strings, model_name= everywhere, every filter operator on both stores, HyDE strings, fusion dedup,
pickle, and parity with the anchor class on real MiniLM weights."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from llama_index.core import QueryBundle, VectorStoreIndex
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from llama_index.core.vector_stores.utils import build_metadata_filter_fn

from bgem3 import Encoder
from bgem3._adapters.retrieval import encode_query_group
from bgem3._adapters.instructions import FRAMEWORK_BGE_QUERY_INSTRUCTION
from bgem3._loading import shared_encoder
from bgem3.testing import make_m3_checkpoint
from llama_index_bgem3 import BGEM3Embedding, BGEM3HybridRetriever, BGEM3Reranker, BGEM3SparseEmbedding, E5Embedding

from _adapter_fixtures import CORPUS, QUERIES, RecordingSpy, _tmpdir, minilm_path, tiny_m3_path

TEXTS = ["the cat sat on the mat", "dogs bark loudly at night", "bread is baked in a hot oven",
         "cats chase mice around the house", "an introduction to linear algebra", "night trains across europe"]
METAS = [
    {"topic": "pets", "n": 0, "tags": ["cat", "home"], "title": "Cat on a Mat"},
    {"topic": "pets", "n": 1, "tags": ["dog"], "title": "Barking dogs"},
    {"topic": "food", "n": 2, "tags": ["bread", "oven", "home"], "title": "Baking"},
    {"topic": "pets", "n": 3, "tags": [], "title": "Cats and mice"},
    {"topic": "science", "n": 4.5, "title": "Linear algebra"},
    {"topic": "travel", "n": None, "tags": ["train"], "title": ""},
]
IDS = [f"n{i}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module", autouse=True)
def _held():
    yield [shared_encoder(tiny_m3_path(), device="cpu"), shared_encoder(minilm_path(), device="cpu")]


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return shared_encoder(tiny_m3_path(), device="cpu")


@pytest.fixture(scope="module")
def nodes() -> list[TextNode]:
    return [TextNode(id_=i, text=t, metadata=m) for i, t, m in zip(IDS, TEXTS, METAS)]


@pytest.fixture(scope="module")
def embedded(enc, nodes) -> BGEM3HybridRetriever:
    return BGEM3HybridRetriever.from_nodes(nodes, encoder=enc, similarity_top_k=len(TEXTS))


@pytest.fixture(scope="module")
def qdrant_retriever(enc, nodes) -> BGEM3HybridRetriever:
    from qdrant_client import QdrantClient

    from bgem3.stores.qdrant import QdrantHybridStore

    store = QdrantHybridStore(enc, client=QdrantClient(":memory:"), collection_name="dropin")
    r = BGEM3HybridRetriever(store, similarity_top_k=len(TEXTS))
    r.add_nodes(nodes)
    return r


# --------------------------------------------------------------------------- HuggingFaceEmbedding arguments

def test_model_alias_typos_and_refused_arguments(enc):
    assert BGEM3Embedding(model=tiny_m3_path(), device="cpu").model_name == tiny_m3_path()
    assert BGEM3Embedding(model=enc).encoder is enc
    with pytest.raises(TypeError, match=r"'model_nme' \(did you mean 'model_name'"):
        BGEM3Embedding(model_nme=tiny_m3_path(), device="cpu")
    with pytest.raises(ValueError, match=r"backend='ipex' is not one of"):
        BGEM3Embedding(tiny_m3_path(), device="cpu", backend="ipex")
    for kw, why in (({"pooling": "mean"}, "profile"), ({"tokenizer_name": "x"}, "tokenizer"),
                    ({"parallel_process": True}, "one process"), ({"prompts": {"query": "q"}}, "query_instruction")):
        with pytest.raises(ValueError, match=why):
            BGEM3Embedding(tiny_m3_path(), device="cpu", **kw)
    BGEM3Embedding(tiny_m3_path(), device="cpu", parallel_process=False, pooling="deprecated")  # anchor defaults


def test_trust_remote_code_cache_folder_and_dtype_reach_the_encoder(tmp_path):
    e = BGEM3Embedding(tiny_m3_path(), device="cpu", trust_remote_code=True, cache_folder=str(tmp_path),
                       model_kwargs={"torch_dtype": "float32"})
    opts = e._encoder_options()
    assert opts["trust_remote_code"] is True and opts["cache_dir"] == str(tmp_path) and e.dtype == "fp32"
    assert e.encoder._bgem3_load_options["trust_remote_code"] is True


def test_normalize_truncate_dim_batch_size_max_length_progress(enc, monkeypatch):
    base = BGEM3Embedding(encoder=enc)
    assert base.max_length == enc.max_length  # the model's, as HuggingFaceEmbedding
    assert base.embed_batch_size == 32
    raw = np.asarray(BGEM3Embedding(encoder=enc, normalize=False).get_text_embedding("the cat sat"))
    unit = np.asarray(base.get_text_embedding("the cat sat"))
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    t = np.asarray(BGEM3Embedding(encoder=enc, truncate_dim=8).get_query_embedding("cat"))
    full = np.asarray(base.get_query_embedding("cat"))
    np.testing.assert_allclose(t, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)
    spy = RecordingSpy(enc.encode)
    monkeypatch.setattr(enc, "encode", spy)
    BGEM3Embedding(encoder=enc, embed_batch_size=2).get_text_embedding_batch(TEXTS[:5])
    assert [c[0] for c in spy.calls] == [2, 2, 1] and {c[1] for c in spy.calls} == {2}
    calls = []
    monkeypatch.setattr(enc, "encode", lambda texts, **kw: calls.append(kw) or spy(texts, **kw))
    BGEM3Embedding(encoder=enc, show_progress_bar=True, max_length=16).get_text_embedding("x")
    assert calls[-1]["show_progress"] is True and calls[-1]["max_length"] == 16
    with pytest.raises(ValueError, match="applies to dense vectors"):
        BGEM3SparseEmbedding(encoder=enc, truncate_dim=4)


def test_lone_string_batch_is_refused(enc):
    emb = BGEM3Embedding(encoder=enc)
    with pytest.raises(TypeError, match=r"wrap it: \['hello world'\]"):
        emb.get_text_embedding_batch("hello world")
    with pytest.raises(TypeError, match="wrap it"):
        BGEM3SparseEmbedding(encoder=enc).get_text_embedding_batch("hello world")
    assert len(emb.get_text_embedding_batch(["hello world"])) == 1


def test_parity_with_huggingface_embedding_on_real_minilm():
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    anchor = HuggingFaceEmbedding(model_name=minilm_path(), device="cpu")
    ours = BGEM3Embedding(model_name=minilm_path(), device="cpu")
    texts = CORPUS + [q for q, _ in QUERIES]
    a = np.asarray(anchor.get_text_embedding_batch(texts))
    b = np.asarray(ours.get_text_embedding_batch(texts))
    assert np.min(np.sum(a * b, axis=1)) > 0.9999
    for q, _ in QUERIES:
        assert np.dot(anchor.get_query_embedding(q), ours.get_query_embedding(q)) > 0.9999
    assert ours.max_length == ours.encoder.max_length == anchor.max_length  # 256, from sentence_bert_config.json


def test_bge_query_instruction_is_llama_index_s(monkeypatch):
    from llama_index.embeddings.huggingface.utils import get_query_instruct_for_model_name

    assert get_query_instruct_for_model_name("BAAI/bge-small-en-v1.5") == FRAMEWORK_BGE_QUERY_INSTRUCTION
    bge = BGEM3Embedding(tiny_m3_path(), device="cpu", model_kwargs={"profile": "bge"})
    spy = RecordingSpy(bge.encoder.encode)
    monkeypatch.setattr(bge.encoder, "encode", spy)
    bge.get_query_embedding("what is a cat")
    assert spy.calls[-1][2] == [FRAMEWORK_BGE_QUERY_INSTRUCTION + "what is a cat"]
    bge.get_text_embedding("a cat")
    assert spy.calls[-1][2] == ["a cat"]


def test_e5_facade_and_encoder_profile(monkeypatch):
    emb = BGEM3Embedding(model_name=minilm_path(), device="cpu")
    spy = RecordingSpy(emb.encoder.encode)
    monkeypatch.setattr(emb.encoder, "encode", spy)
    emb.get_query_embedding("query: how tall is everest")
    assert spy.calls[-1][2] == [emb.encoder.profile.format_query("query: how tall is everest")]
    e5 = E5Embedding(model_name=minilm_path(), device="cpu")
    e5.get_text_embedding("Everest is tall")
    assert spy.calls[-1][2] == ["passage: Everest is tall"]


# --------------------------------------------------------------------------- retriever

@pytest.mark.parametrize("builder", ["from_nodes", "from_documents"])
def test_model_name_keyword_is_the_model_that_encodes(builder, nodes):
    other = make_m3_checkpoint(_tmpdir("bgem3-dropin-li-"), seed=11)
    if builder == "from_nodes":
        r = BGEM3HybridRetriever.from_nodes(nodes, model_name=other, device="cpu")
    else:
        from llama_index.core import Document

        r = BGEM3HybridRetriever.from_documents([Document(text=t) for t in TEXTS], model_name=other, device="cpu",
                                                transformations=[])
    assert r.store.model_name == other
    np.testing.assert_allclose(r.store.encoder.encode_queries(["cat"]).dense,
                               Encoder(other, device="cpu").encode_queries(["cat"]).dense, atol=1e-6)
    with pytest.raises(TypeError, match=r"'top_k' \(use similarity_top_k="):
        BGEM3HybridRetriever.from_nodes(nodes, other, top_k=2)
    with pytest.raises(TypeError, match=r"'top_k' \(use similarity_top_k="):
        BGEM3HybridRetriever(r.store, top_k=2)


def test_delete_refuses_a_lone_string(embedded):
    n = len(embedded.store)
    with pytest.raises(TypeError, match="wrap it"):
        embedded.delete("n1")
    assert len(embedded.store) == n


def test_custom_embedding_strs_are_honoured(embedded, enc):
    strs = ["a cat sits on a mat at home", "cats"]
    out = embedded.retrieve(QueryBundle(query_str="trains", custom_embedding_strs=strs))
    dense, sparse, colbert = encode_query_group(enc, strs)
    want = embedded.store.search_encoded(dense, sparse, colbert, len(TEXTS), embedded.weights)
    assert [n.node.node_id for n in out] == [h.id for h in want]
    assert [n.score for n in out] == pytest.approx([h.score for h in want])
    plain = embedded.retrieve("trains")
    assert [n.node.node_id for n in out] != [n.node.node_id for n in plain]
    # the dense score is the mean of the per-string dense scores (LlamaIndex's mean_agg)
    q = enc.encode_queries(strs).dense
    d = enc.encode_documents([TEXTS[0]]).dense[0]
    top = {h.id: h for h in want}["n0"]
    assert top.dense_score == pytest.approx(float(np.mean(q @ d)), abs=1e-5)
    one = embedded.retrieve(QueryBundle(query_str="x", custom_embedding_strs=["trains"]))
    assert [n.node.node_id for n in one] == [n.node.node_id for n in plain]


@pytest.mark.parametrize("mode", list(FUSION_MODES))
def test_query_fusion_deduplicates_our_nodes(embedded, enc, nodes, mode):
    vector = VectorStoreIndex(nodes, embed_model=BGEM3Embedding(encoder=enc)).as_retriever(similarity_top_k=4)
    ours = BGEM3HybridRetriever(embedded.store, similarity_top_k=4)
    from llama_index.core.llms.mock import MockLLM

    fused = QueryFusionRetriever([ours, vector], similarity_top_k=8, num_queries=1, mode=mode, use_async=False,
                                 llm=MockLLM())
    out = fused.retrieve("cat on a mat")
    ids = [n.node.node_id for n in out]
    assert len(ids) == len(set(ids)), ids
    hit = ours.retrieve("cat")[0]
    plain = next(n for n in nodes if n.node_id == hit.node.node_id)
    assert hit.node.hash == plain.hash and "dense_score" in hit.node.metadata


# --------------------------------------------------------------------------- filters, both stores

def _f(key, op, value=None):
    return MetadataFilter(key=key, operator=op, value=value)


FILTERS = [
    MetadataFilters(filters=[_f("n", FilterOperator.GT, 1)]),
    MetadataFilters(filters=[_f("n", FilterOperator.GTE, 2)]),
    MetadataFilters(filters=[_f("n", FilterOperator.LT, 2)]),
    MetadataFilters(filters=[_f("n", FilterOperator.LTE, 3)]),
    MetadataFilters(filters=[_f("topic", FilterOperator.NE, "pets")]),
    MetadataFilters(filters=[_f("topic", FilterOperator.NIN, ["pets", "food"])]),
    MetadataFilters(filters=[_f("topic", FilterOperator.IN, ["food", "travel"])]),
    MetadataFilters(filters=[_f("tags", FilterOperator.CONTAINS, "home")]),
    MetadataFilters(filters=[_f("tags", FilterOperator.ANY, ["dog", "train"])]),
    MetadataFilters(filters=[_f("tags", FilterOperator.ALL, ["bread", "home"])]),
    MetadataFilters(filters=[_f("title", FilterOperator.TEXT_MATCH, "Cat")]),
    MetadataFilters(filters=[_f("tags", FilterOperator.IS_EMPTY)]),
    MetadataFilters(filters=[_f("topic", FilterOperator.EQ, "pets"), _f("n", FilterOperator.GT, 0)],
                    condition=FilterCondition.OR),
    MetadataFilters(filters=[_f("topic", FilterOperator.EQ, "pets"), _f("n", FilterOperator.EQ, 3)],
                    condition=FilterCondition.NOT),
    MetadataFilters(filters=[_f("topic", FilterOperator.EQ, "pets"), _f("n", FilterOperator.GTE, 1)]),
    MetadataFilters(filters=[_f("title", FilterOperator.TEXT_MATCH_INSENSITIVE, "cat")]),
    MetadataFilters(filters=[_f("title", FilterOperator.GT, "C")]),
]


def _expected(filters) -> list[str]:
    fn = build_metadata_filter_fn(lambda i: METAS[IDS.index(i)], filters)  # LlamaIndex's own semantics
    return sorted(i for i in IDS if fn(i))


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: f"{f.condition.value}:" + ",".join(
    f"{x.key}{x.operator.value}" for x in f.filters))
@pytest.mark.parametrize("store", ["embedded", "qdrant"])
def test_every_operator_selects_what_llama_index_selects(filters, store, embedded, qdrant_retriever):
    base = embedded if store == "embedded" else qdrant_retriever
    r = BGEM3HybridRetriever(base.store, similarity_top_k=len(TEXTS), filters=filters)
    assert sorted(n.node.node_id for n in r.retrieve("cat at home")) == _expected(filters)


def test_qdrant_scan_sees_documents_added_later(qdrant_retriever, enc):
    f = MetadataFilters(filters=[_f("title", FilterOperator.TEXT_MATCH, "Zebra")])
    r = BGEM3HybridRetriever(qdrant_retriever.store, filters=f)
    assert r.retrieve("zebra") == []
    r.add_nodes([TextNode(id_="z", text="a zebra", metadata={"title": "Zebra crossing"})])
    try:
        assert [n.node.node_id for n in r.retrieve("zebra")] == ["z"]
    finally:
        r.delete(["z"])


def test_nested_filters(embedded, qdrant_retriever):
    f = MetadataFilters(filters=[
        MetadataFilters(filters=[_f("topic", FilterOperator.EQ, "food"), _f("n", FilterOperator.LT, 1)],
                        condition=FilterCondition.OR),
        _f("tags", FilterOperator.CONTAINS, "home")])
    for base in (embedded, qdrant_retriever):
        r = BGEM3HybridRetriever(base.store, similarity_top_k=len(TEXTS), filters=f)
        assert sorted(n.node.node_id for n in r.retrieve("cat")) == ["n0", "n2"]


# --------------------------------------------------------------------------- reranker, pickle

def test_reranker_model_alias_and_top_k(enc):
    assert BGEM3Reranker(model=tiny_m3_path(), model_kwargs={"device": "cpu"}).model_name == tiny_m3_path()
    assert BGEM3Reranker(model=enc).encoder is enc
    with pytest.raises(TypeError, match=r"'top_k' \(use top_n="):
        BGEM3Reranker(encoder=enc, top_k=2)
    with pytest.raises(TypeError, match=r"did you mean 'top_n'"):
        BGEM3Reranker(encoder=enc, top_m=2)


def test_every_class_pickles_and_deep_copies(enc, embedded):
    objs = [BGEM3Embedding(encoder=enc), E5Embedding(model_name=minilm_path(), device="cpu"),
            BGEM3SparseEmbedding(encoder=enc), BGEM3Reranker(encoder=enc, top_n=2), embedded]
    nws = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    for obj in objs:
        for clone in (pickle.loads(pickle.dumps(obj)), copy.deepcopy(obj)):
            assert type(clone) is type(obj)
            if isinstance(obj, BGEM3HybridRetriever):
                assert clone.store.encoder is obj.store.encoder and clone.store is not obj.store
                assert [n.node.node_id for n in clone.retrieve("cat")] == [n.node.node_id for n in obj.retrieve("cat")]
            elif isinstance(obj, BGEM3Reranker):
                assert clone.encoder is obj.encoder
                assert [n.node.text for n in clone.postprocess_nodes(nws, query_str="cat")] == \
                    [n.node.text for n in obj.postprocess_nodes(nws, query_str="cat")]
            else:
                assert clone.encoder is obj.encoder
                assert clone.get_query_embedding("cat") == obj.get_query_embedding("cat")
    hits = embedded.retrieve("cat")
    again = pickle.loads(pickle.dumps(hits))
    assert [h.node.hash for h in again] == [h.node.hash for h in hits]


def test_returned_nodes_round_trip_through_to_dict(embedded):
    hit = embedded.retrieve("cat")[0]
    back = TextNode.from_dict(hit.node.to_dict())
    assert back.text == hit.node.text and back.metadata == hit.node.metadata
    assert type(hit.node).class_name() == "TextNode" and isinstance(hit.node, TextNode)


def test_an_e5_folder_gets_e5_prefixes_once_from_the_encoder_profile(tmp_path, monkeypatch):
    import os
    import shutil

    path = str(tmp_path / "my-e5")
    shutil.copytree(minilm_path(), path, ignore=shutil.ignore_patterns("README.md"))
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("---\nbase_model: intfloat/multilingual-e5-small\n---\n")
    emb = BGEM3Embedding(model_name=path, device="cpu")
    spy = RecordingSpy(emb.encoder.encode)
    monkeypatch.setattr(emb.encoder, "encode", spy)
    emb.get_query_embedding("how are you")
    emb.get_query_embedding("query: how are you")
    emb.get_text_embedding("fine thanks")
    assert [c[2] for c in spy.calls] == [["query: how are you"], ["query: how are you"], ["passage: fine thanks"]]
