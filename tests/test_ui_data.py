"""The Data, Insights, Alerts and Settings pages against a real runtime with real runs (AppTest,
in-process; the `ui_runtime` fixture serves the runtime over HTTP)."""

from __future__ import annotations

import time

import pytest

from .conftest import app_test


def frames(at) -> list:
    return [d.value for d in at.dataframe]


def errors(at) -> str:
    return "\n".join(e.value for e in at.error)


def text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def run(c, pipeline_id: str, status: str) -> dict:
    done = c.wait(c.trigger(pipeline_id)["id"], timeout=90)
    assert done["status"] == status, done
    return done


@pytest.fixture
def etl(ui_runtime):
    """The sample ETL pipeline run once; yields the client, the run and the table it wrote."""
    _, c = ui_runtime
    done = run(c, "etl-data-pipeline", "completed")
    tables = {f"{t['schema_name']}.{t['name']}": t for t in c.tables()["tables"]}
    assert "warehouse.orders" in tables, sorted(tables)
    return c, done, tables["warehouse.orders"]


def test_data_page_lists_the_written_table_and_queries_it(etl):
    c, _, table = etl
    assert table["rows"] > 0
    at = app_test("views/data.py")
    assert not at.exception, at.exception
    listing = frames(at)[0].set_index("table")
    assert listing.loc["warehouse.orders", "rows"] == table["rows"]

    at.selectbox(key="data_table").select("warehouse.orders").run()
    assert not at.exception, at.exception
    preview = frames(at)[2]  # listing, schema, preview
    assert list(preview.columns) == [col["name"] for col in table["columns"]]
    assert len(preview) == min(100, table["rows"])

    sql = "select count(*) as n from warehouse.orders"
    at.text_area(key="sql").input(sql).run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    result = next(f for f in frames(at) if list(f.columns) == ["n"])
    assert len(result) == len(c.query(sql)["rows"]) == 1
    assert result["n"][0] == c.query(sql)["rows"][0][0] == table["rows"]
    assert "1 row(s) in" in " ".join(cap.value for cap in at.caption)

    # the result survives a rerun that is not the Run button (the chart builder's, here)
    at.selectbox(key="chart_kind").select("histogram").run()
    assert not at.exception, at.exception
    assert any(list(f.columns) == ["n"] for f in frames(at))
    assert at.get("plotly_chart")


def test_data_page_keeps_types_for_the_chart_and_downloads(etl):
    c, _, table = etl
    at = app_test("views/data.py")
    sql = "select order_date, region, net_amount from warehouse.orders"
    at.text_area(key="sql").input(sql).run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    result = next(
        f for f in frames(at) if list(f.columns) == ["order_date", "region", "net_amount"]
    )
    assert len(result) == table["rows"]
    # DECIMAL and DATE travel as text in JSON; the page turns them back for sorting and charts
    assert str(result["net_amount"].dtype) == "float64"
    assert str(result["order_date"].dtype).startswith("datetime64")
    expected = c.query_arrow(sql).column("net_amount").to_pylist()
    assert result["net_amount"].tolist() == [float(v) for v in expected]

    at.selectbox(key="chart_kind").select("bar").run()
    at.selectbox(key="chart_x").select("region").run()
    at.selectbox(key="chart_y").select("net_amount").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart")
    assert [b.proto.label for b in at.get("download_button")] == [
        "Download CSV",
        "Download Parquet",
    ]


def test_data_page_shows_duckdbs_and_the_apis_messages(etl):
    c, _, table = etl
    at = app_test("views/data.py")

    at.text_area(key="sql").input("select * from no_such_table").run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    assert "The query failed" in errors(at) and "no_such_table" in errors(at)

    at.text_area(key="sql").input("drop table warehouse.orders").run()
    at.button(key="run_sql").click().run()
    assert not at.exception, at.exception
    assert "DROP is not allowed" in errors(at), errors(at)
    assert {"warehouse.orders": table["rows"]} == {
        f"{t['schema_name']}.{t['name']}": t["rows"]
        for t in c.tables()["tables"]
        if t["name"] == "orders"
    }

    at.text_area(key="sql").input("select 1; select 2").run()
    at.button(key="run_sql").click().run()
    assert "exactly one statement" in errors(at)
    assert not at.exception, at.exception


def test_insights_alerts_and_settings_show_the_real_history(etl):
    c, good, _ = etl
    bad = run(c, "inventory-reconciliation", "failed")

    at = app_test("views/insights.py")
    assert not at.exception, at.exception
    table = next(f for f in frames(at) if "success rate %" in f.columns).set_index("pipeline")
    assert set(table.index) == {"etl-data-pipeline", "inventory-reconciliation"}
    assert table.loc["etl-data-pipeline", "runs"] == 1
    assert table.loc["etl-data-pipeline", "success rate %"] == 100
    assert table.loc["inventory-reconciliation", "success rate %"] == 0
    assert good["id"] in table.loc["etl-data-pipeline", "last run"]
    assert table.loc["etl-data-pipeline", "runs, 14 d"][-1] == 1
    assert "1. **inventory-reconciliation**: 0.0% completed, 1 failed of 1 runs" in text(at)
    assert "1. **etl-data-pipeline**: p95" in text(at)

    # the default run-failed rule opens an alert once the failed run is judged
    deadline = time.monotonic() + 20
    while not (opened := c.alerts(status="open", rule_id="run-failed")["alerts"]):
        assert time.monotonic() < deadline, "no alert for the failed run"
        time.sleep(0.1)
    (alert,) = opened
    assert (alert["pipeline_id"], alert["evidence"]) == ("inventory-reconciliation", [bad["id"]])
    al = app_test("views/alerts.py")
    assert not al.exception, al.exception
    assert alert["message"] in [t.value for t in al.text] and bad["id"] in alert["message"]
    assert f"[{bad['id']}](/executions?run={bad['id']})" in text(al)
    al.selectbox(key="al_f_pipe").select("etl-data-pipeline").run()
    assert not al.exception, al.exception
    assert "Open: 0" in [s.value for s in al.subheader]

    st_ = app_test("views/settings.py")
    assert not st_.exception, st_.exception
    values = frames(st_)[0].set_index("setting")
    assert values.loc["data_dir", "value"] == c.settings()["data_dir"]
    assert values.loc["api_token_set", "value"] == "not set"
    assert values.loc["api_token_set", "variable"] == "FLEXIROASTER_API_TOKEN"
    assert values.loc["max_workers", "variable"] == "FLEXIROASTER_MAX_WORKERS"
    assert [m.value for m in st_.metric][0] == c.health()["version"]
    assert any("store" in s.value and "ok" in s.value for s in st_.success)


def test_a_degraded_runtime_is_shown_not_raised(ui_runtime):
    rt, c = ui_runtime
    rt.engine.pool.shutdown(wait=False)  # the engine can no longer run anything: /health is 503
    assert c.health()["status"] == "degraded"  # the client returns the body, it does not raise

    al = app_test("views/alerts.py")
    assert not al.exception, al.exception
    assert "engine: error" in errors(al)

    st_ = app_test("views/settings.py")
    assert not st_.exception, st_.exception
    assert [m.value for m in st_.metric][2] == "degraded"
    assert any(e.value.startswith("**engine**: error") for e in st_.error)
