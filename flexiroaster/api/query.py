"""POST /query: read-only SQL over the store, judged by DuckDB's own parser, capped and timed."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import duckdb
from fastapi import APIRouter, Depends, Request, Response

from ..errors import FlexiError
from ..runtime import Runtime
from .deps import require_token, runtime
from .errors import documented
from .models import QueryIn, QueryOut

router = APIRouter(tags=["query"])
ARROW = "application/vnd.apache.arrow.stream"
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)
_INSTALL = re.compile(r"^\s*(force\s+)?install\b", re.IGNORECASE)  # DuckDB files it under LOAD


class QueryRefused(FlexiError):
    status = 400
    code = "query_refused"


def check_read_only(sql: str) -> str:
    """The one statement of `sql` if it only reads (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"the query does not parse: {exc}") from None
    if len(statements) != 1:
        raise QueryRefused(f"send exactly one statement; this has {len(statements)}")
    st = statements[0]
    if st.type == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: judge what it explains.
        check_read_only(_EXPLAIN.sub("", st.query, count=1))
    elif st.type != duckdb.StatementType.SELECT:
        kind = "INSTALL" if _INSTALL.match(st.query) else st.type.name
        raise QueryRefused(
            f"{kind} is not allowed: this endpoint only reads (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"
        )
    return st.query


def _arrow_head(rel: duckdb.DuckDBPyRelation, n: int):
    """At most about `n` rows as an Arrow table, without fetching the rest."""
    import pyarrow as pa

    reader = rel.to_arrow_reader(min(n, 100_000))
    batches, seen = [], 0
    for batch in reader:
        batches.append(batch)
        seen += batch.num_rows
        if seen >= n:
            break
    return pa.Table.from_batches(batches, schema=reader.schema)


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return str(v)


@router.post(
    "/query",
    response_model=QueryOut,
    dependencies=[Depends(require_token)],
    responses={200: {"content": {ARROW: {}}}} | documented(400, 401, 413, 422),
)
def query(body: QueryIn, request: Request, rt: Runtime = Depends(runtime)) -> Any:
    """Run one read-only query; JSON rows, or Arrow IPC with `format: arrow` or `Accept: {ARROW}`."""
    sql = check_read_only(body.sql)
    limit = min(body.limit or rt.settings.query_max_rows, rt.settings.query_max_rows)
    timeout = min(body.timeout or rt.settings.query_timeout, rt.settings.query_timeout)
    cur = rt.store.new_cursor()
    arrow = body.format == "arrow" or ARROW in request.headers.get("accept", "")
    timer = threading.Timer(timeout, cur.interrupt)
    start = time.perf_counter()
    timer.start()
    try:
        # Inside a transaction that is always rolled back: nothing a query does can stick.
        cur.execute("BEGIN TRANSACTION READ ONLY")
        try:
            if arrow:
                # A relation streams Arrow batches; a DB-API result would copy every row first.
                rel = cur.sql(sql)
                if rel is None:
                    raise QueryRefused("the statement returns no rows")
                table = _arrow_head(rel, limit + 1)
            else:
                res = cur.execute(sql)
                if res.description is None:
                    raise QueryRefused("the statement returns no rows")
                columns = [d[0] for d in res.description]
                types = [str(d[1]) for d in res.description]
                rows = res.fetchmany(limit + 1)
        finally:
            cur.execute("ROLLBACK")
    except duckdb.InterruptException:
        raise QueryRefused(f"the query ran over its {timeout:g} s limit and was stopped") from None
    except duckdb.Error as exc:
        raise QueryRefused(str(exc)) from None
    finally:
        timer.cancel()
        cur.close()
    elapsed = (time.perf_counter() - start) * 1000
    if arrow:
        import pyarrow as pa

        truncated = table.num_rows > limit
        table = table.slice(0, limit)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        headers = {"X-Row-Count": str(table.num_rows), "X-Truncated": str(truncated).lower()}
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW, headers=headers)
    truncated = len(rows) > limit
    rows = rows[:limit]
    return QueryOut(
        columns=columns,
        types=types,
        rows=[[_json_value(v) for v in r] for r in rows],
        row_count=len(rows),
        truncated=truncated,
        elapsed_ms=round(elapsed, 2),
    )
