"""Device facts the trainer records or restores, checked without a GPU: the peak-FLOPs table
and the CUDA RNG state a checkpoint carries."""
import pytest
import torch

from ablate.train import checkpoint, devices


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu (x86_64, 2 threads, 2 cores)", None),
])
def test_peak_flops_match_the_most_specific_name(name, peak):
    assert devices.peak_flops(name) == peak


def test_cuda_rng_state_is_this_devices_only(monkeypatch):
    """A job requeued onto a node with fewer visible GPUs must restore, not IndexError."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every GPU's state"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: restored.append(s.tolist()))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    state = checkpoint.rng_state()
    assert state["cuda"].tolist() == [7]
    checkpoint.set_rng_state(state)
    legacy = {**state, "cuda": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]}
    checkpoint.set_rng_state(legacy)  # an older checkpoint (one state per GPU): this device's
    assert restored == [[7], [1]]
