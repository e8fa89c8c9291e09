"""What the DAGs written by `flexiroaster export-airflow` call inside Airflow's workers.

It needs only the flexiroaster package with duckdb, polars and pyarrow (`pip install --no-deps
flexiroaster duckdb polars pyarrow pydantic-settings` next to Airflow; no web stack) and two
environment variables in the worker: FLEXIROASTER_URL (the runtime's base URL) and
FLEXIROASTER_AIRFLOW_SECRET (the runtime's Airflow secret; it is never written into a DAG
file). Every call to the runtime carries the secret in `X-Airflow-Secret`.

- trigger mode: `trigger` starts a run in the runtime, `wait` polls it to its end and fails
  when it fails; `report` (the tasks' on_success/on_failure callbacks) sends Airflow's task
  states back.
- stages mode: `start` records a run that Airflow executes, `run_stage` runs one stage (in
  this worker from the warehouse's Parquet files, or in the runtime for a stage that reads or
  writes the runtime's tables) and reports its states, `finish` reports the stages Airflow
  never ran as skipped and fails the DAG run when the FlexiRoaster run failed.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("completed", "failed", "cancelled")


class FlexiRoasterRunFailed(Exception):
    """The FlexiRoaster run (or one of its stages) failed: the Airflow task fails with it."""


def _api(url: str | None = None) -> httpx.Client:
    base = (url or os.environ.get("FLEXIROASTER_URL") or "http://127.0.0.1:8000").rstrip("/")
    secret = os.environ.get("FLEXIROASTER_AIRFLOW_SECRET", "")
    if not secret:
        raise RuntimeError(
            "FLEXIROASTER_AIRFLOW_SECRET is not set in this Airflow worker's environment"
        )
    return httpx.Client(base_url=f"{base}/api/v1", headers={"X-Airflow-Secret": secret}, timeout=60)


def _post(url: str | None, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with _api(url) as api:
        resp = api.post(path, json=body)
    if resp.status_code >= 400:
        raise RuntimeError(f"FlexiRoaster answered {resp.status_code} to {path}: {resp.text[:500]}")
    return resp.json()


def _lineage(context: dict[str, Any]) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "dag_run_id": context["dag_run"].run_id, "task_id": ti.task_id}


def _conf(context: dict[str, Any]) -> dict[str, Any]:
    return dict(getattr(context["dag_run"], "conf", None) or {})


# --- trigger mode --------------------------------------------------------------------------------


def trigger(url: str | None, pipeline_id: str, context: dict[str, Any]) -> str:
    """Start a run of `pipeline_id` in the runtime with the DAG run's conf as parameters."""
    body = {"pipeline_id": pipeline_id, **_lineage(context), "run_conf": _conf(context)}
    return _post(url, "/airflow/trigger", {**body, "mode": "trigger"})["id"]


def wait(url: str | None, execution_id: str, poll: float = 1.0) -> dict[str, Any]:
    """Poll the run until it ends; raise when it did not complete (the task fails)."""
    with _api(url) as api:
        while True:
            run = api.get(f"/executions/{execution_id}")
            run.raise_for_status()
            found = run.json()
            if found["status"] in TERMINAL:
                break
            time.sleep(poll)
    if found["status"] != "completed":
        raise FlexiRoasterRunFailed(
            f"FlexiRoaster run {execution_id} {found['status']}: {found.get('error')}"
        )
    return {k: found[k] for k in ("id", "status", "duration", "stages_completed")}


