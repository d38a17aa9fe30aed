"""torch.compile vs eager: loss, throughput, MFU and peak memory of the same run, GPT and nGPT.

    .venv/bin/python benchmarks/bench_compile.py                       # CPU, fp32, tiny model
    .venv/bin/python benchmarks/bench_compile.py --device cuda --dtype bf16 --size 124m --steps 300

nGPT normalizes every hidden state and weight row many times per step; in bf16 under compile the
fused kernels round differently from eager, and some torch versions compound that error. This
trains each arch twice from the same seed and batches (eager, compiled) through the real
trainer (`ablate.train.job.train` on run dirs) and prints the val losses at every eval,
their largest difference, and the median tokens/s of each. Data: character-level Shakespeare
(prepared on first use), char-level for tiny, GPT-2 BPE for 124m.
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

from ablate.core import rundir
from ablate.core.config import resolve
from ablate.core.estimate import memory_breakdown
from ablate.data import corpora
from ablate.train.job import train

SIZES = {  # name -> model shape and tokenizer (124m: GPT-2 small with its BPE vocabulary, 1k context)
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, context=128, batch_size=16, tokenizer="char"),
    "124m": dict(n_layer=12, n_head=12, n_embd=768, context=1024, batch_size=16, tokenizer="gpt2"),
}


def run(root: Path, name: str, config: dict) -> tuple[list, dict]:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rundir.write_json_atomic(run_dir / rundir.CONFIG, {"config": config, "grid": "bench", "run_id": name})
    state = train(run_dir)
    evals = [json.loads(line) for line in (run_dir / rundir.EVALS).read_text().splitlines()]
    cfg = rundir.read_config(run_dir)[0]
    estimate = memory_breakdown(resolve(cfg, corpora.vocab_size(cfg.dataset, cfg.tokenizer)))["total"]
    return evals, {"state": state, "est_peak": estimate, **rundir.read_json(run_dir / rundir.SUMMARY)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--size", default="tiny", choices=tuple(SIZES))
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ABLATE_RUNS_DIR", str(Path(tmp) / "runs"))
        for arch, lr in (("gpt", 1.5e-3), ("ngpt", 5e-3)):
            base = dict(arch=arch, lr=lr, dataset="shakespeare", device=args.device,
                        dtype=args.dtype, max_iters=args.steps, eval_interval=max(1, args.steps // 4),
                        eval_iters=10, log_interval=10, ckpt_interval=0, seed=0, **SIZES[args.size])
            eager, s_eager = run(Path(tmp), f"{arch}-eager", base)
            comp, s_comp = run(Path(tmp), f"{arch}-compiled", {**base, "compile": True})
            diffs = [abs(a["val_loss"] - b["val_loss"]) for a, b in zip(eager, comp)]
            print(f"{arch} {args.size} {args.device} {args.dtype}, {args.steps} steps")
            print("  step    eager val   compiled val")
            for a, b in zip(eager, comp):
                print(f"  {a['step']:>5}   {a['val_loss']:.5f}     {b['val_loss']:.5f}")
            print(f"  max |diff| {max(diffs):.2e}")
            for name, s in (("eager", s_eager), ("compiled", s_comp)):
                mfu = "" if s.get("mfu_causal") is None else \
                    f", MFU {s['mfu_causal']:.1%} causal / {s['mfu_nanogpt']:.1%} nanoGPT"
                mem = "" if not s.get("peak_alloc") else \
                    f", peak {s['peak_alloc'] / 2**30:.2f} GiB alloc / {s['peak_reserved'] / 2**30:.2f} GiB reserved" \
                    f" (plan estimate {s['est_peak'] / 2**30:.2f} GiB)"
                print(f"  {name:<8} {s.get('tokens_per_s') or 0:>10,.0f} tokens/s{mfu}{mem} ({s.get('attn_backend')})")


if __name__ == "__main__":
    main()
