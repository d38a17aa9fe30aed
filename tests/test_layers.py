"""The house's floors, read from the code's imports (an AST walk over ablate/), so that a wrong
import cannot silently come back. README "Layout" draws the same floors.

    floor 0  kernel   ablate.core, ablate.plugin (the plugin authors' face), ablate (the version)
    floor 1  data     ablate.data
    floor 2  store    ablate.store
    floor 3  plan     ablate.plan          (beside the store in DESIGN.md: it reads the store's column names)
    floor 4  model    ablate.model
    floor 5  train    ablate.train
    floor 6  launch   ablate.launch, ablate.report
    floor 7  command  ablate.cli, ablate.gpucheck

A module imports only from its own package or from a lower floor (function-level imports too:
hiding an import in a function does not change what depends on what), no two modules import
each other (directly or around a circle), every function-level import says why on its line,
and no name another module keeps private (a leading underscore) is imported or reached into,
except in the shims listed in PRIVATE_SHIMS.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ablate"

FLOORS = {
    "ablate.core": 0, "ablate.plugin": 0, "ablate": 0,
    "ablate.data": 1,
    "ablate.store": 2,
    "ablate.plan": 3,
    "ablate.model": 4,
    "ablate.train": 5,
    "ablate.launch": 6, "ablate.report": 6,
    "ablate.cli": 7, "ablate.gpucheck": 7,
}
KERNEL = ("ablate.core", "ablate.plugin", "ablate")  # one package in all but name: the face re-exports the core

# third-party private APIs that ablate cannot do without, each in one guarded place and pinned
# by a test that fails loudly when the library changes (file -> what it touches, and why)
PRIVATE_SHIMS = {
    "ablate/train/memtrack.py": "torch's MemTracker and FakeTensorMode (check_torch guards; test_memtrack pins)",
    "tests/train/test_memtrack.py": "pins torch's MemTracker categories for memtrack.py",
    "ablate/model/backends.py": "torch._fused_sdp_choice / _get_sdp_priority_order, guarded (None when gone); "
                                "test_backends checks the kernel named against the profiler",
    "ablate/launch/slurm.py": "submitit's _make_sbatch_string, guarded; the golden sbatch test pins it",
    "tests/torch_private.py": "dynamo's graph counter for the compile test",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> tuple[str, int]:
    """(the package that holds module, its floor): the longest FLOORS key that prefixes it."""
    key = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return ("ablate.core" if key in KERNEL else key), FLOORS[key]


def _parents(tree) -> dict:
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


def _in_function(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def imports(path: Path):
    """(imported ablate module, line, function-level?, the node) for every import in a file."""
    tree = ast.parse(path.read_text())
    parents = _parents(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = []
            for a in node.names:  # `from pkg import submodule` depends on the submodule
                sub = f"{node.module}.{a.name}"
                targets.append(sub if sub in MODULES else node.module)
        else:
            continue
        for target in targets:
            yield target, node.lineno, _in_function(node, parents), node


def edges() -> dict:
    """{module: {ablate module it imports}} over the whole package."""
    out = {}
    for name, path in MODULES.items():
        out[name] = {t for t, *_ in imports(path) if t in MODULES}
    return out


def test_every_module_has_a_floor():
    assert all(floor_of(m) for m in MODULES)
    packages = {max((k for k in FLOORS if m == k or m.startswith(k + ".")), key=len) for m in MODULES}
    assert packages == set(FLOORS), "a floor with no module, or a package with no floor"


def test_no_import_runs_up_a_floor_or_sideways_into_another_package():
    wrong = []
    for name, targets in edges().items():
        package, floor = floor_of(name)
        for target in targets:
            their_package, their_floor = floor_of(target)
            if their_floor > floor or (their_floor == floor and their_package != package):
                wrong.append(f"{name} (floor {floor}) imports {target} (floor {their_floor})")
    assert wrong == [], "\n".join(wrong)


def circles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    found = circles(edges())
    assert found == [], found


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_every_function_level_import_says_why():
    """Module-level imports wherever the floors allow; an import inside a function only where it
    keeps torch, DuckDB or another slow import out of a path that never needs it, saying so."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, in_function, node in imports(path):
            if in_function and "#" not in lines[line - 1]:
                silent.append(f"{path.relative_to(ROOT)}:{line}: import {target} (no reason given)")
    assert silent == [], "\n".join(silent)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# underscored but public: documented API of the standard library
DOCUMENTED = {"os._exit": "the os module's way for a forked child to exit without its parent's exit handlers"}


def private_uses(path: Path) -> list[str]:
    """Every import of another module's private name (or through a private module), and every
    `module._name` reached through a module this file imported."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()  # names bound by imports: their _attributes are someone else's
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules.add(a.asname or a.name.split(".")[0])
                if any(_private(p) for p in a.name.split(".")):
                    found.append(f"{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if _private(a.name):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
                modules.add(a.asname or a.name)  # a name another module owns, bound here
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules and ast.unparse(node) not in DOCUMENTED:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def checked_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])


def test_no_private_name_of_another_module_is_used_outside_the_shims():
    wrong = []
    for path in checked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in PRIVATE_SHIMS:
            continue
        wrong += [f"{rel}:{use}" for use in private_uses(path)]
    assert wrong == [], "\n".join(wrong)


def test_each_shim_is_still_needed():
    """A shim that no longer touches a private API comes off the list."""
    idle = [rel for rel in PRIVATE_SHIMS if not private_uses(ROOT / rel)]
    assert idle == [], idle


@pytest.mark.parametrize("source, expected", [
    ("import torch\ntorch._fused_sdp_choice(1)\n", ["2: torch._fused_sdp_choice"]),
    ("from torch._dynamo.utils import counters\n", ["1: from torch._dynamo.utils import ..."]),
    ("from ablate.core.config import _derived\n", ["1: from ablate.core.config import _derived"]),
    ("from ablate.model import backends\nbackends._flash_probe()\n", ["2: backends._flash_probe"]),
    ("class A:\n    def f(self):\n        return self._x\n", []),
    ("from ablate.core.config import FIELDS\nFIELDS.__class__\n", []),
])
def test_the_private_name_check_sees_each_kind(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert private_uses(path) == expected


def test_the_floor_check_sees_an_upward_import():
    assert floor_of("ablate.plan.grid") == ("ablate.plan", 3)
    assert floor_of("ablate.model.gpt")[1] > floor_of("ablate.plan.grid")[1]  # so plan -> model would be refused
    assert floor_of("ablate.core.config")[1] == 0


def test_executors_are_chosen_by_interface_not_by_comparing_their_names():
    """An executor's name is looked up once (launch/executors.py); nothing else compares it."""
    names = {"slurm", "local", "debug"}
    compared = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if names & {c for c in consts if isinstance(c, str)}:
                    compared.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert compared == [], "\n".join(compared)
