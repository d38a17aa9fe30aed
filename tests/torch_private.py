"""The tests' one shim for a private torch API: dynamo's graph counter.

torch has no public way to ask how many graphs torch.compile has built. The compile test needs
that count to tell a compiled run from an eager one, so it reads dynamo's own statistics here,
guarded: a torch that moves them fails this module's check with a message, not a KeyError deep
in a test (and tests/train/test_train_compile.py is the test that exercises it).
"""
from __future__ import annotations

import pytest


def compiled_graphs() -> int:
    """How many distinct graphs dynamo has compiled in this process since the last reset."""
    try:
        from torch._dynamo.utils import counters  # private: this shim exists to hold it
    except ImportError as e:
        pytest.fail(f"torch moved dynamo's counters ({e}): update tests/torch_private.py")
    return int(counters["stats"]["unique_graphs"])
