"""Deterministic random-offset batches: a batch is a pure function of its coordinates.

The training micro-batch of optimizer step `step`, micro index `micro` (0 .. grad_accum-1,
counted over all processes) is `batch_size` windows of context+1 tokens at offsets drawn from
a PRNG seeded with (seed, stream, step, micro). Nothing is carried between batches, so:
  - the data position in a checkpoint is just the step: a resumed run sees the same batches;
  - under DDP rank r takes micro indices [r*k, (r+1)*k) of the same global batch, so any world
    size computes the same step as a single process with the same grad_accum.
Eval windows are one fixed set per (data, split, context): window j's offset depends on j
alone, never on the training seed or the batch size, so every cell of a grid with the same
data and context is scored on the same tokens at every eval (cells evaluating more windows
see a superset), and seeds differ only by what they learned, not by what they were scored on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ablate.core.errors import AblateError

TRAIN, VAL, TRAIN_EVAL = 0, 1, 2  # PRNG streams
EVAL_CHUNK = 1024  # eval window offsets are drawn in chunks of this many: window j lives in chunk j // 1024


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

    def _windows(self, split: str, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.from_numpy(self.splits[split][offsets[:, None] + self._window].astype(np.int64))  # (B, T+1)
        x, y = buf[:, :-1], buf[:, 1:]
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.contiguous(), y.contiguous()

    def train(self, step: int, micro: int):
        """Micro-batch `micro` (global index) of optimizer step `step`."""
        rng = np.random.default_rng([self.seed, TRAIN, step, micro])
        return self._windows("train", rng.integers(0, len(self.splits["train"]) - self.T, size=self.B))

    def eval(self, split: str, i: int):
        """The i-th eval batch of split ('val', or 'train' for the train loss at evals): windows
        i*B .. (i+1)*B-1 of the split's fixed eval windows (no seed involved)."""
        return self._windows(split, eval_offsets(len(self.splits[split]), self.T, VAL if split == "val" else TRAIN_EVAL,
                                                 i * self.B, self.B))


def eval_offsets(n_tokens: int, context: int, stream: int, first: int, count: int) -> np.ndarray:
    """Offsets of eval windows first .. first+count-1 of a split of n_tokens tokens: a pure
    function of (split size, context, stream, window index), drawn chunk by chunk."""
    chunks = range(first // EVAL_CHUNK, (first + count - 1) // EVAL_CHUNK + 1)
    pool = np.concatenate([np.random.default_rng([stream, context, c]).integers(0, n_tokens - context, size=EVAL_CHUNK)
                           for c in chunks])
    start = first - chunks[0] * EVAL_CHUNK
    return pool[start:start + count]
