"""Exported DAGs under a real Airflow 3 (its own venv, SQLite metadata DB, `dag.test()`) against
a real runtime on loopback: every sample pipeline in stages mode, two in trigger mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.cli import main as cli
from flexiroaster.settings import Settings
from flexiroaster.spec import load_pipeline

from .conftest import REPO, sample_data_dir, serving

pytestmark = pytest.mark.slow

AIRFLOW = "apache-airflow==3.3.2"
READY = f"{AIRFLOW} + scikit-learn"  # what the cached venv holds
SECRET = "airflow-test-secret-0123456789"
# Outside the venv's own folder name, so `make clean`-style globs keep it; cached between runs.
VENV = Path(os.environ.get("FLEXIROASTER_AIRFLOW_VENV", REPO / ".venv-airflow"))
RUN_DAGS = """
import importlib.util, json, sys
from pathlib import Path
out = {}
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(Path(path).stem.replace("-", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = mod.dag.test()
    out[mod.dag.dag_id] = str(getattr(run, "state", None))
print("DAG-STATES " + json.dumps(out))
"""
# Differ between any two runs of a pipeline: when a row was quarantined, and the run's own id
# (the quarantine's `_run_id`, the ML sample's `run_id` column).
VOLATILE = {"_quarantined_at", "_run_id", "run_id"}


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """Airflow in its own venv (it pins an older FastAPI), with flexiroaster installed without
    its web stack, as a worker would have it. Built once, then reused."""
    python = VENV / "bin" / "python"
    marker = VENV / ".flexiroaster-ready"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not marker.exists() or marker.read_text() != READY:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        # scikit-learn: the ML sample's python stages need it in the worker, as they would in
        # any Airflow deployment running that pipeline.
        deps = [AIRFLOW, "duckdb>=2,<3", "polars", "pyarrow", "pydantic-settings", "scikit-learn"]
        _quiet([*pip, *deps], timeout=1200)
        _quiet([*pip, "--no-deps", "-e", str(REPO)], timeout=600)
        marker.write_text(READY)
    return python


def _quiet(cmd: list[str], timeout: float) -> None:
    """Run a command; its output only shows when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:5]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="session")
def airflow_env(airflow_python, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "FLEXIROASTER_AIRFLOW_SECRET": SECRET,
    }
    (home / "dags").mkdir()
    airflow = airflow_python.parent / "airflow"
    subprocess.run(
        [str(airflow), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300
    )
    return env


def run_dags(python: Path, env: dict[str, str], paths: list[Path]) -> dict[str, str]:
    done = subprocess.run(
        [str(python), "-c", RUN_DAGS, *map(str, paths)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("DAG-STATES ")]
    assert line, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(line[-1].removeprefix("DAG-STATES "))


def tables(store_file: Path) -> dict[str, list[tuple]]:
    """Every user table of a store file, its rows sorted, volatile columns left out."""
    con = duckdb.connect(str(store_file), read_only=True)
    try:
        found = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables()"
            " WHERE schema_name <> 'flexiroaster' AND NOT internal ORDER BY ALL"
        ).fetchall()
        out = {}
        for schema, name in found:
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?",
                [schema, name],
            ).fetchall() if c not in VOLATILE]  # fmt: skip
            sel = ", ".join(f'"{c}"' for c in cols)
            out[f"{schema}.{name}"] = con.execute(
                f'SELECT {sel} FROM "{schema}"."{name}" ORDER BY ALL'
            ).fetchall()
        return out
    finally:
        con.close()


def local_tables(tmp_path: Path) -> dict[str, list[tuple]]:
    """What running every sample locally (`flexiroaster demo`) writes."""
    data = tmp_path / "local" / "data"
    sample_data_dir(data)
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(data)}
    subprocess.run(
        [sys.executable, "-m", "flexiroaster", "demo"], env=env, check=True, capture_output=True,
        timeout=600,
    )  # fmt: skip
    return tables(data / "flexiroaster.duckdb")


def export(
    pipeline: str, mode: str, out: Path, url: str, data: Path, wh: Path, monkeypatch
) -> Path:
    monkeypatch.setenv("FLEXIROASTER_DATA_DIR", str(data))
    before = set(out.glob("*.py"))
    assert cli(["export-airflow", pipeline, "--mode", mode, "-o", str(out), "--url", url,
                "--warehouse", str(wh)]) == 0  # fmt: skip
    (path,) = set(out.glob("*.py")) - before
    return path


