"""Writing the report: charts to PNG + SVG (vl-convert, offline), tables to markdown / CSV /
HTML, and one self-contained index.html (the Vega, Vega-Lite and vega-embed JavaScript inlined,
no network needed to open it).

The JavaScript bundle takes vl-convert ~3 s to build, so it is cached on disk per vl-convert
and Vega-Lite version ($ABLATE_CACHE_DIR, default ~/.cache/ablate); a cache that cannot be
written only costs those seconds.
"""
from __future__ import annotations

import html
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import altair as alt
import pandas as pd
import vl_convert as vlc

from ablate.core.paths import cache_root
from ablate.report.tables import memory_unit

GIB, MIB = 2 ** 30, 2 ** 20
PNG_SCALE = 2.0


def vl_version() -> str | None:
    """The Vega-Lite version altair writes, when vl-convert has it (else vl-convert's default)."""
    want = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return want if want in vlc.get_vegalite_versions() else None


def write_chart(chart, path_stem: Path) -> dict:
    spec = chart.to_dict()
    svg = vlc.vegalite_to_svg(spec, vl_version=vl_version())
    png = vlc.svg_to_png(svg, scale=PNG_SCALE)
    path_stem.with_suffix(".svg").write_text(svg)
    path_stem.with_suffix(".png").write_bytes(png)
    return spec


