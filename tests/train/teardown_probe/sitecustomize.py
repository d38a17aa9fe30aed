"""For the teardown test of test_train_ddp.py: put this folder on PYTHONPATH and set
ABLATE_TEST_PROBE to a path prefix. When the process group is destroyed, each rank writes how many
DistributedDataParallel modules are still alive (after a gc pass) to <prefix>.rank<R>.ddp_alive:
what must be 0 (see distributed.teardown). The hang itself is a race, rare on an idle machine; this
counts its precondition on every run."""
import os

_prefix = os.environ.get("ABLATE_TEST_PROBE")
if _prefix:
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    _destroy = dist.destroy_process_group

    def _count_then_destroy(*args, **kwargs):
        gc.collect()
        alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        with open(f"{_prefix}.rank{os.environ.get('RANK', '0')}.ddp_alive", "w") as f:
            f.write(str(alive))
        return _destroy(*args, **kwargs)

    dist.destroy_process_group = _count_then_destroy
