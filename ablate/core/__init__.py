"""The kernel: what every layer of ablate shares, importing nothing of ablate's own from above.

    errors.py       AblateError (one line for the user) and closest-name hints
    config.py       RunConfig: the schema of a cell, its validation, its run id; ARCHS; Resources
    plugin_keys.py  what a config records about plugins: key declarations (Key), the points they fill
    rundir.py       the run-dir contract: file names, states, atomic writes, status ownership, identity
    estimate.py     parameter counts, checkpoint bytes, FLOPs and the memory formula (pure arithmetic)
    paths.py        runs/, reports/, data/ and the cache, from the environment

No torch, no DuckDB, no pandas here: every command imports this floor.
"""
