"""Plugins (ablate/plugin.py): a plugin key behaves like a built-in one in the plan, the run id,
the store and the report; editing a plugin renames only the cells that use it, and a job runs
the code its cell was planned with; a broken plugin, a colliding key, a failing part are one
line each. The shipped plugin's own model is tested in tests/plugins/test_qk_norm.py."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.core import rundir
from ablate.plan.grid import load_grid, select
from conftest import ROOT, ablate_cli

QK_NORM = ROOT / "plugins" / "qk_norm.py"
BASE = """{{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 30, eval_interval: 10,
        eval_iters: 2, log_interval: 5, device: cpu}}"""
GRID = """name: g
{plugins}
data: {{dataset: 'text:{text}', tokenizer: char}}
base: """ + BASE + """
arch_defaults: {{gpt: {{lr: 3e-3}}, ngpt: {{lr: 1e-2}}}}
{axes}
"""
AXES = """zip:
  - {arch: [gpt, gpt, ngpt], qk_norm: [false, true, false]}
compare: {baseline: {arch: gpt, qk_norm: false}}"""


class Env:
    """A corpus, a copy of plugins/qk_norm.py (so a test may edit it) and grids that use them."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.text = tmp_path / "corpus.txt"
        self.text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
        self.plugin = tmp_path / "qk_norm.py"
        self.plugin.write_bytes(QK_NORM.read_bytes())

    def grid(self, axes: str = AXES, plugins=None, name: str = "grid.yaml") -> Path:
        plugins = [self.plugin] if plugins is None else plugins
        path = self.tmp / name
        path.write_text(GRID.format(plugins=f"plugins: [{', '.join(map(str, plugins))}]" if plugins else "",
                                    text=self.text, axes=axes))
        return path

    def plugin_file(self, source: str, name: str = "plug.py") -> Path:
        path = self.tmp / name
        path.write_text(source)
        return path


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def ids(grid) -> dict:
    return {(c.config.arch, getattr(c.config, "qk_norm", False)): c.run_id for c in grid.cells}


# ---------------------------------------------------------------- plan

def test_plugin_key_is_a_grid_key_like_a_builtin(env):
    grid = load_grid(env.grid())
    assert grid.varied_keys == ["arch", "qk_norm"]
    assert [c.varied for c in grid.cells] == [{"arch": "gpt", "qk_norm": False}, {"arch": "gpt", "qk_norm": True},
                                              {"arch": "ngpt", "qk_norm": False}]
    assert grid.compare == {"baseline": {"arch": "gpt", "qk_norm": False}, "group_by": []}
    assert [c.config.qk_norm for c in select(grid.cells, ["qk_norm=True"])] == [True]
    with pytest.raises(AblateError, match=r"unknown key 'qk_nrom' \(did you mean 'qk_norm'\?\)"):
        select(grid.cells, ["qk_nrom=True"])
    # exclude and include take plugin keys too
    axes = "grid: {arch: [gpt, ngpt], qk_norm: [false, true]}\nexclude: [{arch: ngpt, qk_norm: true}]"
    grid = load_grid(env.grid(axes))
    assert sorted(ids(grid)) == [("gpt", False), ("gpt", True), ("ngpt", False)]


def test_plan_sizes_a_plugin_cell_on_its_model(env):
    """No formula knows a plugin: the plan counts parameters on the model (meta device) and
    simulates the step; both equal the real model's."""
    from ablate.cli import MEASURE
    from ablate.plan.plan import plan_rows
    from ablate.train.build import model_for
    from ablate.train.memtrack import simulate_step

    grid = load_grid(env.grid())
    rows = {(r["config"]["arch"], r["config"]["qk_norm"]): r for r in plan_rows(grid, measure=MEASURE)}
    base, qk = rows[("gpt", False)], rows[("gpt", True)]
    assert base["memory_source"] == "formula" and qk["memory_source"] == "simulated"
    cfg = next(c.config for c in grid.cells if c.config.qk_norm)
    model = model_for(cfg, "cpu")
    assert qk["n_params"] == sum(p.numel() for p in model.parameters()) == base["n_params"] + 2 * 16 * 2  # 2 hd per layer
    assert qk["ckpt_bytes"] == 4 * qk["n_params"]
    assert qk["est_peak_mem_bytes"] == simulate_step(cfg, "cpu")["total"] > 0
    assert qk["flops"] > base["flops"]


