import textwrap
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.plan.grid import load_grid, select
from ablate.plan.plan import lr_sweep_warning

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
name: g
data: {dataset: shakespeare, tokenizer: char}
base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, max_iters: 10}
grid:
  arch: [gpt, ngpt]
"""


def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_cross_product_in_file_order(tmp_path):
    g = load_grid(write(tmp_path, GOOD + "  n_layer: [2, 4]\n"))
    assert [(c.config.arch, c.config.n_layer) for c in g.cells] == [("gpt", 2), ("gpt", 4), ("ngpt", 2), ("ngpt", 4)]
    assert g.varied_keys[:2] == ["arch", "n_layer"]
    assert len({c.run_id for c in g.cells}) == 4
    assert all(c.run_dir.parent.name == "g" for c in g.cells)


def test_zip_exclude_include_seeds_and_arch_defaults(tmp_path):
    g = load_grid(write(tmp_path, GOOD + """
zip:
  - {context: [16, 32], batch_size: [4, 2]}
exclude:
  - {arch: ngpt, context: 32}
include:
  - {arch: gpt, n_layer: 4}
seeds: [0, 1]
arch_defaults:
  ngpt: {lr: 5e-3}
"""))
    cells = [(c.config.arch, c.config.context, c.config.batch_size, c.config.n_layer, c.config.seed) for c in g.cells]
    assert cells == [
        ("gpt", 16, 4, 2, 0), ("gpt", 16, 4, 2, 1), ("gpt", 32, 2, 2, 0), ("gpt", 32, 2, 2, 1),
        ("ngpt", 16, 4, 2, 0), ("ngpt", 16, 4, 2, 1),
        ("gpt", 16, 16, 4, 0), ("gpt", 16, 16, 4, 1),
    ]
    assert {c.config.lr for c in g.cells if c.config.arch == "ngpt"} == {5e-3}
    assert {c.config.lr for c in g.cells if c.config.arch == "gpt"} == {3e-3}
    assert g.compare == {"baseline": {"arch": "gpt"}, "group_by": ["context", "batch_size", "n_layer"]}


def test_default_comparison_groups_leave_out_the_lr_sweep_and_the_budgets(tmp_path):
    g = load_grid(write(tmp_path, GOOD + "  lr: [1e-3, 2e-3, 4e-3]\n  max_iters: [100, 200]\n"
                        "  context: [16, 32]\nseeds: [0, 1]\n"))
    assert g.compare == {"baseline": {"arch": "gpt"}, "group_by": ["context"]}


def test_explicit_axis_beats_arch_default(tmp_path):
    g = load_grid(write(tmp_path, GOOD.replace("  arch: [gpt, ngpt]", "  arch: [ngpt]\n  lr: [1e-3]")
                        + "arch_defaults: {ngpt: {lr: 5e-3}}\n"))
    assert g.cells[0].config.lr == 1e-3


def test_duplicate_cells_kept_once_with_warning(tmp_path):
    g = load_grid(write(tmp_path, GOOD + "include: [{arch: gpt}]\n"))
    assert len(g.cells) == 2
    assert any("same config" in w for w in g.warnings)


@pytest.mark.parametrize("resources, warned", [("", True), ("resources: {gpus: 1}\n", True),
                                                ("resources: {gpus: 2}\n", False), ("resources: {nodes: 2}\n", False)])
def test_fsdp_on_one_process_is_warned(tmp_path, resources, warned):
    """fsdp shards over the job's processes: with one there is nothing to divide."""
    g = load_grid(write(tmp_path, GOOD + "  strategy: [ddp, fsdp]\n" + resources))
    assert any("strategy fsdp on a job of one process shards nothing" in w for w in g.warnings) == warned
    assert not any("shards nothing" in w for w in load_grid(write(tmp_path, GOOD + resources, "ddp.yaml")).warnings)


def test_unused_exclude_warns(tmp_path):
    g = load_grid(write(tmp_path, GOOD + "exclude: [{arch: gpt, n_layer: 9}]\n"))
    assert any("matches no cell" in w for w in g.warnings)


