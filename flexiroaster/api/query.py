"""POST /query: read-only SQL over the store, judged by DuckDB's own parser (statement type,
table functions, files read only inside the data roots), capped and timed."""

from __future__ import annotations

import glob
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
from fastapi import APIRouter, Depends, Request, Response

from ..errors import FlexiError
from ..runtime import Runtime
from ..spec import outside_roots, path_refusal
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


# Table functions that read host files: each path they are given must lie inside the data roots.
_READS_FILES = ("read_", "parquet_")
_FILE_FUNCTIONS = frozenset({"glob", "sniff_csv", "parquet_scan"})
# Table functions that touch no file and change nothing; any other one is refused.
_SAFE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "summary", "histogram", "histogram_values", "test_all_types", "test_vector_types",
    "pg_timezone_names", "icu_calendar_names",
})  # fmt: skip
_SAFE_PREFIXES = ("duckdb_", "pragma_")
_PATHLIKE = re.compile(r"[/\\~*?:]|\.[A-Za-z0-9]{1,8}$")


def _reads_files(name: str) -> bool:
    return name.startswith(_READS_FILES) or name in _FILE_FUNCTIONS


def _nodes(tree: Any, kinds: set[str]) -> Iterator[dict]:
    """Every node of a serialized statement whose `type` is one of `kinds`, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in kinds:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _constant_paths(arg: dict) -> list[str] | None:
    """The file names of a reader's first argument: a string or a list of strings, else None."""
    expr = arg.get("expression") or {}
    if expr.get("class") == "CONSTANT":
        literal = expr.get("literal") or {}
        return [literal.get("text")] if literal.get("kind") == "STRING" else None
    if expr.get("class") == "FUNCTION" and expr.get("function_name") == "list_value":
        out = []
        for item in expr.get("arguments") or []:
            got = _constant_paths(item)
            if got is None:
                return None
            out += got
        return out
    return None


def _check_path(name: str, roots: tuple[Path, ...], what: str) -> None:
    if "://" in name or name.startswith(("s3:", "gs:", "hf:", "az:", "http:", "https:")):
        raise QueryRefused(f"{what} reads {name!r}: this endpoint reads no remote files")
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path  # DuckDB's relative paths
    if outside_roots(path, roots):
        raise QueryRefused(f"{what}: {path_refusal('the file', name, roots)}")
    if glob.has_magic(name):
        for match in glob.iglob(str(path), recursive=True, include_hidden=True):
            if outside_roots(Path(match), roots):
                raise QueryRefused(f"{what}: {path_refusal('the file', match, roots)}")


def check_file_access(sql: str, cur: duckdb.DuckDBPyConnection, roots: tuple[Path, ...] | None):
    """Refuse a read-only statement that would read host files outside the data roots (None:
    any path), run SQL from a string, or call a table function with side effects; judged on
    DuckDB's own parse tree of the statement (its table functions and file-name table refs)."""
    import json

    text = _EXPLAIN.sub("", sql, count=1)
    try:
        tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0])
    except (duckdb.Error, ValueError):
        tree = {"error": True}
    if tree.get("error"):
        return _check_tokens(text, roots)
    for node in _nodes(tree, {"TABLE_FUNCTION"}):
        fn = node.get("function") or {}
        name = str(fn.get("function_name", "")).lower()
        if name in _SAFE_FUNCTIONS or name.startswith(_SAFE_PREFIXES):
            continue
        if not _reads_files(name):
            raise QueryRefused(
                f"table function {name}() is not allowed here: this endpoint reads tables and"
                " files in the data roots"
            )
        if roots is None:
            continue
        args = [a for a in fn.get("arguments") or [] if not a.get("name")]
        paths = _constant_paths(args[0]) if args else None
        if paths is None:
            raise QueryRefused(
                f"{name}(): give the file name(s) as text constants, so they can be checked"
                " against the data roots"
            )
        for path in paths:
            _check_path(path, roots, f"{name}()")
    if roots is None:
        return None
    for node in _nodes(tree, {"BASE_TABLE"}):
        name = str(node.get("table_name", ""))
        if not node.get("schema_name") and not node.get("catalog_name") and _PATHLIKE.search(name):
            _check_path(name, roots, f"FROM {name!r}")  # DuckDB reads a file named like this
    return None


def _check_tokens(sql: str, roots: tuple[Path, ...] | None) -> None:
    """Statements DuckDB cannot serialize (PIVOT ...): no file-reading function at all, and no
    text constant that looks like a path outside the roots."""
    for start, kind in duckdb.tokenize(sql):
        word = re.match(r"[\w.'/\\~*?:-]+", sql[start:])
        token = word.group(0) if word else ""
        if kind == duckdb.token_type.identifier and (
            _reads_files(token.lower()) or token.lower() in ("query", "query_table")
        ):
            raise QueryRefused(f"{token}() is not allowed in this kind of statement; use SELECT")
        if kind == duckdb.token_type.string_const and roots is not None:
            value = token.strip("'")
            if _PATHLIKE.search(value):
                _check_path(value, roots, f"the text {value!r}")


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
    try:
        check_file_access(sql, cur, rt.settings.path_roots)
    except BaseException:
        cur.close()
        raise
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
