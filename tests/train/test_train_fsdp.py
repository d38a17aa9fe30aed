"""strategy: fsdp (FSDP2, ablate/train/sharding.py): sharded gloo ranks on CPU compute what one
process computes with the same global batch, for both archs with every ablation at once (GQA,
tying, ALBERT sharing of one attention by every layer, a sliding window), with the memory knobs
and in bf16; the checkpoint is DCP shards committed by ckpt.pt.

Tolerances. fp32: the ranks sum gradients in another order than one process's backward (a
reduce-scatter of per-rank partial sums), so gradients differ in the last bits (~1e-7
relative), and AdamW's m / sqrt(v) passes that on; over 12 steps the losses agree to 2e-6
(as DDP's, tests/train/test_train_ddp.py) and the weights to 3e-3 lr (AdamW moves a weight by
about lr per step, whatever the gradient's size: a last-bit difference in a gradient near zero
can change the size of one such move, never its bound; measured: at most 1.0e-3 lr). bf16: autocast rounds each matmul's inputs to 8 bits of
mantissa, so a reordered sum can flip a rounding: losses within 2e-3 (bf16's 2^-9 relative
on a loss of ~4), weights within 0.2 lr.
"""
import os
import time
from pathlib import Path

import pytest
import torch

from ablate.core import rundir
from ablate.core.config import make_config
from ablate.plan import plugins
from ablate.train.job import train
from train_helpers import ROOT, launch_ranks, log_of, read_lines

KILLPOINT = Path(__file__).with_name("killpoint")  # its sitecustomize.py kills a rank where ABLATE_TEST_KILL says

CFG = dict(max_iters=12, grad_accum=4, eval_interval=6, eval_iters=3, log_interval=1, ckpt_interval=6)
ABLATIONS = dict(n_kv_head=1, share_attn=1, tie_embeddings=True, window=16)  # GQA, shared attention, tied, SWA
FP32, BF16 = dict(loss=2e-6, weight=3e-3), dict(loss=2e-3, weight=0.2)  # weight: in units of lr


def _run_ranks(run_dir, world: int) -> None:
    procs = launch_ranks(run_dir, world)
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * world, "\n".join(log_of(run_dir, f"rank{r}")[-3000:] for r in range(world))


def _weights(run_dir) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)


def _assert_same_run(single, sharded, tol, lr: float) -> None:
    m1, m2 = read_lines(single / rundir.METRICS), read_lines(sharded / rundir.METRICS)
    assert [m["step"] for m in m2] == [m["step"] for m in m1] == list(range(1, 13))  # every step's loss
    for a, b in zip(m1, m2):
        assert b["loss"] == pytest.approx(a["loss"], abs=tol["loss"]), (a["step"], a["loss"], b["loss"])
    e1, e2 = read_lines(single / rundir.EVALS), read_lines(sharded / rundir.EVALS)
    assert [e["step"] for e in e2] == [0, 6, 12]
    for a, b in zip(e1, e2):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=tol["loss"])
    w1, w2 = _weights(single), _weights(sharded)
    assert sorted(w1) == sorted(w2)  # the consolidated model.pt has the unsharded model's keys
    for name in w1:
        assert w2[name].shape == w1[name].shape and w2[name].dtype == w1[name].dtype, name
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=tol["weight"] * lr, msg=name)
    assert e2[-1]["val_loss"] < e2[0]["val_loss"] - 0.2  # it learned


CASES = {  # id: (arch, world, extra config, tolerance)
    "gpt-2-qk_norm-plugin": ("gpt", 2, {"qk_norm": True, "act_ckpt": "selective"}, FP32),
    "ngpt-2": ("ngpt", 2, {}, FP32),
    "gpt-4-knobs": ("gpt", 4, {"act_ckpt": "blocks", "loss_chunk": 64, "reshard_after_forward": False}, FP32),
    "ngpt-4": ("ngpt", 4, {}, FP32),
    "ngpt-2-bf16": ("ngpt", 2, {"dtype": "bf16", "act_ckpt": "selective"}, BF16),
}


def _with_plugin(run_dir, name: str) -> None:
    """The run dir's config names plugins/<name>.py, with its code beside it, as `ablate submit` writes it."""
    doc = rundir.read_json(run_dir / rundir.CONFIG)
    doc["config"]["plugins"] = [plugins.load(str(ROOT / "plugins" / f"{name}.py")).declaration()]
    cfg = make_config(doc["config"])
    plugins.copy_sources(cfg, run_dir)
    rundir.write_json_atomic(run_dir / rundir.CONFIG, {**doc, "config": cfg.to_dict()})


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_ranks_equal_one_process(make_run, case):
    arch, world, extra, tol = CASES[case]
    single = make_run("single", arch=arch, **CFG, **ABLATIONS, **{k: v for k, v in extra.items()
                                                                 if k != "reshard_after_forward"})
    sharded = make_run("fsdp", arch=arch, strategy="fsdp", **CFG, **ABLATIONS, **extra)
    if "qk_norm" in extra:  # a plugin's parameters (a gain per layer) are sharded with their block
        _with_plugin(single, "qk_norm")
        _with_plugin(sharded, "qk_norm")
    assert train(single) == "done"
    _run_ranks(sharded, world)
    _assert_same_run(single, sharded, tol, rundir.read_config(single)[0].lr)
    if "qk_norm" in extra:
        assert any(name.endswith("qk.q_gain") for name in _weights(sharded))
    assert "step 12/12" in log_of(sharded, "rank0") and "step 12/12" not in log_of(sharded, "rank1")  # one writer
    summary = rundir.read_json(sharded / rundir.SUMMARY)
    assert (summary["state"], summary["world_size"]) == ("done", world)
    assert not (sharded / rundir.CKPT).exists() and not (sharded / rundir.CKPT_SHARDS).exists()  # done: weights only


