"""The REST API over HTTP on a real store file: runs end to end, cancel, retry, logs, errors,
auth, the read-only query endpoint, and compatibility with the original FlexiRoaster API."""

from __future__ import annotations

import os
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from flexiroaster.api import create_app
from flexiroaster.client import ApiError, Client, RuntimeUnavailable
from flexiroaster.errors import Conflict, NotFound, SpecError
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings

from .conftest import free_port, serving

TOKEN = "api-test-token"
ERROR_KEYS = {"error", "detail", "timestamp"}
# Field names the original FlexiRoaster API answered with, which clients depend on.
ORIGINAL_EXECUTION = {
    "id", "pipeline_id", "status", "started_at", "completed_at", "error",
    "stages_completed", "total_stages", "duration", "context",
}  # fmt: skip
ORIGINAL_METRICS = {
    "cpu_usage", "memory_usage", "pipeline_throughput", "active_executions", "failure_rate",
    "total_pipelines", "success_rate", "avg_duration", "timestamp",
}  # fmt: skip
ORIGINAL_LOG = {"id", "execution_id", "stage_id", "level", "message", "timestamp", "metadata"}

GOOD = """
name: API Good
description: numbers, doubled, to a table
variables: {n: 3}
stages:
  - {id: nums, type: sql, config: {query: "select range as x from range({{ n }})"}}
  - {id: doubled, type: sql, dependencies: [nums], config: {query: "select x, x * 2 as y from nums"}}
  - {id: save, type: output, dependencies: [doubled], config: {table: api_good, mode: replace}}
"""
FAILING = """
name: api-failing
stages:
  - {id: ok, type: sql, config: {query: "select 1 as x"}}
  - {id: broken, type: sql, dependencies: [ok], config: {query: "select error('bad row') as x from ok"}}
"""
SLOW = """
name: api-slow
stages:
  - {id: nap, type: shell, config: {command: "echo $$ > nap.pid; echo napping; exec sleep 30"}}
  - {id: after, type: shell, dependencies: [nap], config: {command: "true"}}
"""
# `count` and `extract` must not run again when the run is retried from `gate`.
RETRYABLE = """
name: api-retry
stages:
  - {id: count, type: shell, config: {command: "echo ran >> count.txt"}}
  - {id: extract, type: sql, dependencies: [count], config: {query: "select range as v from range(1, 5)"}}
  - {id: gate, type: shell, dependencies: [extract], config: {command: "test -f open.flag"}}
  - {id: load, type: sql, dependencies: [extract, gate], config: {query: "select sum(v)::bigint as total from extract"}}
  - {id: save, type: output, dependencies: [load], config: {table: api_retry_total, mode: replace}}
"""
CHATTY = """
name: api-chatty
stages:
  - id: talk
    type: shell
    config: {command: "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.15; done"}
"""


def api_settings(data_dir, **kw):
    defaults = dict(
        data_dir=data_dir,
        max_workers=4,
        log_flush_interval=0.05,
        query_timeout=1.0,
        query_max_rows=50,
        max_body_bytes=64_000,
        api_token=None,  # whatever FLEXIROASTER_API_TOKEN the environment has
    )
    return load_settings(**(defaults | kw))


@pytest.fixture
def url(data_dir):
    """A real uvicorn server; the app's lifespan opens and closes the runtime on the store file."""
    with serving(create_app(api_settings(data_dir))) as base:
        yield base


@pytest.fixture
def client(url):
    with Client(url) as c:
        yield c


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, timeout=30) as h:
        yield h


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory):
    """One server for tests that only read or are refused (query, errors, redirects)."""
    data = tmp_path_factory.mktemp("shared") / "data"
    with serving(create_app(api_settings(data))) as base:
        with Client(base) as c:
            c.create_pipeline(GOOD)
            c.wait(c.trigger("api-good")["id"], timeout=20)
        yield base


@pytest.fixture
def shared(shared_url):
    with httpx.Client(base_url=shared_url, timeout=30) as h:
        yield h


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> str:
    """The one error shape; returns the detail."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["detail"], str) and body["detail"]
    datetime.fromisoformat(body["timestamp"])
    if code is not None:
        assert body["error"] == code, body
    return body["detail"]


def eventually(fn, timeout: float = 10.0, interval: float = 0.02):
    """Poll `fn` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {timeout} s"
        time.sleep(interval)


def stage_status(client: Client, run_id: str) -> dict[str, str | None]:
    found = {s["stage_id"]: s["status"] for s in client.execution(run_id)["stages"]}
    return found or {"nap": None}  # the stage rows may not be written yet


# --- runs end to end ------------------------------------------------------------------------


