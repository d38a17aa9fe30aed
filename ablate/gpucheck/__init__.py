"""The GPU check: one prepared run of every CUDA test, the attention kernels, MFU, nGPT's
overhead, memory against the plan and resume after a kill, inside a time budget.

    scripts/gpu-check.sh OUTDIR [--cpu] ...     (python -m ablate.gpucheck OUTDIR ...)

    driver.py        stages, time caps, the processes it starts (no torch)
    jobs.py          the measurements, one per process (`python -m ablate.gpucheck.jobs`)
    profiles.py      sizes, cells and caps for the GPU and for the CPU mode the tests run
    report.py        gpu-check.md: the table and the targets (pass / miss, never asserted)
    resume.py        the resume stage's driver side
    pytest_shard.py  a pytest plugin: results as they finish, and shards without pytest-xdist
"""
