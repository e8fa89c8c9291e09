"""`output` stages: write a DuckDB table (append / replace / merge on keys) or a file, atomically."""

from __future__ import annotations

import html
import os
from pathlib import Path

from ..errors import StageError
from ..template import quote_ident as q
from .base import StageContext, StageResult
from .input import _literal

FILE_FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".ndjson": "json",
    ".html": "html",
    ".htm": "html",
}


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    source = ctx.single_input()
    if cfg.destination == "connection":
        from ..connectors import write

        done = write(ctx, source)
        rows, metrics = done.rows_out, done.metrics
    elif cfg.destination == "file":
        rows, metrics = _write_file(ctx, source)
    else:
        rows, metrics = _write_table(ctx, source)
    # Downstream stages read what was written.
    ctx.create_relation(f"SELECT * FROM {source}")
    return StageResult(ctx.output_name, rows, metrics)


def _write_table(ctx: StageContext, source: str) -> tuple[int, dict]:
    cfg = ctx.config
    target = ctx.target_table(cfg.table)
    schema = cfg.table.rpartition(".")[0]
    rows = ctx.count(source)
    metrics: dict = {"table": cfg.table, "mode": cfg.mode}
    if cfg.mode == "merge":
        columns = [c for c, _ in ctx.columns(source)]
        missing = [k for k in cfg.keys if k not in columns]
        if missing:
            raise StageError(
                f"merge keys {missing} are not columns of the input (columns: {', '.join(columns)})"
            )
        keys = ", ".join(map(q, cfg.keys))
        dupes = ctx.query(
            f"SELECT count(*) FROM (SELECT {keys} FROM {source} GROUP BY ALL HAVING count(*) > 1)"
        )[0][0]
        if dupes:
            raise StageError(
                f"merge keys ({', '.join(cfg.keys)}) are not unique in the input: {dupes} key(s) appear more"
                " than once; dedupe first"
            )
    if schema:
        ctx.store.ensure_schema(schema)
    with ctx.transaction(table=cfg.table) as cur:
        exists = ctx.store.table_exists(cfg.table, cur)
        if cfg.mode == "replace" or not exists:
            cur.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {source}")
            metrics["inserted"] = rows
        elif cfg.mode == "append":
            cur.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source}")
            metrics["inserted"] = rows
        else:
            match = " AND ".join(f"t.{q(k)} IS NOT DISTINCT FROM s.{q(k)}" for k in cfg.keys)
            updated = cur.execute(
                f"DELETE FROM {target} AS t WHERE EXISTS (SELECT 1 FROM {source} AS s WHERE {match})"
            ).fetchall()[0][0]
            cur.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source}")
            metrics.update(updated=updated, inserted=rows - updated)
    ctx.log(f"wrote {rows} row(s) to table {cfg.table} ({cfg.mode})")
    return rows, metrics


def _write_file(ctx: StageContext, source: str) -> tuple[int, dict]:
    cfg = ctx.config
    path = ctx.resolve_path(cfg.path, "path")
    fmt = cfg.format
    if fmt == "auto":
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise StageError(
                f"cannot tell the file format of {cfg.path!r}; set `format` (parquet, csv, json, html)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: readers see the old file or the new one, never half.
    tmp = path.with_name(f".{path.name}.{ctx.run_id}.tmp")
    try:
        if fmt == "html":
            rows = _write_html(ctx, source, tmp)
        else:
            options = {
                "parquet": "FORMAT parquet",
                "csv": "FORMAT csv, HEADER true",
                "json": "FORMAT json",
            }[fmt]
            rows = ctx.cursor.execute(
                f"COPY (SELECT * FROM {source}) TO {_literal(str(tmp))} ({options})"
            ).fetchall()[0][0]
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    ctx.log(f"wrote {rows} row(s) to {path}")
    return rows, {"path": str(path), "format": fmt}


def _write_html(ctx: StageContext, source: str, tmp: Path) -> int:
    rel = ctx.cursor.sql(f"SELECT * FROM {source}")
    columns = rel.columns
    body = rel.fetchall()
    title = html.escape(ctx.stage.name or ctx.pipeline.name)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    lines = [
        "<!doctype html>",
        f"<html><head><meta charset='utf-8'><title>{title}</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right}</style></head><body>",
        f"<h1>{title}</h1><p>Pipeline {html.escape(ctx.pipeline.name)}, run {ctx.run_id}</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>",
    ]
    for row in body:
        lines.append(
            "<tr>"
            + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
            + "</tr>"
        )
    lines.append("</tbody></table></body></html>")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    return len(body)
