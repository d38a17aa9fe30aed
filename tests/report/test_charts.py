"""Loss-curve chart options: the zoomed y axis and the log x axis, read from the Vega-Lite spec."""
import numpy as np
import pandas as pd

from ablate.report import charts


def curves(steps=np.arange(0, 1001, 50)):
    rows = []
    for variant, offset in (("gpt", 0.0), ("ngpt", -0.05)):
        for s in steps:
            rows.append({"variant": variant, "cell_id": variant, "group": "all", "lr": 1e-3, "max_iters": 1000,
                         "step": int(s), "tokens": int(s) * 2048, "n_seeds": 1,
                         "val_loss": 1.5 + offset + 3.0 * np.exp(-s / 30)})
    return pd.DataFrame(rows)


def test_y_axis_skips_the_first_tenth_of_training():
    d = curves()
    spec = charts.loss_curves(d, "step").to_dict()
    lo, hi = spec["encoding"]["y"]["scale"]["domain"]
    late_max = d[d.step >= 100].val_loss.max()
    assert lo < d.val_loss.min() and late_max < hi < d.val_loss.max()
    assert spec["encoding"]["y"]["scale"]["clamp"] is True and "zoomed" in str(spec["title"])


def test_flat_curves_are_not_zoomed():
    d = curves().assign(val_loss=2.0)
    assert "domain" not in charts.loss_curves(d, "step").to_dict()["encoding"]["y"]["scale"]


def test_log_x_drops_step_zero_and_uses_a_log_scale():
    spec = charts.loss_curves(curves(), "tokens", log_x=True).to_dict()
    assert spec["encoding"]["x"]["scale"] == {"type": "log", "nice": False}
    data = next(iter(spec["datasets"].values()))
    assert min(r["tokens"] for r in data) > 0 and len(data) == 2 * 20
