"""train(run_dir) end to end on tiny models: the files it writes and what they say."""
import math
import os
import signal
import threading
import time

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.core import estimate, rundir
from ablate.core.config import make_config, resolve
from ablate.data import corpora, prepare
from ablate.data.batches import Batches
from ablate.train.job import main, train
from ablate.train.signals import Preempted
from ablate.train.optim import lr_at
from train_helpers import read_lines


def test_lr_schedule_gpt_warms_up_ngpt_starts_at_peak():
    gpt = resolve(make_config({"arch": "gpt", "lr": 1e-3, "min_lr": 1e-4, "max_iters": 100, "warmup_iters": 10, "vocab_size": 64}))
    lrs = [lr_at(i, gpt) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[10] == pytest.approx(1e-3) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4) and lr_at(100, gpt) == 1e-4
    ngpt = resolve(make_config({"arch": "ngpt", "lr": 5e-3, "max_iters": 100, "vocab_size": 64}))
    assert lr_at(0, ngpt) == 5e-3 and lr_at(99, ngpt) < 1e-5


def test_batches_are_a_pure_function_of_seed_step_micro(corpus):
    prepare.prepare(f"text:{corpus}", "char")
    path = corpora.splits(f"text:{corpus}", "char")
    a = Batches(path, 16, 4, seed=3, device=torch.device("cpu"))
    b = Batches(path, 16, 4, seed=3, device=torch.device("cpu"))
    x, y = a.train(7, 1)
    assert torch.equal(x, b.train(7, 1)[0]) and torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, a.train(7, 0)[0]) and not torch.equal(x, a.train(8, 1)[0])
    assert not torch.equal(x, Batches(path, 16, 4, seed=4, device=torch.device("cpu")).train(7, 1)[0])
    assert torch.equal(a.eval("val", 2)[0], b.eval("val", 2)[0]) and not torch.equal(a.eval("val", 2)[0], a.eval("train", 2)[0])


def test_eval_windows_are_one_fixed_set_whatever_the_seed_or_batch_size(corpus):
    """Every cell of a grid with the same data and context is scored on the same val windows:
    the training seed does not pick them, and a larger eval batch holds the same windows in order."""
    prepare.prepare(f"text:{corpus}", "char")
    path = corpora.splits(f"text:{corpus}", "char")
    cpu = torch.device("cpu")
    a, b = Batches(path, 16, 4, seed=3, device=cpu), Batches(path, 16, 4, seed=4, device=cpu)
    wide = Batches(path, 16, 8, seed=5, device=cpu)
    for split in ("val", "train"):
        assert torch.equal(a.eval(split, 2)[0], b.eval(split, 2)[0])
        assert torch.equal(wide.eval(split, 1)[0], torch.cat([a.eval(split, 2)[0], a.eval(split, 3)[0]]))
    assert not torch.equal(a.train(0, 0)[0], b.train(0, 0)[0])  # training batches still follow the seed
    longer = Batches(path, 24, 4, seed=3, device=cpu).eval("val", 0)[0]
    assert longer.shape == (4, 24)


