"""What a plugin file imports: `from ablate.plugin import Key`.

    KEYS = {"qk_norm": Key(bool, False, "RMSNorm on q and k per head, before RoPE")}
    POINTS = {"qk": QKNorm}      # extension points (ablate/model/points.py) -> part(cfg)
    def check(cfg): ...          # optional: raise ValueError for a cell the plugin cannot build

Key and the names of the POINTS live in the kernel (ablate/core/plugin_keys.py); loading a
plugin is ablate/plan/plugins.py's job. README "Add your own ablation" has the whole story.
"""
from ablate.core.plugin_keys import POINTS, Key

__all__ = ["Key", "POINTS"]
