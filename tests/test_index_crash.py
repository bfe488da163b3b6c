"""Crash safety: a process saving (and compacting) an index is killed at random moments, 60 times;
after every kill the folder loads and holds exactly the last committed state or the one that
was being committed. The child is a fork of the test process (no interpreter start-up), so the
60 trials take a few seconds."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time

import numpy as np
import pytest

from bgem3 import HybridIndex

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")

DIM = 8


def state_digest(idx: HybridIndex) -> str:
    h = hashlib.sha256()
    for hit in idx.get(sorted(idx.ids)):
        h.update(f"{hit.id}\x00{hit.text}\x00{hit.metadata}\x01".encode())
    return h.hexdigest()[:16]


def mutate_and_save(root: str, seed: int, log_fd: int) -> None:
    """Child: load, then loop {add / delete / upsert / sometimes compact, announce, save, confirm}."""
    rng = np.random.default_rng(seed)
    idx = HybridIndex.load(root, load_encoder=False)
    step = 0
    while True:
        step += 1
        n = int(rng.integers(1, 30))
        dense = rng.normal(size=(n, DIM)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        ids = [f"s{seed}-{step}-{i}" for i in range(n)]
        if len(idx) and rng.random() < 0.3:
            ids[0] = idx.ids[int(rng.integers(0, len(idx)))]  # an upsert
        idx.add_encoded(ids, [f"t{step}"] * n, [{"step": step}] * n, dense,
                        [{int(rng.integers(0, 99)): 0.5} for _ in range(n)],
                        [rng.normal(size=(int(rng.integers(1, 6)), DIM)).astype(np.float32) for _ in range(n)])
        live = idx.ids
        if len(live) > 10 and rng.random() < 0.5:
            idx.delete(list(rng.choice(live, size=int(rng.integers(1, 6)), replace=False)))
        if rng.random() < 0.2:
            idx.compact()
        os.write(log_fd, f"B {state_digest(idx)}\n".encode())
        idx.save(root)
        os.write(log_fd, f"C {state_digest(idx)}\n".encode())


def test_killing_a_saving_process_at_random_moments_never_loses_the_last_commit(tmp_path):
    root = str(tmp_path / "idx")
    seed_idx = HybridIndex(None, model_name="crash", dim=DIM, colbert_codec="int8", vocab_size=100)
    seed_idx.add_encoded(["first"], ["first"], None, np.ones((1, DIM), np.float32) / np.sqrt(DIM), [{1: 1.0}],
                         [np.ones((2, DIM), np.float32)])
    seed_idx.save(root)
    committed = state_digest(HybridIndex.load(root, load_encoder=False))
    rnd = random.Random(0)
    trials, kills_mid_save = 60, 0
    for trial in range(trials):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(r)
            try:
                mutate_and_save(root, trial, w)
            finally:
                os._exit(0)
        os.close(w)
        time.sleep(rnd.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            log = f.read().splitlines()
        # the folder must hold the last confirmed state, or the one announced after it
        allowed = {committed}
        for line in log:
            kind, digest = line.split()
            if kind == "C":
                allowed = {digest}
            else:
                allowed = allowed | {digest}
        if log and log[-1].startswith("B"):
            kills_mid_save += 1
        loaded = HybridIndex.load(root, load_encoder=False, verify=True)
        got = state_digest(loaded)
        assert got in allowed, (trial, log[-3:])
        committed = got
    assert kills_mid_save >= 5  # the kills really land inside saves
    # what interrupted saves left behind (partial segments, replaced tombstones) goes with the next save
    final = HybridIndex.load(root, load_encoder=False)
    final.save(root)
    listed = {s.name for s in final._segments}
    assert set(os.listdir(os.path.join(root, "segments"))) == listed
    assert not [p for p in os.listdir(root) if p.startswith("manifest.json.tmp")]
    for seg in final._segments:
        tomb = [f for f in os.listdir(seg.folder) if f.startswith("deleted-")]
        assert len(tomb) == (1 if seg.record.get("deleted") else 0)