def test_eval_records_the_standard_error_of_its_batches(make_run):
    """val_loss is the mean of eval_iters batch losses and val_loss_se their standard error:
    recomputed here from the saved final weights on the same batches."""
    from ablate.model import build_model

    run_dir = make_run(max_iters=12, eval_interval=12, eval_iters=6, ckpt_interval=0)
    assert train(run_dir) == "done"
    cfg, _ = rundir.read_config(run_dir)
    cfg = resolve(cfg, corpora.vocab_size(cfg.dataset, cfg.tokenizer))
    model = build_model(cfg, "cpu")
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model.eval()
    batches = Batches(corpora.splits(cfg.dataset, cfg.tokenizer), cfg.context, cfg.batch_size, seed=99,
                      device=torch.device("cpu"))  # another seed: the same eval windows
    with torch.no_grad():
        losses = torch.tensor([model(*batches.eval("val", i))[1].item() for i in range(6)], dtype=torch.float64)
    last = read_lines(run_dir / rundir.EVALS)[-1]
    assert last["val_loss"] == pytest.approx(losses.mean().item(), abs=1e-6)
    assert last["val_loss_se"] == pytest.approx((losses.std() / math.sqrt(6)).item(), rel=1e-4)
    assert 0 < last["val_loss_se"] < 0.5


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_tiny_run_writes_every_file_and_learns(make_run, arch):
    run_dir = make_run(arch=arch)
    assert train(run_dir) == "done"
    cfg, doc = rundir.read_config(run_dir)
    cfg = resolve(cfg, corpora.vocab_size(cfg.dataset, cfg.tokenizer))

    evals = read_lines(run_dir / rundir.EVALS)
    assert [e["step"] for e in evals] == [0, 10, 20, 30, 40]
    assert [e["tokens"] for e in evals] == [s * 8 * 32 for s in (0, 10, 20, 30, 40)]
    assert evals[0]["val_loss"] == pytest.approx(math.log(cfg.vocab_size), abs=0.6)  # ~ln(V) at init
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    assert all(b["elapsed"] > a["elapsed"] for a, b in zip(evals, evals[1:]))
    assert all(0 < e["val_loss_se"] < 0.5 for e in evals)  # eval_iters 4 batches: their standard error

    metrics = read_lines(run_dir / rundir.METRICS)
    assert [m["step"] for m in metrics] == list(range(5, 41, 5))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    m = metrics[-1]
    assert set(m) == {"step", "tokens", "loss", "lr", "step_time", "tokens_per_s", "mem_alloc", "mem_peak",
                      "mem_reserved", "mem_peak_reserved"}
    assert m["tokens_per_s"] == pytest.approx(8 * 32 / m["step_time"], rel=1e-6) and m["mem_peak"] is None
    assert m["lr"] == pytest.approx(lr_at(39, cfg))

    status = rundir.read_status(run_dir)
    assert status["state"] == "done" and status["attempts"] == 1 and status["step"] == 40
    assert status["ended"] >= status["started"] and status["device"] == "cpu" and not status.get("error")
    assert status["device_name"].startswith("cpu") and status["pid"] == os.getpid()

    s = rundir.read_json(run_dir / rundir.SUMMARY)
    counts = estimate.param_counts(cfg)
    assert {k: s[f"params_{k}"] for k in ("total", "embedding", "non_embedding", "attention")} == \
        {k: counts[k] for k in ("total", "embedding", "non_embedding", "attention")}
    assert s["ckpt_bytes"] == (run_dir / "model.pt").stat().st_size
    assert estimate.checkpoint_bytes(cfg) < s["ckpt_bytes"] < estimate.checkpoint_bytes(cfg) + 50_000  # + zip overhead
    assert (s["state"], s["steps"], s["tokens"]) == ("done", 40, 40 * 8 * 32)
    assert (s["final_val_loss"], s["final_train_loss"]) == (evals[-1]["val_loss"], evals[-1]["train_loss"])
    assert s["tokens_per_s"] > 0 and s["mfu_causal"] is None and s["peak_alloc"] is None
    assert s["attn_backend"] == "sdpa" and s["torch_version"] == torch.__version__ and s["git_sha"]
    assert s["attn_kernel"] == "sdpa-flash"  # the kernel that ran: CPU's fused SDPA kernel, not the math one
    assert 0 < s["train_s"] <= s["wall_s"]
    assert not (run_dir / rundir.CKPT).exists()  # done: model.pt and the logs are what a finished run keeps
    assert train(run_dir) == "done" and read_lines(run_dir / rundir.EVALS) == evals  # and it trains nothing again


def test_a_finished_run_keeps_its_checkpoint_when_asked(make_run):
    run_dir = make_run(max_iters=20, keep_ckpt=True)
    assert train(run_dir) == "done"
    ckpt = torch.load(run_dir / rundir.CKPT, weights_only=True)
    assert ckpt["step"] == 20 and ckpt["data_position"]["step"] == 20 and "optimizer" in ckpt


