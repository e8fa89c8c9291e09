"""PostgreSQL through ADBC (Arrow in and out): an input stage runs a query, an output stage writes
a table (append / replace / merge on keys) in one transaction from a staging table, all or none."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import StageError
from ..stages.base import StageContext, StageResult
from ..template import quote_ident as q

_PARAM = re.compile(r"\$(p\d+)\b")


def uri(conn: Any) -> str:
    """The libpq URI (password included): never logged or recorded."""
    cfg = conn.config
    user = quote(cfg["user"], safe="")
    password = conn.secrets.get("password")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    query = {"connect_timeout": str(cfg.get("connect_timeout", 10)), **(cfg.get("options") or {})}
    if cfg["host"].startswith("/"):  # a Unix socket directory goes in the query
        query |= {"host": cfg["host"], "port": str(cfg["port"])}
        where = ""
    else:
        host = f"[{cfg['host']}]" if ":" in cfg["host"] else cfg["host"]
        where = f"{host}:{cfg['port']}"
    return f"postgresql://{auth}@{where}/{quote(cfg['database'], safe='')}?{urlencode(query)}"


def _where(conn: Any) -> str:
    cfg = conn.config
    return f"{cfg['user']}@{cfg['host']}:{cfg['port']}/{cfg['database']}"


def _fail(conn: Any, doing: str, exc: BaseException) -> StageError:
    """A driver error as a StageError that names the connection, with its secrets masked."""
    text = str(exc).strip()
    text = re.sub(r"^(IO|INVALID_ARGUMENT|CANCELLED|UNKNOWN|INTERNAL): \[libpq\] ", "", text)
    return StageError(conn.masker()(f"postgres connection {conn.name} ({_where(conn)}): {doing}: {text}"))


def connect(conn: Any) -> Any:
    """An ADBC connection, autocommit off (each stage is one transaction)."""
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as pg

    try:
        return pg.connect(uri(conn), autocommit=False)
    except adbc_driver_manager.Error as exc:
        raise _fail(conn, "cannot connect", exc) from None


def server_version(conn: Any) -> str:
    """Connect and ask the server's version (the connection test)."""
    with connect(conn) as con, con.cursor() as cur:
        cur.execute("SELECT version()")
        return cur.fetchall()[0][0]


def _positional(sql: str, values: dict[str, Any]) -> tuple[str, tuple | None]:
    """DuckDB-style `$p0` placeholders (from `{{ }}` in the query) as PostgreSQL's `$1`, `$2`."""
    order: list[str] = []

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            return m.group(0)
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    out = _PARAM.sub(sub, sql)
    return out, tuple(values[k] for k in order) or None


def _cancel_on_kill(ctx: StageContext, con: Any, cur: Any) -> None:
    def cancel() -> None:
        for handle in (cur, con):
            try:
                handle.adbc_cancel()
            except Exception:  # already finished or closed
                pass

    ctx.on_kill(cancel)


def _numeric_select(table: Any, name: str) -> str:
    """PostgreSQL numeric arrives as text: DECIMAL(p, s) when declared so (p <= 38), else DOUBLE."""
    cols = []
    for f in table.schema:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        if meta.get("POSTGRESQL:type") != "numeric":
            cols.append(q(f.name))
            continue
        typmod = int(meta.get("POSTGRESQL:typmod", "-1"))
        precision, scale = ((typmod - 4) >> 16, (typmod - 4) & 0xFFFF) if typmod >= 4 else (0, 0)
        fits = 0 < precision <= 38 and scale <= precision  # PostgreSQL 15 allows scale > precision
        kind = f"DECIMAL({precision}, {scale})" if fits else "DOUBLE"
        cols.append(f"CAST({q(f.name)} AS {kind}) AS {q(f.name)}")
    return f"SELECT {', '.join(cols)} FROM {name}"


def read(ctx: StageContext, conn: Any, cfg: Any) -> StageResult:
    """Run `cfg.query` and keep its rows as the stage's output table."""
    import adbc_driver_manager

    sql, params = _positional(cfg.query, ctx.sql_params)
    ctx.check_cancelled()
    with connect(conn) as con, con.cursor() as cur:
        _cancel_on_kill(ctx, con, cur)
        try:
            cur.execute(sql, params)
            table = cur.fetch_arrow_table()
            con.rollback()  # a read: nothing to keep
        except adbc_driver_manager.Error as exc:
            raise _fail(conn, "query failed", exc) from None
    name = f"_pg_{ctx.stage.id}".replace("-", "_")
    ctx.cursor.register(name, table)
    try:
        ctx.create_relation(_numeric_select(table, name), lazy=False)
    finally:
        ctx.cursor.unregister(name)
    ctx.log(f"read {table.num_rows} rows from {conn.name}")
    return StageResult(ctx.output_name, table.num_rows, {"connection": conn.name, "rows": table.num_rows})


