"""HybridIndex.save / load: round trip, atomicity, and every way a saved index can be wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bgem3 import Encoder, HybridIndex, IndexFormatError
from bgem3.index import FORMAT_VERSION
from bgem3.testing import make_m3_checkpoint

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "BM25 is a bag-of-words retrieval function.",
    "서울은 대한민국의 수도이다.",
    "北京是中华人民共和国的首都。",
    "Берлин — столица Германии.",
    "La recherche hybride combine plusieurs signaux de pertinence.",
    "The quick brown fox jumps over the lazy dog.",
    "Hybrid retrieval fuses dense, sparse and late-interaction scores.",
]
QUERIES = ["capital city", "수도", "hybrid retrieval scores", "首都"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("persist_m3")), seed=0)


@pytest.fixture(scope="module")
def encoder(ckpt) -> Encoder:
    return Encoder(ckpt, device="cpu")


def make_index(encoder, **kw) -> HybridIndex:
    idx = HybridIndex(encoder, **kw)
    metas = [{"lang": l, "i": i, "tags": ["a", "b"] if i % 2 else None}
             for i, l in enumerate(["en", "en", "ko", "zh", "ru", "fr", "en", "en"])]
    idx.add(TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))], metadatas=metas)
    idx.delete(["t6"])  # saved indexes hold only live documents
    return idx


@pytest.fixture
def index(encoder) -> HybridIndex:
    return make_index(encoder)


def write_v1(index: HybridIndex, folder) -> None:
    """Write ``index`` in bgem3 0.1's format (format_version 1), as that version did."""
    import hashlib

    folder.mkdir(parents=True)
    ids = index.ids
    vecs = [index.vectors(i) for i in ids]
    arrays = {
        "dense.npy": np.stack([v[0] for v in vecs]).astype(np.float32),
        "sparse_indptr.npy": np.concatenate([[0], np.cumsum([len(v[1]) for v in vecs])]).astype(np.int64),
        "sparse_indices.npy": np.array([t for v in vecs for t in v[1]], dtype=np.int32),
        "sparse_data.npy": np.array([w for v in vecs for w in v[1].values()], dtype=np.float32),
        "colbert.npy": np.concatenate([v[2] for v in vecs]).astype(np.float32),
        "colbert_offsets.npy": np.concatenate([[0], np.cumsum([len(v[2]) for v in vecs])]).astype(np.int64),
    }
    files = {}
    for name, arr in arrays.items():
        np.save(folder / name, arr, allow_pickle=False)
        data = (folder / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "shape": list(arr.shape),
                       "dtype": str(arr.dtype)}
    hits = index.get(ids)
    docs = json.dumps({"ids": ids, "texts": [h.text for h in hits], "metadatas": [h.metadata for h in hits]}).encode()
    (folder / "documents.json").write_bytes(docs)
    files["documents.json"] = {"sha256": hashlib.sha256(docs).hexdigest(), "bytes": len(docs)}
    manifest = {"format": "bgem3.HybridIndex", "format_version": 1, "bgem3_version": "0.1.0",
                "model_name": index.model_name, "dim": index.dim, "colbert_dim": index.colbert_dim,
                "vocab_size": index.vocab_size, "colbert_dtype": "float32", "count": len(ids),
                "colbert_tokens": int(len(arrays["colbert.npy"])), "sparse_nnz": int(len(arrays["sparse_data.npy"])),
                "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def results(idx: HybridIndex, encoder: Encoder = None) -> list:
    """Hits for several queries x search options (queries encoded once, to keep the test fast)."""
    enc = encoder or idx.encoder
    q = enc.encode_queries(QUERIES, dense=True, sparse=True, colbert=True)
    out = []
    for n in range(len(QUERIES)):
        for kw in ({}, {"exhaustive": True}, {"mode": "rrf"}, {"filter": {"lang": ["en", "ko"]}}, {"candidates": 1}):
            out.append([(h.id, h.text, h.metadata, h.score, h.dense_score, h.sparse_score, h.colbert_score)
                        for h in idx.search_encoded(q.dense[n], q.sparse[n], q.colbert[n], k=5, **kw)])
    return out


def seg_files(root, suffix: str) -> list:
    """Paths of ``<suffix>`` files in the saved segments of ``root``."""
    return sorted((root / "segments").glob(f"seg-*/{suffix}"))


def test_round_trip_gives_identical_results(index, encoder, tmp_path):
    pre = results(index)
    index.save(tmp_path / "idx")  # tombstoned rows are not written
    before = results(index)
    # dropping the dead row changes only float32 rounding (the matrix products have another row count)
    for a, b in zip(pre, before):
        assert [h[:3] for h in a] == [h[:3] for h in b]
        np.testing.assert_allclose([h[3:] for h in a], [h[3:] for h in b], atol=1e-6, rtol=0)
    loaded = HybridIndex.load(tmp_path / "idx", encoder)
    assert len(loaded) == len(index) == 7 and loaded.ids == index.ids and "t6" not in loaded
    assert results(loaded) == before  # bit for bit
    assert loaded.search(QUERIES[1], k=5, mode="rrf") == index.search(QUERIES[1], k=5, mode="rrf")
    assert [h.metadata for h in loaded.get(["t1", "t2"])] == [{"lang": "en", "i": 1, "tags": ["a", "b"]},
                                                             {"lang": "ko", "i": 2, "tags": None}]
    for f in ("dense.npy", "col_codes.npy", "lex_values.npy"):  # plain .npy, no pickle needed
        [path] = seg_files(tmp_path / "idx", f)
        np.load(path, allow_pickle=False)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["model_name"] == encoder.model_name
    assert manifest["dim"] == encoder.hidden_size and manifest["count"] == 7
    assert manifest["vocab_size"] == encoder.vocab_size and manifest["colbert_codec"] == index.colbert_codec
    # the loaded index keeps working: add, upsert, delete, save again (incrementally)
    loaded.add(["Tokyo is the capital of Japan."], ids=["t9"])
    loaded.add(["replaced"], ids=["t0"])
    loaded.delete(["t1"])
    loaded.save(tmp_path / "idx")
    assert len(seg_files(tmp_path / "idx", "dense.npy")) == 2  # the old segment + one new one
    again = HybridIndex.load(tmp_path / "idx", encoder)
    assert again.ids == loaded.ids and results(again) == results(loaded)
    assert again.get(["t0"])[0].text == "replaced"
    # compaction + save: one segment again, the old ones removed after the commit
    again.compact()
    again.save(tmp_path / "idx")
    assert len(seg_files(tmp_path / "idx", "dense.npy")) == 1
    assert HybridIndex.load(tmp_path / "idx", encoder).ids == again.ids


def test_load_builds_the_encoder_from_the_manifest(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = HybridIndex.load(tmp_path / "idx", device="cpu")
    assert loaded.encoder is not None and loaded.encoder.model_name == index.model_name
    assert results(loaded) == results(index)
    assert loaded.search(QUERIES[0], k=3) == index.search(QUERIES[0], k=3)
    bare = HybridIndex.load(tmp_path / "idx", load_encoder=False)
    assert bare.encoder is None
    dq, sq, cq = index.vectors("t2")
    assert bare.search_encoded(dq, sq, cq, k=1)[0].id == "t2"


def test_synthetic_index_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(5, 6)).astype(np.float32)
    colbert = [rng.normal(size=(int(t), 3)).astype(np.float32) for t in (1, 0, 4, 2, 3)]
    idx = HybridIndex(None, model_name="my-vectors", dim=6, colbert_dim=3, colbert_codec="float32")
    idx.add_encoded(list("abcde"), list("ABCDE"), None, dense, [{3: 1.0}, {}, {7: 0.5, 1: 0.1}, {}, {9: 2.0}], colbert)
    idx.save(tmp_path / "s")
    loaded = HybridIndex.load(tmp_path / "s", load_encoder=False)
    assert (loaded.model_name, loaded.dim, loaded.colbert_dim, loaded.colbert_codec) == ("my-vectors", 6, 3, "float32")
    q = (dense[2], {7: 1.0}, colbert[2])
    assert loaded.search_encoded(*q, k=5) == idx.search_encoded(*q, k=5)
    np.testing.assert_array_equal(loaded.vectors("c")[2], colbert[2])


def test_a_loaded_handle_has_exactly_the_state_of_a_new_one(tmp_path):
    """load builds the handle from the saved-index record in one place (HybridIndex.from_saved): the
    same attributes as a new index, none patched in later by defaults (issue 22: the copy built by
    persistence lacked three), and the configuration and commit the record carries."""
    from bgem3.index.persistence import SavedIndex, load_index

    for kw in ({"colbert_codec": "int8"}, {"channels": ["dense"], "dense_codec": "float16"}):
        new = HybridIndex(None, model_name="m", dim=4, **kw)
        full = "colbert" in new.channels
        new.add_encoded(["a", "b"], ["A", "B"], None, np.eye(2, 4, dtype=np.float32),
                        [{1: 1.0}, {2: 0.5}] if full else None, [np.eye(2, 4, dtype=np.float32)] * 2 if full else None)
        new.save(tmp_path / "i")
        new.save(tmp_path / "i")  # generation 2
        built: list = []
        real = HybridIndex.from_saved.__func__

        class Spy(HybridIndex):
            @classmethod
            def from_saved(cls, saved):
                built.append(saved)
                return real(cls, saved)

        back = load_index(Spy, tmp_path / "i", load_encoder=False)
        [rec] = built
        assert isinstance(rec, SavedIndex) and rec.generation == 2 and rec.uuid == new._uuid
        assert [s.name for s in rec.segments] == [s.name for s in back._segments]
        assert sorted(vars(back)) == sorted(vars(HybridIndex(None, model_name="m", dim=4, **kw)))
        for a in ("model_name", "dim", "colbert_dim", "vocab_size", "channels", "colbert_codec", "dense_codec",
                  "exact_dense_rows", "dense_probe"):
            assert getattr(back, a) == getattr(new, a), a
        assert back._base["generation"] == 2 and back._compact_pending is False and back._pending_finalizer is None
        assert back.ids == ["a", "b"] and back.vectors("b")[0].tolist() == [0, 1, 0, 0]
        import pickle
        import shutil

        old = {k: v for k, v in back.__getstate__().items() if k not in ("_compact_pending", "_pending_finalizer")}
        again = HybridIndex.__new__(HybridIndex)
        again.__setstate__(pickle.loads(pickle.dumps(old)))  # a pickle from before this record
        assert sorted(vars(again)) == sorted(vars(back)) and again.ids == ["a", "b"]
        shutil.rmtree(tmp_path / "i")


def test_crash_mid_save_leaves_previous_index_intact(index, encoder, tmp_path, monkeypatch):
    import bgem3.index.segment as segment_mod

    target = tmp_path / "idx"
    index.save(target)
    before = results(index)
    index.add(["a new document that must not appear"], ids=["new"])
    index.delete(["t0"])
    real = segment_mod.write_npy
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_mod, "write_npy", failing)
    with pytest.raises(OSError, match="disk full"):
        index.save(target)
    monkeypatch.setattr(segment_mod, "write_npy", real)
    assert calls["n"] == 2
    old = HybridIndex.load(target, encoder)
    assert "new" not in old and "t0" in old and results(old) == before
    # the failed save removed its partial segment folder at once (a full disk is not left fuller
    # until some later save succeeds)
    assert len(list((target / "segments").iterdir())) == 1
    index.save(target)
    assert len(list((target / "segments").iterdir())) == 2  # the first segment + the new one
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    new = HybridIndex.load(target, encoder)
    assert "new" in new and "t0" not in new


