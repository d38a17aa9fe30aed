"""The one resource table, local slots, signal timing, cluster limits and the pinned sbatch script."""
import os
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.launch import resources as res
from ablate.launch.slurm import chunks, group_by_resources, sbatch_script
from ablate.core.config import Resources
from launch_helpers import fake_slurm  # noqa: F401  (fixture: submitit wants srun on PATH)

GOLDEN = Path(__file__).parent / "golden"


def test_every_resource_field_has_one_row_in_the_table():
    import dataclasses

    assert [f.name for f in dataclasses.fields(Resources)] == list(res.TABLE)


def test_slurm_parameters_translate_generic_names_and_leave_defaults_out():
    r = Resources(gpus=4, cpus=8, mem_gb=64, time_min=720, partition="gpu", account="lab", qos="high",
                  constraint="a100", max_requeue=5)
    params, ctor = res.slurm_parameters(r, "grid1", array_parallelism=16)
    assert ctor == {"max_num_timeout": 5}
    assert params == {"gpus_per_node": 4, "ntasks_per_node": 4, "nodes": 1, "cpus_per_task": 8, "mem": "65536M",
                      "time": 720, "partition": "gpu", "account": "lab", "qos": "high", "constraint": "a100",
                      "signal_delay_s": 90, "job_name": "ablate-grid1", "array_parallelism": 16,
                      "additional_parameters": {"hold": True}}
    params, ctor = res.slurm_parameters(Resources(), "g")
    assert set(params) == {"nodes", "time", "signal_delay_s", "job_name", "additional_parameters"}
    assert ctor == {"max_num_timeout": 3}
    assert res.slurm_parameters(Resources(max_requeue=0), "g")[1] == {"max_num_timeout": 0}


def test_submitit_accepts_every_translated_parameter(tmp_path, fake_slurm):
    import submitit

    params, ctor = res.slurm_parameters(Resources(gpus=2, cpus=4, mem_gb=1.5, partition="p", qos="q"), "g", 3)
    ex = submitit.SlurmExecutor(folder=str(tmp_path), **ctor)
    ex.update_parameters(**params)  # raises on an unknown name


@pytest.mark.parametrize("time_min, delay", [(1, 10), (2, 20), (5, 50), (9, 90), (60, 90), (2880, 90)])
def test_signal_delay_leaves_room_for_slurms_30s_early_check(time_min, delay):
    assert res.signal_delay_s(time_min) == delay
    assert delay + 30 < time_min * 60  # never signalled at the start of the job


