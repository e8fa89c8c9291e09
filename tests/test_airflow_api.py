"""Airflow's trigger and callback endpoints over HTTP on a real runtime: credentials (secret,
signature, replays), idempotent triggers, callback rules (lineage, duplicates, transitions),
trigger mode end to end, cancelling a run its DAG gave up on, and stages mode."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime

import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings

from .conftest import serving

SECRET = "airflow-test-secret-5e1f"
AUTH = {"X-Airflow-Secret": SECRET}
ERROR_KEYS = {"error", "detail", "timestamp"}

GOOD = """
name: af-good
variables: {n: 3}
stages:
  - {id: nums, type: sql, config: {query: "select range as x from range({{ n }})"}}
  - {id: save, type: output, dependencies: [nums], config: {table: af_good, mode: replace}}
"""
FAILING = """
name: af-failing
stages:
  - {id: broken, type: sql, config: {query: "select error('bad row') as x"}}
"""
SLOW = """
name: af-slow
stages:
  - {id: nap, type: shell, config: {command: "exec sleep 30"}}
"""
STAGED = """
name: af-staged
stages:
  - {id: extract, type: sql, config: {query: "select 1 as x"}}
  - {id: load, type: sql, dependencies: [extract], config: {query: "select x from extract"}}
"""


class Seen(logging.Handler):
    """Every line the runtime's Python loggers write while the module runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(runtime, base URL, answers): one runtime for the module; `answers` keeps every response
    text, for the check that the secret never comes back."""
    data = tmp_path_factory.mktemp("airflow") / "data"
    rt = Runtime(
        load_settings(data_dir=data, max_workers=4, log_flush_interval=0.05, airflow_secret=SECRET)
    )
    seen, ours = Seen(), logging.getLogger("flexiroaster")
    level = ours.level
    ours.addHandler(seen)
    ours.setLevel(logging.DEBUG)
    try:
        for text in (GOOD, FAILING, SLOW, STAGED):
            rt.save_pipeline(text)
        with serving(create_app(runtime=rt)) as url:
            yield rt, url, [], seen
    finally:
        ours.removeHandler(seen)
        ours.setLevel(level)
        rt.close()


@pytest.fixture
def http(served):
    rt, url, answers, _ = served

    def keep(resp: httpx.Response) -> None:
        resp.read()
        answers.append(resp.text)

    with httpx.Client(base_url=f"{url}/api/v1", timeout=30, event_hooks={"response": [keep]}) as h:
        yield h


@pytest.fixture
def rt(served):
    return served[0]


def sign(raw: bytes, t: int | None = None, key: str = SECRET) -> dict[str, str]:
    t = int(time.time()) if t is None else t
    mac = hmac.new(key.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Airflow-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def error(resp: httpx.Response, status: int) -> str:
    """The one error shape with `status`; returns the detail."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    datetime.fromisoformat(body["timestamp"])
    return body["detail"]


_runs = iter(range(1, 10_000))


def trigger(http, pipeline_id: str = "af-good", **kw) -> dict:
    """A new Airflow-started run (its own DAG run id), as the API answered (202)."""
    body = {"pipeline_id": pipeline_id, "dag_id": "etl", "dag_run_id": f"manual__{next(_runs)}",
            "task_id": "run_it"} | kw  # fmt: skip
    resp = http.post("/airflow/trigger", json=body, headers=AUTH)
    assert resp.status_code == 202, resp.text
    return resp.json()


def callback(http, run: dict, state: str | None = "success", **kw) -> httpx.Response:
    lineage = run["context"]["airflow"]
    body = {"execution_id": run["id"], "dag_id": lineage["dag_id"],
            "dag_run_id": lineage["dag_run_id"], "task_id": lineage["task_id"]}  # fmt: skip
    if state is not None:
        body["state"] = state
    return http.post("/airflow/callback", json=body | kw, headers=AUTH)


def finished(rt, run: dict) -> dict:
    assert rt.engine.wait(run["id"], timeout=20)
    return run


