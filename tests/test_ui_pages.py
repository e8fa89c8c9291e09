"""Every page renders; the Data, Insights, Alerts and Settings pages against a real runtime
(AppTest, in-process; the runtime is served over HTTP by the `ui_runtime` fixture). The
Pipelines and Executions pages have their own tests in test_ui_pipelines.py."""

from __future__ import annotations

import time

from .conftest import app_test


def frames(at) -> list:
    return [d.value for d in at.dataframe]


def test_every_page_renders_without_an_exception(ui_runtime):
    for page in (
        "dashboard", "pipelines", "executions", "schedules", "data", "insights", "alerts",
        "logs", "secrets", "connections", "settings",
    ):  # fmt: skip
        at = app_test(f"views/{page}.py")
        assert not at.exception, (page, at.exception)
        assert at.title and at.title[0].value


def test_data_page_lists_tables_queries_them_and_shows_duckdbs_errors(ui_runtime):
    _, c = ui_runtime
    run = c.wait(c.trigger("etl-data-pipeline")["id"], timeout=60)
    assert run["status"] == "completed"
    tables = {f"{t['schema_name']}.{t['name']}": t for t in c.tables()["tables"]}
    name, table = next((k, t) for k, t in tables.items() if t["kind"] == "table" and t["rows"])

    at = app_test("views/data.py")
    listing = frames(at)[0]
    row = listing[listing["table"] == name].iloc[0]
    assert row["rows"] == table["rows"]

    at.text_area(key="sql").input(f"select count(*) as n from {name}").run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    result = next(f for f in frames(at) if list(f.columns) == ["n"])
    assert result["n"][0] == table["rows"] == c.query(f"select count(*) from {name}")["rows"][0][0]

    at.text_area(key="sql").input("select * from no_such_table").run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    assert "no_such_table" in " ".join(e.value for e in at.error)
    at.text_area(key="sql").input(f"drop table {name}").run()
    at.button(key="run_sql").click().run()
    assert "The query failed" in " ".join(e.value for e in at.error)
    assert name in {f"{t['schema_name']}.{t['name']}" for t in c.tables()["tables"]}


def test_insights_alerts_and_settings_show_real_history(ui_runtime):
    _, c = ui_runtime
    bad = c.wait(c.trigger("inventory-reconciliation")["id"], timeout=90)
    assert bad["status"] == "failed"
    good = c.wait(c.trigger("log-analyzer")["id"], timeout=60)
    assert good["status"] == "completed"

    at = app_test("views/insights.py")
    table = next(f for f in frames(at) if "success rate %" in f.columns).set_index("pipeline")
    assert (
        table.loc["log-analyzer", "runs"] == 1
        and table.loc["log-analyzer", "success rate %"] == 100
    )
    assert table.loc["inventory-reconciliation", "success rate %"] == 0

    # the default run-failed rule opens an alert for the failed run (judged after it ends)
    deadline = time.monotonic() + 20
    while not (opened := c.alerts(status="open", rule_id="run-failed")["alerts"]):
        assert time.monotonic() < deadline, "no alert for the failed run"
        time.sleep(0.1)
    al = app_test("views/alerts.py")
    assert [a["pipeline_id"] for a in opened] == ["inventory-reconciliation"]
    assert opened[0]["evidence"] == [bad["id"]]
    assert f"Open: {c.alerts(status='open')['total']}" in [h.value for h in al.subheader]
    assert f"(/executions?run={bad['id']})" in " ".join(m.value for m in al.markdown)

    st_ = app_test("views/settings.py")
    values = frames(st_)[0].set_index("setting")["value"]
    assert values["api_token_set"] == "not set"
    assert values["data_dir"] == c.settings()["data_dir"]
    assert not any(e for e in (at.exception, al.exception, st_.exception))


def test_without_a_runtime_the_app_says_how_to_start_one(monkeypatch):
    from .conftest import free_port

    monkeypatch.setenv("FLEXIROASTER_API_URL", f"http://127.0.0.1:{free_port()}")
    at = app_test()
    assert not at.exception, at.exception
    message = " ".join(e.value for e in at.error)
    assert "No FlexiRoaster runtime answers" in message and "flexiroaster up" in message
