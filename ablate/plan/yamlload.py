"""Strict YAML for grids: safe_load semantics (no object tags), duplicate keys are errors, and
every mapping and list remembers the line of each key and value so errors can point at the
value that is wrong.

The work is bounded before anything expands: a file over MAX_BYTES, nesting deeper than
MAX_DEPTH, or a document whose aliases expand to more than MAX_NODES nodes (the "billion
laughs": nine aliases of nine aliases... is 9^9 nodes from 80 lines) is refused in one line.
"""
from __future__ import annotations

import yaml

from ablate.core.errors import AblateError

MAX_BYTES = 1 << 20        # a grid is a short diff of defaults; a 10,000-cell grid is a few kB
MAX_DEPTH = 32             # grid files nest 4-5 levels
MAX_NODES = 100_000        # nodes after expanding aliases


class LineDict(dict):
    """A dict that knows the 1-based line of each of its keys (`lines`) and values (`value_lines`)."""
    lines: dict
    value_lines: dict


class LineList(list):
    """A list that knows the 1-based line of each item (`lines`)."""
    lines: list


class _KeyProblem(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts what the document expands to, node by node, before any
    Python object is built: size (aliases counted at their full size each time) and height."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._measure: dict = {}  # id(node) -> (expanded size, height), once composed

    def compose_node(self, parent, index):
        line = self.peek_event().start_mark.line + 1
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _KeyProblem(line, f"nested deeper than {MAX_DEPTH} levels (a grid needs 5)")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:  # an anchor is visible to its own children: an alias to it is a cycle, not yet measured
            if id(node) not in self._measure:
                raise _KeyProblem(line, "an alias that refers to itself (recursive structures are not allowed)")
            size, height = self._measure[id(node)]
        else:
            children = [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else \
                node.value if isinstance(node, yaml.SequenceNode) else []
            parts = [self._measure[id(c)] for c in children]
            size = 1 + sum(p[0] for p in parts)
            height = 1 + max((p[1] for p in parts), default=0)
            self._measure[id(node)] = (size, height)
        if size > MAX_NODES:
            raise _KeyProblem(line, f"the document expands to more than {MAX_NODES:,} values (aliases "
                                    "included); a grid is a short diff of defaults")
        if self._depth + height > MAX_DEPTH:
            raise _KeyProblem(line, f"nested deeper than {MAX_DEPTH} levels through aliases")
        return node


def line_of(node, key, value=True):
    """The line of a mapping's key (or of its value), or of a list's item; None when unknown."""
    if isinstance(node, list):
        lines = getattr(node, "lines", None)
        return lines[key] if lines is not None and isinstance(key, int) and 0 <= key < len(lines) else None
    return getattr(node, "value_lines" if value else "lines", {}).get(key)


def _construct_mapping(loader, node, deep=False):
    own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # merged pairs (`<<: *base`) first, then the mapping's own
    merged = len(node.value) - own
    out = LineDict()
    out.lines, out.value_lines = {}, {}
    from_merge = set()  # keys a merge gave: the mapping's own keys override them, as YAML says
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _KeyProblem(key_node.start_mark.line + 1, "a mapping key must be a plain value") from None
        if i < merged:
            from_merge.add(key)
        elif key in from_merge:
            from_merge.discard(key)
        elif key in out:
            raise _KeyProblem(key_node.start_mark.line + 1, f"duplicate key '{key}' (first at line {out.lines[key]}); "
                              "plain YAML would silently keep the last one")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
        out.value_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_sequence(loader, node, deep=False):
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path) -> object:
    """Parse a grid file; any YAML problem becomes one AblateError line naming file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise AblateError(f"{path}: no such grid file") from None
    except (IsADirectoryError, PermissionError) as e:
        raise AblateError(f"{path}: cannot read grid file ({e.__class__.__name__})") from None
    if len(raw) > MAX_BYTES:
        raise AblateError(f"{path}: larger than {MAX_BYTES >> 20} MiB; a grid is a short diff of defaults")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AblateError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
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
