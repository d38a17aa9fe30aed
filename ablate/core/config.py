"""RunConfig: one flat, typed, frozen description of a grid cell.

Every knob that changes what a run computes is a field here and is hashed into the run_id;
fields that only change cadence or bookkeeping opt out with `meta(..., hashed=False)`
(levanter's rule: hash by default, opt out explicitly, so stale results are never reused).
Fields left as None are resolved from the others (arch defaults, data vocab) by `resolve`,
which always happens before hashing: an explicit value equal to the default hashes the same.
A field added after runs existed (`meta(..., added=True)`) is left out of the hash while it
holds its default, so adding it kept every earlier run id (data_id: only text:PATH data sets
have one; the memory knobs: only cells that use them).

Plugin keys (ablate/plan/plugins.py loads them): a cell of a grid that names plugins also carries each plugin
key as an attribute of the same name (`cfg.qk_norm`), beside the fields, and the plugins'
declarations in its `plugins` field, so that its dict (config.json) describes itself. A plugin
key enters the run id only when it is not at its default, together with the content id of its
plugin (plugin_keys.py): a cell that leaves a plugin's keys alone keeps its built-in run id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Literal, Optional

from ablate.core import plugin_keys
from ablate.core.errors import AblateError, closest, type_name
from ablate.core.validate import validate

ARCHS = ("gpt", "ngpt")  # the built-in architectures: every other place takes their names from here
ARCH_DEFAULTS = dict(zip(ARCHS, (
    # NVIDIA launcher.sh recipe: GPT gets weight decay and warmup; nGPT neither.
    {"weight_decay": 0.1, "warmup_frac": 0.2},
    {"weight_decay": 0.0, "warmup_frac": 0.0},
)))
# swept inside a variant, never comparison groups: the lr sweep (min_lr goes with it; a variant
# stands at its best lr) and the budget axis (budgets in one group give budget-mode speedup)
SWEPT = ("lr", "min_lr", "max_iters")


def meta(default, doc: str, hashed: bool = True, added: bool = False):
    """added=True: a field that came after runs existed. It is hashed only when it differs from
    its default, so adding a knob does not rename the runs (and cells) that never used it."""
    return field(default=default, metadata={"doc": doc, "hashed": hashed, "added": added})


@dataclass(frozen=True, eq=False)  # __eq__ below: plugin keys are attributes, not fields
class RunConfig:
    # ---- architecture
    arch: Literal[ARCHS] = meta("gpt", "baseline GPT (RMSNorm, pre-norm) or nGPT (hypersphere)")
    n_layer: int = meta(4, "number of transformer blocks")
    n_head: int = meta(4, "query heads per layer")
    n_embd: int = meta(128, "model width d")
    n_kv_head: Optional[int] = meta(None, "key/value heads (GQA); must divide n_head; null = n_head")
    tie_embeddings: bool = meta(False, "lm_head.weight is wte.weight")
    share_attn: Optional[int] = meta(None, "ALBERT sharing: attention weight groups, divides n_layer; null = n_layer (no sharing)")
    window: Optional[int] = meta(None, "sliding window: keys seen including self; null = full causal")
    context: int = meta(256, "sequence length T")
    vocab_size: Optional[int] = meta(None, "vocabulary size; null = the data set's, padded to a multiple of 64")
    attn_backend: Literal["auto", "sdpa", "flex", "flash"] = meta("auto", "attention kernel; auto = flash on CUDA if installed, else flex for a sliding window on CUDA, else sdpa")
    # ---- data
    dataset: str = meta("shakespeare", "shakespeare | openwebtext | text:PATH (a UTF-8 file) | shards:... "
                        "(token files) | corpus:... (documents); see ablate/data/sources.py")
    data_id: Optional[str] = meta(None, "content id of a text:, shards: or corpus: data set (derived when the grid "
                                  "is read, never written in a grid): the run id follows the data", added=True)
    tokenizer: Literal["gpt2", "char"] = meta("char", "GPT-2 BPE (tiktoken) or character-level")
    # ---- optimization
    max_iters: int = meta(1000, "optimizer steps (the training budget)")
    batch_size: int = meta(16, "sequences per micro-batch (per process)")
    grad_accum: int = meta(1, "micro-batches per step, summed over all processes")
    lr: float = meta(3e-3, "peak learning rate")
    min_lr: float = meta(0.0, "final learning rate of the cosine decay")
    warmup_iters: Optional[int] = meta(None, "linear warmup steps; null = arch default (GPT 20% capped at 2000, nGPT 0)")
    lr_decay_iters: Optional[int] = meta(None, "cosine decay length; null = max_iters")
    weight_decay: Optional[float] = meta(None, "AdamW decay on matrices; null = arch default (GPT 0.1, nGPT 0)")
    beta1: float = meta(0.9, "AdamW beta1")
    beta2: float = meta(0.95, "AdamW beta2")
    grad_clip: float = meta(1.0, "max global grad norm; 0 = off")
    seed: int = meta(0, "seed for init and batch sampling")
    # ---- numerics
    dtype: Literal["fp32", "bf16"] = meta("fp32", "compute dtype (bf16 = autocast)")
    param_dtype: Literal["fp32", "bf16"] = meta("fp32", "storage of block matrices (bf16 = NVIDIA reference, CUDA only)")
    compile: bool = meta(False, "torch.compile the model")
    # ---- memory knobs: they change peak memory and speed, never the loss or the gradients
    act_ckpt: Literal["none", "blocks", "selective"] = meta(
        "none", "activation checkpointing per block: none | blocks (recompute each block in backward) | "
        "selective (keep matmul and attention outputs, recompute the element-wise ops)", added=True)
    loss_chunk: Optional[int] = meta(
        None, "tokens per chunk of the fused LM head + cross-entropy (the B*T*V logits never exist); "
        "null = plain", added=True)
    # ---- data parallelism over a job's processes (resources gpus x nodes): memory per rank, never the math
    strategy: Literal["ddp", "fsdp"] = meta(
        "ddp", "ddp: every rank holds the whole model and AdamW state | fsdp: FSDP2 shards parameters, gradients "
        "and AdamW state over the ranks (all-gathers each block as it runs)", added=True)
    reshard_after_forward: bool = meta(
        True, "fsdp: free each block's gathered weights after its forward (gather again in backward); false "
        "keeps them to the backward: less communication, more memory", added=True)
    # ---- plugins
    plugins: tuple = meta((), "declarations of the grid's plugins (derived from the grid's `plugins:` list, "
                          "never written as a key): name, source, content_id, keys", added=True)
    device: Literal["auto", "cpu", "cuda"] = meta("auto", "auto = cuda when available", hashed=False)
    diverge_loss: float = meta(20.0, "stop as diverged when train loss is NaN/inf or above this")
    # ---- cadence (does not change what is learned: not hashed)
    eval_interval: int = meta(100, "steps between evals (the last step always evals)", hashed=False)
    eval_iters: int = meta(20, "val batches per eval")
    log_interval: int = meta(10, "steps between metrics.jsonl lines", hashed=False)
    ckpt_interval: int = meta(500, "steps between checkpoints (0 = only on signals and at the end)", hashed=False)
    keep_ckpt: bool = meta(False, "keep ckpt.pt (the weights and AdamW's state) once the run is done; by default a "
                                  "finished run keeps model.pt and its logs", hashed=False)

    def __post_init__(self):
        for name, default in _DEFAULTS:  # defaults are valid by construction: check the rest
            value = getattr(self, name)
            if value is not default and (type(value) is not type(default) or value != default):
                _check_type(FIELDS[name], value)
        if self.plugins:  # built from the fields alone (dataclasses.replace does that): no plugin key came with them
            keys = list(plugin_keys.declared_keys(self.__dict__))
            raise TypeError(f"a RunConfig whose plugins declare keys ({', '.join(keys)}) is made by make_config and "
                            "copied by cfg.replace(...): dataclasses.replace would drop those keys")

    def replace(self, **changes) -> "RunConfig":
        """A copy with `changes`, checked as make_config checks a grid's values, plugin keys kept."""
        return make_config({**self.__dict__, **changes})

    # ---- derived
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def attn_groups(self) -> int:
        return self.share_attn or self.n_layer

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.context

    def __eq__(self, other) -> bool:
        return type(other) is RunConfig and self.__dict__ == other.__dict__

    __hash__ = None  # `plugins` holds dicts

    def to_dict(self) -> dict:
        return dict(self.__dict__)  # the fields in declaration order, then the plugin keys

    def hashed_dict(self) -> dict:
        return identity(self.__dict__)

    def run_id(self) -> str:
        """Short hash of the canonical JSON (sorted keys, no spaces) of every field that changes results."""
        blob = json.dumps(self.hashed_dict(), separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


FIELDS = {f.name: f for f in fields(RunConfig)}
FIELD_TYPES = typing.get_type_hints(RunConfig)  # name -> type hint


def _allowed(name: str) -> str:
    hint = FIELD_TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if args and typing.get_origin(args[0]) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(args[0])))
    names = [getattr(a, "__name__", str(a)) for a in (args or [hint])]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(hint) else "")


