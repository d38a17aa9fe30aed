"""What the plan knows from runs that finished: throughput per shape, and the noise a cell's numbers
will carry, before any compute is spent. Read from the run dirs (summary.json, config.json), never
the store: the plan stays light (no DuckDB, no pandas, no torch).

Eval noise. An eval scores `eval_iters` batches of `batch_size` fixed windows of `context` tokens;
its standard error is sd(batch means) / sqrt(eval_iters) = sigma_w / sqrt(eval_iters * batch_size),
where sigma_w is the spread of one window's mean loss. sigma_w is a property of the data, the
tokenizer and the context far more than of the model, so one finished run of the same data and
context measures it for every cell: sigma_w = se * sqrt(eval_iters * batch_size). With none, a prior
(PRIOR below), marked as one. The report reads a gap between two cells under 2 sqrt(se_1^2 + se_2^2)
as "within eval noise" (ablate/report/speedup.py), so that is the smallest gap a grid can show.

Seed noise. Runs of the same cell (the config without its seed) that finished with different seeds,
in any grid, give the seed spread of the final val loss.
"""
from __future__ import annotations

import glob
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ablate.core import plugin_keys
from ablate.core.rundir import CONFIG, EVALS, SUMMARY, read_json, read_jsonl
from ablate.store.schema import cell_id

# the fields that decide throughput: equal shape + equal device => comparable tokens/s (and the
# plugins a cell uses, with their keys)
THROUGHPUT_SHAPE = ("arch", "n_layer", "n_head", "n_embd", "n_kv_head", "share_attn", "window", "context",
                    "vocab_size", "batch_size", "dtype", "param_dtype", "compile", "attn_backend")
# sigma_w^2 = doc^2 + tok^2 / context, by tokenizer: tok is a token's own spread of loss, doc the
# spread of whole windows' difficulty that no context averages away. char: fitted to the
# quickstart's measured 0.11-0.13 (median 0.117) at T = 128 (Shakespeare); gpt2: a rough prior for
# web text (documents differ more than plays), replaced by the measured figure after one run.
PRIOR = {"char": (1.25, 0.05), "gpt2": (2.5, 0.25)}
# the final val loss gap a grid hopes to see when its power: section names none: 1% of the final
# val loss (a small architecture effect), measured by finished runs of the same data and context,
# else half of ln(vocab) (a rough guess at where a short run ends)
SMALLEST_EFFECT = 0.01


@dataclass(frozen=True)
class Finished:
    """A run that ended done: its config and summary.json."""
    config: dict
    summary: dict


def finished_runs(root: Path) -> list[Finished]:
    """The done runs of every grid under root, oldest first (each run dir once, even when other
    grids link to it)."""
    out, seen = [], set()
    for path in sorted(glob.glob(str(root / "*" / "*" / SUMMARY)), key=_mtime):
        real = os.path.realpath(os.path.dirname(path))
        summary = read_json(path) or {}
        if real in seen or not isinstance(summary, dict) or summary.get("state") != "done":
            continue
        seen.add(real)
        config = (read_json(Path(path).parent / CONFIG) or {}).get("config")
        if isinstance(config, dict):
            if "final_val_loss_se" not in summary:  # a run from before summary.json had it: its last eval's
                evals = read_jsonl(Path(path).parent / EVALS)
                summary = {**summary, "final_val_loss_se": evals[-1].get("val_loss_se") if evals else None}
            out.append(Finished(config, summary))
    return out


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # removed while we list: sorts first, then reads as nothing
        return 0.0


# ---- throughput

def _shape(cfg: dict) -> tuple:
    used = json.dumps(plugin_keys.identity(cfg), sort_keys=True, default=str) if cfg.get("plugins") else None
    return (*(cfg.get(k) for k in THROUGHPUT_SHAPE), *([used] if used else []))


def throughput(runs: list[Finished]) -> dict:
    """tokens/s of finished runs, newest wins: {(shape, device type): (tokens/s, device name)}."""
    return {(_shape(r.config), r.summary.get("device")): (r.summary["tokens_per_s"], r.summary.get("device_name"))
            for r in runs if _positive(r.summary.get("tokens_per_s"))}


def known_throughput(measured: dict, config: dict, gpus: int):
    """The measured (tokens/s, device name) for a cell: same shape, same device type (the
    config's device; for `auto`, cuda when the grid asks for GPUs, else whichever was measured)."""
    shape, device = _shape(config), config["device"]
    if device == "auto":
        device = "cuda" if gpus else None
    if device is not None:
        return measured.get((shape, device))
    return measured.get((shape, "cuda")) or measured.get((shape, "cpu"))


# ---- noise

def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def data_key(config: dict) -> tuple:
    """What sigma_w depends on: the data (by content), its tokenizer, the window length."""
    return config.get("dataset"), config.get("data_id"), config.get("tokenizer"), config.get("context")


def windows(config: dict) -> int:
    """Val windows one eval scores."""
    return int(config.get("eval_iters") or 0) * int(config.get("batch_size") or 0)


def prior_sigma(config: dict) -> float:
    tok, doc = PRIOR.get(config.get("tokenizer"), PRIOR["gpt2"])
    return math.sqrt(doc ** 2 + tok ** 2 / max(1, int(config.get("context") or 1)))


