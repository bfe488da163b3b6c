"""The encoder's speed paths give the reference outputs.

The unpadded ("packed") forward and the CLS-only last layer must match the padded Hugging Face
forward (and so FlagEmbedding / sentence-transformers) to float rounding, for XLM-R (BGE-M3,
E5) and BERT (MiniLM) models, whatever the batching.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bgem3 import Encoder  # noqa: E402
from bgem3._unpadded import packed_kind as _packed_kind  # noqa: E402
from bgem3.testing import make_m3_checkpoint, minilm_path  # noqa: E402

TOL = 1e-5

TEXTS = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "a",
    "",
    "LangChain 에 대해서 알려주세요.",
    "repeat repeat repeat the the the quick quick fox",
    " ".join(["Hybrid retrieval fuses dense, sparse and late-interaction scores."] * 20),
    "a literal <pad> token and <unk> and </s> inside the text",
    "北京是中华人民共和国的首都。" * 5,
    "Берлин — столица Германии.",
    "short",
    "short",  # equal lengths in one batch take the no-padding branch
]


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("speedpaths-m3")), seed=3)


@pytest.fixture(scope="module")
def packed_enc(m3_dir) -> Encoder:
    return Encoder(m3_dir, device="cpu")


@pytest.fixture(scope="module")
def padded_enc(m3_dir) -> Encoder:
    enc = Encoder(m3_dir, device="cpu")
    enc._packed = None
    return enc


def _assert_same(a, b, tol=TOL):
    if a.dense is not None or b.dense is not None:
        np.testing.assert_allclose(a.dense, b.dense, atol=tol, rtol=0)
    if a.sparse is not None or b.sparse is not None:
        assert [set(x) for x in a.sparse] == [set(y) for y in b.sparse]
        for x, y in zip(a.sparse, b.sparse):
            for k in x:
                assert abs(x[k] - y[k]) <= tol
    if a.colbert is not None or b.colbert is not None:
        for x, y in zip(a.colbert, b.colbert):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=tol, rtol=0)
    np.testing.assert_array_equal(a.token_counts, b.token_counts)


def test_xlmr_model_takes_the_packed_path(packed_enc):
    assert packed_enc._packed == "roberta"


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_packed_matches_padded_all_outputs(packed_enc, padded_enc, batch_size):
    a = packed_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=batch_size)
    b = padded_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=batch_size)
    _assert_same(a, b)


def test_packed_matches_flagembedding(m3_dir, packed_enc):
    from FlagEmbedding import BGEM3FlagModel

    flag = BGEM3FlagModel(m3_dir, use_fp16=False, devices="cpu")
    ref = flag.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True,
                      max_length=512, batch_size=4)
    _assert_matches_flag(packed_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=5), ref)


def _assert_matches_flag(out, ref):
    """Our three outputs equal BGEM3FlagModel.encode's within TOL (same token sets for the lexical weights)."""
    np.testing.assert_allclose(out.dense, ref["dense_vecs"], atol=TOL, rtol=0)
    for ours, theirs in zip(out.sparse, ref["lexical_weights"]):
        assert {str(k) for k in ours} == set(theirs)
        assert all(abs(v - theirs[str(k)]) <= TOL for k, v in ours.items())
    for ours, theirs in zip(out.colbert, ref["colbert_vecs"]):
        np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_cls_only_last_layer_matches_full_last_layer(packed_enc):
    """Dense-only skips the last layer's non-CLS rows; the vectors must not change."""
    dense_only = packed_enc.encode(TEXTS, dense=True, batch_size=4).dense
    with_heads = packed_enc.encode(TEXTS, dense=True, sparse=True, batch_size=4).dense
    np.testing.assert_allclose(dense_only, with_heads, atol=1e-6, rtol=0)


