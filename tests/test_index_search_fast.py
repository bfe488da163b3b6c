"""The fast search path at scale: one-pass Hamming selection, rows read with pread, chunked
MaxSim, the cheap prefix estimate that picks which candidates get the full MaxSim, BLAS threads."""

from __future__ import annotations

import numpy as np
import pytest

import bgem3.index.search as search_mod
from bgem3 import Encoder, HybridIndex
from bgem3.index import COLBERT_CODECS
from bgem3.index.codecs import ColbertCodec
from bgem3.index.search import smallest
from bgem3.testing import SAMPLE_CORPUS, STORAGE_SENTENCES

TEXTS = list(SAMPLE_CORPUS) + STORAGE_SENTENCES


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def minilm_corpus(minilm):
    """~300 real-text passages: MiniLM dense vectors, token vectors (last hidden states), tf lexical."""
    import torch

    from bgem3.testing import minilm_batches

    texts = [f"{a} {b}" for a in TEXTS for b in TEXTS[:12]]
    dense, cols, sparse = [], [], []
    for enc, h, d in minilm_batches(texts, batch=64, max_length=96, path=minilm):
        dense.append(d)
        hn = torch.nn.functional.normalize(h, dim=-1).numpy()
        for i in range(h.shape[0]):
            n = int(enc["attention_mask"][i].sum())
            cols.append(np.ascontiguousarray(hn[i, 1:n], dtype=np.float32))
            ids = enc["input_ids"][i, 1:n - 1].tolist()
            sparse.append({int(t): 0.1 + 0.05 * ids.count(t) for t in set(ids)})
    return texts, np.concatenate(dense), sparse, cols


