"""ColBERT codecs, optional channels, the lexical-channel plug-in, the dense prefilter,
incremental saves and lazy opening."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bgem3 import Encoder, HybridIndex
from bgem3.index import COLBERT_CODECS, bytes_per_token
from bgem3.index.codecs import ColbertCodec
from bgem3.index.lexical import LexicalBlock, LexicalChannel, register_lexical_channel
from bgem3.testing import SAMPLE_CORPUS, STORAGE_SENTENCES

TEXTS = list(SAMPLE_CORPUS) + STORAGE_SENTENCES + [
    "Python packages describe themselves in their metadata files.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hybrid retrieval fuses dense, lexical and multi-vector evidence.",
    "An exact scan touches every stored vector once per query.",
]


@pytest.fixture(scope="module")
def minilm_tokens(minilm):
    """Real contextual token vectors: MiniLM's last hidden states (L2-normalised), real text."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()
    out = []
    with torch.inference_mode():
        enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = torch.nn.functional.normalize(model(**enc).last_hidden_state, dim=-1).numpy()
    for i in range(len(TEXTS)):
        n = int(enc["attention_mask"][i].sum())
        out.append(np.ascontiguousarray(h[i, 1:n], dtype=np.float32))
    return out


def test_bytes_per_token_meet_the_issue_budgets(tmp_path):
    # saved: codes + per-token float + the estimate's columns (col_prefix) for int8 / 1bit
    assert [bytes_per_token(c, 1024) for c in COLBERT_CODECS] == [4096, 2048, 1092, 260, 140]
    assert [bytes_per_token(c, 1024, saved=False) for c in COLBERT_CODECS] == [4096, 2048, 1028, 260, 132]
    assert bytes_per_token("2bit", 1024) <= 272 and bytes_per_token("1bit", 1024) <= 144
    rng = np.random.default_rng(0)
    for codec in COLBERT_CODECS:
        idx = HybridIndex(None, dim=1024, channels=["colbert"], colbert_codec=codec)
        cols = [rng.normal(size=(int(t), 1024)).astype(np.float32) for t in (3, 5)]
        idx.add_encoded(["a", "b"], ["A", "B"], None, colbert=cols)
        assert idx.memory_usage()["colbert"] == 8 * bytes_per_token(codec, 1024, saved=False) + 8 * 3
        idx.save(tmp_path / codec)
        back = HybridIndex.load(tmp_path / codec, load_encoder=False)
        assert back.memory_usage()["colbert"] == 8 * bytes_per_token(codec, 1024) + 8 * 3


@pytest.mark.parametrize("codec,min_corr,max_err", [("int8", 0.999, 0.01), ("2bit", 0.93, 0.08), ("1bit", 0.75, 0.15)])
def test_codec_inner_products_on_real_minilm_token_vectors(minilm_tokens, codec, min_corr, max_err):
    flat = np.concatenate(minilm_tokens)
    c = ColbertCodec(codec, flat.shape[1])
    c.fit(flat)
    codes, aux = c.encode(flat)
    q = minilm_tokens[3]
    est = c.similarities(c.prepare_query(q), codes, aux)
    exact = q @ flat.T
    assert np.corrcoef(est.ravel(), exact.ravel())[0, 1] >= min_corr
    assert float(np.abs(est - exact).mean()) <= max_err
    # self-similarity (a query token against its own code) stays close to 1
    decoded = c.decode(codes, aux)
    assert decoded.shape == flat.shape and float(np.abs(decoded - flat).mean()) < 0.1


