"""Alert rules: their kinds and validation, and how each kind judges a finished run (or, for
schedule_late, the schedules' fire times). The judges read the pipeline's recent runs kept in
memory (and the store only for validation results and schedules); alerts.py acts."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import FlexiError
from .records import ExecutionRecord
from .spec import CONNECTION_NAME
from .states import RunStatus

if TYPE_CHECKING:
    from .store import Store

ANOMALY_HISTORY = 250  # a pipeline's latest runs a duration is judged against
DEFAULT_WINDOW = 20


class RuleKind(StrEnum):
    RUN_FAILED = "run_failed"
    CONSECUTIVE_FAILURES = "consecutive_failures"
    DURATION_LIMIT = "duration_limit"
    DURATION_ANOMALY = "duration_anomaly"
    SCHEDULE_LATE = "schedule_late"
    VALIDATION_FAILURE_RATE = "validation_failure_rate"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


# What each kind's threshold means, for error messages (kinds not here take none).
THRESHOLDS = {
    RuleKind.CONSECUTIVE_FAILURES: "a whole number of failed runs in a row, at least 2",
    RuleKind.DURATION_LIMIT: "the seconds a run may take, more than 0",
    RuleKind.SCHEDULE_LATE: "the seconds a scheduled run may start late, 0 or more",
    RuleKind.VALIDATION_FAILURE_RATE: "the percent of runs whose validation fails, 0 to 100",
}


class AlertError(FlexiError):
    status = 422
    code = "invalid_alert"


WebhookUrl = Annotated[str, Field(pattern=r"^https?://[^\s/?#]+\S*$", max_length=2000)]


class RuleIn(BaseModel):
    """An alert rule as written by a person (API body)."""

    # Strict: "3" is not a threshold and "yes" is not `enabled`.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200, pattern=r"[A-Za-z0-9]")
    kind: RuleKind = Field(
        strict=False,
        description="run_failed, consecutive_failures, duration_limit, duration_anomaly,"
        " schedule_late (also a missed run of a cron or interval schedule) or"
        " validation_failure_rate",
    )
    pipeline_id: str | None = Field(
        None, min_length=1, max_length=200, description="The pipeline it watches; none: every one"
    )
    threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="consecutive_failures: failed runs in a row (>= 2); duration_limit: seconds"
        " (> 0); schedule_late: seconds late allowed (>= 0); validation_failure_rate: percent"
        " (0-100); none for run_failed and duration_anomaly",
    )
    window_runs: int | None = Field(
        None, ge=1, le=1000, description="validation_failure_rate: the latest runs (default 20)"
    )
    severity: Severity = Field(Severity.MEDIUM, strict=False)
    webhooks: list[WebhookUrl] = Field(
        default_factory=list,
        max_length=20,
        description="http(s) URLs each new alert of this rule is POSTed to (signed JSON)",
    )
    channels: list[Annotated[str, Field(pattern=CONNECTION_NAME)]] = Field(
        default_factory=list,
        max_length=20,
        description="Stored smtp or webhook connections each new alert of this rule is sent"
        " through (Slack-compatible text, or an email to `recipients`)",
    )
    recipients: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)]] = Field(
        default_factory=list, max_length=100, description="smtp channels: who gets the email"
    )
    subject: str | None = Field(
        None,
        max_length=500,
        description="Template of the message's subject, e.g. `{{ alert.severity }}: {{ alert.title }}`"
        " (alert.id, rule_id, pipeline_id, kind, severity, status, title, message, evidence,"
        " created_at)",
    )
    body: str | None = Field(None, max_length=10_000, description="Template of the message's text")
    enabled: bool = True

    def checked(self) -> RuleIn:
        """The rule with its kind's defaults filled in; AlertError names a field that is wrong."""
        kind, t, window = self.kind, self.threshold, self.window_runs
        if window is not None and kind != RuleKind.VALIDATION_FAILURE_RATE:
            raise AlertError(f"window_runs: a {kind} rule counts no window of runs; leave it out")
        if kind not in THRESHOLDS:
            if t is not None:
                raise AlertError(f"threshold: a {kind} rule takes no threshold; leave it out")
        elif t is None:
            raise AlertError(f"threshold: a {kind} rule needs one: {THRESHOLDS[kind]}")
        elif not {
            RuleKind.CONSECUTIVE_FAILURES: 2 <= t <= 10_000 and t == int(t),
            RuleKind.DURATION_LIMIT: t > 0,
            RuleKind.SCHEDULE_LATE: t >= 0,
            RuleKind.VALIDATION_FAILURE_RATE: 0 <= t <= 100,
        }[kind]:
            raise AlertError(f"threshold: a {kind} rule needs {THRESHOLDS[kind]}; got {t:g}")
        import httpx

        for i, url in enumerate(self.webhooks):
            try:
                ok = bool(httpx.URL(url).host)
            except (httpx.InvalidURL, ValueError):
                ok = False
            if not ok:
                raise AlertError(f"webhooks[{i}]: {url!r} is not an http(s) URL with a host")
        from .channels import check_template

        for field in ("subject", "body"):
            problem = check_template(getattr(self, field))
            if problem:
                raise AlertError(f"{field}: {problem}")
        if kind == RuleKind.VALIDATION_FAILURE_RATE and window is None:
            window = DEFAULT_WINDOW
        return self.model_copy(
            update={
                "name": self.name.strip(),
                "window_runs": window,
                "webhooks": list(dict.fromkeys(self.webhooks)),
                "channels": list(dict.fromkeys(self.channels)),
                "recipients": list(dict.fromkeys(self.recipients)),
            }
        )