def report(url: str | None, state: str, context: dict[str, Any]) -> None:
    """A task callback: tell the runtime the task's state (never fails the task itself)."""
    ti = context["ti"]
    execution_id = ti.xcom_pull(task_ids="flexiroaster_trigger") or ti.xcom_pull(
        task_ids="flexiroaster_start"
    )
    if not execution_id:
        return  # the run was never started: nothing to report to
    exc = context.get("exception")
    body = {
        "execution_id": execution_id, **_lineage(context), "try_number": ti.try_number,
        "state": state, "error": f"{type(exc).__name__}: {exc}" if exc else None,
        "end_date": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    try:
        _post(url, "/airflow/callback", {k: v for k, v in body.items() if v is not None})
    except Exception as err:  # a callback must not turn a task's outcome around
        print(f"could not report {state} to FlexiRoaster: {err}")


# --- stages mode ---------------------------------------------------------------------------------


def start(url: str | None, pipeline_id: str, context: dict[str, Any]) -> str:
    """Record the run whose stages the next tasks execute."""
    body = {"pipeline_id": pipeline_id, **_lineage(context), "run_conf": _conf(context)}
    return _post(url, "/airflow/trigger", {**body, "mode": "stages"})["id"]


def run_stage(
    url: str | None,
    pipeline_yaml: str,
    stage_id: str,
    execution_id: str,
    context: dict[str, Any],
    *,
    warehouse: str,
    data_dir: str,
) -> dict[str, Any]:
    """Run one stage and report it: running, then success, or retry/failure (and raise)."""
    from .settings import Settings
    from .spec import load_pipeline_text
    from .stage_runner import needs_store, run_one_stage
    from .store import Store

    ti = context["ti"]
    base = {"execution_id": execution_id, **_lineage(context), "try_number": ti.try_number}
    params = _conf(context)
    pipeline = load_pipeline_text(pipeline_yaml, f"pipeline {stage_id}", params)
    stage = next(s for s in pipeline.stages if s.id == stage_id)
    try:
        if needs_store(stage):  # the runtime runs it: it owns the tables
            out = _post(url, "/airflow/stage", {**base, "stage_id": stage_id})
            if not out["ok"]:
                raise FlexiRoasterRunFailed(out["error"])
            rows_in, rows_out, metrics, logs = (
                out["rows_in"], out["rows_out"], out["metrics"], [],
            )  # fmt: skip
        else:
            _post(url, "/airflow/callback", {**base, "state": "running"})
            with tempfile.TemporaryDirectory(prefix="flexiroaster-stage-") as tmp:
                store = Store(Path(tmp) / "stage.duckdb")
                try:
                    done = run_one_stage(
                        store, Settings(data_dir=Path(data_dir)), pipeline, stage_id,
                        run_id=execution_id, params=params,
                        stands_for=context["dag_run"].logical_date or datetime.now(UTC),
                        warehouse=Path(warehouse),
                    )  # fmt: skip
                finally:
                    store.close()
            rows_in, rows_out, metrics, logs = done.rows_in, done.rows_out, done.metrics, done.logs
    except Exception as exc:
        last_try = ti.try_number > (ti.max_tries or 0)
        _post(url, "/airflow/callback", {
            **base, "state": "failure" if last_try else "retry",
            "error": f"{type(exc).__name__}: {exc}"[:4000],
        })  # fmt: skip
        raise
    _post(url, "/airflow/callback", {
        **base, "state": "success", "rows_in": rows_in, "rows_out": rows_out,
        "metrics": metrics, "logs": [list(x) for x in logs],
    })  # fmt: skip
    return {"stage": stage_id, "rows_out": rows_out}


def finish(url: str | None, execution_id: str, context: dict[str, Any]) -> dict[str, Any]:
    """Runs after every stage task ended in any way (trigger rule all_done): stages still
    pending in FlexiRoaster are the ones Airflow never ran (an upstream failed), reported
    skipped; the task fails when the FlexiRoaster run did not complete, so the DAG run does."""
    base = {"execution_id": execution_id, **_lineage(context), "try_number": 1}
    with _api(url) as api:
        found = api.get(f"/executions/{execution_id}").json()
    for s in found.get("stages") or []:
        if s["status"] == "pending":
            _post(url, "/airflow/callback", {
                **base, "task_id": s["stage_id"], "state": "skipped",
                "error": "Airflow did not run it: an upstream task did not succeed",
            })  # fmt: skip
    with _api(url) as api:
        found = api.get(f"/executions/{execution_id}").json()
    if found["status"] != "completed":
        raise FlexiRoasterRunFailed(
            f"FlexiRoaster run {execution_id} {found['status']}: {found.get('error')}"
        )
    return {"id": execution_id, "status": found["status"]}