def test_format1_backup_left_by_an_old_interrupted_swap_is_recovered(encoder, tmp_path):
    index = make_index(encoder, colbert_codec="float32")
    write_v1(index, tmp_path / ".idx.old-1234abcd")  # a crash between the two renames of bgem3 0.1
    # a load is a read: it names the backup and how to put it back, and renames nothing
    with pytest.raises(FileNotFoundError, match=r"\.idx\.old-1234abcd.*recover_interrupted_save"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)
    assert not (tmp_path / "idx").exists() and (tmp_path / ".idx.old-1234abcd").is_dir()
    from bgem3.index.persistence import recover_interrupted_save

    assert recover_interrupted_save(tmp_path / "idx")
    loaded = HybridIndex.load(tmp_path / "idx", load_encoder=False)
    assert loaded.ids == index.ids and (tmp_path / "idx").is_dir()


def test_format1_loads_and_converts_in_place(encoder, tmp_path):
    index = make_index(encoder, colbert_codec="float32")
    target = tmp_path / "old"
    write_v1(index, target)
    (target / "sources.json").write_text("{}")  # the CLI's file beside the index stays
    old = HybridIndex.load(target, encoder)
    assert old.ids == index.ids
    np.testing.assert_allclose([h.score for h in old.search(QUERIES[0], k=5)],
                               [h.score for h in index.search(QUERIES[0], k=5)], atol=1e-6)
    old.save(target)
    assert not (target / "dense.npy").exists() and not (target / "documents.json").exists()
    assert (target / "sources.json").read_text() == "{}"
    assert json.loads((target / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    assert HybridIndex.load(target, encoder).ids == index.ids


def test_truncated_file_is_named(index, tmp_path):
    index.save(tmp_path / "idx")
    [path] = seg_files(tmp_path / "idx", "col_codes.npy")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=r"col_codes\.npy.*truncated"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)


def test_corrupted_file_is_named(index, tmp_path):
    index.save(tmp_path / "idx")
    [path] = seg_files(tmp_path / "idx", "dense.npy")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # same size, one bit flipped (still a finite float)
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"dense\.npy.*checksum"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)
    # verify=False skips checksums; the shape checks still guard the structure
    loaded = HybridIndex.load(tmp_path / "idx", load_encoder=False, verify=False)
    assert len(loaded) == len(index)
    with pytest.raises(IndexFormatError, match=r"dense\.npy.*checksum"):
        loaded.verify()


