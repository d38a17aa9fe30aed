"""The plan-time checks of a resolved RunConfig (config.resolve calls `validate`): every numeric
field's range, then the cross-field rules that need no torch (MODEL_SPEC 3-4). Each failure is
one line naming the key, the value and what is allowed. No import of config: it imports this."""
from __future__ import annotations

import math
from typing import Optional

from ablate.core.errors import AblateError, closest

INT_MAX = 2 ** 31 - 1
DATA_PREFIXES = ("text:", "shards:", "corpus:")  # the data sets named by their files (ablate/data/corpora.py)
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32 (numpy.finfo(numpy.float32).max)
# Every numeric field's allowed range, checked at plan time (lo, hi, whether lo itself is allowed);
# floats must also be finite. validate checks the fields named here; a test requires every numeric field.
RANGES = {
    **{name: (1, INT_MAX, True) for name in (
        "n_layer", "n_head", "n_embd", "n_kv_head", "share_attn", "window", "context", "vocab_size", "max_iters",
        "batch_size", "grad_accum", "lr_decay_iters", "eval_interval", "eval_iters", "log_interval",
        "loss_chunk")},
    "warmup_iters": (0, INT_MAX, True), "ckpt_interval": (0, INT_MAX, True),
    "seed": (0, 2 ** 32 - 1, True),  # numpy seeds are 32-bit
    # the optimizer's numbers meet float32 tensors: what float32 cannot hold is refused here, not
    # by every cell at its first step
    "lr": (0.0, FLOAT32_MAX, False), "min_lr": (0.0, FLOAT32_MAX, True), "weight_decay": (0.0, FLOAT32_MAX, True),
    "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True), "grad_clip": (0.0, FLOAT32_MAX, True),
    "diverge_loss": (0.0, math.inf, False),
}
_HALF_OPEN = {"beta1", "beta2"}  # [0, 1): AdamW's bias correction divides by 1 - beta**t
_IN_RANGE = {n: set() for n in RANGES}  # values already found in range, per field (types are checked before)


def range_problem(name: str, value) -> Optional[str]:
    """Why a numeric value is out of its field's range, or None."""
    if value is None or isinstance(value, (bool, str)):
        return None
    lo, hi, lo_ok = RANGES[name]
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if value < lo or (value == lo and not lo_ok):
        return f"{value} must be {'>=' if lo_ok else '>'} {lo}"
    if value > hi or (name in _HALF_OPEN and value >= hi):
        why = " (the largest float32: the value is used in float32 tensors)" if hi == FLOAT32_MAX else ""
        return f"{value} must be {'<' if name in _HALF_OPEN else '<='} {hi if isinstance(hi, int) else format(hi, '.8g')}{why}"
    return None


def validate(c, data_vocab: Optional[int] = None) -> None:
    """Ranges of every numeric field of c (a RunConfig), then cross-field rules that need no torch
    (MODEL_SPEC 3-4)."""
    def bad(msg):
        raise AblateError(msg)

    d = c.__dict__
    for name, seen in _IN_RANGE.items():  # RANGES names every numeric field (a test keeps it so)
        if d[name] not in seen:  # a grid repeats each value many times: check each once
            problem = range_problem(name, d[name])
            if problem:
                bad(f"key '{name}': {problem}")
            seen.add(d[name])
    if c.n_embd % c.n_head:
        bad(f"key 'n_embd': {c.n_embd} is not divisible by n_head={c.n_head}")
    if c.head_dim % 2:
        bad(f"key 'n_head': head_dim = n_embd/n_head = {c.head_dim} is odd; RoPE rotates pairs, so it must be even")
    if c.n_kv_head is not None and c.n_head % c.n_kv_head:
        bad(f"key 'n_kv_head': {c.n_kv_head} must divide n_head={c.n_head}")
    if c.share_attn is not None and c.n_layer % c.share_attn:
        bad(f"key 'share_attn': {c.share_attn} must divide n_layer={c.n_layer} (1 = one attention for all layers)")
    if c.min_lr > c.lr:
        bad(f"key 'min_lr': {c.min_lr} must be between 0 and lr={c.lr}")
    # AdamW's first step moves a weight by lr / (1 - beta1) and decays it by lr * weight_decay,
    # both in float32: past its range the step itself overflows (a result can be a divergence, not a crash)
    step, decay = c.lr / (1 - c.beta1) if c.beta1 < 1 else math.inf, c.lr * (c.weight_decay or 0.0)
    if max(step, decay) > FLOAT32_MAX:
        what = f"lr / (1 - beta1) = {step:.3g}" if step > FLOAT32_MAX else f"lr * weight_decay = {decay:.3g}"
        bad(f"key 'lr': {c.lr} overflows float32 in AdamW's update ({what}; float32 holds up to {FLOAT32_MAX:.3g})")
    if c.vocab_size is not None and data_vocab is not None and c.vocab_size < data_vocab:
        bad(f"key 'vocab_size': {c.vocab_size} is smaller than the data's vocabulary ({data_vocab})")
    if c.dataset not in ("shakespeare", "openwebtext") and not c.dataset.startswith(DATA_PREFIXES):
        bad(f"key 'dataset': {c.dataset!r} is not allowed, expected shakespeare, openwebtext, text:PATH, shards:PATH "
            f"or corpus:PATH{closest(c.dataset, ['shakespeare', 'openwebtext'])}")
    if c.attn_backend == "flash" and c.device == "cpu":
        bad("key 'attn_backend': flash needs CUDA, but device is cpu (use sdpa or auto)")
    if c.attn_backend == "flash" and c.dtype == "fp32":
        bad("key 'attn_backend': flash runs in bf16 only, but dtype is fp32 (set dtype: bf16, or use sdpa or auto)")
    if c.attn_backend == "flex" and c.device == "cpu":
        bad("key 'attn_backend': flex cannot train on cpu (torch has no CPU FlexAttention backward); use sdpa or auto")
    if c.param_dtype == "bf16" and c.dtype != "bf16":
        bad("key 'param_dtype': bf16 weights need dtype: bf16 (autocast); fp32 activations cannot meet bf16 weights")
    if c.param_dtype == "bf16" and c.device == "cpu":
        bad("key 'param_dtype': bf16 block matrices need CUDA, but device is cpu (use param_dtype: fp32)")
    if c.strategy == "fsdp" and c.param_dtype == "bf16":  # FSDP2 reduce-scatters one dtype per sharded group
        bad("key 'strategy': fsdp needs one dtype per block, but param_dtype: bf16 keeps bf16 matrices beside fp32 "
            "vectors (use param_dtype: fp32; dtype: bf16 still computes in bf16)")
    if not c.reshard_after_forward and c.strategy != "fsdp":
        bad(f"key 'reshard_after_forward': false applies to strategy: fsdp only (this cell's strategy is {c.strategy})")
