"""The Dashboard, Schedules and Logs pages under AppTest, against a real runtime with real runs."""

from __future__ import annotations

import pytest

from .conftest import app_test

FAILING = "inventory-reconciliation"  # tagged fails-on-purpose in data/pipelines
WORKING = "etl-data-pipeline"


@pytest.fixture
def runs(ui_runtime):
    """One failed and one completed run of the sample pipelines; yields (client, failed, ok)."""
    _, c = ui_runtime
    bad = c.trigger(FAILING)
    good = c.trigger(WORKING)
    bad, good = c.wait(bad["id"], 60), c.wait(good["id"], 60)
    assert (bad["status"], good["status"]) == ("failed", "completed")
    return c, bad, good


def metric(at, label: str) -> str:
    found = [m for m in at.metric if m.label == label]
    assert found, f"no metric {label!r} in {[m.label for m in at.metric]}"
    return found[0].value


def markdown_text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_dashboard_shows_real_kpis_and_failures(runs):
    c, bad, good = runs
    at = app_test("pages/dashboard.py")
    assert not at.exception
    assert int(metric(at, "Runs today (UTC)").replace(",", "")) >= 2
    assert metric(at, "Success rate") == "50.0 %"
    assert metric(at, "Runs in history") == "2"
    assert metric(at, "Active runs") == "0"
    assert metric(at, "Runtime memory (RSS)").endswith("MiB")
    text = markdown_text(at)
    assert f"[{bad['id']}](/executions?run={bad['id']})" in text
    assert good["id"] not in text  # only failures are listed
    assert f"Pipeline **{FAILING}** failed 1 time in the last 24 hours" in text
    # both charts, and the 30-day window renders too
    assert len(at.get("plotly_chart")) == 2
    at.radio(key="dash_window").set_value("30 days, per day").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2


def test_dashboard_with_empty_history(ui_runtime):
    at = app_test("pages/dashboard.py")
    assert not at.exception
    assert metric(at, "Runs today (UTC)") == "0"
    assert metric(at, "Success rate") == "-"
    assert "No failed runs in the history." in [m.value for m in at.markdown]