def test_single_heads_match(packed_enc, padded_enc):
    _assert_same(packed_enc.encode(TEXTS, dense=False, sparse=True), padded_enc.encode(TEXTS, dense=False, sparse=True))
    _assert_same(packed_enc.encode(TEXTS, dense=False, colbert=True), padded_enc.encode(TEXTS, dense=False, colbert=True))


def test_order_is_kept_with_length_sorting(packed_enc):
    """Outputs come back in input order even though batches run longest first."""
    rev = list(reversed(TEXTS))
    a = packed_enc.encode(TEXTS, sparse=True, colbert=True, batch_size=2)
    b = packed_enc.encode(rev, sparse=True, colbert=True, batch_size=2)
    np.testing.assert_allclose(a.dense, b.dense[::-1], atol=TOL, rtol=0)
    assert a.sparse == list(reversed(b.sparse)) or all(
        set(x) == set(y) for x, y in zip(a.sparse, reversed(b.sparse)))


def test_bert_mean_pooling_packed_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    enc = Encoder(path, device="cpu")
    assert enc._packed == "bert" and enc.profile.pooling == "mean"
    st = SentenceTransformer(path, device="cpu")
    ref = st.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    for bs in (1, 4, 64):
        out = enc.encode(TEXTS, batch_size=bs, max_length=st.max_seq_length)
        np.testing.assert_allclose(out.dense, ref, atol=TOL, rtol=0)


def test_unsupported_architectures_fall_back_to_padded():
    cfg = types.SimpleNamespace(model_type="xlm-roberta", is_decoder=False, position_embedding_type="relative_key")
    assert _packed_kind(types.SimpleNamespace(config=cfg)) is None
    cfg = types.SimpleNamespace(model_type="xlm-roberta", is_decoder=True, position_embedding_type="absolute")
    assert _packed_kind(types.SimpleNamespace(config=cfg)) is None
    cfg = types.SimpleNamespace(model_type="t5", is_decoder=False)
    assert _packed_kind(types.SimpleNamespace(config=cfg)) is None
    # the right type but not the standard module layout
    cfg = types.SimpleNamespace(model_type="bert", is_decoder=False, position_embedding_type="absolute")
    assert _packed_kind(types.SimpleNamespace(config=cfg, encoder=torch.nn.Module())) is None


def test_row_chunks_match_padded(packed_enc, padded_enc, monkeypatch):
    """The row-wise half of each layer runs in chunks of ROW_CHUNK rows (FFN intermediate in cache);
    chunk edges anywhere (here every 5 rows, with remainders) must not change any output."""
    import bgem3._unpadded as unpadded

    monkeypatch.setattr(unpadded, "ROW_CHUNK", 5)
    for bs in (3, 64):
        _assert_same(packed_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=bs),
                     padded_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=bs))
        # dense only: the last layer's rows are the CLS rows alone (fewer rows than one chunk, or several)
        _assert_same(packed_enc.encode(TEXTS, dense=True, batch_size=bs), padded_enc.encode(TEXTS, dense=True, batch_size=bs))


def test_non_erf_gelu_is_called_as_the_model_says(tmp_path):
    """Only transformers' exact erf GELU runs in place; any other activation (tanh GELU here) is the
    model's own module, so the packed path still matches the padded Hugging Face forward."""
    from bgem3._unpadded import is_exact_gelu as _is_exact_gelu

    path = make_m3_checkpoint(str(tmp_path / "tanh"), seed=5, hidden_act="gelu_new")
    packed = Encoder(path, device="cpu")
    assert not _is_exact_gelu(packed.model.encoder.layer[0].intermediate.intermediate_act_fn)
    padded = Encoder(path, device="cpu")
    padded._packed = None
    _assert_same(packed.encode(TEXTS, sparse=True, colbert=True, batch_size=4),
                 padded.encode(TEXTS, sparse=True, colbert=True, batch_size=4))


def test_exact_gelu_detected_on_m3(packed_enc):
    from bgem3._unpadded import is_exact_gelu as _is_exact_gelu

    assert _is_exact_gelu(packed_enc.model.encoder.layer[0].intermediate.intermediate_act_fn)