def test_where_filter(tmp_path):
    g = load_grid(write(tmp_path, GOOD + "  lr: [0.001, 0.002]\n"))
    assert [c.config.lr for c in select(g.cells, ["arch=ngpt", "lr=2e-3"])] == [0.002]
    with pytest.raises(AblateError, match="unknown key 'acrh'"):
        select(g.cells, ["acrh=gpt"])


@pytest.mark.parametrize("name, expected", [("quickstart", 12), ("quickstart_sweep", 72), ("ngpt_vs_gpt", 42),
                                            ("ablations", 12)])
def test_shipped_grids(name, expected):
    g = load_grid(ROOT / "grids" / f"{name}.yaml")
    assert len(g.cells) == expected
    assert g.name == name


def test_quickstart_is_measured_by_its_sweep():
    """The demo's cells are cells of the sweep its numbers come from (seed 0: same configs, same
    run ids, so the same final losses), it sweeps three lrs per arch, and its budgets and lrs
    stay inside one comparison group (budget mode, best lr per arch)."""
    demo, sweep = (load_grid(ROOT / "grids" / f"{n}.yaml") for n in ("quickstart", "quickstart_sweep"))
    assert {c.run_id for c in demo.cells} <= {c.run_id for c in sweep.cells if c.config.seed == 0}
    assert demo.compare["group_by"] == [] and lr_sweep_warning(demo) is None
    for arch in ("gpt", "ngpt"):
        assert len({c.config.lr for c in demo.cells if c.config.arch == arch}) == 3


def test_shipped_reference_grid_is_the_nvidia_recipe():
    g = load_grid(ROOT / "grids" / "ngpt_vs_gpt.yaml")
    budgets = {a: sorted({c.config.max_iters for c in g.cells if c.config.arch == a}) for a in ("gpt", "ngpt")}
    assert budgets == {"gpt": [10000, 50000, 100000, 200000], "ngpt": [10000, 20000, 50000]}
    for c in g.cells:
        assert c.config.batch_size * c.config.grad_accum == 512
        assert (c.config.weight_decay, c.config.warmup_iters) == ((0.1, 2000) if c.config.arch == "gpt" else (0.0, 0))
    # each arch at its best lr, as the paper compares: lrs and budgets inside a context's group,
    # and an lr sweep that can bracket an optimum (three lrs around the reference's 3e-3)
    assert g.compare["group_by"] == ["context"]
    assert sorted({c.config.lr for c in g.cells}) == [1.5e-3, 3e-3, 6e-3] and lr_sweep_warning(g) is None


