"""Run statistics from the store: by status, success rate, durations, throughput, per pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil

from .store import Store

_DURATION = "epoch(completed_at) - epoch(started_at)"


@dataclass(frozen=True)
class RunStats:
    by_status: dict[str, int]
    total: int
    success_rate: float  # % of finished runs that completed
    failure_rate: float
    avg_duration: float | None
    p50_duration: float | None
    p95_duration: float | None
    completed_last_hour: int


def run_stats(store: Store, pipeline_id: str | None = None) -> RunStats:
    where, args = ("WHERE pipeline_id = ?", [pipeline_id]) if pipeline_id else ("", [])
    by_status = dict(
        store.query(
            f"SELECT status, count(*) FROM flexiroaster.executions {where} GROUP BY status", args
        )
    )
    done = f"{where} {'AND' if where else 'WHERE'} status = 'completed' AND started_at IS NOT NULL"
    avg, p50, p95 = store.query(
        f"SELECT avg({_DURATION}), quantile_cont({_DURATION}, 0.5), quantile_cont({_DURATION}, 0.95)"
        f" FROM flexiroaster.executions {done}",
        args,
    )[0]
    hour = store.query(
        f"SELECT count(*) FROM flexiroaster.executions {done} AND completed_at >= now() - INTERVAL 1 HOUR",
        args,
    )[0][0]
    completed, failed = by_status.get("completed", 0), by_status.get("failed", 0)
    finished = completed + failed
    return RunStats(
        by_status=by_status,
        total=sum(by_status.values()),
        success_rate=round(100.0 * completed / finished, 2) if finished else 0.0,
        failure_rate=round(100.0 * failed / finished, 2) if finished else 0.0,
        avg_duration=avg,
        p50_duration=p50,
        p95_duration=p95,
        completed_last_hour=hour,
    )


def trend(store: Store, pipeline_id: str, days: int = 14) -> list[dict[str, Any]]:
    """Per day: runs, failures and mean duration of one pipeline."""
    found = store.query(
        f"SELECT date_trunc('day', created_at)::DATE AS day, count(*), count(*) FILTER (WHERE status = 'failed'),"
        f" avg({_DURATION}) FILTER (WHERE status = 'completed')"
        " FROM flexiroaster.executions WHERE pipeline_id = ? AND created_at >= now() - to_days(?)"
        " GROUP BY ALL ORDER BY day",
        [pipeline_id, days],
    )
    return [
        {"day": d.isoformat(), "runs": n, "failed": f, "avg_duration": a} for d, n, f, a in found
    ]


class ProcessMeter:
    """The runtime's measured CPU and memory, and the machine's; CPU is since the previous read."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.read()  # psutil's first CPU reading only starts the measurement

    def read(self) -> dict[str, float]:
        return {
            "cpu_usage": psutil.cpu_percent(None),
            "memory_usage": psutil.virtual_memory().percent,
            "runtime_cpu_percent": self.process.cpu_percent(None),
            "runtime_rss_bytes": float(self.process.memory_info().rss),
            "measured_at": time.time(),
        }


def timeline(store: Store, hours: int = 48, bucket: str = "hour") -> list[dict[str, Any]]:
    """Runs per time bucket (hour or day) over the last `hours`: counts by status, and the
    p50/p95 duration of the finished ones, all pipelines together."""
    found = store.query(
        f"SELECT date_trunc(?, created_at) AS t, count(*),"
        " count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'cancelled'),"
        f" quantile_cont({_DURATION}, 0.5), quantile_cont({_DURATION}, 0.95)"
        " FROM flexiroaster.executions WHERE created_at >= now() - to_hours(?)"
        " GROUP BY ALL ORDER BY t",
        [bucket, hours],
    )
    return [
        {"start": t.isoformat(), "runs": n, "completed": c, "failed": f, "cancelled": x,
         "p50_duration": p50, "p95_duration": p95}
        for t, n, c, f, x, p50, p95 in found
    ]  # fmt: skip


def runs_since(store: Store, since: Any) -> dict[str, int]:
    """Runs created since `since`, by status."""
    return dict(
        store.query(
            "SELECT status, count(*) FROM flexiroaster.executions WHERE created_at >= ? GROUP BY ALL",
            [since],
        )
    )