@dataclass(frozen=True)
class Expected:
    """A cell's expected noise: its eval's standard error (measured: from `runs` finished runs of the
    same data and context; else a prior) and the seed spread of its final val loss (None until two
    seeds of the cell finished)."""
    eval_se: float
    measured: bool
    runs: int
    seed_sd: float | None = None
    seeds: int = 0
    final_loss: float | None = None  # median final val loss of finished runs of the same data and context

    def as_row(self) -> dict:
        """The plan row's fields: eval_se_runs 0 = the prior."""
        return {"eval_se": self.eval_se, "eval_se_runs": self.runs if self.measured else 0,
                "seed_sd": self.seed_sd, "seed_sd_runs": self.seeds or None, "expected_final_loss": self.final_loss}


class Noise:
    """The noise book of a runs/ tree: sigma_w per data key, final losses per cell."""

    def __init__(self, runs: list[Finished]):
        sigmas: dict = {}
        losses: dict = {}
        finals: dict = {}
        for r in runs:
            se, n = r.summary.get("final_val_loss_se"), windows(r.config)
            if _positive(se) and n > 1:
                sigmas.setdefault(data_key(r.config), []).append(se * math.sqrt(n))
            loss = r.summary.get("final_val_loss")
            if _positive(loss):
                losses.setdefault(cell_id(r.config), {})[r.config.get("seed")] = float(loss)
                finals.setdefault(data_key(r.config), []).append(float(loss))
        self.sigma = {k: (statistics.median(v), len(v)) for k, v in sigmas.items()}
        self.seed_losses = {k: list(v.values()) for k, v in losses.items() if len(v) > 1}
        self.final = {k: statistics.median(v) for k, v in finals.items()}

    def expected(self, config: dict) -> Expected:
        sigma, n = self.sigma.get(data_key(config), (None, 0))
        se = (sigma if sigma else prior_sigma(config)) / math.sqrt(max(1, windows(config)))
        seeds = self.seed_losses.get(cell_id(config)) if self.seed_losses else None
        return Expected(se, sigma is not None, n, statistics.stdev(seeds) if seeds else None, len(seeds or ()),
                        self.final.get(data_key(config)))


def noise_threshold(eval_se: float) -> float:
    """The smallest gap between two cells with this eval noise that the report does not call
    'within eval noise': 2 sqrt(se^2 + se^2)."""
    return 2 * math.sqrt(2) * eval_se


def hoped_effect(row: dict, detect: float | None) -> float:
    """The final val loss gap a cell's grid hopes to see: power: detect, else SMALLEST_EFFECT of its
    expected final loss."""
    if detect:
        return detect
    loss = row.get("expected_final_loss") or math.log(max(2, row["config"].get("vocab_size") or 50304)) / 2
    return SMALLEST_EFFECT * loss


def noise_warnings(path, rows: list[dict], detect: float | None) -> list[str]:
    """Lines for a grid whose eval noise would swallow the effect it hopes to see (hoped_effect),
    whose evals record no standard error, or whose cells' measured seed spread exceeds that
    effect while it runs one seed per cell."""
    named = "power: detect" if detect else "1% of the final val loss; power: detect names yours"
    out = []
    worst = max(rows, key=lambda r: noise_threshold(r["eval_se"]) / hoped_effect(r, detect), default=None)
    if worst is not None and noise_threshold(worst["eval_se"]) > hoped_effect(worst, detect):
        c, effect = worst["config"], hoped_effect(worst, detect)
        sigma = worst["eval_se"] * math.sqrt(windows(c))
        need = math.ceil((2 * math.sqrt(2) * sigma / effect) ** 2 / max(1, c["batch_size"]))
        source = (f"measured by {worst['eval_se_runs']} finished runs" if worst["eval_se_runs"] else
                  f"a prior: no finished run of {c['dataset']} ({c['tokenizer']}) at context {c['context']} yet")
        out.append(f"{path}: eval noise: eval_iters {c['eval_iters']} x batch_size {c['batch_size']} = {windows(c)} "
                   f"windows give an eval standard error of {worst['eval_se']:.2g} ({source}), so the report calls "
                   f"a gap under {noise_threshold(worst['eval_se']):.2g} 'within eval noise': more than the "
                   f"{effect:.2g} this grid hopes to see ({named}); eval_iters: {need} would resolve it")
    single = [r for r in rows if r["config"].get("eval_iters") == 1]
    if single:
        out.append(f"{path}: eval_iters 1 ({len(single)} cells): an eval of one batch records no standard error, "
                   "so the report cannot tell a gap from eval noise; use 2 or more")
    noisy = [r for r in rows if r["seed_sd"] is not None and r["seed_sd"] > hoped_effect(r, detect)]
    if noisy and len({cell_id(r["config"]) for r in rows}) == len(rows):  # one seed per cell: hash only then
        r = max(noisy, key=lambda r: r["seed_sd"])
        out.append(f"{path}: seed noise: finished seeds of {len(noisy)} of these cells spread by up to "
                   f"{r['seed_sd']:.2g} (s.d. of final val loss, {r['seed_sd_runs']} seeds of {r['run_id']}'s cell), "
                   f"more than the {hoped_effect(r, detect):.2g} this grid hopes to see, and it runs one seed per cell: "
                   "ablate plan GRID --seeds-for GAP says how many seeds would tell")
    return out
