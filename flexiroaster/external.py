"""Runs whose stages run elsewhere (Airflow tasks, `export-airflow --mode stages`).

The runtime records such a run like a local one — a row, a row per stage, logs — but its
engine does not execute it: each Airflow task reports its stage's states (running, retry,
success, failure, skipped, cancelled) and the run ends when every stage has. Stages that read
or write the runtime's own tables (`stage_runner.needs_store`) are run here on request, since
only this process may open the store.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import Conflict, FlexiError, NotFound
from .records import ExecutionRecord, StageRecord, now
from .spec import load_pipeline_text
from .stage_runner import StageOutcome, needs_store, run_one_stage
from .states import RunStatus, StageStatus

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

STATES = {
    "running": StageStatus.RUNNING,
    "retry": StageStatus.RETRYING,
    "success": StageStatus.COMPLETED,
    "failure": StageStatus.FAILED,
    "skipped": StageStatus.SKIPPED,
    "cancelled": StageStatus.CANCELLED,
}


class ExternalRuns:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.store = rt.store
        self._lock = threading.Lock()  # one stage report at a time: they decide the run's end

    def start(
        self, pipeline_id: str, params: dict[str, Any], lineage: dict[str, Any]
    ) -> ExecutionRecord:
        """Record a run of `pipeline_id` that Airflow's tasks will execute stage by stage."""
        pipeline = self.rt.get_pipeline(pipeline_id).pipeline
        run, written = self.rt.engine._prepare(pipeline, params, trigger="airflow", lineage=lineage)
        written.result()
        rec = run.record
        rec.status, rec.started_at = RunStatus.RUNNING, now()
        self.store.update_execution(rec, wait=True)
        self.store.log(
            rec.id, None, "INFO",
            f"run started in Airflow ({len(pipeline.stages)} stages, DAG {lineage.get('dag_id')}"
            f" run {lineage.get('dag_run_id')}): each stage runs as an Airflow task",
        )  # fmt: skip
        return rec

    def report(
        self,
        execution_id: str,
        stage_id: str,
        state: str,
        *,
        try_number: int = 1,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        error: str | None = None,
        rows_in: int | None = None,
        rows_out: int | None = None,
        metrics: dict[str, Any] | None = None,
        logs: list[tuple[str, str]] | None = None,
        quiet: bool = False,
    ) -> ExecutionRecord:
        """Apply a stage task's state to the run; end the run once every stage is final.
        `quiet`: the caller logged the state itself (a callback does); only a completed
        stage's summary (duration, rows) is logged then."""
        with self._lock:
            rec = self.store.get_execution(execution_id)
            if not rec.lineage or rec.lineage.get("mode") != "stages":
                raise Conflict(f"run {execution_id} is not run stage by stage in Airflow")
            stages = {s.stage_id: s for s in self.store.get_stages(execution_id)}
            s = stages.get(stage_id)
            if s is None:
                raise NotFound(f"run {execution_id} has no stage {stage_id!r}")
            if rec.status in RunStatus.terminal():
                raise Conflict(f"run {execution_id} is already {rec.status}")
            status = STATES[state]
            for level, message in logs or []:
                self.store.log(execution_id, stage_id, level, message)
            self._apply(s, status, try_number, start_date, end_date, error)
            if status == StageStatus.COMPLETED:
                s.rows_in, s.rows_out, s.metrics = rows_in, rows_out, metrics or {}
            self.store.record_stage(s)
            if not quiet or status == StageStatus.COMPLETED:
                self._log_stage(execution_id, s, try_number)
            rec.stages_completed = sum(
                1 for x in stages.values() if x.status == StageStatus.COMPLETED
            )
            if all(x.status in StageStatus.terminal() for x in stages.values()):
                self._finish(rec, list(stages.values()))
            else:
                self.store.update_execution(rec, wait=True)
            return rec

    @staticmethod
    def _apply(
        s: StageRecord, status: StageStatus, try_number: int, start: datetime | None,
        end: datetime | None, error: str | None,
    ) -> None:  # fmt: skip
        s.status = status
        s.attempts = max(s.attempts, try_number if status != StageStatus.SKIPPED else 0)
        if status == StageStatus.RUNNING:
            s.started_at = s.started_at or start or now()
            return
        if status in StageStatus.terminal():
            s.completed_at = end or now()
            if s.started_at is not None:
                s.duration = (s.completed_at - s.started_at).total_seconds()
        if status in (StageStatus.FAILED, StageStatus.RETRYING, StageStatus.CANCELLED):
            s.error = error or f"the Airflow task reported {status}"
            s.error_type = "AirflowTaskFailure" if status != StageStatus.CANCELLED else None
        elif status == StageStatus.SKIPPED:
            s.error = error or "an upstream Airflow task did not succeed"
        else:
            s.error = s.error_type = None

    def _log_stage(self, execution_id: str, s: StageRecord, try_number: int) -> None:
        text = {
            StageStatus.RUNNING: ("INFO", f"stage {s.stage_id} started in Airflow (try {try_number})"),
            StageStatus.RETRYING: ("WARN", f"stage {s.stage_id} failed, Airflow retries it: {s.error}"),
            StageStatus.COMPLETED: ("INFO", f"stage {s.stage_id} completed in Airflow"
                                    + (f" in {s.duration:.3f} s" if s.duration else "")
                                    + (f", {s.rows_out} rows" if s.rows_out is not None else "")),
            StageStatus.FAILED: ("ERROR", f"stage {s.stage_id} failed in Airflow: {s.error}"),
            StageStatus.SKIPPED: ("WARN", f"stage {s.stage_id} skipped: {s.error}"),
            StageStatus.CANCELLED: ("WARN", f"stage {s.stage_id} cancelled in Airflow"),
        }[s.status]  # fmt: skip
        self.store.log(execution_id, s.stage_id, *text)

    def _finish(self, rec: ExecutionRecord, stages: list[StageRecord]) -> None:
        failed = [s for s in stages if s.status == StageStatus.FAILED]
        if failed:
            rec.status = RunStatus.FAILED
            rec.error = f"stage {failed[0].stage_id} failed: {failed[0].error}"
        elif any(s.status == StageStatus.CANCELLED for s in stages):
            rec.status, rec.error = RunStatus.CANCELLED, "cancelled in Airflow"
        elif any(s.status == StageStatus.SKIPPED for s in stages):
            rec.status, rec.error = RunStatus.FAILED, "stages were skipped in Airflow"
        else:
            rec.status = RunStatus.COMPLETED
        rec.completed_at = now()
        self.store.log(
            rec.id, None, "INFO" if rec.status == RunStatus.COMPLETED else "ERROR",
            f"run {rec.status}" + (f": {rec.error}" if rec.error else ""),
        )  # fmt: skip
        self.store.update_execution(rec, wait=True)
        for callback in list(self.rt.engine.on_finish):
            try:
                callback(rec)
            except Exception:  # a listener's trouble is not the run's
                log.exception("run-finished callback failed for run %s", rec.id)

    def run_stage(self, execution_id: str, stage_id: str, try_number: int = 1) -> StageOutcome:
        """Run a stage that needs the store here, from the warehouse's Parquet inputs. Records
        it running; the caller (the Airflow task) reports how it ended."""
        rec = self.store.get_execution(execution_id)
        pipeline = load_pipeline_text(rec.spec_yaml or "", f"run {execution_id}", rec.params)
        stage = next((s for s in pipeline.stages if s.id == stage_id), None)
        if stage is None:
            raise NotFound(f"run {execution_id} has no stage {stage_id!r}")
        if not needs_store(stage):
            raise Conflict(
                f"stage {stage_id} does not read or write the runtime's tables: the Airflow"
                " worker runs it itself"
            )
        self.report(execution_id, stage_id, "running", try_number=try_number)
        try:
            return run_one_stage(
                self.store, self.rt.settings, pipeline, stage_id, run_id=execution_id,
                params=rec.params, stands_for=rec.scheduled_for or rec.created_at,
                warehouse=self.rt.settings.warehouse,
                log=lambda level, msg: self.store.log(execution_id, stage_id, level, msg),
            )  # fmt: skip
        except FlexiError:
            raise
        except Exception as exc:  # a stage's own failure, reported as such
            raise StageFailed(f"{type(exc).__name__}: {exc}") from exc


class StageFailed(FlexiError):
    status = 422
    code = "stage_failed"