def _checker(name: str):
    """A fast (value -> ok) predicate for one field, built once from its type hint."""
    hint = FIELD_TYPES[name]
    optional = type(None) in typing.get_args(hint)
    base = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
    if typing.get_origin(base) is Literal:
        choices = set(typing.get_args(base))
        ok = lambda v: isinstance(v, (str, int, float)) and v in choices  # a list or mapping is no choice (nor hashable)
    elif base is bool:
        ok = lambda v: v is True or v is False
    elif base is int:
        ok = lambda v: type(v) is int
    elif base is float:
        ok = lambda v: type(v) in (int, float)
    elif base is tuple:
        ok = lambda v: type(v) is tuple
    else:
        ok = lambda v: type(v) is str
    return optional, ok


_CHECKERS = {name: _checker(name) for name in FIELDS}
FIELD_NAMES = tuple(FIELDS)
HASHED_NAMES = tuple(sorted(n for n, f in FIELDS.items() if f.metadata.get("hashed", True)))
DERIVED = ("data_id", "plugins")  # fields a grid may not set: they are computed from other things
_DEFAULTS = tuple((n, f.default) for n, f in FIELDS.items())
MEMORY_KNOBS = ("act_ckpt", "loss_chunk", "strategy", "reshard_after_forward")  # change memory and speed, never the math
# fields hashed only when set (meta added=True) -> their default
ADDED_DEFAULTS = {n: f.default for n, f in FIELDS.items() if f.metadata.get("added")}


