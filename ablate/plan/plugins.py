"""The plugin loader: your own ablation in one file, without forking ablate.

A plugin is a Python file (or an importable module) that a grid names (`plugins:
[plugins/qk_norm.py]`; a path is relative to the current directory, as text:PATH data sets
are). It defines, at module level:

    from ablate.plugin import Key
    KEYS = {"qk_norm": Key(bool, False, "RMSNorm on q and k per head, before RoPE")}
    POINTS = {"qk": QKNorm}      # extension points (ablate/model/points.py) -> part(cfg)
    def check(cfg): ...          # optional: raise ValueError for a cell the plugin cannot build

Each key becomes a grid key like any built-in one (axes, zip, exclude, compare, --where, a
column of the store) and an attribute of the cell's config (`cfg.qk_norm`). Its default must
leave the model unchanged: a cell that sets none of a plugin's keys away from their defaults
does not use the plugin at all (its parts are not built, its run id is the built-in one).
A cell that does gets the plugin's parts in place of its arch's (at the composable points,
plugin_keys.COMPOSABLE: after its arch's and the other plugins' parts, in the grid's order), and
its run id covers the plugin's content (a hash of the file's bytes): editing the plugin makes
new cells.

Loading is torch-free here, but the plugin file itself usually imports torch, so planning a
grid with plugins imports torch; a grid without plugins never loads any. Every problem is one
line naming the plugin file (and the line, where there is one).

Who loads what: the grid loads every plugin it names (`load`); a cell's parts are resolved by
whoever builds its model (the trainer, the memory simulation, the sizing: `parts`) and handed
to ablate.model.build_model, which never loads a plugin itself.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from ablate.core import plugin_keys
from ablate.core.config import FIELDS
from ablate.core.errors import AblateError, closest
from ablate.core.plugin_keys import POINTS, Key
from ablate.core.rundir import atomic_file
from ablate.store.schema import RESERVED_NAMES

RUN_DIR_COPIES = "plugins"  # runs/<grid>/<run_id>/plugins/<content_id>.py: the code the job runs
_LOADED: dict = {}  # (source, content_id) -> Plugin: each version of a plugin is executed once per process


@dataclass
class Plugin:
    """A loaded plugin: its keys, its parts per extension point, its optional check."""
    name: str
    source: str  # an absolute file path, or a module name
    content_id: str
    keys: dict
    points: dict
    check: object = None
    path: Path | None = None  # the file that was executed (a run dir's copy, for a job)

    def declaration(self) -> dict:
        return {"name": self.name, "source": self.source, "content_id": self.content_id,
                "keys": {k: key.spec() for k, key in self.keys.items()}, "points": sorted(self.points)}


def content_id(raw: bytes) -> str:
    return hashlib.sha256(b"ablate plugin v1\0" + raw).hexdigest()[:16]


def _where(path: Path, e: BaseException) -> str:
    """path:line of the innermost frame of an exception that ran in the plugin file."""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if Path(frame.filename) == path:
            return f"{path}:{frame.lineno}"
    line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None
    return f"{path}:{line}" if line else str(path)


def is_path(spec: str) -> bool:
    """A grid's plugin entry names a file (else an importable module)."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def locate(spec: str) -> tuple[str, Path]:
    """(source, file) of a grid's plugin entry: (absolute path, itself) for a path to a .py
    file, (module name, its source file) for an importable module."""
    if not isinstance(spec, str) or not spec.strip():
        raise AblateError(f"plugin {spec!r}: expected a path to a .py file or a module name")
    if is_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise AblateError(f"plugin {spec}: no such file (a path is relative to the current directory)")
        return str(path.resolve()), path.resolve()
    try:
        found = importlib.util.find_spec(spec)
    except Exception as e:  # a parent package that does not import, a malformed name
        raise AblateError(f"plugin {spec}: cannot find the module ({type(e).__name__}: {e})") from None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise AblateError(f"plugin {spec}: no such module (or not a .py source file)")
    return spec, Path(found.origin)