# --------------------------------------------------------------------------- oneDNN fp32 linears (issue 26)

onednn = pytest.mark.skipif(not __import__("bgem3._cpu_linear", fromlist=["x"])._onednn_works(),
                            reason="this PyTorch has no working torch.ops.mkldnn._linear_pointwise")


@onednn
@pytest.mark.parametrize("forced", [True, False])
def test_onednn_linears_match_flagembedding(m3_dir, packed_enc, monkeypatch, forced):
    """The packed path with its fp32 linears (and the fused erf GELU) on oneDNN, and on PyTorch's own
    BLAS call, both equal FlagEmbedding within 1e-5 on every output, whatever the CPU picks by default."""
    import bgem3._cpu_linear as cl
    from FlagEmbedding import BGEM3FlagModel

    monkeypatch.setattr(cl, "ONEDNN", forced)
    assert cl.onednn_active() is forced
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(cl.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a[3]) or real(*a),
                        raising=False)
    flag = BGEM3FlagModel(m3_dir, use_fp16=False, devices="cpu")
    ref = flag.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=512, batch_size=4)
    for bs in (1, 5):
        _assert_matches_flag(packed_enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=bs), ref)
    assert bool(calls) is forced and (not forced or "gelu" in calls)  # the switch is honoured, GELU fused


@onednn
def test_onednn_linears_match_sentence_transformers_on_real_minilm(monkeypatch):
    import bgem3._cpu_linear as cl
    from sentence_transformers import SentenceTransformer

    monkeypatch.setattr(cl, "ONEDNN", True)
    enc = Encoder(minilm_path(), device="cpu")
    st = SentenceTransformer(minilm_path(), device="cpu")
    ref = st.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    for bs in (1, 64):
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=bs, max_length=st.max_seq_length).dense, ref,
                                   atol=TOL, rtol=0)


def test_onednn_left_alone_when_fp32_matmuls_may_round(monkeypatch):
    """torch.set_float32_matmul_precision('medium') lets oneDNN use bf16 inside fp32 matmuls: then bgem3
    does not route anything to it (PyTorch decides, as it would without bgem3)."""
    import bgem3._cpu_linear as cl

    monkeypatch.setattr(cl, "ONEDNN", True)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not cl.onednn_active() and not cl.prepack_active()  # nor packs weights for it
    finally:
        torch.set_float32_matmul_precision(before)
    monkeypatch.setattr(cl, "ONEDNN", False)
    assert not cl.onednn_active()


def test_onednn_skips_what_is_not_a_plain_fp32_linear(monkeypatch):
    """bf16 weights, subclasses (int8 layers), 1-7 rows run the module itself, GELU applied after it."""
    import bgem3._cpu_linear as cl

    calls = []
    monkeypatch.setattr(cl.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a) or 0, raising=False)
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(cl.linear(lin, x, gelu=True, active=True), torch.nn.functional.gelu(lin(x)))

    class Sub(torch.nn.Linear):
        pass

    assert cl.linear(Sub(8, 4), torch.randn(16, 8), active=True).shape == (16, 4)
    assert cl.linear(lin.to(torch.bfloat16), torch.randn(16, 8, dtype=torch.bfloat16), active=True).dtype == torch.bfloat16
    assert calls == []


@onednn
def test_onednn_calls_hooked_modules(monkeypatch):
    """A linear with forward hooks (bgem3.quant's calibration records its inputs so) is called as a module:
    with the oneDNN route on, int8 calibration saw no layer at all (0 int8 layers) before this."""
    import bgem3._cpu_linear as cl

    lin = torch.nn.Linear(8, 4)
    seen = []
    lin.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].shape))
    cl.linear(lin, torch.randn(16, 8), active=True)
    assert seen == [(16, 8)]
    monkeypatch.setattr(cl, "ONEDNN", True)
    q = Encoder(minilm_path(), device="cpu", dtype="int8", backend="torch")  # the torch engine calibrates by hooks
    assert q.quantization["int8_layers"] > 0