def identity(config: dict, names=HASHED_NAMES) -> dict:
    """The part of a config dict that names a run (names sorted): every hashed field, but an
    added field only when it is set to something other than its default (a missing one is unset),
    and the plugin keys a cell sets with the content ids of their plugins (plugin_keys.identity)."""
    out = {n: config.get(n) for n in names if n != "plugins"
           and (n not in ADDED_DEFAULTS or config.get(n, ADDED_DEFAULTS[n]) != ADDED_DEFAULTS[n])}
    extra = plugin_keys.identity(config) if config.get("plugins") else None
    return dict(sorted({**out, **extra}.items())) if extra else out


_FLOAT_FIELDS = {n for n in FIELDS if FIELD_TYPES[n] in (float, Optional[float])}
_DEFAULT_CONFIG = RunConfig()


def _check_type(f, value) -> None:
    optional, ok = _CHECKERS[f.name]
    if value is None:
        if optional:
            return
        raise AblateError(f"key '{f.name}': null is not allowed, expected {_allowed(f.name)}")
    if ok(value):
        return
    if typing.get_origin(FIELD_TYPES[f.name]) is Literal or "Literal" in str(FIELD_TYPES[f.name]):
        raise AblateError(f"key '{f.name}': {value!r} is not allowed, expected {_allowed(f.name)}")
    raise AblateError(f"key '{f.name}': {value!r} has type {type_name(value)}, expected {_allowed(f.name)}")


