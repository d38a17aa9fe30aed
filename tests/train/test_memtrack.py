"""Tensor accounting of one step (ablate/train/memtrack.py): what torch's private MemTracker
reports (pinned, so a torch upgrade that changes it fails here first), the trainer's tracked
step in summary.json, and the simulation under FakeTensorMode, which must equal it exactly."""
import json

import pytest
import torch

from ablate.core.config import make_config, resolve
from ablate.data import corpora
from ablate.train import memtrack
from ablate.train.memtrack import CATEGORIES, StepTracker, simulate_step
from ablate.train.job import train


def test_torch_memtracker_has_the_categories_and_api_memtrack_maps():
    from torch.distributed._tools import mem_tracker

    assert {m.value for m in mem_tracker._MemRefType} == set(memtrack.CATEGORY_OF), \
        f"torch {torch.__version__} changed MemTracker's categories: update memtrack.CATEGORY_OF"
    assert mem_tracker._TOTAL_KEY == memtrack.TOTAL
    assert issubclass(memtrack.check_torch(), mem_tracker.MemTracker)
    assert memtrack.check_torch() is not mem_tracker.MemTracker, "the global-peak fast path is gone (slower, still right)"


def _linear_step(tracker_cls):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8, bias=False)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, foreach=False)

    def step():
        lin(torch.randn(4, 16)).square().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()  # AdamW's state exists before the tracked step, as in a running job
    return tracker_cls(lin, opt, step)


def test_a_known_step_is_counted_byte_for_byte():
    """Linear 16 -> 8 (fp32), input (4, 16), AdamW: the peak is inside the optimizer step."""
    def ours(lin, opt, step):
        with StepTracker(lin, opt) as t:
            step()
        return t.peak()
    peak = _linear_step(ours)
    w = 8 * 16 * 4
    assert peak == {"params": w, "buffers": 0, "grads": w,
                    "optimizer": 2 * w + 4 + 2 * w,  # two moments, the step count, two temporaries of the update
                    "activations": 0,  # the input and the forward's outputs are freed by then
                    "temps": 0, "other": 0, "total": 6 * w + 4}


def test_the_global_peak_tracker_equals_torch_memtracker():
    """memtrack skips MemTracker's per-module snapshots: the global peak must not change."""
    from torch.distributed._tools.mem_tracker import MemTracker

    def stock(lin, opt, step):
        t = MemTracker()
        t.track_external(lin, opt)
        with t:
            step()
        (snap,) = t.get_tracker_snapshot("peak").values()
        return {memtrack.CATEGORY_OF.get(getattr(k, "value", k), "total"): v for k, v in snap.items()}

    def ours(lin, opt, step):
        with StepTracker(lin, opt) as t:
            step()
        return t.peak()
    assert _linear_step(ours) == _linear_step(stock)


def with_plugins(*names, **keys) -> dict:
    """The config of a cell whose grid names the shipped plugins `names` and sets `keys`."""
    from pathlib import Path

    from ablate.plan import plugins

    root = Path(__file__).resolve().parents[2]
    return {"plugins": [plugins.load(str(root / "plugins" / f"{n}.py")).declaration() for n in names], **keys}


