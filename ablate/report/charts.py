"""Altair charts of the report. Each function takes a small, already-aggregated DataFrame and
returns a chart; a chart with nothing to show is a placeholder that says why (an empty grid, a
CPU run without CUDA memory), so the report never crashes on missing data. Curves arrive
downsampled from SQL (Store.curves), so no chart carries more than altair's 5,000 rows.
"""
from __future__ import annotations

import math

import altair as alt
import pandas as pd

from ablate.report.tables import memory_unit

W, H = 260, 180  # one panel
MAX_ROWS = 5000
GIB, MIB = 2 ** 30, 2 ** 20


def placeholder(title: str, message: str) -> alt.Chart:
    return (alt.Chart(pd.DataFrame({"message": [message]}))
            .mark_text(fontSize=14, color="#666").encode(text="message:N")
            .properties(title=title, width=420, height=60))


def _facet(chart, d: pd.DataFrame, field: str, columns: int = 3):
    """A panel per value of `field` (the group) when there are several, in the data's order
    (the report sorts groups by value: context 256 before 1024)."""
    order = list(dict.fromkeys(d[field]))
    if len(order) <= 1:
        return chart
    return chart.facet(facet=alt.Facet(f"{field}:N", title=None, sort=order), columns=min(columns, len(order)))


def _xvar(field: str) -> alt.X:
    """A categorical x axis of variant names: in data order, slanted labels that fit."""
    return alt.X(f"{field}:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30, labelLimit=180))


def _facet_layer(layer, d: pd.DataFrame, field: str):
    """A panel per group, each with only its own variants on x."""
    out = _facet(layer, d, field)
    return out if out is layer else out.resolve_scale(x="independent", xOffset="independent")


def _subtitle(title: str, lines) -> alt.TitleParams:
    lines = [l for l in lines if l]
    return alt.TitleParams(title, subtitle=lines, anchor="start") if lines else alt.TitleParams(title, anchor="start")


def _zoom(curves: pd.DataFrame, x: str) -> tuple[float, float] | None:
    """y domain that skips the first 10% of training (the drop from ln V hides the differences
    a comparison is about), or None when that would hide nothing."""
    late = curves[curves[x] >= 0.1 * curves[x].max()].val_loss
    lo, hi, top = curves.val_loss.min(), late.max(), curves.val_loss.max()
    if not len(late) or not hi < top or not hi > lo:
        return None
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def loss_curves(curves: pd.DataFrame, x: str = "step", note: str = "", log_x: bool = False,
                swept: bool = False) -> alt.Chart:
    """Val loss vs steps (or tokens), one line per cell (mean over seeds), a panel per group;
    `swept`: the grid sweeps lr and each curve is its variant's best lr. The legend names the
    series (the variant, with its lr when lrs differ: curves['series'], else the variant)."""
    title = f"Validation loss vs {'tokens' if x == 'tokens' else 'steps'}"
    if not len(curves):
        return placeholder(title, "no evals yet: nothing has been evaluated in this grid")
    assert len(curves) <= MAX_ROWS, len(curves)
    if log_x:
        curves = curves[curves[x] > 0]  # step 0 has no logarithm
    budgets = curves.max_iters.nunique() > 1
    if "series" not in curves:
        curves = curves.assign(series=curves.variant)
    zoom = _zoom(curves, x)
    y_scale = alt.Scale(zero=False, domain=list(zoom), clamp=True) if zoom else alt.Scale(zero=False)
    enc = {"x": alt.X(f"{x}:Q", title=("tokens" if x == "tokens" else "step") + (" (log)" if log_x else ""),
                      scale=alt.Scale(type="log", nice=False) if log_x else alt.Scale(),
                      axis=alt.Axis(format="~s" if x == "tokens" else ",d")),
           "y": alt.Y("val_loss:Q", title="val loss", scale=y_scale),
           "color": alt.Color("series:N", title="variant", sort=list(dict.fromkeys(curves.series))),
           "detail": "cell_id:N",
           "tooltip": ["variant:N", "group:N", "lr:Q", "max_iters:Q", f"{x}:Q", alt.Tooltip("val_loss:Q", format=".4f"),
                       "n_seeds:Q"]}
    if budgets:
        enc["strokeDash"] = alt.StrokeDash("max_iters:O", title="budget (steps)")
    chart = alt.Chart(curves).mark_line(strokeWidth=1.6, clip=True).encode(**enc).properties(width=W, height=H)
    seeds = "mean over seeds" if "n_seeds" in curves and curves.n_seeds.max() > 1 else "one seed per curve"
    lines = [f"{seeds}; each variant at its best lr of the sweep" if swept else seeds,
             "y axis zoomed to the last 90% of training" if zoom else "", note]
    out = _facet(chart, curves, "group")
    out = out if out is chart else out.resolve_scale(x="independent")  # groups may train for other lengths
    return out.properties(title=_subtitle(title, lines))


def _short(r) -> str:
    """A bar's label: the number, '< 1x', 'noise', or the extrapolated estimate marked with '*'."""
    if r.within_noise:
        return "noise"
    if r.bound == "<" and not r.extrapolated:
        return "< 1x"
    if pd.isna(r.speedup):
        return r.display[:14]
    return f"{r.speedup:.2f}x" + ("*" if r.extrapolated else ("+" if r.bound == "≥" else ""))


def speedup(df: pd.DataFrame) -> alt.Chart:
    """Bars per variant (and budget) in each group, one per mode side by side, vs the group's
    baseline. A row whose number is only a bound ('< 1x': never reached the baseline's loss) is
    a downward triangle at the bound; a row within eval noise is a pale bar labelled 'noise';
    extrapolated budget-mode estimates are pale and starred; a grey band spans the budget-mode
    speedups within eval noise; rows without any number ('oom', 'not reached yet') are labelled at 0."""
    title = "Speedup vs baseline (same final val loss)"
    if not len(df):
        return placeholder(title, "no speedup: no group has a finished baseline and a variant")
    d = df.copy()
    d["x"] = d.variant + (d.budget.map(lambda b: f" @{b}") if d.budget.nunique() > 1 else "")
    d["within_noise"] = d.within_noise.fillna(False).astype(bool)
    d["extrapolated"] = d.extrapolated.astype(bool)
    below = (d.bound == "<") & d.speedup.isna()  # curve mode's '< 1x': a bound, no number
    d["value"] = d.speedup.where(d.speedup.notna(), below.map({True: 1.0, False: 0.0}))
    d["lo"] = (d.speedup - d.speedup_se).where(d.speedup_se.notna())
    d["hi"] = (d.speedup + d.speedup_se).where(d.speedup_se.notna())
    d["short"] = [_short(r) for r in d.itertuples()]
    d["pale"] = d.extrapolated | d.within_noise
    d["kind"] = ["bound" if b else "bar" for b in below]
    d["one"] = 1.0
    base = alt.Chart(d).encode(x=_xvar("x"), xOffset=alt.XOffset("mode:N"))
    tip = ["variant:N", "group:N", "mode:N", "budget:Q", "display:N", "note:N"]
    pale = alt.Opacity("pale:N", scale=alt.Scale(domain=[False, True], range=[1.0, 0.35]), legend=None)
    bars = base.transform_filter(alt.datum.kind == "bar").mark_bar().encode(
        y=alt.Y("value:Q", title="speedup (x)", stack=None), color=alt.Color("mode:N", title="mode"),
        opacity=pale, tooltip=tip)
    bounds = base.transform_filter(alt.datum.kind == "bound").mark_point(
        shape="triangle-down", filled=True, size=120).encode(y="value:Q", color="mode:N", opacity=pale, tooltip=tip)
    err = base.mark_rule().encode(y="lo:Q", y2="hi:Q")
    # budget mode: the speedups that the variant's loss +- 2 eval standard errors would give
    noise = base.mark_rule(color="#888", strokeWidth=5, opacity=0.5).encode(y="noise_lo:Q", y2="noise_hi:Q")
    text = base.mark_text(angle=270, align="left", baseline="middle", dx=6, fontSize=10).encode(
        y="value:Q", text="short:N")
    one = alt.Chart(d).mark_rule(color="black", strokeDash=[4, 3]).encode(y="mean(one):Q")
    n_bars = d.x.nunique() * d["mode"].nunique()
    layer = alt.layer(bars, bounds, noise, err, one, text).properties(width=max(W, 22 * n_bars), height=H)
    notes = ["curve mode: steps to reach the baseline's final loss; budget mode: budget the baseline would need"]
    if below.any():
        notes.append("▼ never reached the baseline's loss: the speedup is below this bound")
    if d.within_noise.any():
        notes.append("pale 'noise': the loss gap is within 2 eval standard errors, not a result")
    if d.noise_lo.notna().any():
        notes.append("grey band: the budget-mode speedup at the variant's loss ± 2 eval standard errors")
    if d.extrapolated.any():
        notes.append("* pale: beyond the baseline's budgets, extrapolated on log(budget); the table gives the bound")
    return _facet_layer(layer, d, "group").properties(title=_subtitle(title, notes))


MEM_COLORS = {"params": "#4c78a8", "grads": "#72b7b2", "optimizer": "#54a24b", "activations": "#f58518",
              "temps": "#e45756"}


MEM_COLORS = {"params": "#4c78a8", "grads": "#72b7b2", "optimizer": "#54a24b", "activations": "#f58518",
              "temps": "#e45756"}


def memory(df: pd.DataFrame) -> alt.Chart:
    """Peak memory per variant, per process: the tensors at the peak of one training step stacked
    by category (tracked in the run, or simulated by the plan for cells that have not run), the
    plan's analytical estimate (black tick), the CUDA allocator's peak where measured (diamond)
    and the baseline's peak (dashed)."""
    title = "Peak memory per process"
    if not len(df):
        return placeholder(title, "no runs")
    d = df.copy()
    unit, scale = memory_unit(d)
    d["cuda"] = d.peak_alloc / scale
    d["estimate"] = d.est_total / scale
    d["peak"] = (d.mem_total / scale).where(d.mem_total.notna(), d.cuda)  # labels and the baseline line
    base = {m: g[g.is_baseline].peak.dropna() for m, g in d.groupby("mgroup")}
    d["base"] = d.mgroup.map(lambda m: base[m].iloc[0] if len(base[m]) else math.nan)
    d["label"] = [("OOM" if r.oom else "") if math.isnan(r.peak) else f"{r.peak:.3g}" for r in d.itertuples()]
    d["source"] = d.mem_source.fillna("none")
    d["kind"] = "total"
    parts = list(MEM_COLORS)
    stack = d.melt(id_vars=["mgroup", "variant", "source", "states"], value_vars=[f"mem_{p}" for p in parts],
                   var_name="category", value_name="bytes").dropna(subset=["bytes"])
    stack["category"] = stack.category.str.removeprefix("mem_")
    stack["value"] = stack["bytes"] / scale
    stack["order"] = stack.category.map(parts.index)
    stack["kind"] = "part"
    data = pd.concat([stack, d[["mgroup", "variant", "source", "states", "kind", "cuda", "estimate", "peak", "base",
                                "label"]]], ignore_index=True)
    sources = set(d.mem_source.dropna())
    plugin_cells = "plugins" in d and d.plugins.notna().any()  # no formula knows a plugin
    lines = ["bars: tensors at the peak of one training step by category, " + (
        "tracked in a real step" if sources == {"tracked"} else "simulated by the plan (pale)" if sources == {"simulated"}
        else "tracked in a real step (solid) or simulated by the plan (pale)" if sources else
        "not tracked (run `ablate plan --memory` to simulate cells that have not run)"),
        "tick: the plan's analytical estimate" + ("; for a plugin cell, its simulated step" if plugin_cells else "")
        + "; dashed: the baseline" +
        ("; diamond: CUDA allocator peak" if d.cuda.notna().any() else "")]
    x = _xvar("variant")
    chart = alt.Chart(data).encode(x=x)
    parts_only, totals = alt.datum.kind == "part", alt.datum.kind == "total"
    layers = [chart.transform_filter(parts_only).mark_bar().encode(
        y=alt.Y("value:Q", title=unit, stack="zero"),
        color=alt.Color("category:N", title="category", sort=parts,
                        scale=alt.Scale(domain=parts, range=[MEM_COLORS[p] for p in parts])),
        order=alt.Order("order:Q"),
        opacity=alt.Opacity("source:N", scale=alt.Scale(domain=["tracked", "simulated"], range=[1.0, 0.45]),
                            legend=None),
        tooltip=["variant:N", "mgroup:N", "category:N", alt.Tooltip("value:Q", format=".3g", title=unit), "source:N",
                 "states:N"]),
        chart.transform_filter(totals).mark_tick(color="black", thickness=2, size=30).encode(
            y="estimate:Q", tooltip=["variant:N", alt.Tooltip("estimate:Q", format=".3g", title=f"estimate ({unit})")])]
    if d.cuda.notna().any():
        layers.append(chart.transform_filter(totals).mark_point(shape="diamond", color="black", filled=True, size=60)
                      .encode(y="cuda:Q", tooltip=["variant:N", alt.Tooltip("cuda:Q", format=".3g",
                                                                             title=f"CUDA peak ({unit})")]))
    layers += [alt.Chart(data).transform_filter(totals).mark_rule(color="red", strokeDash=[4, 3]).encode(
                   y="mean(base):Q"),
               chart.transform_filter(totals).mark_text(dy=-6, fontSize=10).encode(y="peak:Q", text="label:N")]
    layer = alt.layer(*layers).properties(width=max(W, 40 * d.variant.nunique()), height=H)
    return _facet_layer(layer, data, "mgroup").properties(title=_subtitle(title, lines))


def _long(df: pd.DataFrame, metrics: dict) -> pd.DataFrame:
    parts = []
    for col, (name, scale) in metrics.items():
        p = df[["mgroup", "variant"]].copy()
        p["metric"], p["value"] = name, df[col] / scale
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


def _metric_bars(d: pd.DataFrame, title: str, lines: list) -> alt.Chart:
    bars = (alt.Chart(d).mark_bar()
            .encode(x=_xvar("variant"), y=alt.Y("value:Q", title=None),
                    color=alt.Color("variant:N", legend=None),
                    tooltip=["variant:N", "mgroup:N", "metric:N", alt.Tooltip("value:Q", format=",.3f")])
            .properties(width=max(W - 60, 36 * d.variant.nunique()), height=H - 40))
    rows = alt.Row("metric:N", title=None, sort=list(dict.fromkeys(d.metric)))
    if d.mgroup.nunique() > 1:
        out = bars.facet(row=rows, column=alt.Column("mgroup:N", title=None, sort=list(dict.fromkeys(d.mgroup))))
        out = out.resolve_scale(x="independent", y="independent")
    else:
        out = bars.facet(row=rows).resolve_scale(y="independent")
    return out.properties(title=_subtitle(title, lines))


def size(df: pd.DataFrame) -> alt.Chart:
    title = "Model size"
    if not len(df):
        return placeholder(title, "no runs")
    d = _long(df, {"params_total": ("params, total (M)", 1e6),
                   "params_non_embedding": ("params, non-embedding (M)", 1e6),
                   "params_attention": ("params, attention (M)", 1e6), "ckpt_bytes": ("checkpoint (MiB)", MIB)})
    est = (df.source == "estimate").any()
    return _metric_bars(d, title, ["some cells not finished: their sizes are the plan's exact counts"] if est else [])


def throughput(df: pd.DataFrame) -> alt.Chart:
    title = "Training throughput"
    if not len(df) or df.tokens_per_s.isna().all():
        return placeholder(title, "no throughput measured yet")
    metrics = {"tokens_per_s": ("tokens / s", 1.0)}
    lines = []
    if df.mfu_causal.notna().any():
        metrics["mfu_causal"] = ("MFU, causal (%)", 0.01)
    else:
        lines.append("MFU unknown (CPU, or a device whose peak FLOPs are not known)")
    return _metric_bars(_long(df, metrics), title, lines)


def lr_sweep(df: pd.DataFrame) -> alt.Chart:
    """Final val loss vs initial lr (log axis), one line per variant x budget (the nGPT README
    figure). The best lr of each line is ringed, in red with "edge" when it is the lowest or
    highest lr swept (an optimum not bracketed); an lr whose runs all diverged (or failed)
    has no loss to draw: it is a red x at the top of its panel, so it never just vanishes."""
    title = "Final validation loss vs learning rate"
    d = df.dropna(subset=["mean_val_loss"]).copy()
    lost = df[df.mean_val_loss.isna() & (df.n_done == 0) & (df.states.str.len() > 0)].copy()
    lost = lost[~lost.states.str.contains("running|queued|pending|new")]
    if not len(d) and not len(lost):
        return placeholder(title, "no finished cells in the lr sweep yet")
    d["lo"] = (d.mean_val_loss - d.se_val_loss).where(d.se_val_loss.notna())
    d["hi"] = (d.mean_val_loss + d.se_val_loss).where(d.se_val_loss.notna())
    d["mark"] = ["best lr, " + e + " swept: not bracketed" if e else "best lr" if b else ""
                 for b, e in zip(d.best_lr, d.lr_edge)]
    top = d.groupby("mgroup").mean_val_loss.max() if len(d) else pd.Series(dtype=float)
    span = (d.mean_val_loss.max() - d.mean_val_loss.min()) if len(d) else 0.0
    lost["y"] = [top.get(m, 0.0) + 0.05 * (span or 1.0) for m in lost.mgroup]
    lost["what"] = lost.states.str.replace(",", " / ")
    lrs = sorted(set(d.lr) | set(lost.lr))  # ticks at the lrs swept: a doubling sweep is evenly spaced
    x = alt.X("lr:Q", scale=alt.Scale(type="log", nice=False, padding=20), title="initial learning rate (log scale)",
              axis=alt.Axis(format="~g", labelOverlap="greedy", **({"values": lrs} if len(lrs) <= 12 else {})))
    color = alt.Color("variant:N", title="variant")
    budgets = pd.concat([d.max_iters, lost.max_iters]).nunique() > 1
    enc = {"strokeDash": alt.StrokeDash("max_iters:O", title="budget (steps)")} if budgets else {}
    y = alt.Y("mean_val_loss:Q", title="final val loss", scale=alt.Scale(zero=False))
    # one data set, a layer per kind of row (a faceted layer chart needs one data set)
    both = pd.concat([d.assign(kind="loss"), lost.assign(kind="lost", mark="")], ignore_index=True)
    both["lr_edge"] = both.lr_edge.fillna("")
    base = alt.Chart(both).encode(x=x)
    loss = base.transform_filter(alt.datum.kind == "loss").encode(color=color)
    tip = ["variant:N", "max_iters:O", "lr:Q", alt.Tooltip("mean_val_loss:Q", format=".4f"),
           alt.Tooltip("se_val_loss:Q", format=".4f"), alt.Tooltip("eval_se_val_loss:Q", format=".4f"), "n_done:Q",
           "mark:N"]
    layers = [loss.mark_line().encode(y=y, detail="max_iters:O", **enc),
              loss.mark_point(filled=True, size=30).encode(y=y, tooltip=tip),
              loss.mark_rule().encode(y="lo:Q", y2="hi:Q", detail="max_iters:O"),
              loss.transform_filter(alt.datum.mark != "").mark_point(size=160, strokeWidth=2, filled=False).encode(
                  y=y, color=alt.condition(alt.datum.lr_edge != "", alt.value("red"), color), tooltip=tip),
              loss.transform_filter(alt.datum.lr_edge != "").mark_text(dy=-14, fontSize=10).encode(
                  y=y, text=alt.value("edge"), color=alt.value("red"))]
    if len(lost):
        lx = base.transform_filter(alt.datum.kind == "lost").encode(y=alt.Y("y:Q"))
        layers += [lx.mark_point(shape="cross", color="red", size=90, filled=True, angle=45).encode(
                       tooltip=["variant:N", "max_iters:O", "lr:Q", "what:N"]),
                   lx.mark_text(dy=-10, color="red", fontSize=10).encode(text="what:N")]
    layer = alt.layer(*layers).properties(width=W + 60, height=H + 40)
    seeds = "mean ± standard error over seeds" if d.se_val_loss.notna().any() else "one seed per cell"
    notes = [f"{seeds}; ringed: the best lr of a line"]
    if (d.lr_edge != "").any():
        notes.append("red ring, 'edge': the best lr is the lowest or highest swept, so the optimum is not bracketed")
    if len(lost):
        notes.append("red x: every run at that lr diverged or failed (no final loss)")
    return _facet_layer(layer, both, "mgroup").properties(title=_subtitle(title, notes))