BAD_VALUES = [
    ("zip:\n  - {arch: [gpt, gpt], qk_norm: [false, maybe]}", 8, r"key 'qk_norm': 'maybe' has type str, expected bool"),
    ("grid: {arch: [gpt], qk_nrom: [true]}", 7, r"unknown key 'qk_nrom' \(did you mean 'qk_norm'\?\)"),
    ("grid: {arch: [gpt, ngpt], qk_norm: [true]}", 7, r"key 'qk_norm': plugin qk_norm: qk_norm is for arch gpt"),
    ("grid: {arch: [gpt]}\ninclude: [{arch: gpt, plugins: [x]}]", 8, r"'plugins' is derived"),
]


@pytest.mark.parametrize("axes, line, message", BAD_VALUES, ids=["type", "typo", "check", "derived"])
def test_plugin_key_errors_point_at_the_value(env, axes, line, message):
    path = env.grid(axes)
    with pytest.raises(AblateError, match=message) as e:
        load_grid(path)
    assert str(e.value).startswith(f"{path}:{line}: ")


RANGED = '''import torch.nn as nn
from ablate.model.points import MLP
from ablate.plugin import Key

KEYS = {"mlp_mult": Key(int, 4, "hidden width / d", range=(1, 8)),
        "mlp_act": Key(str, "swiglu", "activation", choices=("swiglu", "relu2"))}
POINTS = {"mlp": MLP}
'''


@pytest.mark.parametrize("value, message", [
    ("mlp_mult: [9]", r"key 'mlp_mult': 9 must be <= 8"),
    ("mlp_mult: [0]", r"key 'mlp_mult': 0 must be >= 1"),
    ("mlp_mult: [2.5]", r"key 'mlp_mult': 2.5 has type float, expected int in \[1, 8\]"),
    ("mlp_act: [gelu]", r"key 'mlp_act': 'gelu' is not allowed, expected one of swiglu, relu2"),
    ("mlp_act: [null]", r"key 'mlp_act': null is not allowed"),
])
def test_plugin_ranges_and_choices_are_checked(env, value, message):
    plug = env.plugin_file(RANGED)
    path = env.grid(f"grid: {{arch: [gpt], {value}}}", plugins=[plug])
    with pytest.raises(AblateError, match=message) as e:
        load_grid(path)
    assert str(e.value).startswith(f"{path}:7: ")


# ---------------------------------------------------------------- run id

def test_a_plugin_cell_is_copied_with_its_keys_never_silently_without(env):
    """cfg.replace keeps a plugin key (an attribute, not a field) and checks the change as a grid's
    value; dataclasses.replace, which rebuilds from the fields alone, is refused instead of
    quietly training the cell without its plugin."""
    import dataclasses

    cfg = next(c.config for c in load_grid(env.grid()).cells if c.config.qk_norm)
    copy = cfg.replace(lr=cfg.lr * 2)
    assert copy.qk_norm is True and copy.lr == cfg.lr * 2 and copy.run_id() != cfg.run_id()
    assert cfg.replace() == cfg and cfg.replace().run_id() == cfg.run_id()
    with pytest.raises(AblateError, match="n_layer"):
        cfg.replace(n_layer="two")
    with pytest.raises(TypeError, match=r"plugins declare keys \(qk_norm\).*dataclasses.replace would drop"):
        dataclasses.replace(cfg, lr=1e-3)


def test_default_cells_keep_their_builtin_run_ids(env):
    """A cell that leaves every plugin key at its default is the built-in model: same run id as
    in a grid without the plugin, so its results are shared and never renamed by the plugin."""
    with_plugin = ids(load_grid(env.grid()))
    without = ids(load_grid(env.grid("grid: {arch: [gpt, ngpt]}", plugins=[], name="plain.yaml")))
    assert with_plugin[("gpt", False)] == without[("gpt", False)]
    assert with_plugin[("ngpt", False)] == without[("ngpt", False)]
    assert with_plugin[("gpt", True)] not in without.values()


