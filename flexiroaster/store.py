"""The only owner of the DuckDB file: schema, migrations, batched writes, typed reads."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
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
# What DuckDB says when the file system refuses a write (full, read-only, permissions, I/O).
_WRITE_FAILED = re.compile(
    r"could not write|no space left|read-only file system|permission denied|input/output error"
    r"|disk quota|could not (?:open|create|truncate|sync|fsync)",
    re.IGNORECASE,
)
# Free space a degraded store wants before it tries a write again (a tiny write can fit in the
# last page of a file on a full disk and would pass for a recovery).
_RESUME_FREE_BYTES = 1 << 20


class StoreUnavailable(FlexiError):
    """The store cannot write (disk full, read-only or failing file system): nothing new is
    accepted until it can; what is stored stays readable."""

    status = 503
    code = "store_unavailable"


def _is_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError | duckdb.IOException):
        return True
    return isinstance(exc, duckdb.Error) and bool(_WRITE_FAILED.search(str(exc)))


def check_writable(folder: Path, store: Path) -> None:
    """Fail at once, naming the folder, when the store's folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".flexiroaster-write-check-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"x")
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"the data directory {folder} is not writable ({exc.strerror or exc}); the store"
            f" {store} lives there and must be written. Make the directory writable by this user"
            " (or free space on its file system), or point FLEXIROASTER_DATA_DIR /"
            " FLEXIROASTER_STORE_PATH elsewhere."
        ) from None

RECOVERY_REASON = "runtime stopped during the run"
HELD_RECOVERY_REASON = "runtime stopped while the run was held"