_CHECKED: set = set()  # (key, type, value) already type-checked: a grid repeats each axis value many times


def make_config(values: dict) -> RunConfig:
    """RunConfig from a plain dict: unknown keys name the closest valid one; ints become floats where needed.
    Checks only the given keys (defaults are valid) and skips dataclass __init__: a 10,000-cell
    plan makes 10,000 of these. Keys declared by `plugins` (a grid's plugins, or config.json's
    record of them) are checked against their declaration: type, choices, range."""
    clean, declared = {}, {}
    if values.get("plugins"):
        clean["plugins"] = plugin_keys.declarations(values["plugins"])
        declared = plugin_keys.declared_keys(clean)
        clash = [k for k in declared if k in FIELDS]
        if clash:
            raise AblateError(f"key 'plugins': declares the built-in key '{clash[0]}' as a plugin key")
    for key, value in values.items():
        if key == "plugins":
            continue
        if key in declared:
            value = plugin_keys.coerce(declared[key], value)
            problem = plugin_keys.value_problem(declared[key], value)
            if problem:
                raise AblateError(f"key '{key}': {problem}")
            clean[key] = value
            continue
        if key not in FIELDS:
            raise AblateError(f"unknown key '{key}'{closest(key, [*FIELDS, *declared])}")
        if key in _FLOAT_FIELDS and type(value) is int:
            value = float(value)
        if key in _FLOAT_FIELDS and type(value) is str:
            try:  # YAML 1.1 reads 3e-3 as a string; accept plain numeric strings
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (list, dict, set)):  # one value per key: a list or mapping is a type error, never a cache key
            _check_type(FIELDS[key], value)
        seen = (key, type(value), value)
        if seen not in _CHECKED:
            _check_type(FIELDS[key], value)
            _CHECKED.add(seen)
        clean[key] = value
    missing = [k for k in declared if k not in clean]  # a plugin key left out: its default
    clean.update({k: declared[k]["default"] for k in missing})
    return derive(_DEFAULT_CONFIG, **clean)


def pad_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def resolve(cfg: RunConfig, data_vocab: Optional[int] = None) -> RunConfig:
    """Fill the None fields from the others, then check cross-field rules. Idempotent."""
    d = ARCH_DEFAULTS[cfg.arch]
    warmup = cfg.warmup_iters
    if warmup is None:
        warmup = min(2000, int(d["warmup_frac"] * cfg.max_iters))
    vocab = cfg.vocab_size
    if vocab is None and data_vocab is not None:
        vocab = pad_vocab(data_vocab)
    out = derive(
        cfg,
        n_kv_head=cfg.n_head if cfg.n_kv_head is None else cfg.n_kv_head,  # 0 is an error, not "unset"
        share_attn=cfg.n_layer if cfg.share_attn is None else cfg.share_attn,
        lr_decay_iters=cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters,
        weight_decay=d["weight_decay"] if cfg.weight_decay is None else cfg.weight_decay,
        warmup_iters=warmup,
        vocab_size=vocab,
    )
    validate(out, data_vocab)
    return out


def derive(cfg: RunConfig, **changes) -> RunConfig:
    """dataclasses.replace without re-checking types, for changes computed from already-checked
    values (resolved defaults, a data id, a canonical twin): a 10,000-cell plan would spend most
    of its time in __init__. Never for a user's values: make_config checks those."""
    out = object.__new__(RunConfig)
    out.__dict__.update(cfg.__dict__)
    out.__dict__.update(changes)
    return out


@dataclass(frozen=True)
class Resources:
    """What one job asks of the scheduler (translated per executor in ablate/launch/resources.py)."""
    gpus: int = 0                     # GPUs per job (>1 runs DDP)
    nodes: int = 1
    cpus: int = 0                     # CPUs per task; 0 = executor default
    mem_gb: float = 0                 # 0 = executor default
    time_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    max_requeue: int = 3

    def signature(self) -> tuple:
        return dataclasses.astuple(self)


RESOURCE_KEYS = {f.name: f.type for f in dataclasses.fields(Resources)}