# ---- malformed grids: each gets its own one-line error naming the file (and line where known)
BAD = [
    ("missing.yaml", None, "no such grid file"),
    ("bad_yaml", "name: g\ngrid: {arch: [gpt\n", "invalid YAML"),
    ("tab", "name: g\ngrid:\n\tarch: [gpt]\n", "invalid YAML"),
    ("python_tag", "name: !!python/object/apply:os.system ['true']\ngrid: {arch: [gpt]}\n", "tags that construct objects are not allowed"),
    ("dup_top", "name: g\nname: h\ngrid: {arch: [gpt]}\n", ":2: duplicate key 'name' (first at line 1)"),
    ("dup_base", "name: g\nbase:\n  lr: 1e-3\n  lr: 2e-3\ngrid: {arch: [gpt]}\n", ":4: duplicate key 'lr'"),
    ("list_doc", "- 1\n- 2\n", "a grid must be a YAML mapping"),
    ("empty_doc", "", "a grid must be a YAML mapping"),
    ("no_name", "grid: {arch: [gpt]}\n", "'name' must be a plain identifier"),
    ("path_name", "name: ../../etc\ngrid: {arch: [gpt]}\n", "'name' must be a plain identifier"),
    ("slash_name", "name: a/b\ngrid: {arch: [gpt]}\n", "'name' must be a plain identifier"),
    ("top_typo", "name: g\ngrdi: {arch: [gpt]}\n", "unknown top-level key 'grdi' (did you mean 'grid'?)"),
    ("base_typo", "name: g\nbase: {n_layr: 2}\ngrid: {arch: [gpt]}\n", ":2: base: unknown key 'n_layr' (did you mean 'n_layer'?)"),
    ("grid_typo", "name: g\ngrid: {archh: [gpt]}\n", "grid: unknown key 'archh' (did you mean 'arch'?)"),
    ("grid_scalar", "name: g\ngrid: {arch: gpt}\n", "'arch' must be a non-empty list"),
    ("grid_empty_list", "name: g\ngrid: {arch: []}\n", "'arch' must be a non-empty list"),
    ("grid_not_map", "name: g\ngrid: [gpt, ngpt]\n", "'grid' must be a mapping"),
    ("wrong_type", "name: g\ngrid: {n_layer: [two]}\n", "key 'n_layer': 'two' has type str, expected int"),
    ("bool_for_int", "name: g\ngrid: {n_layer: [true]}\n", "key 'n_layer': True has type bool, expected int"),
    ("unknown_arch", "name: g\ngrid: {arch: [mamba]}\n", "key 'arch': 'mamba' is not allowed, expected one of gpt, ngpt"),
    ("zip_lengths", "name: g\nzip: [{context: [16, 32], batch_size: [1]}]\n", "zip: lists must have equal lengths"),
    ("zip_and_grid", "name: g\ngrid: {context: [16]}\nzip: [{context: [16, 32], batch_size: [1, 2]}]\n", "is also a grid axis"),
    ("zip_typo", "name: g\nzip: [{contxt: [16], batch_size: [1]}]\n", "zip: unknown key 'contxt' (did you mean 'context'?)"),
    ("kv_divides", "name: g\nbase: {n_head: 4}\ngrid: {n_kv_head: [3]}\n", "'n_kv_head': 3 must divide n_head=4"),
    ("share_divides", "name: g\nbase: {n_layer: 4}\ngrid: {share_attn: [3]}\n", "'share_attn': 3 must divide n_layer=4"),
    ("window_zero", "name: g\ngrid: {window: [0]}\n", "'window': 0 must be >= 1"),
    ("embd_heads", "name: g\nbase: {n_embd: 100, n_head: 3}\ngrid: {arch: [gpt]}\n", "'n_embd': 100 is not divisible by n_head=3"),
    ("odd_head_dim", "name: g\nbase: {n_embd: 36, n_head: 4}\ngrid: {arch: [gpt]}\n", "head_dim = n_embd/n_head = 9 is odd"),
    ("flash_cpu", "name: g\nbase: {device: cpu}\ngrid: {attn_backend: [flash]}\n", "flash needs CUDA"),
    ("flash_fp32", "name: g\nbase: {device: cuda}\ngrid: {attn_backend: [flash]}\n", "flash runs in bf16 only"),
    ("flex_cpu_train", "name: g\nbase: {device: cpu}\ngrid: {attn_backend: [flex]}\n", "flex cannot train on cpu"),
    ("bf16_params_fp32", "name: g\nbase: {device: cuda, param_dtype: bf16}\ngrid: {arch: [gpt]}\n", "bf16 weights need dtype: bf16"),
    ("bf16_params_cpu", "name: g\nbase: {device: cpu, dtype: bf16, param_dtype: bf16}\ngrid: {arch: [gpt]}\n", "bf16 block matrices need CUDA"),
    ("unknown_dataset", "name: g\ndata: {dataset: shakespear}\ngrid: {arch: [gpt]}\n", "did you mean 'shakespeare'"),
    ("missing_text", "name: g\ndata: {dataset: 'text:/nonexistent/file.txt'}\ngrid: {arch: [gpt]}\n", "/nonexistent/file.txt"),
    ("data_typo", "name: g\ndata: {datset: shakespeare}\ngrid: {arch: [gpt]}\n", "data: unknown key 'datset' (did you mean 'dataset'?)"),
    ("small_vocab", "name: g\nbase: {vocab_size: 10}\ngrid: {arch: [gpt]}\n", "smaller than the data's vocabulary"),
    ("all_excluded", "name: g\ngrid: {arch: [gpt]}\nexclude: [{arch: gpt}]\n", "the grid has no cells"),
    ("exclude_typo", "name: g\ngrid: {arch: [gpt]}\nexclude: [{acrh: gpt}]\n", "exclude: unknown key 'acrh'"),
    ("seeds_type", "name: g\ngrid: {arch: [gpt]}\nseeds: 3\n", "'seeds' must be a non-empty list of integers"),
    ("seeds_dup", "name: g\ngrid: {arch: [gpt]}\nseeds: [1, 1]\n", "'seeds' has duplicates"),
    ("seed_twice", "name: g\ngrid: {seed: [1, 2]}\nseeds: [0]\n", "'seed' is both a grid axis and 'seeds'"),
    ("arch_defaults_arch", "name: g\ngrid: {arch: [gpt]}\narch_defaults: {gtp: {lr: 1e-3}}\n", "arch_defaults: unknown arch 'gtp'"),
    ("arch_defaults_key", "name: g\ngrid: {arch: [gpt]}\narch_defaults: {gpt: {lrr: 1e-3}}\n", "arch_defaults.gpt: unknown key 'lrr'"),
    ("resources_key", "name: g\ngrid: {arch: [gpt]}\nresources: {gpu: 1}\n", "resources: unknown key 'gpu' (did you mean 'gpus'?)"),
    ("resources_type", "name: g\ngrid: {arch: [gpt]}\nresources: {gpus: two}\n", "resources: 'gpus' must be a non-negative integer"),
    ("compare_key", "name: g\ngrid: {arch: [gpt]}\ncompare: {basline: {arch: gpt}}\n", "compare: unknown key 'basline' (did you mean 'baseline'?)"),
    ("compare_group", "name: g\ngrid: {arch: [gpt]}\ncompare: {group_by: [contxt]}\n", "compare.group_by: unknown key 'contxt'"),
    ("include_typo", "name: g\ngrid: {arch: [gpt]}\ninclude: [{n_heads: 2}]\n", "include: unknown key 'n_heads' (did you mean 'n_head'?)"),
    ("negative_iters", "name: g\ngrid: {max_iters: [0]}\n", "'max_iters': 0 must be >= 1"),
]