def test_credentials_are_checked(http, rt):
    body = {"pipeline_id": "af-good", "dag_id": "etl", "dag_run_id": "creds", "task_id": "t"}
    raw = json.dumps(body).encode()
    plain = {"Content-Type": "application/json"}

    detail = error(http.post("/airflow/trigger", content=raw, headers=plain), 401)
    assert "missing Airflow credentials" in detail and "X-Airflow-Secret" in detail
    wrong = {**plain, "X-Airflow-Secret": "not-the-secret"}
    assert "wrong X-Airflow-Secret" in error(
        http.post("/airflow/trigger", content=raw, headers=wrong), 401
    )
    # Signed with another key, or the body changed after signing.
    assert "does not match" in error(
        http.post("/airflow/trigger", content=raw, headers=sign(raw, key="other-key")), 401
    )
    assert "does not match" in error(
        http.post("/airflow/trigger", content=raw + b" ", headers=sign(raw)), 401
    )
    malformed = {**plain, "X-Airflow-Signature": "sha256=abc"}
    assert "t=<unix seconds>" in error(
        http.post("/airflow/trigger", content=raw, headers=malformed), 401
    )
    old = sign(raw, t=int(time.time()) - 301 - 5)
    assert "replay" in error(http.post("/airflow/trigger", content=raw, headers=old), 401)
    ahead = sign(raw, t=int(time.time()) + 400)
    assert "future" in error(http.post("/airflow/trigger", content=raw, headers=ahead), 401)
    # Authentication comes before the body is read: a refused request learns nothing about it.
    error(http.post("/airflow/callback", content=b"not json", headers=wrong), 401)
    assert rt.store.count("executions", "lineage->>'dag_run_id' = 'creds'") == 0

    # A fresh signature is as good as the secret, once.
    now = int(time.time())
    assert http.post("/airflow/trigger", content=raw, headers=sign(raw, now)).status_code == 202
    detail = error(http.post("/airflow/trigger", content=raw, headers=sign(raw, now)), 401)
    assert "already used" in detail and "replay" in detail
    # The same body signed anew is no replay (and the trigger's idempotent repeat).
    again = http.post("/airflow/trigger", content=raw, headers=sign(raw, now - 1))
    assert again.status_code == 200
    assert rt.store.count("executions", "lineage->>'dag_run_id' = 'creds'") == 1
    # Reading the callbacks of a run needs no credentials, like every GET.
    run_id = finished(rt, again.json())["id"]
    assert http.get(f"/airflow/callbacks/{run_id}").json() == {
        "execution_id": run_id,
        "callbacks": [],
        "total": 0,
    }


def test_without_a_configured_secret_every_call_is_refused(tmp_path):
    rt = Runtime(load_settings(data_dir=tmp_path / "data", log_flush_interval=0.05))
    try:
        rt.save_pipeline(GOOD)
        with serving(create_app(runtime=rt)) as url, httpx.Client(base_url=f"{url}/api/v1") as h:
            body = {"pipeline_id": "af-good", "dag_id": "d", "dag_run_id": "r", "task_id": "t"}
            for headers in ({}, {"X-Airflow-Secret": ""}, {"X-Airflow-Secret": "anything"}):
                for path in ("/airflow/trigger", "/airflow/callback"):
                    detail = error(h.post(path, json=body, headers=headers), 401)
                    assert "FLEXIROASTER_AIRFLOW_SECRET is not set" in detail
        assert rt.store.count("executions") == 0
    finally:
        rt.close()


def test_malformed_payloads_are_422_naming_the_field(http, rt):
    run = finished(rt, trigger(http))
    base = {"execution_id": run["id"], "dag_id": "etl", "task_id": "run_it", "state": "success",
            "dag_run_id": run["context"]["airflow"]["dag_run_id"]}  # fmt: skip
    cases = [
        ({k: v for k, v in base.items() if k != "execution_id"}, "execution_id: Field required"),
        (base | {"state": "done"}, "state: Input should be 'running'"),
        (base | {"try_number": "x"}, "try_number: Input should be a valid integer"),
        (base | {"try_number": True}, "try_number: Input should be a valid integer"),
        (base | {"try_number": -1}, "try_number: Input should be greater than or equal to 0"),
        (base | {"colour": "red"}, "colour: Extra inputs are not permitted"),
        (base | {"start_date": 1764400000}, "start_date: expected an ISO 8601"),
        ({k: v for k, v in base.items() if k != "state"}, "state: give `state` or `callback_type`"),
        (base | {"callback_type": "on_failure_callback"}, "state: 'success' disagrees"),
    ]
    for body, expected in cases:
        assert expected in error(http.post("/airflow/callback", json=body, headers=AUTH), 422)
    for raw, expected in ((b"{oops", "not JSON"), (b"[1, 2]", "JSON object"), (b"", "JSON object")):
        headers = AUTH | {"Content-Type": "application/json"}
        assert expected in error(http.post("/airflow/callback", content=raw, headers=headers), 422)
    trig = {"pipeline_id": "af-good", "dag_id": "etl", "dag_run_id": "r", "task_id": "t"}
    for body, expected in (
        (trig | {"mode": "parallel"}, "mode: Input should be 'trigger' or 'stages'"),
        (trig | {"run_conf": {"n": [1, 2]}}, "run_conf: 'n' is a list"),
        ({k: v for k, v in trig.items() if k != "dag_id"}, "dag_id: Field required"),
    ):
        assert expected in error(http.post("/airflow/trigger", json=body, headers=AUTH), 422)
    assert rt.store.count("airflow_callbacks", "execution_id = ?", [run["id"]]) == 0


