"""Plugin keys inside a config: what a cell records about the plugins of its grid, torch-free.

A plugin declares its keys with `Key` (ablate/plugin.py re-exports it for plugin files) and fills
some of the extension POINTS; ablate/plan/plugins.py loads plugins, this module only describes them.

A cell of a grid that names plugins carries, besides RunConfig's fields, one value per plugin
key, and in its `plugins` field the declaration of every plugin of the grid:

    {"name": "qk_norm", "source": "/abs/plugins/qk_norm.py", "content_id": "3f0c...",  (16 hex)
     "keys": {"qk_norm": {"type": "bool", "default": false, "choices": null, "range": null}},
     "points": ["qk"]}                                    (the points it fills; absent in older records)

so that a config.json alone says which of its keys are plugin keys, their types and defaults:
the run id, the identity check, the store's columns and the report need nothing else (the
plugin is never imported for that). The rule that keeps cells stable: a plugin is *used* by a
cell when one of its keys is not at its default; only then does the cell's identity include
those key values and the plugin's content id. A cell that leaves every key of a plugin at its
default is the built-in model: same run id as without the plugin, whatever the plugin's code.

Several plugins may fill one COMPOSABLE point in a cell (score modifications compose, head
transforms compose, loss terms add), in the order the grid lists them; the other points take one
part each. Where the order can matter (two plugins of a cell share a point), it is part of the
cell's identity.
"""
from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass, field

from ablate.core.errors import AblateError, type_name

# the extension points a plugin may fill: names here (the loader checks them, torch-free), the
# signatures and the built-in parts in ablate/model/points.py
POINTS = ("norm", "qk", "mlp", "residual", "scores", "head", "loss", "model")
COMPOSABLE = ("scores", "head", "loss")  # several plugins may fill these in one cell, in the grid's order
TYPES = {"bool": bool, "int": int, "float": float, "str": str}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # a YAML key, a Python attribute and a DuckDB column
ID_RE = re.compile(r"^[0-9a-f]{16}$")


def value_problem(spec: dict, value) -> str | None:
    """Why `value` is not allowed for a key declared by `spec` ({type, default, choices, range}),
    or None. The same rules as a built-in field: the type (an int is a float), null only when
    the default is null, one of the choices, within the range (inclusive; floats finite)."""
    kind = TYPES[spec["type"]]
    if value is None:
        return None if spec["default"] is None else f"null is not allowed, expected {_allowed(spec)}"
    if kind is bool:
        ok = value is True or value is False
    elif kind is float:
        ok = type(value) in (int, float)
    else:
        ok = type(value) is kind
    if not ok:
        return f"{value!r} has type {type_name(value)}, expected {_allowed(spec)}"
    if spec.get("choices") is not None and value not in spec["choices"]:
        return f"{value!r} is not allowed, expected {_allowed(spec)}"
    if kind in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a finite number"
        lo, hi = spec.get("range") or (None, None)
        if lo is not None and value < lo:
            return f"{value} must be >= {lo}"
        if hi is not None and value > hi:
            return f"{value} must be <= {hi}"
    return None


def _allowed(spec: dict) -> str:
    if spec.get("choices") is not None:
        text = "one of " + ", ".join(map(str, spec["choices"]))
    else:
        text = spec["type"]
        lo, hi = spec.get("range") or (None, None)
        if lo is not None or hi is not None:
            text += f" in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    return text + (" or null" if spec["default"] is None else "")


@dataclass(frozen=True)
class Key:
    """A plugin's config key: its type (bool, int, float or str), a default that leaves the model
    unchanged (None: the key may be null), a one-line help, and either the allowed values
    (`choices`) or an inclusive numeric `range` (lo, hi; None for no bound)."""
    type: type
    default: object
    help: str
    choices: tuple | None = None
    range: tuple | None = None
    where: str = field(default="", compare=False, repr=False)  # file:line of the declaration

    def __post_init__(self):
        if not self.where:
            caller = traceback.extract_stack(limit=3)[0]  # the plugin's line <- __init__ <- __post_init__
            object.__setattr__(self, "where", f"{caller.filename}:{caller.lineno}")

    def spec(self) -> dict:
        """The declaration as config.json records it (the `keys` of a declaration, below)."""
        name = {bool: "bool", int: "int", float: "float", str: "str"}.get(self.type)
        return {"type": name, "default": self.default, "choices": list(self.choices) if self.choices else None,
                "range": list(self.range) if self.range else None}

    def problem(self) -> str | None:
        """Why this declaration is not valid, or None."""
        if self.type not in (bool, int, float, str):
            return f"type must be bool, int, float or str, got {self.type!r}"
        if not isinstance(self.help, str) or not self.help.strip() or "\n" in self.help.strip():
            return "help must be one line of text"
        if self.choices is not None and (not isinstance(self.choices, (tuple, list)) or not self.choices):
            return f"choices must be a non-empty tuple of values, got {self.choices!r}"
        if self.range is not None:
            if self.type not in (int, float) or not isinstance(self.range, (tuple, list)) or len(self.range) != 2:
                return f"range must be (lo, hi) for an int or float key, got {self.range!r}"
            lo, hi = self.range
            if any(b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b))
                   for b in (lo, hi)) or (lo is not None and hi is not None and lo > hi):
                return f"range must be (lo, hi) with finite lo <= hi (None: no bound), got {self.range!r}"
        if self.choices is not None and self.range is not None:
            return "give choices or a range, not both"
        spec = self.spec()
        for c in self.choices or ():
            problem = value_problem({**spec, "choices": None}, c)
            if problem or c is None:
                return f"choice {c!r}: {problem or 'null is not a choice (a null default makes the key nullable)'}"
        problem = value_problem(spec, self.default)
        return f"default {problem}" if problem else None


