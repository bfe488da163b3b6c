"""Which dense path a search takes (issue 25): by estimated cost (``bgem3.index.search.dense_path``)
unless the user set ``exact_dense_rows``, and within the recall contract when it is the Hamming one.

The former rule was a fixed row count: an exact scan of every stored row up to 50,000 eligible
rows, 22 of a 36 ms query at 10,000 float16 rows (docs/benchmarks_index.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import bgem3.index.hybrid as hybrid_mod
from bgem3 import HybridIndex
from bgem3.index.search import COST_RULE_ROWS, dense_costs, dense_path

DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def calls(monkeypatch):
    """Records the Hamming path's calls (its ``probe`` argument) and lets them run."""
    seen: list = []
    real = hybrid_mod.dense_candidates

    def spy(segs, bases, q, eligible, n, shortlist, probe, table):
        seen.append(probe)
        return real(segs, bases, q, eligible, n, shortlist, probe, table)

    monkeypatch.setattr(hybrid_mod, "dense_candidates", spy)
    return seen


def index(n: int, codec: str = "float16", **kw) -> tuple[HybridIndex, np.ndarray]:
    """``n`` passages around 8 topics (500 a topic at 4,000, as the 1M benchmark's)."""
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((8, DIM))[rng.integers(0, 8, n)] + 0.6 * rng.standard_normal((n, DIM)))
    idx = HybridIndex(None, dim=DIM, channels=["dense"], dense_codec=codec, **kw)
    idx.add_encoded([f"d{i}" for i in range(n)], ["-"] * n, None, x)
    return idx, x


def test_the_cost_rule_takes_the_hamming_path_where_the_fixed_row_count_scanned_exactly(calls):
    """4,000 float16 rows: the former rule (exact up to 50,000) scanned every row; the cost rule
    takes the Hamming path (every row's bits, the lists' recall loss is not paid below 50,000)."""
    idx, x = index(4000)
    assert idx.exact_dense_rows is None
    idx.search_encoded(x[0], k=10, candidates=10)
    assert calls == [1.0]


def test_the_hamming_path_keeps_the_exact_top10(calls):
    idx, x = index(4000)
    exact = HybridIndex(None, dim=DIM, channels=["dense"], dense_codec="float16", exact_dense_rows=10**6)
    exact.add_encoded([f"d{i}" for i in range(len(x))], ["-"] * len(x), None, x)
    rng = np.random.default_rng(2)  # queries near passages (as real queries are near their answers)
    qs = unit(x[rng.choice(len(x), 40, replace=False)] + 0.5 * rng.standard_normal((40, DIM)) / DIM**0.5)
    rec = []
    for q in qs:
        got = [h.id for h in idx.search_encoded(q, k=10, candidates=10)]
        ref = [h.id for h in exact.search_encoded(q, k=10, candidates=10)]
        rec.append(len(set(got) & set(ref)) / 10)
        got_scores = {h.id: h.dense_score for h in idx.search_encoded(q, k=10, candidates=10)}
        for h in exact.search_encoded(q, k=10, candidates=10):  # a score is always the exact one
            if h.id in got_scores:
                assert got_scores[h.id] == pytest.approx(h.dense_score, abs=1e-6)
    assert len(calls) == 80  # every search of idx took the Hamming path
    assert float(np.mean(rec)) >= 0.99, rec


def test_an_index_no_larger_than_the_shortlist_is_scanned_exactly(calls):
    idx, x = index(900)
    idx.search_encoded(x[0], k=10, candidates=10)  # shortlist 1,000 would rescore every row anyway
    assert calls == []
    assert not dense_path([], 1000, 1000, 1024, "float16")


def test_the_users_exact_dense_rows_is_the_fixed_rule_exactly(calls, tmp_path):
    idx, x = index(4000, exact_dense_rows=50_000)
    idx.search_encoded(x[0], k=10, candidates=10)
    assert calls == []  # exact, as the user asked, although the Hamming path would be cheaper
    idx.exact_dense_rows = 1
    idx.search_encoded(x[0], k=10, candidates=10)
    assert calls == [idx.dense_probe]  # the fixed rule's Hamming path probes the lists as set
    idx.save(tmp_path / "i")
    back = HybridIndex.load(tmp_path / "i", load_encoder=False)
    assert back.exact_dense_rows is None  # not saved: the cost rule again
    back.exact_dense_rows = 10_000
    calls.clear()
    back.search_encoded(x[0], k=10, candidates=10)
    assert calls == []
    with pytest.raises(ValueError, match="exact_dense_rows"):
        HybridIndex(None, dim=DIM, channels=["dense"], exact_dense_rows=0)


def test_a_dense_probe_the_user_set_is_used_on_the_cost_rules_path(calls):
    idx, x = index(4000, dense_probe=0.3)
    idx.search_encoded(x[0], k=10, candidates=10)
    idx.dense_probe = 0.2  # set, even to the default's value: the user's
    idx.search_encoded(x[0], k=10, candidates=10)
    idx.search_encoded(x[0], k=10, candidates=10, dense_probe=0.5)
    assert calls == [0.3, 0.2, 0.5]
    fresh, _ = index(2000)
    assert fresh.dense_probe == 0.2  # the default's value, unset


def test_the_costs_follow_the_bytes_each_path_reads():
    # float16 rows cost more to scan exactly than float32 ones (converted first); the Hamming
    # path's rescoring is bounded by the shortlist, its scan by dim / 8 bytes a row
    e16, h16 = dense_costs(10_000, 10_000, 1000, 1024, "float16")
    e32, h32 = dense_costs(10_000, 10_000, 1000, 1024, "float32")
    assert e16 > e32 and h16 > h32 and h16 < e16
    e, h = dense_costs(100_000, 100_000, 1000, 1024, "float16")
    assert e / e16 == pytest.approx(10) and h / h16 < 3
    assert dense_path([], COST_RULE_ROWS + 1, 1000, 8, "float32")  # above: the Hamming path always
