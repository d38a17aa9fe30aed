"""ablate: declarative GPT architecture ablations (nGPT vs GPT, GQA, tying, sharing, SWA).

Data flows one way: grid YAML -> plan (RunConfig per cell) -> submit (run dirs) -> train
(files in the run dir) -> store (DuckDB) -> report. See README.md.
"""
__version__ = "0.1.0"
