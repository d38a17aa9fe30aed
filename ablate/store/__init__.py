"""DuckDB store: run dirs -> tables (runs, evals, train) and views (final, cells). No torch."""

__all__ = ["Store"]


def __getattr__(name):  # lazy: `ablate.store.schema` (column names) without importing DuckDB
    if name == "Store":
        from ablate.store.store import Store  # DuckDB: readers of the schema alone (the plugin loader) never load it

        return Store
    raise AttributeError(f"module 'ablate.store' has no attribute {name!r}")