def test_editing_the_plugin_renames_only_the_cells_that_use_it(env, tmp_path):
    from ablate.launch.submit import write_config
    from ablate.plan.plugins import content_id

    grid = load_grid(env.grid())
    before = ids(grid)
    for cell in grid.cells:
        write_config(grid, cell, "sha")
    qk_cell = next(c for c in grid.cells if c.config.qk_norm)
    doc = json.loads((qk_cell.run_dir / rundir.CONFIG).read_text())
    assert doc["config"]["qk_norm"] is True
    assert doc["config"]["plugins"][0]["content_id"] == content_id(env.plugin.read_bytes())  # recorded
    assert (qk_cell.run_dir / "plugins" / f"{content_id(env.plugin.read_bytes())}.py").read_bytes() == \
        env.plugin.read_bytes()  # the code the job will run
    assert [c for c in grid.cells if (c.run_dir / "plugins").exists()] == [qk_cell]

    env.plugin.write_text(env.plugin.read_text() + "\n# an edit\n")
    after = ids(load_grid(env.grid()))
    assert after[("gpt", True)] != before[("gpt", True)]
    assert {k: v for k, v in after.items() if k != ("gpt", True)} == \
        {k: v for k, v in before.items() if k != ("gpt", True)}
    # the run dirs written before the edit are still trusted: their config.json is their own
    assert all(rundir.identity_problem(c.run_dir) is None for c in grid.cells)


def test_identity_check_refuses_an_edited_declaration(env):
    from ablate.launch.submit import write_config

    grid = load_grid(env.grid())
    cell = next(c for c in grid.cells if c.config.qk_norm)
    write_config(grid, cell, "sha")
    path = cell.run_dir / rundir.CONFIG
    doc = json.loads(path.read_text())
    doc["config"]["plugins"][0]["content_id"] = "0" * 16  # another version of the plugin
    path.write_text(json.dumps(doc))
    assert "hashes to" in rundir.identity_problem(cell.run_dir)
    doc["config"]["plugins"][0]["keys"]["lr"] = {"type": "float", "default": 1.0}  # a built-in key
    path.write_text(json.dumps(doc))
    assert "declares the built-in key 'lr'" in rundir.identity_problem(cell.run_dir)


# ---------------------------------------------------------------- the job

def test_a_job_runs_the_code_its_cell_was_planned_with(env):
    """The run dir keeps the plugin's code: a job (its own process, as every job) trains even
    if the source was broken after submission, and refuses a copy that is not what the cell
    records."""
    from ablate.cli import MEASURE
    from ablate.launch.submit import write_config
    from ablate.plan.plan import plan_rows

    grid = load_grid(env.grid())
    cell = next(c for c in grid.cells if c.config.qk_norm)
    planned = next(r for r in plan_rows(grid, measure=MEASURE) if r["run_id"] == cell.run_id)
    write_config(grid, cell, "sha")
    env.plugin.write_text("raise RuntimeError('edited after submission')\n")
    r = ablate_cli("train", cell.run_dir)
    assert r.returncode == 0 and "ablate train: done" in r.stderr, r.stderr[-2000:]
    summary = json.loads((cell.run_dir / rundir.SUMMARY).read_text())
    assert summary["params_total"] == planned["n_params"]

    copy = next((cell.run_dir / "plugins").iterdir())
    copy.write_text(copy.read_text() + "\n# tampered\n")
    for name in ("ckpt.pt", rundir.SUMMARY, rundir.STATUS):  # a finished run keeps no ckpt.pt (keep_ckpt)
        (cell.run_dir / name).unlink(missing_ok=True)
    r = ablate_cli("train", cell.run_dir)
    assert r.returncode == 2 and "changed since this cell was planned" in r.stderr.splitlines()[-1], r.stderr


