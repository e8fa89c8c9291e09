"""Request and response bodies of the REST API, with the original FlexiRoaster field names."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..records import ExecutionRecord, LogRecord, StageRecord
from ..runtime import LoadedPipeline
from ..scheduler import Schedule


def _iso_8601(value: Any) -> Any:
    # pydantic also reads numbers as Unix times; the API documents (and means) ISO 8601.
    if isinstance(value, str) and not re.match(r"\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d|$)", value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-01-31T09:30:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_8601)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    error: str = Field(description="A short machine-readable code")
    detail: str = Field(description="What is wrong and where, for a person")
    timestamp: datetime


class StageSummary(_Out):
    id: str
    name: str | None
    type: str
    dependencies: list[str]
    timeout: float | None
    retries: int


class PipelineOut(_Out):
    id: str
    name: str
    description: str
    version: int = Field(description="Stored version, 1 for the first save")
    spec_version: str = Field(description="The `version` written in the pipeline")
    stages: list[StageSummary]
    variables: dict[str, Any]
    tags: list[str]
    owner: str | None
    yaml: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, lp: LoadedPipeline) -> PipelineOut:
        p, r = lp.pipeline, lp.record
        stages = [
            StageSummary(
                id=s.id,
                name=s.name,
                type=s.type,
                dependencies=s.dependencies,
                timeout=s.timeout,
                retries=s.retries,
            )
            for s in p.stages
        ]
        return cls(
            id=r.id, name=p.name, description=p.description, version=r.version, spec_version=p.version,
            stages=stages, variables=p.variables, tags=p.tags, owner=p.owner, yaml=r.spec_yaml,
            created_at=r.created_at, updated_at=r.updated_at,
        )  # fmt: skip


class PipelineList(_Out):
    pipelines: list[PipelineOut]
    total: int


class PipelineIn(BaseModel):
    """A pipeline as YAML text (`yaml`), or the pipeline document itself as JSON."""

    model_config = ConfigDict(extra="allow")
    yaml: str | None = Field(None, description="The pipeline as YAML text")


class VersionOut(_Out):
    version: int
    yaml: str
    created_at: datetime


class VersionList(_Out):
    pipeline_id: str
    versions: list[VersionOut]


class ValidationOut(_Out):
    valid: bool
    errors: list[str] = Field(description="One line per problem, with field path and line")
    pipeline: str | None = None
    stages: int | None = None


class TriggerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline_id: str = Field(min_length=1, max_length=200)
    params: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class StageOut(_Out):
    stage_id: str
    stage_type: str
    position: int
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    duration: float | None
    rows_in: int | None
    rows_out: int | None
    attempts: int
    error_type: str | None
    error: str | None
    traceback: str | None
    metrics: dict[str, Any]
    reused_from: str | None

    @classmethod
    def of(cls, s: StageRecord) -> StageOut:
        return cls(**{k: getattr(s, k) for k in cls.model_fields})


class ExecutionOut(_Out):
    id: str
    pipeline_id: str
    pipeline_version: str | None
    status: str
    trigger: str
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    stages_completed: int
    total_stages: int
    duration: float | None
    retry_of: str | None
    scheduled_for: datetime | None = Field(
        None, description="For a scheduled run, the fire time it stands for"
    )
    context: dict[str, Any] = Field(description="Trigger, parameters and lineage of the run")
    stages: list[StageOut] | None = None

    @classmethod
    def of(cls, e: ExecutionRecord, stages: list[StageRecord] | None = None) -> ExecutionOut:
        return cls(
            id=e.id, pipeline_id=e.pipeline_id, pipeline_version=e.pipeline_version, status=str(e.status),
            trigger=e.trigger, params=e.params, created_at=e.created_at, started_at=e.started_at,
            completed_at=e.completed_at, error=e.error, stages_completed=e.stages_completed,
            total_stages=e.total_stages, duration=e.duration, retry_of=e.retry_of,
            scheduled_for=e.scheduled_for,
            context={"trigger": e.trigger, "params": e.params, "retry_of": e.retry_of}
            | ({"airflow": e.lineage} if e.lineage else {}),
            stages=[StageOut.of(s) for s in stages] if stages is not None else None,
        )  # fmt: skip


class ExecutionList(_Out):
    executions: list[ExecutionOut]
    total: int
    limit: int
    offset: int


class LogOut(_Out):
    id: int
    execution_id: str
    stage_id: str | None
    level: str
    message: str
    timestamp: datetime
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, r: LogRecord) -> LogOut:
        return cls(**{k: getattr(r, k) for k in cls.model_fields})


class LogList(_Out):
    logs: list[LogOut]
    next_cursor: int = Field(description="Pass as `after` to get only newer lines")
    finished: bool = Field(description="The run has ended: no more lines will come")


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(
        min_length=1, max_length=100_000, description="One SELECT, DESCRIBE, SHOW or EXPLAIN"
    )
    limit: int | None = Field(
        None, ge=1, le=1_000_000, description="Row cap (at most the server's)"
    )
    timeout: float | None = Field(None, gt=0, le=600, description="Seconds (at most the server's)")
    format: Literal["json", "arrow"] = "json"


class QueryOut(_Out):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    elapsed_ms: float


class HealthOut(_Out):
    status: Literal["ok", "degraded"]
    version: str
    uptime_seconds: float
    components: dict[str, dict[str, Any]]


class SystemMetricsOut(_Out):
    cpu_usage: float = Field(description="The machine's CPU use, %")
    memory_usage: float = Field(description="The machine's memory use, %")
    runtime_cpu_percent: float = Field(description="This runtime's CPU use since the last read, %")
    runtime_rss_bytes: int
    pipeline_throughput: int = Field(description="Runs completed in the last hour")
    active_executions: int = Field(description="Runs running now")
    queue_depth: int = Field(description="Runs waiting for a slot")
    failure_rate: float = Field(description="% of finished runs that failed")
    success_rate: float = Field(description="% of finished runs that completed")
    total_pipelines: int
    total_executions: int
    runs_by_status: dict[str, int]
    avg_duration: float | None = Field(description="Seconds, over completed runs")
    p50_duration: float | None
    p95_duration: float | None
    timestamp: datetime


class RunRef(_Out):
    id: str
    status: str


class TrendDay(_Out):
    day: str = Field(description="ISO date")
    runs: int
    failed: int
    avg_duration: float | None


class PipelineMetricsOut(_Out):
    pipeline_id: str
    total_executions: int
    runs_by_status: dict[str, int]
    success_rate: float
    failure_rate: float
    avg_duration: float | None
    p50_duration: float | None
    p95_duration: float | None
    last_execution: RunRef | None
    trend: list[TrendDay] = Field(description="Per day over the last 14 days")
    timestamp: datetime


class ScheduleOut(_Out):
    id: str
    name: str
    pipeline_id: str
    type: str
    expression: str
    timezone: str
    params: dict[str, Any]
    enabled: bool
    catchup: str
    catchup_cap: int
    overlap: str
    source: str = Field(description="`api`, or `yaml` when the pipeline's YAML declares it")
    created_at: datetime
    updated_at: datetime
    next_run_at: datetime | None
    last_run_id: str | None
    last_run_status: str | None
    last_fired_at: datetime | None
    last_error: str | None
    has_secret: bool
    hook_path: str | None = Field(None, description="webhook: where to POST")

    @classmethod
    def of(cls, s: Schedule, last_status: str | None = None) -> ScheduleOut:
        return cls(
            id=s.id, name=s.name, pipeline_id=s.pipeline_id, type=str(s.type),
            expression=s.expression, timezone=s.timezone, params=s.params, enabled=s.enabled,
            catchup=str(s.catchup), catchup_cap=s.catchup_cap, overlap=str(s.overlap),
            source=s.source, created_at=s.created_at, updated_at=s.updated_at,
            next_run_at=s.next_run_at, last_run_id=s.last_run_id, last_run_status=last_status,
            last_fired_at=s.last_fired_at, last_error=s.last_error,
            has_secret=s.secret_hash is not None,
            hook_path=f"/api/v1/hooks/{s.expression}" if s.type == "webhook" else None,
        )  # fmt: skip


class ScheduleCreated(ScheduleOut):
    secret: str | None = Field(
        None, description="webhook: the secret callers send in X-Webhook-Secret; shown only here"
    )


class ScheduleList(_Out):
    schedules: list[ScheduleOut]
    total: int


class PreviewOut(_Out):
    timezone: str
    times: list[datetime] = Field(description="The next fire times, UTC")
    local_times: list[str] = Field(description="The same times on the schedule's local clock")


class LogSearchOut(_Out):
    logs: list[LogOut]
    pipelines: dict[str, str | None] = Field(description="Run id -> its pipeline id")
    next_before: int | None = Field(description="Pass as `before` for older lines")


class TableOut(_Out):
    schema_name: str
    name: str
    kind: str
    rows: int | None = Field(description="Exact row count of a table (views: none)")
    columns: list[dict[str, str]]


class TableList(_Out):
    tables: list[TableOut]
