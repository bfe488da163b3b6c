"""A saved segment's ``col_prefix``: the code columns the ColBERT MaxSim estimate reads, kept
contiguous so the estimate over every candidate reads 8 bytes a token (1-bit, 1024-d) and the
full codes are read only for the candidates that get the full MaxSim. Same hits and scores as
reading the full codes; segments without it (written before it existed) still load and search;
a crafted one is refused. Synthetic vectors: this is about storage and plumbing, not quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bgem3 import HybridIndex, IndexFormatError
from test_index_breaks import rewrite_array, seg_file

DIM = 128


def build(n: int = 400, seed: int = 0) -> tuple[HybridIndex, list]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(rng.uniform(0.1, 1)) for t in rng.choice(200, size=5, replace=False)} for _ in range(n)]
    colbert = []
    for i in range(n):
        t = rng.normal(size=(int(rng.integers(3, 12)), DIM)).astype(np.float32) + dense[i]
        colbert.append(t / np.linalg.norm(t, axis=1, keepdims=True))
    idx = HybridIndex(None, model_name="synthetic", dim=DIM, colbert_dim=DIM, vocab_size=200, colbert_codec="1bit")
    idx.add_encoded([f"d{i}" for i in range(n)], [f"t{i}" for i in range(n)], [{} for _ in range(n)],
                    dense, sparse, colbert)
    queries = [(dense[i] + 0.1 * rng.normal(size=DIM).astype(np.float32), sparse[i], colbert[i][:4])
               for i in range(0, n, 37)]
    return idx, queries


def results(idx: HybridIndex, queries: list) -> list:
    out = []
    for dq, sq, cq in queries:  # the pruned path: weighted fusion, more candidates than colbert_rerank
        hits = idx.search_encoded(dq, sq, cq, k=5, weights=(0.4, 0.2, 0.4), candidates=20, colbert_rerank=6)
        out.append([(h.id, h.score) for h in hits])
    return out


def same(a: list, b: list) -> None:
    assert [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b]
    np.testing.assert_allclose([[s for _, s in r] for r in a], [[s for _, s in r] for r in b], atol=1e-6, rtol=0)


@pytest.fixture()
def saved(tmp_path):
    idx, queries = build()
    want = results(idx, queries)   # in memory: no col_prefix, the estimate slices the full codes
    idx.save(tmp_path / "i")
    return tmp_path / "i", queries, want, idx.codec.prefix_cols()


def test_saved_segment_holds_the_estimate_columns_and_gives_the_same_hits(saved):
    root, queries, want, cols = saved
    assert cols == 6   # 48 of 128 coordinates, 8 to a byte
    back = HybridIndex.load(root, load_encoder=False, verify=True)
    [seg] = back._all_segments()
    pre, codes = seg.array("col_prefix"), seg.array("col_codes")
    assert pre.shape == (len(codes), cols) and np.array_equal(pre, codes[:, :cols])
    assert back.memory_usage()["colbert"] >= pre.nbytes + codes.nbytes
    got = results(back, queries)
    same(got, want)
    read = []
    real = type(seg).take_ranges

    def spy(self, name, starts, lens):
        read.append((name, int(np.sum(lens))))
        return real(self, name, starts, lens)

    type(seg).take_ranges = spy
    try:
        results(back, queries[:1])
    finally:
        type(seg).take_ranges = real
    # the full codes are read for the 6 re-ranked candidates only, never for all 20+
    offs = seg.array("col_offsets")
    assert read and all(name == "col_codes" for name, _ in read)
    assert sum(t for _, t in read) <= int(np.sort(np.diff(offs))[-6:].sum())


def test_segments_without_it_load_and_search_the_same(saved):
    root, queries, want, cols = saved
    m = json.loads((root / "manifest.json").read_text())
    del m["segments"][0]["files"]["col_prefix.npy"]   # as a segment written before col_prefix existed
    (root / "manifest.json").write_text(json.dumps(m))
    seg_file(root, "col_prefix.npy").unlink()
    back = HybridIndex.load(root, load_encoder=False, verify=True)
    assert back._all_segments()[0].array("col_prefix") is None
    same(results(back, queries), want)


def test_a_prefix_of_another_width_is_not_used(saved):
    root, queries, want, cols = saved
    codes = np.load(seg_file(root, "col_codes.npy"))
    rewrite_array(root, "col_prefix.npy", np.ascontiguousarray(codes[:, :cols - 2]))  # a genuine, narrower prefix
    back = HybridIndex.load(root, load_encoder=False, verify=True)
    same(results(back, queries), want)


@pytest.mark.parametrize("change", ["differs", "too_wide", "wrong_rows"])
def test_crafted_prefix_is_refused(saved, change):
    root, queries, want, cols = saved
    pre = np.load(seg_file(root, "col_prefix.npy"))
    codes = np.load(seg_file(root, "col_codes.npy"))
    if change == "differs":
        pre[3, 0] ^= 0xFF
    elif change == "too_wide":
        pre = codes.copy()
    else:
        pre = pre[:-1]
    rewrite_array(root, "col_prefix.npy", np.ascontiguousarray(pre))
    if change == "differs":  # every size and checksum agrees: the value check finds it
        HybridIndex.load(root, load_encoder=False, verify=False)
        with pytest.raises(IndexFormatError, match="col_prefix does not match col_codes"):
            HybridIndex.load(root, load_encoder=False, verify=True)
    else:
        with pytest.raises(IndexFormatError, match="col_prefix"):
            HybridIndex.load(root, load_encoder=False, verify=False)