@pytest.mark.parametrize("as_module", [False, True])
def test_a_queued_job_runs_its_copy_when_the_plugin_moved_or_changed(env, tmp_path, as_module):
    """The run dir holds the plugin's code: a job never looks for the source again, so moving a
    file plugin away, or editing a module plugin while the job waits, changes nothing (README's
    promise); a module's copy still runs inside its package (relative imports work)."""
    from ablate.launch.submit import write_config

    pkg = tmp_path / "site" / "mypkg"
    if as_module:
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "helpers.py").write_text("EPS = 1e-6\n")
        (pkg / "qk.py").write_text(env.plugin.read_text() + "\nfrom .helpers import EPS  # a relative import\n")
        sys.path.insert(0, str(pkg.parent))
    try:
        grid = load_grid(env.grid(plugins=["mypkg.qk"] if as_module else None))
    finally:
        if as_module:
            sys.path.remove(str(pkg.parent))
    cell = next(c for c in grid.cells if c.config.qk_norm)
    write_config(grid, cell, "sha")
    if as_module:
        (pkg / "qk.py").write_text("raise RuntimeError('edited while the job waited')\n")
    else:
        env.plugin.rename(tmp_path / "moved.py")
    r = ablate_cli("train", cell.run_dir, env={"PYTHONPATH": str(pkg.parent)} if as_module else None)
    assert r.returncode == 0 and "ablate train: done" in r.stderr, r.stderr[-2000:]


# ---------------------------------------------------------------- store and report

def _synthetic_grid(env, runs):
    """The qk_norm grid's three cells as finished runs: the plugin cell reaches the baseline's
    final loss at half its steps (speedup 2x), nGPT at two thirds of them (1.5x)."""
    from synthetic import write_run

    grid = load_grid(env.grid())
    decls = next(c.config for c in grid.cells).plugins
    loss = {("gpt", False): lambda s: 3 - 0.002 * s, ("gpt", True): lambda s: 3 - 0.004 * s,
            ("ngpt", False): lambda s: 3 - 0.003 * s}
    for (arch, qk), fn in loss.items():
        write_run(runs, "g", {"arch": arch, "qk_norm": qk, "plugins": decls, "max_iters": 500}, fn,
                  peak_alloc=(2 + qk) * 2 ** 20, summary={"params_total": 1000 + 64 * qk, "params_embedding": 100,
                                                           "params_non_embedding": 900 + 64 * qk})
    write_run(runs, "other", {"arch": "gpt", "max_iters": 500})  # a grid without the plugin
    return grid


def test_store_has_a_typed_column_per_plugin_key(env, tmp_path):
    from ablate.store import Store

    from synthetic import write_run

    runs = tmp_path / "runs"
    write_run(runs, "before", {"arch": "ngpt", "max_iters": 500})  # in the store before the plugin column
    with Store(runs / "ablate.duckdb") as store:
        assert store.ingest(runs)["read"] == 1
    _synthetic_grid(env, runs)
    with Store(runs / "ablate.duckdb") as store:
        assert store.ingest(runs)["read"] == 4
        types = dict(store.query("select column_name, data_type from information_schema.columns "
                                 "where table_name = 'runs'").values)
        assert types["qk_norm"] == "BOOLEAN" and types["plugins"] == "VARCHAR"
        rows = store.query("select grid, arch, qk_norm, plugins from runs where grid != 'before' "
                           "order by grid, arch, qk_norm")
        assert rows.qk_norm.tolist()[:3] == [False, True, False] and rows.qk_norm.isna().tolist()[3]
        assert rows.plugins.isna().tolist() == [True, False, True, True]
        assert re.fullmatch(r"qk_norm@[0-9a-f]{16}", rows.plugins[1])
        cells = store.query("select arch, qk_norm from cells where grid = 'g' order by arch, qk_norm")
        assert cells.values.tolist() == [["gpt", False], ["gpt", True], ["ngpt", False]]
        # the new column re-took every run's digest: a second ingest trusts them all, reads nothing
        assert store.ingest(runs)["read"] == 0
    r = ablate_cli("query", "select arch, qk_norm from runs where grid = 'g' and qk_norm", "--db",
                   runs / "ablate.duckdb", env={"ABLATE_RUNS_DIR": str(runs)})
    assert r.returncode == 0 and re.search(r"gpt\s+True", r.stdout) and "ngpt" not in r.stdout, r.stderr


