"""Airflow's way in: authenticated trigger and task-state callbacks for the runs a DAG drives.

No Airflow import here: Airflow calls the API (api/airflow.py), this module decides. A request
carries FLEXIROASTER_AIRFLOW_SECRET either as is (`X-Airflow-Secret`) or as the key of a
signature over the body, the way alert webhooks are signed (webhooks.py):

    X-Airflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.".encode() + body)>

A signature more than 300 s away from the runtime's clock, or one already used, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import Conflict, FlexiError, Unauthorized
from .records import ExecutionRecord, execution_from_row, now
from .webhooks import new_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from .runtime import Runtime

WINDOW = 300  # seconds a signature is good for, either side of the runtime's clock
ID_LEN = 250  # Airflow's own limit on dag, run and task ids

State = Literal["running", "success", "failure", "retry", "cancelled", "skipped"]
FINAL = frozenset({"success", "failure", "cancelled", "skipped"})
# Airflow's callback names (BaseOperator's on_*_callback) and the state each one reports.
CALLBACK_TYPES: dict[str, str] = {
    "on_execute_callback": "running",
    "on_success_callback": "success",
    "on_failure_callback": "failure",
    "on_retry_callback": "retry",
    "on_skipped_callback": "skipped",
}
CallbackType = Literal[
    "on_execute_callback", "on_success_callback", "on_failure_callback", "on_retry_callback",
    "on_skipped_callback", "running", "success", "failure", "retry", "cancelled", "skipped",
]  # fmt: skip
LEVELS = {"running": "INFO", "success": "INFO", "retry": "WARN", "skipped": "WARN",
          "cancelled": "WARN", "failure": "ERROR"}  # fmt: skip
SAID = {"running": "started", "success": "succeeded", "failure": "failed",
        "retry": "failed and will be retried", "cancelled": "was cancelled",
        "skipped": "was skipped"}  # fmt: skip


def _iso_8601(value: Any) -> datetime:
    """An ISO 8601 time (pydantic alone would also read numbers as Unix times); UTC if no zone."""
    if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d|$)", value):
        try:  # Airflow sends UTC; a time without a zone is taken as UTC
            parsed = datetime.fromisoformat(value)
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            pass
    raise ValueError("expected an ISO 8601 date and time, e.g. 2026-01-31T09:30:00Z")


# --- request bodies --------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


class TriggerIn(BaseModel):
    """POST /airflow/trigger: start a run for an Airflow task (once per task and DAG run)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    pipeline_id: str = Field(min_length=1, max_length=200, description="The stored pipeline")
    dag_id: str = Field(min_length=1, max_length=ID_LEN, description="Airflow's dag_id")
    dag_run_id: str = Field(min_length=1, max_length=ID_LEN, description="Airflow's run_id")
    task_id: str = Field(min_length=1, max_length=ID_LEN, description="The calling task")
    run_conf: dict[str, Any] = Field(
        default_factory=dict,
        description="Becomes the run's parameters (dag_run.conf): strings, numbers, booleans, null",
    )
    mode: Literal["trigger", "stages"] = Field(
        "trigger",
        description="trigger: FlexiRoaster runs the pipeline here; stages: Airflow tasks run"
        " its stages and report each through /airflow/callback",
    )

    @field_validator("run_conf")
    @classmethod
    def _scalars(cls, conf: dict[str, Any]) -> dict[str, Any]:
        for key, value in conf.items():
            if not isinstance(value, str | int | float | bool | None):
                raise ValueError(
                    f"{key!r} is a {type(value).__name__}; a run parameter is a string, number,"
                    " boolean or null"
                )
        return conf


LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")  # of the lines a stage task sends


