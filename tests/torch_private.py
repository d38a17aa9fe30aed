"""The tests' shim for private torch APIs: dynamo's graph counter, the fake process group.

torch has no public way to ask how many graphs torch.compile has built. The compile test needs
that count to tell a compiled run from an eager one, so it reads dynamo's own statistics here,
guarded: a torch that moves them fails this module's check with a message, not a KeyError deep
in a test (and tests/train/test_train_compile.py is the test that exercises it).
"""
from __future__ import annotations

import contextlib

import pytest


def compiled_graphs() -> int:
    """How many distinct graphs dynamo has compiled in this process since the last reset."""
    try:
        from torch._dynamo.utils import counters  # private: this shim exists to hold it
    except ImportError as e:
        pytest.fail(f"torch moved dynamo's counters ({e}): update tests/torch_private.py")
    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A process group of `world_size` ranks in this one process whose collectives move no data
    (torch's "fake" backend, as torchtitan's memory estimator uses it): for counting the
    collectives a sharded computation issues. Destroyed on exit."""
    import torch.distributed as dist

    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore  # private: this shim exists to hold it
    except ImportError as e:
        pytest.fail(f"torch moved its fake process group ({e}): update tests/torch_private.py")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
