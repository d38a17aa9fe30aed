"""Report test fixtures (imported by the test modules: a conftest.py here would shadow the root
conftest that other tests import by name): an isolated JavaScript-bundle cache, and charts
built but not drawn."""
import pytest

from ablate.report import make_report
from ablate.store import Store

GPT_BASELINE = {"baseline": {"arch": "gpt"}, "group_by": ["context"]}


@pytest.fixture(scope="session")
def session_bundle_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vega-cache")


@pytest.fixture(autouse=True)
def bundle_cache(session_bundle_dir, monkeypatch):
    """One JS bundle per test session, never in the user's ~/.cache."""
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(session_bundle_dir))


@pytest.fixture
def specs_only(monkeypatch):
    """For tests of numbers: every chart is still built and validated by altair (to_dict), but
    not rasterized (PNG/SVG are most of a report's time)."""
    from ablate.report import render

    def write_chart(chart, path_stem):
        spec = chart.to_dict()
        path_stem.with_suffix(".png").write_bytes(b"")
        path_stem.with_suffix(".svg").write_text("")
        return spec
    monkeypatch.setattr(render, "write_chart", write_chart)


@pytest.fixture
def env(tmp_path):
    """(runs dir, store, report(compare=GPT_BASELINE, grid="g", **kw) -> make_report's result)."""
    runs = tmp_path / "runs"
    store = Store(runs / "ablate.duckdb")

    def report(compare=GPT_BASELINE, grid="g", **kw):
        store.ingest(runs)
        return make_report(store, grid, compare, tmp_path / "reports" / grid, **kw)
    yield runs, store, report
    store.close()
