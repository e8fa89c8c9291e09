"""The Executions page shows a run's Airflow lineage and the task states Airflow reported
(AppTest against a real runtime served by the `ui_runtime` fixture)."""

from __future__ import annotations

from flexiroaster.airflow_link import CallbackIn, TriggerIn

from .conftest import app_test


def test_a_run_airflow_started_shows_its_dag_run_and_callbacks(ui_runtime):
    rt, c = ui_runtime
    lineage = {"dag_id": "nightly_etl", "dag_run_id": "scheduled__2026-11-29", "task_id": "run"}
    run, started = rt.airflow.trigger(TriggerIn(pipeline_id="log-analyzer", **lineage))
    assert started and c.wait(run.id, timeout=60)["status"] == "completed"
    for state in ("running", "success"):
        rt.airflow.callback(CallbackIn(execution_id=run.id, state=state, message="ok", **lineage))

    at = app_test()
    at.query_params["run"] = run.id
    at.switch_page("views/executions.py").run()
    assert not at.exception, at.exception
    assert [t.value for t in at.text] == [
        "DAG id: nightly_etl   DAG run id: scheduled__2026-11-29   task id: run   mode: trigger"
    ]
    [table] = [d.value for d in at.dataframe if "try" in d.value.columns]
    assert table[["task", "try", "state", "message"]].values.tolist() == [
        ["run", 1, "running", "ok"],
        ["run", 1, "success", "ok"],
    ]

    # A run nobody started from Airflow has no such section.
    local = c.wait(c.trigger("log-analyzer")["id"], timeout=60)
    at.query_params["run"] = local["id"]
    at.run()
    assert not at.exception, at.exception
    assert not at.text and not [d for d in at.dataframe if "try" in d.value.columns]
