"""The report's statistics on synthetic stores with known truth: 200 grids of GPT / nGPT x
4 / 1 K/V heads x 3 seeds written by tests/synthetic.py (seed noise, a per-seed effect shared by
every cell, one eval error per cell recorded as its standard error), ingested into one store and
analysed grid by grid as `ablate report` does."""
import numpy as np
import pytest

from ablate.report import stats
from ablate.report.analysis import analyse
from ablate.store import Store
from synthetic import write_seeded_grid

N_GRIDS = 200
SEEDS = [0, 1, 2]
COMPARE = {"baseline": {"arch": "gpt", "n_kv_head": None}, "group_by": []}
CELLS = [("gpt", 4), ("gpt", 1), ("ngpt", 4), ("ngpt", 1)]
VARIANT = {"n_kv_head=1": ("gpt", 1), "ngpt": ("ngpt", 4), "ngpt n_kv_head=1": ("ngpt", 1)}
NOISE = {"seed_sd": 0.01, "shared_sd": 0.02, "eval_se": 0.007}


def truth(interaction: float) -> dict:
    """True mean final losses: GQA +0.03, nGPT -0.05, and `interaction` more for GQA under nGPT."""
    return {("gpt", 4): 2.0, ("gpt", 1): 2.03, ("ngpt", 4): 1.95, ("ngpt", 1): 1.98 + interaction}


def grids(root, n: int, interaction: float, rng) -> list:
    """(analysis, {(cell index, seed): final loss written}) for n grids."""
    mean = truth(interaction)
    finals = [write_seeded_grid(root, f"g{g}", [({"arch": a, "n_head": 4, "n_kv_head": k, "max_iters": 100}, mean[a, k])
                                                for a, k in CELLS], SEEDS, rng, **NOISE) for g in range(n)]
    with Store(root / "ablate.duckdb") as store:
        store.ingest(root)
        return [(analyse(store, f"g{g}", COMPARE, parts=("paired", "effects")), finals[g]) for g in range(n)]


@pytest.fixture(scope="module")
def null_grids(tmp_path_factory):
    return grids(tmp_path_factory.mktemp("null") / "runs", N_GRIDS, 0.0, np.random.default_rng(22))


def test_paired_intervals_cover_the_true_difference(null_grids):
    """The issue's check: over 200 grids, the 95% intervals of the paired loss differences cover the
    true difference in 93-97% of them."""
    mean = truth(0.0)
    covered = [r.loss_lo <= mean[VARIANT[r.variant]] - mean["gpt", 4] <= r.loss_hi
               for a, _ in null_grids for r in a.paired.itertuples()]
    assert len(covered) == 3 * N_GRIDS
    assert 0.93 <= np.mean(covered) <= 0.97, np.mean(covered)


def test_the_pipeline_computes_exactly_the_paired_statistic(null_grids):
    """Store, ingest, best lr, pairing and the interval give exactly stats.mean_interval of the
    written per-seed differences with the recorded eval errors folded in (so the calibration of
    stats.py, tested on 4,000 draws per case, is the report's)."""
    for a, finals in null_grids[:20]:
        for r in a.paired.itertuples():
            i = CELLS.index(VARIANT[r.variant])
            direct = stats.mean_interval([finals[i, s] - finals[0, s] for s in SEEDS], np.sqrt(2) * NOISE["eval_se"])
            assert (r.loss_diff, r.loss_lo, r.loss_hi, r.loss_p) == pytest.approx(
                (direct.mean, direct.lo, direct.hi, direct.p), rel=1e-9, abs=1e-12)
            assert r.n_pairs == 3 and r.loss_verdict in (stats.SIGNIFICANT, stats.NOT_SIGNIFICANT)


def test_no_interaction_is_found_where_none_was_planted(null_grids):
    """GQA x arch planted at 0: the interaction row is significant at about the nominal 5% (200
    grids: a binomial s.d. of 1.5%; stats.py's level is pinned on 4,000 draws in test_stats), and
    the main effects' intervals cover their truth."""
    inter = [a.effects[a.effects.kind == "interaction"] for a, _ in null_grids]
    assert all(len(i) == 1 and i.factors.iloc[0] == "n_kv_head x arch" for i in inter)
    rate = np.mean([i.p.iloc[0] < 0.05 for i in inter])
    assert 0.01 <= rate <= 0.10, rate
    mains = {"ngpt vs gpt": -0.05, "n_kv_head=1 vs n_kv_head=4": 0.03}  # averaged over the other factor
    covered = [r.lo <= mains[r.effect] <= r.hi for a, _ in null_grids for r in a.effects.itertuples()
               if r.kind == "main"]
    assert len(covered) == 2 * N_GRIDS and 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_a_planted_interaction_is_found(tmp_path):
    """GQA costs 0.1 more under nGPT than under GPT: the row says so, in words, in (nearly) every grid."""
    found = grids(tmp_path / "runs", 30, 0.1, np.random.default_rng(23))
    rows = [a.effects[a.effects.kind == "interaction"].iloc[0] for a, _ in found]
    assert np.mean([r.verdict == stats.SIGNIFICANT for r in rows]) >= 0.9
    assert np.mean([r.lo <= 0.1 <= r.hi for r in rows]) >= 0.85
    assert abs(np.mean([r.estimate for r in rows]) - 0.1) < 0.01
    assert rows[0].words.startswith("n_kv_head=1 vs n_kv_head=4 changes the loss by +0.")
    assert rows[0].words.endswith("more under ngpt than under gpt")
