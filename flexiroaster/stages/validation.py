"""`validation` stages: data-quality checks; on failure fail, warn, or quarantine the bad rows."""

from __future__ import annotations

from typing import Any

import duckdb

from ..errors import StageError
from ..spec import PATTERNS, Check
from ..template import quote_ident as q
from .base import StageContext, StageResult
from .input import _literal

# Friendly type names in `schema` checks -> the DuckDB types that satisfy them.
TYPE_FAMILIES = {
    "integer": {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
    },
    "string": {"VARCHAR"},
    "boolean": {"BOOLEAN"},
    "date": {"DATE"},
    "timestamp": {
        "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE",
        "TIMESTAMP_S",
        "TIMESTAMP_MS",
        "TIMESTAMP_NS",
    },
}
TYPE_FAMILIES["float"] = {"FLOAT", "DOUBLE"} | TYPE_FAMILIES["integer"]
TYPE_FAMILIES["number"] = TYPE_FAMILIES["float"]
ALIASES = {
    "int": "integer", "bigint": "integer", "str": "string", "text": "string", "varchar": "string",
    "double": "float", "numeric": "number", "decimal": "number", "bool": "boolean", "datetime": "timestamp",
}  # fmt: skip


def _type_ok(actual: str, wanted: str) -> bool:
    w = wanted.strip().lower()
    family = TYPE_FAMILIES.get(ALIASES.get(w, w))
    if family is None:
        return actual.upper() == wanted.strip().upper()
    return actual.upper() in family or (
        family is TYPE_FAMILIES["number"] and actual.upper().startswith("DECIMAL")
    )


def bad_row_condition(check: Check) -> str:
    """SQL that is true for a row failing a row-level check (`unique` uses the __dup flag)."""
    cols = [q(c) for c in check.columns]
    if check.type == "not_null":
        return " OR ".join(f"{c} IS NULL" for c in cols)
    if check.type == "unique":
        return "__dup"
    if check.type == "expression":  # names no column: handled before `cols[0]`
        return f"NOT coalesce(({check.expression}), false)"
    c = cols[0]
    if check.type == "accepted_values":
        return f"{c} IS NOT NULL AND {c} NOT IN ({', '.join(_literal(v) for v in check.values)})"
    if check.type == "range":
        parts = []
        if check.min is not None:
            parts.append(f"{c} < {_literal(check.min)}")
        if check.max is not None:
            parts.append(f"{c} > {_literal(check.max)}")
        return f"{c} IS NOT NULL AND ({' OR '.join(parts)})"
    if check.type == "regex":
        pattern = check.pattern or PATTERNS[check.preset]
        return (
            f"{c} IS NOT NULL AND NOT regexp_full_match(CAST({c} AS VARCHAR), {_literal(pattern)})"
        )
    raise AssertionError(check.type)


def _dup_flag(check: Check) -> str:
    keys = ", ".join(q(c) for c in check.columns)
    not_null = " AND ".join(f"{q(c)} IS NOT NULL" for c in check.columns)
    return f"({not_null} AND row_number() OVER (PARTITION BY {keys} ORDER BY __ord) > 1)"


