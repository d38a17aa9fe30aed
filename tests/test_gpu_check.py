"""scripts/gpu-check.sh, the prepared GPU check: its CPU mode end to end (so the check cannot rot
while no GPU is around), its time caps, and its verdicts."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ablate.gpucheck import driver as gpu_check
from ablate.gpucheck.profiles import GPU, cells
from ablate.gpucheck.report import markdown, targets

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_mode_runs_every_stage_and_writes_the_table(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), str(out), "--cpu"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "gpu-check.json").read_text())
    assert {name: s["status"] for name, s in r["stages"].items()} == dict.fromkeys(gpu_check.STAGES, "ok"), r["stages"]
    assert r["env"]["torch"] and r["data"]["train_tokens"] > 0

    t = r["tests"]  # every CUDA test found, each in exactly one shard, all skipped here
    assert t["collected"] > 50 and t["skipped"] == t["collected"] and t["not_run"] == t["failed"] == t["errors"] == 0

    by_name = {c["name"]: c for c in r["cells"]}
    assert list(by_name) == list(gpu_check.PROFILES["cpu"]["cells"])
    for name, c in by_name.items():
        if name == "gpt-1k-flex-eager":  # no CPU flex backward: the cell fails, its error is kept, the rest ran
            assert c["status"] == "failed" and "flex cannot train on cpu" in c["error"]
            continue
        assert c["status"] == "ok", c
        assert c["ms_per_step"] > 0 and c["tokens_per_s"] == pytest.approx(c["tokens_per_step"] / c["ms_per_step"] * 1000)
        assert c["attn_kernel"].startswith("sdpa-") and c["loss_last"] > 0
        assert c["est_peak"] > 0 and c["peak_alloc"] is None  # no allocator counters on CPU
        # the background simulation reached every cell (a compiled cell: its eager step's shape)
        assert c["sim_device"] == "cpu" and c["sim_peak"] == sum(c["sim_breakdown"].values()) > 0
        assert c["sim_breakdown"]["params"] > 0 and c["sim_breakdown"]["activations"] > 0
    assert by_name["gpt-8k-swa-auto-compiled"]["attn_backend"] == "sdpa"  # on CPU a window stays with SDPA
    assert by_name["ngpt-1k-sdpa-compiled"]["ngpt_over_gpt"] > 0
    # the sharded path (FSDP2, world size 1) trains the same step as the plain one: the same first loss
    fsdp, plain = by_name["ngpt-1k-fsdp-sdpa-compiled"], by_name["ngpt-1k-sdpa-compiled"]
    assert fsdp["loss_first"] == pytest.approx(plain["loss_first"], abs=1e-5)

    assert [k["case"] for k in r["kernels"]] and all(k["named"] and k["ms"] > 0 for k in r["kernels"])
    assert all(k["seen"] == [k["named"]] for k in r["kernels"] if k["backend"] == "sdpa")

    resume = r["resume"]  # on CPU in fp32 a resumed run is the uninterrupted one, bit for bit
    assert resume["killed_at_step"] >= 30 and resume["resumed_from_step"] == 20
    assert resume["exit_codes"]["killed-1"] == -9
    assert resume["max_train_loss_diff_resumed"] == resume["max_val_loss_diff_resumed"] == 0.0
    assert resume["summary_attn_kernel"] == "sdpa-flash"  # CPU's fused SDPA kernel, named in summary.json

    md = (out / "gpu-check.md").read_text()
    assert md.count("\n| ") == len(r["cells"]) + 1 and "gpt-1k-flex-eager" in md and md in proc.stdout
    assert all(t["result"] == "n/a" for t in r["targets"] if t["metric"] != "ngpt_over_gpt")  # no MFU, memory on CPU
    assert "===== resume-killed-2: exit 0" in (out / "gpu-check.log").read_text()


FAKE_JOBS = """
import json, sys, time
job, spec, out = sys.argv[1:4]
if job == "kernels":  # one row done, then stuck on the next
    json.dump({"rows": [{"case": "first"}]}, open(out, "w"))
