"""Grid files: YAML -> validated, fully resolved cells (one RunConfig each).

A grid is a short diff of defaults:

    name: quickstart                 # names runs/<name>/ and reports/<name>/
    plugins: [plugins/qk_norm.py]    # optional: more config keys (ablate/plan/plugins.py)
    data: {dataset: shakespeare, tokenizer: char}
    base: {n_layer: 4, n_embd: 128}  # defaults for every cell
    arch_defaults: {ngpt: {lr: 5e-3}}  # per-arch defaults, over base, under the axes
    grid: {arch: [gpt, ngpt]}        # cross product
    zip: [{context: [1024, 4096], batch_size: [8, 2]}]   # lists varied together
    exclude: [{arch: ngpt, window: 64}]                  # drop matching cells
    include: [{arch: gpt, n_layer: 8}]                   # extra cells (over base)
    seeds: [0, 1]
    compare: {baseline: {arch: gpt}, group_by: [context]}
    resources: {gpus: 1, time_min: 60, partition: gpu}

Cell order is deterministic (grid axes in file order, then zip groups, then seeds).
"""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ablate.core import plugin_keys, rundir
from ablate.core.config import (ARCHS, DERIVED, FIELDS, RESOURCE_KEYS, SWEPT, Resources, RunConfig, derive, make_config,
                                resolve)
from ablate.core.errors import AblateError, closest, value_text
from ablate.core.paths import runs_root
from ablate.core.validate import INT_MAX, validate
from ablate.data import corpora, sources
from ablate.plan import plugins
from ablate.plan.checks import check_baseline, check_splits, disguises, num_eq, origin, values_text
from ablate.plan.power import Power, parse_power
from ablate.plan.simcache import world_size
from ablate.plan.yamlload import line_of, load_yaml

TOP_KEYS = ("name", "description", "plugins", "data", "base", "arch_defaults", "grid", "zip", "exclude", "include",
            "seeds", "compare", "resources", "power")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CELLS = 100_000  # checked from the axis sizes before expanding (a 10,000-cell plan takes ~1 s)


@dataclass
class Cell:
    run_id: str
    config: RunConfig
    varied: dict                      # the keys that vary across the grid -> this cell's values
    run_dir: Path


@dataclass
class Grid:
    name: str
    path: Path
    description: str
    cells: list
    varied_keys: list
    compare: dict
    resources: Resources
    warnings: list = field(default_factory=list)
    plugins: list = field(default_factory=list)  # plugins.Plugin, in the grid's order
    shared: dict = field(default_factory=dict)  # run_id -> run dir in another grid's folder, not linked here yet
    power: Power | None = None                   # the `power:` section: a seed plan (ablate/plan/power.py)

    @property
    def runs_dir(self) -> Path:
        return runs_root() / self.name

    def link_shared(self) -> None:
        """Link the cells whose run dir another grid's folder holds into this grid's folder
        (rundir.link_run), so every reader of the folder finds them; then they are this grid's cells."""
        for cell in self.cells:
            if cell.run_id in self.shared:
                link = self.runs_dir / cell.run_id
                rundir.link_run(self.shared[cell.run_id], link)
                cell.run_dir = link
        self.shared = {}

    def reused(self) -> dict:
        """{run_id: the grid folder its run dir lives in} for the cells another grid ran (or runs)."""
        out = {}
        for cell in self.cells:
            real = cell.run_dir.resolve().parent if cell.run_dir.exists() else cell.run_dir.parent
            if real != self.runs_dir.resolve():
                out[cell.run_id] = real.name
        return out


class _Ctx:
    """Error helper that prefixes the file and, when known, the line."""

    def __init__(self, path):
        self.path = path

    def error(self, msg, key=None, node=None, value=False) -> AblateError:
        """An error at `key` of the mapping `node` (its value's line with value=True)."""
        line = line_of(node, key, value) if key is not None else None
        return AblateError(f"{self.path}{f':{line}' if line else ''}: {msg}")

    def at(self, msg, line) -> AblateError:
        return AblateError(f"{self.path}{f':{line}' if line else ''}: {msg}")


