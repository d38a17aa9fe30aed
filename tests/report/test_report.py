"""The report's files and tables: real PNGs, a self-contained index.html, memory / size / status
tables with the values put into the run dirs, and a readable report for empty or partial grids."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from ablate.core import estimate
from synthetic import config_for, write_run
from report_fixtures import GPT_BASELINE, session_bundle_dir, bundle_cache, env, specs_only  # noqa: F401 (fixtures)

GIB = 2 ** 30
COMPARE = GPT_BASELINE
CHARTS = ["loss_curves", "loss_vs_tokens", "speedup", "memory", "size", "throughput"]
GPU_GRID_CHARTS = [*CHARTS, "effects"]  # gpu_grid crosses context x arch: a factorial, so it has effects


def specs_of(html: str) -> dict:
    payload = re.search(r"var specs=(\{.*?\});\n", html, re.S).group(1)
    return json.loads(payload.replace("<\\/", "</"))


def rows_of(spec: dict) -> int:
    return sum(len(v) for v in spec.get("datasets", {}).values())


def gpu_grid(runs):
    """Two contexts; at 512 nGPT ran out of memory and GPT diverged."""
    for ctx in (128, 256):
        write_run(runs, "g", {"arch": "gpt", "context": ctx}, lambda s: 3 - 0.001 * s,
                  peak_alloc=2 * GIB * ctx // 128, peak_reserved=3 * GIB * ctx // 128)
        write_run(runs, "g", {"arch": "ngpt", "context": ctx}, lambda s: 3 - 0.002 * s,
                  peak_alloc=3 * GIB * ctx // 128, peak_reserved=4 * GIB * ctx // 128)
        write_run(runs, "g", {"arch": "ngpt", "context": ctx, "tie_embeddings": True}, lambda s: 3 - 0.0015 * s,
                  peak_alloc=GIB * ctx // 128)
    write_run(runs, "g", {"arch": "ngpt", "context": 512}, state="oom", steps=0, error="CUDA out of memory")
    write_run(runs, "g", {"arch": "gpt", "context": 512}, lambda s: 3 + s, state="diverged", steps=200,
              error="Traceback (most recent call last):\n...\nloss 203.0 above diverge_loss at step 200")


def test_every_file_is_written_and_real(env):
    runs, store, report = env
    gpu_grid(runs)
    out = report()
    d = out["paths"]["index.html"].parent
    for name in CHARTS:
        png = (d / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 300 and height > 100, name
        assert (d / f"{name}.svg").read_text().lstrip().startswith("<svg"), name
    assert not (d / "lr_sweep.png").exists()  # one lr per variant: no lr chart
    for name in ("speedup.csv", "memory.csv", "size.csv", "summary.md"):
        assert (d / name).stat().st_size > 50, name
    md = (d / "summary.md").read_text()
    for heading in ("## Speedup", "## Peak memory", "## Model size", "## Throughput",
                    "## Final validation loss", "## Runs that did not finish cleanly"):
        assert heading in md


def test_index_html_is_self_contained(env):
    runs, store, report = env
    gpu_grid(runs)
    html = report()["paths"]["index.html"].read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert not re.search(r"<link[^>]*href\s*=\s*['\"]https?:", html)
    assert "window.vegaEmbed=" in html and "vegaEmbed('#'" in html
    specs = specs_of(html)
    assert set(specs) == {f"chart-{c}" for c in GPU_GRID_CHARTS}
    for name in GPU_GRID_CHARTS:
        assert f"id='chart-{name}'" in html
    assert "<table" in html and "ngpt" in html


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_index_html_renders_offline_in_node(env, tmp_path):
    """The inlined bundle's vegaEmbed draws every inlined spec in node (no browser, no network)."""
    runs, store, report = env
    gpu_grid(runs)
    html = report()["paths"]["index.html"].read_text()
    bundle = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    (tmp_path / "specs.json").write_text(json.dumps(specs_of(html)))
    (tmp_path / "bundle.js").write_text(bundle)
    script = tmp_path / "check.js"
    script.write_text("""
// a do-nothing DOM: vega-embed gets an element, Vega renders headless (renderer 'none' + toSVG)
function fake() {
  return new Proxy(function () { return fake(); }, {
    get(t, k) {
      if (k === Symbol.toPrimitive) return () => 0;
      if (k === 'then') return undefined;
      if (k === 'style') return {};
      if (k === 'childNodes' || k === 'children') return [];
      return fake();
    },
    set() { return true; },
  });
}
globalThis.window = globalThis;
globalThis.document = fake();
for (const name of ['ShadowRoot', 'HTMLElement', 'Element', 'Node']) globalThis[name] = class {};
const fs = require('fs');
(0, eval)(fs.readFileSync(process.argv[2], 'utf8'));
const specs = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
(async () => {
  for (const [id, spec] of Object.entries(specs)) {
    const res = await window.vegaEmbed(fake(), spec, {actions: false, renderer: 'none'});
    const svg = await res.view.toSVG();
    if (!svg.startsWith('<svg')) throw new Error(id);
    console.log(id, svg.length);
  }
})().catch(e => { console.error(e); process.exit(1); });
""")
    r = subprocess.run(["node", str(script), str(tmp_path / "bundle.js"), str(tmp_path / "specs.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == len(GPU_GRID_CHARTS)


@pytest.mark.usefixtures("specs_only")
def test_memory_table_deltas_estimates_and_oom(env):
    runs, store, report = env
    gpu_grid(runs)
    cfg = config_for({"arch": "ngpt", "context": 256})
    plan = {cfg.run_id(): {"params": 1, "grads": 1, "optimizer": 2, "activations": 3, "logits": 4,
                           "total": 5 * GIB}}
    mem = report(plan_estimates=plan)["memory"].set_index(["mgroup", "variant"])
    base, ngpt = mem.loc[("context=256", "gpt")], mem.loc[("context=256", "ngpt")]
    assert base.peak_alloc == 4 * GIB and base.delta_alloc == 0
    assert ngpt.peak_alloc == 6 * GIB and ngpt.delta_alloc == 2 * GIB and ngpt.delta_alloc_pct == pytest.approx(50.0)
    assert ngpt.peak_reserved == 8 * GIB
    assert ngpt.est_total == 5 * GIB  # the plan's estimate, beside the measurement
    # without a plan estimate: the plan's own formula on the run's config
    assert base.est_total == estimate.memory_breakdown(config_for({"arch": "gpt", "context": 256}))["total"]
    tied = mem.loc[("context=128", "ngpt tie_embeddings")]
    assert tied.delta_alloc_pct == pytest.approx(-50.0)
    oom = mem.loc[("context=512", "ngpt")]
    assert oom.oom and oom.states == "oom"
    assert mem.loc[("context=512", "gpt")].states == "diverged"
    md = (report()["paths"]["summary.md"]).read_text()
    assert re.search(r"\| context=512 \| ngpt \| oom \| OOM \|", md)
    assert "| +2.00 | +50.0% |" in md


@pytest.mark.usefixtures("specs_only")
def test_status_lists_oom_and_diverged_with_their_error(env):
    runs, store, report = env
    gpu_grid(runs)
    out = report()
    problems = {p["state"]: p for p in out["status"]["problems"]}
    assert set(problems) == {"oom", "diverged"}
    assert problems["diverged"]["error"] == "loss 203.0 above diverge_loss at step 200"
    assert out["status"]["counts"] == {"done": 6, "oom": 1, "diverged": 1}
    cells = out["cells"].set_index(["group", "variant"])
    assert cells.loc[("context=512", "ngpt"), "states"] == "oom"
    md = out["paths"]["summary.md"].read_text()
    assert "8 runs in the store (6 done, 1 diverged, 1 oom)" in md
    assert "| diverged | context=512 | gpt |" in md


@pytest.mark.usefixtures("specs_only")
def test_size_table_matches_exact_counts(env):
    runs, store, report = env
    gpu_grid(runs)
    size = report()["size"].set_index(["mgroup", "variant"])
    for variant, over in (("ngpt", {}), ("ngpt tie_embeddings", {"tie_embeddings": True})):
        counts = estimate.param_counts(config_for({"arch": "ngpt", "context": 128, **over}))
        r = size.loc[("context=128", variant)]
        assert (r.params_total, r.params_non_embedding, r.params_attention) == \
            (counts["total"], counts["non_embedding"], counts["attention"])
        assert r.source == "measured"
    tied, untied = size.loc[("context=128", "ngpt tie_embeddings")], size.loc[("context=128", "ngpt")]
    assert tied.ckpt_bytes < untied.ckpt_bytes and tied.params_non_embedding == untied.params_non_embedding
    assert size.loc[("context=512", "ngpt"), "source"] == "estimate"  # OOM before a summary: plan counts


@pytest.mark.usefixtures("specs_only")
def test_cpu_runs_without_tracked_memory_say_so(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"})
    write_run(runs, "g", {"arch": "ngpt"})
    out = report()
    html = out["paths"]["index.html"].read_text()
    memory = specs_of(html)["chart-memory"]
    assert "not tracked" in json.dumps(memory["subtitle" if "subtitle" in memory else "title"])
    assert "GPU" not in json.dumps(memory["title"])  # a CPU run's memory is not GPU memory
    assert "not measured" in out["paths"]["summary.md"].read_text()
    assert "MFU unknown" in json.dumps(specs_of(html)["chart-throughput"]["title"])


TRACKED = {"params": 4 * 2 ** 20, "buffers": 0, "grads": 2 ** 20, "optimizer": 8 * 2 ** 20,
           "activations": 100 * 2 ** 20, "temps": 13 * 2 ** 20, "other": 0}


def _bars(spec: dict) -> list[dict]:
    """The memory chart's stacked-bar rows (one per variant x category)."""
    rows = [r for v in spec["datasets"].values() for r in v]
    return [r for r in rows if r.get("kind") == "part"]


@pytest.mark.usefixtures("specs_only")
def test_memory_chart_stacks_tracked_categories_and_simulated_ones_for_cells_not_run(env):
    """CPU runs that tracked a step: bars stacked by category from summary.json, solid; a cell of
    the grid that has not run: the plan's simulation, pale; both with the estimate beside."""
    runs, store, report = env
    tracked = {f"tracked_{k}": v for k, v in TRACKED.items()} | {"tracked_total": sum(TRACKED.values())}
    write_run(runs, "g", {"arch": "gpt"}, summary=tracked)
    ngpt = config_for({"arch": "ngpt"})
    simulated = {ngpt.run_id(): {**{k: 2 * v for k, v in TRACKED.items()}, "total": 2 * sum(TRACKED.values())}}
    planned = [{"run_id": c.run_id(), **c.to_dict()} for c in (config_for({"arch": "gpt"}), ngpt)]
    out = report(planned=planned, simulated=simulated)
    mem = out["memory"].set_index("variant")
    assert mem.loc["gpt", "mem_source"] == "tracked" and mem.loc["ngpt", "mem_source"] == "simulated"
    assert mem.loc["gpt", "mem_activations"] == 100 * 2 ** 20 and mem.loc["gpt", "mem_total"] == 126 * 2 ** 20
    assert mem.loc["ngpt", "mem_total"] == 252 * 2 ** 20 and mem.loc["ngpt", "states"] == "planned"
    assert mem.loc["ngpt", "delta_mem_pct"] == pytest.approx(100.0)
    spec = specs_of(out["paths"]["index.html"].read_text())["chart-memory"]
    bars = {(r["variant"], r["category"]): r for r in _bars(spec)}
    assert set(bars) == {(v, c) for v in ("gpt", "ngpt") for c in ("params", "grads", "optimizer", "activations",
                                                                     "temps")}
    assert bars[("gpt", "activations")]["value"] == 100 and bars[("gpt", "activations")]["source"] == "tracked"
    assert bars[("ngpt", "temps")]["value"] == 26 and bars[("ngpt", "temps")]["source"] == "simulated"
    assert "Peak memory per process" in json.dumps(spec["title"])
    md = out["paths"]["summary.md"].read_text()
    assert "| 126.00 | tracked | +0.0% | 4.00 / 1.00 / 8.00 / 100.00 / 13.00 |" in md
    assert "| 252.00 | simulated | +100.0% | 8.00 / 2.00 / 16.00 / 200.00 / 26.00 |" in md


@pytest.mark.usefixtures("specs_only")
def test_curves_stay_under_the_row_limit(env):
    """80 cells x 1,001 evals: every chart's data stays under altair's 5,000 rows, each curve keeps
    its last eval."""
    runs, store, report = env
    for lr in [1e-3 * (i + 1) for i in range(40)]:
        for arch in ("gpt", "ngpt"):
            write_run(runs, "g", {"arch": arch, "lr": lr, "max_iters": 5000, "eval_interval": 5},
                      lambda s, lr=lr: 3 - s * lr / 10, metrics=False)
    out = report()
    assert store.query("select count(*) n from evals").n[0] == 80 * 1001
    specs = specs_of(out["paths"]["index.html"].read_text())
    for name, spec in specs.items():
        assert rows_of(spec) <= 5000, name
    curve = specs["chart-loss_curves"]
    rows = next(iter(curve["datasets"].values()))
    assert {r["variant"] for r in rows} == {"gpt", "ngpt"}  # best lr per variant
    assert max(r["step"] for r in rows) == 5000
    assert len(out["lr_sweep"]) == 80 and out["paths"]["lr_sweep"].exists()


def test_empty_grid_reports_what_is_missing(env):
    runs, store, report = env
    plan = {"abc123": {"total": 1}, "def456": {"total": 2}}
    out = report(grid="nothing", plan_estimates=plan)
    md = out["paths"]["summary.md"].read_text()
    assert "No runs of grid 'nothing'" in md and "2 planned runs have no run dir yet" in md
    for name in CHARTS:
        assert out["paths"][name].read_bytes()[:4] == b"\x89PNG"
    assert len(out["speedup"]) == 0 and out["status"]["missing"] == ["abc123", "def456"]


@pytest.mark.usefixtures("specs_only")
def test_partial_grid_while_jobs_write(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, lambda s: 3 - 0.001 * s, state="running", steps=400, torn=True)
    planned = config_for({"arch": "ngpt"}).run_id()
    out = report(plan_estimates={planned: {"total": GIB}, config_for({"arch": "gpt"}).run_id(): {"total": GIB}})
    md = out["paths"]["summary.md"].read_text()
    assert "1 runs in the store (1 running)" in md and f"1 planned runs have no run dir yet (not submitted): {planned}" in md
    curve = next(iter(specs_of(out["paths"]["index.html"].read_text())["chart-loss_curves"]["datasets"].values()))
    assert max(r["step"] for r in curve) == 400  # the torn line is not there


def test_report_never_imports_torch(env, tmp_path):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"})
    write_run(runs, "g", {"arch": "ngpt"}, lambda s: 3 - 0.003 * s)
    store.close()
    code = ("import sys; from ablate.store import Store; from ablate.report import make_report;"
            f"s = Store({str(runs / 'ablate.duckdb')!r}); s.ingest({str(runs)!r});"
            f"make_report(s, 'g', {COMPARE!r}, {str(tmp_path / 'r')!r});"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "r" / "index.html").exists()


@pytest.mark.usefixtures("specs_only")
def test_knob_grid_shows_memory_saved_and_step_time_paid(env):
    """Each shape with a memory knob beside the same shape without it (GQA stays with GQA)."""
    runs, store, report = env

    def run(overrides, total, tokens_per_s):
        summary = {"tracked_total": total, "tracked_activations": total}
        write_run(runs, "g", overrides, summary=summary, tokens_per_s=tokens_per_s)
    run({"arch": "gpt"}, 100 * 2 ** 20, 1000.0)
    run({"arch": "gpt", "act_ckpt": "blocks"}, 40 * 2 ** 20, 800.0)
    run({"arch": "gpt", "n_kv_head": 2}, 90 * 2 ** 20, 1100.0)
    run({"arch": "gpt", "n_kv_head": 2, "act_ckpt": "blocks", "loss_chunk": 64}, 30 * 2 ** 20, 880.0)
    compare = {"baseline": {"arch": "gpt", "act_ckpt": "none", "n_kv_head": 4, "loss_chunk": None}}
    out = report(compare=compare)
    kn = out["knobs"].set_index("variant")
    assert set(kn.index) == {"act_ckpt=blocks", "n_kv_head=2 act_ckpt=blocks loss_chunk=64"}
    blocks = kn.loc["act_ckpt=blocks"]
    assert blocks.without == "baseline" and blocks.saving_pct == pytest.approx(60.0)
    assert blocks.step_cost_pct == pytest.approx(25.0)  # 1000 / 800 tokens/s: 25% more time per step
    both = kn.loc["n_kv_head=2 act_ckpt=blocks loss_chunk=64"]
    assert both.without == "n_kv_head=2" and both.saving_pct == pytest.approx(100 * (1 - 30 / 90))
    assert both.step_cost_pct == pytest.approx(100 * (1100 / 880 - 1))
    md = out["paths"]["summary.md"].read_text()
    assert "## Memory knobs" in md and "| act_ckpt=blocks | baseline | 40.00 | 100.00 | +60.0% | tracked |" in md


@pytest.mark.usefixtures("specs_only")
def test_intro_is_words_and_no_heading_is_left_empty(env):
    """The intro names the baseline and groups in words (no Python dict or list), and a section
    with nothing to show (no failed runs) has no heading in summary.md or index.html."""
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, eval_se=0.01)
    write_run(runs, "g", {"arch": "ngpt"}, lambda s: 3 - 0.003 * s, eval_se=0.01)
    out = report()
    md, html = out["paths"]["summary.md"].read_text(), out["paths"]["index.html"].read_text()
    intro = md.split("\n## ")[0]
    assert "{" not in intro and "[" not in intro
    assert "Baseline: arch=gpt. Compared within each context" in intro
    assert "Val loss: 320 fixed windows" in intro  # eval_iters 20 x batch 16
    assert "Result (context=256): ngpt vs gpt, curve-mode speedup: 3.00x at 1,000 steps." in intro
    assert "One seed per cell" in intro
    assert "did not finish cleanly" not in md and "did not finish cleanly" not in html


def curve_series(out) -> tuple[set, str]:
    spec = specs_of(out["paths"]["index.html"].read_text())["chart-loss_curves"]
    rows = next(iter(spec["datasets"].values()))
    return {r["series"] for r in rows}, json.dumps(spec["title"])


@pytest.mark.usefixtures("specs_only")
def test_curve_legend_names_the_lr_and_the_subtitle_says_best_lr_only_for_a_sweep(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt", "lr": 2e-3}, lambda s: 3 - 0.001 * s)
    write_run(runs, "g", {"arch": "ngpt", "lr": 5e-3}, lambda s: 3 - 0.002 * s)
    series, title = curve_series(report())  # per-arch lrs, no sweep
    assert series == {"gpt, lr 0.002", "ngpt, lr 0.005"} and "best lr" not in title
    write_run(runs, "g", {"arch": "gpt", "lr": 4e-3}, lambda s: 3 - 0.0009 * s)
    write_run(runs, "g", {"arch": "ngpt", "lr": 2e-3}, lambda s: 3 - 0.0015 * s)
    series, title = curve_series(report())  # a sweep: each variant at its best lr, named
    assert series == {"gpt, lr 0.002", "ngpt, lr 0.005"} and "each variant at its best lr" in title
    assert "one seed per curve" in title and "mean over seeds" not in title  # a mean of one is no mean
    write_run(runs, "g", {"arch": "gpt", "lr": 2e-3, "seed": 1}, lambda s: 3 - 0.0011 * s)
    write_run(runs, "g", {"arch": "ngpt", "lr": 5e-3, "seed": 1}, lambda s: 3 - 0.0021 * s)
    assert "mean over seeds" in curve_series(report())[1]
    runs_one = runs.parent / "one"
    for arch in ("gpt", "ngpt"):  # one lr for everything: nothing to name
        write_run(runs_one, "h", {"arch": arch, "lr": 2e-3})
    store.ingest(runs_one)
    from ablate.report import make_report
    series, title = curve_series(make_report(store, "h", COMPARE, runs.parent / "rh"))
    assert series == {"gpt", "ngpt"} and "best lr" not in title


@pytest.mark.usefixtures("specs_only")
def test_speedup_chart_draws_a_variant_that_never_reaches(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, lambda s: 3 - 0.001 * s)
    write_run(runs, "g", {"arch": "ngpt"}, lambda s: 3 - 0.0005 * s)  # never reaches L*
    spec = specs_of(report()["paths"]["index.html"].read_text())["chart-speedup"]
    rows = next(iter(spec["datasets"].values()))
    assert [(r["kind"], r["value"], r["short"]) for r in rows] == [("bound", 1.0, "< 1x")]
    marks = [layer["mark"] if isinstance(layer["mark"], str) else layer["mark"]["type"] for layer in spec["layer"]]
    assert "point" in marks and "never reached" in json.dumps(spec["title"])


@pytest.mark.usefixtures("specs_only")
def test_lr_sweep_chart_has_a_log_lr_axis_and_marks_diverged_lrs(env):
    runs, store, report = env
    for lr, slope in ((1e-3, 0.0008), (2e-3, 0.001)):
        write_run(runs, "g", {"arch": "gpt", "lr": lr}, lambda s, k=slope: 3 - k * s)
    write_run(runs, "g", {"arch": "gpt", "lr": 4e-3}, lambda s: 3 + s, state="diverged", steps=100)
    out = report()
    spec = specs_of(out["paths"]["index.html"].read_text())["chart-lr_sweep"]
    rows = next(iter(spec["datasets"].values()))
    lost = [r for r in rows if r["kind"] == "lost"]
    assert [(r["lr"], r["what"]) for r in lost] == [(4e-3, "diverged")]
    assert all(r["y"] > 2.0 for r in lost)  # drawn above the losses, inside the panel
    text = json.dumps(spec)
    assert '"type": "log"' in text and "diverged" in json.dumps(spec["title"])
    assert '"values": [0.001, 0.002, 0.004]' in text  # ticks at the swept lrs, the diverged one too
    best = [r for r in rows if r["kind"] == "loss" and r["mark"]]
    assert [(r["lr"], r["lr_edge"]) for r in best] == [(2e-3, "")]  # bracketed by the diverged lr


@pytest.mark.usefixtures("specs_only")
def test_a_report_covers_exactly_the_cells_its_grid_file_plans(env):
    """Runs of another version of the grid (same name, another lr list) live beside its own in
    the store: the report of this file leaves them out of every table and number (they would be
    the "best lr" and change every speedup), and says what it left out."""
    runs, store, report = env
    mine = [{"arch": "gpt", "lr": 0.01, "max_iters": 400}, {"arch": "ngpt", "lr": 0.01, "max_iters": 400}]
    for over, slope in zip(mine, (0.001, 0.002)):
        write_run(runs, "g", over, lambda s, k=slope: 3 - k * s)
    other = write_run(runs, "g", {"arch": "ngpt", "lr": 0.02, "max_iters": 400}, lambda s: 3 - 0.004 * s)
    planned = [{"run_id": c.run_id(), **c.to_dict()} for c in map(config_for, mine)]
    out = report(planned=planned)
    assert sorted(out["cells"].lr) == [0.01, 0.01] and out["status"]["n_runs"] == 2
    curve = out["speedup"][out["speedup"]["mode"] == "curve"].iloc[0]
    assert curve.lr == 0.01 and curve.speedup == pytest.approx(2.0, rel=0.02)  # 0.002 vs 0.001 per step: not 4x
    md = out["paths"]["summary.md"].read_text()
    assert "2 runs in the store (2 done)." in md
    assert f"1 other runs of grid 'g' in the store are not cells of this grid file" in md and other.name in md
    everything = report()  # without a plan (the API's default): every run of the grid name
    assert everything["status"]["n_runs"] == 3 and 0.02 in set(everything["cells"].lr)


@pytest.mark.usefixtures("specs_only")
def test_memory_table_says_each_cells_strategy_and_gpus_and_estimates_per_gpu(env):
    """An fsdp run on 4 GPUs: its row says fsdp and 4, and with no plan estimate the formula's
    per-GPU figure for 4 shards; a ddp run says ddp and 1; an fsdp cell not run yet takes the
    grid's world size (make_report's world_size)."""
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, peak_alloc=GIB)
    fsdp = {"arch": "gpt", "strategy": "fsdp", "n_layer": 3}
    write_run(runs, "g", fsdp, peak_alloc=GIB // 2, summary={"world_size": 4})
    planned = {"arch": "ngpt", "strategy": "fsdp"}
    out = report(planned=[{"run_id": config_for(c).run_id(), **config_for(c).to_dict()}
                          for c in ({"arch": "gpt"}, fsdp, planned)], world_size=8)
    mem = out["memory"].set_index("variant")
    rows = {v: (r.strategy, r.world_size) for v, r in mem.iterrows()}
    assert sorted(rows.values()) == [("ddp", 1), ("fsdp", 4), ("fsdp", 8)]
    (sharded,) = [v for v, (s, w) in rows.items() if w == 4]
    assert mem.loc[sharded, "est_total"] == estimate.memory_breakdown(config_for(fsdp), 4)["total"]
    md = out["paths"]["summary.md"].read_text()
    assert "## Peak memory per GPU" in md and re.search(r"\| fsdp \| 4 \| cpu \|", md)