def load(spec: str, expect: str | None = None, copy: Path | None = None) -> Plugin:
    """Load a plugin, checked (KEYS, POINTS, check), once per content per process.
    spec: a grid's entry, or the source a cell recorded; expect: the content id the cell
    recorded (a plugin that no longer has it is refused); copy: the run dir's copy of the
    plugin, executed instead of the source whenever it is there, so a job runs the code it was
    given even if the file moved or was edited while it waited (a module's copy runs inside its
    package, so its relative imports still work)."""
    if expect is not None and (spec, expect) in _LOADED:  # that version is loaded (a job: from its run dir)
        return _LOADED[spec, expect]
    if copy is not None and copy.is_file():  # never look at the source: it may be gone, or another version
        source, path, from_copy = spec, copy, True
    else:
        (source, path), from_copy = locate(spec), False
    is_file = is_path(source)
    raw = path.read_bytes()
    cid = content_id(raw)
    if expect is not None and cid != expect:
        raise AblateError(f"plugin {source} changed since this cell was planned (its content id is {cid}, the "
                          f"cell's is {expect}): the cell is a new one now; plan and submit the grid again")
    if (source, cid) in _LOADED:
        return _LOADED[source, cid]
    name = Path(source).stem if is_file else source.rsplit(".", 1)[-1]
    module_name = f"ablate_plugin_{name}_{cid}"
    try:
        if is_file or from_copy:  # registered under a name of its own, as importlib's recipe does (pickle needs it)
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = sys.modules[module_name] = importlib.util.module_from_spec(module_spec)
            if not is_file:  # a module's copy: its relative imports resolve in its own package
                module.__package__ = source.rpartition(".")[0]
            module_spec.loader.exec_module(module)
        elif source in sys.modules:  # imported before, in another version: this one
            module = importlib.reload(sys.modules[source])
        else:  # imported as itself, so that its own imports (relative ones too) work
            module = importlib.import_module(source)
    except (Exception, SystemExit) as e:  # SystemExit: a plugin that calls sys.exit() must not end the plan
        sys.modules.pop(module_name, None)
        first = str(e).splitlines()[0] if str(e).strip() else ""
        raise AblateError(f"{_where(path, e)}: plugin {source} failed to import: {type(e).__name__}"
                          + (f": {first}" if first else "")) from None
    plugin = _checked(module, name, source, cid, path)
    _LOADED[source, cid] = plugin
    return plugin


def _checked(module, name: str, source: str, cid: str, path: Path) -> Plugin:
    def bad(msg, where=None):
        raise AblateError(f"{where or path}: plugin {name}: {msg}")

    keys, points, check = getattr(module, "KEYS", None), getattr(module, "POINTS", None), getattr(module, "check", None)
    if not isinstance(keys, dict) or not keys:
        bad("defines no KEYS: a dict {name: Key(type, default, help, ...)}; a plugin changes a cell only "
            "through its keys")
    if not isinstance(points, dict) or not points:
        bad(f"defines no POINTS: a dict {{point: part}}, points: {', '.join(POINTS)}")
    reserved = RESERVED_NAMES  # the store's columns and what the report adds to them
    for k, key in keys.items():
        if not isinstance(key, Key):
            bad(f"KEYS['{k}'] must be a Key(type, default, help, ...), got {type(key).__name__}")
        if not isinstance(k, str) or not plugin_keys.NAME_RE.match(k):
            bad(f"key {k!r}: a key name is lower case letters, digits and '_', starting with a letter", key.where)
        if k in FIELDS:
            bad(f"key '{k}' is a built-in config key: a plugin cannot redefine it; choose another name", key.where)
        if k in reserved:
            bad(f"key '{k}' is a name the store or the report already uses; choose another name", key.where)
        problem = key.problem()
        if problem:
            bad(f"key '{k}': {problem}", key.where)
    for p, part in points.items():
        if p not in POINTS:
            bad(f"POINTS: unknown point '{p}'{closest(p, POINTS)}; points: {', '.join(POINTS)}")
        if not callable(part):
            bad(f"POINTS['{p}'] must be a class or function cfg -> nn.Module, got {type(part).__name__}")
    if check is not None and not callable(check):
        bad("check must be a function check(cfg) that raises ValueError for a cell it cannot build")
    return Plugin(name=name, source=source, content_id=cid, keys=dict(keys), points=dict(points), check=check,
                  path=Path(path).resolve())