def test_ngpt_weights_stay_on_the_sphere(make_run):
    """After the last step the saved matrices are unit-norm: normalizing them again changes
    nothing, while they did move away from their init."""
    from ablate.model import build_model

    run_dir = make_run(arch="ngpt", max_iters=12, eval_interval=12, ckpt_interval=0)
    assert train(run_dir) == "done"
    cfg, _ = rundir.read_config(run_dir)
    cfg = resolve(cfg, corpora.vocab_size(cfg.dataset, cfg.tokenizer))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, "cpu")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    trained = torch.load(run_dir / "model.pt", weights_only=True)
    model.load_state_dict(trained)
    model.normalize_()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, trained[k], atol=1e-6), k
    moved = [k for k in init if not torch.allclose(init[k], trained[k], atol=1e-4)]
    assert "wte.weight" in moved and len(moved) > len(init) // 2


def test_diverging_run_stops_early_and_keeps_logs(make_run):
    run_dir = make_run(lr=50.0, warmup_iters=0, grad_clip=0.0, diverge_loss=6.0, max_iters=200)
    assert train(run_dir) == "diverged"
    status = rundir.read_status(run_dir)
    metrics = read_lines(run_dir / rundir.METRICS)
    assert status["state"] == "diverged" and "limit 6.0" in status["error"]
    last = metrics[-1]
    assert last["step"] < 200 and (last["loss"] is None or last["loss"] > 6.0)
    assert all(m["loss"] is None or m["loss"] <= 6.0 for m in metrics[:-1])
    assert rundir.read_json(run_dir / rundir.SUMMARY)["state"] == "diverged"
    assert not (run_dir / "model.pt").exists()


def test_broken_config_fails_with_the_reason(make_run, tmp_path):
    run_dir = make_run(n_embd=34, n_head=4)
    with pytest.raises(AblateError, match="n_embd"):
        train(run_dir)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "n_embd': 34 is not divisible" in status["error"].splitlines()[-1]
    assert "Traceback" in status["error"] or "trainer.py" in status["error"]

    run_dir = make_run("missing", dataset=f"text:{tmp_path}/gone.txt")
    assert main([str(run_dir)]) == 2
    assert rundir.read_status(run_dir)["state"] == "failed" and "gone.txt does not exist" in rundir.read_status(run_dir)["error"]


def test_bf16_autocast_on_cpu_trains(make_run):
    fp32, bf16 = make_run("fp32", max_iters=20), make_run("bf16", dtype="bf16", max_iters=20)
    assert train(fp32) == "done" and train(bf16) == "done"
    e32, e16 = read_lines(fp32 / rundir.EVALS), read_lines(bf16 / rundir.EVALS)
    assert e16[-1]["val_loss"] < e16[0]["val_loss"] - 0.5
    assert e16[-1]["val_loss"] == pytest.approx(e32[-1]["val_loss"], abs=0.1)
    assert e16[-1]["val_loss"] != e32[-1]["val_loss"]  # bf16 matmuls really ran


def _when_logged(run_dir, min_step, action):
    """Run action() in a thread once status.json's heartbeat says step >= min_step."""
    def watch():
        deadline = time.time() + 60
        while time.time() < deadline:
            if rundir.read_status(run_dir).get("step", 0) >= min_step:
                return action()
            time.sleep(0.005)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_sigterm_after_cancel_keeps_cancelled(make_run):
    """`ablate cancel` marks the run cancelled, then sends SIGTERM: the trainer saves and stops
    without overwriting the state."""
    run_dir = make_run(max_iters=5000, ckpt_interval=0, eval_interval=1000)

    def cancel():
        rundir.update_status(run_dir, state="cancelled")
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    _when_logged(run_dir, 5, cancel)
    with pytest.raises(Preempted) as info:
        train(run_dir)
    assert info.value.state == "cancelled" and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    status = rundir.read_status(run_dir)
    assert status["state"] == "cancelled" and status["ckpt_step"] == info.value.step and status["ended"]
    assert torch.load(run_dir / rundir.CKPT, weights_only=True)["step"] == info.value.step < 5000