CONFIGS = {
    "gpt": {"arch": "gpt"},
    "ngpt-ablations": {"arch": "ngpt", "n_kv_head": 1, "tie_embeddings": True, "share_attn": 1, "window": 8,
                       "grad_accum": 3},
    "gpt-knobs": {"arch": "gpt", "act_ckpt": "selective", "loss_chunk": 50},
    "gpt-fsdp": {"arch": "gpt", "strategy": "fsdp", "grad_accum": 2},  # one rank: a group of one, as the trainer makes it
    "ngpt-blocks": {"arch": "ngpt", "act_ckpt": "blocks"},
    # score_mods (the eager T x T fallback on CPU), a head transform and a loss term, composed
    "gpt-score-mods": {"arch": "gpt", "n_kv_head": 1, "window": 8, "grad_accum": 2,
                       **with_plugins("alibi", "softcap", "z_loss", alibi=True, attn_softcap=5.0, logit_softcap=3.0,
                                      z_loss=1e-4)},
    "gpt-score-mods-knobs": {"arch": "gpt", "act_ckpt": "selective", "loss_chunk": 50,
                             **with_plugins("softcap", "z_loss", attn_softcap=5.0, logit_softcap=3.0, z_loss=1e-4)},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tracked_peak_of_a_real_cpu_step_equals_the_simulated_one(make_run, name):
    """The trainer tracks its last warm-up step into summary.json; simulate_step replays the same
    step with fake tensors: every category equal, byte for byte."""
    run_dir = make_run(name, max_iters=7, **CONFIGS[name])
    assert train(run_dir) == "done"
    summary = json.loads((run_dir / "summary.json").read_text())
    tracked = {c: summary[f"tracked_{c}"] for c in (*CATEGORIES, "total")}
    assert summary["tracked_step"] == 5 and tracked["total"] == sum(tracked[c] for c in CATEGORIES)
    assert tracked["params"] > 0 and tracked["activations"] > 0
    if "fsdp" not in name:  # fsdp: params also counts the unsharded weights in flight (all-gathered)
        assert tracked["optimizer"] >= 2 * tracked["params"]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    cfg = resolve(make_config(config), corpora.vocab_size(config["dataset"], config["tokenizer"]))
    assert simulate_step(cfg, "cpu") == tracked
    assert summary["attn_backend"] == ("eager" if "score-mods" in name else "sdpa")


def test_a_run_too_short_to_warm_up_tracks_its_last_step(make_run):
    run_dir = make_run("short", max_iters=2)
    assert train(run_dir) == "done"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tracked_step"] == 2 and summary["tracked_total"] > 0


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch can simulate CUDA")
def test_simulating_cuda_on_a_cpu_only_torch_says_why_it_cannot():
    from ablate.core.errors import AblateError

    cfg = resolve(make_config({"vocab_size": 64}))
    with pytest.raises(AblateError, match="CUDA build"):
        simulate_step(cfg, "cuda")


def test_the_fake_device_move_takes_buffers_too_and_keeps_shared_tensors_shared():
    """A plugin's buffer left on the CPU would meet CUDA parameters in a simulated CUDA step."""
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    m[1].weight = m[0].weight
    m[0].register_buffer("slopes", torch.ones(3))
    m[1].register_buffer("slopes", m[0].slopes)
    m[1].register_buffer("scratch", torch.zeros(2), persistent=False)
    memtrack._to_fake_device(m, "meta")
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    assert m[1].weight is m[0].weight and m[1].slopes is m[0].slopes
    assert set(m.state_dict()) == {"0.weight", "0.bias", "0.slopes", "1.bias", "1.weight", "1.slopes"}


def test_fsdp_tracked_peak_per_rank_of_two_gloo_processes_equals_the_simulated_one(make_run):
    """strategy fsdp at world 2: rank 0's tracked step (summary.json) is what simulate_step
    counts over a fake process group of 2, byte for byte: the shards, the all-gathered units in
    flight, the reduce-scatter buffers, with nGPT's sharded normalize_ on the way. One micro-batch
    per rank: the trainer asks a sharded model with several for DDP's no_sync (trainer.py passes
    ddp=d.enabled; the world-1 case above accumulates two)."""
    import socket

    from train_helpers import log_of, train_subprocess

    run_dir = make_run("fsdp2", arch="ngpt", max_iters=7, strategy="fsdp", grad_accum=2, eval_iters=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [train_subprocess(run_dir, log_name=f"rank{r}", env={
        "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        for r in range(2)]
    for r, p in enumerate(procs):
        assert p.wait(timeout=180) == 0, log_of(run_dir, f"rank{r}")
    summary = json.loads((run_dir / "summary.json").read_text())
    tracked = {c: summary[f"tracked_{c}"] for c in (*CATEGORIES, "total")}
    config = json.loads((run_dir / "config.json").read_text())["config"]
    cfg = resolve(make_config(config), corpora.vocab_size(config["dataset"], config["tokenizer"]))
    simulated = simulate_step(cfg, "cpu", 2)
    assert simulated == tracked
    # sharded: half the optimizer state of the unsharded step, which keeps whole copies
    whole = simulate_step(cfg.replace(strategy="ddp"), "cpu", 2)
    assert simulated["optimizer"] == pytest.approx(whole["optimizer"] / 2, rel=0.01)
    assert simulated["total"] < whole["total"]


def test_simulating_fsdp_leaves_no_process_group_and_refuses_inside_one():
    import torch.distributed as dist
    from ablate.core.errors import AblateError

    cfg = resolve(make_config({"vocab_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "context": 16,
                               "batch_size": 2, "strategy": "fsdp"}))
    assert simulate_step(cfg, "cpu", 4)["total"] > 0
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(AblateError, match="process group"):
            simulate_step(cfg, "cpu", 4)
        assert dist.is_initialized()  # the caller's group is left alone
    finally:
        dist.destroy_process_group()