def _declared_types(schema: Any) -> list[tuple[str, str]]:
    """Columns whose PostgreSQL type needs more than the staging table says: decimals keep
    their precision and scale (staged as plain numeric)."""
    import pyarrow as pa

    return [
        (f.name, f"numeric({f.type.precision}, {f.type.scale})")
        for f in schema
        if pa.types.is_decimal(f.type) and f.type.precision <= 1000
    ]


def _target(table: str) -> str:
    schema, _, name = table.rpartition(".")
    return f"{q(schema)}.{q(name)}" if schema else q(name)


def _check_keys(ctx: StageContext, source: str, keys: list[str], columns: list[str]) -> None:
    missing = [k for k in keys if k not in columns]
    if missing:
        raise StageError(
            f"merge keys {missing} are not columns of the input (columns: {', '.join(columns)})"
        )
    cols = ", ".join(map(q, keys))
    nulls = ctx.query(f"SELECT count(*) FROM {source} WHERE " + " OR ".join(f"{q(k)} IS NULL" for k in keys))
    if nulls[0][0]:
        raise StageError(f"merge keys ({', '.join(keys)}) are null in {nulls[0][0]} input row(s)")
    dupes = ctx.query(
        f"SELECT count(*) FROM (SELECT {cols} FROM {source} GROUP BY ALL HAVING count(*) > 1)"
    )[0][0]
    if dupes:
        raise StageError(
            f"merge keys ({', '.join(keys)}) are not unique in the input: {dupes} key(s) appear"
            " more than once; dedupe first"
        )


def write(ctx: StageContext, conn: Any, cfg: Any, source: str) -> StageResult:
    """Write the input to `cfg.table` in one transaction: the target changes whole or not at all."""
    import adbc_driver_manager

    columns = [c for c, _ in ctx.columns(source)]
    if cfg.mode == "merge":
        _check_keys(ctx, source, cfg.keys, columns)
    data = ctx.cursor.sql(f"SELECT * FROM {source}").to_arrow_table()
    target, staging = _target(cfg.table), f"flexiroaster_staging_{secrets.token_hex(6)}"
    cols = ", ".join(map(q, columns))
    metrics: dict[str, Any] = {"connection": conn.name, "table": cfg.table, "mode": cfg.mode}
    ctx.check_cancelled()
    with connect(conn) as con, con.cursor() as cur:
        _cancel_on_kill(ctx, con, cur)
        step = "staging the rows"
        try:
            cur.adbc_ingest(staging, data, mode="create", temporary=True)
            step = f"writing table {cfg.table}"
            cur.execute("SELECT to_regclass($1) IS NOT NULL", (target,))
            if not cur.fetchall()[0][0]:
                cur.execute(f"CREATE TABLE {target} AS SELECT * FROM {q(staging)} WITH NO DATA")
                for col, kind in _declared_types(data.schema):
                    cur.execute(f"ALTER TABLE {target} ALTER COLUMN {q(col)} TYPE {kind}")
                ctx.log(f"created table {cfg.table} in {conn.name}")
            if cfg.mode == "replace":
                cur.execute(f"DELETE FROM {target}")
                metrics["deleted"] = max(cur.rowcount, 0)
            if cfg.mode == "merge":
                match = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in cfg.keys)
                cur.execute(
                    f"SELECT count(*) FROM {q(staging)} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE {match})"
                )
                updated = cur.fetchall()[0][0]
                rest = [c for c in columns if c not in cfg.keys]
                when_matched = (
                    "WHEN MATCHED THEN UPDATE SET " + ", ".join(f"{q(c)} = s.{q(c)}" for c in rest)
                    if rest else "WHEN MATCHED THEN DO NOTHING"
                )  # fmt: skip
                cur.execute(
                    f"MERGE INTO {target} AS t USING {q(staging)} AS s ON {match} {when_matched}"
                    f" WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({', '.join(f's.{q(c)}' for c in columns)})"
                )
                metrics.update(updated=updated, inserted=data.num_rows - updated)
            else:
                cur.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {q(staging)}")
            cur.execute(f"DROP TABLE {q(staging)}")
            ctx.check_cancelled()
            con.commit()
        except BaseException as exc:
            try:
                con.rollback()
            except Exception:  # a cancelled or broken connection: closing it rolls back
                pass
            if isinstance(exc, adbc_driver_manager.Error):
                raise _fail(conn, f"{step} failed (nothing written)", exc) from None
            raise
    metrics["rows"] = data.num_rows
    ctx.log(f"wrote {data.num_rows} row(s) to {cfg.table} in {conn.name} ({cfg.mode})")
    return StageResult(None, data.num_rows, metrics)
