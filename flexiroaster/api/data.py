"""What the UI explores besides runs: every stored log line, and the tables pipelines wrote."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from ..runtime import Runtime
from ..template import quote_ident
from .deps import MAX_OFFSET, runtime
from .errors import documented
from .models import IsoTime, LogOut, LogSearchOut, TableList, TableOut

router = APIRouter(tags=["data"])


@router.get("/logs", response_model=LogSearchOut, responses=documented(422))
def search_logs(
    rt: Runtime = Depends(runtime),
    level: str | None = Query(None, pattern="^(DEBUG|INFO|WARN|ERROR)$", description="Minimum"),
    pipeline_id: str | None = Query(None, max_length=200),
    execution_id: str | None = Query(None, max_length=200),
    since: IsoTime | None = None,
    until: IsoTime | None = None,
    q: str | None = Query(None, max_length=500, description="Text the message contains"),
    after: int = Query(0, ge=0, le=MAX_OFFSET, description="Only lines newer than this id"),
    before: int | None = Query(None, ge=0, le=MAX_OFFSET, description="Only lines older"),
    limit: int = Query(200, ge=1, le=5000),
) -> LogSearchOut:
    """Log lines of all runs, newest first, filtered; page back with `before=next_before`,
    follow with `after=<newest id seen>`."""
    found = rt.store.search_logs(
        level=level, pipeline_id=pipeline_id, execution_id=execution_id, since=since,
        until=until, text=q, after=after, before=before, limit=limit,
    )  # fmt: skip
    return LogSearchOut(
        logs=[LogOut.of(x) for x, _ in found],
        pipelines={x.execution_id: p for x, p in found},
        next_before=found[-1][0].id if len(found) == limit else None,
    )


@router.get("/tables", response_model=TableList)
def list_tables(rt: Runtime = Depends(runtime)) -> TableList:
    """Tables and views pipelines wrote, with their columns and row counts."""
    out = []
    for t in rt.store.user_tables():
        cols = rt.store.table_columns(t["schema_name"], t["table_name"])
        rows = t["rows"]
        if t["kind"] == "table":  # estimated_size can lag; the exact count is cheap in DuckDB
            rows = rt.store.query(
                "SELECT count(*) FROM "
                + ".".join(
                    quote_ident(x) for x in (rt.store.catalog, t["schema_name"], t["table_name"])
                )
            )[0][0]
        out.append(
            TableOut(
                schema_name=t["schema_name"],
                name=t["table_name"],
                kind=t["kind"],
                rows=rows,
                columns=[{"name": n, "type": ty} for n, ty in cols],
            )  # fmt: skip
        )
    return TableList(tables=out)