def test_sbatch_script_golden(tmp_path):
    """The script a 3-cell array of a GPU grid gets; regenerate with ABLATE_UPDATE_GOLDEN=1."""
    r = Resources(gpus=1, cpus=4, mem_gb=16, time_min=90, partition="gpu", account="lab", max_requeue=2)
    text = sbatch_script("golden", r, "/runs/golden/.submitit/STAMP/array0", array_size=3, array_parallelism=2)
    path = GOLDEN / "sbatch_gpu_array.sh"
    if os.environ.get("ABLATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert "#SBATCH --array=0-2%2" in text and "#SBATCH --hold" in text and "#SBATCH --signal=USR2@90" in text


def test_group_by_resources_and_split_at_max_array_size():
    class C:
        def __init__(self, i, r):
            self.i, self.r = i, r

    a, b = Resources(gpus=1), Resources(gpus=2)
    cells = [C(i, a if i % 3 else b) for i in range(10)]
    groups = group_by_resources(cells, lambda c: c.r)
    assert [(r.gpus, [c.i for c in cs]) for r, cs in groups] == [(2, [0, 3, 6, 9]), (1, [1, 2, 4, 5, 7, 8])]
    assert [len(p) for p in chunks(list(range(2500)), 1001)] == [1001, 1001, 498]


def test_max_array_size_from_scontrol(monkeypatch):
    monkeypatch.setattr(res, "slurm_config", lambda: {"MaxArraySize": "40"})
    assert res.max_array_size() == 40
    monkeypatch.setattr(res, "slurm_config", lambda: {})
    assert res.max_array_size() == 1001


def test_cpu_slots_divide_the_cores(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(res, "visible_gpus", lambda: [])
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert res.local_slots(Resources(), jobs=None) == [res.Slot((), 8)]
    assert res.local_slots(Resources(), jobs=4) == [res.Slot((), 2)] * 4
    assert res.local_slots(Resources(), jobs=16) == [res.Slot((), 1)] * 16
    warnings = []
    assert res.local_slots(Resources(gpus=1), jobs=2, warn=warnings.append) == [res.Slot((), 4)] * 2
    assert "no GPU is visible" in warnings[0]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting caps each job's share
    assert res.local_slots(Resources(), jobs=2) == [res.Slot((), 3)] * 2


def test_gpu_slots_one_job_per_gpu_group(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(res, "visible_gpus", lambda: [0, 1, 2, 3])
    assert res.local_slots(Resources(gpus=1)) == [res.Slot((g,), 4) for g in range(4)]
    assert res.local_slots(Resources(gpus=2)) == [res.Slot((0, 1), 8), res.Slot((2, 3), 8)]
    assert res.local_slots(Resources(gpus=1), gpus=[2, 3]) == [res.Slot((2,), 8), res.Slot((3,), 8)]
    assert res.local_slots(Resources(gpus=1), jobs=1) == [res.Slot((0,), 16)]
    with pytest.raises(AblateError, match="needs 2 GPUs .* only 1"):
        res.local_slots(Resources(gpus=2), gpus=[3])
    assert res.parse_gpus("0,1, 3") == [0, 1, 3] and res.parse_gpus("all") is None
    with pytest.raises(AblateError, match="--gpus"):
        res.parse_gpus("first")


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert res.visible_gpus() == [0, 1]  # renumbered from 0, as CUDA does
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert res.visible_gpus() == []


def _fake_bin(tmp_path, monkeypatch, name, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("gres, gpus, message", [
    ("(null)\n", 1, "no node of partition gpu has GPUs"),
    ("gpu:2\n(null)\n", 4, "at most 2 GPUs"),
    ("gpu:a100:8(S:0-1)\n", 4, None),
    ("gpu:2\n", 1, None),
])
def test_gpus_checked_against_sinfo_before_sbatch(tmp_path, monkeypatch, gres, gpus, message):
    _fake_bin(tmp_path, monkeypatch, "sinfo", f"printf '{gres}'\n")
    if message is None:
        res.check_gpus_available(Resources(gpus=gpus, partition="gpu"))
    else:
        with pytest.raises(AblateError, match=message) as e:
            res.check_gpus_available(Resources(gpus=gpus, partition="gpu"))
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("gpus, tasks", [(0, 1), (1, 1), (4, 4)])
def test_several_nodes_run_one_task_per_gpu_or_one_per_node_on_cpu(gpus, tasks):
    """nodes x tasks_per_node ranks, set in the script (never left to a site's default task count)."""
    params, _ = res.slurm_parameters(Resources(nodes=2, gpus=gpus), "g")
    assert (params["nodes"], params["ntasks_per_node"], params.get("gpus_per_node")) == (2, tasks, gpus or None)


def test_sbatch_script_golden_two_nodes(tmp_path):
    """The script of a 2-node x 2-GPU cell: four tasks, srun starts them all (one per GPU per node)."""
    r = Resources(gpus=2, nodes=2, cpus=4, time_min=90, partition="gpu", max_requeue=2)
    text = sbatch_script("golden", r, "/runs/golden/.submitit/STAMP/array0", array_size=1)
    path = GOLDEN / "sbatch_two_nodes.sh"
    if os.environ.get("ABLATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --gpus-per-node=2" in text


@pytest.mark.parametrize("name", ["local", "debug"])
def test_local_executors_refuse_several_nodes(name):
    from types import SimpleNamespace

    from ablate.launch.executors import executor_class

    grid = SimpleNamespace(resources=Resources(nodes=2, gpus=1), name="g")
    with pytest.raises(AblateError, match=f"resources.nodes is 2, but --executor {name} runs each cell on this one "
                                          "machine; use --executor slurm") as e:
        executor_class(name).for_submit(grid)
    assert "\n" not in str(e.value)