def _mapping(ctx, value, what, parent=None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.error(f"'{what}' must be a mapping of key: value, got {type(value).__name__}", what, parent, True)
    return value


def _check_keys(ctx, mapping, where, known=FIELDS):
    """known: the grid's keys (RunConfig's fields and its plugins' keys)."""
    for key in mapping:
        if key not in known:
            raise ctx.error(f"{where}: unknown key '{key}'{closest(key, known)}", key, mapping)
        if key in DERIVED:
            why = "from the grid's top-level `plugins:` list" if key == "plugins" else "from the data file's bytes"
            raise ctx.error(f"{where}: '{key}' is derived ({why}), not set in a grid", key, mapping)


def _plugins(ctx, doc) -> list:
    """The plugins the grid names, loaded and checked (plugins.py); none: nothing imported."""
    specs = doc.get("plugins")
    if not specs:
        return []
    if not isinstance(specs, list):
        raise ctx.error("'plugins' must be a list of plugin files or module names", "plugins", doc, True)
    loaded = []
    for i, spec in enumerate(specs):
        try:
            p = plugins.load(spec)
            plugins.check_distinct(loaded, p)
        except AblateError as e:
            raise ctx.at(f"plugins: {e}", line_of(specs, i)) from None
        loaded.append(p)
    return loaded


def _data(ctx, doc) -> dict:
    """The data: section as config values: dataset and tokenizer, where the keys of a shards: or
    corpus: data set become its canonical dataset string (tokenizer default gpt2 for those)."""
    data = _mapping(ctx, doc.get("data"), "data", doc)
    for key in data:
        if key not in sources.GRID_KEYS:
            raise ctx.error(f"data: unknown key '{key}'{closest(key, sources.GRID_KEYS)}; allowed: "
                            f"{', '.join(sources.GRID_KEYS)}", key, data)
    try:
        named = sources.from_grid(data)
    except sources.DataKeyError as e:
        raise ctx.error(str(e), e.key if e.key in data else next(iter(data)), data, True) from None
    if named is None:
        return dict(data)
    return {"dataset": named, "tokenizer": data.get("tokenizer", "gpt2")}


def _axis_list(ctx, key, values, where, parent) -> list:
    if not isinstance(values, list) or not values:
        raise ctx.error(f"{where}: '{key}' must be a non-empty list of values, got {values!r}", key, parent, True)
    return values


def _resources(ctx, raw, doc) -> Resources:
    raw = _mapping(ctx, raw, "resources", doc)
    for key, value in raw.items():
        if key not in RESOURCE_KEYS:
            raise ctx.error(f"resources: unknown key '{key}'{closest(key, RESOURCE_KEYS)}; "
                            f"allowed: {', '.join(RESOURCE_KEYS)}", key, raw)
        want = {"int": int, "float": float}.get(str(RESOURCE_KEYS[key]).split("]")[0].split("[")[-1])
        if want is int and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT_MAX):
            raise ctx.error(f"resources: '{key}' must be a non-negative integer, got {value!r}", key, raw, True)
        if want is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not 0 <= value < math.inf):
            raise ctx.error(f"resources: '{key}' must be a non-negative finite number, got {value!r}", key, raw, True)
        if want is None and value is not None and not isinstance(value, str):
            raise ctx.error(f"resources: '{key}' must be a string, got {value!r}", key, raw, True)
    return Resources(**raw)


