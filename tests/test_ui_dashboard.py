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
    at = app_test("views/dashboard.py")
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
    at = app_test("views/dashboard.py")
    assert not at.exception
    assert metric(at, "Runs today (UTC)") == "0"
    assert metric(at, "Success rate") == "-"
    assert "No failed runs in the history." in [m.value for m in at.markdown]


def test_schedules_create_interval_then_pause(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/schedules.py")
    assert not at.exception
    at.text_input(key="sf_name").input("every two hours").run()
    at.selectbox(key="sf_pipeline").select(WORKING).run()
    at.selectbox(key="sf_type").select("interval").run()
    at.text_input(key="sf_expression").input("every 2 hours").run()
    assert not at.exception
    assert "Next fire times" in " ".join(x.value for x in at.caption)  # the live preview
    at.button(key="sf_save").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]

    made = c.schedules()["schedules"][0]
    assert (made["pipeline_id"], made["type"], made["enabled"]) == (WORKING, "interval", True)
    listed = at.dataframe[0].value
    row = listed[listed["id"] == made["id"]].iloc[0]
    assert row["next run (UTC)"] not in ("", "-")
    assert bool(row["enabled"]) is True

    assert at.selectbox(key="sched_selected").value == made["id"]
    at.button(key="sched_pause").click().run()
    assert not at.exception
    assert c.schedule(made["id"])["enabled"] is False
    listed = at.dataframe[0].value
    row = listed[listed["id"] == made["id"]].iloc[0]
    assert bool(row["enabled"]) is False
    assert row["next run (UTC)"] == "-"
    assert at.button(key="sched_resume")  # the button flips to Resume

    # edit: the form loads the schedule, and saving changes it in the runtime
    at.selectbox(key="sf_target").select(made["id"]).run()
    assert at.text_input(key="sf_expression").value == "every 2 hours"
    assert at.checkbox(key="sf_enabled").value is False  # paused stays paused when edited
    at.text_input(key="sf_expression").input("every 3 hours").run()
    at.text_area(key="sf_params").input("region=eu\nlimit=5").run()
    at.button(key="sf_save").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    changed = c.schedule(made["id"])
    assert changed["enabled"] is False
    assert (changed["expression"], changed["params"]) == (
        "every 3 hours",
        {"region": "eu", "limit": 5},
    )


def test_schedules_form_shows_api_errors(ui_runtime):
    at = app_test("views/schedules.py")
    at.text_input(key="sf_name").input("bad one").run()
    at.selectbox(key="sf_type").select("interval").run()
    at.text_input(key="sf_expression").input("now and then").run()
    assert not at.exception
    assert any("is not an interval" in e.value for e in at.error)


def test_schedules_webhook_secret_shown_once(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/schedules.py")
    at.text_input(key="sf_name").input("orders hook").run()
    at.selectbox(key="sf_type").select("webhook").run()
    at.text_input(key="sf_expression").input("orders-arrived").run()
    at.button(key="sf_save").click().run()
    assert not at.exception
    assert any("not shown again" in w.value for w in at.warning)
    curl = [x.value for x in at.code if x.value.startswith("curl")]
    assert curl and "/api/v1/hooks/orders-arrived" in curl[0]
    secret = at.code[0].value
    run = c.call_webhook("orders-arrived", secret, {})  # the secret shown is the real one
    assert run["trigger"]
    at.button(key="sched_secret_done").click().run()
    assert not any("not shown again" in w.value for w in at.warning)


def logs_table(at):
    assert not at.exception
    assert at.dataframe, [m.value for m in at.markdown]
    return at.dataframe[0].value


def test_logs_text_and_level_filters(runs):
    c, bad, good = runs
    at = app_test("views/logs.py")
    everything = logs_table(at)
    assert {f"/executions?run={bad['id']}", f"/executions?run={good['id']}"} <= set(
        everything["run"]
    )
    assert list(everything["time (UTC)"]) == sorted(everything["time (UTC)"], reverse=True)

    at.text_input(key="logs_q").input("run completed").run()
    found = logs_table(at)
    assert list(found["message"]) == ["run completed"]
    assert list(found["run"]) == [f"/executions?run={good['id']}"]
    assert list(found["pipeline"]) == [WORKING]

    at.text_input(key="logs_q").input("").run()
    at.selectbox(key="logs_level").select("ERROR").run()
    errors = logs_table(at)
    assert len(errors) >= 2  # the stage's failure and the run's
    assert set(errors["level"]) == {"ERROR"}
    assert set(errors["run"]) == {f"/executions?run={bad['id']}"}
    assert any("count_matches_ledger" in m for m in errors["message"])
    # what the runtime itself says: these are all of the failing run's ERROR lines
    assert len(errors) == len(c.logs(bad["id"], level="ERROR")["logs"])


def test_logs_paging_and_follow(runs):
    c, bad, good = runs
    at = app_test("views/logs.py")
    at.selectbox(key="logs_limit").select(20).run()
    first = logs_table(at)
    total = len(c.search_logs(limit=5000)["logs"])
    assert 40 < total <= 60, total  # two sample runs: 3 pages of 20
    assert len(first) == 20
    at.button(key="logs_older").click().run()
    assert len(logs_table(at)) == 40
    at.button(key="logs_older").click().run()
    every = logs_table(at)
    assert len(every) == total
    assert every["time (UTC)"].is_monotonic_decreasing
    assert "logs_older" not in [b.key for b in at.button]  # no older lines left
    at.selectbox(key="logs_limit").select(200).run()
    at.toggle(key="logs_follow").set_value(True).run()
    newer = c.wait(c.trigger(WORKING)["id"], 60)
    at.run()  # what the 2 s timer does
    lines = logs_table(at)
    assert lines["run"].iloc[0] == f"/executions?run={newer['id']}"
    assert len(lines) == len(c.search_logs(limit=5000)["logs"]) > total
    at.text_input(key="logs_since").input("yesterday").run()
    assert any("not a date or time" in e.value for e in at.error)
