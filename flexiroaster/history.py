"""The run history as the insights read it (the queries, stage timeouts from the stored
specs), what an insight is, and the one-run duration model the alerts judge with: no polars or
numpy here, so the runtime imports it lean (the models run in a child, insights_job.py)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .store import Store

InsightType = Literal["failure_prediction", "anomaly", "optimization", "cost"]
Severity = Literal["critical", "high", "medium", "low", "info"]

MODEL_VERSION = "insights-1"
MIN_RUNS = 20  # below this a pipeline's own history is too short to trust a prediction
RECENT = 50  # "recent" means a pipeline's latest 50 runs
ANOMALY_Z = 5.0  # robust z of log duration beyond which a run is anomalous
ANOMALY_WINDOW = 200  # prior runs a duration is compared with
ANOMALY_MIN_EXCESS_S = 1.0  # sub-second jitter of tiny stages is never an anomaly


@dataclass(frozen=True)
class Insight:
    id: str
    pipeline_id: str
    stage_id: str | None
    type: InsightType
    severity: Severity
    confidence: float  # 0-1
    title: str
    explanation: str
    evidence: list[str]  # run ids
    data: dict[str, float]
    created_at: datetime
    expires_at: datetime
    input_hash: str = ""  # SHA-256 of what the insight was computed from (audited with decisions)
    model_version: str = MODEL_VERSION


_FINISHED = (
    "e.status IN ('completed', 'failed') AND e.started_at IS NOT NULL"
    " AND e.completed_at IS NOT NULL"
)


def history_sql(where: str = _FINISHED, stage_where: str = "") -> str:
    """The query behind insights.load_history (columns as its RUN_SCHEMA)."""
    return (
        "SELECT e.id, e.pipeline_id, e.pipeline_version AS version, e.status,"
        " epoch(e.created_at) AS t, epoch(e.scheduled_for) AS scheduled,"
        " epoch(e.completed_at) - epoch(e.started_at) AS duration, s.rows::DOUBLE AS rows"
        " FROM flexiroaster.executions e LEFT JOIN ("
        "   SELECT execution_id, arg_min(coalesce(rows_in, rows_out), position) AS rows"
        f"   FROM flexiroaster.stage_executions{stage_where} GROUP BY execution_id"
        " ) s ON s.execution_id = e.id"
        f" WHERE {where} ORDER BY e.pipeline_id, e.created_at, e.id"
    )


def stage_history_sql(where: str = _FINISHED) -> str:
    """The query behind insights.load_stage_history (columns as its STAGE_SCHEMA)."""
    return (
        "SELECT s.execution_id AS id, e.pipeline_id, s.stage_id, s.position, s.status,"
        " epoch(e.created_at) AS t, s.duration, s.attempts, s.error_type"
        " FROM flexiroaster.stage_executions s JOIN flexiroaster.executions e"
        " ON e.id = s.execution_id"
        f" WHERE {where} AND s.status IN ('completed', 'failed')"
        " ORDER BY e.pipeline_id, s.stage_id, e.created_at, e.id"
    )


def stage_timeouts(store: Store) -> dict[tuple[str, str], float]:
    """(pipeline, stage) -> timeout in seconds, from the spec stored with each pipeline's
    latest run (what will run next; a spec that no longer parses is skipped)."""
    import yaml

    found = store.query(
        "SELECT pipeline_id, arg_max(spec_yaml, created_at) FROM flexiroaster.executions"
        " WHERE spec_yaml IS NOT NULL GROUP BY pipeline_id"
    )
    out = {}
    for pid, text in found:
        try:
            spec = yaml.safe_load(text) or {}
            for st in spec.get("stages") or []:
                if isinstance(st, dict) and st.get("timeout"):
                    out[(pid, str(st["id"]))] = float(st["timeout"])
        except (yaml.YAMLError, AttributeError, TypeError, ValueError, KeyError):
            continue
    return out


def duration_z(prior: list[float], duration: float) -> dict[str, float] | None:
    """duration_anomalies' model for one completed run: `prior` are the durations of the same
    pipeline's earlier completed runs (oldest first). None below MIN_RUNS of them; else z and
    the expected range, with "anomalous" 1.0 or 0.0 (the alerts thread judges each run so)."""
    logs = [math.log(d) for d in prior if d and d > 0][-ANOMALY_WINDOW:]
    if len(logs) < MIN_RUNS or not duration or duration <= 0:
        return None
    med = statistics.median(logs)
    q1, _, q3 = statistics.quantiles(logs, n=4, method="inclusive")  # numpy's "linear"
    sigma = max((q3 - q1) / 1.349, 0.05)
    z = (math.log(duration) - med) / sigma
    expected = math.exp(med)
    far = abs(z) > ANOMALY_Z and abs(duration - expected) > ANOMALY_MIN_EXCESS_S
    return {
        "z": z, "expected_s": expected, "expected_low": math.exp(med - ANOMALY_Z * sigma),
        "expected_high": math.exp(med + ANOMALY_Z * sigma), "anomalous": float(far),
    }  # fmt: skip


