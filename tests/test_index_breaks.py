"""Every persistence / input break listed in issue #10, each with a test that failed before the fix.

Synthetic vectors (no encoder): these are about storage and validation, not model quality.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bgem3 import HybridIndex, IndexFormatError
from bgem3.index import storage
from bgem3.index.storage import is_saved_index, write_npy


def make(n: int = 12, dim: int = 8, seed: int = 0, **kw) -> HybridIndex:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(rng.uniform(0.1, 1)) for t in rng.choice(50, size=3, replace=False)} for _ in range(n)]
    colbert = [rng.normal(size=(int(rng.integers(1, 5)), dim)).astype(np.float32) for _ in range(n)]
    kw.setdefault("colbert_codec", "float32")
    idx = HybridIndex(None, model_name="synthetic", dim=dim, vocab_size=kw.pop("vocab_size", 50), **kw)
    idx.add_encoded([f"d{i}" for i in range(n)], [f"text {i}" for i in range(n)], [{"g": i % 3} for i in range(n)],
                    dense, sparse, colbert)
    return idx


def query(idx: HybridIndex, row: int = 0):
    dq, sq, cq = idx.vectors(f"d{row}")
    return dq, sq, cq


def seg_file(root, name: str):
    [p] = sorted((root / "segments").glob(f"seg-*/{name}"))
    return p


def rewrite_array(root, name: str, arr: np.ndarray) -> None:
    """Replace one segment array and fix its manifest record (checksum included): an attacker's
    crafted folder that every size and checksum check accepts."""
    path = seg_file(root, name)
    rec = write_npy(path, arr)
    m = json.loads((root / "manifest.json").read_text())
    m["segments"][0]["files"][name] = rec
    (root / "manifest.json").write_text(json.dumps(m))


# --------------------------------------------------------------------------- folders that are not ours
def test_save_never_replaces_a_folder_that_merely_has_a_manifest_json(tmp_path):
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text(json.dumps({"name": "my-web-app", "version": "1.0"}))
    (app / "src" / "main.py").write_text("print('precious')")
    assert not is_saved_index(app)
    with pytest.raises(ValueError, match="not a saved HybridIndex"):
        make().save(app)
    assert (app / "src" / "main.py").read_text() == "print('precious')"
    # a HybridIndex-looking manifest whose files are not there is not ours either
    fake = {"format": "bgem3.HybridIndex", "format_version": 2, "segments": [
        {"name": "seg-0123456789abcdef", "files": {"dense.npy": {"bytes": 10}}}]}
    (app / "manifest.json").write_text(json.dumps(fake))
    assert not is_saved_index(app)
    with pytest.raises(ValueError, match="not a saved HybridIndex"):
        make().save(app)
    assert (app / "src" / "main.py").is_file()


def test_cli_rebuild_refuses_a_folder_that_is_not_an_index(tmp_path, capsys):
    from bgem3.cli import _is_hybrid_index, main

    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text("{}")
    (app / "src" / "main.py").write_text("x")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello world")
    assert not _is_hybrid_index(str(app))
    code = main(["index", str(docs), "--index", str(app), "--rebuild", "--model", "nonexistent-model-xyz"])
    assert code != 0
    assert "not a bgem3 index" in capsys.readouterr().err
    assert (app / "src" / "main.py").read_text() == "x" and (app / "manifest.json").read_text() == "{}"


def test_leftovers_of_interrupted_saves_are_removed_and_foreign_files_kept(tmp_path):
    idx = make()
    root = tmp_path / "idx"
    idx.save(root)
    orphan = root / "segments" / "seg-00000000000000aa"
    orphan.mkdir()
    (orphan / "dense.npy").write_bytes(b"partial")
    (root / "manifest.json.tmp-deadbeefdeadbeef").write_text("{")
    (root / "codec-00000000000000bb").mkdir()
    (root / "notes.txt").write_text("mine")            # not ours: stays
    (root / "segments" / "README").write_text("mine")  # not ours: stays
    idx.add_encoded(["new"], ["new"], None, np.ones((1, 8), np.float32) / np.sqrt(8), [{}],
                    [np.ones((1, 8), np.float32)])
    idx.save(root)
    assert not orphan.exists() and not (root / "manifest.json.tmp-deadbeefdeadbeef").exists()
    assert not (root / "codec-00000000000000bb").exists()
    assert (root / "notes.txt").read_text() == "mine" and (root / "segments" / "README").read_text() == "mine"
    assert "new" in HybridIndex.load(root, load_encoder=False)


def test_symlinked_save_path_saves_into_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    idx = make()
    idx.save(link)
    assert link.is_symlink() and (real / "manifest.json").is_file()
    idx.delete(["d0"])
    idx.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    loaded = HybridIndex.load(link, load_encoder=False)
    assert "d0" not in loaded and len(loaded) == 11
    assert HybridIndex.load(real, load_encoder=False).ids == loaded.ids


# --------------------------------------------------------------------------- crafted folders with valid checksums
@pytest.mark.parametrize("name,value", [("dense.npy", np.nan), ("dense.npy", np.inf), ("lex_post_values.npy", np.nan),
                                        ("col_codes.npy", -np.inf), ("lex_values.npy", np.inf)])
def test_crafted_nan_inf_arrays_are_refused(tmp_path, name, value):
    root = tmp_path / "idx"
    make().save(root)
    arr = np.load(seg_file(root, name)).copy()
    arr.reshape(-1)[1] = value
    rewrite_array(root, name, arr)
    with pytest.raises(IndexFormatError, match="NaN or infinity"):
        HybridIndex.load(root, load_encoder=False)
    # structure-only open of such a folder still never returns NaN scores: search refuses
    idx = HybridIndex.load(root, load_encoder=False, verify=False)
    if name == "lex_values.npy":  # the forward rows are not read by search; verify() finds them
        with pytest.raises(IndexFormatError, match="NaN or infinity"):
            idx.verify()
        return
    dq, _, cq = query(make())
    with pytest.raises(IndexFormatError, match="NaN or infinite"):
        idx.search_encoded(dq, {t: 1.0 for t in range(50)}, cq, k=12, exhaustive=True)


@pytest.mark.parametrize("change", ["shift", "decrease", "overrun"])
def test_crafted_offsets_are_refused(tmp_path, change):
    root = tmp_path / "idx"
    make().save(root)
    off = np.load(seg_file(root, "col_offsets.npy")).copy()
    if change == "shift":
        off = off + 1
    elif change == "decrease":
        off[3], off[4] = off[4], off[3] - 1
    else:
        off[-1] += 5
    rewrite_array(root, "col_offsets.npy", off)
    with pytest.raises(IndexFormatError, match="col_offsets"):
        HybridIndex.load(root, load_encoder=False, verify=False)


def test_crafted_ids_and_metadata_are_refused(tmp_path):
    root = tmp_path / "idx"
    make().save(root)
    blob = np.load(seg_file(root, "doc_ids.npy")).copy()
    blob[0] = 0xFF  # not UTF-8
    rewrite_array(root, "doc_ids.npy", blob)
    with pytest.raises(IndexFormatError, match="UTF-8"):
        HybridIndex.load(root, load_encoder=False)
    root2 = tmp_path / "idx2"
    make().save(root2)
    metas = [json.dumps(m).encode() for m in [[1, 2]] + [{"g": 1}] * 11]  # row 0's metadata is a list
    rewrite_array(root2, "doc_metas.npy", np.frombuffer(b"".join(metas), np.uint8))
    rewrite_array(root2, "doc_metas_off.npy", np.concatenate([[0], np.cumsum([len(x) for x in metas])]).astype(np.int64))
    with pytest.raises(IndexFormatError, match="not an object"):
        HybridIndex.load(root2, load_encoder=False)
    # structure-only open: a filtered search names the problem instead of crashing
    idx = HybridIndex.load(root2, load_encoder=False, verify=False)
    with pytest.raises(IndexFormatError, match="not an object"):
        idx.search_encoded(*query(make()), k=3, filter={"g": 1})


def test_format1_crafted_documents_are_refused(tmp_path):
    from test_index_persistence import write_v1

    idx = make()
    for field, bad in (("ids", list(range(12))), ("texts", [None] * 12), ("metadatas", [[1]] * 12)):
        root = tmp_path / field
        write_v1(idx, root)
        docs = json.loads((root / "documents.json").read_text())
        docs[field] = bad
        data = json.dumps(docs).encode()
        (root / "documents.json").write_bytes(data)
        m = json.loads((root / "manifest.json").read_text())
        import hashlib

        m["files"]["documents.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (root / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(IndexFormatError, match="documents.json"):
            HybridIndex.load(root, load_encoder=False)


# --------------------------------------------------------------------------- malformed manifests
def _mutations():
    def seg(m):
        return m["segments"][0]

    def rec(m, name="dense.npy"):
        return seg(m)["files"][name]

    yield "not an object", lambda m: [m]
    yield "format missing", lambda m: {k: v for k, v in m.items() if k != "format"}
    yield "format a list", lambda m: {**m, "format": ["bgem3.HybridIndex"]}
    yield "version string", lambda m: {**m, "format_version": "2"}
    yield "version true", lambda m: {**m, "format_version": True}
    yield "version float", lambda m: {**m, "format_version": 2.5}
    yield "dim string", lambda m: {**m, "dim": "8"}
    yield "dim negative", lambda m: {**m, "dim": -8}
    yield "dim huge", lambda m: {**m, "dim": 10**12}
    yield "model_name list", lambda m: {**m, "model_name": ["x"]}
    yield "vocab string", lambda m: {**m, "vocab_size": "50"}
    yield "channels string", lambda m: {**m, "channels": "dense"}
    yield "channels unknown", lambda m: {**m, "channels": ["dense", "sound"]}
    yield "channels empty", lambda m: {**m, "channels": []}
    yield "codec unknown", lambda m: {**m, "colbert_codec": "3bit"}
    yield "lexical kind unknown", lambda m: {**m, "lexical": {"kind": "magic", "config": {}}}
    yield "lexical not object", lambda m: {**m, "lexical": "learned_sparse"}
    yield "segments object", lambda m: {**m, "segments": {"a": 1}}
    yield "segment a number", lambda m: {**m, "segments": [1]}
    yield "segment path traversal", lambda m: (seg(m).update(name="../../etc"), m)[1]
    yield "rows string", lambda m: (seg(m).update(rows="12"), m)[1]
    yield "files a list", lambda m: (seg(m).update(files=[]), m)[1]
    yield "size as string", lambda m: (rec(m).update(bytes=str(rec(m)["bytes"])), m)[1]
    yield "size negative", lambda m: (rec(m).update(bytes=-1), m)[1]
    yield "sha missing", lambda m: (rec(m).pop("sha256"), m)[1]
    yield "dtype object", lambda m: (rec(m).update(dtype="object"), m)[1]
    yield "huge shape", lambda m: (rec(m).update(shape=[2**45, 8]), m)[1]
    yield "shape nested", lambda m: (rec(m).update(shape=[[12], 8]), m)[1]
    yield "count mismatch", lambda m: {**m, "count": 13}
    yield "count string", lambda m: {**m, "count": "12"}
    yield "uuid object", lambda m: {**m, "index_uuid": {}}
    yield "tombstones bad", lambda m: (seg(m).update(deleted={"file": "../x.npy", "bytes": 8, "sha256": "0" * 64}), m)[1]
    yield "extra file listed", lambda m: (seg(m)["files"].update({"evil.npy": rec(m)}), m)[1]
    yield "file record not object", lambda m: (seg(m)["files"].update({"dense.npy": 5}), m)[1]


MUTATIONS = list(_mutations())


def test_there_are_at_least_29_malformed_manifests():
    assert len(MUTATIONS) >= 29


@pytest.mark.parametrize("label,mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_malformed_manifest_raises_index_format_error(tmp_path, label, mutate):
    root = tmp_path / "idx"
    make().save(root)
    m = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(mutate(m)))
    with pytest.raises(IndexFormatError):
        HybridIndex.load(root, load_encoder=False, verify=False)


def test_deeply_nested_and_oversized_manifests(tmp_path, monkeypatch):
    root = tmp_path / "idx"
    make().save(root)
    (root / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IndexFormatError, match="nested too deeply|not a HybridIndex"):
        HybridIndex.load(root, load_encoder=False)
    monkeypatch.setattr(storage, "MAX_MANIFEST_BYTES", 1000)
    (root / "manifest.json").write_text(json.dumps({"format": "bgem3.HybridIndex", "pad": "x" * 5000}))
    with pytest.raises(IndexFormatError, match="larger than any manifest"):
        HybridIndex.load(root, load_encoder=False)


def test_npy_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path):
    root = tmp_path / "idx"
    make().save(root)
    path = seg_file(root, "dense.npy")
    data = path.read_bytes()
    header = data[:128].replace(b"(12, 8)", b"(4000000000000, 8)".ljust(7)[:7]) if False else None
    # rewrite the header with a huge first dimension, same file length, checksum fixed in the manifest
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 8)})
    forged = buf.getvalue() + data[len(data) - 12 * 8 * 4:]
    path.write_bytes(forged)
    m = json.loads((root / "manifest.json").read_text())
    import hashlib

    m["segments"][0]["files"]["dense.npy"].update(bytes=len(forged), sha256=hashlib.sha256(forged).hexdigest())
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="dense.npy"):
        HybridIndex.load(root, load_encoder=False)
    del header


# --------------------------------------------------------------------------- input breaks
def test_huge_token_id_without_vocab_size_costs_no_vocab_sized_memory():
    idx = HybridIndex(None, dim=4, vocab_size=None, colbert_codec="float32")
    big = 2**31 - 2
    idx.add_encoded(["a", "b"], ["A", "B"], None, np.eye(4, dtype=np.float32)[:2], [{big: 1.0}, {3: 0.5}],
                    [np.ones((1, 4), np.float32)] * 2)
    hits = idx.search_encoded(np.eye(4, dtype=np.float32)[1], {big: 2.0}, np.ones((1, 4), np.float32), k=2)
    assert hits[0].id == "a" and hits[0].sparse_score == pytest.approx(2.0)
    assert idx.memory_usage()["sparse_search_copy"] < 1000  # the postings, not a 2**31-column matrix
    with pytest.raises(ValueError, match="outside the vocabulary"):
        idx.add_encoded(["c"], ["C"], None, np.eye(4, dtype=np.float32)[:1], [{2**31 - 1: 1.0}],
                        [np.ones((1, 4), np.float32)])


def test_colbert_values_beyond_float16_are_refused_not_made_infinite():
    idx = HybridIndex(None, dim=4, colbert_codec="float16")
    with pytest.raises(ValueError, match="float16.*colbert_codec='float32'"):
        idx.add_encoded(["a"], ["A"], None, np.eye(4, dtype=np.float32)[:1], [{}], [np.full((1, 4), 70000.0, np.float32)])
    assert len(idx) == 0
    ok = HybridIndex(None, dim=4, colbert_codec="float32")
    ok.add_encoded(["a"], ["A"], None, np.eye(4, dtype=np.float32)[:1], [{}], [np.full((1, 4), 70000.0, np.float32)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_query_vectors_are_refused(bad):
    idx = make()
    dq, sq, cq = query(idx)
    d2 = dq.copy()
    d2[0] = bad
    with pytest.raises(ValueError, match="dense query.*NaN or infinity"):
        idx.search_encoded(d2, sq, cq)
    c2 = cq.copy()
    c2[0, 0] = bad
    with pytest.raises(ValueError, match="ColBERT query.*NaN or infinity"):
        idx.search_encoded(dq, sq, c2)
    with pytest.raises(ValueError, match="sparse query.*NaN or infinite"):
        idx.search_encoded(dq, {1: bad}, cq)


def test_extreme_weights_and_rrf_constants():
    idx = make()
    q = query(idx, 3)
    same = idx.search_encoded(*q, k=12, weights=(1.0, 1.0, 1.0), exhaustive=True)
    huge = idx.search_encoded(*q, k=12, weights=(1e308,) * 3, exhaustive=True)
    assert [h.id for h in huge] == [h.id for h in same]
    np.testing.assert_allclose([h.score for h in huge], [h.score for h in same], rtol=1e-12)
    assert all(np.isfinite(h.score) for h in huge)
    for rrf_k in (float("inf"), float("nan"), -1, 0, True):
        with pytest.raises(ValueError, match="rrf_k"):
            idx.search_encoded(*q, mode="rrf", rrf_k=rrf_k)
    for w in ("123", b"123", {"dense": 1}):
        with pytest.raises(ValueError, match="weights"):
            idx.search_encoded(*q, weights=w)


@pytest.mark.parametrize("where", ["ids", "texts", "metadata key", "metadata value"])
def test_lone_surrogates_are_refused_at_add(tmp_path, where):
    idx = make()
    bad = "bad\ud800"
    ids, texts, metas = ["x"], ["fine"], [{"k": "v"}]
    if where == "ids":
        ids = [bad]
    elif where == "texts":
        texts = [bad]
    elif where == "metadata key":
        metas = [{bad: 1}]
    else:
        metas = [{"k": [bad]}]
    field = {"ids": r"ids\[0\]", "texts": r"texts\[0\]"}.get(where, r"metadatas\[0\]")
    with pytest.raises(ValueError, match=field + ".*surrogate"):
        idx.add_encoded(ids, texts, metas, np.ones((1, 8), np.float32) / np.sqrt(8), [{}], [np.ones((1, 8), np.float32)])
    assert len(idx) == 12
    idx.save(tmp_path / "idx")  # and later saves still work


def test_cli_info_reads_the_manifest_and_verify_checks_everything(tmp_path, capsys):
    from bgem3.cli import main

    root = tmp_path / "idx"
    make().save(root)
    assert main(["info", "--index", str(root), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["passages"] == 12 and info["format_version"] == 2 and info["channels"] == ["dense", "lexical", "colbert"]
    assert info["verified"] and info["bytes_on_disk"] > 0
    path = seg_file(root, "dense.npy")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["info", "--index", str(root), "--verify"]) != 0
    assert "checksum" in capsys.readouterr().err


def test_cli_recovers_an_index_left_by_an_old_interrupted_swap(tmp_path, capsys):
    from test_index_persistence import write_v1

    from bgem3.cli import main

    idx = make()
    write_v1(idx, tmp_path / ".idx.old-1234abcd")  # bgem3 0.1 killed between its two renames
    # a read (info, search) renames nothing: it names the backup and the command that puts it back
    for cmd in (["info", "--index", str(tmp_path / "idx"), "--json"], ["search", "q", "--index", str(tmp_path / "idx")]):
        assert main(cmd) != 0
        assert ".idx.old-1234abcd" in capsys.readouterr().err
        assert not (tmp_path / "idx").exists() and (tmp_path / ".idx.old-1234abcd").is_dir()
    # the writer (`bgem3 index`) puts it back before anything else, even if the run then fails
    main(["index", str(tmp_path / "no-such-docs"), "--index", str(tmp_path / "idx"), "-q"])
    assert "recovered" in capsys.readouterr().err
    assert (tmp_path / "idx").is_dir() and not (tmp_path / ".idx.old-1234abcd").exists()
    assert main(["info", "--index", str(tmp_path / "idx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passages"] == 12
