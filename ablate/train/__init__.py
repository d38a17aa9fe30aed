"""The trainer layer: what every grid cell runs (`ablate train RUN_DIR`).

    job.py          train(run_dir): one attempt (lock, attempt ownership, outcomes); main() for
                    `python -m ablate.train`
    trainer.py      Trainer: model + AdamW, resume, the loop, evals, checkpoints, summary
    build.py        a cell's model: the plugin parts it uses resolved here and handed to the model
    optim.py        AdamW and the lr schedule (shared with the memory simulation)
    step.py         one optimizer step (micro-batches, autocast, clip), shared with memtrack.py
    checkpoint.py   ckpt.pt (atomic) and model.pt
    signals.py      preemption: flag on SIGUSR1/SIGUSR2/SIGTERM, Preempted, exit code 75
    distributed.py  DDP from torchrun / Slurm / submitit environments
    devices.py      device name, memory counters, bf16 peaks, MFU
    memtrack.py     exact tensor accounting of a step (torch's MemTracker), real or simulated
    summary.py      summary.json

The data it reads (corpora, tokenizers, batches) is ablate/data/. Nothing here imports torch at
package import time.
"""