def test_maxsim_ranking_per_codec_on_real_minilm_token_vectors(minilm_tokens):
    """ColBERT-only top-5 of each codec vs float32 over the real token vectors (queries = passages)."""
    ids = [f"p{i}" for i in range(len(TEXTS))]
    ref = None
    for codec, need in (("float32", 1.0), ("float16", 1.0), ("int8", 0.98), ("2bit", 0.8), ("1bit", 0.7)):
        idx = HybridIndex(None, dim=384, channels=["colbert"], colbert_codec=codec)
        idx.add_encoded(ids, TEXTS, None, colbert=minilm_tokens)
        tops = [[h.id for h in idx.search_encoded(None, None, q[: max(3, len(q) // 2)], k=5)] for q in minilm_tokens]
        if ref is None:
            ref = tops
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(tops, ref)])
        assert recall >= need, (codec, recall)


# --------------------------------------------------------------------------- optional channels
def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_any_subset_of_channels_and_hits_say_which_channels_scored(tmp_path):
    rng = np.random.default_rng(0)
    dense, cols = unit(rng, 6, 8), [unit(rng, 3, 8) for _ in range(6)]
    sparse = [{i: 1.0, 10 + i: 0.5} for i in range(6)]
    cases = {("dense",): (dense, None, None), ("lexical",): (None, sparse, None), ("colbert",): (None, None, cols),
             ("dense", "lexical"): (dense, sparse, None), ("dense", "colbert"): (dense, None, cols)}
    for chans, (d, s, c) in cases.items():
        idx = HybridIndex(None, dim=8, channels=list(chans), colbert_codec="float32")
        idx.add_encoded([f"x{i}" for i in range(6)], list("abcdef"), None, d, s, c)
        q = (dense[2] if d is not None else None, {2: 1.0} if s is not None else None, cols[2] if c is not None else None)
        hits = idx.search_encoded(*q, k=3)
        assert hits[0].id == "x2" and hits[0].channels == chans, chans
        assert (hits[0].dense_score is None) == ("dense" not in chans)
        assert (hits[0].colbert_score is None) == ("colbert" not in chans)
        # the weighted mean runs over the present channels only
        present = [x for x in (hits[0].dense_score, hits[0].sparse_score, hits[0].colbert_score) if x is not None]
        w = [wt for wt, x in zip((0.4, 0.2, 0.4), (hits[0].dense_score, hits[0].sparse_score, hits[0].colbert_score))
             if x is not None]
        assert hits[0].score == pytest.approx(sum(a * b for a, b in zip(w, present)) / sum(w))
        idx.save(tmp_path / "-".join(chans))
        loaded = HybridIndex.load(tmp_path / "-".join(chans), load_encoder=False)
        assert loaded.channels == chans and loaded.search_encoded(*q, k=3) == hits
    dense_only = HybridIndex(None, dim=8, channels=["dense"])
    dense_only.add_encoded(["a"], ["A"], None, dense[:1])
    with pytest.raises(ValueError, match="no colbert channel"):
        dense_only.add_encoded(["b"], ["B"], None, dense[:1], None, cols[:1])
    with pytest.raises(ValueError, match="no colbert channel"):
        dense_only.search_encoded(dense[0], None, cols[0])
    with pytest.raises(ValueError, match="weight 0 to every channel"):
        dense_only.search_encoded(dense[0], weights=(0, 1, 1))
    with pytest.raises(ValueError, match="stores the dense channel"):
        dense_only.add_encoded(["c"], ["C"], None, None)
    with pytest.raises(TypeError, match="single string"):
        HybridIndex(None, dim=8, channels="dense")
    with pytest.raises(ValueError, match="channels"):
        HybridIndex(None, dim=8, channels=["dense", "sparse"])


def test_encoder_without_bge_m3_heads_gives_a_dense_index(minilm):
    enc = Encoder(minilm, device="cpu")
    assert HybridIndex(enc).channels == ("dense", "lexical")  # default: dense + BM25 (issue #11)
    assert HybridIndex(enc).lexical.kind == "bm25"
    idx = HybridIndex(enc, channels=["dense"])
    assert idx.channels == ("dense",)
    idx.add(TEXTS[-6:], ids=[f"t{i}" for i in range(6)])
    hit = idx.search(TEXTS[-2], k=1)[0]
    assert hit.id == "t4" and hit.channels == ("dense",) and hit.sparse_score is None
    with pytest.raises(ValueError, match="need BGE-M3 heads"):
        HybridIndex(enc, channels=["dense", "colbert"])


def test_colbert_dtype_is_an_alias_with_clear_errors():
    assert HybridIndex(None, dim=4, colbert_dtype="float32").colbert_codec == "float32"
    with pytest.raises(ValueError, match="colbert_codec="):
        HybridIndex(None, dim=4, colbert_dtype="int8")
    with pytest.raises(ValueError, match="disagree"):
        HybridIndex(None, dim=4, colbert_dtype="float16", colbert_codec="1bit")
    with pytest.raises(ValueError, match="colbert_codec must be one of"):
        HybridIndex(None, dim=4, colbert_codec="3bit")


# --------------------------------------------------------------------------- lexical plug-in
@register_lexical_channel
class CountMatches(LexicalChannel):
    """A toy channel: score = number of query terms the row holds, times ``scale``."""

    kind = "test_count_matches"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def config(self) -> dict:
        return {"scale": self.scale}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def row_extras(self, block: LexicalBlock) -> dict:
        return {"nterms": np.diff(block.indptr).astype(np.float32)}

    def score(self, query, segments):
        out = []
        for seg in segments:
            rows, vals, qpos = seg.postings(query.terms)
            out.append((np.bincount(rows, minlength=seg.n_rows) * self.scale).astype(np.float32))
            assert seg.extras["nterms"].shape == (seg.n_rows,)
        return out


def test_a_custom_lexical_channel_plugs_in_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(1)
    idx = HybridIndex(None, dim=4, channels=["dense", "lexical"], lexical=CountMatches(2.0))
    idx.add_encoded(["a", "b", "c"], list("ABC"), None, unit(rng, 3, 4), [{1: 9.0, 2: 9.0}, {1: 0.1}, {5: 1.0}])
    hits = idx.search_encoded(unit(rng, 1, 4)[0], {1: 1.0, 2: 1.0}, k=3, weights=(0.0, 1.0, 0.0))
    assert [h.id for h in hits][:2] == ["a", "b"] and hits[0].sparse_score == 4.0
    idx.save(tmp_path / "i")
    m = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert m["lexical"] == {"kind": "test_count_matches", "config": {"scale": 2.0}, "extras": ["nterms"]}
    loaded = HybridIndex.load(tmp_path / "i", load_encoder=False)
    assert isinstance(loaded.lexical, CountMatches) and loaded.lexical.scale == 2.0
    assert [h.id for h in loaded.search_encoded(hits[0] and idx.vectors("a")[0], {1: 1.0, 2: 1.0}, k=2,
                                                weights=(0.0, 1.0, 0.0))] == ["a", "b"]


# --------------------------------------------------------------------------- dense prefilter at scale
def test_hamming_prefilter_with_exact_rescoring_finds_the_exact_dense_neighbours(minilm):
    """Real MiniLM sentence embeddings: the sign-bit shortlist + exact rescoring vs an exact scan."""
    enc = Encoder(minilm, device="cpu")
    texts = [f"{a} {b}" for a in TEXTS for b in TEXTS[:8]]  # 256 real-text sentences
    dense = enc.encode(texts, dense=True).dense
    queries = enc.encode(TEXTS[-10:], dense=True).dense
    exact = HybridIndex(None, dim=dense.shape[1], channels=["dense"])
    approx = HybridIndex(None, dim=dense.shape[1], channels=["dense"], exact_dense_rows=1)
    for idx in (exact, approx):
        idx.add_encoded([f"s{i}" for i in range(len(texts))], texts, None, dense)
    for q in queries:
        e = [h.id for h in exact.search_encoded(q, k=20, candidates=20)]
        a = [h.id for h in approx.search_encoded(q, k=20, candidates=20, shortlist=100)]
        assert len(set(e) & set(a)) >= 19


# --------------------------------------------------------------------------- incremental saves, lazy open
def test_incremental_save_writes_only_new_data(tmp_path):
    rng = np.random.default_rng(2)
    idx = HybridIndex(None, dim=16, colbert_codec="int8")
    n = 3000
    idx.add_encoded([f"a{i}" for i in range(n)], ["x"] * n, None, unit(rng, n, 16), [{1: 1.0}] * n,
                    [unit(rng, 4, 16) for _ in range(n)])
    root = tmp_path / "i"
    idx.save(root)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    size_before = sum(s for s, _ in before.values())
    idx.add_encoded(["new"], ["x"], None, unit(rng, 1, 16), [{2: 1.0}], [unit(rng, 4, 16)])
    idx.delete(["a3"])
    idx.save(root)
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    changed = [p for p, v in after.items() if before.get(p) != v]
    # nothing rewritten (write.lock is the writer lock: its holder notes who it is in it)
    assert all(after.get(p) == v for p, v in before.items() if p.name not in ("manifest.json", "write.lock"))
    written = sum(after[p][0] for p in changed)
    assert written < size_before / 20  # the new segment + one tombstone file + the manifest
    assert sum(1 for p in changed if p.name.startswith("deleted-")) == 1
    loaded = HybridIndex.load(root, load_encoder=False)
    assert "new" in loaded and "a3" not in loaded and len(loaded) == n


def test_open_maps_large_segments_without_reading_or_hashing_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    idx = HybridIndex(None, dim=8)
    idx.add_encoded(None, ["x"] * 50, None, unit(rng, 50, 8), [{1: 1.0}] * 50, [unit(rng, 2, 8) for _ in range(50)])
    idx.save(tmp_path / "i")
    import bgem3.index.segment as segment_mod

    monkeypatch.setattr(segment_mod, "VERIFY_AT_OPEN_BYTES", 0)  # every segment counts as large

    def no_hashing(*a, **k):
        raise AssertionError("open must not hash large segments")

    monkeypatch.setattr(segment_mod, "sha256_file", no_hashing)
    loaded = HybridIndex.load(tmp_path / "i", load_encoder=False)
    assert isinstance(loaded._segments[0].arrays["col_codes"], np.memmap)
    assert len(loaded.search_encoded(*idx.vectors(idx.ids[0]), k=3)) == 3
    with pytest.raises(AssertionError, match="must not hash"):
        loaded.verify()  # the explicit check does read and hash everything


def test_many_small_saves_do_not_pile_up_segments(tmp_path):
    rng = np.random.default_rng(4)
    idx = HybridIndex(None, dim=8)
    idx.add_encoded([f"big{i}" for i in range(2000)], ["x"] * 2000, None, unit(rng, 2000, 8), [{1: 1.0}] * 2000,
                    [unit(rng, 2, 8) for _ in range(2000)])
    root = tmp_path / "i"
    idx.save(root)
    for step in range(20):
        idx.add_encoded([f"s{step}"], ["y"], None, unit(rng, 1, 8), [{2: 1.0}], [unit(rng, 2, 8)])
        idx.delete([f"big{step}"])
        idx.save(root)
        assert len(idx._segments) <= 9
    loaded = HybridIndex.load(root, load_encoder=False)
    assert len(loaded) == 2000 and "s19" in loaded and "big3" not in loaded
    assert sorted(loaded.ids) == sorted(idx.ids)