class CallbackIn(BaseModel):
    """POST /airflow/callback: the state of one Airflow task of a run's DAG run."""

    model_config = ConfigDict(extra="forbid", strict=True)
    execution_id: str = Field(min_length=1, max_length=200, description="The FlexiRoaster run")
    dag_id: str = Field(min_length=1, max_length=ID_LEN)
    dag_run_id: str = Field(min_length=1, max_length=ID_LEN)
    task_id: str = Field(min_length=1, max_length=ID_LEN)
    try_number: int = Field(1, ge=0, le=100_000, description="Airflow's try_number")
    state: State | None = Field(None, description="The task's state (or give callback_type)")
    callback_type: CallbackType | None = Field(
        None,
        description="Airflow's callback name (on_success_callback ...) or a state; the same as"
        " `state` when both are given",
    )
    message: str | None = Field(None, max_length=10_000)
    error: str | None = Field(None, max_length=100_000, description="What failed (failure)")
    start_date: datetime | None = Field(None, description="ISO 8601")
    end_date: datetime | None = Field(None, description="ISO 8601")
    rows_in: int | None = Field(None, ge=0, le=2**62, description="stages mode: rows read")
    rows_out: int | None = Field(None, ge=0, le=2**62, description="stages mode: rows written")
    metrics: dict[str, Any] | None = Field(None, description="stages mode: the stage's metrics")
    logs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=10_000, description="stages mode: the stage's log lines, [level, message]"
    )

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        return None if value is None else _iso_8601(value)

    @model_validator(mode="after")
    def _one_state(self) -> CallbackIn:
        named = CALLBACK_TYPES.get(self.callback_type or "", self.callback_type)
        if self.state is None and named is None:
            raise ValueError("state: give `state` or `callback_type`")
        if self.state is not None and named is not None and named != self.state:
            raise ValueError(
                f"state: {self.state!r} disagrees with callback_type {self.callback_type!r}"
                f" (which means {named!r})"
            )
        self.state = self.state or named  # type: ignore[assignment]
        return self


class InvalidAirflowBody(FlexiError):
    status = 422
    code = "invalid_request"