def test_every_sample_runs_stage_by_stage_in_airflow(
    airflow_python, airflow_env, tmp_path, monkeypatch
):
    data, wh = tmp_path / "data", tmp_path / "warehouse"
    sample_data_dir(data)
    settings = Settings(
        data_dir=data, airflow_secret=SECRET, warehouse_dir=wh, log_flush_interval=0.05
    )
    files = sorted((data / "pipelines").glob("*.yaml"))
    samples = [load_pipeline(f).id for f in files]
    dags = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"])
    with serving(create_app(settings)) as url:
        paths = [export(str(f), "stages", dags, url, data, wh, monkeypatch) for f in files]
        states = run_dags(airflow_python, {**airflow_env, "FLEXIROASTER_URL": url}, paths)
        with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
            runs = {}
            for p in samples:
                found = api.get("/executions", params={"pipeline_id": p}).json()["executions"]
                assert len(found) == 1, (p, found)
                runs[p] = api.get(f"/executions/{found[0]['id']}").json()
    for p, run in runs.items():
        airflow = run["context"]["airflow"]
        assert airflow["mode"] == "stages" and run["trigger"] == "airflow"
        want = "failed" if p == "inventory-reconciliation" else "success"
        assert states[airflow["dag_id"]] == want, (p, run["error"], states)
        stages = {s["stage_id"]: s for s in run["stages"]}
        if p == "inventory-reconciliation":  # fails on purpose, as it does locally
            assert run["status"] == "failed" and "reconcile" in run["error"], run
            assert stages["reconcile"]["status"] == "failed"
            assert {s["status"] for s in stages.values()} <= {"completed", "failed", "skipped"}
            continue
        assert run["status"] == "completed", (p, run["error"])
        assert all(s["status"] == "completed" for s in stages.values()), (p, stages)
        assert all(s["started_at"] and s["completed_at"] for s in stages.values())
    # The store now holds what a local run of every sample writes, table for table.
    assert tables(data / "flexiroaster.duckdb") == local_tables(tmp_path)


def test_trigger_mode_reports_task_states_and_fails_with_the_run(
    airflow_python, airflow_env, tmp_path, monkeypatch
):
    data, wh = tmp_path / "data", tmp_path / "warehouse"
    sample_data_dir(data)
    settings = Settings(data_dir=data, airflow_secret=SECRET, log_flush_interval=0.05)
    dags = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"])
    with serving(create_app(settings)) as url:
        paths = [
            export(
                str(data / "pipelines" / f"{p}.yaml"), "trigger", dags, url, data, wh, monkeypatch
            )
            for p in ("etl_data_pipeline", "inventory_reconciliation")
        ]
        states = run_dags(airflow_python, {**airflow_env, "FLEXIROASTER_URL": url}, paths)
        with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
            out = {}
            for p in ("etl-data-pipeline", "inventory-reconciliation"):
                (run,) = api.get("/executions", params={"pipeline_id": p}).json()["executions"]
                calls = api.get(f"/airflow/callbacks/{run['id']}").json()
                out[p] = (run, calls)
    assert states == {
        "flexiroaster__etl-data-pipeline__trigger": "success",
        "flexiroaster__inventory-reconciliation__trigger": "failed",
    }
    ok_run, ok_calls = out["etl-data-pipeline"]
    assert ok_run["status"] == "completed" and ok_run["context"]["airflow"]["mode"] == "trigger"
    seen = {(c["task_id"], c["state"]) for c in _callbacks(ok_calls)}
    assert {("flexiroaster_trigger", "success"), ("flexiroaster_wait", "success")} <= seen
    bad_run, bad_calls = out["inventory-reconciliation"]
    assert bad_run["status"] == "failed"
    failure = [c for c in _callbacks(bad_calls) if c["state"] == "failure"]
    assert [c["task_id"] for c in failure] == ["flexiroaster_wait"]
    assert "reconcile" in failure[0]["error"]


def _callbacks(body):
    return body["callbacks"] if isinstance(body, dict) else body
