"""The GPU check's verdicts and its markdown: the targets (pass / miss, never asserted) and one
table of the benchmark cells, followed by short lists for the targets, tests, kernels, resume
and stages."""
from __future__ import annotations

GIB = 2 ** 30


def ratios(cells: list[dict]) -> None:
    """nGPT/GPT step time and measured/estimated peak, in place, for every cell that has them."""
    ms = {(c["ctx"], c["tag"], c["backend"], c["compiled"], c["arch"]): c.get("ms_per_step") for c in cells}
    for c in cells:
        gpt = ms.get((c["ctx"], c["tag"], c["backend"], c["compiled"], "gpt"))
        if c["arch"] == "ngpt" and c.get("ms_per_step") and gpt:
            c["ngpt_over_gpt"] = c["ms_per_step"] / gpt
        if c.get("peak_alloc") and c.get("est_peak"):
            c["peak_over_est"] = c["peak_alloc"] / c["est_peak"]
        if c.get("peak_alloc") and c.get("sim_peak"):
            c["peak_over_sim"] = c["peak_alloc"] / c["sim_peak"]


# (what, which cells, metric, test, threshold text)
TARGETS = (
    ("GPT MFU (causal) >= 50% at 124M / 1k, compiled",
     lambda c: c["arch"] == "gpt" and c["ctx"] == "1k" and c["compiled"] and not c["tag"], "mfu_causal",
     lambda v: v >= 0.50, ">= 0.50"),
    ("causal MFU >= 40% at 8k, compiled",
     lambda c: c["ctx"] == "8k" and c["compiled"] and not c["tag"], "mfu_causal", lambda v: v >= 0.40, ">= 0.40"),
    ("nGPT / GPT step time <= 1.08, compiled",
     lambda c: c["arch"] == "ngpt" and c["compiled"], "ngpt_over_gpt", lambda v: v <= 1.08, "<= 1.08"),
    ("measured peak allocated within 10% of the plan's estimate",
     lambda c: True, "peak_over_est", lambda v: 0.9 <= v <= 1.1, "0.90 .. 1.10"),
)


def targets(cells: list[dict]) -> list[dict]:
    """One verdict per target and cell that measured the target's metric; 'n/a' when none did."""
    ratios(cells)
    out = []
    for what, which, metric, ok, threshold in TARGETS:
        rows = [{"target": what, "cell": c["name"], "metric": metric, "value": c[metric], "threshold": threshold,
                 "result": "pass" if ok(c[metric]) else "miss"}
                for c in cells if which(c) and c.get(metric) is not None]
        out += rows or [{"target": what, "metric": metric, "threshold": threshold, "result": "n/a",
                         "note": "no cell measured it (no CUDA device, an unknown peak FLOP/s, or the cell did not run)"}]
    return out


def _f(v, fmt: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


COLUMNS = (  # header, cell -> text
    ("cell", lambda c: c["name"]),
    ("T x B", lambda c: f"{c['context']} x {c['batch_size']}"),
    ("kernel", lambda c: c.get("attn_kernel") or c.get("attn_backend") or c["backend"]),
    ("ms/step", lambda c: _f(c.get("ms_per_step"), ".1f")),
    ("tokens/s", lambda c: _f(c.get("tokens_per_s"), ",.0f")),
    ("MFU causal", lambda c: _f(c.get("mfu_causal"), ".1%")),
    ("MFU nanoGPT", lambda c: _f(c.get("mfu_nanogpt"), ".1%")),
    ("nGPT/GPT", lambda c: _f(c.get("ngpt_over_gpt"), ".3f")),
    ("peak alloc GiB", lambda c: _f(c.get("peak_alloc"), ".2f", 1 / GIB)),
    ("reserved GiB", lambda c: _f(c.get("peak_reserved"), ".2f", 1 / GIB)),
    ("estimate GiB", lambda c: _f(c.get("est_peak"), ".2f", 1 / GIB)),
    ("meas/est", lambda c: _f(c.get("peak_over_est"), ".2f")),
    ("simulated GiB", lambda c: _f(c.get("sim_peak"), ".2f", 1 / GIB) if not c.get("sim_error") else "failed"),
    ("meas/sim", lambda c: _f(c.get("peak_over_sim"), ".2f")),
    ("first step s", lambda c: _f(c.get("first_step_s"), ".1f") + (" (warm)" if c.get("warmed") else "")),
    ("status", lambda c: c.get("status", "-") + (f": {c['error']}" if c.get("error") else "")),
)


def table(cells: list[dict]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(esc(get(c)) for _, get in COLUMNS) + " |" for c in cells]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    env = r.get("env") or {}
    head = (f"# GPU check ({r['profile']} profile): {env.get('device_name', '?')}, torch {env.get('torch', '?')}"
            f" (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton', '?')}), "
            f"flash-attn {env.get('flash_attn') or 'absent'}; {r['started']}, ablate {r['git_sha']}, "
            f"{r.get('elapsed_s', 0):.0f} s of a {r['budget_s']:.0f} s budget")
    out = [head, "", f"MFU against {_f(env.get('peak_bf16_flops'), '.0f', 1e-12)} TFLOP/s (the dense bf16 peak of "
           "ablate.train.devices's table); estimate = ablate.core.estimate.memory_breakdown; simulated = the step's tensors under "
           "FakeTensorMode (ablate.train.memtrack, fake CUDA tensors on a CUDA build: no allocator rounding); first step = "
           "model build excluded, compile included ((warm): compiled once while the tests ran, so from warm caches).", "", table(r["cells"]), "",
           "Targets:"]
    out += [f"- {t['result']}: {t['target']}" + (f" ({t['cell']}: {t['value']:.3f}, wants {t['threshold']})"
                                                  if "cell" in t else f" ({t['note']})") for t in r["targets"]]
    t = r.get("tests") or {}
    if t:
        out += ["", f"Tests (pytest -m cuda tests/model tests/train): {t['passed']} passed, {t['failed']} failed, "
                    f"{t['errors']} errors, {t['skipped']} skipped, {t['not_run']} not run, of {t['collected']}"]
        out += [f"- FAILED {f['test']}: {f.get('error', '')}" for f in t["failures"]]
        out += [f"- skipped {n}: {reason}" for reason, n in t["skip_reasons"].items()]
    if r.get("kernels"):
        out += ["", "Attention alone (forward + backward at the long context): route -> kernel named / seen, ms, peak MiB"]
        out += [f"- {k['case']}: {k.get('backend')} -> {k.get('named')} / {', '.join(k.get('seen') or ['-'])}, "
                f"{_f(k.get('ms'), '.2f')} ms, {_f(k.get('peak_mib'), ',.0f')} MiB" + (f", {k['error']}" if k.get("error") else "")
                for k in r["kernels"]]
    if r.get("resume"):
        out += ["", "Resume after SIGKILL: " + ", ".join(f"{k} {v}" for k, v in r["resume"].items())]
    out += ["", "Stages: " + "; ".join(f"{name} {s['status']}" + (f" {s['seconds']} s" if "seconds" in s else "")
                                       + (f" ({s.get('error') or s.get('note')})" if s.get("error") or s.get("note") else "")
                                       for name, s in r["stages"].items())]
    return "\n".join(out) + "\n"
