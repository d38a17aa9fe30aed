"""The statistics' charts: effects and interactions with their intervals, and speedup vs budget
(fitted, extrapolated, greyed where not to be trusted). Same conventions as charts.py: small,
already-aggregated frames in, an altair chart out, a placeholder that says why when empty."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ablate.report.charts import W, H, placeholder
from ablate.report.scaling import EXTRAPOLATE

VERDICT_COLORS = {"significant at 95%": "#d62728", "not significant": "#7f7f7f", "one seed: eval noise only": "#bcbd22"}


def effects(df: pd.DataFrame) -> alt.Chart:
    """One row per effect (main effects, then interactions), the estimate with its 95% interval,
    coloured by verdict, a panel per budget; the zero line is "no effect"."""
    title = "Effects and interactions on final val loss (each cell at its best lr)"
    if not len(df):
        return placeholder(title, "one factor only (or no finished cells): no effects beyond the paired table")
    d = df.copy()
    d["label"] = d.effect
    d["budget_label"] = [f"{b:,} steps" for b in d.budget]
    d["zero"] = 0.0  # one data set for every layer: a faceted layer chart needs it
    order = list(dict.fromkeys(d.label))
    y = alt.Y("label:N", title=None, sort=order, axis=alt.Axis(labelLimit=320))
    color = alt.Color("verdict:N", title="verdict", scale=alt.Scale(domain=list(VERDICT_COLORS),
                                                                    range=list(VERDICT_COLORS.values())))
    tip = ["effect:N", "words:N", alt.Tooltip("estimate:Q", format="+.4f"), alt.Tooltip("lo:Q", format="+.4f"),
           alt.Tooltip("hi:Q", format="+.4f"), alt.Tooltip("p:Q", format=".3g"), "n_seeds:Q", "verdict:N"]
    base = alt.Chart(d).encode(y=y)
    layer = alt.layer(
        base.mark_rule(strokeWidth=2).encode(x=alt.X("lo:Q", title="Δ final val loss (+: worse)"), x2="hi:Q",
                                              color=color),
        base.mark_point(filled=True, size=60).encode(x="estimate:Q", color=color, tooltip=tip),
        base.mark_rule(color="black", strokeDash=[4, 3]).encode(x="mean(zero):Q", y=alt.Y()),
    ).properties(width=W + 60, height=max(H // 2, 18 * len(order)))
    lines = ["main: a level vs the reference level, averaged over the other factors; × interaction: the "
             "difference of differences", "bars: 95% intervals over seeds (eval noise folded in)"]
    if d.budget.nunique() > 1:
        layer = layer.facet(facet=alt.Facet("budget_label:N", title=None, sort=list(dict.fromkeys(d.budget_label))),
                            columns=2)
    return layer.properties(title=alt.TitleParams(title, subtitle=lines, anchor="start"))


def speedup_vs_budget(curve: pd.DataFrame, paired: pd.DataFrame) -> alt.Chart:
    """S(t) from the fits (line, 95% band) from the smallest measured budget to EXTRAPOLATE x the
    largest, log budget axis, a panel per group; the parts not to trust (poor or untested fit,
    too far beyond the data, unbounded) grey and labelled; the seed-paired budget-mode speedups
    measured at each budget as points with their intervals; 1x dashed."""
    title = "Speedup vs budget (fitted L(t) = E + A t^-alpha per variant)"
    if not len(curve):
        return placeholder(title, "no fit: a variant and its baseline need three budgets or more (each at its best lr)")
    fit = curve.assign(kind="fit", span=["extrapolated" if s in ("extrapolated", "too far", "unbounded")
                                         else "measured" for s in curve.status])
    for c in ("speedup", "speedup_lo", "speedup_hi"):  # an unbounded speedup (inf) is labelled, not drawn
        fit[c] = fit[c].where(np.isfinite(fit[c].astype(float)))
    # a log axis (a ratio: 2x and 0.5x equally far from 1x) over what can be trusted, clipped: a
    # law near the baseline's floor runs off to huge speedups, which are labelled, not drawn
    trusted_rows = fit[~fit.grey]
    known = pd.concat([trusted_rows.speedup, paired.speedup if len(paired) else pd.Series(dtype=float)]).dropna()
    top = float(min(20.0, max(2.0, 1.25 * known.max()))) if len(known) else 4.0  # intervals beyond: clipped
    bottom = float(max(0.05, min(0.5, 0.8 * known.min()))) if len(known) else 0.25
    fit["hi_clip"], fit["lo_clip"] = fit.speedup_hi.clip(upper=top), fit.speedup_lo.clip(lower=bottom)
    # a line's grey part starts at its last trusted point (so the line does not break), its label
    # sits at its last point
    prev_ok = fit.groupby(["group", "variant"]).grey.shift(-1).fillna(False).astype(bool) & ~fit.grey
    fit["grey_line"] = fit.grey | prev_ok
    last = fit.groupby(["group", "variant"]).budget.transform("max") == fit.budget
    fit["label"] = [s if g and e else "" for s, g, e in zip(fit.status, fit.grey, last)]
    fit["label_y"] = fit.speedup.clip(lower=bottom, upper=top).fillna(top)  # a label stays in the panel
    pts = paired[(paired.speedup_mode == "budget") & paired.speedup.notna()] if len(paired) else paired
    pts = pts[pts.group.isin(set(fit.group))][["group", "variant", "budget", "speedup", "speedup_lo", "speedup_hi",
                                               "speedup_verdict"]].assign(kind="measured", grey=False)
    pts = pts.assign(hi_clip=pts.speedup_hi.clip(upper=top), lo_clip=pts.speedup_lo.clip(lower=bottom))
    d = pd.concat([fit, pts], ignore_index=True)  # one data set for every layer: a faceted layer chart needs it
    d["one"] = 1.0
    x = alt.X("budget:Q", scale=alt.Scale(type="log", nice=False), title="budget (steps, log)",
              axis=alt.Axis(format="~s"))
    yscale = alt.Scale(type="log", domain=[bottom, top], nice=False)
    y = alt.Y("speedup:Q", title="speedup S(t) (x, log)", scale=yscale)
    tip = ["variant:N", alt.Tooltip("budget:Q", format=",.0f"), alt.Tooltip("speedup:Q", format=".3f"),
           alt.Tooltip("speedup_lo:Q", format=".3f"), alt.Tooltip("speedup_hi:Q", format=".3f"), "status:N"]
    base = alt.Chart(d).encode(x=x)
    fits = base.transform_filter(alt.datum.kind == "fit")
    measured = base.transform_filter(alt.datum.kind == "measured")
    trusted = alt.datum.grey == False  # noqa: E712 (a Vega expression, not Python)
    variant = alt.Color("variant:N", title="variant")
    layers = [
        fits.transform_filter(trusted).mark_area(opacity=0.18, clip=True).encode(y=alt.Y("lo_clip:Q", scale=yscale),
                                                                             y2="hi_clip:Q", color=variant),
        fits.transform_filter(trusted).mark_line(strokeWidth=2, clip=True).encode(
            y=y, color=variant, detail="variant:N", tooltip=tip,
            strokeDash=alt.StrokeDash("span:N", title="fit", sort=["measured", "extrapolated"])),
        fits.transform_filter(alt.datum.grey_line == True).mark_line(  # noqa: E712 (Vega)
            strokeWidth=2, color="#bbbbbb", strokeDash=[2, 2], clip=True).encode(y=y, detail="variant:N", tooltip=tip),
        fits.transform_filter(alt.datum.label != "").mark_text(align="left", dx=4, fontSize=9, color="#888").encode(
            y=alt.Y("label_y:Q", scale=yscale), text="label:N"),
        base.mark_rule(color="black", strokeDash=[4, 3]).encode(y="mean(one):Q", x=alt.X()),
        measured.mark_rule(clip=True).encode(y=alt.Y("lo_clip:Q", scale=yscale), y2="hi_clip:Q", color=variant),
        measured.mark_point(filled=True, size=45, shape="diamond").encode(
            y="speedup:Q", color=variant, tooltip=["variant:N", "budget:Q", alt.Tooltip("speedup:Q", format=".3f"),
                                                   alt.Tooltip("speedup_lo:Q", format=".3f"),
                                                   alt.Tooltip("speedup_hi:Q", format=".3f"), "speedup_verdict:N"]),
    ]
    layer = alt.layer(*layers).properties(width=W + 80, height=H + 20)
    if d.group.nunique() > 1:
        layer = layer.facet(facet=alt.Facet("group:N", title=None, sort=list(dict.fromkeys(d.group))), columns=3)
    lines = [f"S(t) = steps the baseline's fitted law needs for the variant's fitted loss at t, over t; band: 95% "
             f"(parametric, lack of fit folded in); dashed: beyond the measured budgets, up to {EXTRAPOLATE:g}x",
             "grey, labelled: poor or untested fit, extrapolated further than the measured span, or unbounded",
             "diamonds: budget-mode speedups measured seed by seed, with their 95% intervals" if len(pts) else ""]
    lines = [line for line in lines if line]
    return layer.properties(title=alt.TitleParams(title, subtitle=lines, anchor="start"))
