"""`input` stages: read CSV / Parquet / JSON / NDJSON files (globs), inline rows or a table."""

from __future__ import annotations

import glob
from pathlib import Path

from ..errors import StageError
from ..template import quote_ident
from .base import StageContext, StageResult

READERS = {"csv": "read_csv", "parquet": "read_parquet", "json": "read_json", "ndjson": "read_json"}
EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson",
}  # fmt: skip


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    for ext, fmt in EXTENSIONS.items():
        if path.lower().endswith(ext) or path.lower().endswith(ext + ".gz"):
            return fmt
    raise StageError(f"cannot tell the format of {path!r} from its extension; set `format`")


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg.connection is not None:
        from ..connectors import read

        return read(ctx)
    if cfg.data is not None:
        import polars as pl

        try:
            frame = pl.DataFrame(cfg.data, infer_schema_length=None)
        except Exception as exc:
            raise StageError(f"inline `data` rows do not form a table: {exc}") from None
        ctx.create_from_frame(frame)
        return StageResult(ctx.output_name, len(cfg.data))
    if cfg.table is not None:
        table = ctx.target_table(cfg.table)
        if not ctx.store.table_exists(cfg.table, ctx.cursor):
            raise StageError(f"table {cfg.table!r} does not exist")
        # A snapshot: later stages of this run must not see writes this run makes to it.
        ctx.create_relation(f"SELECT * FROM {table}", lazy=False)
        return StageResult(ctx.output_name, ctx.count(ctx.output_name))

    path = str(ctx.resolve_path(cfg.source, "source"))
    fmt = _format_of(cfg.source, cfg.format)
    matches = sorted(glob.glob(path, recursive=True))
    if not matches:
        raise StageError(f"no file matches {cfg.source!r} (looked for {path})")
    for match in matches:  # DuckDB reads these names as given, following their symlinks
        ctx.check_inside_roots(Path(match), "source")
    options = dict(cfg.options)
    if fmt == "ndjson":
        options.setdefault("format", "newline_delimited")
    opts = "".join(f", {k} = {_literal(v)}" for k, v in options.items())
    files = _literal(matches)
    reader = f"{READERS[fmt]}({files}{opts})"
    # Parquet is columnar and cheap to scan again: keep it lazy so later stages read only
    # the columns and row groups they need. Text formats are parsed once into a table.
    lazy = fmt == "parquet"
    try:
        ctx.create_relation(f"SELECT * FROM {reader}", lazy=lazy)
    except Exception as exc:
        raise StageError(f"cannot read {cfg.source!r} as {fmt}: {exc}") from None
    ctx.log(
        f"reading {len(matches)} {fmt} file(s): {', '.join(quote_ident(m) for m in matches[:5])}"
    )
    return StageResult(ctx.output_name, ctx.count(ctx.output_name), {"files": len(matches)})