def test_create_validate_trigger_poll_completed_over_a_real_socket(client, data_dir):
    checked = client.validate_pipeline(GOOD)
    assert checked == {"valid": True, "errors": [], "pipeline": "API Good", "stages": 3}

    created = client.create_pipeline(GOOD)
    assert (created["id"], created["name"], created["version"]) == ("api-good", "API Good", 1)
    assert [s["id"] for s in created["stages"]] == ["nums", "doubled", "save"]
    assert created["stages"][1]["dependencies"] == ["nums"]
    assert created["yaml"] == GOOD and created["variables"] == {"n": 3}

    run = client.trigger("api-good", {"n": 4})
    assert run["status"] in ("pending", "running") and run["context"]["params"] == {"n": 4}
    assert set(run) >= ORIGINAL_EXECUTION

    final = client.wait(run["id"], timeout=20)
    assert final["status"] == "completed", final["error"]
    assert (final["stages_completed"], final["total_stages"]) == (3, 3)
    assert final["error"] is None and final["duration"] >= 0
    assert datetime.fromisoformat(final["completed_at"]) >= datetime.fromisoformat(
        final["started_at"]
    )
    assert final["context"] == {"trigger": "api", "params": {"n": 4}, "retry_of": None}
    stages = {s["stage_id"]: s for s in final["stages"]}
    assert [s["status"] for s in final["stages"]] == ["completed"] * 3
    assert (stages["nums"]["rows_out"], stages["doubled"]["rows_in"]) == (4, 4)
    assert stages["save"]["metrics"]["inserted"] == 4
    assert all(s["attempts"] == 1 and s["duration"] >= 0 for s in final["stages"])

    logs = client.logs(run["id"])
    assert logs["finished"] is True
    assert all(set(line) == ORIGINAL_LOG for line in logs["logs"])
    messages = [line["message"] for line in logs["logs"]]
    assert messages[0].startswith("run started") and messages[-1] == "run completed"
    assert "wrote 4 row(s) to table api_good (replace)" in messages
    assert {line["stage_id"] for line in logs["logs"]} == {None, "nums", "doubled", "save"}
    assert [line["id"] for line in logs["logs"]] == sorted(line["id"] for line in logs["logs"])
    again = client.logs(run["id"], after=logs["next_cursor"])
    assert again["logs"] == [] and again["next_cursor"] == logs["next_cursor"]

    # The output table is readable through the API, as JSON and as Arrow.
    out = client.query("select x, y from api_good order by x")
    assert out["columns"] == ["x", "y"] and out["rows"] == [[0, 0], [1, 2], [2, 4], [3, 6]]
    table = client.query_arrow("select * from api_good order by x")
    assert table.column("y").to_pylist() == [0, 2, 4, 6]

    listed = client.executions(pipeline_id="api-good")
    assert listed["total"] == 1 and listed["executions"][0]["id"] == run["id"]
    metrics = client.pipeline_metrics("api-good")
    assert metrics["total_executions"] == 1 and metrics["success_rate"] == 100.0
    assert metrics["last_execution"] == {"id": run["id"], "status": "completed"}


def test_failed_run_records_the_stage_error_and_skips_nothing_it_should_not(client):
    client.create_pipeline(FAILING)
    final = client.wait(client.trigger("api-failing")["id"], timeout=20)
    assert final["status"] == "failed"
    assert final["error"].startswith("stage broken failed") and "bad row" in final["error"]
    broken = {s["stage_id"]: s for s in final["stages"]}["broken"]
    assert broken["status"] == "failed" and "bad row" in broken["error"]
    assert broken["error_type"] == "InvalidInputException"
    errors = client.logs(final["id"], level="ERROR")["logs"]
    assert errors and all(line["level"] == "ERROR" for line in errors)
    assert any("bad row" in line["message"] for line in errors)


def test_cancel_kills_a_running_shell_stage_and_skips_the_rest(client, data_dir):
    client.create_pipeline(SLOW)
    run = client.trigger("api-slow")
    eventually(lambda: stage_status(client, run["id"])["nap"] == "running")
    pid = int(
        eventually(lambda: (data_dir / "nap.pid").exists() and (data_dir / "nap.pid").read_text())
    )

    t0 = time.monotonic()
    cancelled = client.cancel(run["id"])
    assert time.monotonic() - t0 < 5
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled"
    assert {s["stage_id"]: s["status"] for s in cancelled["stages"]} == {
        "nap": "cancelled",
        "after": "skipped",
    }
    with pytest.raises(ProcessLookupError):  # the sleep was killed, not left behind
        eventually(lambda: os.kill(pid, 0), timeout=3)
    assert client.execution(run["id"])["status"] == "cancelled"
    with pytest.raises(Conflict, match="only held, pending or running runs can be cancelled"):
        client.cancel(run["id"])


def test_delete_execution_cancels_like_the_original_api(client, http):
    client.create_pipeline(SLOW)
    run = client.trigger("api-slow")
    eventually(lambda: stage_status(client, run["id"])["nap"] == "running")
    resp = http.delete(f"/api/v1/executions/{run['id']}")
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    assert http.get(f"/api/v1/executions/{run['id']}").status_code == 200  # the record stays
    assert_error(http.delete(f"/api/v1/executions/{run['id']}"), 409, "conflict")
    assert_error(http.delete("/api/v1/executions/no-such-run"), 404, "not_found")