def _factors(ctx, doc, known) -> list[list[dict]]:
    """The axes: one list of partial configs per `grid` key and per `zip` group, in file order;
    their cross product is the grid (expanded only once its size is known to be allowed)."""
    grid = _mapping(ctx, doc.get("grid"), "grid", doc)
    _check_keys(ctx, grid, "grid", known)
    factors = [[{k: v} for v in _axis_list(ctx, k, vals, "grid", grid)] for k, vals in grid.items()]
    zips = doc.get("zip") or []
    if isinstance(zips, dict):
        zips = [zips]
    if not isinstance(zips, list):
        raise ctx.error("'zip' must be a list of mappings {key: [values...]}", "zip", doc, True)
    for group in zips:
        group = _mapping(ctx, group, "zip", doc)
        _check_keys(ctx, group, "zip", known)
        lengths = {k: len(_axis_list(ctx, k, v, "zip", group)) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise ctx.error(f"zip: lists must have equal lengths, got {lengths}", next(iter(group)), group)
        both = set(group) & set(grid)
        if both:
            raise ctx.error(f"zip: key '{sorted(both)[0]}' is also a grid axis", sorted(both)[0], group)
        n = next(iter(lengths.values())) if lengths else 0
        factors.append([{k: group[k][i] for k in group} for i in range(n)])
    return factors


def _matches(partial: dict, values: dict) -> bool:
    return all(values.get(k) == v for k, v in partial.items())


def _count_cells(factors, n_includes: int, n_seeds: int) -> int:
    return (math.prod(len(f) for f in factors) + n_includes) * n_seeds


def load_grid(path, check_backend_device: bool = True) -> Grid:
    """Parse, expand and validate a grid file. Every error is one AblateError line."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise AblateError(f"{path}: a grid must be a YAML mapping with at least 'name' and 'grid' or 'base'")
    ctx = _Ctx(path)
    for key in doc:
        if key not in TOP_KEYS:
            raise ctx.error(f"unknown top-level key '{key}'{closest(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}",
                            key, doc)
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.error(f"'name' must be a plain identifier (letters, digits, '-', '_'), got {name!r}", "name", doc,
                        True)

    loaded = _plugins(ctx, doc)
    decls = tuple(p.declaration() for p in loaded)
    known = {**FIELDS, **{k: None for p in loaded for k in p.keys}}
    data = _data(ctx, doc)
    base = {**data, **_mapping(ctx, doc.get("base"), "base", doc)}
    _check_keys(ctx, doc.get("base") or {}, "base", known)
    arch_defaults = _mapping(ctx, doc.get("arch_defaults"), "arch_defaults", doc)
    for arch, overrides in arch_defaults.items():
        if arch not in ARCHS:
            raise ctx.error(f"arch_defaults: unknown arch '{arch}'; allowed: {', '.join(ARCHS)}", arch, arch_defaults)
        _check_keys(ctx, _mapping(ctx, overrides, arch, arch_defaults), f"arch_defaults.{arch}", known)

    factors = _factors(ctx, doc, known)
    includes = doc.get("include") or []
    if not isinstance(includes, list):
        raise ctx.error("'include' must be a list of partial configs", "include", doc, True)
    for inc in includes:
        _check_keys(ctx, _mapping(ctx, inc, "include", doc), "include", known)
    excludes = doc.get("exclude") or []
    if not isinstance(excludes, list):
        raise ctx.error("'exclude' must be a list of partial configs", "exclude", doc, True)
    for exc in excludes:
        _check_keys(ctx, _mapping(ctx, exc, "exclude", doc), "exclude", known)
    seeds = doc.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ctx.error(f"'seeds' must be a non-empty list of integers, got {seeds!r}", "seeds", doc, True)
        if len(set(seeds)) != len(seeds):
            raise ctx.error(f"'seeds' has duplicates: {seeds}", "seeds", doc, True)
        if any("seed" in f[0] for f in factors):
            raise ctx.error("'seed' is both a grid axis and 'seeds'; use one", "seeds", doc)
    n_cells = _count_cells(factors, len(includes), len(seeds or [None]))
    if n_cells > MAX_CELLS:  # from the axis sizes, before anything is expanded
        sizes = " x ".join(str(len(f)) for f in factors) or "1"
        raise ctx.error(f"the grid expands to {n_cells:,} cells (axes {sizes}, {len(includes)} includes, "
                        f"{len(seeds or [None])} seeds) before exclude; the limit is {MAX_CELLS:,}: split it into "
                        "several grids", "grid", doc)
    points = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*factors)]

    warnings = []
    used_excludes = [False] * len(excludes)
    raw_cells = []  # (explicit values, merged values, the include they come from or None)
    for explicit, include in [(p, None) for p in points] + [(dict(inc), inc) for inc in includes]:
        for seed in (seeds or [None]):
            ex = dict(explicit) if seed is None else {**explicit, "seed": seed}
            arch = ex.get("arch", base.get("arch", "gpt"))
            merged = {**base, **((arch_defaults.get(arch) if isinstance(arch, str) else None) or {}), **ex}
            hit = [i for i, e in enumerate(excludes) if _matches(e, merged)]
            for i in hit:
                used_excludes[i] = True
            if not hit:
                raw_cells.append((ex, merged, include))
    for i, used in enumerate(used_excludes):
        if not used:
            warnings.append(f"{path}: exclude {dict(excludes[i])} matches no cell")
    if not raw_cells:
        raise ctx.error("the grid has no cells (empty axes, or everything excluded)", "grid", doc)

    data_cache: dict = {}
    cells, seen = [], {}
    for ex, merged, include in raw_cells:
        try:
            cfg = make_config({**merged, "plugins": decls} if decls else merged)
            key = (cfg.dataset, cfg.tokenizer)
            if key not in data_cache:
                validate(cfg)  # cheap rules first: an unknown data set is named before it is looked up
                data_cache[key] = (corpora.vocab_size(*key), corpora.data_id(cfg.dataset), corpora.read_meta(*key))
            vocab, data_id, meta = data_cache[key]
            cfg = resolve(derive(cfg, data_id=data_id) if data_id else cfg, vocab)
            check_splits(cfg, meta)
            if loaded:
                plugins.check_cell(loaded, cfg)
        except AblateError as e:
            bad_key = re.search(r"key '(\w+)'|^(dataset) '", str(e))
            bad_key = bad_key and (bad_key.group(1) or bad_key.group(2))
            cell = ", ".join(f"{k}={v}" for k, v in ex.items()) or "base"
            line = origin(doc, base, arch_defaults, ex, include, bad_key) if bad_key else None
            raise ctx.at(f"{e} (cell {cell})", line) from None
        rid = cfg.run_id()
        if rid in seen:
            warnings.append(f"{path}: cells {seen[rid]} and {ex} resolve to the same config; kept once")
            continue
        seen[rid] = ex
        cells.append((rid, cfg, ex))
    warnings += disguises(path, cells)

    # the keys the grid varies on purpose (axes, zips, includes, seeds), in file order, that
    # really take several values; derived differences (warmup per arch...) are not axes
    axis_keys = list(dict.fromkeys(k for ex, _, _ in raw_cells for k in ex))
    resolved = [c.__dict__ for _, c, _ in cells]
    varied = [k for k in axis_keys if len({(type(r[k]), r[k]) for r in resolved}) > 1]  # 1 != 1.0 != True
    compare = _compare(ctx, doc.get("compare"), varied, doc, known)
    if isinstance(doc.get("compare"), dict) and "baseline" in doc["compare"]:
        check_baseline(ctx, doc["compare"], compare["baseline"], resolved)
    power = None
    if doc.get("power") is not None:
        try:
            power = parse_power(doc["power"], "power")
        except AblateError as e:  # point at the key the error names, else at the section
            key = re.search(r"'(\w+)'|: (detect):", str(e))
            key = key and (key.group(1) or key.group(2))
            raw = doc["power"]
            line = (line_of(raw, key, True) if isinstance(raw, dict) and key in raw else None) or line_of(doc, "power")
            raise ctx.at(str(e), line) from None
    grid = Grid(name=name, path=path, description=str(doc.get("description") or ""), cells=[],
                varied_keys=varied, compare=compare, resources=_resources(ctx, doc.get("resources"), doc),
                warnings=warnings, plugins=loaded, power=power)
    if world_size(grid.resources) == 1 and any(c.strategy == "fsdp" for _, c, _ in cells):
        warnings.append(f"{path}: strategy fsdp on a job of one process shards nothing (resources: gpus "
                        f"{grid.resources.gpus}, nodes {grid.resources.nodes}): it runs FSDP's code path at ddp's "
                        "memory plus FSDP's buffers; give the job several GPUs (or nodes) to divide the memory")
    runs_dir = grid.runs_dir
    where = rundir.locate_runs(runs_root())  # a run id's run dir wherever it lives: one per model and training
    own = {e.name for e in os.scandir(runs_dir)} if runs_dir.is_dir() else set()  # real dirs and links
    grid.cells = [Cell(rid, cfg, {k: getattr(cfg, k) for k in varied},
                       runs_dir / rid if rid in own or rid not in where else where[rid]) for rid, cfg, _ in cells]
    grid.shared = {c.run_id: c.run_dir for c in grid.cells if c.run_dir.parent != runs_dir}
    return grid


def _compare(ctx, raw, varied, doc, known=FIELDS) -> dict:
    raw = _mapping(ctx, raw, "compare", doc)
    for key in raw:
        if key not in ("baseline", "group_by"):
            raise ctx.error(f"compare: unknown key '{key}'{closest(key, ['baseline', 'group_by'])}; allowed: baseline, group_by", key, raw)
    baseline = _mapping(ctx, raw.get("baseline", {"arch": "gpt"}), "baseline", raw)
    _check_keys(ctx, baseline, "compare.baseline", known)
    group_by = raw.get("group_by")
    if group_by is None:  # default: a group per value of the other axes; seeds, lrs, budgets inside it
        group_by = [k for k in varied if k not in baseline and k not in ("seed", *SWEPT)]
    if not isinstance(group_by, list):
        raise ctx.error(f"compare.group_by must be a list of keys, got {group_by!r}", "group_by", raw, True)
    _check_keys(ctx, {k: None for k in group_by}, "compare.group_by", known)
    return {"baseline": dict(baseline), "group_by": list(group_by)}


def select(cells, where: list[str]) -> list:
    """Filter cells by KEY=VALUE terms (values compared as their text: no value is `null`)."""
    cells = list(cells)
    known = [*FIELDS, *(plugin_keys.declared_keys(cells[0].config) if cells else {})]
    terms = []
    for term in where or []:
        if "=" not in term:
            raise AblateError(f"--where {term!r}: expected KEY=VALUE")
        key, value = term.split("=", 1)
        if key not in known and key != "run_id":
            raise AblateError(f"--where: unknown key '{key}'{closest(key, known)}")
        terms.append((key, value))

    def value_of(cell, key):
        return cell.run_id if key == "run_id" else getattr(cell.config, key)

    out = [c for c in cells if all(value_text(value_of(c, k)) == v or num_eq(value_of(c, k), v) for k, v in terms)]
    if terms and cells and not out:
        hints = "; ".join(f"values of {k} are {values_text([value_of(c, k) for c in cells], k)}"
                          for k in dict.fromkeys(k for k, _ in terms))
        raise AblateError(f"no cell matches --where {' --where '.join(where)}; {hints}")
    return out
