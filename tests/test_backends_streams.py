"""Bulk on the graph backends (issue 26): OpenVINO runs several batches at once on a throughput-mode copy of
the graph (one stream of one thread per thread) and hands them back in input order while the encoder
applies the heads; single batches stay on the latency model. The graph backends' token budget per batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _compare import assert_sparse_close
from bgem3 import Encoder

pytest.importorskip("openvino")

TOL = 1e-5
# distinct lengths and words: a batch handed back out of order cannot match
TEXTS = [" ".join(f"w{(i * 7 + j) % 53}" for j in range(3 + (i * 11) % 60)) for i in range(41)]


pytestmark = pytest.mark.usefixtures("graph_export_cache")  # exports go to a temporary cache


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ov_encoder(m3_path, two_threads):
    return Encoder(m3_path, backend="openvino")


def _batches(enc, n=6, rows=3):
    ids = enc.tokenize(TEXTS[: n * rows])
    return [tuple(t.numpy() for t in enc._pad(ids[i * rows:(i + 1) * rows])) for i in range(n)]


def test_the_stream_runs_on_throughput_streams_and_gives_each_batch_back_in_order(ov_encoder):
    g = ov_encoder.graph
    batches = _batches(ov_encoder)
    assert g._bulk is None  # compiled on the first bulk call only
    streamed = list(g.hidden_states_stream(iter(batches)))
    assert g._bulk is not g.compiled and str(g._bulk.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert int(g._bulk.get_property("NUM_STREAMS")) == 2 and g.bulk_streams() == 2
    assert str(g.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"  # single batches: as before
    assert len(streamed) == len(batches)
    for (ids, mask), got in zip(batches, streamed):
        want = g.hidden_states(ids, mask)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_stream_reads_at_most_streams_plus_one_batches_ahead_and_can_be_left(ov_encoder):
    g = ov_encoder.graph
    batches = _batches(ov_encoder, n=8)
    read = []

    def source():
        for b in batches:
            read.append(1)
            yield b

    stream = g.hidden_states_stream(source())
    first = next(stream)
    assert len(read) <= g.bulk_streams() + 1  # never the whole input (memory stays flat on a long bulk)
    np.testing.assert_allclose(first, g.hidden_states(*batches[0]), atol=1e-5, rtol=0)
    stream.close()  # the caller stops (an error in its heads): the requests in flight finish, nothing hangs
    assert g.hidden_states(*batches[1]).shape[0] == batches[1][0].shape[0]


def test_bulk_encode_through_the_stream_equals_the_exact_path_in_input_order(m3_path, ov_encoder, monkeypatch):
    calls = []
    real = type(ov_encoder.graph).hidden_states_stream
    monkeypatch.setattr(type(ov_encoder.graph), "hidden_states_stream",
                        lambda self, b: (calls.append(1), real(self, b))[1])
    got = ov_encoder.encode(TEXTS, sparse=True, colbert=True, batch_size=4, show_progress=False)
    assert calls == [1]  # several batches: the stream ran them
    assert torch.get_num_threads() == 2  # the heads' one thread is given back
    ref = Encoder(m3_path).encode(TEXTS, sparse=True, colbert=True, show_progress=False)
    np.testing.assert_allclose(got.dense, ref.dense, atol=TOL, rtol=0)
    for a, b in zip(got.sparse, ref.sparse):
        assert_sparse_close(a, b, TOL)
    for a, b in zip(got.colbert, ref.colbert):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    calls.clear()
    one = ov_encoder.encode(TEXTS[:2], show_progress=False)  # one batch: the latency model, no stream
    assert calls == [] and np.allclose(one.dense, ref.dense[:2], atol=TOL)


def test_overlapping_streams_in_two_threads_give_torch_its_thread_count_back(two_threads):
    import threading

    from bgem3.encoder import _one_torch_thread

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with _one_torch_thread():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with _one_torch_thread():
            b_in.set()
            a_out.wait(5)
            seen["b, after a left"] = torch.get_num_threads()  # b's heads still want one thread

    ts = [threading.Thread(target=f) for f in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert seen == {"b, after a left": 1}
    assert torch.get_num_threads() == 2  # the count from before the first block, not b's view of it


def test_an_ov_config_that_sets_the_streams_replaces_both_models(m3_path, two_threads):
    enc = Encoder(m3_path, backend="openvino", model_kwargs={"ov_config": {"PERFORMANCE_HINT": "LATENCY"}})
    g = enc.graph
    assert g._bulk is g.compiled and g.bulk_streams() == 1  # no second compilation, batches one at a time
    out = enc.encode(TEXTS, batch_size=4, show_progress=False)
    assert g._bulk is g.compiled and out.dense.shape == (len(TEXTS), enc.dimension)
    tput = Encoder(m3_path, backend="openvino", model_kwargs={"ov_config": {"PERFORMANCE_HINT": "THROUGHPUT",
                                                                            "NUM_STREAMS": "2"}})
    assert tput.graph._bulk is tput.graph.compiled and tput.graph.bulk_streams() == 2


def test_one_thread_runs_bulk_on_the_latency_model(m3_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc = Encoder(m3_path, backend="openvino")
        assert enc.graph._bulk is enc.graph.compiled and enc.graph.bulk_streams() == 1
    finally:
        torch.set_num_threads(before)


def test_a_wide_model_runs_bulk_on_the_single_request_without_a_second_copy(m3_path, two_threads, monkeypatch):
    import bgem3.backends.openvino as ovb

    monkeypatch.setattr(ovb, "STREAMS_MAX_HIDDEN", 8)  # the tiny model's hidden size (32) counts as wide
    enc = Encoder(m3_path, backend="openvino")
    assert enc.graph._bulk is enc.graph.compiled and enc.graph.bulk_streams() == 1
    out = enc.encode(TEXTS, batch_size=4, show_progress=False)
    assert enc.graph._bulk is enc.graph.compiled
    np.testing.assert_allclose(out.dense, Encoder(m3_path).encode(TEXTS, show_progress=False).dense, atol=TOL, rtol=0)
    # a user's ov_config still decides: throughput streams on the wide model when asked for
    tput = Encoder(m3_path, backend="openvino", model_kwargs={"ov_config": {"PERFORMANCE_HINT": "THROUGHPUT",
                                                                            "NUM_STREAMS": "2"}})
    assert tput.graph.bulk_streams() == 2


def test_the_token_budget_per_batch_defaults_by_backend_and_a_given_one_holds(m3_path):
    assert Encoder(m3_path).max_tokens_per_batch == 4096  # torch on the CPU (16384 on a GPU)
    assert Encoder(m3_path, max_tokens_per_batch=16384).max_tokens_per_batch == 16384
    enc = Encoder(m3_path, backend="openvino")
    assert enc.max_tokens_per_batch == enc.graph.preferred_tokens_per_batch == 4096
    assert Encoder(m3_path, backend="onnx", max_tokens_per_batch=9000).max_tokens_per_batch == 9000
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        Encoder(m3_path, backend="openvino", max_tokens_per_batch=0)
    # a pickled graph encoder keeps "the backend's default", not the number it resolved to
    assert "max_tokens_per_batch" not in {k for k, v in enc._load_spec()[1].items() if v is not None}


def test_openvino_batches_are_padded_to_a_width_multiple_and_give_the_exact_outputs(m3_path, ov_encoder, monkeypatch):
    """OpenVINO prepares kernels per input shape: the encoder rounds each batch's width up to 8 tokens
    (fewer shapes), and the extra masked columns change no output."""
    assert ov_encoder.graph.width_multiple == 8
    widths = []
    real = type(ov_encoder.graph).hidden_states
    monkeypatch.setattr(type(ov_encoder.graph), "hidden_states",
                        lambda self, ids, mask: (widths.append(ids.shape[1]), real(self, ids, mask))[1])
    ref = Encoder(m3_path).encode(TEXTS, sparse=True, colbert=True, show_progress=False)
    lengths = [len(x) for x in ov_encoder.tokenize(TEXTS)]
    for i, text in enumerate(TEXTS[:12]):  # one text per call: the single-query path
        got = ov_encoder.encode([text], sparse=True, colbert=True, show_progress=False)
        assert widths[-1] % 8 == 0 and lengths[i] <= widths[-1] < lengths[i] + 8
        np.testing.assert_allclose(got.dense[0], ref.dense[i], atol=TOL, rtol=0)
        assert_sparse_close(got.sparse[0], ref.sparse[i], TOL)
        assert got.colbert[0].shape == ref.colbert[i].shape
        np.testing.assert_allclose(got.colbert[0], ref.colbert[i], atol=TOL, rtol=0)
    assert any(w not in lengths for w in widths)  # some widths were really rounded up
    ov_encoder.graph.width_multiple = 1  # as before: the longest row exactly
    ov_encoder.encode([TEXTS[5]], show_progress=False)
    assert widths[-1] == lengths[5]


def test_onnx_runtime_batches_keep_the_longest_row_width(m3_path, monkeypatch):
    enc = Encoder(m3_path, backend="onnx")
    assert enc.graph.width_multiple == 1
    widths = []
    real = type(enc.graph).hidden_states
    monkeypatch.setattr(type(enc.graph), "hidden_states",
                        lambda self, ids, mask: (widths.append(ids.shape[1]), real(self, ids, mask))[1])
    enc.encode([TEXTS[3]], show_progress=False)
    assert widths == [len(enc.tokenize([TEXTS[3]])[0])]
