"""Insights over real run histories written to a real store: failure risk, anomalies,
forecasts and recommendations."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from flexiroaster import insights
from flexiroaster.records import ExecutionRecord, StageRecord
from flexiroaster.states import RunStatus, StageStatus

NOW = datetime(2025, 6, 1, tzinfo=UTC)
STAGES = (("extract", 4.0), ("transform", 22.0), ("load", 4.0))  # id, median seconds


def history(
    pipeline_id: str,
    failed: list[bool],
    *,
    slow: dict[int, float] | None = None,
    every: timedelta = timedelta(hours=1),
    error_type: str = "StageError",
    seed: int = 0,
    end: datetime = NOW,
):
    """Hourly scheduled runs of a three-stage pipeline ending an hour before `end`: run i fails
    (at stage 1) when failed[i]; slow[i] multiplies run i's durations."""
    rng = random.Random(seed)
    runs, stages = [], []
    start = end - every * len(failed)
    for i, fail in enumerate(failed):
        fire = start + every * i
        rid = f"{pipeline_id}-{i:04d}"
        t = fire + timedelta(seconds=1)
        for pos, (sid, median) in enumerate(STAGES):
            s = StageRecord(rid, sid, "sql", pos, attempts=1)
            d = median * rng.uniform(0.95, 1.05) * (slow or {}).get(i, 1.0)
            if fail and pos == 1:
                s.status, s.error_type, d = StageStatus.FAILED, error_type, 1.0
            elif fail and pos > 1:
                s.status, s.attempts = StageStatus.SKIPPED, 0
                stages.append(s)
                continue
            else:
                s.status, s.rows_in, s.rows_out = StageStatus.COMPLETED, 1000, 1000
            s.started_at, s.completed_at, s.duration = t, t + timedelta(seconds=d), d
            t += timedelta(seconds=d)
            stages.append(s)
        runs.append(
            ExecutionRecord(
                id=rid, pipeline_id=pipeline_id, pipeline_version="1", trigger="schedule",
                status=RunStatus.FAILED if fail else RunStatus.COMPLETED, params={},
                created_at=fire, started_at=fire + timedelta(seconds=1), completed_at=t,
                total_stages=len(STAGES), scheduled_for=fire,
                spec_yaml="name: p\nstages:\n  - id: transform\n    type: sql\n    timeout: 3600\n",
            )
        )  # fmt: skip
    return runs, stages