def test_retry_from_failure_reuses_completed_stages(client, data_dir):
    client.create_pipeline(RETRYABLE)
    first = client.wait(client.trigger("api-retry")["id"], timeout=20)
    assert first["status"] == "failed"
    assert stage_status(client, first["id"]) == {
        "count": "completed", "extract": "completed", "gate": "failed",
        "load": "skipped", "save": "skipped",
    }  # fmt: skip

    (data_dir / "open.flag").write_text("")
    retry = client.retry(first["id"])
    assert retry["id"] != first["id"] and retry["retry_of"] == first["id"]
    assert retry["context"]["retry_of"] == first["id"]
    second = client.wait(retry["id"], timeout=20)
    assert second["status"] == "completed", second["error"]
    stages = {s["stage_id"]: s for s in second["stages"]}
    for reused in ("count", "extract"):
        assert stages[reused]["reused_from"] == first["id"] and stages[reused]["attempts"] == 0
    for ran in ("gate", "load", "save"):
        assert stages[ran]["reused_from"] is None and stages[ran]["attempts"] == 1
    assert (data_dir / "count.txt").read_text() == "ran\n"  # `count` ran once, in the first run
    assert client.query("select total from api_retry_total")["rows"] == [[10]]

    with pytest.raises(Conflict, match="only failed or cancelled runs can be retried"):
        client.retry(second["id"])
    with pytest.raises(NotFound):
        client.retry("no-such-run")


def test_a_run_reported_finished_is_finished_in_the_lists_too(client):
    # The engine decides an outcome before it writes it; the API must not report it earlier.
    client.create_pipeline(GOOD)
    for i in range(1, 9):
        run = client.wait(client.trigger("api-good")["id"], timeout=20, interval=0.01)
        assert run["status"] == "completed"
        assert client.executions(status="completed")["total"] == i
        assert client.executions(status="running")["total"] == 0


def test_logs_follow_a_running_run_with_a_cursor(client):
    client.create_pipeline(CHATTY)
    run = client.trigger("api-chatty")
    cursor, seen, polls_with_news_while_running = 0, [], 0
    deadline = time.monotonic() + 20
    while True:
        page = client.logs(run["id"], after=cursor)
        assert all(line["id"] > cursor for line in page["logs"])
        seen += page["logs"]
        cursor = page["next_cursor"]
        if page["finished"]:
            break
        polls_with_news_while_running += bool(page["logs"])
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Lines arrived in several pieces while the run went on, none twice, none lost.
    assert polls_with_news_while_running >= 3
    ids = [line["id"] for line in seen]
    assert ids == sorted(set(ids))
    assert ids == [line["id"] for line in client.logs(run["id"])["logs"]]
    talk = [line["message"] for line in seen if line["message"].startswith("line ")]
    assert talk == [f"line {i}" for i in range(1, 7)]
    assert client.logs(run["id"], after=cursor)["logs"] == []


# --- pipelines ------------------------------------------------------------------------------


def test_put_saves_versions_and_refuses_renames(client, http):
    client.create_pipeline(GOOD)
    v2 = client.update_pipeline("api-good", GOOD.replace("numbers, doubled", "now v2"))
    assert v2["version"] == 2 and v2["description"] == "now v2, to a table"
    assert v2["created_at"] == client.pipeline("api-good")["created_at"]
    versions = client.versions("api-good")
    assert versions["pipeline_id"] == "api-good"
    assert [v["version"] for v in versions["versions"]] == [2, 1]
    assert "numbers, doubled" in versions["versions"][1]["yaml"]
    assert client.pipeline("api-good")["description"] == "now v2, to a table"

    with pytest.raises(Conflict, match="renaming is not supported"):
        client.update_pipeline("api-good", GOOD.replace("API Good", "Other Name"))
    with pytest.raises(Conflict, match="PUT /api/v1/pipelines/api-good saves a new version"):
        client.create_pipeline(GOOD)
    with pytest.raises(NotFound):
        client.update_pipeline("nope", GOOD)
    assert_error(http.get("/api/v1/pipelines/nope/versions"), 404, "not_found")


def test_pipelines_in_json_bodies(http):
    as_text = http.post("/api/v1/pipelines", json={"yaml": GOOD})
    assert as_text.status_code == 201 and as_text.json()["id"] == "api-good"
    doc = {
        "name": "json-doc",
        "stages": [{"id": "a", "type": "sql", "config": {"query": "select 1"}}],
    }
    as_doc = http.post("/api/v1/pipelines", json=doc)
    assert as_doc.status_code == 201 and as_doc.json()["stages"][0]["id"] == "a"
    listed = http.get("/api/v1/pipelines").json()
    assert set(listed) == {"pipelines", "total"}
    assert (listed["total"], [p["id"] for p in listed["pipelines"]]) == (
        2,
        ["api-good", "json-doc"],
    )


