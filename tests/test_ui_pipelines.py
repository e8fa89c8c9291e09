"""The Pipelines and Executions pages under AppTest, against a real runtime and real runs."""

from __future__ import annotations

import textwrap

from .conftest import app_test

SAMPLES = {
    "api-data-sync",
    "customer-data-validation",
    "daily-report-generator",
    "etl-data-pipeline",
    "inventory-reconciliation",
    "log-analyzer",
    "ml-model-training",
}
FAST = "customer-data-validation"  # four stages, well under a second on the sample data
FAILING = "inventory-reconciliation"  # fails on purpose
SLOW = textwrap.dedent(
    """\
    name: ui-slow
    stages:
      - {id: nap, type: shell, config: {command: "echo napping; exec sleep 30"}}
      - {id: after, type: shell, dependencies: [nap], config: {command: "true"}}
    """
)


def frame_with(at, column: str):
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def ok(at) -> None:
    assert not at.exception, at.exception


def test_pipelines_page_lists_the_samples_with_their_last_run(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/pipelines.py")
    ok(at)
    listed = frame_with(at, "id").set_index("id")
    assert set(listed.index) == SAMPLES
    assert listed.loc["log-analyzer", "stages"] == 7
    assert set(listed["last run"]) == {"never run"}
    # the DAG of the open pipeline has every stage and dependency
    dot = at.get("graphviz_chart")[0].proto.spec
    first = c.pipeline(at.selectbox(key="pl_open").value)
    for s in first["stages"]:
        assert f'"{s["id"]}"' in dot
        for d in s["dependencies"]:
            assert f'"{d}" -> "{s["id"]}"' in dot

    c.wait(c.trigger(FAILING)["id"], timeout=60)
    at = app_test("views/pipelines.py")
    ok(at)
    listed = frame_with(at, "id").set_index("id")
    assert listed.loc[FAILING, "last run"] == "❌ failed"
    assert listed.loc[FAILING, "last run at"].endswith("ago")
    # the DAG is filled by how each stage did in that run
    at.selectbox(key="pl_open").select(FAILING).run()
    ok(at)
    dot = at.get("graphviz_chart")[0].proto.spec
    assert '"reconcile" [label="reconcile\\nvalidation", fillcolor="#f8d7da"]' in dot
    assert '"publish_positions" [label="publish_positions\\noutput", fillcolor="#eeeeee"]' in dot


def test_run_from_pipelines_then_see_it_on_executions(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/pipelines.py")
    at.selectbox(key="pl_open").select(FAST).run()
    ok(at)
    # a form: the typed value is sent with the submit
    at.text_input(key=f"param_{FAST}_target_table").input("customers_from_ui")
    next(b for b in at.button if b.label == "Run now").click().run()
    ok(at)
    run_id = at.session_state["pl_last_run"]
    assert f"({'/executions?run=' + run_id})" in texts(at.success)
    run = c.wait(run_id, timeout=60)
    assert run["status"] == "completed"
    assert run["params"] == {"target_table": "customers_from_ui"}  # only what was changed

    at.switch_page("views/executions.py").run()
    ok(at)
    listed = frame_with(at, "run")
    assert listed["run"].tolist() == [f"/executions?run={run_id}"]
    assert listed["stages"].tolist() == ["4/4"]

    at.selectbox(key="ex_open").select(run_id).run()  # choosing a run opens it
    ok(at)
    assert at.query_params["run"] == run_id
    stages = frame_with(at, "stage")
    assert stages["stage"].tolist() == [s["stage_id"] for s in run["stages"]]
    assert set(stages["status"]) == {"✅ completed"}
    assert any(m.label == "Status" and m.value == "completed" for m in at.metric)
    assert len(at.get("plotly_chart")) == 1  # the Gantt timeline
    # the output table the run wrote, previewed through the query API
    wrote = next(s for s in run["stages"] if s["metrics"].get("table") == "customers_from_ui")
    columns = c.query("select * from customers_from_ui limit 1")["columns"]
    preview = [d.value for d in at.dataframe if list(d.value.columns) == columns]
    assert [len(p) for p in preview] == [wrote["metrics"]["inserted"]]
    log = c.logs(run_id)["logs"]
    assert log and all(x["message"] in texts(at.code) for x in log)  # the whole log


def test_invalid_yaml_shows_its_line_and_is_not_saved(ui_runtime):
    _, c = ui_runtime
    before = len(c.versions("log-analyzer")["versions"])
    at = app_test("views/pipelines.py")
    at.selectbox(key="pl_open").select("log-analyzer").run()
    good = c.pipeline("log-analyzer")["yaml"]
    assert at.text_area(key="pipeline_yaml").value == good
    bad = good.replace("type: sql", "type: sqll", 1)
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "sqll" in x)
    at.text_area(key="pipeline_yaml").input(bad).run()
    ok(at)
    errors = texts(at.error)
    assert "unknown stage type 'sqll'" in errors and f"line {line}" in errors
    assert f"▶{line:4} │ " in texts(at.code)  # the failing line, numbered and marked
    at.button(key="pl_save").click().run()
    ok(at)
    assert "Not saved" in texts(at.error)
    assert len(c.versions("log-analyzer")["versions"]) == before

    # a valid edit shows its diff and is saved as the next version
    edited = good.replace("slow_ms: 1000", "slow_ms: 1500")
    at.text_area(key="pipeline_yaml").input(edited).run()
    assert "+  slow_ms: 1500" in texts(at.code) and "-  slow_ms: 1000" in texts(at.code)
    at.button(key="pl_save").click().run()
    ok(at)
    versions = c.versions("log-analyzer")["versions"]
    assert len(versions) == before + 1 and versions[0]["yaml"] == edited
    assert at.text_area(key="pipeline_yaml").value == edited
    assert f"version {versions[0]['version']}" in texts(at.success)


def test_a_template_becomes_a_new_pipeline_and_can_be_deleted(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/pipelines.py")
    at.selectbox(key="tpl_pick").select(FAST).run()
    at.text_input(key="new_pipeline_name").input("Customers Copy").run()
    ok(at)
    assert "Valid" in texts(at.success)
    at.button(key="tpl_create").click().run()
    ok(at)
    made = c.pipeline("customers-copy")
    assert made["name"] == "Customers Copy"
    assert [s["id"] for s in made["stages"]] == [s["id"] for s in c.pipeline(FAST)["stages"]]
    assert at.selectbox(key="pl_open").value == "customers-copy"  # opened
    assert "customers-copy" in frame_with(at, "id")["id"].tolist()

    # a name that is taken is refused with the API's message
    at.text_input(key="new_pipeline_name").input("Customers Copy").run()
    at.button(key="tpl_create").click().run()
    ok(at)
    assert "Not created" in texts(at.error)

    at.checkbox(key="pl_del_sure_customers-copy").check().run()
    at.button(key="pl_delete").click().run()
    ok(at)
    assert "customers-copy" not in {p["id"] for p in c.pipelines()["pipelines"]}
    assert "Deleted pipeline customers-copy." in texts(at.success)


def test_cancel_an_active_run_then_retry_it(ui_runtime):
    _, c = ui_runtime
    c.create_pipeline(SLOW)
    run_id = c.trigger("ui-slow")["id"]
    for _ in range(100):
        if c.execution(run_id)["stages"][0]["status"] == "running":
            break
        __import__("time").sleep(0.05)
    # while it runs, its pipeline cannot be deleted: the API's 409 is shown, nothing deleted
    pl = app_test("views/pipelines.py")
    pl.selectbox(key="pl_open").select("ui-slow").run()
    pl.checkbox(key="pl_del_sure_ui-slow").check().run()
    pl.button(key="pl_delete").click().run()
    ok(pl)
    assert "Not deleted" in texts(pl.error) and run_id in texts(pl.error)
    assert c.pipeline("ui-slow")

    at = app_test()
    at.query_params["run"] = run_id
    at.switch_page("views/executions.py").run()
    ok(at)
    assert at.get("progress"), "an active run shows its progress"
    assert "napping" in texts(at.code)  # the log so far
    at.button(key="run_cancel").click().run()
    ok(at)
    assert c.wait(run_id, timeout=30)["status"] == "cancelled"

    at.run()  # the finished view offers the retry
    ok(at)
    assert not at.get("progress")
    at.button(key="run_retry").click().run()
    ok(at)
    new_id = at.query_params["run"]
    assert new_id != run_id and c.execution(new_id)["retry_of"] == run_id
    c.cancel(new_id)
    c.wait(new_id, timeout=30)


def test_executions_filters_and_pages(ui_runtime):
    _, c = ui_runtime
    bad = c.wait(c.trigger(FAILING)["id"], timeout=60)
    good = c.wait(c.trigger(FAST)["id"], timeout=60)
    at = app_test("views/executions.py")
    ok(at)
    assert len(frame_with(at, "run")) == 2
    at.selectbox(key="ex_status").select("failed").run()
    ok(at)
    assert frame_with(at, "run")["run"].tolist() == [f"/executions?run={bad['id']}"]
    at.selectbox(key="ex_status").select("(all)").run()
    at.selectbox(key="ex_pipeline").select(FAST).run()
    assert frame_with(at, "run")["run"].tolist() == [f"/executions?run={good['id']}"]
    assert at.button(key="ex_next").disabled and at.button(key="ex_prev").disabled

    at.query_params["run"] = bad["id"]
    at.run()
    ok(at)
    assert bad["error"] in texts(at.error)
    failed = frame_with(at, "stage").set_index("stage")
    assert failed.loc["publish_positions", "status"] == "⏭️ skipped"
    at.query_params["run"] = "no-such-run"
    at.run()
    ok(at)
    assert "no-such-run" in texts(at.error)


def test_executions_list_pages_by_fifty(ui_runtime):
    _, c = ui_runtime
    c.create_pipeline(
        "name: ui-tiny\nstages:\n  - {id: one, type: sql, config: {query: select 1}}\n"
    )
    ids = [c.trigger("ui-tiny")["id"] for _ in range(51)]
    for run_id in ids:
        assert c.wait(run_id, timeout=60)["status"] == "completed"
    at = app_test("views/executions.py")
    ok(at)
    assert "51 run(s); showing 1–50" in texts(at.caption)
    first = frame_with(at, "run")["run"].tolist()
    assert len(first) == 50 and at.button(key="ex_prev").disabled
    at.button(key="ex_next").click().run()
    ok(at)
    assert "showing 51–51" in texts(at.caption)
    last = frame_with(at, "run")["run"].tolist()
    assert sorted(first + last) == sorted(f"/executions?run={i}" for i in ids)
    assert at.button(key="ex_next").disabled
    at.button(key="ex_prev").click().run()
    assert frame_with(at, "run")["run"].tolist() == first