def test_corrupted_documents_and_manifest(index, tmp_path):
    index.save(tmp_path / "idx")
    [docs] = seg_files(tmp_path / "idx", "doc_ids.npy")
    docs.write_bytes(docs.read_bytes().replace(b"t1", b"tX"))
    with pytest.raises(IndexFormatError, match=r"doc_ids\.npy.*checksum"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match=r"manifest\.json.*not valid JSON"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)
    (tmp_path / "idx" / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"manifest\.json.*missing"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)
    with pytest.raises(FileNotFoundError, match="no saved HybridIndex"):
        HybridIndex.load(tmp_path / "nowhere", load_encoder=False)


def test_shape_mismatch_is_caught_even_without_checksums(index, tmp_path):
    index.save(tmp_path / "idx")
    mpath = tmp_path / "idx" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["segments"][0]["rows"] += 1
    mpath.write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="inconsistent"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False, verify=False)


@pytest.mark.parametrize("version,hint", [(FORMAT_VERSION + 1, "upgrade bgem3"), (0, "rebuild")])
def test_version_mismatch(index, tmp_path, version, hint):
    index.save(tmp_path / "idx")
    mpath = tmp_path / "idx" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = version
    mpath.write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match=f"format_version {version}.*{hint}"):
        HybridIndex.load(tmp_path / "idx", load_encoder=False)


