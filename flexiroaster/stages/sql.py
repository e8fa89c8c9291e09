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
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SpecError(f"SQL does not parse: {exc}") from None
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
    tree = json.loads(_serialize(query))
    if tree.get("error"):
        raise SpecError(f"SQL does not parse: {tree.get('error_message')}")
    tables: set[str] = set()
    ctes: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and not node.get("schema_name") and not node.get("catalog_name"):
                tables.add(node["table_name"])
            cte_map = node.get("cte_map")
            if isinstance(cte_map, dict):
                ctes.update(entry["key"] for entry in cte_map.get("map", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree["statements"])
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
    return StageResult(ctx.output_name, ctx.count(ctx.output_name))