def test_out_of_memory_is_a_result(make_run, monkeypatch):
    """torch.OutOfMemoryError (CUDA's OOM) mid-run: state oom with the step, a summary, no raise."""
    from ablate.train import trainer as trainer_mod

    real_step = trainer_mod.Trainer.train_step

    def step_then_oom(self):
        if self.step == 7:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step_then_oom)
    run_dir = make_run(max_iters=20)
    assert train(run_dir) == "oom"
    status = rundir.read_status(run_dir)
    assert (status["state"], status["oom_step"]) == ("oom", 7) and "Tried to allocate 20.00 GiB" in status["error"]
    s = rundir.read_json(run_dir / rundir.SUMMARY)
    assert (s["state"], s["steps"]) == ("oom", 7) and s["params_total"] > 0


def test_median_throughput_skips_each_attempts_warmup():
    from ablate.train.summary import median_tokens_per_s

    recs = [{"step": s, "tokens_per_s": v} for s, v in
            [(5, 1.0), (10, 100.0), (15, 100.0), (20, 100.0), (25, 2.0), (30, 110.0), (35, 110.0), (40, 110.0)]]
    assert median_tokens_per_s(recs, [0, 20]) == 105.0  # 5 (first, warm-up) and 25 (first after resume) dropped
    assert median_tokens_per_s(recs[:1], [0]) == 1.0  # too short for a steady state: what there is


def test_data_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ablate.data.corpora, ablate.data.tokenizer; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_summary_peaks_are_after_warmup_and_over_every_attempt(make_run, monkeypatch):
    """Peak memory in summary.json is the steady state: counters reset after warm-up, and a
    resumed attempt too short to warm up keeps the earlier attempt's figure instead of reporting
    its own start-up (loading the checkpoint)."""
    from ablate.train import devices
    from ablate.train import trainer as trainer_mod

    fake = {"peak": 900}  # start-up peak until the reset; each attempt's steady peak after it
    monkeypatch.setattr(devices, "peaks", lambda device: {"peak_alloc": fake["peak"], "peak_reserved": fake["peak"] * 2})
    monkeypatch.setattr(devices, "reset_peaks", lambda device: fake.update(peak=fake["steady"]))
    stop_at = {"step": 18}
    real_stop = trainer_mod.Trainer.stop_requested
    monkeypatch.setattr(trainer_mod.Trainer, "stop_requested",
                        lambda self: self.step == stop_at["step"] or real_stop(self))

    run_dir = make_run(max_iters=20, ckpt_interval=0)
    fake["steady"] = 300
    with pytest.raises(trainer_mod.Preempted):
        train(run_dir)  # attempt 1: warms up at step 5, stopped at 18 (a checkpoint)
    fake["peak"], fake["steady"], stop_at["step"] = 900, 111, -1
    assert train(run_dir) == "done"  # attempt 2: 2 steps left, never warms up, start-up peak 900
    s = rundir.read_json(run_dir / rundir.SUMMARY)
    assert (s["peak_alloc"], s["peak_reserved"]) == (300, 600)


def test_status_json_keeps_wall_time_over_attempts_and_the_checkpoint_step(make_run, monkeypatch):
    """What `ablate status` shows: wall time summed over attempts, the step a resume starts at."""
    from ablate.train import trainer as trainer_mod

    run_dir = make_run(max_iters=20, ckpt_interval=10)
    monkeypatch.setattr(trainer_mod.Trainer, "stop_requested", lambda self: self.step == 15)
    with pytest.raises(Preempted):
        train(run_dir)
    first = rundir.read_status(run_dir)
    assert first["ckpt_step"] == 15 and first["wall_s"] > 0
    monkeypatch.undo()
    assert train(run_dir) == "done"
    last = rundir.read_status(run_dir)
    summary = rundir.read_json(run_dir / rundir.SUMMARY)
    assert last["ckpt_step"] == 20 and last["wall_s"] >= summary["wall_s"] > first["wall_s"]
