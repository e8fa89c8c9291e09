"""Retention: finished runs older than `retention_days` go, with their stage rows, log lines and
Airflow callbacks (and resolved alerts with their notifications), in small batches on a
background thread; a CHECKPOINT then lets DuckDB reuse the freed blocks and truncate the file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .records import now
from .states import RunStatus

if TYPE_CHECKING:
    from .runtime import Runtime
    from .store import Store

log = logging.getLogger(__name__)

FINAL = sorted(str(s) for s in RunStatus.terminal())
BATCH = 500  # runs per transaction: a batch holds the store's write lock for ~10-50 ms
PAUSE = 0.02  # seconds between batches, so queued state changes and new runs go in between


@dataclass(frozen=True)
class PruneResult:
    """What one prune removed and what it cost."""

    cutoff: datetime
    started_at: datetime
    runs: int = 0
    stages: int = 0
    logs: int = 0
    callbacks: int = 0
    alerts: int = 0
    notifications: int = 0
    batches: int = 0
    seconds: float = 0.0
    longest_batch: float = 0.0  # the longest the store's write lock was held by one batch
    checkpoint_seconds: float | None = None
    checkpoint_error: str | None = None
    size_before: int = 0
    size_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def store_bytes(path: Path) -> int:
    """Bytes the store takes on disk: the database file and its write-ahead log."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}.wal")) if p.exists())


def prune(
    store: Store,
    cutoff: datetime,
    *,
    keep: Callable[[], Iterable[str]] = tuple,
    batch: int = BATCH,
    pause: float = PAUSE,
    stop: threading.Event | None = None,
    checkpoint: bool = True,
    on_pruned: Callable[[list[str]], None] | None = None,
) -> PruneResult:
    """Delete finished runs that completed before `cutoff` (never a held, pending or running one,
    nor any id `keep()` names: the engine's active runs), `batch` runs per transaction;
    `on_pruned` gets the ids of each committed batch."""
    t0 = time.perf_counter()
    started = now()
    size_before = store_bytes(store.path)
    meta = store.meta
    totals = {"runs": 0, "stages": 0, "logs": 0, "callbacks": 0}
    batches, longest = 0, 0.0
    while not (stop is not None and stop.is_set()):
        active = set(keep())
        found = store.query(
            "SELECT id FROM flexiroaster.executions WHERE status IN (SELECT unnest(?))"
            " AND coalesce(completed_at, created_at) < ? ORDER BY created_at LIMIT ?",
            [FINAL, cutoff, batch + len(active)],
        )
        ids = [r[0] for r in found if r[0] not in active][:batch]
        if not ids:
            break
        b0 = time.perf_counter()
        with store.transaction() as cur:
            # The status is checked again under the write lock: only finished runs go.
            gone = [
                r[0]
                for r in cur.execute(
                    f"SELECT id FROM {meta}.executions"
                    " WHERE id IN (SELECT unnest(?)) AND status IN (SELECT unnest(?))",
                    [ids, FINAL],
                ).fetchall()
            ]
            for key, table in (
                ("logs", "logs"),
                ("stages", "stage_executions"),
                ("callbacks", "airflow_callbacks"),
            ):
                totals[key] += cur.execute(
                    f"DELETE FROM {meta}.{table} WHERE execution_id IN (SELECT unnest(?))", [gone]
                ).fetchall()[0][0]
            totals["runs"] += cur.execute(
                f"DELETE FROM {meta}.executions WHERE id IN (SELECT unnest(?))", [gone]
            ).fetchall()[0][0]
        took = time.perf_counter() - b0
        batches, longest = batches + 1, max(longest, took)
        if on_pruned is not None and gone:
            on_pruned(gone)
        if len(ids) < batch or not gone:
            break
        time.sleep(pause)
    alerts, notes = _prune_alerts(store, cutoff)
    removed = totals["runs"] + totals["logs"] + alerts + notes
    ck_s, ck_err = (_checkpoint(store, stop) if checkpoint and removed else (None, None))
    result = PruneResult(
        cutoff=cutoff, started_at=started, **totals, alerts=alerts, notifications=notes,
        batches=batches, seconds=round(time.perf_counter() - t0, 4), longest_batch=round(longest, 4),
        checkpoint_seconds=ck_s, checkpoint_error=ck_err, size_before=size_before,
        size_after=store_bytes(store.path),
    )  # fmt: skip
    if removed:
        log.info(
            "retention: pruned %d run(s), %d stage row(s), %d log line(s), %d alert(s), %d"
            " notification(s) older than %s in %.2f s; store %d -> %d bytes",
            result.runs, result.stages, result.logs, alerts, notes, cutoff.isoformat(),
            result.seconds, size_before, result.size_after,
        )  # fmt: skip
    return result