def test_report_compares_plugin_variants(env, tmp_path, monkeypatch):
    from ablate.report import charts, make_report, render
    from ablate.store import Store

    monkeypatch.setattr(render, "write_chart", lambda chart, stem: chart.to_dict())  # numbers, not pictures
    runs = tmp_path / "runs"
    grid = _synthetic_grid(env, runs)
    with Store(runs / "ablate.duckdb") as store:
        store.ingest(runs)
        out = make_report(store, "g", grid.compare, tmp_path / "report")
    assert out["comparison"].variant_keys == ["arch", "qk_norm"]
    speedup = out["speedup"].set_index("variant")
    assert speedup.loc["qk_norm", "speedup"] == pytest.approx(2.0, rel=1e-6)
    assert speedup.loc["ngpt", "speedup"] == pytest.approx(1.5, rel=1e-6)
    for table in ("memory", "size", "throughput"):
        assert out[table].variant.tolist() == ["baseline", "qk_norm", "ngpt"], table
    assert out["size"].set_index("variant").loc["qk_norm", "delta_params"] == 64
    assert out["memory"].set_index("variant").loc["qk_norm", "delta_alloc"] == 2 ** 20
    subtitle = json.dumps(charts.memory(out["memory"]).to_dict()["title"])  # no formula knows qk_norm
    assert "for a plugin cell, its simulated step" in subtitle
    assert "plugin" not in json.dumps(charts.memory(out["memory"][out["memory"].variant != "qk_norm"]).to_dict()["title"])
    assert "| all | qk_norm | curve |" in (tmp_path / "report" / "summary.md").read_text()


# ---------------------------------------------------------------- problems are one line

PROBLEMS = {
    "syntax": ("def f(:\n", r"plug\.py:1: plugin \S+plug\.py failed to import: SyntaxError"),
    "import": ("import torch\n\nx = nn.Linear(2, 2)\n",
               r"plug\.py:3: plugin \S+plug\.py failed to import: NameError: name 'nn' is not defined"),
    "no keys": ("POINTS = {}\n", r"plug\.py: plugin plug: defines no KEYS"),
    "exits": ("import sys\nsys.exit(3)\n", r"plug\.py:2: plugin \S+plug\.py failed to import: SystemExit: 3"),
    "bad default": ("from ablate.plugin import Key\nKEYS = {'x': Key(bool, 'no', 'help')}\nPOINTS = {'qk': len}\n",
                    r"plug\.py:2: plugin plug: key 'x': default 'no' has type str, expected bool"),
    "two-line help": ("from ablate.plugin import Key\nKEYS = {'x': Key(bool, False, 'a\\nb')}\nPOINTS = {'qk': len}\n",
                      r"plug\.py:2: plugin plug: key 'x': help must be one line"),
    "unknown point": ("from ablate.plugin import Key\nKEYS = {'x': Key(bool, False, 'help')}\nPOINTS = {'qkv': len}\n",
                      r"plug\.py: plugin plug: POINTS: unknown point 'qkv' \(did you mean 'qk'\?\)"),
    "built-in key": ("from ablate.plugin import Key\n\nKEYS = {'window': Key(int, None, 'w')}\nPOINTS = {'qk': len}\n",
                     r"plug\.py:3: plugin plug: key 'window' is a built-in config key"),
    "store column": ("from ablate.plugin import Key\nKEYS = {'state': Key(str, 'a', 'w')}\nPOINTS = {'qk': len}\n",
                     r"plug\.py:2: plugin plug: key 'state' is a name the store or the report already uses"),
}


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_a_broken_plugin_is_one_line(env, kind):
    source, message = PROBLEMS[kind]
    grid = env.grid("grid: {arch: [gpt]}", plugins=[env.plugin_file(source)])
    r = ablate_cli("plan", grid)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"ablate: error: {grid}:2: plugins: ") and re.search(message, lines[0]), lines[0]