def test_validate_reports_problems_with_field_and_line(http):
    bad = textwrap.dedent(
        """\
        name: bad
        stages:
          - {id: a, type: sql, config: {query: "select 1"}}
          - {id: b, type: sql, dependencies: [nope], config: {}}
        """
    )
    resp = http.post(
        "/api/v1/pipelines/validate", content=bad, headers={"content-type": "application/yaml"}
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["valid"] is False and body["errors"]
    assert any("stages[1].config.query" in e and "line 4" in e for e in body["errors"]), body
    # The same text refused on create, as a 422 in the one error shape, saving nothing.
    create = http.post(
        "/api/v1/pipelines", content=bad, headers={"content-type": "application/yaml"}
    )
    detail = assert_error(create, 422, "invalid_pipeline")
    assert "stages[1].config.query" in detail
    assert http.get("/api/v1/pipelines").json()["total"] == 0


def test_delete_pipeline_refused_while_it_has_active_runs(client, http):
    client.create_pipeline(SLOW)
    run = client.trigger("api-slow")
    detail = assert_error(http.delete("/api/v1/pipelines/api-slow"), 409, "conflict")
    assert run["id"] in detail and "active run" in detail
    client.cancel(run["id"])
    assert http.delete("/api/v1/pipelines/api-slow").status_code == 204
    with pytest.raises(NotFound):
        client.pipeline("api-slow")
    assert client.execution(run["id"])["pipeline_id"] == "api-slow"  # history stays
    with pytest.raises(NotFound):
        client.trigger("api-slow")


def test_lists_page_with_skip_and_limit(client, http):
    for i in range(3):
        client.create_pipeline(GOOD.replace("API Good", f"paged {i}"))
    page = http.get("/api/v1/pipelines", params={"skip": 1, "limit": 1}).json()
    assert (page["total"], [p["id"] for p in page["pipelines"]]) == (3, ["paged-1"])
    assert (
        http.get("/api/v1/pipelines", params={"offset": 2}).json()["pipelines"][0]["id"]
        == "paged-2"
    )

    runs = [client.trigger(f"paged-{i % 3}") for i in range(4)]
    for r in runs:
        client.wait(r["id"], timeout=20)
    newest_first = [r["id"] for r in reversed(runs)]
    page = http.get("/api/v1/executions", params={"skip": 1, "limit": 2}).json()
    assert {"executions", "total"} <= set(page)
    assert page["total"] == 4 and [e["id"] for e in page["executions"]] == newest_first[1:3]
    assert all(set(e) >= ORIGINAL_EXECUTION for e in page["executions"])
    only = client.executions(pipeline_id="paged-0", status="completed")
    assert only["total"] == 2
    failed = client.executions(status="failed")
    assert failed["total"] == 0, failed
    future = client.executions(since="2999-01-01T00:00:00Z")
    assert future["total"] == 0
    assert client.executions(until="2999-01-01T00:00:00+02:00")["total"] == 4


# --- metrics and health ---------------------------------------------------------------------


def test_system_metrics_and_prometheus_text(client, http):
    client.create_pipeline(GOOD)
    client.create_pipeline(FAILING)
    client.wait(client.trigger("api-good")["id"], timeout=20)
    client.wait(client.trigger("api-failing")["id"], timeout=20)

    m = client.system_metrics()
    assert set(m) >= ORIGINAL_METRICS
    assert (m["total_pipelines"], m["total_executions"]) == (2, 2)
    assert (m["success_rate"], m["failure_rate"]) == (50.0, 50.0)
    assert m["pipeline_throughput"] == 1 and m["active_executions"] == 0
    assert m["runs_by_status"] == {"completed": 1, "failed": 1}
    assert 0 <= m["cpu_usage"] <= 100 and 0 < m["memory_usage"] <= 100
    assert m["avg_duration"] > 0
    datetime.fromisoformat(m["timestamp"])

    prom = http.get("/metrics")
    assert prom.status_code == 200 and prom.headers["content-type"].startswith("text/plain")
    text = prom.text
    assert 'flexiroaster_runs{status="completed"} 1.0' in text
    assert 'flexiroaster_runs{status="failed"} 1.0' in text
    assert 'flexiroaster_stage_duration_seconds_bucket{le="+Inf",stage_type="sql"} 4.0' in text
    assert "flexiroaster_queue_depth 0.0" in text and "flexiroaster_active_runs 0.0" in text


def test_health_is_503_when_the_engine_is_down(data_dir):
    rt = Runtime(api_settings(data_dir))
    try:
        with TestClient(create_app(runtime=rt)) as tc:
            ok = tc.get("/api/v1/health")
            assert ok.status_code == 200 and ok.json()["status"] == "ok"
            assert ok.json()["components"]["store"]["status"] == "ok"
            rt.engine.pool.shutdown(wait=False)  # as if the worker pool died
            down = tc.get("/api/v1/health")
            assert down.status_code == 503
            body = down.json()
            assert (
                body["status"] == "degraded" and body["components"]["engine"]["status"] == "error"
            )
            assert body["components"]["store"]["status"] == "ok"
    finally:
        rt.close()


# --- the original /api paths, errors, bodies ------------------------------------------------


def test_original_api_paths_redirect_to_v1(shared):
    resp = shared.get("/api/pipelines", params={"skip": 0, "limit": 5})
    assert resp.status_code == 307
    assert resp.headers["location"] == "/api/v1/pipelines?skip=0&limit=5"
    assert shared.get("/api/health", follow_redirects=True).json()["status"] == "ok"
    # 307 keeps the method and the body: a POST to the old path still triggers.
    run = shared.post("/api/executions", json={"pipeline_id": "api-good"}, follow_redirects=True)
    assert run.status_code == 202 and run.json()["pipeline_id"] == "api-good"
    assert shared.get("/", follow_redirects=True).json()["api"] == "/api/v1"
    assert_error(shared.get("/api/v1/no-such-thing"), 404, "not_found")


def test_errors_share_one_shape_and_status(shared):
    assert "no pipeline 'nope'" in assert_error(
        shared.get("/api/v1/pipelines/nope"), 404, "not_found"
    )
    assert_error(shared.get("/api/v1/executions/nope"), 404, "not_found")
    assert_error(shared.get("/api/v1/executions/nope/logs"), 404, "not_found")
    assert_error(shared.get("/api/v1/metrics/pipelines/nope"), 404, "not_found")
    assert_error(shared.post("/api/v1/executions", json={"pipeline_id": "nope"}), 404, "not_found")
    assert_error(shared.get("/no/such/path"), 404, "not_found")
    assert_error(shared.patch("/api/v1/pipelines/api-good", json={}), 405, "method_not_allowed")
    # Validation errors name the field.
    detail = assert_error(
        shared.post("/api/v1/executions", json={"params": {}}), 422, "invalid_request"
    )
    assert "body.pipeline_id" in detail
    detail = assert_error(
        shared.get("/api/v1/executions", params={"limit": 0}), 422, "invalid_request"
    )
    assert "query.limit" in detail
    detail = assert_error(shared.get("/api/v1/executions", params={"status": "bogus"}), 422)
    assert "query.status" in detail
    detail = assert_error(
        shared.post("/api/v1/executions", json={"pipeline_id": "api-good", "extra": 1}), 422
    )
    assert "body.extra" in detail
    detail = assert_error(
        shared.post(
            "/api/v1/executions", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert "JSON" in detail
    detail = assert_error(
        shared.post(
            "/api/v1/pipelines/validate", content="", headers={"content-type": "application/yaml"}
        ),
        422,
        "invalid_request",
    )
    assert "empty" in detail
    assert_error(shared.post("/api/v1/pipelines", json={"yaml": 5}), 422, "invalid_request")
    assert_error(shared.post("/api/v1/pipelines", json=[1, 2]), 422, "invalid_request")
    assert_error(
        shared.post(
            "/api/v1/pipelines", content=b"\xff\xfe", headers={"content-type": "application/yaml"}
        ),
        422,
        "invalid_request",
    )
    detail = assert_error(shared.post("/api/v1/pipelines", json={"yaml": GOOD, "name": "x"}), 422)
    assert "not both" in detail


def test_an_undefined_placeholder_is_refused_with_its_line(shared):
    text = GOOD.replace("variables: {n: 3}\n", "").replace("API Good", "needs-n")
    resp = shared.post(
        "/api/v1/pipelines", content=text, headers={"content-type": "application/yaml"}
    )
    detail = assert_error(resp, 422, "undefined_variable")
    assert "undefined variable {{ n }}" in detail and "line" in detail


def test_bodies_over_the_limit_are_413(shared):
    big = GOOD + "#" + "x" * 70_000 + "\n"
    detail = assert_error(
        shared.post("/api/v1/pipelines", content=big, headers={"content-type": "application/yaml"}),
        413,
        "too_large",
    )
    assert "64000 bytes" in detail

    def chunks():  # no Content-Length: the limit holds on the stream too
        for _ in range(10):
            yield b"#" + b"x" * 9_999

    assert_error(
        shared.post(
            "/api/v1/pipelines/validate",
            content=chunks(),
            headers={"content-type": "application/yaml"},
        ),
        413,
        "too_large",
    )
    assert shared.get("/api/v1/pipelines/api-good").status_code == 200


# --- regressions from schemathesis ----------------------------------------------------------


def test_json_escapes_of_astral_characters_and_lone_surrogates_are_not_500s(shared):
    # `\ud83d\ude00` is one character in JSON; PyYAML alone would read two lone surrogates.
    doc = '{"name": "astral", "description": "smile \\ud83d\\ude00", "stages": [{"id": "a", "type": "sql", "config": {"query": "select 1"}}]}'
    ok = shared.post("/api/v1/pipelines", content=doc, headers={"content-type": "application/json"})
    assert ok.status_code == 201 and ok.json()["description"] == "smile \U0001f600"
    lone = '{"\\ud800": {"\\udc00x": null}}'
    resp = shared.post(
        "/api/v1/pipelines/validate", content=lone, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200 and resp.json()["valid"] is False
    assert_error(
        shared.post(
            "/api/v1/pipelines", content=lone, headers={"content-type": "application/json"}
        ),
        422,
    )
    trigger = '{"pipeline_id": "\\ud800"}'
    detail = assert_error(
        shared.post(
            "/api/v1/executions", content=trigger, headers={"content-type": "application/json"}
        ),
        422,
    )
    assert "body.pipeline_id" in detail
    query = '{"sql": "select \'\\udfff\'"}'
    assert_error(
        shared.post("/api/v1/query", content=query, headers={"content-type": "application/json"}),
        422,
    )


def test_paging_and_time_filters_reject_what_the_store_cannot_take(shared):
    for path in ("/api/v1/pipelines", "/api/v1/executions"):
        for name in ("offset", "skip"):
            detail = assert_error(shared.get(path, params={name: 2**63}), 422, "invalid_request")
            assert f"query.{name}" in detail
    detail = assert_error(shared.get("/api/v1/executions", params={"until": "0.5"}), 422)
    assert "ISO 8601" in detail
    assert_error(shared.get("/api/v1/executions/x/logs", params={"after": 2**63}), 422)
    assert shared.get("/api/v1/executions", params={"until": "2030-01-31"}).status_code == 200


def test_non_utf8_json_body_is_a_documented_400(shared):
    resp = shared.post(
        "/api/v1/executions",
        content=b'{"pipeline_id": "\xff"}',
        headers={"content-type": "application/json"},
    )
    assert_error(resp, 400, "bad_request")


# --- auth -----------------------------------------------------------------------------------


@pytest.fixture
def secured(data_dir):
    app = create_app(api_settings(data_dir, api_token=TOKEN))
    with TestClient(app) as tc:  # as a context manager, so the lifespan opens the runtime
        yield app, tc


def _call(tc: TestClient, method: str, path: str, headers: dict | None = None):
    path = path.replace("{pipeline_id}", "api-good").replace("{execution_id}", "some-run")
    if path.endswith("/pipelines") or "/pipelines/" in path:
        return tc.request(
            method,
            path,
            content=GOOD,
            headers={"content-type": "application/yaml", **(headers or {})},
        )
    body = {"sql": "select 1"} if path.endswith("/query") else {"pipeline_id": "api-good"}
    return tc.request(method, path, json=body, headers=headers)


def test_with_a_token_every_mutating_endpoint_and_query_need_it(secured):
    app, tc = secured
    ops = [
        (m.upper(), p, op) for p, item in app.openapi()["paths"].items() for m, op in item.items()
    ]
    # Exempt: validating and previewing change nothing; a webhook has its schedule's secret,
    # Airflow's trigger, callback and stage the Airflow secret.
    exempt = (
        "/api/v1/pipelines/validate",
        "/api/v1/schedules/preview",
        "/api/v1/hooks/{path}",
        "/api/v1/airflow/trigger",
        "/api/v1/airflow/callback",
        "/api/v1/airflow/stage",
    )
    mutating = {(m, p) for m, p, _ in ops if m != "GET" and p not in exempt}
    secured_ops = {(m, p) for m, p, op in ops if op.get("security") == [{"HTTPBearer": []}]}
    assert mutating == secured_ops and ("POST", "/api/v1/query") in mutating
    assert len(mutating) >= 23  # grows with the API; the equality above is the point

    for method, path in sorted(mutating):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            detail = assert_error(_call(tc, method, path, headers), 401, "unauthorized")
            assert "bearer token" in detail
    # Nothing was created or run by the refused requests.
    assert tc.get("/api/v1/pipelines").json()["total"] == 0
    assert tc.get("/api/v1/executions").json()["total"] == 0

    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _call(tc, "POST", "/api/v1/pipelines", auth).status_code == 201
    run = tc.post("/api/v1/executions", json={"pipeline_id": "api-good"}, headers=auth)
    assert run.status_code == 202
    assert tc.post("/api/v1/query", json={"sql": "select 1 as one"}, headers=auth).json()[
        "rows"
    ] == [[1]]
    # Reading needs no token.
    for path in (
        "/api/v1/health",
        "/api/v1/pipelines",
        "/api/v1/pipelines/api-good",
        "/api/v1/executions",
        f"/api/v1/executions/{run.json()['id']}",
        "/api/v1/metrics/system",
        "/metrics",
    ):
        assert tc.get(path).status_code == 200, path
    assert tc.post(
        "/api/v1/pipelines/validate", content=GOOD, headers={"content-type": "application/yaml"}
    ).json()["valid"]


def test_client_carries_the_token_and_maps_errors(data_dir):
    with serving(create_app(api_settings(data_dir, api_token=TOKEN))) as base:
        with Client(base) as anonymous:
            with pytest.raises(ApiError) as err:
                anonymous.create_pipeline(GOOD)
            assert (err.value.status, err.value.code) == (401, "unauthorized")
            assert anonymous.health()["status"] == "ok"
        with Client(base, token=TOKEN) as c:
            c.create_pipeline(GOOD)
            assert c.wait(c.trigger("api-good")["id"], timeout=20)["status"] == "completed"
            with pytest.raises(NotFound):
                c.execution("nope")
            with pytest.raises(Conflict):
                c.create_pipeline(GOOD)
            with pytest.raises(SpecError):
                c.create_pipeline("name: x\nstages: 5\n")
            with pytest.raises(ApiError) as err:
                c.query("drop table api_good")
            assert (err.value.status, err.value.code) == (400, "query_refused")
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2) as gone,
        pytest.raises(RuntimeUnavailable, match="flexiroaster serve"),
    ):
        gone.health()


# --- POST /query ----------------------------------------------------------------------------

REFUSED = [
    ("insert into api_good values (9, 9)", "INSERT is not allowed"),
    ("drop table api_good", "DROP is not allowed"),
    ("copy api_good to 'copied.csv'", "COPY is not allowed"),
    ("copy (select * from api_good) to 'copied.parquet' (format parquet)", "COPY is not allowed"),
    ("attach 'other.duckdb' as other", "ATTACH is not allowed"),
    ("install httpfs", "INSTALL is not allowed"),
    ("force install httpfs", "INSTALL is not allowed"),
    ("load json", "LOAD is not allowed"),
    ("update api_good set y = 0", "UPDATE is not allowed"),
    ("delete from api_good", "DELETE is not allowed"),
    ("truncate api_good", "DELETE is not allowed"),
    ("create table stolen as select * from api_good", "CREATE is not allowed"),
    ("alter table api_good rename to gone", "ALTER is not allowed"),
    ("pragma enable_profiling", "PRAGMA is not allowed"),
    ("set threads = 1", "SET is not allowed"),
    ("checkpoint", "CALL is not allowed"),
    ("export database 'dump'", "EXPORT is not allowed"),
    ("commit", "TRANSACTION is not allowed"),
    ("explain analyze insert into api_good values (9, 9)", "INSERT is not allowed"),
    ("with x as (select 9, 9) insert into api_good select * from x", "INSERT is not allowed"),
    ("/* harmless? */ drop table api_good", "DROP is not allowed"),
    ("select 1; drop table api_good", "send exactly one statement; this has 2"),
    ("select 1;;drop table api_good", "send exactly one statement; this has 2"),
    ("select 1; select 2", "send exactly one statement; this has 2"),
    ("   ", "send exactly one statement; this has 0"),
    ("selec 1", "does not parse"),
]


@pytest.mark.parametrize(("sql", "why"), REFUSED, ids=[r[0][:40] for r in REFUSED])
def test_query_refuses_anything_but_one_read(shared, sql, why):
    detail = assert_error(shared.post("/api/v1/query", json={"sql": sql}), 400, "query_refused")
    assert why in detail
    if "not allowed" in why:
        assert "only reads (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)" in detail
    # The table and its rows are intact, and nothing was written next to the store.
    intact = shared.post("/api/v1/query", json={"sql": "select count(*) as n from api_good"})
    assert intact.json()["rows"] == [[3]]


def test_query_refusals_leave_no_files(shared, tmp_path_factory):
    for sql, _ in REFUSED:
        shared.post("/api/v1/query", json={"sql": sql})
    # DuckDB resolves relative paths against the process's directory; look there and in the
    # data dirs.
    names = {"copied.csv", "copied.parquet", "other.duckdb", "dump"}
    places = [Path.cwd(), *tmp_path_factory.getbasetemp().rglob("data")]
    assert [p for place in places for p in place.iterdir() if p.name in names] == []


def test_query_reads_with_a_row_cap_a_timeout_and_arrow(shared):
    # Semicolons inside strings and comments are not statements.
    tricky = shared.post(
        "/api/v1/query", json={"sql": "select ';drop table api_good' as s -- ; drop"}
    )
    assert tricky.json()["rows"] == [[";drop table api_good"]]
    for sql in (
        "describe api_good",
        "show tables",
        "summarize api_good",
        "explain select 1",
        "from api_good",
    ):
        assert shared.post("/api/v1/query", json={"sql": sql}).status_code == 200, sql

    capped = shared.post(
        "/api/v1/query", json={"sql": "select range as i from range(1000)", "limit": 10}
    ).json()
    assert (capped["row_count"], capped["truncated"], capped["rows"][-1]) == (10, True, [9])
    server_cap = shared.post(
        "/api/v1/query", json={"sql": "select range from range(1000)", "limit": 500}
    ).json()
    assert (server_cap["row_count"], server_cap["truncated"]) == (50, True)  # query_max_rows
    exact = shared.post("/api/v1/query", json={"sql": "select range from range(50)"}).json()
    assert (exact["row_count"], exact["truncated"]) == (50, False)

    t0 = time.monotonic()
    slow = shared.post(
        "/api/v1/query",
        json={"sql": "select count(*) from range(1000000000000) a where a % 7 = 3", "timeout": 0.3},
    )
    assert "ran over its 0.3 s limit" in assert_error(slow, 400, "query_refused")
    assert time.monotonic() - t0 < 3
    capped_timeout = shared.post(
        "/api/v1/query",
        json={"sql": "select count(*) from range(1000000000000) a where a % 7 = 3", "timeout": 60},
    )
    assert "ran over its 1 s limit" in assert_error(capped_timeout, 400)  # query_timeout caps it

    typed = shared.post(
        "/api/v1/query",
        json={
            "sql": "select 1.5::decimal(4,2) as d, date '2026-01-31' as day, [1, 2] as l, {'a': 1} as s, 'nan'::double as f, '\\x01'::blob as b, null as n"
        },
    )
    assert typed.status_code == 200
    body = typed.json()
    assert body["types"][:2] == ["DECIMAL(4,2)", "DATE"]
    assert (
        body["rows"][0][:4] == ["1.50", "2026-01-31", [1, 2], {"a": 1}]
        and body["rows"][0][-1] is None
    )

    for request in (
        {"json": {"sql": "select * from api_good order by x", "format": "arrow"}},
        {
            "json": {"sql": "select * from api_good order by x"},
            "headers": {"accept": "application/vnd.apache.arrow.stream"},
        },
    ):
        resp = shared.post("/api/v1/query", **request)
        assert resp.headers["content-type"] == "application/vnd.apache.arrow.stream"
        assert (resp.headers["x-row-count"], resp.headers["x-truncated"]) == ("3", "false")
        table = pa.ipc.open_stream(resp.content).read_all()
        assert table.column_names == ["x", "y"] and table.column("y").to_pylist() == [0, 2, 4]
    arrow_capped = shared.post(
        "/api/v1/query",
        json={"sql": "select range from range(1000)", "format": "arrow", "limit": 7},
    )
    assert pa.ipc.open_stream(arrow_capped.content).read_all().num_rows == 7
    assert arrow_capped.headers["x-truncated"] == "true"


def test_log_search_and_tables_for_the_ui(client):
    client.create_pipeline(GOOD)
    run = client.wait(client.trigger("api-good", {"n": 5})["id"], timeout=20)
    assert run["status"] == "completed"
    found = client.search_logs(pipeline_id="api-good", q="RUN COMPLETED")
    assert [x["message"] for x in found["logs"]] == ["run completed"]
    assert found["pipelines"] == {run["id"]: "api-good"}
    everything = client.search_logs(execution_id=run["id"])["logs"]
    assert len(everything) >= 4 and [x["id"] for x in everything] == sorted(
        (x["id"] for x in everything), reverse=True
    )  # newest first
    page = client.search_logs(execution_id=run["id"], limit=2)
    older = client.search_logs(execution_id=run["id"], before=page["next_before"])["logs"]
    assert [x["id"] for x in page["logs"] + older] == [x["id"] for x in everything]
    assert client.search_logs(execution_id=run["id"], level="ERROR")["logs"] == []
    tables = {(t["schema_name"], t["name"]): t for t in client.tables()["tables"]}
    good = tables[("main", "api_good")]
    assert good["rows"] == 5 and [c["name"] for c in good["columns"]] == ["x", "y"]
    assert not any(s == "flexiroaster" for s, _ in tables)


def test_client_health_returns_a_degraded_body_instead_of_raising(data_dir):
    rt = Runtime(api_settings(data_dir))
    try:
        with serving(create_app(runtime=rt)) as url, Client(url) as c:
            assert c.health()["status"] == "ok"
            rt.engine.pool.shutdown(wait=True)
            got = c.health()
            assert got["status"] == "degraded" and got["components"]["engine"]["status"] == "error"
    finally:
        rt.close()


def test_the_audit_log_records_human_actions_in_a_hash_chain(data_dir):
    rt = Runtime(api_settings(data_dir))
    try:
        with serving(create_app(runtime=rt)) as url, Client(url) as c:
            c.create_pipeline(GOOD)
            c.update_pipeline("api-good", GOOD.replace("numbers, doubled", "numbers doubled"))
            run = c.wait(c.trigger("api-good")["id"], timeout=20)
            s = c.create_schedule(
                name="nightly", pipeline_id="api-good", type="cron", expression="0 2 * * *"
            )
            c.pause_schedule(s["id"])
            c.delete_pipeline("api-good")
            got = c.audit(limit=50)
            actions = [(e["action"], e["target_id"]) for e in reversed(got["entries"])]
            assert actions == [
                ("pipeline.create", "api-good"),
                ("pipeline.update", "api-good"),
                ("run.start", run["id"]),
                ("schedule.create", "nightly"),
                ("schedule.pause", "nightly"),
                ("schedule.delete", "nightly"),
                ("pipeline.delete", "api-good"),
            ]
            assert got["chain_ok"] and got["total"] == 7
            assert got["entries"][0]["detail"] == {"schedules": ["nightly"]}
            assert c.audit(target_type="schedule")["total"] == 3
            # An edited entry breaks the chain at that entry.
            second = got["entries"][-2]["id"]
            rt.store._exec(
                rt.store.cursor(),
                "UPDATE flexiroaster.audit_log SET actor = 'someone else' WHERE id = ?",
                [second],
            )
            tampered = c.audit()
            assert not tampered["chain_ok"] and tampered["first_bad_id"] == second
    finally:
        rt.close()
