"""The only owner of the DuckDB file: schema, migrations, batched writes, typed reads."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from .errors import FlexiError, NotFound, StoreLocked
from .records import (
    EXEC_COLS,
    LOG_COLS,
    STAGE_COLS,
    ExecutionRecord,
    LogRecord,
    PipelineRecord,
    StageRecord,
    db_value,
    execution_from_row,
    log_from_row,
    now,
    stage_from_row,
)
from .states import RunStatus

log = logging.getLogger(__name__)
_META = re.compile(r"\bflexiroaster\.")

RECOVERY_REASON = "runtime stopped during the run"

MIGRATIONS: list[str] = [
    # 1: runs, stages, logs, pipelines
    """
    CREATE TABLE flexiroaster.pipelines (
        id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, description VARCHAR,
        version INTEGER NOT NULL, spec_yaml VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE flexiroaster.pipeline_versions (
        pipeline_id VARCHAR NOT NULL, version INTEGER NOT NULL, spec_yaml VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (pipeline_id, version)
    );
    CREATE TABLE flexiroaster.executions (
        id VARCHAR PRIMARY KEY, pipeline_id VARCHAR NOT NULL, pipeline_version VARCHAR,
        status VARCHAR NOT NULL, trigger VARCHAR NOT NULL, params JSON,
        created_at TIMESTAMPTZ NOT NULL, started_at TIMESTAMPTZ, completed_at TIMESTAMPTZ,
        error VARCHAR, total_stages INTEGER NOT NULL, stages_completed INTEGER NOT NULL DEFAULT 0,
        retry_of VARCHAR, pid INTEGER, spec_yaml VARCHAR
    );
    CREATE INDEX executions_pipeline ON flexiroaster.executions (pipeline_id);
    CREATE TABLE flexiroaster.stage_executions (
        execution_id VARCHAR NOT NULL, stage_id VARCHAR NOT NULL, stage_type VARCHAR NOT NULL,
        position INTEGER NOT NULL, status VARCHAR NOT NULL,
        started_at TIMESTAMPTZ, completed_at TIMESTAMPTZ, duration DOUBLE,
        rows_in BIGINT, rows_out BIGINT, attempts INTEGER NOT NULL DEFAULT 0,
        error_type VARCHAR, error VARCHAR, traceback VARCHAR, metrics JSON, reused_from VARCHAR,
        PRIMARY KEY (execution_id, stage_id)
    );
    CREATE TABLE flexiroaster.logs (
        id BIGINT PRIMARY KEY, execution_id VARCHAR NOT NULL, stage_id VARCHAR,
        level VARCHAR NOT NULL, message VARCHAR NOT NULL, timestamp TIMESTAMPTZ NOT NULL,
        metadata JSON
    );
    CREATE INDEX logs_execution ON flexiroaster.logs (execution_id);
    """,
]


def _locked_message(path: Path, exc: Exception) -> str:
    m = re.search(r"\(PID (\d+)\)", str(exc))
    holder = f"process {m.group(1)}" if m else "another process"
    return (
        f"the store {path} is in use by {holder}; only one FlexiRoaster runtime may open it."
        " Stop that process, or talk to it through its API instead of opening the file."
    )


class Store:
    """Owns the DuckDB connection. One cursor per thread; metadata writes are serialised and batched."""

    def __init__(self, path: str | Path, *, flush_interval: float = 0.2):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(_locked_message(self.path, exc)) from None
            raise FlexiError(f"cannot open the store {self.path}: {exc}") from None
        self._local = threading.local()
        self._thread_cursors: list[duckdb.DuckDBPyConnection] = []
        self._buf_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self.catalog = self._con.sql("SELECT current_database()").fetchall()[0][0]
        # Fully qualified: a store file named flexiroaster.duckdb makes `flexiroaster.x` ambiguous.
        self.meta = f'"{self.catalog}".flexiroaster'
        self._exec(self._con, "ATTACH ':memory:' AS scratch")
        self._migrate()
        self._log_id = self._exec(
            self._con, "SELECT coalesce(max(id), 0) FROM flexiroaster.logs"
        ).fetchall()[0][0]
        self._stage_buf: dict[tuple[str, str], StageRecord] = {}
        self._log_buf: list[LogRecord] = []
        self._closed = threading.Event()
        self.recovered = self._recover()
        self._flush_interval = flush_interval
        self._flusher = threading.Thread(target=self._flush_loop, name="store-flush", daemon=True)
        self._flusher.start()

    # --- connection plumbing -------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's own cursor (DuckDB connections are not shared between threads)."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._con.cursor()
            with self._buf_lock:
                self._thread_cursors.append(cur)
        return cur

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor, for work that may be interrupted or needs its own search path."""
        return self._con.cursor()

    def _exec(
        self, cur: duckdb.DuckDBPyConnection, sql: str, params: Any = None
    ) -> duckdb.DuckDBPyConnection:
        """Execute store SQL, with `flexiroaster.` meaning this store's metadata schema."""
        return cur.execute(_META.sub(self.meta + ".", sql), params)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._write_lock:
            cur = self.cursor()
            self._exec(cur, "BEGIN")
            try:
                yield cur
            except BaseException:
                self._exec(cur, "ROLLBACK")
                raise
            self._exec(cur, "COMMIT")

    def _migrate(self) -> None:
        con = self._con
        self._exec(con, f"CREATE SCHEMA IF NOT EXISTS {self.meta}")
        self._exec(
            con,
            "CREATE TABLE IF NOT EXISTS flexiroaster.schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)",
        )
        current = self._exec(
            con, "SELECT coalesce(max(version), 0) FROM flexiroaster.schema_version"
        ).fetchall()[0][0]
        if current > len(MIGRATIONS):
            raise FlexiError(
                f"the store {self.path} has schema version {current}, newer than this FlexiRoaster"
                f" knows ({len(MIGRATIONS)}); upgrade FlexiRoaster"
            )
        self.created = current == 0
        for number, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            self._exec(con, "BEGIN")
            try:
                self._exec(con, sql)
                self._exec(
                    con, "INSERT INTO flexiroaster.schema_version VALUES (?, ?)", [number, now()]
                )
            except Exception:
                self._exec(con, "ROLLBACK")
                raise
            self._exec(con, "COMMIT")

    def _recover(self) -> list[str]:
        """Mark runs a dead process left unfinished as failed; returns their ids."""
        active = [s.value for s in RunStatus if s not in RunStatus.terminal()]
        with self.transaction() as cur:
            ids = [
                r[0]
                for r in self._exec(
                    cur,
                    "SELECT id FROM flexiroaster.executions WHERE status IN (SELECT unnest(?))",
                    [active],
                ).fetchall()
            ]
            if not ids:
                return []
            self._exec(
                cur,
                "UPDATE flexiroaster.executions SET status = 'failed', error = ?, completed_at = ?"
                " WHERE id IN (SELECT unnest(?))",
                [RECOVERY_REASON, now(), ids],
            )
            self._exec(
                cur,
                "UPDATE flexiroaster.stage_executions SET status = CASE WHEN status IN ('running', 'retrying')"
                " THEN 'failed' ELSE 'skipped' END, error = ?, completed_at = ?"
                " WHERE execution_id IN (SELECT unnest(?)) AND status IN ('pending', 'running', 'retrying')",
                [RECOVERY_REASON, now(), ids],
            )
        log.warning("marked %d interrupted run(s) failed: %s", len(ids), ", ".join(ids))
        return ids

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._flusher.join(timeout=5)
        self.flush()
        # Close every per-thread cursor here, in this thread: one left to the interpreter's
        # exit can be torn down under a dying thread and abort the process.
        with self._buf_lock:
            cursors, self._thread_cursors = self._thread_cursors, []
        for cur in cursors:
            try:
                cur.close()
            except duckdb.Error:
                pass
        self._con.close()

    # --- batched writes -------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._closed.wait(self._flush_interval):
            try:
                self.flush()
            except Exception:  # keep flushing; the next flush retries the same rows
                log.exception("store flush failed")

    def record_stage(self, rec: StageRecord) -> None:
        """Queue the latest state of a stage; written with the next flush."""
        snap = replace(rec, metrics=dict(rec.metrics))
        with self._buf_lock:
            self._stage_buf[(rec.execution_id, rec.stage_id)] = snap

    def log(
        self,
        execution_id: str,
        stage_id: str | None,
        level: str,
        message: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        with self._buf_lock:
            self._log_id += 1
            self._log_buf.append(
                LogRecord(self._log_id, execution_id, stage_id, level, message, now(), metadata)
            )

    def flush(self) -> None:
        """Write queued stage states and log lines, one Arrow batch per table.

        Held under one lock from taking the rows to committing them, so a caller that flushes
        before reading never returns while another thread's write of the same rows is open.
        """
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        with self._buf_lock:
            stages, self._stage_buf = list(self._stage_buf.values()), {}
            logs, self._log_buf = self._log_buf, []
        if not stages and not logs:
            return
        try:
            with self.transaction() as cur:
                if stages:
                    cols = {c: [getattr(s, c) for s in stages] for c in STAGE_COLS}
                    cols["status"] = [str(s) for s in cols["status"]]
                    cols["metrics"] = [json.dumps(m, default=str) for m in cols["metrics"]]
                    self._insert_arrow(
                        cur,
                        pa.table(cols),
                        "INSERT OR REPLACE INTO flexiroaster.stage_executions",
                        STAGE_COLS,
                    )
                if logs:
                    cols = {c: [getattr(r, c) for r in logs] for c in LOG_COLS}
                    cols["metadata"] = [
                        json.dumps(m, default=str) if m else None for m in cols["metadata"]
                    ]
                    self._insert_arrow(
                        cur, pa.table(cols), "INSERT INTO flexiroaster.logs", LOG_COLS
                    )
        except Exception:
            with self._buf_lock:  # put them back so nothing is lost; newer states win
                for s in stages:
                    self._stage_buf.setdefault((s.execution_id, s.stage_id), s)
                self._log_buf[:0] = logs
            raise

    def _insert_arrow(self, cur, table, insert: str, cols: list[str]) -> None:
        cur.register("_batch", table)
        try:
            names = ", ".join(cols)
            self._exec(cur, f"{insert} ({names}) SELECT {names} FROM _batch")
        finally:
            cur.unregister("_batch")

    # --- executions -----------------------------------------------------------------------

    def insert_execution(self, rec: ExecutionRecord, stages: list[StageRecord]) -> None:
        with self.transaction() as cur:
            self._exec(
                cur,
                f"INSERT INTO flexiroaster.executions ({', '.join(EXEC_COLS)})"
                f" VALUES ({', '.join('?' for _ in EXEC_COLS)})",
                [db_value(c, getattr(rec, c)) for c in EXEC_COLS],
            )
        for s in stages:
            self.record_stage(s)

    def import_executions(self, runs: list[ExecutionRecord], stages: list[StageRecord]) -> None:
        """Write many finished runs and their stages at once (history imports, benchmarks)."""
        import pyarrow as pa

        ecols = {c: [db_value(c, getattr(r, c)) for r in runs] for c in EXEC_COLS}
        scols = {c: [getattr(x, c) for x in stages] for c in STAGE_COLS}
        scols["status"] = [str(v) for v in scols["status"]]
        scols["metrics"] = [json.dumps(m, default=str) for m in scols["metrics"]]
        with self.transaction() as cur:
            self._insert_arrow(
                cur, pa.table(ecols), "INSERT INTO flexiroaster.executions", EXEC_COLS
            )
            if stages:
                self._insert_arrow(
                    cur, pa.table(scols), "INSERT INTO flexiroaster.stage_executions", STAGE_COLS
                )

    def update_execution(self, rec: ExecutionRecord, *, flush: bool = True) -> None:
        """Write the run's row; stage states queued before it are flushed first (`flush`)."""
        if flush:
            self.flush()
        cols = [c for c in EXEC_COLS if c != "id"]
        with self.transaction() as cur:
            self._exec(
                cur,
                f"UPDATE flexiroaster.executions SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                [db_value(c, getattr(rec, c)) for c in cols] + [rec.id],
            )

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        rows = self._select("executions", "id = ?", [execution_id])
        if not rows:
            raise NotFound(f"no execution {execution_id!r}")
        return execution_from_row(rows[0])

    def list_executions(
        self,
        *,
        pipeline_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ExecutionRecord], int]:
        """A page of runs, newest first, and how many match in all."""
        where, args = ["true"], []
        for cond, value in (
            ("pipeline_id = ?", pipeline_id),
            ("status = ?", status),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        cond = " AND ".join(where)
        cur = self.cursor()
        total = self._exec(
            cur, f"SELECT count(*) FROM flexiroaster.executions WHERE {cond}", args
        ).fetchall()[0][0]
        rows = self._select(
            "executions", cond, args, order="created_at DESC, id DESC", limit=limit, offset=offset
        )
        return [execution_from_row(r) for r in rows], total

    def get_stages(self, execution_id: str) -> list[StageRecord]:
        self.flush()
        rows = self._select(
            "stage_executions", "execution_id = ?", [execution_id], order="position"
        )
        return [stage_from_row(r) for r in rows]

    def get_logs(self, execution_id: str, *, after: int = 0, limit: int = 1000) -> list[LogRecord]:
        self.flush()
        rows = self._select(
            "logs", "execution_id = ? AND id > ?", [execution_id, after], order="id", limit=limit
        )
        return [log_from_row(r) for r in rows]

    def pipeline_history(self, pipeline_id: str, limit: int = 100) -> list[ExecutionRecord]:
        return self.list_executions(pipeline_id=pipeline_id, limit=limit)[0]

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        """Read-only helper for other modules' reports; `flexiroaster.` names the metadata schema."""
        return self._exec(self.cursor(), sql, params).fetchall()

    # --- pipelines ------------------------------------------------------------------------

    def save_pipeline(
        self, pipeline_id: str, name: str, description: str, spec_yaml: str
    ) -> PipelineRecord:
        """Store a pipeline's text as its next version (version 1 when new)."""
        at = now()
        with self.transaction() as cur:
            found = self._exec(
                cur,
                "SELECT version, created_at FROM flexiroaster.pipelines WHERE id = ?",
                [pipeline_id],
            ).fetchall()
            version, created = (found[0][0] + 1, found[0][1]) if found else (1, at)
            self._exec(
                cur,
                "INSERT OR REPLACE INTO flexiroaster.pipelines VALUES (?, ?, ?, ?, ?, ?, ?)",
                [pipeline_id, name, description, version, spec_yaml, created, at],
            )
            self._exec(
                cur,
                "INSERT INTO flexiroaster.pipeline_versions VALUES (?, ?, ?, ?)",
                [pipeline_id, version, spec_yaml, at],
            )
        return PipelineRecord(pipeline_id, name, description, version, spec_yaml, created, at)

    def has_pipeline(self, pipeline_id: str) -> bool:
        return bool(self._select("pipelines", "id = ?", [pipeline_id]))

    def get_pipeline(self, pipeline_id: str) -> PipelineRecord:
        found = self._select("pipelines", "id = ?", [pipeline_id])
        if not found:
            raise NotFound(f"no pipeline {pipeline_id!r}")
        return PipelineRecord(**found[0])

    def list_pipelines(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[PipelineRecord], int]:
        total = self._exec(self.cursor(), "SELECT count(*) FROM flexiroaster.pipelines").fetchall()[
            0
        ][0]
        found = self._select("pipelines", "true", [], order="id", limit=limit, offset=offset)
        return [PipelineRecord(**r) for r in found], total

    def pipeline_versions(self, pipeline_id: str) -> list[tuple[int, str, datetime]]:
        """(version, spec_yaml, created_at) of every stored version, newest first."""
        self.get_pipeline(pipeline_id)
        found = self._select(
            "pipeline_versions", "pipeline_id = ?", [pipeline_id], order="version DESC"
        )
        return [(r["version"], r["spec_yaml"], r["created_at"]) for r in found]

    def delete_pipeline(self, pipeline_id: str) -> None:
        """Forget a pipeline and its versions; its runs stay in the history."""
        self.get_pipeline(pipeline_id)
        with self.transaction() as cur:
            self._exec(
                cur,
                "DELETE FROM flexiroaster.pipeline_versions WHERE pipeline_id = ?",
                [pipeline_id],
            )
            self._exec(cur, "DELETE FROM flexiroaster.pipelines WHERE id = ?", [pipeline_id])

    def _select(
        self,
        table: str,
        where: str,
        args: list,
        *,
        order: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM flexiroaster.{table} WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        cur = self.cursor()
        res = self._exec(cur, sql, args)
        names = [d[0] for d in res.description]
        return [dict(zip(names, row, strict=True)) for row in res.fetchall()]

    # --- output tables --------------------------------------------------------------------

    def ensure_schema(self, schema: str) -> None:
        """Create a user schema on its own, serialised: two stages creating the same schema
        inside their own transactions would hit a write-write conflict."""
        with self._write_lock:
            cur = self.cursor()
            cur.execute(
                f'CREATE SCHEMA IF NOT EXISTS "{self.catalog}"."{schema.replace(chr(34), chr(34) * 2)}"'
            )

    def table_exists(self, name: str, cur: duckdb.DuckDBPyConnection | None = None) -> bool:
        schema, _, table = name.rpartition(".")
        cur = cur or self.cursor()
        return bool(
            self._exec(
                cur,
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?"
                " AND table_name = ?",
                [self.catalog, schema or "main", table],
            ).fetchall()[0][0]
        )
