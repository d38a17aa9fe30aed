"""Deterministic random-offset batches: a batch is a pure function of its coordinates.

The training micro-batch of optimizer step `step`, micro index `micro` (0 .. grad_accum-1,
counted over all processes) is `batch_size` windows of context+1 tokens at offsets drawn from
a PRNG seeded with (seed, stream, step, micro). Nothing is carried between batches, so:
  - the data position in a checkpoint is just the step: a resumed run sees the same batches;
  - under DDP rank r takes micro indices [r*k, (r+1)*k) of the same global batch, so any world
    size computes the same step as a single process with the same grad_accum.
Eval batches come from their own streams and are the same at every eval.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ablate.errors import AblateError

TRAIN, VAL, TRAIN_EVAL = 0, 1, 2  # PRNG streams


class Batches:
    def __init__(self, data_dir: Path, context: int, batch_size: int, seed: int, device: torch.device):
        self.T, self.B, self.seed, self.device = context, batch_size, seed, device
        self.splits = {}
        for split in ("train", "val"):
            arr = np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.uint16, mode="r")
            if len(arr) < context + 2:
                raise AblateError(f"{data_dir}/{split}.bin has {len(arr)} tokens, fewer than context+2 = {context + 2}")
            self.splits[split] = arr
        self._window = np.arange(context + 1)

    def _get(self, split: str, stream: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.splits[split]
        rng = np.random.default_rng([self.seed, stream, a, b])
        offsets = rng.integers(0, len(data) - self.T, size=self.B)
        buf = torch.from_numpy(data[offsets[:, None] + self._window].astype(np.int64))  # (B, T+1)
        x, y = buf[:, :-1], buf[:, 1:]
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.contiguous(), y.contiguous()

    def train(self, step: int, micro: int):
        """Micro-batch `micro` (global index) of optimizer step `step`."""
        return self._get("train", TRAIN, step, micro)

    def eval(self, split: str, i: int):
        """The i-th fixed eval batch of split ('val', or 'train' for the train loss at evals)."""
        return self._get(split, VAL if split == "val" else TRAIN_EVAL, i, 0)