def test_plugin_problems_between_plugins_and_files(env):
    twin = env.plugin_file(env.plugin.read_text(), "twin.py")
    with pytest.raises(AblateError, match=r"key 'qk_norm' is also declared by plugin qk_norm"):
        load_grid(env.grid("grid: {arch: [gpt]}", plugins=[env.plugin, twin]))
    with pytest.raises(AblateError, match=r":2: plugins: plugin nothere\.py: no such file"):
        load_grid(env.grid("grid: {arch: [gpt]}", plugins=["nothere.py"]))
    # a grid that does not name a broken plugin never loads it
    env.plugin_file("raise SystemExit(3)\n", "broken.py")
    assert len(load_grid(env.grid("grid: {arch: [gpt, ngpt]}", plugins=[], name="plain.yaml")).cells) == 2


FAILING_PART = '''from ablate.model.points import RotaryQK
from ablate.plugin import Key

KEYS = {{"bad": Key(bool, False, "a part that fails")}}


class Bad(RotaryQK):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.n = 1 // 0 if {when} == "init" else 1

    def forward(self, heads, rope):
        return super().forward(heads, rope) if 1 // (0 if {when} == "forward" else 1) else None


POINTS = {{"qk": Bad}}
'''


@pytest.mark.parametrize("when, line, doing", [("init", 10, "building the model"),
                                               ("forward", 13, "a simulated training step")])
def test_a_part_that_fails_is_one_line_at_plan_time(env, when, line, doing):
    plug = env.plugin_file(FAILING_PART.format(when=repr(when)))
    grid = env.grid("grid: {arch: [gpt], bad: [false, true]}", plugins=[plug])
    r = ablate_cli("plan", grid)
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("simulat")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0] == f"ablate: error: {plug}:{line}: plugin plug: {doing} failed: ZeroDivisionError: " \
                       "integer division or modulo by zero", lines[0]


def test_the_model_point_replaces_the_whole_model(env):
    from ablate.model.gpt import GPT
    from ablate.train.build import model_for

    plug = env.plugin_file('''from ablate.model.gpt import GPT
from ablate.plugin import Key

KEYS = {"mine": Key(bool, False, "my own model")}


class Mine(GPT):
    """GPT with a doubled logit scale."""

    def head_weight(self):
        return 2 * super().head_weight()


POINTS = {"model": Mine}
''')
    grid = load_grid(env.grid("grid: {arch: [gpt], mine: [false, true]}", plugins=[plug]))
    plain, mine = (model_for(c.config, "cpu") for c in grid.cells)
    assert type(plain) is GPT and type(mine).__name__ == "Mine"
    mine.load_state_dict(plain.state_dict())
    import torch

    idx = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(mine(idx)[0], 2 * plain(idx)[0])


def test_a_grid_with_plugins_runs_end_to_end(env):
    """plan -> submit -> train -> store -> report through the CLI, as a user runs it."""
    grid = env.grid()
    r = ablate_cli("run", grid, "--executor", "local")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = (Path(os.environ["ABLATE_REPORTS_DIR"]) / "g" / "summary.md").read_text()
    for variant in ("| all | qk_norm | curve |", "| all | ngpt | curve |"):
        assert variant in summary
    rows = json.loads(ablate_cli("plan", grid, "--json").stdout)
    assert [r["state"] for r in rows] == ["done"] * 3


def test_a_plugin_can_be_an_importable_module(env, monkeypatch):
    """`plugins: [module.name]`: imported as itself (its own imports work), hashed by its source."""
    from ablate.plan.plugins import content_id

    pkg = env.tmp / "mylab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("from ablate.model.points import RotaryQK as Base\n")
    (pkg / "knob.py").write_text(QK_NORM.read_text().replace("from ablate.model.points import RotaryQK",
                                                             "from .helpers import Base as RotaryQK"))
    monkeypatch.syspath_prepend(str(env.tmp))
    grid = load_grid(env.grid(plugins=["mylab.knob"]))
    decl = grid.cells[0].config.plugins[0]
    assert decl["source"] == "mylab.knob" and decl["name"] == "knob"
    assert decl["content_id"] == content_id((pkg / "knob.py").read_bytes())
    as_file = ids(load_grid(env.grid(name="file.yaml")))  # other bytes: only the cell that uses it differs
    mine = ids(grid)
    assert mine[("gpt", True)] != as_file[("gpt", True)]
    assert {k: v for k, v in mine.items() if k[1] is False} == {k: v for k, v in as_file.items() if k[1] is False}


