"""Strict YAML for grids: safe_load semantics (no object tags), duplicate keys are errors, and
every mapping remembers the line of each key so errors can point at it."""
from __future__ import annotations

import yaml

from ablate.errors import AblateError


class LineDict(dict):
    """A dict that knows the 1-based line of each of its keys."""
    lines: dict


class _StrictLoader(yaml.SafeLoader):
    pass


class _KeyProblem(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    out = LineDict()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _KeyProblem(key_node.start_mark.line + 1, "a mapping key must be a plain value") from None
        if key in out:
            raise _KeyProblem(key_node.start_mark.line + 1, f"duplicate key '{key}' (first at line {out.lines[key]}); "
                              "plain YAML would silently keep the last one")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path) -> object:
    """Parse a grid file; any YAML problem becomes one AblateError line naming file and line."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise AblateError(f"{path}: no such grid file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise AblateError(f"{path}: cannot read grid file ({e.__class__.__name__})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _KeyProblem as e:
        raise AblateError(f"{path}:{e.line}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "could not determine a constructor" in str(e):
            problem = "tags that construct objects are not allowed (plain YAML only): " + problem
        raise AblateError(f"{path}{where}: invalid YAML: {problem}") from None
