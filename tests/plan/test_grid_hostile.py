"""Hostile and mistaken grid files: the work is bounded before anything expands, every numeric
key is range-checked at plan time, and an error points at the value that is wrong."""
import math
import textwrap
import tracemalloc

import pytest

from ablate.core.errors import AblateError
from ablate.core import config as cfgmod
from ablate.core import validate
from ablate.plan.grid import load_grid, select

HEAD = """\
name: g
data: {dataset: shakespeare, tokenizer: char}
base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, max_iters: 10}
"""


def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def one_line_error(path, match: str, max_mib: float = 64) -> str:
    """The grid is refused in one line, having done bounded work: the peak of Python's allocations
    while reading it stays under max_mib (expanding the bombs below would take gigabytes). Memory,
    not time: a count that a loaded machine cannot skew."""
    tracemalloc.start()
    try:
        with pytest.raises(AblateError) as e:
            load_grid(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < max_mib * 2 ** 20, f"bounded work: refused before expanding, yet {peak / 2 ** 20:.0f} MiB allocated"
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ---- bounded work: aliases, depth, size, cells

def test_alias_bomb_is_refused_in_one_line_without_expanding(tmp_path):
    levels = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "name: g\n" + "\n".join(levels) + "\n")  # 9^9 strings from 10 lines
    one_line_error(path, "expands to more than")


