"""What a seed plan is asked for: the effect to detect, at which alpha and power, from which pilot.

    power:                      # a grid's optional section (or `ablate plan GRID --seeds-for 0.01`)
      detect: 0.01              # a final val loss gap (a number > 0), or a speedup: "1.1x"
      alpha: 0.05               # two-sided test level (default 0.05: the report's 95% intervals)
      power: 0.8                # probability of detecting it (default 0.8)
      pilot: quickstart_seeds   # the grid in the store whose seeds measure the spread (default: this grid)

The seed counts themselves come from the pilot's measured spread (ablate/report/seeds.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from ablate.core.errors import AblateError, closest

KEYS = ("detect", "alpha", "power", "pilot")
SPEEDUP_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[xX]\s*$")


@dataclass(frozen=True)
class Power:
    kind: str | None     # "loss" (a final val loss gap), "speedup" (a ratio); None: not given yet
    value: float | None  # the gap (> 0) or the speedup (> 0, != 1)
    alpha: float = 0.05
    power: float = 0.8
    pilot: str | None = None

    @property
    def delta(self) -> float:
        """What the paired test sees: the loss gap, or the log of the speedup."""
        return self.value if self.kind == "loss" else abs(math.log(self.value))

    @property
    def text(self) -> str:
        return f"a final val loss gap of {self.value:g}" if self.kind == "loss" else f"a speedup of {self.value:g}x"


def parse_detect(value, where: str) -> tuple[str, float]:
    """("loss", gap) for a number > 0, ("speedup", s) for "1.1x"; one line naming what is allowed."""
    allowed = "a final val loss gap (a number > 0, e.g. 0.01) or a speedup (e.g. 1.1x)"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            raise AblateError(f"{where}: {value!r} is not {allowed}")
        return "loss", float(value)
    text = str(value)
    m = SPEEDUP_RE.match(text)
    if m:
        s = float(m.group(1))
        if not (s > 0 and s != 1 and math.isfinite(s)):
            raise AblateError(f"{where}: {text!r}: a speedup to detect must be > 0 and not 1x")
        return "speedup", s
    try:
        return parse_detect(float(text), where)
    except ValueError:
        raise AblateError(f"{where}: {text!r} is not {allowed}") from None


def _unit(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise AblateError(f"{where}: '{key}' must be a number between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def parse_power(raw: dict, where: str) -> Power:
    """A grid's `power:` mapping; `detect` may be left to --seeds-for (with_detect)."""
    if not isinstance(raw, dict):
        raise AblateError(f"{where}: must be a mapping with keys {', '.join(KEYS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in KEYS:
            raise AblateError(f"{where}: unknown key '{key}'{closest(key, KEYS)}; allowed: {', '.join(KEYS)}")
    kind, value = parse_detect(raw["detect"], f"{where}: detect") if "detect" in raw else (None, None)
    pilot = raw.get("pilot")
    if pilot is not None and (not isinstance(pilot, str) or not re.match(r"^[A-Za-z0-9_-]{1,64}$", pilot)):
        raise AblateError(f"{where}: 'pilot' must be the name of a grid (letters, digits, '-', '_'), got {pilot!r}")
    return Power(kind, value, _unit(raw.get("alpha", 0.05), "alpha", where), _unit(raw.get("power", 0.8), "power", where),
                 pilot)


def with_detect(power: Power | None, seeds_for: str | None) -> Power | None:
    """The seed plan asked for: the grid's `power:` with --seeds-for as its `detect`; None when
    neither asks for one."""
    if seeds_for is None:
        if power is not None and power.kind is None:
            raise AblateError("the grid's power: section has no 'detect': give one there or --seeds-for GAP")
        return power
    kind, value = parse_detect(seeds_for, "--seeds-for")
    return replace(power or Power(None, None), kind=kind, value=value)
