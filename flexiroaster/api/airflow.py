"""Airflow endpoints: start a run for an Airflow task, take its task states, list them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..airflow_link import Callback, CallbackIn, M, TriggerIn, parse
from ..errors import StageError
from ..external import StageFailed
from ..runtime import Runtime
from .deps import runtime
from .errors import documented
from .executions import _fresh
from .models import ErrorOut, ExecutionOut, _Out

router = APIRouter(prefix="/airflow", tags=["airflow"])

SECRET = Header(
    None,
    description="FLEXIROASTER_AIRFLOW_SECRET as is (or sign the body with X-Airflow-Signature)",
)
SIGNATURE = Header(
    None,
    description='t=<unix seconds>,v1=<hex HMAC-SHA256 keyed with the secret, of f"{t}." + body>;'
    " good for 300 s, once",
)


class CallbackOut(_Out):
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
    payload: dict[str, Any] | None = Field(description="The callback's body as accepted")

    @classmethod
    def of(cls, c: Callback) -> CallbackOut:
        return cls(**c.__dict__)


class CallbackList(_Out):
    execution_id: str
    callbacks: list[CallbackOut] = Field(description="In the order they arrived")
    total: int


class CallbackAnswer(_Out):
    accepted: bool
    duplicate: bool = Field(
        description="The same task, try and state came before: not stored again"
    )
    execution: ExecutionOut


def _errors(*statuses: int) -> dict[int | str, dict]:
    return documented(*statuses) | {
        401: {"model": ErrorOut, "description": "Missing or wrong Airflow secret or signature"}
    }


def _body(model: type[BaseModel]) -> dict:
    """The request body's OpenAPI schema: the route reads the raw bytes (for the signature)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def _authenticated(
    model: type[M], request: Request, rt: Runtime, secret: str | None, signature: str | None
) -> M:
    """The request's body as `model`, once its secret or signature checks out (the signature
    covers the raw bytes, so the body is read here rather than by FastAPI)."""
    raw = await request.body()
    rt.airflow.authenticate(secret, signature, raw)
    return parse(model, raw)


@router.post(
    "/trigger",
    status_code=202,
    response_model=ExecutionOut,
    responses={200: {"model": ExecutionOut, "description": "The run this task started before"}}
    | _errors(400, 401, 404, 409, 413, 422),
    openapi_extra=_body(TriggerIn),
)
async def trigger(
    request: Request,
    response: Response,
    rt: Runtime = Depends(runtime),
    x_airflow_secret: str | None = SECRET,
    x_airflow_signature: str | None = SIGNATURE,
) -> ExecutionOut:
    """Start a run of a pipeline for an Airflow task (202), or answer with the run the same task
    of the same DAG run started before (200): a retried task does not start a second run.

    Authenticated by the Airflow secret (X-Airflow-Secret or X-Airflow-Signature), not by the
    API's bearer token. `mode: stages` records a run whose stages Airflow tasks execute."""
    body = await _authenticated(TriggerIn, request, rt, x_airflow_secret, x_airflow_signature)
    rec, started = await run_in_threadpool(rt.airflow.trigger, body)
    if not started:
        response.status_code = 200
    return ExecutionOut.of(_fresh(rt, rec))


@router.post(
    "/callback",
    response_model=CallbackAnswer,
    responses=_errors(400, 401, 404, 409, 413, 422),
    openapi_extra=_body(CallbackIn),
)
async def callback(
    request: Request,
    rt: Runtime = Depends(runtime),
    x_airflow_secret: str | None = SECRET,
    x_airflow_signature: str | None = SIGNATURE,
) -> CallbackAnswer:
    """Record the state of an Airflow task of the run's DAG run: stored, audited and logged on
    the run. The same task, try and state again is a `duplicate` (stored once); a state that
    cannot follow the task's earlier ones is a 409. In `stages` mode a task named after a stage
    sets that stage's state; in `trigger` mode a failed or cancelled triggering task cancels the
    run if it is still going.

    Authenticated by the Airflow secret (X-Airflow-Secret or X-Airflow-Signature), not by the
    API's bearer token."""
    body = await _authenticated(CallbackIn, request, rt, x_airflow_secret, x_airflow_signature)

    def record() -> ExecutionOut:
        rec, duplicate = rt.airflow.callback(body)
        out = ExecutionOut.of(_fresh(rt, rec), rt.store.get_stages(rec.id))
        return CallbackAnswer(accepted=True, duplicate=duplicate, execution=out)

    return await run_in_threadpool(record)


class StageIn(BaseModel):
    """POST /airflow/stage: run a stage that reads or writes the runtime's tables."""

    model_config = ConfigDict(extra="forbid", strict=True)
    execution_id: str = Field(min_length=1, max_length=200)
    dag_id: str = Field(min_length=1, max_length=250)
    dag_run_id: str = Field(min_length=1, max_length=250)
    task_id: str = Field(min_length=1, max_length=250)
    stage_id: str = Field(min_length=1, max_length=250)
    try_number: int = Field(1, ge=0, le=100_000)


class StageAnswer(_Out):
    ok: bool = Field(description="Whether the stage succeeded (the task reports the outcome)")
    error: str | None
    rows_in: int | None
    rows_out: int | None
    metrics: dict[str, Any]
    duration: float | None


@router.post(
    "/stage",
    response_model=StageAnswer,
    responses=_errors(400, 401, 404, 409, 413, 422),
    openapi_extra=_body(StageIn),
)
async def run_stage(
    request: Request,
    rt: Runtime = Depends(runtime),
    x_airflow_secret: str | None = SECRET,
    x_airflow_signature: str | None = SIGNATURE,
) -> StageAnswer:
    """Run one stage of a stages-mode run here, from the warehouse's Parquet inputs, for a
    stage that reads or writes the runtime's tables (only the runtime opens the store). The
    stage is recorded running; the Airflow task reports success, retry or failure after.

    Authenticated by the Airflow secret, not by the API's bearer token."""
    body = await _authenticated(StageIn, request, rt, x_airflow_secret, x_airflow_signature)
    rt.airflow.check_lineage(
        rt.store.get_execution(body.execution_id), body.dag_id, body.dag_run_id, "stage request"
    )

    def go() -> StageAnswer:
        try:
            done = rt.external.run_stage(body.execution_id, body.stage_id, body.try_number)
        except (StageError, StageFailed) as exc:  # the stage's own failure, not the request's
            return StageAnswer(
                ok=False, error=f"{type(exc).__name__}: {exc}", rows_in=None, rows_out=None,
                metrics={}, duration=None,
            )  # fmt: skip
        return StageAnswer(
            ok=True, error=None, rows_in=done.rows_in, rows_out=done.rows_out,
            metrics=done.metrics, duration=done.duration,
        )  # fmt: skip

    return await run_in_threadpool(go)


@router.get(
    "/callbacks/{execution_id}", response_model=CallbackList, responses=documented(404, 422)
)
def callbacks(execution_id: str, rt: Runtime = Depends(runtime)) -> CallbackList:
    """The task states Airflow reported for a run, oldest first."""
    found = rt.airflow.callbacks(execution_id)
    return CallbackList(
        execution_id=execution_id, callbacks=[CallbackOut.of(c) for c in found], total=len(found)
    )
