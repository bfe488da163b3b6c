"""compute_score over many (query, passage) pairs equals BGEM3FlagModel.compute_score (fp32, 1e-5)."""

from __future__ import annotations

import pytest

from bgem3.scoring import COMPUTE_SCORE_WEIGHTS, SCORE_MODES, colbert_score, compute_score

TOL = 1e-5


@pytest.fixture(scope="module")
def pairs():
    from conftest import MIXED_TEXTS

    queries = ["what is BGE M3", "LangChain 에 대해서 알려주세요.", "", "fox"]
    return [(q, d) for q in queries for d in MIXED_TEXTS]


@pytest.mark.parametrize("weights,batch_size", [(None, 256), ([0.4, 0.2, 0.4], 7), ([1.0, 0.3, 0.0], 1)])
def test_matches_flagembedding_compute_score(m3_encoder, flag_model, pairs, weights, batch_size):
    ref = flag_model.compute_score(pairs, batch_size=batch_size, max_query_length=64, max_passage_length=128,
                                   weights_for_different_modes=weights)
    ours = compute_score(m3_encoder, pairs, weights=weights, batch_size=batch_size, max_query_length=64,
                         max_passage_length=128)
    assert set(ours) == set(SCORE_MODES) == set(ref)
    for mode in SCORE_MODES:
        assert len(ours[mode]) == len(pairs)
        worst = max(abs(a - float(b)) for a, b in zip(ours[mode], ref[mode]))
        assert worst <= TOL, (mode, worst)


def test_one_pair_gives_floats_and_defaults_are_flagembeddings(m3_encoder, flag_model):
    assert COMPUTE_SCORE_WEIGHTS == (1.0, 1.0, 1.0)
    pair = ("what is BGE M3", "BGE M3 is an embedding model")
    ours = compute_score(m3_encoder, pair)
    ref = flag_model.compute_score(pair)
    assert all(isinstance(v, float) for v in ours.values())
    for mode in SCORE_MODES:
        assert abs(ours[mode] - float(ref[mode])) <= TOL
    # batch_size=1: no padding, plain MaxSim
    q = m3_encoder.encode([pair[0]], colbert=True, max_length=512).colbert[0]
    d = m3_encoder.encode([pair[1]], colbert=True).colbert[0]
    assert abs(compute_score(m3_encoder, [pair], batch_size=1)["colbert"][0] - colbert_score(q, d)) <= TOL


def test_bad_pairs_are_named(m3_encoder, m3_no_heads_path):
    with pytest.raises(TypeError, match=r"sentence_pairs\[1\]"):
        compute_score(m3_encoder, [("q", "d"), "qd"])
    with pytest.raises(TypeError, match="list of \\(query, passage\\) pairs"):
        compute_score(m3_encoder, "query")
    with pytest.raises(ValueError, match="sparse\\+dense"):
        compute_score(m3_encoder, [("q", "d")], weights=(0, 0, 1))
    assert compute_score(m3_encoder, []) == {k: [] for k in SCORE_MODES}
    from bgem3 import Encoder

    dense_only = compute_score(Encoder(m3_no_heads_path, device="cpu", profile="m3"), [("q", "d")])
    assert list(dense_only) == ["dense"]


def test_reference_zero_padding_floor_is_reproduced():
    """FlagEmbedding pads a batch's shorter passages with zero ColBERT vectors: a query token whose
    best real match is negative scores 0 there. batch_size=1 (no padding) gives plain MaxSim."""
    import numpy as np

    from bgem3.encoder import EncodeOutput

    vecs = {"q": np.array([[1.0, 0.0]], np.float32), "short": np.array([[-1.0, 0.0]], np.float32),
            "long": np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)}

    class Fake:
        has_heads = True
        model_max_length = 512

        def encode(self, texts, **kw):
            return EncodeOutput(dense=np.ones((len(texts), 2), np.float32) / np.sqrt(2),
                                sparse=[{} for _ in texts], colbert=[vecs[t] for t in texts],
                                token_counts=np.array([len(vecs[t]) + 1 for t in texts]))

    pairs = [("q", "short"), ("q", "long")]
    assert compute_score(Fake(), pairs, batch_size=2)["colbert"] == [0.0, 0.0]
    assert compute_score(Fake(), pairs, batch_size=1)["colbert"] == [-1.0, 0.0]