ALLOCATOR = {"allocator_background_threads": "true", "allocator_flush_threshold": "16MB"}
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
    # 2: point reads of a run's stages use an index instead of scanning every stage row
    """
    CREATE INDEX stage_executions_execution ON flexiroaster.stage_executions (execution_id);
    """,
    # 3: schedules, and the fire time a scheduled run stands for
    """
    CREATE TABLE flexiroaster.schedules (
        id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, pipeline_id VARCHAR NOT NULL,
        type VARCHAR NOT NULL, expression VARCHAR NOT NULL, timezone VARCHAR NOT NULL,
        params JSON, enabled BOOLEAN NOT NULL, catchup VARCHAR NOT NULL,
        catchup_cap INTEGER NOT NULL, overlap VARCHAR NOT NULL, secret_hash VARCHAR,
        source VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
        last_run_id VARCHAR, last_fired_at TIMESTAMPTZ, next_run_at TIMESTAMPTZ,
        last_error VARCHAR
    );
    ALTER TABLE flexiroaster.executions ADD COLUMN scheduled_for TIMESTAMPTZ;
    """,
    # 4: the append-only audit log; each entry carries the hash of the one before it
    """
    CREATE TABLE flexiroaster.audit_log (
        id BIGINT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL, actor VARCHAR NOT NULL,
        action VARCHAR NOT NULL, target_type VARCHAR NOT NULL, target_id VARCHAR,
        trace_id VARCHAR NOT NULL, detail JSON, prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL
    );
    """,
    # 5: alert rules, alerts and their notifications; persisted insights; the review policy
    """
    CREATE TABLE flexiroaster.alert_rules (
        id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        pipeline_id VARCHAR, threshold DOUBLE, window_runs INTEGER, severity VARCHAR NOT NULL,
        webhooks JSON, enabled BOOLEAN NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE flexiroaster.alerts (
        id VARCHAR PRIMARY KEY, rule_id VARCHAR NOT NULL, pipeline_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL, severity VARCHAR NOT NULL, status VARCHAR NOT NULL,
        title VARCHAR NOT NULL, message VARCHAR NOT NULL, evidence JSON,
        occurrences INTEGER NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        last_seen_at TIMESTAMPTZ NOT NULL, acknowledged_by VARCHAR, acknowledged_at TIMESTAMPTZ,
        resolved_by VARCHAR, resolved_at TIMESTAMPTZ, resolution VARCHAR
    );
    CREATE INDEX alerts_status ON flexiroaster.alerts (status);
    CREATE TABLE flexiroaster.alert_notifications (
        id VARCHAR PRIMARY KEY, alert_id VARCHAR NOT NULL, url VARCHAR NOT NULL,
        status VARCHAR NOT NULL, attempts INTEGER NOT NULL, last_status_code INTEGER,
        last_error VARCHAR, created_at TIMESTAMPTZ NOT NULL, delivered_at TIMESTAMPTZ
    );
    CREATE TABLE flexiroaster.insights (
        id VARCHAR PRIMARY KEY, pipeline_id VARCHAR NOT NULL, stage_id VARCHAR,
        type VARCHAR NOT NULL, severity VARCHAR NOT NULL, confidence DOUBLE NOT NULL,
        title VARCHAR NOT NULL, explanation VARCHAR NOT NULL, evidence JSON, data JSON,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL, model_version VARCHAR NOT NULL,
        input_hash VARCHAR NOT NULL, action JSON, band VARCHAR NOT NULL, status VARCHAR NOT NULL,
        decided_by VARCHAR, decided_at TIMESTAMPTZ, reason VARCHAR, snoozed_until TIMESTAMPTZ,
        decided_severity VARCHAR
    );
    CREATE TABLE flexiroaster.policies (
        scope VARCHAR PRIMARY KEY, high DOUBLE, medium DOUBLE, auto_apply BOOLEAN,
        risk_gate BOOLEAN, updated_at TIMESTAMPTZ NOT NULL, updated_by VARCHAR NOT NULL
    );
    INSERT INTO flexiroaster.alert_rules VALUES
        ('run-failed', 'Run failed', 'run_failed', NULL, NULL, NULL, 'high', '[]', true, now(), now()),
        ('failure-streak', '3 failed runs in a row', 'consecutive_failures', NULL, 3, NULL,
         'critical', '[]', true, now(), now()),
        ('duration-anomaly', 'Anomalous run duration', 'duration_anomaly', NULL, NULL, NULL,
         'medium', '[]', true, now(), now()),
        ('schedule-late', 'Scheduled run missed or over 5 minutes late', 'schedule_late', NULL,
         300, NULL, 'high', '[]', true, now(), now()),
        ('validation-rate', 'Validation failing in over 20% of the last 20 runs',
         'validation_failure_rate', NULL, 20, 20, 'medium', '[]', true, now(), now());
    """,
    # 6: the Airflow lineage of a run, and the task states Airflow reported for it
    """
    ALTER TABLE flexiroaster.executions ADD COLUMN lineage JSON;
    CREATE TABLE flexiroaster.airflow_callbacks (
        id VARCHAR PRIMARY KEY, execution_id VARCHAR NOT NULL, dag_id VARCHAR NOT NULL,
        dag_run_id VARCHAR NOT NULL, task_id VARCHAR NOT NULL, try_number INTEGER NOT NULL,
        state VARCHAR NOT NULL, message VARCHAR, error VARCHAR, start_date TIMESTAMPTZ,
        end_date TIMESTAMPTZ, received_at TIMESTAMPTZ NOT NULL, payload JSON
    );
    CREATE INDEX airflow_callbacks_execution ON flexiroaster.airflow_callbacks (execution_id);
    """,
    # 7: variables and secrets (a secret's value is Fernet ciphertext)
    """
    CREATE TABLE flexiroaster.variables (
        key VARCHAR PRIMARY KEY, value VARCHAR, secret BOOLEAN NOT NULL, description VARCHAR,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL
    );
    """,
    # 8: connections (config plain JSON; secrets Fernet ciphertext of a JSON object, or NULL)
    """
    CREATE TABLE flexiroaster.connections (
        name VARCHAR PRIMARY KEY, type VARCHAR NOT NULL, description VARCHAR, config JSON,
        secrets VARCHAR, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ
    );
    """,
    # 9: alert channels: stored smtp / webhook connections a rule notifies, with its templates
    """
    ALTER TABLE flexiroaster.alert_rules ADD COLUMN channels JSON DEFAULT '[]';
    ALTER TABLE flexiroaster.alert_rules ADD COLUMN recipients JSON DEFAULT '[]';
    ALTER TABLE flexiroaster.alert_rules ADD COLUMN subject VARCHAR;
    ALTER TABLE flexiroaster.alert_rules ADD COLUMN body VARCHAR;
    """,
]

# Columns stored as JSON text, decoded by rows() and encoded by put_rows().
_JSON_COLS = {
    "webhooks", "evidence", "data", "action", "params", "detail", "payload", "lineage", "config",
    "channels", "recipients",
}  # fmt: skip


_STAGE_KEY = ["execution_id", "stage_id"]


# What changes after a row is created (updates write only these, and the key).
RUN_STATE = ["id", "status", "started_at", "completed_at", "error", "stages_completed"]
STAGE_STATE = [c for c in STAGE_COLS if c not in ("stage_type", "position")]


def _run_cols(runs: Iterable[ExecutionRecord], cols: list[str] = EXEC_COLS) -> dict[str, list]:
    return {c: [db_value(c, getattr(r, c)) for r in runs] for c in cols}


def _stage_cols(stages: Iterable[StageRecord], cols: list[str] = STAGE_COLS) -> dict[str, list]:
    out = {c: [getattr(x, c) for x in stages] for c in cols}
    out["status"] = [str(v) for v in out["status"]]
    out["metrics"] = [json.dumps(m, default=str) for m in out["metrics"]]
    return out


