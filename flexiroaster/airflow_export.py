"""`flexiroaster export-airflow`: a pipeline as a readable Airflow 3 DAG file (airflow.sdk).

- `trigger` mode: Airflow is the outer orchestrator. One task starts a run in the runtime,
  one waits for it (polling); both report their states back from on_success_callback /
  on_failure_callback.
- `stages` mode: Airflow is the engine. One task per stage with the stage's dependencies,
  retries and timeout, so Airflow's executors spread the stages over its workers; the stages
  exchange data as Parquet under a shared warehouse path and report to the runtime, where the
  run shows with its stages as if it had run locally.

The pipeline's `schedule:` (a cron expression or an interval) becomes the DAG's schedule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from .errors import FlexiError
from .spec import Pipeline

Mode = Literal["trigger", "stages"]


def dag_id(pipeline: Pipeline, mode: Mode) -> str:
    return f"flexiroaster__{re.sub(r'[^A-Za-z0-9_.-]', '_', pipeline.id)}__{mode}"


def _schedule(pipeline: Pipeline) -> str:
    """The DAG's `schedule=` argument as Python source."""
    sched = pipeline.schedule
    if isinstance(sched, dict):
        kind, expr = sched.get("type", "cron"), str(sched.get("expression", ""))
    elif isinstance(sched, str):
        kind, expr = ("cron" if len(sched.split()) == 5 else "interval"), sched
    else:
        return "None"
    if kind == "cron":
        return repr(expr)
    if kind == "interval":
        from .scheduler import parse_interval

        seconds = parse_interval(expr).total_seconds()
        return f"timedelta(seconds={seconds:g})"
    return "None  # a webhook or event schedule starts runs from outside: trigger the DAG"


def _timedelta(seconds: float | None) -> str:
    return "None" if seconds is None else f"timedelta(seconds={seconds:g})"


def render(
    pipeline: Pipeline,
    yaml_text: str,
    mode: Mode,
    *,
    api_url: str,
    warehouse: Path,
    data_dir: Path,
) -> str:
    """The DAG file's source."""
    if mode not in ("trigger", "stages"):
        raise FlexiError(f"--mode must be trigger or stages, not {mode!r}")
    head = f'''"""Airflow DAG for the FlexiRoaster pipeline {pipeline.name!r} ({mode} mode).

Written by `flexiroaster export-airflow {pipeline.id} --mode {mode}`; edit the pipeline, not
this file, and export again. The worker needs the flexiroaster package and, in its
environment, FLEXIROASTER_URL (default below) and FLEXIROASTER_AIRFLOW_SECRET.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from flexiroaster import airflow_worker as fr

PIPELINE_ID = {pipeline.id!r}
URL = os.environ.get("FLEXIROASTER_URL", {api_url!r})
'''
    dag_args = (
        f"    dag_id={dag_id(pipeline, mode)!r},\n"
        f"    description={(pipeline.description or pipeline.name)!r},\n"
        f"    schedule={_schedule(pipeline)},\n"
        "    start_date=datetime(2024, 1, 1),\n"
        "    catchup=False,\n"
        f"    max_active_runs={pipeline.max_active_runs},\n"
        f'    tags=["flexiroaster", {mode!r}],\n'
    )
    if mode == "trigger":
        return (
            head
            + f'''

def report_success(context):
    fr.report(URL, "success", context)


def report_failure(context):
    fr.report(URL, "failure", context)


with DAG(
{dag_args}    default_args={{
        "on_success_callback": report_success,
        "on_failure_callback": report_failure,
    }},
) as dag:

    @task(task_id="flexiroaster_trigger")
    def trigger(**context):
        """Start the run in FlexiRoaster with the DAG run's conf as parameters."""
        return fr.trigger(URL, PIPELINE_ID, context)

    @task(task_id="flexiroaster_wait")
    def wait(execution_id):
        """Wait for the run to end; fail when it did not complete."""
        return fr.wait(URL, execution_id)

    wait(trigger())
'''
        )
    var = _vars(pipeline)
    stages = []
    for s in pipeline.stages:
        stages.append(
            f"    {var[s.id]} = stage({s.id!r}, retries={s.retries},"
            f" retry_delay={_timedelta(s.retry_delay)},"
            f" timeout={_timedelta(s.timeout)})(run)"
        )
    edges = [f"    {var[d]} >> {var[s.id]}" for s in pipeline.stages for d in s.dependencies]
    every = ", ".join(var.values())
    return (
        head
        + f'''WAREHOUSE = os.environ.get("FLEXIROASTER_WAREHOUSE", {str(warehouse)!r})
DATA_DIR = os.environ.get("FLEXIROASTER_DATA_DIR", {str(data_dir)!r})
PIPELINE_YAML = {yaml_text!r}


def stage(stage_id, retries, retry_delay, timeout):
    """The Airflow task that runs one stage of the pipeline."""

    @task(
        task_id=stage_id,
        retries=retries,
        retry_delay=retry_delay or timedelta(seconds=0),
        retry_exponential_backoff=True,  # the delay doubles, as in a local run
        execution_timeout=timeout,
    )
    def run_stage(execution_id, **context):
        return fr.run_stage(
            URL, PIPELINE_YAML, stage_id, execution_id, context,
            warehouse=WAREHOUSE, data_dir=DATA_DIR,
        )

    return run_stage


with DAG(
{dag_args}) as dag:

    @task(task_id="flexiroaster_start")
    def start(**context):
        """Record the run in FlexiRoaster; the stage tasks execute it."""
        return fr.start(URL, PIPELINE_ID, context)

    @task(task_id="flexiroaster_finish", trigger_rule="all_done")
    def finish(execution_id, **context):
        """Report stages Airflow did not run; fail when the FlexiRoaster run failed."""
        return fr.finish(URL, execution_id, context)

    run = start()
{chr(10).join(stages)}
{chr(10).join(edges)}
    [{every}] >> finish(run)
'''
    )


def _vars(pipeline: Pipeline) -> dict[str, str]:
    """A Python name per stage (ids may hold dashes; the position keeps them apart)."""
    return {s.id: f"s{i}_" + re.sub(r"\W", "_", s.id) for i, s in enumerate(pipeline.stages)}


def write(pipeline: Pipeline, yaml_text: str, mode: Mode, out_dir: Path, **kw) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dag_id(pipeline, mode)}.py"
    source = render(pipeline, yaml_text, mode, **kw)
    compile(source, str(path), "exec")  # a generated file that does not parse is our bug
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text(source, encoding="utf-8")
    tmp.replace(path)
    return path
