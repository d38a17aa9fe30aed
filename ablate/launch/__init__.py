"""Launching cells: every job runs `train(run_dir)`; submitting never blocks (Slurm), never
duplicates, and survives the cluster (requeue, jobs that die without a word).

    submit.py     which cells run (reconciled states, --retry / --force), run dirs, dispatch
    executor.py   the one interface every executor implements (dispatch, views, cancel, ...)
    executors.py  the names: `--executor NAME` and a status.json's executor -> its Executor
    slurm.py      SlurmExecutor: one job array per resource signature, held until every status.json
                  knows its job; squeue / sacct
    local.py      LocalExecutor (a runner: one job per slot, own session, --detach) and
                  DebugExecutor (in-process)
    procs.py      local processes: alive, their view, stopping them for good
    jobs.py       CellJob: the submitit Checkpointable around train(run_dir); the requeue story
    resources.py  the grid's generic resources -> Slurm / local parameters, in one table;
                  local GPU / CPU slots; what the cluster allows (MaxArraySize, GPUs)
    state.py      status.json + what the executors say -> the state each cell is really in
    status.py     `ablate status`, `ablate cancel`, the progress view

Nothing here imports torch: plan, status and cancel start fast on a login node.
"""
