"""DuckDB store: run dirs -> tables (runs, evals, train) and views (final, cells). No torch."""
from ablate.store.store import Store

__all__ = ["Store"]
