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

A split is one or many token files (nanoGPT's train.bin, llm.c's shards), each memory-mapped
and read as one sequence: the files in their order, end to end. Offsets are drawn over that
sequence exactly as over one file, so a split of one file gives the batches it always gave, and
a window that starts near the end of a file continues into the next (shards are streams of
documents, each opened by <|endoftext|>: a file boundary is one more document boundary).
"""
from __future__ import annotations

import bisect
import resource

import numpy as np
import torch

from ablate.core.errors import AblateError

TRAIN, VAL, TRAIN_EVAL = 0, 1, 2  # PRNG streams
EVAL_CHUNK = 1024  # eval window offsets are drawn in chunks of this many: window j lives in chunk j // 1024


def _allow_open_files(n: int) -> None:
    """A memory map keeps its file descriptor: 1,000 shards need more than a common soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


class Split:
    """The token files of one split read as one sequence of `len(split)` tokens."""

    def __init__(self, files: list):
        self.maps = [np.memmap(f.path, dtype=f.dtype, mode="r", offset=f.offset, shape=(f.tokens,)) for f in files]
        self.starts = [0]
        for m in self.maps:
            self.starts.append(self.starts[-1] + len(m))

    def __len__(self) -> int:
        return self.starts[-1]

    def windows(self, offsets: np.ndarray, length: int) -> np.ndarray:
        """(len(offsets), length) int64: the tokens at offset .. offset+length-1 of each."""
        out = np.empty((len(offsets), length), dtype=np.int64)
        for row, start in enumerate(offsets.tolist()):
            k = bisect.bisect_right(self.starts, start) - 1
            at, filled = start - self.starts[k], 0
            while filled < length:  # a window past a file's end continues in the next file
                piece = self.maps[k][at:at + length - filled]
                out[row, filled:filled + len(piece)] = piece
                filled, k, at = filled + len(piece), k + 1, 0
        return out


class Batches:
    def __init__(self, splits: dict, context: int, batch_size: int, seed: int, device: torch.device):
        """splits: {'train': [TokenFile...], 'val': [...]} (corpora.split_files)."""
        self.T, self.B, self.seed, self.device = context, batch_size, seed, device
        _allow_open_files(sum(len(fs) for fs in splits.values()))
        self.splits = {}
        for split in ("train", "val"):
            self.splits[split] = Split(splits[split])
            n = len(self.splits[split])
            if n < context + 2:
                where = splits[split][0].path if len(splits[split]) == 1 else f"{len(splits[split])} files"
                raise AblateError(f"{where} ({split}) has {n} tokens, fewer than context+2 = {context + 2}")

    def sizes(self) -> dict:
        return {split: len(s) for split, s in self.splits.items()}

    def _windows(self, split: str, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.from_numpy(self.splits[split].windows(offsets, self.T + 1))  # (B, T+1)
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