if job in ("env", "kernels"):
    time.sleep(60)  # a hung stage
json.dump({"torch": "fake"}, open(out, "w"))
"""


def test_a_stage_past_its_cap_is_killed_recorded_and_the_next_one_runs(tmp_path):
    (tmp_path / "jobs.py").write_text(textwrap.dedent(FAKE_JOBS))
    check = gpu_check.Check(tmp_path, "cpu", ("env", "data"), (), 30, tmp_path / "work")
    check.jobs = [sys.executable, str(tmp_path / "jobs.py")]
    check.p = {**check.p, "caps": {**check.p["caps"], "env": 6}}
    t0 = time.monotonic()
    check.main()
    r = json.loads((tmp_path / "gpu-check.json").read_text())
    assert r["stages"]["env"]["status"] == "timeout" and "killed at its time cap" in r["stages"]["env"]["error"]
    assert r["stages"]["data"]["status"] == "ok" and r["data"] == {"torch": "fake"}
    assert r["stages"]["bench"] == {"cap_s": check.p["caps"]["bench"], "status": "skipped", "note": "not selected (--only)"}
    assert time.monotonic() - t0 < 20  # the hung job did not hold the check for its 60 s
    assert "env: killed at its time cap" in (tmp_path / "gpu-check.log").read_text()


def test_a_job_stopped_at_its_cap_keeps_what_it_had_written(tmp_path):
    (tmp_path / "jobs.py").write_text(textwrap.dedent(FAKE_JOBS))
    check = gpu_check.Check(tmp_path, "cpu", ("kernels",), (), 30, tmp_path / "work")
    check.jobs = [sys.executable, str(tmp_path / "jobs.py")]
    check.p = {**check.p, "caps": {**check.p["caps"], "kernels": 5}}
    check.main()
    r = json.loads((tmp_path / "gpu-check.json").read_text())
    assert r["stages"]["kernels"]["status"] == "timeout" and r["kernels"] == [{"case": "first"}]


def test_warm_compiles_the_compiled_cells_while_the_tests_run_and_stops_with_them(tmp_path):
    (tmp_path / "jobs.py").write_text(textwrap.dedent(FAKE_JOBS.replace('("env", "kernels")', '("cell", "kernels")')))
    check = gpu_check.Check(tmp_path, "gpu", ("bench",), (), 60, tmp_path / "work")
    check.jobs = [sys.executable, str(tmp_path / "jobs.py")]
    thread = threading.Thread(target=check.warm)
    thread.start()
    while not isinstance(check.warm_proc, subprocess.Popen):  # the first cell's compile has started
        time.sleep(0.05)
    warming = check.warm_proc
    check.stop_warm(thread)  # the tests are done
    assert warming.returncode == -9 and not thread.is_alive()
    specs = sorted((tmp_path / "work" / "jobs").glob("warm-*.spec.json"))
    assert [p.name for p in specs] == ["warm-gpt-1k-sdpa-compiled.spec.json"]  # in bench order; then it stopped
    spec = json.loads(specs[0].read_text())
    assert spec["steps"] == 0 and spec["warmup"] == 1 and spec["config"]["compile"] is True


def test_later_stages_keep_their_reserve_and_an_exhausted_budget_skips(tmp_path):
    (tmp_path / "jobs.py").write_text(textwrap.dedent(FAKE_JOBS))
    check = gpu_check.Check(tmp_path, "cpu", ("env", "resume"), (), 9, tmp_path / "work")
    check.jobs = [sys.executable, str(tmp_path / "jobs.py")]
    check.p = {**check.p, "caps": dict.fromkeys(gpu_check.STAGES, 100), "reserve": {"resume": 3}}
    check.main()
    stages = json.loads((tmp_path / "gpu-check.json").read_text())["stages"]
    assert stages["env"]["timeout_s"] == 9 - 3 and stages["env"]["status"] == "timeout"  # resume's 3 s kept back
    assert stages["resume"]["status"] == "skipped" and "no time left" in stages["resume"]["note"]  # 3 s < 5


def test_the_gpu_profile_has_every_cell_the_issue_lists():
    names = [c["name"] for c in cells(GPU)]
    for arch in ("gpt", "ngpt"):
        for ctx in ("1k", "8k"):
            for backend in ("sdpa", "flex"):
                for mode in ("eager", "compiled"):
                    assert f"{arch}-{ctx}-{backend}-{mode}" in names
    assert len(names) == len(set(names)) == 21
    by_name = {c["name"]: c["config"] for c in cells(GPU)}
    assert by_name["gpt-8k-swa-auto-compiled"]["window"] == 1024 and by_name["gpt-8k-swa-auto-compiled"]["context"] == 8192
    assert by_name["gpt-1k-gqa-sdpa-compiled"]["n_kv_head"] == 4
    assert by_name["gpt-1k-tied-sdpa-compiled"]["tie_embeddings"] is True
    assert [n for n, c in by_name.items() if c.get("strategy") == "fsdp"] == ["gpt-1k-fsdp-sdpa-compiled",
                                                                             "ngpt-1k-fsdp-sdpa-compiled"]
    assert all(c["n_layer"] == 12 and c["n_embd"] == 768 and c["vocab_size"] == 50304 and c["dtype"] == "bf16"
               for c in by_name.values())
    assert names[:4] == ["gpt-1k-sdpa-compiled", "ngpt-1k-sdpa-compiled", "gpt-8k-sdpa-compiled", "ngpt-8k-sdpa-compiled"]
    from ablate.core.config import make_config, resolve  # every config the GPU will get is valid (keys, values)
    for config in [*by_name.values(), {"dataset": GPU["dataset"], "tokenizer": GPU["tokenizer"], **GPU["resume"]["config"]}]:
        assert resolve(make_config(config), 50257).vocab_size == 50304


def _cell(name, arch, ctx, compiled=True, tag=None, **measured):
    return {"name": name, "arch": arch, "ctx": ctx, "tag": tag, "backend": "sdpa", "compiled": compiled,
            "context": 1024, "batch_size": 16, "status": "ok", **measured}


def test_targets_pass_miss_or_say_nothing_measured_them():
    cells_ = [_cell("g1", "gpt", "1k", mfu_causal=0.52, ms_per_step=100.0, peak_alloc=105, est_peak=100),
              _cell("n1", "ngpt", "1k", mfu_causal=0.45, ms_per_step=110.0, peak_alloc=80, est_peak=100),
              _cell("g1e", "gpt", "1k", compiled=False, mfu_causal=0.2, ms_per_step=300.0),
              _cell("n1e", "ngpt", "1k", compiled=False, ms_per_step=303.0),
              _cell("gq", "gpt", "1k", tag="gqa", mfu_causal=0.1)]
    got = {(t["target"][:12], t.get("cell")): t["result"] for t in targets(cells_)}
    assert got == {("GPT MFU (cau", "g1"): "pass",  # the GQA cell is not the baseline the target is about
                   ("causal MFU >", None): "n/a",  # no 8k cell
                   ("nGPT / GPT s", "n1"): "miss",  # 1.10 > 1.08; the eager pair (1.01) is not the target
                   ("measured pea", "g1"): "pass", ("measured pea", "n1"): "miss"}
    assert cells_[3]["ngpt_over_gpt"] == pytest.approx(1.01) and cells_[1]["ngpt_over_gpt"] == pytest.approx(1.1)


def test_the_markdown_is_one_table_and_survives_a_bare_result():
    r = {"profile": "gpu", "budget_s": 480, "started": "now", "git_sha": "abc", "env": {}, "stages": {},
         "cells": [_cell("g|1", "gpt", "1k", status="failed", error="boom\nsecond line")], "targets": []}
    md = markdown(r)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 3 and rows[2].count(" | ") == rows[0].count(" | ")  # the | in a name is escaped
    assert "failed: boom second line" in rows[2]