# --------------------------------------------------------------------------- pre-packed oneDNN weights (issue 26)

def _packed_encoder(path, monkeypatch, prepack=True):
    import bgem3._cpu_linear as cl

    monkeypatch.setattr(cl, "ONEDNN", True)
    monkeypatch.setattr(cl, "PREPACK", prepack)
    return Encoder(path, device="cpu")


def _bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@onednn
def test_prepacked_encoder_matches_flagembedding_on_packed_weights(m3_dir, monkeypatch):
    """The exact path with its layers' weights pre-packed for oneDNN equals FlagEmbedding within 1e-5 on
    every output, and its products really take the packed weights (at every row count, 1 row included)."""
    from FlagEmbedding import BGEM3FlagModel

    enc = _packed_encoder(m3_dir, monkeypatch)
    assert enc.prepacked_bytes > 0
    seen = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda x, w, *a: seen.append((x.shape[0], w.is_mkldnn)) or real(x, w, *a), raising=False)
    flag = BGEM3FlagModel(m3_dir, use_fp16=False, devices="cpu")
    ref = flag.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=512, batch_size=4)
    for bs in (1, 5):
        _assert_matches_flag(enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=bs), ref)
    assert any(packed for _, packed in seen) and any(rows < 8 and packed for rows, packed in seen)
    np.testing.assert_allclose(enc.encode(TEXTS, dense=True, batch_size=1).dense, ref["dense_vecs"], atol=TOL, rtol=0)


@onednn
def test_prepacked_weights_are_held_once(m3_dir, monkeypatch):
    """Packing replaces each layer weight (no second copy): the model's parameters and buffers plus the
    packed bytes add up to exactly what the unpacked model holds, and no packed layer keeps its dense one."""
    import bgem3._cpu_linear as cl

    plain = _packed_encoder(m3_dir, monkeypatch, prepack=False)
    enc = _packed_encoder(m3_dir, monkeypatch)
    layer_weights = sum(m.weight.numel() * 4 for m in plain.model.encoder.layer.modules()
                        if isinstance(m, torch.nn.Linear))
    assert plain.prepacked_bytes == 0 and enc.prepacked_bytes == layer_weights
    packed = [m for m in enc._model.modules() if type(m) is cl.PackedLinear]
    assert len(packed) == 6 * len(enc._model.encoder.layer)
    assert all(m._parameters["weight"] is None for m in packed)
    assert _bytes(enc._model) + enc.prepacked_bytes == _bytes(plain.model)


@onednn
def test_prepacked_model_gives_back_its_dense_weights(m3_dir, monkeypatch):
    """state_dict() of a packed model equals the checkpoint's (same keys, order, values bit for bit);
    outside readers of Encoder.model get plain nn.Linear layers and the same outputs."""
    import bgem3._cpu_linear as cl

    plain = _packed_encoder(m3_dir, monkeypatch, prepack=False)
    enc = _packed_encoder(m3_dir, monkeypatch)
    want = plain.model.state_dict()
    got = enc._model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    before = enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=3)
    model = enc.model  # an outside reader: layers become plain again, still one copy
    assert enc.prepacked_bytes == 0 and not any(type(m) is cl.PackedLinear for m in model.modules())
    assert _bytes(model) == _bytes(plain.model)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    _assert_same(enc.encode(TEXTS, dense=True, sparse=True, colbert=True, batch_size=3), before, tol=1e-6)