def write_charts(charts: dict, out: Path) -> dict:
    """name -> chart  =>  out/name.png + .svg; returns name -> Vega-Lite spec. Two threads:
    rasterizing is most of the report's time and vl-convert releases the GIL."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(write_chart, chart, out / name) for name, chart in charts.items()}
        return {name: f.result() for name, f in futures.items()}


def js_bundle() -> str:
    version = vl_version() or "default"
    cache = cache_root()
    path = cache / f"vega-bundle-{getattr(vlc, '__version__', 'x')}-{version}.js"
    try:
        return path.read_text()
    except OSError:
        pass
    bundle = vlc.javascript_bundle(vl_version=vl_version())
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(bundle)
        os.replace(tmp, path)
    except OSError:
        pass
    return bundle


# ---- numbers as people read them
def num(x, spec: str = ".2f", scale: float = 1.0, missing: str = "–") -> str:
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
            return missing
        return format(float(x) / scale, spec)
    except (TypeError, ValueError):
        return str(x)


def pct(x) -> str:
    return num(x, "+.1f") + "%" if num(x) != "–" else "–"


def speedup_table(sp: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "group": sp.group, "variant": sp.variant, "mode": sp["mode"], "budget": sp.budget,
        "lr": [num(x, "g") for x in sp.lr],
        "speedup (steps)": sp.display,
        "tokens": [num(x) + "x" if num(x) != "–" else "–" for x in sp.speedup_tokens],
        "wall clock": [num(x) + "x" if num(x) != "–" else "–" for x in sp.speedup_wall],
        "val loss (variant / baseline L*)": [f"{num(a, '.4f')} / {num(b, '.4f')}" for a, b in
                                             zip(sp.variant_loss, sp.target_loss)],
        "seeds reached": [f"{a}/{b}" for a, b in zip(sp.n_reached, sp.n_seeds)],
        "note": sp.note})


def memory_table(mem: pd.DataFrame) -> pd.DataFrame:
    unit, scale = memory_unit(mem)

    def peak(r):
        if r.oom and pd.isna(r.peak_alloc):
            return "OOM" + (f" (at {num(r.oom_peak_alloc, scale=scale)})" if pd.notna(r.oom_peak_alloc) else "")
        return num(r.peak_alloc, scale=scale, missing="not measured")
    return pd.DataFrame({
        "group": mem.mgroup, "variant": mem.variant, "state": mem.states,
        f"peak alloc ({unit})": [peak(r) for r in mem.itertuples()],
        f"peak reserved ({unit})": [num(x, scale=scale) for x in mem.peak_reserved],
        f"Δ vs baseline ({unit})": [num(x, "+.2f", scale) for x in mem.delta_alloc],
        "Δ %": [pct(x) for x in mem.delta_alloc_pct],
        f"tensors at peak ({unit})": [num(x, scale=scale, missing="–") for x in mem.mem_total],
        "tensors from": mem.mem_source.fillna("–"),
        "tensors Δ %": [pct(x) for x in mem.delta_mem_pct],
        f"params / grads / optim / act / temps ({unit})": [_parts(r, "mem", scale) for r in mem.itertuples()],
        f"estimate ({unit})": [num(x, scale=scale) for x in mem.est_total],
        f"est. params / grads / optim / act / temps ({unit})": [_parts(r, "est", scale) for r in mem.itertuples()],
        "strategy": mem.strategy, "GPUs": [num(x, ".0f") for x in mem.world_size],  # figures are per GPU (rank 0)
        "device": mem.device_name.fillna("–")})


def _parts(r, prefix: str, scale: float) -> str:
    values = [getattr(r, f"{prefix}_{k}", None) for k in ("params", "grads", "optimizer", "activations", "temps")]
    return "–" if all(v is None or pd.isna(v) for v in values) else " / ".join(num(v, scale=scale) for v in values)


def knobs_table(kn: pd.DataFrame) -> pd.DataFrame:
    """Memory saved and step time paid by each memory knob, beside the same shape without it."""
    unit, scale = memory_unit(kn.rename(columns={"peak": "mem_total"}))
    return pd.DataFrame({
        "group": kn.mgroup, "variant": kn.variant, "compared with": kn.without,
        f"peak ({unit})": [num(x, scale=scale) for x in kn.peak],
        f"without ({unit})": [num(x, scale=scale) for x in kn.peak_without],
        "memory saved": [pct(x) for x in kn.saving_pct], "from": kn.source.fillna("–"),
        "tokens/s": [num(x, ",.0f") for x in kn.tokens_per_s],
        "step time cost": [pct(x) for x in kn.step_cost_pct]})


def size_table(sz: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "group": sz.mgroup, "variant": sz.variant,
        "params (M)": [num(x, ".3f", 1e6) for x in sz.params_total],
        "non-embedding (M)": [num(x, ".3f", 1e6) for x in sz.params_non_embedding],
        "attention (M)": [num(x, ".3f", 1e6) for x in sz.params_attention],
        "checkpoint (MiB)": [num(x, ".2f", MIB) for x in sz.ckpt_bytes],
        "Δ params": [pct(x) for x in sz.delta_params_pct], "Δ checkpoint": [pct(x) for x in sz.delta_ckpt_pct],
        "source": sz.source})


def throughput_table(th: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "group": th.mgroup, "variant": th.variant, "state": th.states,
        "tokens/s": [num(x, ",.0f") for x in th.tokens_per_s],
        "Δ vs baseline": [pct(x) for x in th.delta_tokens_per_s_pct],
        "MFU causal": [num(x, ".1%", missing="unknown") for x in th.mfu_causal],
        "MFU nanoGPT": [num(x, ".1%", missing="unknown") for x in th.mfu_nanogpt],
        "device": th.device_name.fillna("–")})


def loss_table(cells: pd.DataFrame) -> pd.DataFrame:
    c = cells.sort_values(["group", "variant", "max_iters", "lr"])
    return pd.DataFrame({
        "group": c.group, "variant": c.variant, "budget": c.max_iters, "lr": [num(x, "g") for x in c.lr],
        "final val loss": [num(m, ".4f") + (f" ± {num(s, '.4f')}" if pd.notna(s) else "")
                           for m, s in zip(c.mean_val_loss, c.se_val_loss)],
        "eval s.e.": [num(x, ".4f") for x in c.eval_se_val_loss],
        "seeds done": [f"{a}/{b}" for a, b in zip(c.n_done, c.n_runs)],
        "states": c.states,
        "best lr": [("*" + (f" ({e} swept)" if e else "")) if b else "" for b, e in zip(c.best_lr, c.lr_edge)]})


def markdown(df: pd.DataFrame) -> str:
    if df is None or not len(df):
        return "_(none)_\n"
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame) -> str:
    if df is None or not len(df):
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="–")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table.t{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}table.t td,table.t th{border-bottom:1px solid #ddd;
padding:3px 8px;text-align:left}h2{margin-top:1.6em;border-bottom:1px solid #eee}.note{color:#666}"""


def index_html(title: str, intro: list[str], sections: list[tuple[str, str | None, str]], specs: dict) -> str:
    """sections: (heading, chart name or None, table html). Every chart spec is inlined as JSON
    and drawn by the inlined vega-embed: the file works offline and from any directory."""
    body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p class='note'>{html.escape(l)}</p>" for l in intro]
    for heading, chart, table in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if chart in specs:
            body.append(f"<div id='chart-{chart}'></div>")
        body.append(table)
    payload = json.dumps({f"chart-{k}": v for k, v in specs.items()}).replace("</", "<\\/")
    return ("<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>\n"
            f"<script>{js_bundle()}</script>\n</head><body>\n" + "\n".join(body) +
            f"\n<script>(function(){{var specs={payload};\n"
            "for (var id in specs) { vegaEmbed('#' + id, specs[id], {actions: false, renderer: 'svg'}); }})();"
            "</script>\n</body></html>\n")
