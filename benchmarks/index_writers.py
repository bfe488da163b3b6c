"""Many writers, one index folder, with SIGKILLs: the long version of the stress test in
``tests/test_index_concurrency.py``.

``--writers`` processes loop {load the folder, add ``--rows`` new distinct ids, save}; after each
save returns they append the ids to their acknowledgement file (fsynced). Every ``--kill-every``
seconds one writer, chosen at random, gets SIGKILL (wherever it is: mid-save, holding the lock,
mid-spill) and a new one replaces it. ``--readers`` processes loop {load, search}, counting
failures. At the end the folder must load with ``verify=True`` and pass ``verify()``, and every
acknowledged id must be in it. Prints (and with ``--out`` writes) one JSON summary::

    flock /tmp/bench.lock python benchmarks/index_writers.py --writers 6 --readers 2 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgem3 import HybridIndex  # noqa: E402
from bgem3.index.persistence import SaveConflict  # noqa: E402

DIM = 16


def _vecs(rng, n):
    v = rng.normal(size=(n, DIM)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _add(idx, ids, rng):
    idx.add_encoded(ids, [f"text {i}" for i in ids], [{"w": i.split("-")[0]} for i in ids], _vecs(rng, len(ids)),
                    [{int(t): 1.0 for t in rng.integers(0, 200, size=4)} for _ in ids],
                    [_vecs(rng, int(rng.integers(2, 8))) for _ in ids])


def writer(folder: str, name: str, rows: int, ack_path: str, spill_every: int) -> None:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    r = 0
    with open(ack_path, "a") as ack:
        while True:
            idx = HybridIndex.load(folder, load_encoder=False)
            ids = [f"{name}-{r}-{j}" for j in range(rows)]
            _add(idx, ids, rng)
            if spill_every and r % spill_every == spill_every - 1:
                idx.spill(folder)  # an uncommitted segment that other writers' cleanups must leave alone
                more = [f"{name}-{r}-s{j}" for j in range(rows)]
                _add(idx, more, rng)
                ids += more
            try:
                idx.save(folder)
            except SaveConflict:  # distinct ids: never expected; counted by the parent as a failure
                ack.write("CONFLICT\n")
                ack.flush()
                continue
            ack.write("\n".join(ids) + "\n")
            ack.flush()
            os.fsync(ack.fileno())
            r += 1


def reader(folder: str, stop, out_path: str) -> None:
    rng = np.random.default_rng(os.getpid())
    loads = fails = 0
    errors: list[str] = []
    while not stop.is_set():
        try:
            idx = HybridIndex.load(folder, load_encoder=False)
            idx.search_encoded(_vecs(rng, 1)[0], {1: 1.0}, _vecs(rng, 3), k=5)
            loads += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            fails += 1
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    Path(out_path).write_text(json.dumps({"loads": loads, "failures": fails, "errors": errors[:5]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=None)
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--kill-every", type=float, default=1.0)
    ap.add_argument("--spill-every", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import tempfile

    work = Path(args.folder or tempfile.mkdtemp(prefix="bgem3-writers-"))
    folder = str(work / "idx")
    acks = work / "acks"
    acks.mkdir(parents=True, exist_ok=True)
    seed = HybridIndex(None, model_name="writers", dim=DIM, vocab_size=256)
    _add(seed, ["seed"], np.random.default_rng(0))
    seed.save(folder)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    readers = [ctx.Process(target=reader, args=(folder, stop, str(work / f"reader{i}.json")))
               for i in range(args.readers)]
    for p in readers:
        p.start()
    rnd = random.Random(1)
    n_started = 0

    def start_writer():
        nonlocal n_started
        name = f"w{n_started}"
        n_started += 1
        p = ctx.Process(target=writer, args=(folder, name, args.rows, str(acks / f"{name}.txt"), args.spill_every))
        p.start()
        return p

    writers = [start_writer() for _ in range(args.writers)]
    kills = 0
    t_end = time.monotonic() + args.seconds
    writer_failures = 0
    while time.monotonic() < t_end:
        time.sleep(rnd.uniform(0.5, 1.5) * args.kill_every)
        for j, p in enumerate(writers):  # a writer that died by itself (an exception) is a failure
            if p.exitcode is not None:
                writer_failures += 1
                writers[j] = start_writer()
        i = rnd.randrange(len(writers))
        os.kill(writers[i].pid, signal.SIGKILL)
        writers[i].join()
        kills += 1
        writers[i] = start_writer()
    for p in writers:  # the end: every writer killed too (wherever it is)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    stop.set()
    for p in readers:
        p.join(30)
    final = HybridIndex.load(folder, load_encoder=False, verify=True)
    final.verify()
    present = set(final.ids)
    acked: set[str] = set()
    conflicts = 0
    for f in acks.iterdir():
        for line in f.read_text().splitlines():
            if line == "CONFLICT":
                conflicts += 1
            elif line:
                acked.add(line)
    rstats = [json.loads((work / f"reader{i}.json").read_text()) for i in range(args.readers)]
    leftovers = sorted(set(os.listdir(os.path.join(folder, "segments"))) - {s.name for s in final._segments})
    summary = {
        "writers_at_once": args.writers, "writer_processes": n_started, "sigkills": kills,
        "seconds": args.seconds, "rows_per_save": args.rows, "acknowledged_rows": len(acked),
        "rows_in_index": len(present), "lost_rows": len(acked - present), "conflicts": conflicts,
        "writer_failures": writer_failures,
        "reader_loads": sum(r["loads"] for r in rstats), "reader_failures": sum(r["failures"] for r in rstats),
        "reader_errors": [e for r in rstats for e in r["errors"]][:5],
        "verify": "ok", "uncommitted_segments_left": len(leftovers), "load": os.getloadavg(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    if summary["lost_rows"] or summary["reader_failures"] or conflicts or writer_failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
