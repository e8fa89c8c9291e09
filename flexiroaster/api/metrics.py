"""Metrics: system and per-pipeline JSON, and Prometheus text at /metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Response

from ..metrics import run_stats, runs_since, timeline, trend
from ..runtime import Runtime
from .deps import runtime
from .errors import documented
from .models import PipelineMetricsOut, SystemMetricsOut

router = APIRouter(prefix="/metrics", tags=["metrics"])
prometheus = APIRouter(tags=["metrics"])

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@router.get("/system", response_model=SystemMetricsOut)
def system_metrics(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Runs by status, success rate, active runs, queue depth, durations, and the runtime's
    measured CPU and memory (the machine's as `cpu_usage`/`memory_usage`, in %)."""
    stats = run_stats(rt.store)
    figures = rt.meter.read()
    active = len(rt.engine.active())
    queued = rt.engine.queued()
    return {
        "cpu_usage": figures["cpu_usage"],
        "memory_usage": figures["memory_usage"],
        "runtime_cpu_percent": figures["runtime_cpu_percent"],
        "runtime_rss_bytes": int(figures["runtime_rss_bytes"]),
        "pipeline_throughput": stats.completed_last_hour,
        "active_executions": active - queued,
        "queue_depth": queued,
        "failure_rate": stats.failure_rate,
        "success_rate": stats.success_rate,
        "total_pipelines": rt.store.list_pipelines(limit=1)[1],
        "total_executions": stats.total,
        "runs_by_status": stats.by_status,
        "avg_duration": stats.avg_duration,
        "p50_duration": stats.p50_duration,
        "p95_duration": stats.p95_duration,
        "timestamp": datetime.now(UTC).isoformat(),
    }


@router.get("/timeline", responses=documented(422))
def runs_timeline(
    rt: Runtime = Depends(runtime),
    hours: int = Query(48, ge=1, le=24 * 366),
    bucket: str = Query("hour", pattern="^(hour|day)$"),
) -> dict[str, Any]:
    """Runs per hour (or day) over the last `hours`, by status, with p50/p95 durations; and
    today's runs (UTC) by status."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "bucket": bucket,
        "hours": hours,
        "buckets": timeline(rt.store, hours, bucket),
        "today": runs_since(rt.store, today),
        "timestamp": datetime.now(UTC).isoformat(),
    }


@router.get(
    "/pipelines/{pipeline_id}", response_model=PipelineMetricsOut, responses=documented(404, 422)
)
def pipeline_metrics(pipeline_id: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """History statistics of one pipeline and its daily trend over the last 14 days."""
    rt.store.get_pipeline(pipeline_id)
    stats = run_stats(rt.store, pipeline_id)
    last = rt.store.list_executions(pipeline_id=pipeline_id, limit=1)[0]
    return {
        "pipeline_id": pipeline_id,
        "total_executions": stats.total,
        "runs_by_status": stats.by_status,
        "success_rate": stats.success_rate,
        "failure_rate": stats.failure_rate,
        "avg_duration": stats.avg_duration,
        "p50_duration": stats.p50_duration,
        "p95_duration": stats.p95_duration,
        "last_execution": {"id": last[0].id, "status": str(last[0].status)} if last else None,
        "trend": trend(rt.store, pipeline_id),
        "timestamp": datetime.now(UTC).isoformat(),
    }


@prometheus.get(
    "/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
def prometheus_metrics(rt: Runtime = Depends(runtime)) -> Response:
    """Prometheus text format: runs by status, stage duration histogram, queue depth, active runs."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

    store = rt.store
    runs = GaugeMetricFamily("flexiroaster_runs", "Runs in the store by status", labels=["status"])
    for status, n in run_stats(store).by_status.items():
        runs.add_metric([status], n)
    cols = ", ".join(f"count(*) FILTER (WHERE duration <= {b})" for b in BUCKETS)
    by_type = store.query(
        f"SELECT stage_type, {cols}, count(*), coalesce(sum(duration), 0) FROM flexiroaster.stage_executions"
        " WHERE duration IS NOT NULL AND reused_from IS NULL GROUP BY stage_type ORDER BY stage_type"
    )
    hist = HistogramMetricFamily(
        "flexiroaster_stage_duration_seconds", "Stage run time by stage type", labels=["stage_type"]
    )
    for row in by_type:
        stage_type, counts, total, total_sum = row[0], row[1:-2], row[-2], row[-1]
        buckets = [(str(b), c) for b, c in zip(BUCKETS, counts, strict=True)] + [("+Inf", total)]
        hist.add_metric([stage_type], buckets, total_sum)
    queue = GaugeMetricFamily(
        "flexiroaster_queue_depth", "Runs waiting for a slot", value=rt.engine.queued()
    )
    active = GaugeMetricFamily(
        "flexiroaster_active_runs", "Runs pending or running", value=len(rt.engine.active())
    )

    class _Snapshot:
        def collect(self):
            return [runs, hist, queue, active]

    registry = CollectorRegistry()
    registry.register(_Snapshot())
    return Response(
        generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
