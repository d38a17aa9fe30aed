"""Launching cells: every job runs `train(run_dir)`; submitting never blocks (Slurm), never
duplicates, and survives the cluster (requeue, jobs that die without a word).

    submit.py     which cells run (reconciled states, --retry / --force), run dirs, dispatch
    resources.py  the grid's generic resources -> Slurm / local parameters, in one table;
                  local GPU / CPU slots; what the cluster allows (MaxArraySize, GPUs)
    slurm.py      one job array per resource signature, held until every status.json knows its job
    local.py      the local runner (one job per slot, own session, --detach) and `debug` (in-process)
    jobs.py       CellJob: the submitit Checkpointable around train(run_dir); the requeue story
    scheduler.py  squeue / sacct / local pids -> the state each cell is really in
    status.py     `ablate status`, `ablate cancel`, the progress view

Nothing here imports torch at module level: plan, status and cancel start fast on a login node.
"""