@pytest.mark.parametrize("case, text, message", BAD, ids=[b[0] for b in BAD])
def test_malformed_grid_gives_one_clear_line(tmp_path, case, text, message):
    path = tmp_path / "missing.yaml" if text is None else write(tmp_path, text, f"{case}.yaml")
    with pytest.raises(AblateError) as e:
        load_grid(path)
    msg = str(e.value)
    assert message in msg, msg
    assert str(path) in msg and "\n" not in msg


def test_bad_cell_error_names_the_line_and_cell(tmp_path):
    path = write(tmp_path, "name: g\nbase:\n  n_head: 4\ngrid:\n  n_kv_head: [2, 3]\n")
    with pytest.raises(AblateError) as e:
        load_grid(path)
    assert f"{path}:5:" in str(e.value) and "(cell n_kv_head=3)" in str(e.value)


def test_malformed_cases_are_distinct():
    assert len(BAD) >= 30 and len({m for _, _, m in BAD}) >= 30


def test_where_takes_null_as_the_plan_writes_it(tmp_path):
    """One spelling of no value: the plan prints null, --where takes null, the error lists null."""
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ndata: {dataset: shakespeare, tokenizer: char}\n"
                    "base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, max_iters: 10}\n"
                    "grid: {window: [null, 8]}\n")
    grid = load_grid(path)
    assert [c.config.window for c in select(grid.cells, ["window=null"])] == [None]
    with pytest.raises(AblateError, match="values of window are null, 8"):
        select(grid.cells, ["window=4"])