def test_deep_nesting_and_self_reference_are_one_line_not_a_recursion_error(tmp_path):
    one_line_error(write(tmp_path, "name: g\ngrid: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper than")
    one_line_error(write(tmp_path, "name: g\nx: &x [*x]\n", "r.yaml"), "refers to itself")


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: g\n" + "# padding\n" * 200_000)
    one_line_error(path, "larger than")


def test_anchors_and_merge_keys_in_a_normal_grid_still_work(tmp_path):
    text = HEAD.replace("base: {", "base: &b {") + "grid: {arch: [gpt, ngpt]}\ninclude:\n  - {<<: *b, arch: gpt, n_layer: 4}\n"
    g = load_grid(write(tmp_path, text))
    assert [(c.config.arch, c.config.n_layer) for c in g.cells] == [("gpt", 2), ("ngpt", 2), ("gpt", 4)]


def test_grid_size_limit_is_checked_from_the_axis_sizes_before_expanding(tmp_path):
    axes = "\n".join(f"  k{i}: [{', '.join(str(j + 1) for j in range(10))}]" for i in range(7))  # 10^7 cells
    text = HEAD + "grid:\n" + axes.replace("k0", "n_layer").replace("k1", "max_iters").replace("k2", "seed") \
        .replace("k3", "eval_iters").replace("k4", "batch_size").replace("k5", "grad_accum").replace("k6", "log_interval") + "\n"
    msg = one_line_error(write(tmp_path, text), "the limit is 100,000")
    assert "10,000,000 cells" in msg and "10 x 10 x 10" in msg


# ---- every numeric key is range-checked at plan time

def test_every_numeric_field_has_an_explicit_range():
    numeric = [n for n in cfgmod.FIELDS if cfgmod.FIELD_TYPES[n] in (int, float, cfgmod.Optional[int], cfgmod.Optional[float])]
    assert sorted(numeric) == sorted(validate.RANGES), "a numeric RunConfig field needs an entry in RANGES"


BAD_VALUES = [
    ("lr", ".nan"), ("lr", ".inf"), ("lr", "-.inf"), ("lr", "0"), ("min_lr", ".nan"), ("weight_decay", ".nan"),
    ("weight_decay", "-0.1"), ("grad_clip", ".inf"), ("grad_clip", ".nan"), ("diverge_loss", ".nan"),
    ("diverge_loss", ".inf"), ("diverge_loss", "0"), ("beta1", "2.0"), ("beta1", "1.0"), ("beta2", "-0.5"),
    ("beta2", ".nan"), ("seed", "-5"), ("seed", "4294967296"), ("n_layer", "0"), ("n_kv_head", "0"),
    ("share_attn", "0"), ("window", "0"), ("vocab_size", "0"), ("lr_decay_iters", "0"), ("warmup_iters", "-1"),
    ("context", "3000000000"), ("eval_iters", "0"), ("ckpt_interval", "-1"),
]


@pytest.mark.parametrize("key, value", BAD_VALUES)
def test_out_of_range_or_non_finite_values_fail_at_plan_in_one_line(tmp_path, key, value):
    path = write(tmp_path, HEAD + f"grid: {{{key}: [{value}]}}\n")
    msg = one_line_error(path, f"key '{key}'")
    assert msg.startswith(f"{path}:4:"), msg  # the line of the wrong value


def test_valid_edges_pass(tmp_path):
    g = load_grid(write(tmp_path, HEAD + "grid: {beta1: [0.0], beta2: [0.999], seed: [0, 4294967295], grad_clip: [0]}\n"))
    assert [c.config.seed for c in g.cells] == [0, 4294967295]


def test_resources_must_be_finite(tmp_path):
    one_line_error(write(tmp_path, HEAD + "grid: {arch: [gpt]}\nresources: {mem_gb: .inf}\n"), "finite")


# ---- error lines point at the value that is wrong

def test_an_error_in_grid_points_at_the_grid_value_not_the_first_key_of_that_name(tmp_path):
    text = HEAD.replace("max_iters: 10}", "max_iters: 10, lr: 1.0e-3}") + "grid:\n  lr:\n    - 1.0e-3\n    - .nan\n"
    msg = one_line_error(write(tmp_path, text), "key 'lr'")
    assert msg.split(":")[1] == "7", msg  # the .nan item, not base's lr on line 3


@pytest.mark.parametrize("text, line", [
    (HEAD + "grid: {arch: [gpt]}\nzip:\n  - context: [16, 32]\n    batch_size: [4, 0]\n", 7),
    (HEAD + "grid: {arch: [gpt]}\ninclude:\n  - {arch: gpt}\n  - arch: ngpt\n    window: -3\n", 8),
    (HEAD + "grid: {arch: [gpt, ngpt]}\narch_defaults:\n  gpt: {lr: 1e-3}\n  ngpt:\n    lr: .inf\n", 8),
    (HEAD + "grid: {arch: [gpt]}\nseeds: [0, 1,\n  -2]\n", 6),
])
def test_zip_include_arch_default_and_seed_errors_point_at_their_value(tmp_path, text, line):
    msg = one_line_error(write(tmp_path, text), "key '")
    assert msg.split(":")[1] == str(line), msg


def test_unknown_key_points_at_its_own_mapping(tmp_path):
    text = HEAD + "grid:\n  arch: [gpt]\ninclude:\n  - {arch: gpt, n_layr: 3}\n"
    msg = one_line_error(write(tmp_path, text), "unknown key 'n_layr'")
    assert msg.split(":")[1] == "7", msg


# ---- no-match messages name what exists

def test_where_that_matches_nothing_lists_the_values(tmp_path):
    g = load_grid(write(tmp_path, HEAD + "grid: {arch: [gpt, ngpt], lr: [0.001, 0.002]}\n"))
    with pytest.raises(AblateError, match=r"no cell matches --where arch=ngtp; values of arch are gpt, ngpt"):
        select(g.cells, ["arch=ngtp"])
    with pytest.raises(AblateError, match=r"values of arch are gpt, ngpt; values of lr are 0.001, 0.002"):
        select(g.cells, ["arch=gpt", "lr=0.003"])
    assert len(select(g.cells, ["lr=1e-3"])) == 2


def test_a_baseline_that_matches_no_cell_is_an_error_naming_the_values(tmp_path):
    text = HEAD + "grid: {arch: [gpt, ngpt]}\ncompare:\n  baseline: {arch: gtp}\n"
    msg = one_line_error(write(tmp_path, text), "compare.baseline {'arch': 'gtp'} matches no cell; values of arch "
                                                "are gpt, ngpt")
    assert msg.split(":")[1] == "6", msg
    g = load_grid(write(tmp_path, HEAD + "grid: {arch: [gpt, ngpt], lr: [1e-3]}\ncompare: {baseline: {lr: 1e-3}}\n",
                        "ok.yaml"))
    assert g.compare["baseline"] == {"lr": "1e-3"} or g.compare["baseline"] == {"lr": 1e-3}


# ---- cells that are another cell in disguise

def test_window_past_context_and_warmup_past_budget_warn_and_disguised_twins_are_named(tmp_path):
    text = HEAD + "grid: {window: [null, 16, 64], warmup_iters: [20]}\n"
    g = load_grid(write(tmp_path, text))
    warnings = "\n".join(g.warnings)
    assert "window 16 >= context 16 is full causal attention" in warnings
    assert "window 64 >= context 16" in warnings
    assert "warmup_iters 20 > max_iters 10" in warnings
    twins = [w for w in g.warnings if "train the same model" in w]
    assert len(twins) == 1 and all(c.run_id in twins[0] for c in g.cells), twins
    g = load_grid(write(tmp_path, HEAD + "grid: {window: [null, 8]}\n", "fine.yaml"))
    assert g.warnings == []


def test_float_ranges_reject_nan_in_python_api_too():
    with pytest.raises(AblateError, match="finite"):
        cfgmod.resolve(cfgmod.make_config({"lr": math.nan}), 65)


def test_a_context_longer_than_the_prepared_val_split_fails_at_plan(tmp_path):
    from ablate.data import corpora, prepare

    corpus = tmp_path / "small.txt"
    corpus.write_text("abcdefghij" * 30)  # 300 characters: a 30-token val split
    prepare.prepare(f"text:{corpus}", "char")
    text = f"name: g\ndata: {{dataset: 'text:{corpus}', tokenizer: char}}\nbase: {{n_layer: 2, n_head: 2, n_embd: 32}}\n" \
           "grid:\n  context: [16, 64]\n"
    msg = one_line_error(write(tmp_path, text), "key 'context': 64 needs context+2 = 66 tokens")
    assert "val split" in msg and msg.split(":")[1] == "5", msg
    assert len(load_grid(write(tmp_path, text.replace(", 64]", "]"), "ok.yaml")).cells) == 1


LISTS = """\
name: g
data: {dataset: shakespeare, tokenizer: char}
base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, max_iters: 10, %s}
grid: {%s}
include: [%s]
"""


@pytest.mark.parametrize("base, grid, include, match", [
    ("lr: [1.0e-3, 3.0e-3]", "seed: [0]", "", "key 'lr': [0.001, 0.003] has type list, expected float"),
    ("arch: {a: 1}", "seed: [0]", "", "key 'arch': {'a': 1} is not allowed, expected one of gpt, ngpt"),
    ("seed: 0", "arch: [{a: 1}]", "", "key 'arch': {'a': 1} is not allowed"),
    ("seed: 0", "n_layer: [[1], {}]", "", "key 'n_layer': [1] has type list, expected int"),
    ("seed: 0", "seed: [0]", "{n_layer: [3, 4]}", "key 'n_layer': [3, 4] has type list, expected int"),
    ("seed: 0", "dtype: [[bf16]]", "", "key 'dtype': ['bf16'] is not allowed, expected one of fp32, bf16"),
    ("seed: 0", "window: [{w: 4}]", "", "key 'window': {'w': 4} has type mapping, expected int or null"),
])
def test_a_list_or_mapping_where_one_value_belongs_is_one_line(tmp_path, base, grid, include, match):
    """A value that is a list or a mapping used to reach a cache keyed by the value (unhashable:
    a traceback); it is a type error at its line like any other wrong type."""
    msg = one_line_error(write(tmp_path, LISTS % (base, grid, include)), match)
    assert msg.startswith(f"{tmp_path / 'g.yaml'}:"), msg  # file:line


@pytest.mark.parametrize("values, match", [
    ("lr: [1.0e+300]", "key 'lr': 1e+300 must be <= 3.4028235e+38 (the largest float32"),
    ("weight_decay: [1.0e+39]", "key 'weight_decay': 1e+39 must be <= 3.4028235e+38"),
    ("grad_clip: [1.0e+39]", "key 'grad_clip': 1e+39 must be <= 3.4028235e+38"),
    ("lr: [1.0e+38]", "key 'lr': 1e+38 overflows float32 in AdamW's update (lr / (1 - beta1) = 1e+39"),
    ("lr: [1.0e+30]\n  weight_decay: [1.0e+10]", "overflows float32 in AdamW's update (lr * weight_decay = 1e+40"),
])
def test_a_number_past_what_its_dtype_holds_is_refused_at_plan(tmp_path, values, match):
    """lr 1e300 passed the plan and then every cell failed at its first step (a float32
    overflow): a range respects the dtype its value meets."""
    one_line_error(write(tmp_path, HEAD + "grid:\n  " + values + "\n"), match)


def test_a_huge_lr_that_float32_holds_is_a_divergence_not_a_failure(tmp_path):
    """Just inside the range the run is a result, diverged, as any too-large lr."""
    from ablate.launch.submit import submit

    grid = load_grid(write(tmp_path, HEAD.replace("max_iters: 10}", "max_iters: 3, batch_size: 2, eval_iters: 1, "
                                                                    "device: cpu}") + "grid: {lr: [1.0e+37]}\n"))
    views = submit(grid, grid.cells, executor="debug", echo=lambda line: None).views
    assert [v.state for v in views] == ["diverged"]