def streaky(n: int, seed: int) -> list[bool]:
    """Failures in bursts: after a failure the next run fails 80% of the time, else 3%."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        out.append(rng.random() < (0.8 if out and out[-1] else 0.03))
    return out


def write(store, *histories) -> None:
    store.import_executions(
        [r for runs, _ in histories for r in runs], [s for _, st in histories for s in st]
    )


def of(found, kind: str, pipeline_id: str) -> list[insights.Insight]:
    return [i for i in found if i.type == kind and i.pipeline_id == pipeline_id]


def test_short_history_is_said_and_has_low_confidence(store):
    write(store, history("young", [False] * 8 + [True, False]))
    found = insights.compute_insights(store, NOW)
    [risk] = of(found, "failure_prediction", "young")
    assert risk.confidence <= 0.2
    assert "history is too short" in risk.explanation
    assert "10 finished run" in risk.explanation
    assert 0.0 <= risk.data["probability"] <= 1.0


def test_a_failure_streak_means_high_risk_and_is_named(store):
    write(
        store,
        history("streaky", streaky(600, seed=1) + [False] * 5 + [True] * 4, seed=1),
        history("steady", [False] * 600, seed=2),
    )
    found = insights.compute_insights(store, NOW)
    [risk] = of(found, "failure_prediction", "streaky")
    assert risk.data["probability"] >= 0.5
    assert risk.severity in ("high", "critical")
    assert "4 failures in a row" in risk.explanation
    assert risk.confidence >= 0.5
    [calm] = of(found, "failure_prediction", "steady")
    assert calm.data["probability"] < 0.2


def test_a_slow_run_is_an_anomaly_with_its_id_and_the_expected_range(store):
    write(store, history("etl", [False] * 80, slow={70: 5.0}))
    found = insights.compute_insights(store, NOW)
    [whole] = [i for i in of(found, "anomaly", "etl") if i.stage_id is None]
    assert whole.evidence == ["etl-0070"]
    assert whole.data["expected_low_s"] < 30 < whole.data["expected_high_s"] < 150
    assert "expected range" in whole.explanation
    assert whole.data["duration_s"] > 140


def test_forecast_interval_holds_the_typical_duration(store):
    write(store, history("etl", [False] * 60))
    [fc] = of(insights.compute_insights(store, NOW), "cost", "etl")
    assert fc.data["p10_s"] <= 30.0 <= fc.data["p90_s"]
    assert fc.data["p90_s"] - fc.data["p10_s"] < 5.0


def test_the_dominating_stage_is_named(store):
    write(store, history("etl", [False] * 30))
    found = insights.compute_insights(store, NOW)
    [dom] = [i for i in of(found, "optimization", "etl") if "runtime" in i.title]
    assert dom.stage_id == "transform"
    assert "transform" in dom.title and "73%" in dom.title


def test_transient_failures_suggest_retries(store):
    failed = [i % 10 == 3 for i in range(60)]  # each failure followed by a success
    write(store, history("api", failed, error_type="ConnectionError"))
    found = insights.compute_insights(store, NOW)
    [retry] = [i for i in of(found, "optimization", "api") if "Retries" in i.title]
    assert retry.stage_id == "transform"
    assert "ConnectionError" in retry.title and "retries" in retry.explanation
    assert "api-0003" in retry.evidence


def test_far_timeout_and_schedule_overlap(store):
    runs, stages = history("etl", [False] * 40, every=timedelta(seconds=25))
    write(store, (runs, stages))
    found = of(insights.compute_insights(store, NOW), "optimization", "etl")
    [timeout] = [i for i in found if "Timeout" in i.title]
    assert timeout.stage_id == "transform" and timeout.data["timeout_s"] == 3600
    [overlap] = [i for i in found if "overlaps" in i.title]
    assert overlap.data["overlaps"] == 39  # a 30 s run every 25 s; the last has no next fire
    assert overlap.evidence[-1] == "etl-0038" and len(overlap.evidence) == 20


def test_features_use_only_earlier_runs(store):
    write(store, history("p", streaky(120, seed=3)))
    runs = insights.load_history(store)
    before = insights.run_features(runs).head(100)
    flipped = runs.with_columns(
        status=pl.when(pl.int_range(pl.len()) >= 100).then(pl.lit("failed")).otherwise("status")
    )
    after = insights.run_features(flipped).head(100)
    assert before.select(insights.FEATURES).equals(after.select(insights.FEATURES))


@pytest.mark.parametrize("n", [0, 3])
def test_little_or_no_history(store, n):
    if n:
        write(store, history("tiny", [True] * n))
    found = insights.compute_insights(store, NOW)
    assert len(of(found, "failure_prediction", "tiny")) == (1 if n else 0)


def test_the_one_run_model_of_the_alerts_agrees_with_the_history_model():
    """alerts judge each finished run with duration_z; insights scan the history with
    duration_anomalies: same z, same anomalies, on durations with drift and outliers."""
    rnd = random.Random(7)
    durations = [rnd.lognormvariate(2.0 + i / 400, 0.3) for i in range(400)]
    for i in (60, 150, 151, 300):
        durations[i] *= 40
    frame = pl.DataFrame(
        {"id": [f"r{i}" for i in range(400)], "pipeline_id": ["p"] * 400,
         "status": ["completed"] * 400, "t": [float(i) for i in range(400)],
         "duration": durations}
    )  # fmt: skip
    scanned = insights.duration_anomalies(frame, ["pipeline_id"])
    one_by_one = {}
    for i, d in enumerate(durations):
        h = insights.duration_z(durations[:i], d)
        if h is not None and h["anomalous"]:
            one_by_one[f"r{i}"] = h["z"]
    assert set(one_by_one) == set(scanned["id"]) and len(one_by_one) >= 4
    for row in scanned.iter_rows(named=True):
        assert one_by_one[row["id"]] == pytest.approx(row["z"], rel=1e-9)
    assert insights.duration_z(durations[: insights.MIN_RUNS - 1], 10.0) is None


def test_the_child_process_computes_what_this_process_computes(store):
    """The runtime computes insights in a child from a Parquet snapshot (insights_job.py):
    the same insights, field for field, as computing them here over the store."""
    from flexiroaster.insights_job import InsightsJob

    write(
        store,
        history("streaky", streaky(300, seed=1) + [True] * 4, seed=1, slow={100: 6.0}),
        history("steady", [False] * 200, seed=2),
    )
    here = insights.compute_insights(store, NOW)
    job = InsightsJob()
    there = job.compute(store, NOW)
    assert len(here) >= 5 and there == here
    assert job.peak_rss_mb and job.peak_rss_mb > 50  # measured in the child
