"""`ablate report`: what each change buys, from the store. No torch.

    build.py     make_report: the whole report of one grid (tables, charts, summary.md, index.html)
    compare.py   comparison groups, variants and the baseline
    speedup.py   curve-mode and budget-mode speedups with their noise
    tables.py    memory, size, throughput, lr sweep, run status
    charts.py    the altair charts
    render.py    PNG / SVG / HTML / markdown files
"""
from ablate.report.build import make_report

__all__ = ["make_report"]
