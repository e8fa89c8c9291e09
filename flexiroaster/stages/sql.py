"""`sql` stages: one DuckDB query; upstream stage ids resolve as table names."""

from __future__ import annotations

import json
import threading
from functools import lru_cache

import duckdb

from ..errors import SpecError, StageError
from .base import StageContext, StageResult

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


@lru_cache(maxsize=1024)
def _serialize(query: str) -> str:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()
        return _parser.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]


def parse_select(query: str) -> str:
    """The query as one SELECT statement, or a SpecError saying why not."""
    try:
        query.encode("utf-8")  # DuckDB's binding raises TypeError on lone surrogates
        statements = duckdb.extract_statements(query)
    except UnicodeEncodeError:
        raise SpecError("SQL does not parse: it contains an invalid character") from None
    except duckdb.Error as exc:
        raise SpecError(f"SQL does not parse: {str(exc).removeprefix('Parser Error: ')}") from None
    if len(statements) != 1:
        raise SpecError(f"an sql stage runs exactly one query; found {len(statements)} statements")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise SpecError(
            f"an sql stage runs a query (SELECT/WITH/FROM), not {statements[0].type.name};"
            " write tables with an `output` stage"
        )
    return statements[0].query.strip().rstrip(";")


def referenced_tables(query: str) -> set[str]:
    """Unqualified table names the query reads (CTE names excluded), from DuckDB's own parser."""
    parse_select(query)
    try:
        text = _serialize(query)
    except duckdb.Error as exc:
        raise SpecError(f"SQL does not parse: {exc}") from None
    tables: set[str] = set()
    ctes: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "BASE_TABLE"
                and not node.get("schema_name")
                and not node.get("catalog_name")
            ):
                tables.add(node.get("table_name", ""))
            cte_map = node.get("cte_map")
            if isinstance(cte_map, dict):
                ctes.update(entry.get("key", "") for entry in cte_map.get("map", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        tree = json.loads(text)
        if tree.get("error"):
            raise SpecError(f"SQL does not parse: {tree.get('error_message')}")
        walk(tree["statements"])
    except RecursionError:
        # Too deep for Python's recursion (e.g. `a1 + a2 + ... + a400`): DuckDB walks the tree.
        tables.clear()
        with _parser_lock:
            assert _parser is not None  # _serialize opened it
            rows = _parser.execute(
                r"""
                WITH t AS (
                    SELECT parent, key, path, value->>'$' AS v FROM json_tree(?::JSON)
                    WHERE key IN ('type', 'table_name', 'schema_name', 'catalog_name', 'key')
                      AND type NOT IN ('OBJECT', 'ARRAY')
                )
                SELECT 'table', max(v) FILTER (key = 'table_name') FROM t GROUP BY parent
                HAVING max(v) FILTER (key = 'type') = 'BASE_TABLE'
                   AND coalesce(max(v) FILTER (key = 'schema_name'), '') = ''
                   AND coalesce(max(v) FILTER (key = 'catalog_name'), '') = ''
                UNION ALL
                SELECT 'cte', v FROM t
                WHERE key = 'key' AND regexp_matches(path, '\.cte_map\.map\[\d+\]$')
                """,
                [text],
            ).fetchall()
        tables = {name for kind, name in rows if kind == "table" and name}
        ctes = {name for kind, name in rows if kind == "cte" and name}
    return tables - ctes


def run(ctx: StageContext) -> StageResult:
    query = parse_select(ctx.config.query)
    cur = ctx.cursor
    # Upstream stage ids resolve first, then the user's tables in the store.
    cur.execute(f"SET search_path = '{ctx.schema.replace(chr(34), '')},{ctx.store.catalog}.main'")
    try:
        ctx.create_relation(query, lazy=False)
    except duckdb.CatalogException as exc:
        known = ", ".join(ctx.inputs) or "none"
        raise StageError(f"{exc} (upstream stages this query can read: {known})") from None
    return StageResult(ctx.output_name, ctx.created_rows)