def _table_check(ctx: StageContext, check: Check, source: str, rows: int) -> tuple[int, str]:
    """(failures, detail) of a table-level check."""
    if check.type == "row_count":
        low = check.min is not None and rows < float(check.min)
        high = check.max is not None and rows > float(check.max)
        return (
            int(low or high),
            f"{rows} rows (expected {check.min if check.min is not None else '-'}..{check.max if check.max is not None else '-'})",
        )
    if check.type == "schema":
        actual = dict(ctx.columns(source))
        problems = []
        for col, wanted in check.types.items():
            if col not in actual:
                problems.append(f"missing column {col!r}")
            elif not _type_ok(actual[col], wanted):
                problems.append(f"column {col!r} is {actual[col]}, expected {wanted}")
        if check.strict:
            problems += [f"unexpected column {c!r}" for c in actual if c not in check.types]
        return len(problems), "; ".join(problems) or "ok"
    if check.type == "sql":
        cur = ctx.cursor
        cur.execute(
            f"SET search_path = '{ctx.schema.replace(chr(34), '')},{ctx.store.catalog}.main'"
        )
        n = ctx.query(f"SELECT count(*) FROM ({check.query.strip().rstrip(';')})")[0][0]
        return n, f"{n} violating row(s)"
    raise AssertionError(check.type)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    source = ctx.single_input()
    row_checks = [c for c in cfg.checks if c.row_level]
    table_checks = [c for c in cfg.checks if not c.row_level]
    columns = [c for c, _ in ctx.columns(source)]
    for check in row_checks:
        missing = [c for c in check.columns if c not in columns]
        if missing:
            raise StageError(
                f"check {check.label}: no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)})"
            )

    quarantine = cfg.on_failure == "quarantine"
    needs_order = quarantine or any(c.type == "unique" for c in row_checks)
    if needs_order:
        # Flag every row once, in a table, so counts, good rows and bad rows agree.
        dup = [
            f"{_dup_flag(c)} AS __dup{i}" for i, c in enumerate(row_checks) if c.type == "unique"
        ]
        base = f"SELECT *, row_number() OVER () AS __ord FROM {source}"
        flagged_sql = f"SELECT *{''.join(', ' + d for d in dup)} FROM ({base}) AS b"
        flagged = ctx.create_relation(
            flagged_sql, lazy=False, name=f"{ctx.schema}.{q(ctx.stage.id + '__flagged')}"
        )
        conds = [
            bad_row_condition(c).replace("__dup", f"__dup{i}") for i, c in enumerate(row_checks)
        ]
        scan = flagged
    else:
        conds = [bad_row_condition(c) for c in row_checks]
        scan = source

    aggs = ", ".join(["count(*)"] + [f"count(*) FILTER (WHERE {c})" for c in conds])
    try:
        counts = ctx.query(f"SELECT {aggs} FROM {scan}")[0]
    except duckdb.Error as exc:
        raise StageError(f"checks could not run: {exc}") from None
    rows = counts[0]
    results: list[dict[str, Any]] = []
    for check, cond, failed in zip(row_checks, conds, counts[1:], strict=True):
        res = {"check": check.label, "level": "row", "failed": failed, "passed": failed == 0}
        if failed:
            shown = check.columns or columns[:3]
            sample = ctx.query(
                f"SELECT {', '.join(map(q, shown))} FROM {scan} WHERE {cond} LIMIT 3"
            )
            res["examples"] = [dict(zip(shown, r, strict=True)) for r in sample]
        results.append(res)
    for check in table_checks:
        failed, detail = _table_check(ctx, check, source, rows)
        results.append(
            {
                "check": check.label,
                "level": "table",
                "failed": failed,
                "passed": failed == 0,
                "detail": detail,
            }
        )

    failing = [r for r in results if not r["passed"]]
    metrics: dict[str, Any] = {"checks": results, "rows_checked": rows}
    summary = "; ".join(_describe(r) for r in failing)
    for r in results:
        ctx.log(
            f"check {r['check']}: {'passed' if r['passed'] else _describe(r)}",
            "INFO" if r["passed"] else "WARN",
        )

    table_failures = [r for r in failing if r["level"] == "table"]
    if failing and (cfg.on_failure == "fail" or (quarantine and table_failures)):
        why = (
            summary
            if cfg.on_failure == "fail"
            else "table-level checks cannot quarantine rows: "
            + "; ".join(map(_describe, table_failures))
        )
        raise StageError(f"{len(failing)} of {len(results)} check(s) failed: {why}")
    if failing and cfg.on_failure == "warn":
        ctx.log(f"{len(failing)} check(s) failed; continuing (on_failure: warn): {summary}", "WARN")

    if not quarantine:
        ctx.create_relation(f"SELECT * FROM {source}")
        return StageResult(ctx.output_name, rows, metrics)

    any_bad = " OR ".join(f"({c})" for c in conds) or "false"
    cols = ", ".join(map(q, columns))
    ctx.create_relation(
        f"SELECT {cols} FROM {scan} WHERE NOT ({any_bad}) ORDER BY __ord", lazy=False
    )
    good = ctx.count(ctx.output_name)
    bad = rows - good
    metrics["rows_quarantined"] = bad
    if bad:
        target_name = cfg.quarantine_table or f"{ctx.pipeline.slug}_quarantine"
        _write_quarantine(ctx, scan, columns, row_checks, conds, any_bad, target_name)
        metrics["quarantine_table"] = target_name
        ctx.log(f"quarantined {bad} of {rows} row(s) into {target_name}", "WARN")
    return StageResult(ctx.output_name, good, metrics)


def _describe(r: dict[str, Any]) -> str:
    if r["level"] == "table":
        return f"{r['check']} failed: {r['detail']}"
    ex = r.get("examples") or []
    shown = ", ".join(str(list(e.values())[0] if len(e) == 1 else e) for e in ex)
    return f"{r['check']} failed for {r['failed']} row(s)" + (f", e.g. {shown}" if shown else "")


def _write_quarantine(ctx, scan, columns, checks, conds, any_bad, target_name) -> None:
    """Append the failing rows, with the checks they failed, in one transaction."""
    labels = ", ".join(
        f"CASE WHEN {c} THEN {_literal(ch.label)} END" for ch, c in zip(checks, conds, strict=True)
    )
    cols = ", ".join(map(q, columns))
    select = (
        f"SELECT {cols}, list_filter([{labels}], lambda x: x IS NOT NULL) AS _failed_checks,"
        f" {_literal(ctx.run_id)} AS _run_id, {_literal(ctx.stage.id)} AS _stage_id,"
        f" now() AS _quarantined_at FROM {scan} WHERE {any_bad} ORDER BY __ord"
    )
    target = ctx.target_table(target_name)
    schema = target_name.rpartition(".")[0]
    if schema:
        ctx.store.ensure_schema(schema)
    with ctx.transaction(table=target_name) as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {target} AS {select} LIMIT 0", ctx.params_for(select)
        )
        cur.execute(f"INSERT INTO {target} BY NAME {select}", ctx.params_for(select))
