"""The model package as another commit had it, importable beside this one: the benchmarks that
compare this checkout's model with an earlier one in one process (bench_points.py) load it.

    base = load_base_model("2c44474")      # -> a module: base.build_model, base.GPT, ...

`git show REF:ablate/model/<file>` for every file of the package at REF, written under a
temporary directory as the package `ablate_base_model` (its `ablate.model.` imports renamed;
everything else it imports, ablate.core included, is this checkout's).
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_base_model(ref: str, name: str = "ablate_base_model"):
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:ablate/model/"],
                           check=True, capture_output=True, text=True).stdout.split()
    target = Path(tempfile.mkdtemp(prefix="ablate-base-")) / name
    target.mkdir()
    for f in files:
        if not f.endswith(".py"):
            continue
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:ablate/model/{f}"], check=True,
                              capture_output=True, text=True).stdout
        (target / f).write_text(text.replace("ablate.model.", f"{name}.").replace("from ablate.model import",
                                                                                   f"from {name} import"))
    sys.path.insert(0, str(target.parent))
    return importlib.import_module(name)