def test_row_normalizations_are_shard_local_and_column_ones_reduce_across_shards():
    """nGPT's normalize_ on FSDP2's dim-0 shards: a rank holds whole rows, so normalizing rows
    (wte, lm_head, W_q, W_k, W_v, c_fc: along dim 1) needs nobody else; a column (W_o and the
    MLP's c_proj: along dim 0) is spread over the ranks, so its norm takes one all-reduce per
    matrix, a shared attention's once. The values are checked against one process above."""
    from torch.distributed.tensor.debug import CommDebugMode

    from ablate.core.config import resolve
    from ablate.model import GPT
    from ablate.train.sharding import shard_model
    from torch_private import fake_process_group

    cfg = resolve(make_config({"arch": "ngpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32,
                               "strategy": "fsdp", **ABLATIONS}), 64)
    with fake_process_group(2):
        model = GPT(cfg)
        shard_model(model, cfg)
        matrices = list(model._matrices())
        columns = [w for w, axis in matrices if axis == 0]
        assert len(columns) == 3 and len(matrices) == 9  # W_o once (shared by both layers), c_proj per layer
        with CommDebugMode() as comm:
            model.normalize_()
        assert comm.get_total_counts() == len(columns)
        assert [str(op) for op in comm.get_comm_counts()] == ["c10d_functional.all_reduce"]
        with CommDebugMode() as comm, torch.no_grad():
            for w, axis in matrices:
                if axis == 1:
                    w.copy_(torch.nn.functional.normalize(w, dim=1))
        assert comm.get_total_counts() == 0


# ---------------------------------------------------------------- kill -9, then resume

RESUME = dict(CFG, max_iters=18, grad_accum=12, log_interval=1, eval_interval=6, ckpt_interval=6)


def _killed(run_dir, world: int, kill: str) -> dict:
    """Run `world` ranks until ABLATE_TEST_KILL's rank dies, then kill the others (a dead peer
    leaves them waiting at a collective: the scheduler ends the job). Returns step -> loss as
    this first attempt logged it."""
    env = {"ABLATE_TEST_KILL": kill, "PYTHONPATH": f"{KILLPOINT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = launch_ranks(run_dir, world, env=env)
    victim = procs[int(kill.split(":")[1])]
    assert victim.wait(timeout=300) == -9, log_of(run_dir, "rank0")[-3000:]
    time.sleep(0.5)  # the others are stuck at a collective, whatever they did last
    for p in procs:
        p.kill()
        p.wait(timeout=60)
    return {m["step"]: m["loss"] for m in read_lines(run_dir / rundir.METRICS)}


def _committed(run_dir) -> tuple:
    saved = torch.load(run_dir / rundir.CKPT, weights_only=True)
    return saved["step"], saved["sharded"]


@pytest.mark.parametrize("kill, world, again", [
    ("save:1:12", 2, 2),  # rank 1 wrote its shards of step 12; ckpt.pt never named them
    ("step:0:10", 3, 3),  # rank 0 of 3 dies inside step 10, after its backward (3 ranks: uneven shards)
    ("step:2:10", 4, 2),  # four ranks saved step 6; two resume from it (DCP reshards)
], ids=["mid-save", "mid-step", "4-to-2-ranks"])
def test_a_killed_rank_resumes_from_the_last_committed_checkpoint(make_run, kill, world, again):
    run_dir = make_run("fsdp", arch="ngpt", strategy="fsdp", **RESUME, **ABLATIONS)
    first = _killed(run_dir, world, kill)
    step, shards = _committed(run_dir)
    assert step == 6 and (run_dir / shards).is_dir()  # the previous checkpoint, intact
    leftovers = sorted(p.name for p in (run_dir / rundir.CKPT_SHARDS).iterdir())
    if kill.startswith("save"):  # the interrupted save left its shards behind, uncommitted
        assert leftovers == [Path(shards).name, "step000000012-attempt1"]
    else:
        assert leftovers == [Path(shards).name] and max(first) == 9
    _run_ranks(run_dir, again)
    log = log_of(run_dir, "rank0")
    assert f"resumed from {run_dir / rundir.CKPT} at step 6" in log
    resumed = {m["step"]: m["loss"] for m in read_lines(run_dir / rundir.METRICS)}
    assert sorted(resumed) == list(range(1, 19))  # one record per step: truncated to 6, then continued
    for s in range(1, 7):
        assert resumed[s] == first[s]  # kept as the first attempt wrote them
    replayed = [s for s in first if s > 6]
    assert replayed  # the steps the first attempt had taken after its checkpoint, taken again
    for s in replayed:
        if world == again:  # the same ranks, the same checkpoint: bit for bit
            assert resumed[s] == first[s], (s, first[s], resumed[s])
        else:  # another world size sums the gradients in another order
            assert resumed[s] == pytest.approx(first[s], abs=FP32["loss"])
    assert rundir.read_status(run_dir)["state"] == "done" and rundir.read_json(run_dir / rundir.SUMMARY)["steps"] == 18
    assert rundir.read_json(run_dir / rundir.SUMMARY)["world_size"] == again