def check_distinct(earlier: list[Plugin], p: Plugin) -> None:
    """A grid's plugins have distinct names and declare distinct keys."""
    for q in earlier:
        if q.name == p.name:
            raise AblateError(f"plugin {p.source}: two plugins of this grid are named '{p.name}'")
        both = sorted(set(q.keys) & set(p.keys))
        if both:
            raise AblateError(f"plugin {p.source}: key '{both[0]}' is also declared by plugin {q.name} ({q.source})")


def check_cell(plugins: list[Plugin], cfg) -> None:
    """A cell's plugins agree: no two of them replace the same part (the composable points take
    several, plugin_keys.COMPOSABLE), and each one's check passes."""
    used = [p for p in plugins if p.content_id in {d["content_id"] for d in plugin_keys.used(cfg)}]
    filled: dict = {}
    for p in used:
        for point in p.points:
            if point in filled and point not in plugin_keys.COMPOSABLE:
                raise AblateError(f"key '{next(iter(p.keys))}': plugins {filled[point]} and {p.name} both fill the "
                                  f"point '{point}' in this cell, which takes one part (points that compose: "
                                  f"{', '.join(plugin_keys.COMPOSABLE)}): use one of them per cell")
            filled[point] = p.name
        if p.check is not None:
            try:
                p.check(cfg)
            except ValueError as e:  # the plugin refuses this cell: an error at the key's value
                key = next((k for k, key in p.keys.items() if getattr(cfg, k) != key.default), next(iter(p.keys)))
                raise AblateError(f"key '{key}': plugin {p.name}: {e}") from None
            except Exception as e:  # a bug in the check itself
                raise (blame(cfg, e, "check(cfg)") or AblateError(f"plugin {p.name}: check(cfg) failed: "
                                                                   f"{type(e).__name__}: {e}")) from None


def parts(cfg, run_dir=None) -> dict:
    """{point: (part, ...)} of the plugins cfg uses, in the grid's order (none for a cell that
    leaves every plugin key at its default), each checked against the content id the cell
    records. run_dir: a job's run dir, whose copies of the plugins' code are run instead of their
    sources (see copy_sources)."""
    out: dict = {}
    for d in plugin_keys.used(cfg):
        copy = Path(run_dir) / RUN_DIR_COPIES / f"{d['content_id']}.py" if run_dir is not None else None
        for point, part in load(d["source"], expect=d["content_id"], copy=copy).points.items():
            out[point] = (*out.get(point, ()), part)
    return out


def blame(cfg, e: BaseException, doing: str) -> AblateError | None:
    """One line naming the plugin file:line where `e` was raised while `doing` (building the
    model, a simulated step), when it was raised in the code of a plugin cfg uses; else None."""
    files = {p.path: p for d in plugin_keys.used(cfg) if (p := _LOADED.get((d["source"], d["content_id"])))}
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        p = files.get(Path(frame.filename).resolve())
        if p is not None:
            first = str(e).splitlines()[0] if str(e).strip() else ""
            return AblateError(f"{frame.filename}:{frame.lineno}: plugin {p.name}: {doing} failed: {type(e).__name__}"
                               + (f": {first[:300]}" if first else ""))
    return None


def copy_sources(cfg, run_dir: Path) -> None:
    """Keep the code of every plugin a cell uses in its run dir (plugins/<content_id>.py), so the
    job runs what was planned even if the file is edited while it waits in a queue."""
    for d in plugin_keys.used(cfg):
        target = Path(run_dir) / RUN_DIR_COPIES / f"{d['content_id']}.py"
        if target.is_file():
            continue
        _, path = locate(d["source"])
        raw = path.read_bytes()
        if content_id(raw) != d["content_id"]:
            raise AblateError(f"plugin {d['source']} changed since the grid was read; plan and submit again")
        with atomic_file(target, "wb") as f:
            f.write(raw)