@onednn
def test_packed_linear_behaves_as_its_linear():
    """A PackedLinear computes what its nn.Linear did at 1..600 rows and any rank; a copy or pickle is
    the plain layer; anything that moves, casts or sets the weight acts on the real (unpacked) parameter;
    a trace is refused by name instead of recording a constant."""
    import copy
    import pickle

    import bgem3._cpu_linear as cl

    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 48).requires_grad_(False)
    lin = copy.deepcopy(ref)
    assert cl.pack_linears(lin) == 64 * 48 * 4 and type(lin) is cl.PackedLinear
    assert torch.equal(lin.weight, ref.weight) and "weight" not in dict(lin.named_parameters())
    for rows in (1, 7, 8, 600):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(cl.linear(lin, x, active=True), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(cl.linear(lin, x, gelu=True, active=True),
                                   torch.nn.functional.gelu(ref(x)), atol=1e-5, rtol=0)
    x3 = torch.randn(2, 5, 64)
    torch.testing.assert_close(lin(x3), ref(x3), atol=1e-5, rtol=0)
    for twin in (copy.deepcopy(lin), pickle.loads(pickle.dumps(lin))):
        assert type(twin) is torch.nn.Linear and torch.equal(twin.weight, ref.weight)
    assert type(lin) is cl.PackedLinear
    with pytest.raises(RuntimeError, match="unpack_linears"):
        torch.jit.trace(lin, x3)
    lin.bfloat16()
    assert type(lin) is torch.nn.Linear and lin.weight.dtype == torch.bfloat16
    lin = copy.deepcopy(ref)
    cl.pack_linears(lin)
    lin.weight = torch.nn.Parameter(torch.zeros(48, 64))
    assert type(lin) is torch.nn.Linear and torch.equal(lin(x3), ref.bias.expand(2, 5, 48))
    lin = copy.deepcopy(ref)
    cl.pack_linears(lin)
    lin.load_state_dict(ref.state_dict())
    assert type(lin) is torch.nn.Linear and torch.equal(lin.weight, ref.weight)


@onednn
def test_prepack_policy(m3_dir, monkeypatch):
    """PREPACK=False builds unpacked layers; auto (None) packs whenever the oneDNN route is on."""
    import bgem3._cpu_linear as cl

    assert _packed_encoder(m3_dir, monkeypatch, prepack=False).prepacked_bytes == 0
    monkeypatch.setattr(cl, "PREPACK", None)
    assert cl.prepack_active()
    monkeypatch.setattr(cl, "ONEDNN", False)  # the route off: nothing packed for it
    assert not cl.prepack_active() and Encoder(m3_dir, device="cpu").prepacked_bytes == 0


@onednn
def test_export_and_quantise_after_a_packed_forward(monkeypatch, tmp_path):
    """A packed encoder that already ran can still be exported (ONNX graph equal to it) and quantised to
    int8 through Encoder.model / bgem3.quant (they see plain layers with the checkpoint's weights)."""
    ort = pytest.importorskip("onnxruntime")
    from bgem3.quant import quantize_encoder

    enc = _packed_encoder(minilm_path(), monkeypatch)
    assert enc.prepacked_bytes > 0
    ours = enc.encode(TEXTS[:4], dense=True, batch_size=1).dense

    from bgem3.backends.export import _wrapped  # the model -> last hidden state wrapper bgem3 exports

    ids = torch.tensor([enc.tokenizer(TEXTS[0])["input_ids"]])
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(_wrapped(enc.model), (ids, torch.ones_like(ids)), path, dynamo=False,
                      input_names=["ids", "mask"], dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert enc.profile.pooling == "mean"  # MiniLM: mean pooling, then normalised
    mean = sess.run(None, {"ids": ids.numpy(), "mask": np.ones_like(ids.numpy())})[0][0].mean(0)
    np.testing.assert_allclose(mean / np.linalg.norm(mean), ours[0], atol=TOL, rtol=0)
    enc2 = _packed_encoder(minilm_path(), monkeypatch)
    enc2.encode(TEXTS[:2])
    assert quantize_encoder(enc2)["int8_layers"] > 0 and enc2.prepacked_bytes == 0


def _resident_bytes_of_mapping(addr: int) -> tuple:
    """(file, resident bytes) of this process's mapping that holds address ``addr`` (/proc/self/smaps)."""
    found, inside = (None, 0), False
    with open("/proc/self/smaps", encoding="utf-8") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= addr < hi
                if inside:
                    found = (head[5] if len(head) >= 6 else None, 0)
            elif inside and line.startswith("Rss:"):
                found = (found[0], int(head[1]) * 1024)
    return found


@onednn
@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc only")
def test_prepacking_leaves_no_resident_copy_of_the_mapped_checkpoint(monkeypatch):
    """The loader maps model.safetensors and every weight is a view into it: packing reads each layer
    weight, and the pages it touched stayed resident beside the packed copy (RSS grew by the layer
    weights: 2.7 GB instead of 1.6 GB for BGE-M3). They are given back once the dense weight is dropped."""
    enc = _packed_encoder(minilm_path(), monkeypatch)
    file, resident = _resident_bytes_of_mapping(enc._model.embeddings.word_embeddings.weight.data_ptr())
    if not file or not file.endswith(".safetensors"):
        pytest.skip("this transformers version does not memory-map the checkpoint")
    assert enc.prepacked_bytes > 40e6 and resident < enc.prepacked_bytes / 4
    assert enc.encode(["still reads the same"], dense=True).dense.shape == (1, enc.dimension)


@onednn
def test_query_key_value_packed_as_one_product():
    """pack_fused holds an attention block's query/key/value weights as ONE packed [3H, H] weight (one
    product per layer, one copy): each layer still reads back its own weight, alone or in one product
    its columns equal its own product, and unpacking one gives all three back their dense weights."""
    import copy

    import bgem3._cpu_linear as cl

    torch.manual_seed(1)
    ref = [torch.nn.Linear(32, 32).requires_grad_(False) for _ in range(3)]
    q, k, v = (copy.deepcopy(m) for m in ref)
    assert cl.pack_fused(q, k, v) == 3 * 32 * 32 * 4
    assert all(type(m) is cl.PackedLinear and m._parameters["weight"] is None for m in (q, k, v))
    assert all(torch.equal(m.weight, r.weight) for m, r in zip((q, k, v), ref))
    for rows in (1, 9, 300):
        x = torch.randn(rows, 32)
        outs = cl.fused_product(q, x, True)
        for got, r, m in zip(outs, ref, (q, k, v)):
            torch.testing.assert_close(got, r(x), atol=1e-5, rtol=0)
            torch.testing.assert_close(m(x), r(x), atol=1e-5, rtol=0)
    assert cl.fused_product(q, torch.randn(4, 32), False) is None  # oneDNN route off: the layers one by one
    k.unpack()
    assert all(type(m) is torch.nn.Linear and torch.equal(m.weight, r.weight) for m, r in zip((q, k, v), ref))
    assert cl.pack_fused(q, torch.nn.Linear(16, 32)) == 0 and type(q) is torch.nn.Linear  # different inputs: left alone


# --------------------------------------------------------------------------- one text per call (issue 26, session 9)

@onednn
def test_single_text_path_equals_batched_and_reference(m3_dir, padded_enc, monkeypatch):
    """A single text per call takes the lean one-text layers (_unpadded.layer_one, really used: counted)
    and gives, for every output, what the same text gives inside a batch and on the padded reference path."""
    import bgem3._unpadded as unpadded

    enc = _packed_encoder(m3_dir, monkeypatch)
    calls = []
    real = unpadded.layer_one
    monkeypatch.setattr(unpadded, "layer_one", lambda *a: calls.append(1) or real(*a))
    kw = dict(dense=True, sparse=True, colbert=True)
    batched = enc.encode(TEXTS, batch_size=len(TEXTS), **kw)
    assert not calls  # a batch of several texts takes the general layers
    ref = padded_enc.encode(TEXTS, **kw)
    n_layers = len(enc._model.encoder.layer)
    for i, text in enumerate(TEXTS):
        calls.clear()
        one = enc.encode([text], **kw)
        assert len(calls) == n_layers
        for other in (batched, ref):
            _assert_same(one, types.SimpleNamespace(
                dense=other.dense[i:i + 1], sparse=other.sparse[i:i + 1], colbert=other.colbert[i:i + 1],
                token_counts=other.token_counts[i:i + 1]))
        assert list(one.sparse[0]) == sorted(one.sparse[0])  # keys in token id order, as the batched dicts
        assert [list(d) for d in batched.sparse[i:i + 1]] == [list(one.sparse[0])]
    dense_only = enc.encode([TEXTS[0]], dense=True)  # CLS-only last layer: that one takes the general path
    np.testing.assert_allclose(dense_only.dense, ref.dense[:1], atol=TOL, rtol=0)


@onednn
def test_single_text_path_follows_changed_weights_and_hooks(m3_dir, monkeypatch):
    """The cached pieces of the one-text path are never stale: a query bias or a head weight changed in
    place shows in the output (compared with the padded reference of the same changed encoder), and a
    forward hook on a packed layer's module is called (that layer then runs the general path)."""
    enc = _packed_encoder(m3_dir, monkeypatch)
    kw = dict(dense=True, sparse=True, colbert=True)
    text = TEXTS[0]
    before = enc.encode([text], **kw)
    with torch.no_grad():
        enc._model.encoder.layer[0].attention.self.query.bias.add_(0.5)
        enc.colbert_linear.weight.mul_(-1.0)
        enc.sparse_linear.bias.add_(0.25)
    after = enc.encode([text], **kw)
    assert not np.allclose(after.dense, before.dense, atol=1e-3)
    assert not np.allclose(after.colbert[0], before.colbert[0], atol=1e-3)
    assert any(abs(after.sparse[0][k] - before.sparse[0].get(k, 0.0)) > 1e-3 for k in after.sparse[0])
    padded = Encoder.__new__(Encoder)
    padded.__dict__.update(enc.__dict__)
    padded._packed = None
    _assert_same(after, padded.encode([text], **kw))
    seen = []
    handle = enc._model.encoder.layer[1].output.dense.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        hooked = enc.encode([text], **kw)
    finally:
        handle.remove()
    assert seen  # the hooked layer was called as a module
    _assert_same(hooked, after)


@onednn
def test_heads_as_one_packed_product_equal_the_heads():
    """PackedCopy runs the ColBERT and sparse heads as one product: each output equals its own layer's,
    the layers keep their dense weights, and a changed weight or a new bias is picked up at the next call."""
    import bgem3._cpu_linear as cl

    torch.manual_seed(2)
    colbert, sparse = torch.nn.Linear(32, 32).requires_grad_(False), torch.nn.Linear(32, 1).requires_grad_(False)
    heads = cl.PackedCopy()
    for rows in (1, 7, 300):
        x = torch.randn(rows, 32)
        c, s = heads.product((colbert, sparse), x, True)
        torch.testing.assert_close(c, colbert(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(s, sparse(x), atol=1e-5, rtol=0)
    assert type(colbert) is torch.nn.Linear and colbert.weight.shape == (32, 32)
    x = torch.randn(5, 32)
    with torch.no_grad():
        colbert.weight.mul_(2.0)
    torch.testing.assert_close(heads.product((colbert, sparse), x, True)[0], colbert(x), atol=1e-5, rtol=0)
    sparse.bias = torch.nn.Parameter(torch.tensor([3.0]), requires_grad=False)
    torch.testing.assert_close(heads.product((colbert, sparse), x, True)[1], sparse(x), atol=1e-5, rtol=0)
    assert heads.product((colbert, sparse), x, False) is None  # oneDNN route off
    assert heads.product((colbert, sparse), x.double(), True) is None


# --------------------------------------------------------------------------- attention per text (bgem3._attention)

def test_attention_layout_per_device():
    """On CPU texts of different lengths attend one by one (no padding, no mask); elsewhere they are padded
    with a key mask; one text or texts of one length are one block either way."""
    from bgem3._attention import packed_layout

    lens = np.array([4, 2, 3])
    cpu = packed_layout(lens, torch.device("cpu"))
    assert cpu.spans == [(0, 4), (4, 2), (6, 3)] and cpu.slot is None and cpu.mask is None
    meta = packed_layout(lens, torch.device("meta"))  # any non-CPU device: the padded layout
    assert meta.spans is None and meta.slot.shape == (9,) and meta.mask.shape == (3, 1, 1, 4)
    for one in (np.array([5]), np.array([3, 3])):
        block = packed_layout(one, torch.device("cpu"))
        assert block.spans is None and block.slot is None and block.mask is None


@pytest.mark.parametrize("cls_only", [False, True])
def test_attention_per_text_equals_padded_and_per_text_reference(cls_only):
    from bgem3._attention import AttentionLayout, attend, packed_layout

    torch.manual_seed(0)
    lens = np.array([7, 3, 5, 1])
    heads, hd = 3, 4
    q, k, v = (torch.randn(int(lens.sum()), heads * hd) for _ in range(3))
    starts = np.cumsum(lens) - lens
    qs = q[torch.from_numpy(starts)] if cls_only else q
    per_text = attend(packed_layout(lens, torch.device("cpu")), qs, k, v, heads=heads, scale=0.3, cls_only=cls_only)
    # the padded layout, computed on CPU (what a GPU runs)
    seg = torch.repeat_interleave(torch.arange(4), torch.from_numpy(lens))
    local = torch.arange(int(lens.sum())) - torch.from_numpy(starts)[seg]
    width = int(lens.max())
    mask = (torch.arange(width)[None] < torch.from_numpy(lens)[:, None])[:, None, None, :]
    padded = attend(AttentionLayout(4, width, slot=seg * width + local, mask=mask), qs, k, v, heads=heads, scale=0.3,
                    cls_only=cls_only)
    torch.testing.assert_close(per_text, padded, atol=1e-6, rtol=0)
    # each text alone, written out
    for i, (o, n) in enumerate(zip(starts, lens)):
        qi = (q[o:o + 1] if cls_only else q[o:o + n]).view(-1, heads, hd).transpose(0, 1)
        ki, vi = (t[o:o + n].view(n, heads, hd).transpose(0, 1) for t in (k, v))
        ref = (torch.softmax(qi @ ki.transpose(1, 2) * 0.3, -1) @ vi).transpose(0, 1).reshape(-1, heads * hd)
        got = per_text[i:i + 1] if cls_only else per_text[o:o + n]
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_cpu_batches_of_mixed_lengths_attend_without_mask_or_padding(packed_enc, padded_enc, monkeypatch):
    """The encoder's CPU path runs attention per text: no mask reaches the kernel, no padded rows; outputs
    still equal the padded path's (and FlagEmbedding's, test_packed_matches_flagembedding)."""
    import bgem3._attention as attention

    seen = []
    real = attention._sdpa

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((attn_mask, q.shape, k.shape))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attention, "_sdpa", spy)
    texts = [t for t in TEXTS if t] + ["ab cd"]
    out = packed_enc.encode(texts, dense=True, sparse=True, colbert=True, batch_size=64)
    lens = sorted(int(n) for n in out.token_counts)
    assert seen and all(m is None for m, _, _ in seen)
    assert sorted({k[2] for _, _, k in seen}) == sorted(set(lens))  # each call: one text's own length
    monkeypatch.setattr(attention, "_sdpa", real)
    _assert_same(out, padded_enc.encode(texts, dense=True, sparse=True, colbert=True, batch_size=64))
