"""Executions: trigger, list, read with stages, cancel, retry from failure, tail logs."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ..errors import Conflict
from ..records import ExecutionRecord
from ..runtime import Runtime
from ..states import RunStatus
from .deps import MAX_OFFSET, require_token, runtime
from .errors import documented
from .models import ErrorOut, ExecutionList, ExecutionOut, IsoTime, LogList, LogOut, TriggerIn

router = APIRouter(prefix="/executions", tags=["executions"])
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
# New runs are refused while the store cannot write (disk full, read-only file system).
UNWRITABLE = {503: {"model": ErrorOut, "description": "The store cannot write: no new run"}}


def _fresh(rt: Runtime, rec: ExecutionRecord) -> ExecutionRecord:
    """Active runs: the engine's in-memory record is newer than the store's row."""
    live = rt.engine.live(rec.id)
    if live is None:
        return rec
    # A copy: the engine goes on changing its record while this answer is being built.
    live = dataclasses.replace(live)
    if live.status in RunStatus.terminal():
        # The outcome is decided but still being written: answer once it is stored, so that a
        # run reported finished here is one the store's filters and counts agree with.
        rt.engine.wait(rec.id, timeout=5)
        return rt.store.get_execution(rec.id)
    return live


@router.post(
    "",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(400, 401, 404, 413, 422) | UNWRITABLE,
    dependencies=[Depends(require_token)],
)
async def trigger(body: TriggerIn, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Start a run of a stored pipeline with parameters; it is queued while the pipeline is at
    its `max_active_runs`. Answers once the run is committed to the store; 503 while the store
    cannot write (the body says why)."""
    # On the event loop: everything here is in memory except the commit, which is awaited
    # (the audit entry is queued and written with the next flush).
    rec = await rt.trigger_async(body.pipeline_id, body.params, trigger="api")
    rt.store.audit("api", "run.start", "run", rec.id, {"pipeline_id": rec.pipeline_id})
    return ExecutionOut.of(rec)


@router.get("", response_model=ExecutionList, responses=documented(422))
def list_executions(
    rt: Runtime = Depends(runtime),
    pipeline_id: str | None = Query(None, max_length=200),
    status: RunStatus | None = None,
    since: IsoTime | None = Query(None, description="Created at or after (ISO 8601)"),
    until: IsoTime | None = Query(None, description="Created before (ISO 8601)"),
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    skip: int | None = Query(
        None, ge=0, le=MAX_OFFSET, description="The original API's name for offset"
    ),
) -> ExecutionList:
    offset = skip if skip is not None else offset
    recs, total = rt.store.list_executions(
        pipeline_id=pipeline_id, status=status, since=since, until=until, limit=limit, offset=offset
    )
    return ExecutionList(
        executions=[ExecutionOut.of(_fresh(rt, r)) for r in recs],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{execution_id}", response_model=ExecutionOut, responses=documented(404, 422))
def get_execution(execution_id: str, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    rec = _fresh(rt, rt.store.get_execution(execution_id))
    return ExecutionOut.of(rec, rt.store.get_stages(execution_id))


def _cancel(execution_id: str, rt: Runtime) -> ExecutionOut:
    rec = rt.store.get_execution(execution_id)
    if not rt.engine.cancel(execution_id):
        raise Conflict(
            f"run {execution_id} is {rec.status}; only held, pending or running runs can be cancelled"
        )
    rt.store.audit("api", "run.cancel", "run", execution_id, {"pipeline_id": rec.pipeline_id})
    rt.engine.wait(execution_id, timeout=5)
    return ExecutionOut.of(rt.store.get_execution(execution_id), rt.store.get_stages(execution_id))


@router.post(
    "/{execution_id}/cancel",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def cancel(execution_id: str, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Stop a run: running stages are killed or interrupted, the rest skipped."""
    return _cancel(execution_id, rt)


@router.delete(
    "/{execution_id}",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def delete_execution(execution_id: str, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Cancel, as the original API's DELETE did; the run's record is kept."""
    return _cancel(execution_id, rt)


@router.post(
    "/{execution_id}/retry",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(401, 404, 409, 422) | UNWRITABLE,
    dependencies=[Depends(require_token)],
)
def retry(execution_id: str, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Start a new run from where a failed or cancelled one stopped, reusing completed stages."""
    new = rt.engine.submit_retry(execution_id, trigger="retry")
    rt.store.audit("api", "run.retry", "run", new.id, {"retry_of": execution_id})
    return ExecutionOut.of(new)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200, description="Who releases the run")
    reason: str | None = Field(None, max_length=2000)


@router.post(
    "/{execution_id}/release",
    status_code=202,
    response_model=ExecutionOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def release(execution_id: str, body: ReleaseIn, rt: Runtime = Depends(runtime)) -> ExecutionOut:
    """Start a run the risk gate held (status `held`). Audited with who and why."""
    rt.store.get_execution(execution_id)  # 404 for an unknown run
    return ExecutionOut.of(rt.release(execution_id, body.by, body.reason))


@router.get("/{execution_id}/logs", response_model=LogList, responses=documented(404, 422))
def logs(
    execution_id: str,
    rt: Runtime = Depends(runtime),
    after: int = Query(0, ge=0, le=MAX_OFFSET, description="Cursor: only lines with a greater id"),
    limit: int = Query(1000, ge=1, le=10_000),
    level: str | None = Query(
        None, pattern="^(DEBUG|INFO|WARN|ERROR)$", description="Minimum level"
    ),
) -> LogList:
    """Log lines in order; poll with `after=next_cursor` to follow a running run."""
    rec = rt.store.get_execution(execution_id)
    finished = rec.status in RunStatus.terminal()
    lines = rt.store.get_logs(execution_id, after=after, limit=limit)
    cursor = lines[-1].id if lines else after
    if level:
        lines = [x for x in lines if LEVELS.index(x.level) >= LEVELS.index(level)]
    return LogList(logs=[LogOut.of(x) for x in lines], next_cursor=cursor, finished=finished)