def rule_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:100].strip("-")


def as_row(obj: Any) -> dict[str, Any]:
    """A dataclass as a store row (enums as text, tuples as JSON lists)."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else str(v) if isinstance(v, StrEnum) else v
    return out


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    kind: RuleKind
    pipeline_id: str | None  # None: every pipeline
    threshold: float | None
    window_runs: int | None
    severity: Severity
    webhooks: tuple[str, ...]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    channels: tuple[str, ...] = ()  # stored smtp / webhook connections
    recipients: tuple[str, ...] = ()  # the smtp channels' addresses
    subject: str | None = None  # message templates (channels.py; None: the default)
    body: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Rule:
        return cls(**{**row, "kind": RuleKind(row["kind"]), "severity": Severity(row["severity"]),
                      "webhooks": tuple(row["webhooks"] or ()),
                      "channels": tuple(row.get("channels") or ()),
                      "recipients": tuple(row.get("recipients") or ())})  # fmt: skip

    def covers(self, pipeline_id: str) -> bool:
        return self.enabled and self.pipeline_id in (None, pipeline_id)


@dataclass(frozen=True)
class Verdict:
    """What a rule says about a pipeline after a run (or a schedule check)."""

    firing: bool
    title: str = ""
    message: str = ""  # firing: what happened; else: why it cleared (the resolution)
    evidence: tuple[str, ...] = ()  # firing: run ids behind a new alert
    occurrence: bool = True  # firing: this run is one more occurrence (else: still true)


@dataclass(frozen=True)
class RunMark:
    """What the judges need of a finished run."""

    id: str
    status: str
    created_at: datetime
    completed_at: datetime
    duration: float | None


class RecentRuns:
    """Each pipeline's latest finished runs (completed or failed), in the order they finished:
    read from the store once per pipeline, then told of every run the alerts thread judges, so
    judging a run reads nothing (a store read would wait for the write queue's flush)."""

    def __init__(
        self,
        store: Store,
        keep: int = ANOMALY_HISTORY,
        stage_types: Callable[[ExecutionRecord], set[str]] | None = None,
    ):
        self.store = store
        self.keep = keep
        self.stage_types = stage_types  # a run's stage types, where known without a read
        self._runs: dict[str, deque[RunMark]] = {}
        self._ids: dict[str, set[str]] = {}

    def of(self, pipeline_id: str) -> deque[RunMark]:
        if pipeline_id not in self._runs:
            found = self.store.query(
                "SELECT id, status, created_at, completed_at,"
                " epoch(completed_at) - epoch(started_at) FROM flexiroaster.executions"
                " WHERE pipeline_id = ? AND status IN ('completed', 'failed')"
                " AND completed_at IS NOT NULL ORDER BY completed_at DESC, id DESC LIMIT ?",
                [pipeline_id, self.keep],
            )
            marks = [RunMark(*row) for row in reversed(found)]
            self._runs[pipeline_id] = deque(marks, maxlen=self.keep)
            self._ids[pipeline_id] = {m.id for m in marks}
        return self._runs[pipeline_id]

    def add(self, rec: ExecutionRecord) -> None:
        if rec.status not in (RunStatus.COMPLETED, RunStatus.FAILED) or rec.completed_at is None:
            return
        runs, ids = self.of(rec.pipeline_id), self._ids[rec.pipeline_id]
        if rec.id in ids:
            return  # read with the pipeline's first load
        if len(runs) == runs.maxlen:
            ids.discard(runs[0].id)
        runs.append(RunMark(rec.id, rec.status, rec.created_at, rec.completed_at, rec.duration))
        ids.add(rec.id)

    def forget(self, pipeline_id: str) -> None:
        self._runs.pop(pipeline_id, None)
        self._ids.pop(pipeline_id, None)


def secs(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


# --- the judges: (rule, finished run, recent runs, now) -> a verdict, or None for no change ---
# The run being judged is already in RecentRuns.

Judge = Callable[[Rule, ExecutionRecord, RecentRuns, datetime], Verdict | None]


def run_failed(rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime) -> Verdict:
    if rec.status == RunStatus.COMPLETED:
        return Verdict(False, message=f"run {rec.id} completed")
    return Verdict(
        True,
        f"{rec.pipeline_id}: run failed",
        f"run {rec.id} failed: {rec.error or 'no error recorded'}",
        (rec.id,),
    )


def consecutive_failures(
    rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime
) -> Verdict | None:
    if rec.status == RunStatus.COMPLETED:
        return Verdict(False, message=f"run {rec.id} completed, ending the failures")
    n = int(rule.threshold or 2)
    latest = [m for m in recent.of(rec.pipeline_id) if m.completed_at <= rec.completed_at][-n:]
    if len(latest) < n or any(m.status != "failed" for m in latest):
        return None  # not (yet) n in a row
    return Verdict(
        True,
        f"{rec.pipeline_id}: {n} failed runs in a row",
        f"run {rec.id} failed, the last {n} runs all failed: {rec.error or 'no error recorded'}",
        tuple(m.id for m in latest),
    )


def duration_limit(
    rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime
) -> Verdict | None:
    took, limit = rec.duration, rule.threshold or 0.0
    if took is None:
        return None
    if took > limit:
        return Verdict(
            True,
            f"{rec.pipeline_id}: run over {secs(limit)}",
            f"run {rec.id} ({rec.status}) took {secs(took)}, over the {secs(limit)} limit",
            (rec.id,),
        )
    if rec.status != RunStatus.COMPLETED:
        return None  # a quick failure says nothing about how long the work takes
    return Verdict(False, message=f"run {rec.id} took {secs(took)}, within {secs(limit)}")


def duration_anomaly(
    rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime
) -> Verdict | None:
    """The run against its pipeline's earlier runs (insights' robust z-score of log duration)."""
    if rec.status != RunStatus.COMPLETED or rec.duration is None:
        return None
    from . import history as insights

    earlier = sorted(
        (m for m in recent.of(rec.pipeline_id) if m.created_at <= rec.created_at),
        key=lambda m: (m.created_at, m.id),
    )
    if len(earlier) <= insights.MIN_RUNS:
        return None  # too little history to tell what is normal
    prior = [m.duration for m in earlier if m.status == "completed" and m.id != rec.id]
    h = insights.duration_z(prior, rec.duration)  # type: ignore[arg-type]
    if h is None or not h["anomalous"]:
        return Verdict(False, message=f"run {rec.id} took {secs(rec.duration)}, as usual")
    return Verdict(
        True,
        f"{rec.pipeline_id}: run {'much slower' if h['z'] > 0 else 'much faster'} than usual",
        f"run {rec.id} took {secs(rec.duration)}; expected {secs(h['expected_low'])} to"
        f" {secs(h['expected_high'])} from the pipeline's latest runs",
        (rec.id,),
    )


def missed_schedules(
    rule: Rule, store: Store, at: datetime
) -> dict[str, list[tuple[str, str, datetime]]]:
    """Enabled cron and interval schedules in the rule's scope whose next fire time passed
    more than the rule's threshold before `at`, by pipeline: [(id, name, next_run_at)]."""
    cutoff = at - timedelta(seconds=rule.threshold or 0.0)
    found = store.query(
        "SELECT id, name, pipeline_id, next_run_at FROM flexiroaster.schedules"
        " WHERE enabled AND type IN ('cron', 'interval') AND next_run_at < ?"
        " AND (CAST(? AS VARCHAR) IS NULL OR pipeline_id = ?) ORDER BY id",
        [cutoff, rule.pipeline_id, rule.pipeline_id],
    )
    out: dict[str, list[tuple[str, str, datetime]]] = {}
    for sid, name, pid, due in found:
        out.setdefault(pid, []).append((sid, name, due))
    return out


def schedule_late(
    rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime
) -> Verdict | None:
    """A scheduled run that started more than the threshold after its fire time."""
    if rec.scheduled_for is None or not rec.trigger.startswith("schedule:"):
        return None
    late = ((rec.started_at or rec.created_at) - rec.scheduled_for).total_seconds()
    allowed = rule.threshold or 0.0
    sid = rec.trigger.partition(":")[2]
    if late > allowed:
        return Verdict(
            True,
            f"{rec.pipeline_id}: scheduled run late",
            f"run {rec.id} of schedule {sid!r} started {secs(late)} after its fire time"
            f" {rec.scheduled_for.isoformat()} ({secs(allowed)} allowed)",
            (rec.id,),
        )
    if missed_schedules(rule, recent.store, at).get(rec.pipeline_id):
        return None  # on time, but another schedule of the pipeline is still missing runs
    return Verdict(False, message=f"run {rec.id} of schedule {sid!r} started on time")


def _validation_failed(statuses: list[str], metrics: list[Any]) -> bool:
    """A validation stage failed, or recorded a failing check (on_failure: warn, quarantine)."""
    checks = [
        c
        for m in metrics
        for c in ((json.loads(m) if isinstance(m, str) else m) or {}).get("checks", [])
    ]
    return "failed" in statuses or any(c.get("passed") is False for c in checks)


def validation_failure_rate(
    rule: Rule, rec: ExecutionRecord, recent: RecentRuns, at: datetime
) -> Verdict | None:
    """The share of the latest window_runs runs that validated something in which it failed."""
    if recent.stage_types is not None and "validation" not in recent.stage_types(rec):
        return None  # the run had no validation stage: nothing to read
    window = rule.window_runs or DEFAULT_WINDOW
    found = recent.store.query(
        "SELECT e.id, list(s.status), list(s.metrics) FROM flexiroaster.executions e"
        " JOIN flexiroaster.stage_executions s ON s.execution_id = e.id"
        " WHERE e.pipeline_id = ? AND e.status IN ('completed', 'failed')"
        " AND e.completed_at <= ? AND s.stage_type = 'validation'"
        " AND s.status IN ('completed', 'failed')"
        " GROUP BY e.id, e.completed_at ORDER BY e.completed_at DESC, e.id DESC LIMIT ?",
        [rec.pipeline_id, rec.completed_at, window],
    )
    if not found or found[0][0] != rec.id:
        return None  # this run validated nothing
    bad = [run_id for run_id, statuses, metrics in found if _validation_failed(statuses, metrics)]
    rate, limit = 100.0 * len(bad) / len(found), rule.threshold or 0.0
    if rate <= limit:
        return Verdict(
            False,
            message=f"validation failed in {rate:.0f}% of the last {len(found)} runs"
            f" ({limit:g}% allowed)",
        )
    return Verdict(
        True,
        f"{rec.pipeline_id}: validation failing in {rate:.0f}% of runs",
        f"validation failed in {len(bad)} of the last {len(found)} runs ({rate:.0f}%,"
        f" {limit:g}% allowed)",
        tuple(reversed(bad)),
        occurrence=bool(bad) and bad[0] == rec.id,
    )


JUDGES: dict[RuleKind, Judge] = {
    RuleKind.RUN_FAILED: run_failed,
    RuleKind.CONSECUTIVE_FAILURES: consecutive_failures,
    RuleKind.DURATION_LIMIT: duration_limit,
    RuleKind.DURATION_ANOMALY: duration_anomaly,
    RuleKind.SCHEDULE_LATE: schedule_late,
    RuleKind.VALIDATION_FAILURE_RATE: validation_failure_rate,
}