def coerce(spec: dict, value):
    """A grid's value as the key's type: ints become floats for a float key, and YAML 1.1's
    '3e-3' (a string) becomes a number, as for the built-in float fields."""
    if spec["type"] == "float" and type(value) is int:
        return float(value)
    if spec["type"] == "float" and type(value) is str:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def declarations(value) -> tuple:
    """The `plugins` field from a config dict (a list from JSON, a tuple in memory), checked for
    shape: a config.json that does not hold declarations is not one of ours."""
    if value is None or value == () or value == []:
        return ()
    if not isinstance(value, (list, tuple)):
        raise AblateError(f"key 'plugins': expected a list of plugin declarations, got {type(value).__name__}")
    out = []
    for d in value:
        keys = d.get("keys") if isinstance(d, dict) else None
        if not (isinstance(keys, dict) and keys and isinstance(d.get("name"), str)
                and isinstance(d.get("source"), str) and ID_RE.match(str(d.get("content_id")))
                and all(NAME_RE.match(str(k)) and isinstance(s, dict) and s.get("type") in TYPES and "default" in s
                        for k, s in keys.items())
                and (d.get("points") is None or (isinstance(d["points"], list) and all(p in POINTS for p in d["points"])))):
            raise AblateError(f"key 'plugins': {str(d)[:120]} is not a plugin declaration "
                              "(name, source, content_id, keys: {key: {type, default, choices, range}}, points)")
        out.append(d)
    return tuple(out)


def _decls(config) -> list:
    """The declarations a config (a RunConfig or its dict) holds; whatever is not one is skipped
    (a hand-edited config.json: make_config refuses it, a reader of run dirs must not crash)."""
    decls = config.get("plugins") if isinstance(config, dict) else getattr(config, "plugins", ())
    if not isinstance(decls, (list, tuple)):
        return []
    return [d for d in decls if isinstance(d, dict) and isinstance(d.get("keys"), dict)
            and all(isinstance(s, dict) and "default" in s for s in d["keys"].values())]


def declared_keys(config) -> dict:
    """{plugin key: its spec} declared by a config (a RunConfig or its dict)."""
    return {k: spec for d in _decls(config) for k, spec in d["keys"].items()}


def _value(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def used(config) -> list[dict]:
    """The declarations of the plugins a cell uses: those with a key not at its default."""
    return [d for d in _decls(config) if any(_value(config, k) != s["default"] for k, s in d["keys"].items())]


def identity(config) -> dict:
    """What the plugins add to a cell's identity: every plugin key not at its default, and
    {"plugins": [content ids of the plugins used]}; {} when the cell uses none."""
    out = {}
    for d in used(config):
        out.update({k: _value(config, k) for k, s in d["keys"].items() if _value(config, k) != s["default"]})
    if out:
        out["plugins"] = sorted(str(d.get("content_id")) for d in used(config))
        if shared_points(config):  # composed in the grid's order: another order is another model
            out["plugin_order"] = [str(d.get("content_id")) for d in used(config)]
    return out


def shared_points(config) -> list[str]:
    """The points that two or more of the plugins a cell uses fill (from their declarations'
    `points`; a record without them fills none we know of)."""
    counts: dict = {}
    for d in used(config):
        for point in d.get("points") or ():
            counts[point] = counts.get(point, 0) + 1
    return sorted(p for p, n in counts.items() if n > 1)


def used_text(config) -> str | None:
    """The plugins a cell uses as one short text, 'qk_norm@3f0c9a1b2c4d5e6f' (comma separated);
    None when it uses none: the store's `plugins` column and the report's labels."""
    names = [f"{d.get('name')}@{d.get('content_id')}" for d in used(config)]
    return ",".join(sorted(names)) or None