def test_trigger_mode_end_to_end(http, rt):
    run = trigger(http, run_conf={"n": 5})
    assert run["trigger"] == "airflow" and run["params"] == {"n": 5}
    assert run["context"]["airflow"] == {"dag_id": "etl", "dag_run_id": run["context"]["airflow"]
                                         ["dag_run_id"], "task_id": "run_it", "mode": "trigger"}  # fmt: skip
    # The task's retry asks again: the same run, 200 instead of 202.
    again = http.post("/airflow/trigger", headers=AUTH, json={
        "pipeline_id": "af-good", "dag_id": "etl", "task_id": "run_it", "run_conf": {"n": 5},
        "dag_run_id": run["context"]["airflow"]["dag_run_id"]})  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] == run["id"]
    # Another task of the same DAG run is another run.
    other = trigger(http, dag_run_id=run["context"]["airflow"]["dag_run_id"], task_id="second")
    assert other["id"] != run["id"]
    finished(rt, other)
    assert http.get(f"/executions/{finished(rt, run)['id']}").json()["status"] == "completed"

    running = callback(http, run, "running", start_date="2026-11-29T09:00:00Z")
    assert running.status_code == 200 and running.json()["duplicate"] is False
    done = callback(http, run, None, callback_type="on_success_callback", message="all good",
                    end_date="2026-11-29T09:00:05+00:00")  # fmt: skip
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["accepted"] is True and answer["duplicate"] is False
    assert answer["execution"]["id"] == run["id"] and answer["execution"]["status"] == "completed"

    stored = http.get(f"/airflow/callbacks/{run['id']}").json()
    assert stored["total"] == 2
    first, last = stored["callbacks"]
    assert (first["state"], last["state"]) == ("running", "success")
    assert last["task_id"] == "run_it" and last["try_number"] == 1 and last["message"] == "all good"
    assert last["end_date"].startswith("2026-11-29T09:00:05")
    assert last["payload"]["callback_type"] == "on_success_callback"
    lines = http.get(f"/executions/{run['id']}/logs").json()["logs"]
    said = [(x["level"], x["message"]) for x in lines if x["message"].startswith("Airflow task")]
    assert said == [
        ("INFO", "Airflow task 'run_it' (try 1) started"),
        ("INFO", "Airflow task 'run_it' (try 1) succeeded: all good"),
    ]
    audit = http.get("/audit", params={"target_id": run["id"]}).json()["entries"]
    assert {(e["actor"], e["action"]) for e in audit} >= {
        ("airflow", "run.start"),
        ("airflow", "airflow.callback"),
    }


def test_the_same_callback_twice_is_stored_once(http, rt):
    run = finished(rt, trigger(http))
    assert callback(http, run).json()["duplicate"] is False
    second = callback(http, run, message="sent again")
    assert second.status_code == 200 and second.json()["duplicate"] is True
    assert rt.store.count("airflow_callbacks", "execution_id = ?", [run["id"]]) == 1
    assert http.get(f"/airflow/callbacks/{run['id']}").json()["total"] == 1


def test_impossible_transitions_are_409(http, rt):
    run = finished(rt, trigger(http))
    assert callback(http, run, "success").status_code == 200  # no on_execute_callback: fine
    # success → running in the same try; a final state is final.
    for state in ("running", "failure", "retry"):
        assert "already ended with success" in error(callback(http, run, state), 409)
    # (A repeat of a state already stored is a duplicate, wherever it comes.)
    assert callback(http, run, "success").json()["duplicate"] is True
    # Cleared in Airflow: the next try may start again, and retry → running goes to try 3.
    assert callback(http, run, "running", try_number=2).status_code == 200
    assert callback(http, run, "retry", try_number=2).status_code == 200
    assert "already ended with retry" in error(callback(http, run, "success", try_number=2), 409)
    assert callback(http, run, "running", try_number=3).status_code == 200
    # A late callback of an older try is stale.
    assert "stale" in error(callback(http, run, "failure", try_number=2), 409)
    states = [(c["try_number"], c["state"]) for c in
              http.get(f"/airflow/callbacks/{run['id']}").json()["callbacks"]]  # fmt: skip
    assert states == [(1, "success"), (2, "running"), (2, "retry"), (3, "running")]
    # Tasks are judged apart: another task of the DAG run may still report.
    assert callback(http, run, "skipped", task_id="notify").status_code == 200