def _log_cols(logs: list[LogRecord]) -> dict[str, list]:
    cols = {c: [getattr(r, c) for r in logs] for c in LOG_COLS}
    cols["metadata"] = [json.dumps(m, default=str) if m else None for m in cols["metadata"]]
    return cols


def _filters(*pairs: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE condition of the `col = ?` parts whose value is given, and their arguments."""
    given = [(cond, value) for cond, value in pairs if value is not None]
    return " AND ".join(["true", *(c for c, _ in given)]), [v for _, v in given]


def _audit_hash(entry: dict[str, Any]) -> str:
    import hashlib

    at = entry["created_at"]
    content = [
        entry["id"], at.isoformat() if hasattr(at, "isoformat") else str(at), entry["actor"],
        entry["action"], entry["target_type"], entry["target_id"], entry["trace_id"],
        entry["detail"] if isinstance(entry["detail"], str) else json.dumps(entry["detail"], sort_keys=True),
        entry["prev_hash"],
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


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
        check_writable(self.path.parent, self.path)
        try:
            # No extension is downloaded behind the user's back (e.g. by a /query that names a
            # URL): what a pipeline needs is installed on purpose. The allocator hands memory a
            # big query freed back to the system (a 100k-run scan otherwise keeps ~100 MB).
            config = {**ALLOCATOR, "autoinstall_known_extensions": "false"}
            self._con = duckdb.connect(str(self.path), config=config)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(_locked_message(self.path, exc)) from None
            raise FlexiError(f"cannot open the store {self.path}: {exc}") from None
        self._local = threading.local()
        self._thread_cursors: list[duckdb.DuckDBPyConnection] = []
        self._buf_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._new_ready = threading.Condition()
        self._new_runs: list[tuple[ExecutionRecord, list[StageRecord], Future[None]]] = []
        self._write_lock = threading.RLock()
        self._table_locks: dict[str, threading.Lock] = {}
        self.catalog = self._con.sql("SELECT current_database()").fetchall()[0][0]
        # Fully qualified: a store file named flexiroaster.duckdb makes `flexiroaster.x` ambiguous.
        self.meta = f'"{self.catalog}".flexiroaster'
        self._exec(self._con, "ATTACH ':memory:' AS scratch")
        self._migrate()
        self._log_id = self._exec(
            self._con, "SELECT coalesce(max(id), 0) FROM flexiroaster.logs"
        ).fetchall()[0][0]
        # Queued state changes of rows already written; the newest state wins.
        self._exec_buf: dict[str, ExecutionRecord] = {}
        self._stage_buf: dict[tuple[str, str], StageRecord] = {}
        self._log_buf: list[LogRecord] = []
        self._audit_buf: list[dict[str, Any]] = []
        last = self._exec(
            self._con, "SELECT id, hash FROM flexiroaster.audit_log ORDER BY id DESC LIMIT 1"
        ).fetchall()
        self._audit_id, self._audit_hash = last[0] if last else (0, "")
        # Stored pipelines, read through: this store is their only writer.
        self._pipelines: dict[str, PipelineRecord] = {}
        self._closed = threading.Event()
        # Why writes fail (disk full, read-only ...), or None; cleared by the next good write.
        self.degraded: str | None = None
        self.recovered = self._recover()
        self._flush_interval = flush_interval
        self._flusher = threading.Thread(target=self._flush_loop, name="store-flush", daemon=True)
        self._flusher.start()
        self._inserter = threading.Thread(
            target=self._insert_loop, name="store-insert", daemon=True
        )
        self._inserter.start()

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
        """One write transaction; a write the file system refuses marks the store degraded and
        raises StoreUnavailable (a failed COMMIT has already rolled back)."""
        with self._write_lock:
            cur = self.cursor()
            self._exec(cur, "BEGIN")
            try:
                yield cur
            except BaseException as exc:
                self._exec(cur, "ROLLBACK")
                if isinstance(exc, Exception) and _is_write_failure(exc):
                    raise self._write_failed(exc) from None
                raise
            try:
                self._exec(cur, "COMMIT")
            except Exception as exc:
                if _is_write_failure(exc):
                    raise self._write_failed(exc) from None
                raise
            self._write_ok()

    # --- write failures -----------------------------------------------------------------

    def _write_failed(self, exc: BaseException) -> StoreUnavailable:
        """Mark the store degraded (logged once per outage); the error to raise."""
        reason = f"the store {self.path} cannot be written: {exc}"
        with self._buf_lock:
            first, self.degraded = self.degraded is None, reason
        if first:
            log.error("%s; new runs are refused until writes succeed again", reason)
        return StoreUnavailable(
            f"{reason}. Stored runs stay readable; new runs are refused until writes succeed"
            " again (free space or fix the file system: the runtime retries on its own)."
        )

    def _write_ok(self) -> None:
        if self.degraded is not None:
            with self._buf_lock:
                was, self.degraded = self.degraded, None
            if was is not None:
                log.warning("the store %s writes again; accepting new runs", self.path)

    def check_writes(self) -> None:
        """Raise StoreUnavailable while writes fail (what refuses new runs)."""
        reason = self.degraded
        if reason is not None:
            raise StoreUnavailable(
                f"{reason}. New runs are refused until writes succeed again; stored runs stay"
                " readable."
            )

    def _room(self) -> bool:
        """Whether the store's file system has room for writes to be worth trying again."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize >= _RESUME_FREE_BYTES

    def _probe(self) -> None:
        """While degraded with nothing queued: a small real write tells whether writes work."""
        with self.transaction() as cur:
            self._exec(
                cur,
                "UPDATE flexiroaster.schema_version SET applied_at = applied_at"
                " WHERE version = (SELECT max(version) FROM flexiroaster.schema_version)",
            )

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
            found = self._exec(
                cur,
                "SELECT id, status FROM flexiroaster.executions WHERE status IN (SELECT unnest(?))",
                [active],
            ).fetchall()
            ids = [r[0] for r in found]
            held = [r[0] for r in found if r[1] == RunStatus.HELD]
            if not ids:
                return []
            # A held run never started: it did not fail, so it must not count as a failure.
            self._exec(
                cur,
                "UPDATE flexiroaster.executions SET"
                " status = CASE WHEN status = 'held' THEN 'cancelled' ELSE 'failed' END,"
                " error = CASE WHEN status = 'held' THEN ? ELSE ? END, completed_at = ?"
                " WHERE id IN (SELECT unnest(?))",
                [HELD_RECOVERY_REASON, RECOVERY_REASON, now(), ids],
            )
            # The stages of a held run never ran either: they carry the held run's reason.
            self._exec(
                cur,
                "UPDATE flexiroaster.stage_executions SET status = CASE WHEN status IN ('running', 'retrying')"
                " THEN 'failed' ELSE 'skipped' END,"
                " error = CASE WHEN execution_id IN (SELECT unnest(?)) THEN ? ELSE ? END, completed_at = ?"
                " WHERE execution_id IN (SELECT unnest(?)) AND status IN ('pending', 'running', 'retrying')",
                [held, HELD_RECOVERY_REASON, RECOVERY_REASON, now(), ids],
            )
        log.warning("marked %d interrupted run(s) failed: %s", len(ids), ", ".join(ids))
        return ids

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._new_ready:
            self._new_ready.notify()
        self._inserter.join(timeout=5)
        self._flusher.join(timeout=5)
        try:
            self.flush()
        except StoreUnavailable:  # what could not be written is what a crash would lose
            log.error("closing the store with unwritten changes: %s", self.degraded)
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
                if self.degraded is not None and not self._flush_lock.locked():
                    self._probe()
            except StoreUnavailable:  # logged once when it began; retried every interval
                pass
            except Exception:  # keep flushing; the next flush retries the same rows
                log.exception("store flush failed")

    def record_stage(self, rec: StageRecord) -> None:
        """Queue the latest state of a stage; written with the next flush."""
        snap = replace(rec, metrics=dict(rec.metrics))
        with self._buf_lock:
            self._stage_buf[(rec.execution_id, rec.stage_id)] = snap

    def audit(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_id: str | None,
        detail: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> dict[str, Any]:
        """Append an audit entry (written with the next flush). Entries are chained: each
        carries the SHA-256 of the previous entry's hash and its own content, so an edited or
        deleted entry breaks the chain (see verify_audit)."""
        import uuid

        with self._buf_lock:
            self._audit_id += 1
            entry = {
                "id": self._audit_id, "created_at": now(), "actor": actor, "action": action,
                "target_type": target_type, "target_id": target_id,
                "trace_id": trace_id or uuid.uuid4().hex,
                "detail": json.dumps(detail or {}, sort_keys=True, default=str),
                "prev_hash": self._audit_hash,
            }  # fmt: skip
            entry["hash"] = _audit_hash(entry)
            self._audit_hash = entry["hash"]
            self._audit_buf.append(entry)
        return entry

    def audit_log(
        self,
        *,
        target_type: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, and how many match."""
        self._settle()
        cond, args = _filters(
            ("target_type = ?", target_type),
            ("target_id = ?", target_id),
            ("action = ?", action),
        )
        total = self._exec(
            self.cursor(), f"SELECT count(*) FROM flexiroaster.audit_log WHERE {cond}", args
        ).fetchall()[0][0]
        rows = self._select("audit_log", cond, args, order="id DESC", limit=limit, offset=offset)
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        return rows, total

    def verify_audit(self) -> int | None:
        """The id of the first audit entry whose hash does not check out, or None."""
        self._settle()
        prev = ""
        for r in self._select("audit_log", "true", [], order="id"):
            if r["prev_hash"] != prev or _audit_hash(r) != r["hash"]:
                return r["id"]
            prev = r["hash"]
        return None

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
        """Write queued state changes (run and stage rows) and log lines in one transaction.

        Held under one lock from taking the rows to committing them, so a caller that flushes
        before reading never returns while another thread's write of the same rows is open.
        New runs are not written here but by the insert writer (see insert_execution_async);
        no change to a row is queued before its insert has committed.
        """
        if self.degraded is not None and not self._room():
            self.check_writes()  # no use trying: a write that fits a file's last page would pass
        with self._flush_lock:
            self._flush()

    def _settle(self) -> None:
        """Before a read: commit what is queued, or wait for the flush that took it. (Checked in
        this order: a flush holds its lock from before it takes the queue until it commits.)
        While writes fail, reads answer from what is committed: nothing queued is shown."""
        if (
            self._exec_buf
            or self._stage_buf
            or self._log_buf
            or self._audit_buf
            or self._flush_lock.locked()
        ):
            try:
                self.flush()
            except StoreUnavailable:
                pass

    def _flush(self) -> None:
        with self._buf_lock:
            runs, self._exec_buf = self._exec_buf, {}
            stages, self._stage_buf = self._stage_buf, {}
            logs, self._log_buf = self._log_buf, []
            audit, self._audit_buf = self._audit_buf, []
        if not runs and not stages and not logs and not audit:
            return
        try:
            with self.transaction() as cur:
                # Only the columns that change after a row is created.
                self._update(cur, "executions", _run_cols(runs.values(), RUN_STATE), ["id"])
                self._update(
                    cur, "stage_executions", _stage_cols(stages.values(), STAGE_STATE), _STAGE_KEY
                )
                self._insert(cur, "logs", _log_cols(logs))
                if audit:
                    self._insert(cur, "audit_log", {c: [a[c] for a in audit] for c in audit[0]})
        except Exception:
            with self._buf_lock:  # put them back so nothing is lost; newer states win
                self._audit_buf[:0] = audit
                for key, rec in runs.items():
                    self._exec_buf.setdefault(key, rec)
                for key, rec in stages.items():
                    self._stage_buf.setdefault(key, rec)
                self._log_buf[:0] = logs
            raise

    def _insert_loop(self) -> None:
        """The insert writer: new runs queued by any thread go in together, one commit for all
        of them, and each waiting caller's future is resolved with the outcome."""
        while True:
            with self._new_ready:
                while not self._new_runs and not self._closed.is_set():
                    self._new_ready.wait()
                batch, self._new_runs = self._new_runs, []
            if not batch:
                return  # closed and drained
            try:
                runs = [run for run, _stages, _fut in batch]
                stages = [s for _run, st, _fut in batch for s in st]
                cur = self.cursor()
                self._exec(cur, "BEGIN")
                try:
                    self._insert(cur, "executions", _run_cols(runs))
                    self._insert(cur, "stage_executions", _stage_cols(stages))
                except BaseException:
                    self._exec(cur, "ROLLBACK")
                    raise
                self._exec(cur, "COMMIT")
            except Exception as exc:  # every caller in the batch is told; none is written
                err = self._write_failed(exc) if _is_write_failure(exc) else exc
                for _run, _stages, fut in batch:
                    fut.set_exception(err)
            else:
                self._write_ok()
                for _run, _stages, fut in batch:
                    fut.set_result(None)

    # Rows per parameterised statement; more go in several. Arrow would be faster for big
    # batches (a 1,000-row Arrow insert costs a tenth of parameterised ones) but its first use
    # imports pyarrow and pandas into the runtime for good (+85 MB, a 300 ms stall), so only
    # bulk imports use it.
    _SMALL = 100

    @staticmethod
    def _chunks(cols: dict[str, list], size: int) -> Iterator[tuple[int, list]]:
        """(rows, row-major values) of each run of `size` rows."""
        n = len(next(iter(cols.values())))
        for lo in range(0, n, size):
            hi = min(n, lo + size)
            yield hi - lo, [col[i] for i in range(lo, hi) for col in cols.values()]

    def _insert(self, cur, name: str, cols: dict[str, list], *, bulk: bool = False) -> None:
        n = len(next(iter(cols.values())))
        if not n:
            return
        names = ", ".join(cols)
        if bulk and n > self._SMALL:
            import pyarrow as pa

            cur.register("_batch", pa.table(cols))
            try:
                self._exec(
                    cur, f"INSERT INTO flexiroaster.{name} ({names}) SELECT {names} FROM _batch"
                )
            finally:
                cur.unregister("_batch")
            return
        row = f"({', '.join('?' for _ in cols)})"
        for k, args in self._chunks(cols, self._SMALL):
            sql = f"INSERT INTO flexiroaster.{name} ({names}) VALUES {', '.join([row] * k)}"
            self._exec(cur, sql, args)

    def _update(self, cur, name: str, cols: dict[str, list], keys: list[str]) -> None:
        """UPDATE rows by key. A missing row fails the flush (and so rolls it back): a state
        was recorded for a row that was never created."""
        n = len(next(iter(cols.values())))
        if not n:
            return
        if n == 1:
            sets = ", ".join(f"{c} = ?" for c in cols if c not in keys)
            on = " AND ".join(f"{k} = ?" for k in keys)
            args = [v[0] for c, v in cols.items() if c not in keys] + [cols[k][0] for k in keys]
            sql = f"UPDATE flexiroaster.{name} SET {sets} WHERE {on}"
            changed = self._exec(cur, sql, args).fetchall()[0][0]
        else:
            sets = ", ".join(f"{c} = _batch.{c}" for c in cols if c not in keys)
            on = " AND ".join(f"t.{k} = _batch.{k}" for k in keys)
            row = f"({', '.join('?' for _ in cols)})"
            changed = 0
            for k, args in self._chunks(cols, self._SMALL):
                sql = (
                    f"UPDATE flexiroaster.{name} AS t SET {sets} FROM (VALUES"
                    f" {', '.join([row] * k)}) AS _batch({', '.join(cols)}) WHERE {on}"
                )
                changed += self._exec(cur, sql, args).fetchall()[0][0]
        if changed != n:
            raise FlexiError(f"store: {n - changed} of {n} {name} row(s) to update do not exist")

    # --- executions -----------------------------------------------------------------------

    def insert_execution(self, rec: ExecutionRecord, stages: list[StageRecord]) -> None:
        """Record a new run and its stages, durably: returns once they are committed."""
        self.insert_execution_async(rec, stages).result()

    def insert_execution_async(
        self, rec: ExecutionRecord, stages: list[StageRecord]
    ) -> Future[None]:
        """Queue a new run and its stages for the insert writer; the future resolves once they
        are committed (with the other runs queued meanwhile: concurrent triggers share one
        commit, and they do not wait behind the batch of state changes, which touch other rows).
        """
        fut: Future[None] = Future()
        snap = replace(rec, params=dict(rec.params))
        stage_snaps = [replace(s, metrics=dict(s.metrics)) for s in stages]
        self.check_writes()
        with self._new_ready:
            if self._closed.is_set():
                raise FlexiError("the store is closed")
            self._new_runs.append((snap, stage_snaps, fut))
            self._new_ready.notify()
        return fut

    def import_executions(self, runs: list[ExecutionRecord], stages: list[StageRecord]) -> None:
        """Write many finished runs and their stages at once (history imports, benchmarks)."""
        with self.transaction() as cur:
            self._insert(cur, "executions", _run_cols(runs), bulk=True)
            self._insert(cur, "stage_executions", _stage_cols(stages), bulk=True)

    def update_execution(self, rec: ExecutionRecord, *, wait: bool = False) -> None:
        """Queue the run's new state; `wait`: return once it, and everything queued before it
        (its stage states and log lines included), is committed."""
        snap = replace(rec, params=dict(rec.params))
        with self._buf_lock:
            self._exec_buf[rec.id] = snap
        if wait:
            self.flush()

    def get_execution(self, execution_id: str) -> ExecutionRecord:
        """The stored run; a state still queued is committed first, so what is returned is
        what a crash would leave."""
        self._settle()
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
        cond, args = _filters(
            ("pipeline_id = ?", pipeline_id),
            ("status = ?", status),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        )
        self._settle()
        cur = self.cursor()
        total, lo, hi = self._exec(
            cur,
            "SELECT count(*), min(created_at), max(created_at) FROM flexiroaster.executions"
            f" WHERE {cond}",
            args,
        ).fetchall()[0]
        if not total or offset >= total:
            return [], total
        # A live store holds runs in creation order, the worst case for a newest-first top-N
        # (every row scanned beats the heap). So first narrow to a created_at window that holds
        # the newest offset+limit rows: guess twice their share of the time span, check with a
        # count, widen until it does. Exact: every wanted row is at or after the cutoff.
        want = offset + limit
        share = min(1.0, 2.0 * want / total)
        cutoff = lo
        while share < 1.0:
            cutoff = hi - (hi - lo) * share
            n = self._exec(
                cur,
                f"SELECT count(*) FROM flexiroaster.executions WHERE {cond} AND created_at >= ?",
                [*args, cutoff],
            ).fetchall()[0][0]
            if n >= want:
                break
            share, cutoff = share * 4, lo
        # spec_yaml is left out: no list shows it, and it is most of a row's bytes.
        rows = self._select(
            "executions",
            f"{cond} AND created_at >= ?",
            [*args, cutoff],
            order="created_at DESC, id DESC",
            limit=limit,
            offset=offset,
            exclude="spec_yaml",
        )
        return [execution_from_row(r) for r in rows], total

    def get_stages(self, execution_id: str) -> list[StageRecord]:
        self._settle()
        rows = self._select(
            "stage_executions", "execution_id = ?", [execution_id], order="position"
        )
        return [stage_from_row(r) for r in rows]

    def get_logs(self, execution_id: str, *, after: int = 0, limit: int = 1000) -> list[LogRecord]:
        self._settle()
        rows = self._select(
            "logs", "execution_id = ? AND id > ?", [execution_id, after], order="id", limit=limit
        )
        return [log_from_row(r) for r in rows]

    def search_logs(
        self,
        *,
        level: str | None = None,
        pipeline_id: str | None = None,
        execution_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
        after: int = 0,
        before: int | None = None,
        limit: int = 200,
    ) -> list[tuple[LogRecord, str]]:
        """Log lines of every run, newest first, with their run's pipeline id. `levels` is the
        minimum level; `text` a case-insensitive substring of the message; `after`/`before`
        are log-id cursors (newer than / older than)."""
        self._settle()
        levels = ["DEBUG", "INFO", "WARN", "ERROR"]
        cond, args = _filters(
            ("l.id > ?", after),
            ("l.id < ?", before),
            ("e.pipeline_id = ?", pipeline_id),
            ("l.execution_id = ?", execution_id),
            ("l.timestamp >= ?", since),
            ("l.timestamp < ?", until),
        )
        where = [cond]
        if level:
            where.append("l.level IN (SELECT unnest(?))")
            args.append(levels[levels.index(level) :])
        if text:
            where.append("contains(lower(l.message), lower(?))")
            args.append(text)
        res = self._exec(
            self.cursor(),
            "SELECT l.*, e.pipeline_id AS _pipeline FROM flexiroaster.logs l"
            " LEFT JOIN flexiroaster.executions e ON e.id = l.execution_id"
            f" WHERE {' AND '.join(where)} ORDER BY l.id DESC LIMIT {int(limit)}",
            args,
        )
        names = [d[0] for d in res.description]
        out = []
        for row in res.fetchall():
            r = dict(zip(names, row, strict=True))
            pipeline = r.pop("_pipeline")
            out.append((log_from_row(r), pipeline))
        return out

    def user_tables(self) -> list[dict[str, Any]]:
        """Tables and views the pipelines wrote (not the store's own schema)."""
        res = self._exec(
            self.cursor(),
            "SELECT schema_name, table_name, 'table' AS kind, estimated_size AS rows,"
            " column_count FROM duckdb_tables() WHERE database_name = ? AND schema_name <> 'flexiroaster'"
            " UNION ALL SELECT schema_name, view_name, 'view', NULL, column_count FROM duckdb_views()"
            " WHERE database_name = ? AND schema_name <> 'flexiroaster' AND NOT internal"
            " ORDER BY 1, 2",
            [self.catalog, self.catalog],
        )
        names = [d[0] for d in res.description]
        return [dict(zip(names, r, strict=True)) for r in res.fetchall()]

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self._exec(
                self.cursor(),
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ?"
                " AND schema_name = ? AND table_name = ? ORDER BY column_index",
                [self.catalog, schema, table],
            ).fetchall()
        ]

    def pipeline_history(self, pipeline_id: str, limit: int = 100) -> list[ExecutionRecord]:
        return self.list_executions(pipeline_id=pipeline_id, limit=limit)[0]

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        """Read-only helper for other modules' reports; `flexiroaster.` names the metadata schema."""
        self._settle()
        return self._exec(self.cursor(), sql, params).fetchall()

    # --- pipelines ------------------------------------------------------------------------

    def save_pipeline(
        self, pipeline_id: str, name: str, description: str, spec_yaml: str
    ) -> PipelineRecord:
        """Store a pipeline's text as its next version (version 1 when new)."""
        at = now()
        with self._write_lock:  # saves and deletes update the in-memory copy in commit order
            rec = self._save_pipeline(pipeline_id, name, description, spec_yaml, at)
            with self._buf_lock:
                self._pipelines[pipeline_id] = rec
        return rec

    def _save_pipeline(
        self, pipeline_id: str, name: str, description: str, spec_yaml: str, at: datetime
    ) -> PipelineRecord:
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
        try:
            self.get_pipeline(pipeline_id)
        except NotFound:
            return False
        return True

    def get_pipeline(self, pipeline_id: str) -> PipelineRecord:
        """The stored pipeline (from memory after the first read: only this store writes it)."""
        with self._buf_lock:
            rec = self._pipelines.get(pipeline_id)
        if rec is not None:
            return rec
        with self._write_lock:  # not interleaved with a save or delete of the same pipeline
            found = self._select("pipelines", "id = ?", [pipeline_id])
            if not found:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            rec = PipelineRecord(**found[0])
            with self._buf_lock:
                self._pipelines[pipeline_id] = rec
        return rec

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
            with self._buf_lock:
                self._pipelines.pop(pipeline_id, None)

    def _select(
        self,
        table: str,
        where: str,
        args: list,
        *,
        order: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        exclude: str | None = None,
    ) -> list[dict[str, Any]]:
        cols = f"* EXCLUDE ({exclude})" if exclude else "*"
        sql = f"SELECT {cols} FROM flexiroaster.{table} WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        cur = self.cursor()
        res = self._exec(cur, sql, args)
        names = [d[0] for d in res.description]
        return [dict(zip(names, row, strict=True)) for row in res.fetchall()]

    # --- small tables owned by one module each (alerts, insights, policies) ---------------

    def rows(
        self,
        table: str,
        where: str = "true",
        args: list | None = None,
        *,
        order: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Rows of a metadata table as dicts, JSON columns decoded (queued writes settled)."""
        self._settle()
        out = self._select(table, where, args or [], order=order, limit=limit, offset=offset)
        for r in out:
            for c in _JSON_COLS.intersection(r):
                r[c] = json.loads(r[c]) if r[c] is not None else None
        return out

    def count(self, table: str, where: str = "true", args: list | None = None) -> int:
        self._settle()
        sql = f"SELECT count(*) FROM flexiroaster.{table} WHERE {where}"
        return self._exec(self.cursor(), sql, args or []).fetchall()[0][0]

    def put_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert or replace whole rows (same columns each) in one transaction."""
        if not rows:
            return
        cols = list(rows[0])
        sql = (
            f"INSERT OR REPLACE INTO flexiroaster.{table} ({', '.join(cols)})"
            f" VALUES ({', '.join('?' for _ in cols)})"
        )
        values = [
            [json.dumps(r[c], default=str) if c in _JSON_COLS and r[c] is not None else r[c] for c in cols]
            for r in rows
        ]
        with self.transaction() as cur:
            self._exec(cur, "SELECT 1")  # the transaction is open before executemany
            cur.executemany(_META.sub(self.meta + ".", sql), values)

    def delete_rows(self, table: str, where: str, args: list) -> int:
        with self.transaction() as cur:
            return self._exec(
                cur, f"DELETE FROM flexiroaster.{table} WHERE {where}", args
            ).fetchall()[0][0]

    # --- schedules ------------------------------------------------------------------------

    def save_schedule(self, row: dict[str, Any]) -> None:
        """Insert or replace a schedule row (the scheduler owns their meaning)."""
        cols = list(row)
        with self.transaction() as cur:
            self._exec(
                cur,
                f"INSERT OR REPLACE INTO flexiroaster.schedules ({', '.join(cols)})"
                f" VALUES ({', '.join('?' for _ in cols)})",
                [json.dumps(v) if c == "params" else v for c, v in row.items()],
            )

    def list_schedules(self) -> list[dict[str, Any]]:
        rows = self._select("schedules", "true", [], order="id")
        for r in rows:
            r["params"] = json.loads(r["params"]) if r["params"] else {}
        return rows

    def delete_schedule(self, schedule_id: str) -> None:
        with self.transaction() as cur:
            self._exec(cur, "DELETE FROM flexiroaster.schedules WHERE id = ?", [schedule_id])

    def set_schedule_states(self, rows: list[dict[str, Any]]) -> None:
        """Update the same state fields of many schedules at once (rows hold their `id`)."""
        if not rows:
            return
        cols = {c: [r[c] for r in rows] for c in rows[0]}
        with self.transaction() as cur:
            self._update(cur, "schedules", cols, ["id"])

    def set_schedule_state(self, schedule_id: str, **fields: Any) -> None:
        """Update a schedule's run-time state (next_run_at, last_run_id, enabled ...)."""
        sets = ", ".join(f"{c} = ?" for c in fields)
        with self.transaction() as cur:
            self._exec(
                cur,
                f"UPDATE flexiroaster.schedules SET {sets} WHERE id = ?",
                [*fields.values(), schedule_id],
            )

    # --- output tables --------------------------------------------------------------------

    def ensure_schema(self, schema: str) -> None:
        """Create a user schema on its own, serialised: two stages creating the same schema
        inside their own transactions would hit a write-write conflict."""
        with self._write_lock:
            cur = self.cursor()
            cur.execute(
                f'CREATE SCHEMA IF NOT EXISTS "{self.catalog}"."{schema.replace(chr(34), chr(34) * 2)}"'
            )

    def table_lock(self, name: str) -> threading.Lock:
        """The lock that serialises writes to user table `name` (DuckDB names ignore case)."""
        schema, _, table = name.rpartition(".")
        key = f"{schema or 'main'}.{table}".lower()
        with self._write_lock:
            return self._table_locks.setdefault(key, threading.Lock())

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
