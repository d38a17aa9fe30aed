"""`ablate plan`: a grid file -> cells, what each will cost, what is already done. No torch.

    yamlload.py  strict YAML (duplicate keys, tags, size bounds), with the line of every value
    grid.py      load_grid: expand and validate a grid into cells (RunConfig each); --where
    checks.py    what a grid says vs what it means (splits, disguised twins, the baseline)
    plugins.py   the plugin loader: keys, parts, content ids, the run dir's copies
    plan.py      the plan table: params, tokens, FLOPs, memory, state, measured cost
    simcache.py  simulated step memory per shape, cached on disk (the simulation itself is handed
                 in by the caller: plan never imports torch)
"""