@pytest.mark.parametrize("codec", ["int8", "2bit", "1bit"])
def test_prefix_estimate_picks_the_same_top10_as_full_maxsim_on_real_minilm_vectors(minilm_corpus, codec, tmp_path):
    texts, dense, sparse, cols = minilm_corpus
    idx = HybridIndex(None, dim=dense.shape[1], colbert_dim=cols[0].shape[1], vocab_size=30522, colbert_codec=codec,
                      exact_dense_rows=1)
    ids = [f"p{i}" for i in range(len(texts))]
    idx.add_encoded(ids, texts, None, dense, sparse, cols)
    idx.save(tmp_path / "i")
    idx = HybridIndex.load(tmp_path / "i", load_encoder=False)
    agree, pruned_runs = [], 0
    for qi in range(0, len(texts), 23):
        q = (dense[qi], sparse[qi], cols[qi][: max(4, len(cols[qi]) // 2)])
        full = idx.search_encoded(*q, k=10, candidates=100, colbert_rerank=0)
        fast = idx.search_encoded(*q, k=10, candidates=100, colbert_rerank=32)
        pruned_runs += 1
        agree.append(len({h.id for h in full} & {h.id for h in fast}) / 10)
        # the kept candidates carry their full MaxSim: the same scores as the unpruned search
        full_c = {h.id: h.colbert_score for h in full}
        for h in fast:
            if h.id in full_c:
                assert h.colbert_score == pytest.approx(full_c[h.id], abs=1e-5)
    assert pruned_runs >= 10
    print(codec, np.mean(agree), min(agree))
    assert np.mean(agree) >= 0.98


@pytest.mark.parametrize("codec", COLBERT_CODECS)
def test_chunked_maxsim_equals_the_plain_similarity_matrix(codec):
    rng = np.random.default_rng(0)
    x = unit(rng, 700, 64)
    c = ColbertCodec(codec, 64)
    c.fit(x)
    codes, aux = c.encode(x)
    lens = np.array([0, 5, 300, 1, 0, 200, 194])
    q = unit(rng, 7, 64)
    p = c.prepare_query(q)
    sims = c.similarities(p, codes, aux)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    want = np.array([sims[:, a:a + n].max(axis=1).mean() if n else 0.0 for a, n in zip(starts, lens)])
    for step in (1, 64, 4096):  # a step below a document's length still takes the whole document
        np.testing.assert_allclose(c.maxsim(p, codes, aux, lens, step=step), want, rtol=1e-5, atol=1e-5)


def test_prefix_estimate_tracks_the_full_maxsim():
    assert [ColbertCodec("1bit", d).prefix_dims() for d in (64, 128, 384, 1024, 4096)] == [32, 48, 48, 64, 256]
    assert ColbertCodec("float16", 1024).prefix_dims() == 1024  # exact codecs: no estimate
    rng = np.random.default_rng(1)
    x = unit(rng, 4000, 256)
    for name in ("int8", "2bit", "1bit"):
        c = ColbertCodec(name, 256)
        c.fit(x)
        assert c.prefix_dims() == 48  # max(48, 256 / 16)
        codes, aux = c.encode(x)
        lens = np.full(100, 40)
        q = x[:16] + 0.1 * unit(rng, 16, 256)
        p = c.prepare_query(q)
        full = c.maxsim(p, codes, aux, lens)
        est = c.maxsim(p, codes, aux, lens, prefix=True)
        assert np.corrcoef(full, est)[0, 1] > 0.5, name
        assert int(np.argmax(est)) == int(np.argmax(full)) == 0, name  # the document holding the query's tokens


def test_smallest_takes_the_k_smallest_with_ties_to_the_lowest_positions():
    rng = np.random.default_rng(2)
    for _ in range(50):
        v = rng.integers(0, 20, size=300).astype(np.int32)
        v[rng.random(300) < 0.2] = 20  # the bound: never taken
        k = int(rng.integers(1, 320))
        got = smallest(v, k, 20)
        ok = np.flatnonzero(v < 20)
        want = np.sort(ok[np.argsort(v[ok], kind="stable")[:k]])
        np.testing.assert_array_equal(got, want)


def test_hamming_numpy_fallback_equals_the_faiss_kernel(monkeypatch):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 256, size=(5000, 128), dtype=np.uint8)
    q = rng.integers(0, 256, size=128, dtype=np.uint8)
    want = np.unpackbits(bits ^ q, axis=1).sum(axis=1)
    got = np.empty(5000, np.int32)
    search_mod._hamming_into(bits, q, got)
    np.testing.assert_array_equal(got, want)
    monkeypatch.setattr(search_mod, "_hammings", None)
    got2 = np.full(5000, -1, np.int32)
    search_mod._hamming_into(bits, q, got2)
    np.testing.assert_array_equal(got2, want)
    odd = bits[:, :13]  # a width that is not a multiple of 8 bytes
    got3 = np.empty(5000, np.int32)
    search_mod._hamming_into(np.ascontiguousarray(odd), q[:13], got3)
    np.testing.assert_array_equal(got3, np.unpackbits(odd ^ q[:13], axis=1).sum(axis=1))


def test_saved_rows_read_with_pread_equal_the_mapped_rows(tmp_path):
    rng = np.random.default_rng(4)
    n = 300
    dense = unit(rng, n, 32)
    cols = [unit(rng, int(t), 16) for t in rng.integers(0, 9, size=n)]
    idx = HybridIndex(None, dim=32, colbert_dim=16, channels=["dense", "colbert"], colbert_codec="2bit")
    idx.add_encoded([f"d{i}" for i in range(n)], [""] * n, None, dense, None, cols)
    idx.save(tmp_path / "i")
    seg = HybridIndex.load(tmp_path / "i", load_encoder=False)._segments[0]
    rows = np.array([0, 7, 299, 7, 150])
    np.testing.assert_array_equal(seg.take("dense", rows), np.asarray(seg.arrays["dense"])[rows])
    np.testing.assert_array_equal(seg.take_ranges("dense", rows, np.ones(5, np.int64)), np.asarray(seg.arrays["dense"])[rows])
    offs = np.asarray(seg.arrays["col_offsets"])
    st, ln = offs[rows], offs[rows + 1] - offs[rows]
    flat = np.concatenate([np.asarray(seg.arrays["col_codes"])[a:a + b] for a, b in zip(st, ln)])
    np.testing.assert_array_equal(seg.take_ranges("col_codes", st, ln), flat)
    with pytest.raises(IndexError):
        seg.take("dense", np.array([n]))


def test_search_still_answers_when_a_segment_file_is_gone_and_leaves_blas_threads_alone(tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(5)
    n = 200
    dense = unit(rng, n, 32)
    cols = [unit(rng, 5, 16) for _ in range(n)]
    idx = HybridIndex(None, dim=32, colbert_dim=16, channels=["dense", "colbert"], colbert_codec="1bit",
                      exact_dense_rows=1)
    idx.add_encoded([f"d{i}" for i in range(n)], [""] * n, None, dense, None, cols)
    idx.save(tmp_path / "i")
    loaded = HybridIndex.load(tmp_path / "i", load_encoder=False)
    want = [h.id for h in loaded.search_encoded(dense[3], None, cols[3], k=5, candidates=20)]
    assert want[0] == "d3"
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    seg_dir = loaded._segments[0].folder
    for f in ("dense.npy", "col_codes.npy"):  # unlinked while mapped (another writer compacted): the map still reads
        (seg_dir / f).unlink()
    assert [h.id for h in loaded.search_encoded(dense[3], None, cols[3], k=5, candidates=20)] == want
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"] == before


@pytest.mark.parametrize("bad", [-1, "5", True, 2.5])
def test_colbert_rerank_must_be_a_non_negative_int(bad):
    idx = HybridIndex(None, dim=8, channels=["dense"])
    idx.add_encoded(["a"], [""], None, unit(np.random.default_rng(0), 1, 8))
    with pytest.raises(ValueError, match="colbert_rerank"):
        idx.search_encoded(np.ones(8, np.float32), k=1, colbert_rerank=bad)


def test_compaction_of_saved_segments_streams_them_one_bounded_segment_at_a_time(tmp_path, monkeypatch):
    import bgem3.index.persistence as pers
    import bgem3.index.segment as segment_mod

    rng = np.random.default_rng(6)
    idx = HybridIndex(None, dim=16, colbert_dim=8, vocab_size=50, colbert_codec="1bit")
    ids = [f"d{i}" for i in range(120)]
    dense = unit(rng, 120, 16)
    sparse = [{int(t): 0.5 for t in rng.integers(0, 50, size=4)} for _ in range(120)]
    cols = [unit(rng, int(t), 8) for t in rng.integers(1, 6, size=120)]
    for a in range(0, 120, 40):  # three saved segments
        idx.add_encoded(ids[a:a + 40], [f"t{i}" for i in range(a, a + 40)], [{"i": i} for i in range(a, a + 40)],
                        dense[a:a + 40], sparse[a:a + 40], cols[a:a + 40])
        idx.save(tmp_path / "i")
    idx = HybridIndex.load(tmp_path / "i", load_encoder=False)
    idx.delete(ids[::3])
    idx.add_encoded(["new"], ["n"], None, dense[:1], sparse[:1], cols[:1])
    want_ids = idx.ids
    q = (dense[5], sparse[5], cols[5])
    before = [(h.id, round(h.score, 5)) for h in idx.search_encoded(*q, k=10, exhaustive=True)]
    monkeypatch.setattr(pers, "COMPACT_SEGMENT_BYTES", 2000)  # a few rows per new segment
    held = []
    real_write = segment_mod.write_segment

    def spy(root, seg):
        held.append(seg.n)
        return real_write(root, seg)

    monkeypatch.setattr(pers, "write_segment", spy)
    idx.compact()
    assert idx._n_dead == 40  # saved tombstones stay until the save
    idx.save(tmp_path / "i")
    assert len(held) > 5 and max(held) < 40  # many small segments, never all live rows at once
    assert idx._n_dead == 0 and idx.ids == want_ids
    loaded = HybridIndex.load(tmp_path / "i", load_encoder=False)
    assert loaded.ids == want_ids and loaded._n_dead == 0
    assert [(h.id, round(h.score, 5)) for h in loaded.search_encoded(*q, k=10, exhaustive=True)] == before
    seg_dirs = list((tmp_path / "i" / "segments").iterdir())
    assert len(seg_dirs) == len(loaded._segments)  # the old segments are gone after the commit


def test_posting_scatter_add_equals_numpy_and_refuses_rows_outside_the_segment():
    from bgem3.index import lexical
    from bgem3.index.errors import IndexFormatError
    from bgem3.index.lexical import add_posting_slices

    rng = np.random.default_rng(7)
    # five terms' posting lists one after the other (rows unique within each), one of them empty
    bounds = [0, 300, 300, 700, 1000, 1200]
    rows = np.concatenate([np.sort(rng.choice(1000, bounds[i + 1] - bounds[i], replace=False))
                           for i in range(len(bounds) - 1)]).astype(np.int32)
    vals = rng.random(len(rows)).astype(np.float32)
    # slices of four of them, ascending, as a query's terms give them (one empty)
    starts, ends = np.array([50, 300, 300, 800, 1000]), np.array([300, 300, 700, 1000, 1150])
    w = np.array([0.7, 5.0, -1.5, 2.0, 0.25], np.float32)
    acc0 = rng.random(1000).astype(np.float32)
    want = acc0.astype(np.float64)
    for a, b, wi in zip(starts, ends, w):
        np.add.at(want, rows[a:b], vals[a:b].astype(np.float64) * wi)
    got = acc0.copy()
    add_posting_slices(got, rows, vals, starts, ends, w)   # the one compiled call
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    saved, lexical._csc_matvec = lexical._csc_matvec, None
    try:
        plain = acc0.copy()
        add_posting_slices(plain, rows, vals, starts, ends, w)   # numpy, slice by slice
    finally:
        lexical._csc_matvec = saved
    np.testing.assert_allclose(plain, want, rtol=1e-6, atol=1e-6)
    for bad_value in (5000, -3):  # a crafted file: a posting outside the segment's rows
        bad = rows.copy()
        bad[900] = bad_value
        before = acc0.copy()
        with pytest.raises(IndexFormatError, match="corrupted"):
            add_posting_slices(before, bad, vals, starts, ends, w)
        np.testing.assert_array_equal(before, acc0)   # checked before anything is written
    checked: set = set()
    add_posting_slices(acc0.copy(), rows, vals, starts, ends, w, checked)
    assert checked == {(50, 300), (300, 700), (800, 1000), (1000, 1150)}
