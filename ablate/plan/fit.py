"""`ablate plan GRID --fit GIB`: does each cell's training step fit a GPU of GIB, per rank, and if
not, what is the cheapest change that makes it fit?

The changes, each a memory knob that never changes the math (MEMORY_KNOBS) or more GPUs, ranked
by what they cost in speed (COST, percent of step time, rough and stated):

    loss_chunk: 1024     3   the LM head + loss a chunk at a time: no extra FLOPs (x1.03-1.04 on CPU,
                             benchmarks/bench_knobs.py); the B x T x V logits never exist
    act_ckpt: selective  5   recomputes the pointwise ops in backward, keeps matmul and attention
                             outputs (x1.01 on CPU; memory-bound ops on a GPU: a few percent)
    strategy: fsdp       8   over the cell's own GPUs (world > 1): no extra FLOPs; all-gathers the
                             weights twice and reduce-scatters the gradients, 1.5x DDP's bytes,
                             overlapped with compute by FSDP2's prefetch
    act_ckpt: blocks     33  the forward again in backward: ~+33% of a step's FLOPs
    more GPUs            -   fsdp over 2, 4, 8 GPUs: no slower per token, but GPUs; ranked after
                             every change on the cell's own GPUs, fewest GPUs first

Combinations cost the sum of their parts; the first candidate, cheapest first, whose per-rank
peak fits is the answer. A cell "fits" when its peak takes at most HEADROOM (90%) of the GPU:
the other 10% is for what tensor accounting does not see, the CUDA context (~0.3-0.5 GiB) and
the caching allocator's rounding and fragmentation (peak_reserved over peak tensors). The peak
is the analytical estimate (ablate.core.estimate, within 10% of the simulation), or with
--memory one simulated step per candidate shape (simcache, in rounds: the first candidate of
every cell, then the next for the cells still without an answer). Torch-free: simulations run
through the Measure the caller hands over.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

from ablate.core import estimate, plugin_keys
from ablate.core.config import RunConfig
from ablate.core.errors import value_text
from ablate.plan import simcache
from ablate.plan.plan import memory_unit
from ablate.plan.simcache import HEADROOM, Measure

GIB = 2 ** 30
LOSS_CHUNK = 1024  # tokens per chunk of the fused head: small next to 8k-token micro-batches, large enough for a GEMM
COST = {"loss_chunk": 3, "selective": 5, "fsdp": 8, "blocks": 33}  # rough percent of step time, see above
MORE_GPUS = (2, 4, 8)
CKPT_LEVEL = {"none": 0, "selective": 1, "blocks": 2}


class Candidate(NamedTuple):
    changes: dict  # RunConfig keys to set
    world: int     # the job's GPUs
    cost: int      # percent of step time, COST summed

    def label(self, world: int) -> str:
        parts = [f"{k}: {value_text(v)}" for k, v in self.changes.items() if not (k == "strategy" and self.world > world)]
        if self.world > world:
            parts.append(f"fsdp over {self.world} GPUs")
        return " + ".join(parts) or "none"


def candidates(c: RunConfig, world: int) -> list[Candidate]:
    """Every change to try for cell c on a job of `world` GPUs, cheapest first (the cell as it is
    not included). A knob already at least as strong in the cell is not offered again."""
    # a chunk as large as the micro-batch saves nothing
    chunk = [{}] if c.loss_chunk or c.batch_size * c.context <= LOSS_CHUNK else [{}, {"loss_chunk": LOSS_CHUNK}]
    ckpt = [{}] + [{"act_ckpt": m} for m in ("selective", "blocks") if CKPT_LEVEL[m] > CKPT_LEVEL[c.act_ckpt]]
    own = [{}] + ([{"strategy": "fsdp"}] if c.strategy != "fsdp" and world > 1 else [])
    out = []
    for parts in itertools.product(chunk, ckpt, own):
        changes = {k: v for p in parts for k, v in p.items()}
        if changes:
            out.append(Candidate(changes, world, _cost(changes)))
    for more in (w for w in MORE_GPUS if w > world and c.grad_accum % w == 0):
        for parts in itertools.product(chunk, ckpt):
            changes = {k: v for p in parts for k, v in p.items()}
            changes = {**changes, "strategy": "fsdp"} if c.strategy != "fsdp" else changes
            out.append(Candidate(changes, more, _cost(changes)))
    return sorted(out, key=lambda x: (x.world, x.cost, len(x.changes)))  # at equal cost, fewer changes first


def _cost(changes: dict) -> int:
    return sum(COST[v if k == "act_ckpt" else ("fsdp" if k == "strategy" else k)] for k, v in changes.items())


def fits(total: float, capacity_gib: float) -> bool:
    return total <= HEADROOM * capacity_gib * GIB


def advise(cells, gpus: int, world: int, capacity_gib: float, simulate: bool = False, measure: Measure | None = None,
           log=None) -> dict:
    """{run_id: {"peak", "fits", "source", ["change", "world", "cost", "peak_after"] | ["error"]}}:
    each cell's per-rank peak as it is, and when it does not fit the cheapest candidate that
    does ("change": None when none of them does). simulate: from simulated steps (measure.step,
    the cache); else the formula (a cell that uses a plugin is simulated either way)."""
    configs = {cell.run_id: cell.config for cell in cells}
    asis = _peaks({rid: (c, world) for rid, c in configs.items()}, gpus, simulate, measure, log)
    out, left = {}, {}
    for rid, (peak, source) in asis.items():
        out[rid] = {"peak": peak, "fits": peak is not None and fits(peak, capacity_gib), "source": source}
        if peak is None:
            out[rid]["error"] = source
        elif not out[rid]["fits"]:
            out[rid]["change"] = None  # until a candidate fits
            left[rid] = iter(candidates(configs[rid], world))
    while left:  # one round: the next candidate of every cell still without an answer
        ask = {rid: cand for rid, it in left.items() for cand in [next(it, None)]}
        for rid in [rid for rid, cand in ask.items() if cand is None]:  # none of its candidates fits
            del left[rid], ask[rid]
        peaks = _peaks({rid: (configs[rid].replace(**cand.changes), cand.world) for rid, cand in ask.items()}, gpus,
                       simulate, measure, log)
        for rid, cand in ask.items():
            peak = peaks[rid][0]
            if peak is not None and fits(peak, capacity_gib):
                out[rid].update(change=cand.changes, world=cand.world, cost=cand.cost, label=cand.label(world),
                                peak_after=peak)
                del left[rid]
    return out


def _peaks(configs: dict, gpus: int, simulate: bool, measure: Measure | None, log) -> dict:
    """{name: (peak bytes or None, source or error)} for {name: (RunConfig, world)}."""
    out, sim = {}, {}
    for name, (c, w) in configs.items():
        if simulate or (c.plugins and plugin_keys.used(c)):
            sim[name] = (c.to_dict(), gpus, w)
        else:
            out[name] = (estimate.memory_breakdown(c, w)["total"], "estimate")
    if sim:
        results = simcache.simulate_configs(sim, step=measure and measure.step, log=log)
        for name in sim:
            r = results.get(name) or {"error": "not simulated (no Measure, not cached)"}
            out[name] = (r["total"], "simulated") if "total" in r else (None, r["error"])
    return out


def format_fit(grid, rows: list[dict], advice: dict, capacity_gib: float, world: int, simulated: bool) -> str:
    """The --fit table: per cell its peak per rank, whether it fits, the cheapest change that does."""
    keys = grid.varied_keys
    unit, scale = memory_unit([a.get(k) for a in advice.values() for k in ("peak", "peak_after")])
    head = ["run_id", *keys, f"peak/GPU ({unit})", "fits", "cheapest change that fits", "then", "slower"]
    body = []
    for r in rows:
        a = advice.get(r["run_id"], {})
        peak = "n/a" if a.get("peak") is None else f"{a['peak'] / scale:.1f}"
        if "error" in a:
            answer, then, slower = a["error"], "", ""
        elif a["fits"]:
            answer, then, slower = "-", "", ""
        elif a.get("change") is None:
            answer, then, slower = f"none up to fsdp over {max(MORE_GPUS)} GPUs with every knob", "", ""
        else:
            answer, then = a["label"], f"{a['peak_after'] / scale:.1f}"
            slower = f"~{a['cost']}%" + (f", {a['world']} GPUs" if a["world"] > world else "")
        body.append([r["run_id"], *[value_text(r["varied"].get(k)) for k in keys], peak,
                     "yes" if a.get("fits") else "no", answer, then, slower])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    devices = sorted({s["device"] for r in rows for s in [r.get("simulated") or {}] if "device" in s})
    how = (f"one simulated step per shape (FakeTensorMode, {', '.join(devices) or 'cpu'} dispatch)" if simulated
           else "the analytical estimate (within 10% of the simulation; --memory simulates)")
    out += ["", f"fit: {unit} per GPU (per rank) at the peak of one training step, from {how}, on a job of {world} "
                f"GPU{'s' * (world > 1)}; fits: within {HEADROOM:.0%} of {capacity_gib:g} GiB "
                f"({HEADROOM * capacity_gib:.3g} GiB: the rest for the CUDA context and the allocator's rounding)",
            "cheapest change: the first that fits, by the step time it costs (rough: loss_chunk ~3%, act_ckpt "
            "selective ~5%, fsdp on the cell's GPUs ~8%, act_ckpt blocks ~33%: a second forward), then more GPUs "
            "(fsdp over 2, 4, 8), fewest first; then: the peak per GPU with it"]
    if simulated and "cpu" in devices and any(simcache.target_device(r["config"], grid.resources.gpus) == "cuda"
                                               for r in rows):
        out.append("this torch is a CPU-only build: GPU cells were simulated with CPU kernels and CPU autocast")
    return "\n".join(out)