def test_the_model_builder_is_handed_a_plugins_parts_and_never_loads_one(env):
    """model/ never imports the loader: a cell that uses a plugin cannot be built without the
    parts its caller resolved (ablate.train.build does it for every caller)."""
    import torch

    from ablate.model import build_model
    from ablate.plan.plugins import parts
    from ablate.train.build import model_for

    grid = load_grid(env.grid())
    cfg = next(c.config for c in grid.cells if c.config.qk_norm)
    with pytest.raises(AblateError, match=r"uses plugins \(qk_norm@[0-9a-f]{16}\): resolve their parts"):
        build_model(cfg, "cpu")
    torch.manual_seed(0)
    handed = build_model(cfg, "cpu", parts(cfg))
    torch.manual_seed(0)
    resolved = model_for(cfg, "cpu")
    assert type(handed.blocks[0].qk).__name__ == type(resolved.blocks[0].qk).__name__ == "QKNorm"
    assert all(torch.equal(a, b) for a, b in zip(handed.state_dict().values(), resolved.state_dict().values()))


F64_PLUGIN = '''import torch

from ablate.model.points import MLP
from ablate.plugin import Key

KEYS = {"wide": Key(bool, False, "an MLP that sets torch's default dtype on the way")}


class Wide(MLP):
    def __init__(self, cfg):
        torch.set_default_dtype(torch.float64)  # a careless part: process-wide state
        torch.use_deterministic_algorithms(True)
        super().__init__(cfg)


POINTS = {"mlp": Wide}
'''


def test_a_parts_global_torch_state_never_reaches_the_next_cells_figures(env, tmp_path):
    """One process simulates many shapes (and sizes many models): a part that sets torch's
    default dtype (or deterministic algorithms) must not change the figures of the cells
    simulated after it, nor the process; and the cache records the state its figures come from."""
    import torch

    from ablate.plan.simcache import TORCH_STATE, Cache, simulate
    from ablate.train.build import sizes_for
    from ablate.train.memtrack import simulate_config

    plug = env.plugin_file(F64_PLUGIN)
    grid = load_grid(env.grid("grid: {arch: [gpt], wide: [true, false]}", plugins=[plug]))
    careless, plain = grid.cells  # simulated in this order, in this process
    clean = simulate([plain], 0, step=simulate_config, cache=Cache(tmp_path / "alone.json"))[plain.run_id]
    both = simulate([careless, plain], 0, step=simulate_config, workers=1, cache=Cache(tmp_path / "both.json"))
    assert both[plain.run_id] == clean
    assert both[careless.run_id]["total"] > clean["total"]  # the careless cell's own step is fp64 (its business)
    assert torch.get_default_dtype() == torch.float32 and not torch.are_deterministic_algorithms_enabled()
    sizes_for(careless.config)
    assert torch.get_default_dtype() == torch.float32
    entries = json.loads((tmp_path / "both.json").read_text())
    assert [e["torch_state"] for e in entries.values()] == [TORCH_STATE, TORCH_STATE]
    stale = {k: {c: v for c, v in e.items() if c != "torch_state"} for k, e in entries.items()}
    (tmp_path / "both.json").write_text(json.dumps(stale))  # an entry that does not say its state
    assert simulate([plain], 0, cache=Cache(tmp_path / "both.json")) == {}  # is not trusted

# ---------------------------------------------------------------- plugins that compose

SOFTCAP, ALIBI, Z_LOSS = (ROOT / "plugins" / f"{n}.py" for n in ("softcap", "alibi", "z_loss"))
BOTH = "grid: {arch: [gpt], alibi: [false, true], attn_softcap: [null, 0.5]}"


