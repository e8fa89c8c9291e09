"""Schedules: CRUD, pause/resume, run-now, preview of fire times; webhooks that start runs."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from ..runtime import Runtime
from ..scheduler import Schedule, ScheduleIn
from .deps import require_token, runtime
from .errors import InvalidBody, documented
from .models import ExecutionOut, PreviewOut, ScheduleCreated, ScheduleList, ScheduleOut

router = APIRouter(prefix="/schedules", tags=["schedules"])
hooks = APIRouter(prefix="/hooks", tags=["schedules"])


def _last_statuses(rt: Runtime, schedules: list[Schedule]) -> dict[str, str]:
    """Status of each schedule's last run: live from the engine, else one store query."""
    ids = [s.last_run_id for s in schedules if s.last_run_id]
    if not ids:
        return {}
    found = dict(
        rt.store.query(
            "SELECT id, status FROM flexiroaster.executions WHERE id IN (SELECT unnest(?))", [ids]
        )
    )
    for i in ids:
        live = rt.engine.live(i)
        if live is not None:
            found[i] = str(live.status)
    return found


def _out(rt: Runtime, s: Schedule) -> ScheduleOut:
    return ScheduleOut.of(s, _last_statuses(rt, [s]).get(s.last_run_id or ""))


def _preview(rt: Runtime, body: ScheduleIn | Schedule, n: int) -> PreviewOut:
    times = rt.scheduler.preview(body, n)
    tz = ZoneInfo(body.timezone)
    return PreviewOut(
        timezone=body.timezone,
        times=times,
        local_times=[t.astimezone(tz).isoformat() for t in times],
    )


@router.get("", response_model=ScheduleList, responses=documented(422))
def list_schedules(
    rt: Runtime = Depends(runtime), pipeline_id: str | None = Query(None, max_length=200)
) -> ScheduleList:
    found = rt.scheduler.schedules(pipeline_id)
    statuses = _last_statuses(rt, found)
    return ScheduleList(
        schedules=[ScheduleOut.of(s, statuses.get(s.last_run_id or "")) for s in found],
        total=len(found),
    )


@router.post(
    "",
    status_code=201,
    response_model=ScheduleCreated,
    responses=documented(400, 401, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def create_schedule(body: ScheduleIn, rt: Runtime = Depends(runtime)) -> ScheduleCreated:
    """Create a schedule. A webhook's secret is in this answer only (it is stored hashed)."""
    s, secret = rt.scheduler.create(body)
    return ScheduleCreated(**ScheduleOut.of(s).model_dump(), secret=secret)


@router.post("/preview", response_model=PreviewOut, responses=documented(400, 413, 422))
def preview_unsaved(
    body: ScheduleIn, rt: Runtime = Depends(runtime), n: int = Query(10, ge=1, le=100)
) -> PreviewOut:
    """The next fire times of a schedule that is not saved (for an editor)."""
    return _preview(rt, body, n)


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=documented(404, 422))
def get_schedule(schedule_id: str, rt: Runtime = Depends(runtime)) -> ScheduleOut:
    return _out(rt, rt.scheduler.get(schedule_id))


@router.put(
    "/{schedule_id}",
    response_model=ScheduleOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def update_schedule(
    schedule_id: str, body: ScheduleIn, rt: Runtime = Depends(runtime)
) -> ScheduleOut:
    """Change a schedule (its id stays; a webhook keeps its secret unless a new one is given)."""
    return _out(rt, rt.scheduler.update(schedule_id, body))


@router.delete(
    "/{schedule_id}",
    status_code=204,
    responses=documented(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def delete_schedule(schedule_id: str, rt: Runtime = Depends(runtime)) -> Response:
    rt.scheduler.delete(schedule_id)
    return Response(status_code=204)


@router.post(
    "/{schedule_id}/pause",
    response_model=ScheduleOut,
    responses=documented(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def pause_schedule(schedule_id: str, rt: Runtime = Depends(runtime)) -> ScheduleOut:
    return _out(rt, rt.scheduler.pause(schedule_id))


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleOut,
    responses=documented(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def resume_schedule(schedule_id: str, rt: Runtime = Depends(runtime)) -> ScheduleOut:
    """Enable again; the next time is computed from now."""
    return _out(rt, rt.scheduler.resume(schedule_id))


@router.post(
    "/{schedule_id}/run-now",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def run_now(schedule_id: str, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Start a run now; the next scheduled time does not move."""
    return ExecutionOut.of(rt.scheduler.run_now(schedule_id))


@router.get("/{schedule_id}/preview", response_model=PreviewOut, responses=documented(404, 422))
def preview(
    schedule_id: str, rt: Runtime = Depends(runtime), n: int = Query(10, ge=1, le=100)
) -> PreviewOut:
    """The next `n` fire times (timezone-aware); for a paused schedule, as if resumed now."""
    return _preview(rt, rt.scheduler.get(schedule_id), n)


HOOK_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "Becomes the run's parameters"}
            }
        },
    }
}


@hooks.post(
    "/{path}",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    openapi_extra=HOOK_BODY,
)
async def webhook(
    path: str,
    request: Request,
    rt: Runtime = Depends(runtime),
    x_webhook_secret: str = Header("", description="The schedule's secret"),
) -> ExecutionOut:
    """Start a run of a webhook schedule's pipeline with the JSON body as parameters. Needs the
    schedule's secret, not the API token."""
    raw = await request.body()
    params: Any = {}
    if raw.strip():
        try:
            params = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidBody(f"the webhook body is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidBody(
            f"the webhook body must be a JSON object (its keys become run parameters), got"
            f" {type(params).__name__}"
        )
    from starlette.concurrency import run_in_threadpool

    rec = await run_in_threadpool(rt.scheduler.fire_webhook, path, x_webhook_secret, params)
    return ExecutionOut.of(rec)
