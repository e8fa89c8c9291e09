"""Typed records of runs, stages, log lines and stored pipelines, and their row conversions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .states import RunStatus, StageStatus


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class StageRecord:
    execution_id: str
    stage_id: str
    stage_type: str
    position: int
    status: StageStatus = StageStatus.PENDING
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration: float | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    attempts: int = 0
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reused_from: str | None = None


@dataclass
class ExecutionRecord:
    id: str
    pipeline_id: str
    pipeline_version: str | None
    status: RunStatus
    trigger: str
    params: dict[str, Any]
    created_at: datetime
    total_stages: int
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    stages_completed: int = 0
    retry_of: str | None = None
    pid: int | None = None
    spec_yaml: str | None = None
    scheduled_for: datetime | None = None  # the fire time a scheduled run stands for
    # Where an outside orchestrator started it: {"dag_id", "dag_run_id", "task_id", "mode"}
    lineage: dict[str, Any] | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at and self.completed_at:
            return (self.completed_at - self.started_at).total_seconds()
        return None


@dataclass(frozen=True)
class LogRecord:
    id: int
    execution_id: str
    stage_id: str | None
    level: str
    message: str
    timestamp: datetime
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class PipelineRecord:
    id: str
    name: str
    description: str | None
    version: int
    spec_yaml: str
    created_at: datetime
    updated_at: datetime


EXEC_COLS = list(ExecutionRecord.__dataclass_fields__)
STAGE_COLS = list(StageRecord.__dataclass_fields__)
LOG_COLS = list(LogRecord.__dataclass_fields__)


def db_value(col: str, value: Any) -> Any:
    if col == "params":
        return json.dumps(value, default=str)
    if col == "lineage":
        return None if value is None else json.dumps(value, default=str)
    if col == "status":
        return str(value)
    return value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def execution_from_row(row: dict[str, Any]) -> ExecutionRecord:
    row["params"] = _json(row["params"]) or {}
    row["lineage"] = _json(row.get("lineage"))
    row["status"] = RunStatus(row["status"])
    return ExecutionRecord(**row)


def stage_from_row(row: dict[str, Any]) -> StageRecord:
    row["metrics"] = _json(row["metrics"]) or {}
    row["status"] = StageStatus(row["status"])
    return StageRecord(**row)


def log_from_row(row: dict[str, Any]) -> LogRecord:
    row["metadata"] = _json(row["metadata"])
    return LogRecord(**row)
