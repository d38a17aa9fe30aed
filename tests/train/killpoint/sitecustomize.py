"""A kill -9 at a chosen point of a training process, for the resume tests: put this folder on
PYTHONPATH and set ABLATE_TEST_KILL to "save:RANK:STEP" (right after this rank has written
its shards of the checkpoint of STEP, before ckpt.pt commits it) or "step:RANK:STEP" (inside
optimizer step STEP: after its backward, before AdamW's update). Other ranks are left waiting
at their next collective, as when a node dies; the test kills them."""
import os

_spec = os.environ.get("ABLATE_TEST_KILL")
if _spec:
    _where, _rank, _step = _spec.split(":")
    if int(os.environ.get("RANK", "0")) == int(_rank):
        import signal

        import torch
        import torch.distributed.checkpoint as dcp  # what ablate.train.checkpoint saves the shards with

        def _die():
            os.kill(os.getpid(), signal.SIGKILL)

        if _where == "save":
            _save = dcp.save

            def _save_then_die(state, checkpoint_id):
                _save(state, checkpoint_id=checkpoint_id)
                if f"step{int(_step):09d}-" in str(checkpoint_id):
                    _die()

            dcp.save = _save_then_die
        else:
            _adamw_step, _calls = torch.optim.AdamW.step, []

            def _step_then_die(self, *args, **kwargs):
                _calls.append(1)
                if len(_calls) == int(_step):
                    _die()
                return _adamw_step(self, *args, **kwargs)

            torch.optim.AdamW.step = _step_then_die
