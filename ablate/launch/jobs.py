"""The one thing every job runs: `train(run_dir)`, wrapped so submitit can requeue it.

The callable holds only the run directory: on requeue submitit pickles it again and the
trainer resumes from the run dir's latest checkpoint, never from state baked into the pickle.
"""
from __future__ import annotations

import submitit


class CellJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self):
        from ablate.train.trainer import train  # torch is imported on the compute node only

        return train(self.run_dir)

    def checkpoint(self, *args, **kwargs):
        # The trainer saves ckpt.pt from its own signal handler; requeue the same run dir.
        return submitit.helpers.DelayedSubmission(CellJob(self.run_dir))