def _prune_alerts(store: Store, cutoff: datetime) -> tuple[int, int]:
    """Resolved alerts older than the cutoff with their notifications, and delivered or failed
    notifications older than it (a pending one is still owed to its receiver)."""
    meta = store.meta
    with store.transaction() as cur:
        notes = cur.execute(
            f"DELETE FROM {meta}.alert_notifications WHERE (status <> 'pending' AND created_at < ?)"
            f" OR alert_id IN (SELECT id FROM {meta}.alerts WHERE status = 'resolved'"
            " AND resolved_at < ?)",
            [cutoff, cutoff],
        ).fetchall()[0][0]
        alerts = cur.execute(
            f"DELETE FROM {meta}.alerts WHERE status = 'resolved' AND resolved_at < ?", [cutoff]
        ).fetchall()[0][0]
    return alerts, notes


def _checkpoint(store: Store, stop: threading.Event | None) -> tuple[float | None, str | None]:
    """CHECKPOINT, so the deleted rows' blocks are freed (and the file truncated when they are at
    its end). It fails while another transaction writes; tried a few times, then left to the next
    prune or DuckDB's own automatic checkpoint."""
    import duckdb

    error = None
    for attempt in range(5):
        cur = store.new_cursor()
        try:
            c0 = time.perf_counter()
            cur.execute("CHECKPOINT")
            return round(time.perf_counter() - c0, 4), None
        except duckdb.Error as exc:
            error = str(exc).splitlines()[0]
        finally:
            cur.close()
        if stop is not None and stop.wait(0.1 * (attempt + 1)):
            break
        if stop is None:
            time.sleep(0.1 * (attempt + 1))
    log.info("retention: checkpoint skipped (%s); DuckDB checkpoints on its own later", error)
    return None, error


class Retention:
    """The background pruner of a serving runtime: once at start, then every `interval` s."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.days = runtime.settings.retention_days
        self.interval = runtime.settings.retention_interval
        self.last: PruneResult | None = None
        self.total_runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.days is not None

    def cutoff(self) -> datetime:
        return self.rt.scheduler.clock() - timedelta(days=self.days or 0)

    def run_once(self) -> PruneResult:
        """Prune what is older than the cutoff now (what the thread does each time)."""
        result = prune(
            self.rt.store, self.cutoff(), keep=self.rt.engine.active, stop=self._stop,
            on_pruned=self._remove_work,
        )  # fmt: skip
        self.last = result
        self.total_runs += result.runs
        return result

    def _remove_work(self, ids: list[str]) -> None:
        """The outputs a failed run kept for its retry (DATA_DIR/work/<run id>) go with it."""
        import shutil

        for rid in ids:
            path = self.rt.engine.work_dir(rid)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """For /health: whether it is on, and the last prune."""
        return {
            "status": "ok",
            "retention_days": self.days,
            "pruned_runs": self.total_runs,
            "last_prune": self.last.as_dict() if self.last else None,
        }

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the next round tries again; runs and the API are unaffected
                log.exception("retention: prune failed")
            if self._stop.wait(self.interval):
                return
