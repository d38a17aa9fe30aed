"""What every command shares: reading the grid (its warnings on stderr), selecting cells,
checking a numeric option."""
from __future__ import annotations

import math
import sys

from ablate.core.errors import AblateError
from ablate.plan.grid import load_grid, select


def read_grid(args):
    grid = load_grid(args.grid)
    for w in grid.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return grid


def cells_of(grid, args):
    return select(grid.cells, getattr(args, "where", None) or [])


def number(flag: str, value: float, what: str, above: float | None = None, at_least: float | None = None) -> float:
    """A numeric option's value, refused in one line unless finite and in range (nan compares
    false with everything, so it would pass a plain `< 0` check)."""
    if not (math.isfinite(value) and (above is None or value > above) and (at_least is None or value >= at_least)):
        bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
        raise AblateError(f"{flag} {value}: expected {what}, a finite number {bound}")
    return value
