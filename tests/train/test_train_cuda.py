"""The trainer on CUDA: memory accounting, MFU, bf16 parameters, compile in bf16, and OOM as a
recorded result. Skipped, saying so, on a machine without CUDA."""
import json

import pytest
import torch

from ablate.core import estimate, rundir
from ablate.core.config import make_config, resolve
from ablate.train.job import train
from train_helpers import evals_of

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]
CUDA = dict(device="cuda", dtype="bf16")


def summary(run_dir) -> dict:
    return rundir.read_json(run_dir / rundir.SUMMARY)


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_peak_memory_capacity_and_mfu_are_recorded(make_run, arch):
    run_dir = make_run("mem", arch, max_iters=40, **CUDA)
    assert train(run_dir) == "done"
    s = summary(run_dir)
    assert 0 < s["peak_alloc"] <= s["peak_reserved"] <= s["device_capacity"], s
    assert s["tokens_per_s"] > 0 and s["attn_backend"] in ("sdpa", "flash")
    if s["peak_flops"]:  # a device in the peak table
        assert 0 < s["mfu_causal"] <= s["mfu_nanogpt"] < 1, s
    lines = [json.loads(l) for l in (run_dir / rundir.METRICS).read_text().splitlines()]
    assert all(0 < l["mem_alloc"] <= l["mem_peak"] <= l["mem_peak_reserved"] and l["mem_reserved"] > 0
               for l in lines[-3:])


def test_bf16_parameters_train_and_halve_the_block_matrices(make_run):
    fp32, bf16 = make_run("p32", max_iters=30, **CUDA), make_run("p16", max_iters=30, param_dtype="bf16", **CUDA)
    assert train(fp32) == "done" and train(bf16) == "done"
    e32, e16 = evals_of(fp32), evals_of(bf16)
    assert e16[-1]["val_loss"] < e16[0]["val_loss"] - 0.3
    assert abs(e16[-1]["val_loss"] - e32[-1]["val_loss"]) < 0.15
    assert summary(bf16)["ckpt_bytes"] < summary(fp32)["ckpt_bytes"]


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_compiled_bf16_run_is_close_to_eager(make_run, arch):
    eager, compiled = make_run("eager", arch, max_iters=30, **CUDA), make_run("comp", arch, max_iters=30, compile=True, **CUDA)
    assert train(eager) == "done" and train(compiled) == "done"
    for a, b in zip(evals_of(eager), evals_of(compiled), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 5e-2, (a, b)


def test_allocating_past_capacity_is_an_oom_result(make_run):
    big = dict(context=1024, batch_size=2 ** 17, max_iters=5, **CUDA)
    run_dir = make_run("oom", **big)
    cfg = resolve(make_config(json.loads((run_dir / rundir.CONFIG).read_text())["config"]), 64)
    capacity = torch.cuda.get_device_properties(0).total_memory
    assert estimate.memory_breakdown(cfg)["total"] > 2 * capacity  # by the plan's own estimate
    assert train(run_dir) == "oom"
    status = rundir.read_status(run_dir)
    assert status["state"] == "oom" and status["oom_step"] == 0 and status["oom_peak_alloc"] > 0
    assert "out of memory" in status["error"].lower()
    s = summary(run_dir)  # none when the OOM came before the first step's timer
    assert s is None or s["state"] == "oom"
