"""The trainer layer: what every grid cell runs (`ablate train RUN_DIR`).

    data.py         corpora -> train.bin / val.bin / meta.json (no torch: the plan imports it)
    tokenizer.py    GPT-2 BPE (tiktoken, offline) and character level (no torch)
    job.py          train(run_dir): one attempt (lock, attempt ownership, outcomes); main() for
                    `python -m ablate.train`
    trainer.py      Trainer: model + AdamW, resume, the loop, evals, checkpoints, summary
    step.py         one optimizer step (micro-batches, autocast, clip), shared with memtrack.py
    batches.py      deterministic random-offset batches (a pure function of seed, step, micro)
    checkpoint.py   ckpt.pt (atomic) and model.pt
    signals.py      preemption: flag on SIGUSR1/SIGUSR2/SIGTERM, Preempted, exit code 75
    distributed.py  DDP from torchrun / Slurm / submitit environments
    memory.py       device name, memory counters, bf16 peaks, MFU
    memtrack.py     exact tensor accounting of a step (torch's MemTracker), real or simulated
    summary.py      summary.json

Nothing here imports torch at package import time.
"""