def test_lineage_and_unknown_runs(http, rt):
    run = finished(rt, trigger(http))
    wrong = callback(http, run, dag_run_id="manual__other")
    assert error(wrong, 409) == (
        f"callback for DAG run etl/manual__other, but the run was started by etl/"
        f"{run['context']['airflow']['dag_run_id']}"
    )
    assert "started by" in error(callback(http, run, dag_id="other_dag"), 409)
    local = http.post("/executions", json={"pipeline_id": "af-good"})
    assert local.status_code == 202
    finished(rt, local.json())
    assert "not started by Airflow" in error(
        callback(http, run, execution_id=local.json()["id"]), 409
    )
    assert "no execution 'nope'" in error(callback(http, run, execution_id="nope"), 404)
    assert error(http.get("/airflow/callbacks/nope"), 404)
    body = {"pipeline_id": "no-such", "dag_id": "d", "dag_run_id": "r", "task_id": "t"}
    assert "no-such" in error(http.post("/airflow/trigger", json=body, headers=AUTH), 404)
    assert rt.store.count("airflow_callbacks", "execution_id = ?", [run["id"]]) == 0


def test_a_failing_pipelines_failure_callback_is_stored(http, rt):
    run = trigger(http, "af-failing")
    assert http.get(f"/executions/{finished(rt, run)['id']}").json()["status"] == "failed"
    resp = callback(http, run, "failure", error="FlexiRoaster run failed: bad row")
    assert resp.status_code == 200 and resp.json()["execution"]["status"] == "failed"
    [stored] = http.get(f"/airflow/callbacks/{run['id']}").json()["callbacks"]
    assert stored["state"] == "failure" and stored["error"] == "FlexiRoaster run failed: bad row"
    errors = http.get(f"/executions/{run['id']}/logs", params={"level": "ERROR"}).json()["logs"]
    assert any(
        x["message"]
        == "Airflow task 'run_it' (try 1) failed — error: FlexiRoaster run failed: bad row"
        for x in errors
    )
    assert not any("cancelling" in x["message"] for x in errors)


def test_a_failure_callback_cancels_the_run_its_dag_gave_up_on(http, rt):
    run = trigger(http, "af-slow")
    deadline = time.monotonic() + 10
    while http.get(f"/executions/{run['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Another task's failure does not cancel it; the triggering task's does.
    assert (
        callback(http, run, "failure", task_id="sensor").json()["execution"]["status"] == "running"
    )
    resp = callback(http, run, "failure", error="Task timed out")
    assert resp.status_code == 200
    assert resp.json()["execution"]["status"] == "cancelled"
    lines = http.get(f"/executions/{run['id']}/logs").json()["logs"]
    assert any(
        "cancelling the run: its Airflow task 'run_it' reported failure" in x["message"]
        for x in lines
    )
    audit = http.get("/audit", params={"target_id": run["id"], "action": "run.cancel"}).json()
    assert [e["actor"] for e in audit["entries"]] == ["airflow"]


def test_stages_mode_sets_the_stages(http, rt):
    run = trigger(http, "af-staged", mode="stages")
    assert run["status"] == "running" and run["context"]["airflow"]["mode"] == "stages"
    assert callback(http, run, "success").json()["execution"]["status"] == "running"  # no stage
    assert callback(http, run, "running", task_id="extract").status_code == 200
    resp = callback(http, run, "success", task_id="extract", rows_in=0, rows_out=1)
    stages = {s["stage_id"]: s for s in resp.json()["execution"]["stages"]}
    assert stages["extract"]["status"] == "completed" and stages["extract"]["rows_out"] == 1
    assert stages["load"]["status"] == "pending"
    done = callback(http, run, "success", task_id="load", rows_out=1).json()["execution"]
    assert done["status"] == "completed" and done["stages_completed"] == 2
    states = [(c["task_id"], c["state"]) for c in
              http.get(f"/airflow/callbacks/{run['id']}").json()["callbacks"]]  # fmt: skip
    assert states == [("run_it", "success"), ("extract", "running"), ("extract", "success"),
                      ("load", "success")]  # fmt: skip


def test_the_secret_never_comes_back(served, http):
    rt, _, answers, seen = served
    # `answers`: every response of this module's tests so far (this one's included)
    logged = http.get("/logs", params={"limit": 5000}).json()["logs"]
    audit = http.get("/audit", params={"limit": 1000}).json()["entries"]
    texts = answers + [x["message"] for x in logged] + [json.dumps(audit)] + seen.lines
    assert logged and audit and seen.lines and not [t for t in texts if SECRET in t]