def test_model_mismatch(index, tmp_path_factory, tmp_path):
    index.save(tmp_path / "idx")
    other_dim = Encoder(make_m3_checkpoint(str(tmp_path_factory.mktemp("other48")), hidden_size=48), device="cpu")
    with pytest.raises(IndexFormatError, match="dim 48"):
        HybridIndex.load(tmp_path / "idx", other_dim)
    with pytest.raises(IndexFormatError, match="dim 48"):
        HybridIndex.load(tmp_path / "idx", other_dim, allow_model_mismatch=True)
    other_name = Encoder(make_m3_checkpoint(str(tmp_path_factory.mktemp("othername")), seed=1), device="cpu")
    with pytest.raises(IndexFormatError, match="built with model.*allow_model_mismatch"):
        HybridIndex.load(tmp_path / "idx", other_name)
    loaded = HybridIndex.load(tmp_path / "idx", other_name, allow_model_mismatch=True)
    assert loaded.encoder is other_name and len(loaded) == len(index)


def test_save_refuses_to_overwrite_a_folder_that_is_not_an_index(index, tmp_path):
    precious = tmp_path / "mydata"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(ValueError, match="not a saved HybridIndex"):
        index.save(precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    index.save(tmp_path / "empty_ok")  # a new folder is fine
    (tmp_path / "empty_dir").mkdir()
    index.save(tmp_path / "empty_dir")  # so is an empty one
    assert len(HybridIndex.load(tmp_path / "empty_dir", load_encoder=False)) == len(index)