def test_plugins_that_fill_one_point_compose_in_the_grids_order(env):
    """alibi and softcap both fill `scores`: their score_mods run in the order the grid lists the
    plugins, so that order is part of the identity of a cell that uses both, and of no other."""
    import torch

    from ablate.train.build import model_for

    first = load_grid(env.grid(BOTH, plugins=[ALIBI, SOFTCAP], name="a.yaml"))
    second = load_grid(env.grid(BOTH, plugins=[SOFTCAP, ALIBI], name="b.yaml"))

    def by_keys(grid):
        return {(c.config.alibi, c.config.attn_softcap): c for c in grid.cells}
    a, b = by_keys(first), by_keys(second)
    assert [a[k].run_id == b[k].run_id for k in a] == [True, True, True, False]  # only (True, 0.5) uses both
    assert a[(False, None)].run_id == load_grid(env.grid("grid: {arch: [gpt]}", plugins=[], name="p.yaml")).cells[0].run_id
    models = {}
    for name, cell in (("a", a[(True, 0.5)]), ("b", b[(True, 0.5)])):
        torch.manual_seed(0)
        models[name] = model_for(cell.config, "cpu")
    assert [type(p).__name__ for p in models["a"].blocks[0].scores] == ["Scores", "Alibi", "AttnSoftCap"]
    assert [type(p).__name__ for p in models["b"].blocks[0].scores] == ["Scores", "AttnSoftCap", "Alibi"]
    from ablate.model.ops import rope_cos_sin

    x, rope = torch.randn(2, 16, 32) * 4, rope_cos_sin(16, 16)
    block_a, block_b = models["a"].blocks[0], models["b"].blocks[0]
    y_a, y_b = (blk.attn(x, rope, blk.qk, blk.scores) for blk in (block_a, block_b))
    assert not torch.allclose(y_a, y_b, atol=1e-3)  # c tanh((s - bias) / c) is not c tanh(s / c) - bias


def test_loss_terms_and_head_transforms_of_several_plugins_run_together(env):
    """Three plugins, four points in one cell (qk, scores twice, head, loss): it plans, builds and trains."""
    axes = "grid: {arch: [gpt], alibi: [true], attn_softcap: [5.0], logit_softcap: [3.0], z_loss: [1.0e-4]}"
    grid = load_grid(env.grid(axes, plugins=[ALIBI, SOFTCAP, Z_LOSS]))
    from ablate.train.build import model_for

    m = model_for(grid.cells[0].config, "cpu")
    assert [type(p).__name__ for p in m.loss] == ["CrossEntropy", "ZLoss"]
    assert [type(p).__name__ for p in m.head] == ["Logits", "LogitSoftCap"] and type(m.blocks[0].qk).__name__ == "NoRope"


TWO_MODELS = '''from ablate.model.gpt import GPT
from ablate.plugin import Key

KEYS = {{"{key}": Key(bool, False, "a model of my own")}}


class Mine(GPT):
    pass


POINTS = {{"model": Mine}}
'''


def test_two_model_replacements_in_one_cell_are_one_line(env):
    one, two = (env.plugin_file(TWO_MODELS.format(key=k), f"{k}.py") for k in ("mine", "yours"))
    grid = env.grid("grid: {arch: [gpt], mine: [true], yours: [true]}", plugins=[one, two])
    r = ablate_cli("plan", grid)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(r"key 'yours': plugins mine and yours both fill the point 'model' in this cell, which takes one "
                     r"part \(points that compose: scores, head, loss\): use one of them per cell", lines[0]), lines[0]


WHOLE_SEQUENCE_HEAD = '''import torch.nn as nn
from ablate.plugin import Key

KEYS = {"smooth": Key(bool, False, "logits averaged with the previous position's")}


class Smooth(nn.Module):
    per_token = False  # it mixes positions: the chunked loss cannot run it

    def __init__(self, cfg):
        super().__init__()

    def forward(self, logits):
        return (logits + logits.roll(1, dims=-2)) / 2


POINTS = {"head": Smooth}
'''


def test_loss_chunk_with_a_head_that_needs_whole_sequences_is_one_line(env):
    plug = env.plugin_file(WHOLE_SEQUENCE_HEAD, "smooth.py")
    grid = env.grid("grid: {arch: [gpt], smooth: [true], loss_chunk: [null, 32]}", plugins=[plug])
    r = ablate_cli("plan", grid)
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("simulat")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0] == (f"ablate: error: key 'loss_chunk': Smooth ({plug}) needs whole sequences (per_token = False), "
                        "but loss_chunk runs the head and the loss chunk by chunk: set loss_chunk: null for this cell")