def _unicode_problem(value: Any, path: str = "") -> str | None:
    """Where a JSON string escape left a lone surrogate (not storable text), if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for k, v in value.items():
            hit = _unicode_problem(k, path) or _unicode_problem(v, f"{path}.{k}" if path else k)
            if hit:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if hit := _unicode_problem(v, f"{path}[{i}]"):
                return hit
    return None


def parse(model: type[M], raw: bytes) -> M:
    """The body as `model`, or a 422 naming each field that is wrong."""
    try:
        data = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAirflowBody(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise InvalidAirflowBody(f"the body must be a JSON object, got {got}")
    if where := _unicode_problem(data):
        raise InvalidAirflowBody(f"{where}: a lone surrogate escape is not text")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
        raise InvalidAirflowBody("; ".join(lines)) from None


# --- stored callbacks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """A row of flexiroaster.airflow_callbacks."""

    id: str
    execution_id: str
    dag_id: str
    dag_run_id: str
    task_id: str
    try_number: int
    state: str
    message: str | None
    error: str | None
    start_date: datetime | None
    end_date: datetime | None
    received_at: datetime
    payload: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Callback:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


def _refusal(prior: list[Callback], body: CallbackIn) -> str | None:
    """Why `body` cannot follow the task's earlier callbacks (None: it can).

    Per task: running → success | failure | retry | cancelled | skipped within one try; after
    that try ended only a higher try_number may report (Airflow's next try, or a cleared task).
    The first callback of a try may be any state: not every DAG sets on_execute_callback."""
    if not prior:
        return None
    top = max(c.try_number for c in prior)
    task = f"task {body.task_id!r}"
    if body.try_number < top:
        return f"{task} already reported try {top}; a callback for try {body.try_number} is stale"
    if body.try_number > top:
        return None
    last = [c for c in prior if c.try_number == top][-1]
    if last.state in FINAL or last.state == "retry":
        nxt = "the next try (a higher try_number)"
        return (
            f"{task} try {top} already ended with {last.state}; {body.state} must come with {nxt}"
        )
    return None


# --- the link --------------------------------------------------------------------------------


class AirflowLink:
    """Checks Airflow's credentials, starts runs once per Airflow task and records task states."""

    def __init__(self, rt: Runtime, clock: Callable[[], float] = time.time):
        self.rt = rt
        self.clock = clock
        self._lock = threading.Lock()  # a check-then-write at a time (trigger, callback)
        self._seen: dict[str, float] = {}  # signature MAC -> its t, while inside the window
        self._seen_lock = threading.Lock()

    # --- authentication ---

    def authenticate(self, given: str | None, signature: str | None, raw: bytes) -> None:
        """Accept a request with the secret (`given`, X-Airflow-Secret) or a fresh, valid
        signature of its body (X-Airflow-Signature); else raise 401."""
        secret = self.rt.settings.airflow_secret
        if secret is None:
            raise Unauthorized(
                "the Airflow endpoints are off: FLEXIROASTER_AIRFLOW_SECRET is not set on the runtime"
            )
        key = secret.get_secret_value().encode()
        if given and hmac.compare_digest(given.encode(), key):
            return
        if signature:
            problem = self._check_signature(key, signature, raw)
            if problem is None:
                return
            raise Unauthorized(problem)
        if given:
            raise Unauthorized(
                "wrong X-Airflow-Secret: it must equal the runtime's FLEXIROASTER_AIRFLOW_SECRET"
            )
        raise Unauthorized(
            "missing Airflow credentials: send X-Airflow-Secret: <FLEXIROASTER_AIRFLOW_SECRET>, or"
            ' X-Airflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}." + body>'
        )

    def _check_signature(self, key: bytes, header: str, raw: bytes) -> str | None:
        parts = dict(p.strip().partition("=")[::2] for p in header.split(","))
        t, v1 = parts.get("t", ""), parts.get("v1", "").lower()
        if not (t.isascii() and t.isdigit() and len(t) <= 12 and v1):
            return "X-Airflow-Signature is not t=<unix seconds>,v1=<hex HMAC-SHA256>"
        current = self.clock()
        age = current - int(t)
        if age > WINDOW:
            return (
                f"X-Airflow-Signature was made {age:.0f} s ago; signatures older than {WINDOW} s"
                " are refused as replays (sign each request when it is sent; check the clocks)"
            )
        if age < -WINDOW:
            return (
                f"X-Airflow-Signature's time is {-age:.0f} s in the future: refused, the clocks of"
                f" Airflow and the runtime differ by more than {WINDOW} s"
            )
        mac = hmac.new(key, f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.encode(), v1.encode()):
            return (
                "X-Airflow-Signature does not match the body: v1 must be the hex HMAC-SHA256, keyed"
                ' with FLEXIROASTER_AIRFLOW_SECRET, of f"{t}." followed by the raw body as sent'
            )
        with self._seen_lock:
            for old, when in list(self._seen.items()):
                if when < current - WINDOW:
                    del self._seen[old]
            if mac in self._seen:
                return (
                    "this X-Airflow-Signature was already used: a replayed request is refused"
                    " (sign each request anew)"
                )
            self._seen[mac] = int(t)
        return None

    # --- trigger ---

    def trigger(self, body: TriggerIn) -> tuple[ExecutionRecord, bool]:
        """The run of this Airflow task and DAG run, started now (True) or earlier (False)."""
        lineage = {"dag_id": body.dag_id, "dag_run_id": body.dag_run_id,
                   "task_id": body.task_id, "mode": body.mode}  # fmt: skip
        with self._lock:  # a task's retry racing its first call still finds one run
            found = self.rt.store.rows(
                "executions",
                "pipeline_id = ? AND lineage->>'dag_id' = ? AND lineage->>'dag_run_id' = ?"
                " AND lineage->>'task_id' = ?",
                [body.pipeline_id, body.dag_id, body.dag_run_id, body.task_id],
                order="created_at",
                limit=1,
            )
            if found:
                return execution_from_row(found[0]), False
            self.rt.get_pipeline(body.pipeline_id)  # 404 for an unknown one, in either mode
            if body.mode == "stages":
                rec = self.rt.start_external(body.pipeline_id, body.run_conf, lineage)
            else:
                rec = self.rt.trigger(
                    body.pipeline_id, body.run_conf, trigger="airflow", lineage=lineage
                )
        self.rt.store.audit(
            "airflow",
            "run.start",
            "run",
            rec.id,
            {"pipeline_id": rec.pipeline_id, "lineage": lineage},
        )
        return rec, True

    # --- callbacks ---

    def callbacks(self, execution_id: str) -> list[Callback]:
        """The callbacks stored for a run, in the order they arrived (404 for an unknown run)."""
        self.rt.store.get_execution(execution_id)
        return self._stored(execution_id)

    def _stored(self, execution_id: str, task_id: str | None = None) -> list[Callback]:
        where, args = "execution_id = ?", [execution_id]
        if task_id is not None:
            where, args = where + " AND task_id = ?", [*args, task_id]
        rows = self.rt.store.rows("airflow_callbacks", where, args, order="received_at, id")
        return [Callback.from_row(r) for r in rows]

    @staticmethod
    def check_lineage(
        rec: ExecutionRecord, dag_id: str, dag_run_id: str, what: str
    ) -> dict[str, Any]:
        """The run's lineage, when `dag_id`/`dag_run_id` started it; else a Conflict."""
        lineage = rec.lineage
        if not lineage:
            raise Conflict(
                f"run {rec.id} was not started by Airflow (it has no DAG lineage); {what}s"
                " belong to runs started through POST /api/v1/airflow/trigger"
            )
        if (dag_id, dag_run_id) != (lineage.get("dag_id"), lineage.get("dag_run_id")):
            raise Conflict(
                f"{what} for DAG run {dag_id}/{dag_run_id}, but the run was started"
                f" by {lineage.get('dag_id')}/{lineage.get('dag_run_id')}"
            )
        return lineage

    def callback(self, body: CallbackIn) -> tuple[ExecutionRecord, bool]:
        """Record a task state of a run's DAG run; returns the run and whether it was a repeat."""
        rt = self.rt
        rec = rt.store.get_execution(body.execution_id)
        lineage = self.check_lineage(rec, body.dag_id, body.dag_run_id, "callback")
        with self._lock:
            prior = self._stored(rec.id, body.task_id)
            if any(c.try_number == body.try_number and c.state == body.state for c in prior):
                return rec, True
            if why := _refusal(prior, body):
                raise Conflict(why)
            stage = self._stage(rec, body.task_id) if lineage.get("mode") == "stages" else None
            if stage is not None:
                rec = rt.external_stage(
                    rec.id, stage, body.state, try_number=body.try_number,
                    start_date=body.start_date, end_date=body.end_date, error=body.error,
                    rows_in=body.rows_in, rows_out=body.rows_out, metrics=body.metrics, quiet=True,
                    logs=[(lv if lv in LOG_LEVELS else "INFO", msg) for lv, msg in body.logs or []],
                )  # fmt: skip
            self._store(rec, body, stage)
        cancels = (
            lineage.get("mode", "trigger") == "trigger"
            and body.task_id == lineage.get("task_id")
            and body.state in ("failure", "cancelled")
        )
        if cancels and rt.engine.live(rec.id) is not None:
            # Logged first, so the run's log says why before it tells of the cancel itself.
            rt.store.log(
                rec.id, None, "WARN",
                f"cancelling the run: its Airflow task {body.task_id!r} reported {body.state}"
                f" (try {body.try_number}), so the DAG run {body.dag_id}/{body.dag_run_id} gave up"
                " on it",
            )  # fmt: skip
        if cancels and rt.engine.cancel(rec.id, f"Airflow task {body.task_id} {body.state}"):
            rt.store.audit(
                "airflow", "run.cancel", "run", rec.id,
                {"pipeline_id": rec.pipeline_id, "task_id": body.task_id, "state": body.state},
            )  # fmt: skip
            rt.engine.wait(rec.id, timeout=5)
            rec = rt.store.get_execution(rec.id)
        return rec, False

    def _stage(self, rec: ExecutionRecord, task_id: str) -> str | None:
        ids = {s.stage_id for s in self.rt.store.get_stages(rec.id)}
        return task_id if task_id in ids else None

    def _store(self, rec: ExecutionRecord, body: CallbackIn, stage: str | None) -> None:
        rt, state = self.rt, body.state
        assert state is not None  # CallbackIn fills it in
        row = {
            "id": new_id(), "execution_id": rec.id, "dag_id": body.dag_id,
            "dag_run_id": body.dag_run_id, "task_id": body.task_id,
            "try_number": body.try_number, "state": state, "message": body.message,
            "error": body.error, "start_date": body.start_date, "end_date": body.end_date,
            "received_at": now(),
            # The body as accepted; a stage's log lines went to the run's log, not in here.
            "payload": body.model_dump(mode="json", exclude_none=True, exclude={"logs"}),
        }  # fmt: skip
        rt.store.put_rows("airflow_callbacks", [row])
        rt.store.audit(
            "airflow", "airflow.callback", "run", rec.id,
            {"dag_id": body.dag_id, "dag_run_id": body.dag_run_id, "task_id": body.task_id,
             "try_number": body.try_number, "state": state, "callback_id": row["id"]},
        )  # fmt: skip
        text = f"Airflow task {body.task_id!r} (try {body.try_number}) {SAID[state]}"
        if body.message:
            text += f": {body.message}"
        if body.error and state in ("failure", "retry"):
            text += f" — error: {body.error}"
        rt.store.log(
            rec.id, stage, LEVELS[state], text,
            {"airflow": {"dag_id": body.dag_id, "dag_run_id": body.dag_run_id,
                         "task_id": body.task_id, "try_number": body.try_number,
                         "state": state}},
        )  # fmt: skip
