"""Insights computed in a child process. The runtime writes a Parquet snapshot of the run
history (DuckDB's COPY of plain projections: no rows pass through Python), a child on idle CPU
time runs the same history queries over it in its own DuckDB, fits the models and prints the
insights as JSON. Its memory goes back to the system when it exits, and its CPU never holds the
runtime's GIL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FlexiError

if TYPE_CHECKING:
    from .history import Insight
    from .store import Store

NICE = 19  # where SCHED_IDLE is not to be had: the child yields the CPU to the API and runs
# What the child gets of the store: the columns the history queries read, as they are stored.
SNAPSHOT = {
    "executions": "SELECT id, pipeline_id, pipeline_version, status, created_at, scheduled_for,"
    " started_at, completed_at FROM flexiroaster.executions"
    " WHERE status IN ('completed', 'failed')",
    "stage_executions": "SELECT execution_id, stage_id, position, status, duration, attempts,"
    " error_type, rows_in, rows_out FROM flexiroaster.stage_executions",
}
_SEP = "\x1f"  # joins (pipeline, stage) keys of the timeouts in JSON


class InsightsJobError(FlexiError):
    status = 500


class InsightsJob:
    """Runs one computation at a time in a child; `kill` stops the one in flight."""

    def __init__(self, timeout: float = 600.0):
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.peak_rss_mb: float | None = None  # the last child's peak memory

    def compute(self, store: Store, at: datetime) -> list[Insight]:
        from .history import stage_timeouts

        with tempfile.TemporaryDirectory(prefix="flexiroaster-insights-") as tmp:
            folder = Path(tmp)
            # Plain projections stream to the file: the joins, sorts and aggregates that make
            # the history (the same queries as in this process) run in the child.
            for table, sql in SNAPSHOT.items():
                target = str(folder / f"{table}.parquet").replace("'", "''")
                store.query(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
            timeouts = {_SEP.join(k): v for k, v in stage_timeouts(store).items()}
            (folder / "timeouts.json").write_text(json.dumps(timeouts))
            out = self._run([sys.executable, "-m", __name__, tmp, at.isoformat()])
        return [_insight(d) for d in json.loads(out)]

    def _run(self, argv: list[str]) -> bytes:
        with self._lock:
            self._proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        proc = self._proc
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise InsightsJobError(
                f"insight computation took over {self.timeout:g} s and was stopped"
            ) from None
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-5:]
            raise InsightsJobError(
                f"insight computation exited with {proc.returncode}: " + " | ".join(tail)
            )
        report, _, body = out.partition(b"\n")
        self.peak_rss_mb = json.loads(report).get("peak_rss_mb")
        return body

    def kill(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


def _insight(d: dict[str, Any]) -> Insight:
    from .history import Insight

    for k in ("created_at", "expires_at"):
        d[k] = datetime.fromisoformat(d[k])
    return Insight(**d)


def main(argv: list[str]) -> None:
    """The child: read the snapshot in `argv[0]`, compute as of `argv[1]`, print JSON (a first
    line with the child's peak memory, then the insights)."""
    import resource

    import duckdb

    from .insights import compute_from, load_history, load_stage_history

    _yield_cpu()
    folder, at = Path(argv[0]), datetime.fromisoformat(argv[1])
    con = duckdb.connect()
    con.execute("CREATE SCHEMA flexiroaster")
    for table in SNAPSHOT:
        path = str(folder / f"{table}.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW flexiroaster.{table} AS SELECT * FROM read_parquet('{path}')")
    snapshot = _Snapshot(con)
    runs = load_history(snapshot)  # type: ignore[arg-type]
    stages = load_stage_history(snapshot)  # type: ignore[arg-type]
    raw = json.loads((folder / "timeouts.json").read_text())
    timeouts = {tuple(k.split(_SEP, 1)): v for k, v in raw.items()}
    found = compute_from(runs, stages, timeouts, at)  # type: ignore[arg-type]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps({"peak_rss_mb": round(peak_mb, 1)}) + "\n")
    json.dump([asdict(i) for i in found], sys.stdout, default=_plain)


class _Snapshot:
    """The store as the history queries use it (`query`), over the snapshot's Parquet files."""

    def __init__(self, con: Any):
        self.con = con

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.con.execute(sql, params or None).fetchall()


def _yield_cpu() -> None:
    """Run only on CPU time nobody else wants (Linux SCHED_IDLE), else at the lowest nice."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICE)


def _plain(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    return o.item() if hasattr(o, "item") else str(o)  # numpy scalars


if __name__ == "__main__":
    main(sys.argv[1:])
