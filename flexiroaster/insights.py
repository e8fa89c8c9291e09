"""Insights learned from the store's own run history: failure risk of a pipeline's next run,
duration anomalies and forecasts, and recommendations (dominant stage, retries, timeouts,
schedules that overlap their own runs). Every model is fitted on the runs in the store."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from .history import (  # noqa: F401  (re-exported: insights.X is the public name)
    _FINISHED,
    ANOMALY_MIN_EXCESS_S,
    ANOMALY_WINDOW,
    ANOMALY_Z,
    MIN_RUNS,
    MODEL_VERSION,
    RECENT,
    Insight,
    InsightType,
    Severity,
    duration_z,
    history_sql,
    stage_history_sql,
    stage_timeouts,
)
from .store import Store

FEATURES = [
    "fail_rate_10", "fail_rate_50", "fail_rate_500", "fail_streak", "hour", "weekday", "duration_trend",
    "rows_trend", "rows_last", "hours_since_success", "version_age", "runs_before",
]  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _insight(
    kind: InsightType, pipeline_id: str, stage_id: str | None, key: str, at: datetime,
    ttl: timedelta, inputs: Any = None, **fields: Any,
) -> Insight:  # fmt: skip
    """An Insight whose id names its subject (kind, pipeline, stage, key), so each computation
    finds the same subject under the same id and a person's decision on it sticks.
    `inputs` are the model inputs behind it (default: its evidence and data)."""
    raw = f"{kind}|{pipeline_id}|{stage_id}|{key}"
    iid = hashlib.sha1(raw.encode()).hexdigest()[:16]
    used = inputs if inputs is not None else [fields.get("evidence"), fields.get("data")]
    digest = hashlib.sha256(
        json.dumps([MODEL_VERSION, used], sort_keys=True, default=str).encode()
    ).hexdigest()
    return Insight(
        iid, pipeline_id, stage_id, kind, created_at=at, expires_at=at + ttl,
        input_hash=digest, **fields,
    )  # fmt: skip


# --- history ----------------------------------------------------------------------------------

RUN_SCHEMA = {
    "id": pl.String, "pipeline_id": pl.String, "version": pl.String, "status": pl.String,
    "t": pl.Float64, "scheduled": pl.Float64, "duration": pl.Float64, "rows": pl.Float64,
}  # fmt: skip
STAGE_SCHEMA = {
    "id": pl.String, "pipeline_id": pl.String, "stage_id": pl.String, "position": pl.Int32,
    "status": pl.String, "t": pl.Float64, "duration": pl.Float64, "attempts": pl.Int32,
    "error_type": pl.String,
}  # fmt: skip


def load_history(
    store: Store, since: datetime | None = None, pipeline_id: str | None = None
) -> pl.DataFrame:
    """Finished (completed or failed) runs, one row each, ordered by pipeline then time.

    Times are epoch seconds (`t` created, `scheduled` fire time); `rows` is the first
    stage's input (its rows_in, else its rows_out), summarised in DuckDB so only one row per
    run crosses into Python. Cancelled runs are left out: they neither failed nor succeeded.
    `pipeline_id` keeps one pipeline's runs (and reads only its stage rows).
    """
    where, args = (f"{_FINISHED} AND e.created_at >= ?", [since]) if since else (_FINISHED, [])
    stage_where, stage_args = "", []
    if pipeline_id is not None:
        where, args = f"{where} AND e.pipeline_id = ?", [*args, pipeline_id]
        stage_where = (
            " WHERE execution_id IN (SELECT id FROM flexiroaster.executions WHERE pipeline_id = ?)"
        )
        stage_args = [pipeline_id]
    found = store.query(history_sql(where, stage_where), [*stage_args, *args])
    return pl.DataFrame(found, schema=RUN_SCHEMA, orient="row")


def load_stage_history(store: Store, since: datetime | None = None) -> pl.DataFrame:
    """Stage rows of finished runs that ran (completed or failed), ordered by pipeline, stage
    and time."""
    where, args = (f"{_FINISHED} AND e.created_at >= ?", [since]) if since else (_FINISHED, [])
    found = store.query(stage_history_sql(where), args)
    return pl.DataFrame(found, schema=STAGE_SCHEMA, orient="row")


# --- features ---------------------------------------------------------------------------------


def with_next_runs(runs: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """`runs` plus one unlabelled row per pipeline standing for its next run: its latest
    version, at its usual gap after the latest run (or now, if that is already past)."""
    at = now.timestamp()
    nxt = (
        runs.group_by("pipeline_id")
        .agg(
            pl.col("version").last(),
            pl.col("t").last(),
            pl.col("t").diff().tail(10).median().alias("gap"),
        )
        .select(
            pl.lit("next").alias("id"),
            "pipeline_id",
            "version",
            pl.lit(None, pl.String).alias("status"),
            pl.max_horizontal(pl.col("t") + pl.col("gap").fill_null(0.0), pl.lit(at)).alias("t"),
        )
    )
    return pl.concat([runs, nxt], how="diagonal").sort("pipeline_id", "t", maintain_order=True)


def run_features(runs: pl.DataFrame) -> pl.DataFrame:
    """The failure model's features of every run, each computed only from the runs of the same
    pipeline BEFORE it (every rolling statistic is of the shifted column), so a run's own
    outcome never leaks into its features. `runs` must be ordered by pipeline and time."""
    p = "pipeline_id"
    failed = pl.when(pl.col("status").is_null()).then(None).otherwise(pl.col("status") == "failed")
    prev = pl.col("failed").shift(1)
    df = runs.with_columns(
        failed=failed.cast(pl.Float64),
        oks=(pl.col("status") == "completed").fill_null(False).cast(pl.Int32).cum_sum().over(p),
        changed=(pl.col("version") != pl.col("version").shift(1)).fill_null(False).over(p),
    )
    df = df.with_columns(
        # failures since the last success, counting this run: a success starts a new group
        streak_here=pl.col("failed").fill_null(0.0).cum_sum().over(p, "oks"),
        last_ok=pl.when(pl.col("status") == "completed").then(pl.col("t")),
        segment=pl.col("changed").cast(pl.Int32).cum_sum().over(p),
    )
    log_d = pl.col("duration").log().shift(1)
    log_r = pl.col("rows").log1p().shift(1)
    return df.with_columns(
        fail_rate_10=prev.rolling_mean(10, min_samples=1).over(p),
        fail_rate_50=prev.rolling_mean(50, min_samples=1).over(p),
        # the pipeline's base rate, which 10 or 50 runs estimate too noisily to rank pipelines by
        fail_rate_500=prev.rolling_mean(500, min_samples=1).over(p),
        fail_streak=pl.col("streak_here").shift(1).over(p).fill_null(0.0),
        hour=((pl.col("t") % 86400) // 3600),
        weekday=((pl.col("t") // 86400 + 3) % 7),  # 1970-01-01 was a Thursday; Monday is 0
        duration_trend=(
            log_d.rolling_median(5, min_samples=1) - log_d.rolling_median(50, min_samples=5)
        )
        .over(p)
        .exp(),
        rows_trend=(
            log_r.rolling_median(5, min_samples=1) - log_r.rolling_median(50, min_samples=5)
        )
        .over(p)
        .exp(),
        # the latest run's input against the usual: a jump shows here a few runs before the trend
        rows_last=(log_r - log_r.rolling_median(50, min_samples=5)).over(p).exp(),
        hours_since_success=(
            (pl.col("t") - pl.col("last_ok").shift(1).forward_fill().over(p)) / 3600
        ),
        # runs with this version before this one; 50 stands for "long ago or never changed"
        version_age=pl.when(pl.col("segment") == 0)
        .then(50)
        .otherwise(pl.int_range(pl.len()).over(p, "segment").clip(upper_bound=50))
        .cast(pl.Float64),
        runs_before=pl.int_range(pl.len()).over(p).cast(pl.Float64),
    ).drop("oks", "changed", "streak_here", "last_ok", "segment")


def describe_feature(name: str, value: float) -> str:
    """A feature's value in words, for explanations."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"hours_since_success": "no success on record"}.get(name, f"{name} unknown")
    match name:
        case "fail_streak":
            n = int(value)
            return (
                f"{n} failure{'s' if n != 1 else ''} in a row" if n else "its latest run succeeded"
            )
        case "fail_rate_10" | "fail_rate_50" | "fail_rate_500":
            return f"failure rate {value:.0%} over the last {name.rsplit('_', 1)[1]} runs"
        case "hour":
            return f"runs at {int(value):02d}:00 UTC"
        case "weekday":
            return f"runs on a {_DAYS[int(value)]}"
        case "duration_trend":
            return f"recent runs take {value:.1f}× their usual time"
        case "rows_trend":
            return f"recent input is {value:.1f}× its usual row count"
        case "rows_last":
            return f"the latest run read {value:.1f}× the usual rows"
        case "hours_since_success":
            return f"last success {value:.0f} h ago"
        case "version_age":
            return (
                f"new version {int(value)} run(s) ago" if value < 50 else "no recent version change"
            )
        case "runs_before":
            return f"{int(value)} runs of history"
    return f"{name} = {value:g}"


# --- failure risk -----------------------------------------------------------------------------


@dataclass
class FailureModel:
    """A HistGradientBoostingClassifier over FEATURES: it handles missing values (a new
    pipeline has no trend yet) and non-linear effects (a bad hour, a streak threshold) without
    hand-made bins, and fits 100k runs in a second or two. Its log-loss objective keeps the
    probabilities close to calibrated; `ece` measures how close, on a time-ordered holdout."""

    clf: Any
    baseline: np.ndarray  # each feature's median: the "typical" value contributions are against
    ece: float  # expected calibration error on the holdout (the last 20% of runs in time)
    auc: float | None  # ROC AUC on that holdout (None when it holds one class only)
    n_train: int

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        return self._proba(_matrix(features))

    def _proba(self, x: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self.clf.predict_proba(x)[:, 1]

    def contributions(self, features: pl.DataFrame) -> np.ndarray:
        """Per row and feature: how much P(fail) drops when that feature alone is set to its
        typical value (occlusion; positive means the feature raises the risk)."""
        x = _matrix(features)
        base = self._proba(x)
        n, k = x.shape
        swapped = np.repeat(x, k, axis=0)
        cols = np.tile(np.arange(k), n)
        swapped[np.arange(n * k), cols] = self.baseline[cols]
        return base[:, None] - self._proba(swapped).reshape(n, k)


def _matrix(features: pl.DataFrame) -> np.ndarray:
    return features.select(FEATURES).to_numpy().astype(np.float64)


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the gap between predicted and observed failure rate,
    averaged over ten probability bins weighted by their size."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(err / len(p))


def fit_failure_model(features: pl.DataFrame, *, seed: int = 0) -> FailureModel | None:
    """Fit on the labelled runs (time-ordered): first on the earlier 80% to measure calibration
    and AUC on the latest 20%, then again on all of them. None when there are too few runs or
    no failure (or no success) to learn from."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    train = features.filter(pl.col("failed").is_not_null()).sort("t")
    y = train["failed"].to_numpy().astype(int)
    if len(train) < 50 or y.min() == y.max():
        return None

    def new():
        return HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=40,
            l2_regularization=1.0, early_stopping=False, random_state=seed,
        )  # fmt: skip

    x = _matrix(train)
    cut = int(len(train) * 0.8)
    # One thread: OpenMP spinning on a machine shared with the engine's workers turns a 1 s
    # fit into 20 s, and insights must never starve the runs they describe.
    with threadpool_limits(1):
        held = new().fit(x[:cut], y[:cut]).predict_proba(x[cut:])[:, 1]
        clf = new().fit(x, y)
    ece = _ece(held, y[cut:])
    auc = float(roc_auc_score(y[cut:], held)) if 0 < y[cut:].sum() < len(held) else None
    return FailureModel(clf, np.nanmedian(x, axis=0), ece, auc, len(train))


def _severity(p: float) -> Severity:
    for limit, sev in ((0.7, "critical"), (0.5, "high"), (0.25, "medium"), (0.1, "low")):
        if p >= limit:
            return sev  # type: ignore[return-value]
    return "info"


def failure_insights(model: FailureModel | None, nxt: pl.DataFrame, at: datetime) -> list[Insight]:
    """One failure_prediction per pipeline, for its next run. Confidence is the support of the
    pipeline's own history (its runs / 100, capped at 1, and at most 0.2 under MIN_RUNS) times
    the model's calibration on the holdout (1 - ECE)."""
    out = []
    probs = model.predict(nxt) if model else None
    contrib = model.contributions(nxt) if model else None
    for i, row in enumerate(nxt.iter_rows(named=True)):
        n = int(row["runs_before"])
        if probs is not None:
            p = float(probs[i])
            calibration = 1.0 - model.ece
        else:  # no model: the pipeline's own failure rate, smoothed towards 10%
            p = (row["fail_rate_50"] or 0.0) * min(n, 50) / (min(n, 50) + 5) + 0.1 * 5 / (
                min(n, 50) + 5
            )
            calibration = 0.5
        confidence = min(1.0, n / 100) * calibration
        reasons: list[str] = []
        if contrib is not None:
            order = np.argsort(-contrib[i])
            reasons = [
                describe_feature(FEATURES[j], row[FEATURES[j]])
                for j in order[:3]
                if contrib[i, j] > max(0.02, 0.1 * p)  # smaller shifts are the model's noise
            ]
        short = n < MIN_RUNS
        if short:
            confidence = min(confidence, 0.2)
        text = f"Estimated {p:.0%} chance that the next run of {row['pipeline_id']} fails"
        text += f", mainly because: {'; '.join(reasons)}." if reasons else "."
        if short:
            text += (
                f" The history is too short to be sure: only {n} finished run(s), and"
                f" at least {MIN_RUNS} are needed for a confident prediction."
            )
        data = {
            "probability": round(p, 4),
            "runs": n,
            "fail_streak": row["fail_streak"],
            "fail_rate_10": row["fail_rate_10"],
        }
        if model:
            data["model_ece"] = round(model.ece, 4)
            if model.auc is not None:
                data["model_auc"] = round(model.auc, 4)
        out.append(
            _insight(
                "failure_prediction", row["pipeline_id"], None, "next", at, timedelta(hours=1),
                inputs={f: row[f] for f in FEATURES},
                severity="info" if short and p < 0.5 else _severity(p),
                confidence=round(confidence, 3), title=f"{p:.0%} risk that the next run fails",
                explanation=text, evidence=[], data=data,
            )
        )  # fmt: skip
    return out


# --- durations --------------------------------------------------------------------------------


def duration_anomalies(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Completed rows of `frame` whose duration is far from that of the same `keys` (pipeline,
    or pipeline and stage) over its previous ANOMALY_WINDOW runs.

    The model is a robust z-score of log duration: durations are multiplicative (a run twice as
    slow is as odd at 10 s as at 10 min), and the median and interquartile range of the prior
    window are not dragged by the anomalies themselves, nor by a slow drift. Returns every
    row with |z| > ANOMALY_Z and the expected range (what |z| <= ANOMALY_Z allows), in seconds.
    """
    x = pl.col("duration").log().shift(1)
    win = {"window_size": ANOMALY_WINDOW, "min_samples": MIN_RUNS}
    df = (
        frame.filter((pl.col("status") == "completed") & (pl.col("duration") > 0))
        .with_columns(
            med=x.rolling_median(**win).over(keys),
            iqr=(
                x.rolling_quantile(0.75, "linear", **win)
                - x.rolling_quantile(0.25, "linear", **win)
            ).over(keys),
        )
        .with_columns(sigma=(pl.col("iqr") / 1.349).clip(lower_bound=0.05))
        .with_columns(
            z=(pl.col("duration").log() - pl.col("med")) / pl.col("sigma"),
            expected_s=pl.col("med").exp(),
            expected_low=(pl.col("med") - ANOMALY_Z * pl.col("sigma")).exp(),
            expected_high=(pl.col("med") + ANOMALY_Z * pl.col("sigma")).exp(),
        )
    )
    excess = (pl.col("duration") - pl.col("expected_s")).abs() > ANOMALY_MIN_EXCESS_S
    return df.filter((pl.col("z").abs() > ANOMALY_Z) & excess).select(
        "id", *keys, "t", "duration", "z", "expected_s", "expected_low", "expected_high"
    )


def anomalous_runs(runs: pl.DataFrame, stages: pl.DataFrame) -> pl.DataFrame:
    """Run- and stage-level anomalies together (stage_id null for a whole run)."""
    return pl.concat(
        [
            duration_anomalies(runs, ["pipeline_id"]).with_columns(
                stage_id=pl.lit(None, pl.String)
            ),
            duration_anomalies(stages, ["pipeline_id", "stage_id"]),
        ],
        how="diagonal",
    )


def anomaly_insights(runs: pl.DataFrame, stages: pl.DataFrame, at: datetime) -> list[Insight]:
    """An anomaly insight per pipeline (and per stage) with anomalies among its latest RECENT
    runs; the evidence is the anomalous runs' ids."""
    recent = runs.group_by("pipeline_id").agg(pl.col("id").tail(RECENT)).explode("id")
    latest = runs.group_by("pipeline_id").agg(pl.col("id").last().alias("latest"))
    found = (
        anomalous_runs(runs, stages)
        .join(recent, on=["id", "pipeline_id"])
        .join(latest, on="pipeline_id")
        .sort("t")
    )
    out = []
    for (pid, sid), g in found.group_by("pipeline_id", "stage_id", maintain_order=True):
        slow = g.filter(pl.col("z") > 0)
        last = g.row(-1, named=True)
        what = f"stage {sid} of {pid}" if sid else pid
        lo, hi, mid = last["expected_low"], last["expected_high"], last["expected_s"]
        text = (
            f"{len(g)} of the latest {RECENT} runs of {what} took far from the usual time"
            f" ({len(slow)} slower, {len(g) - len(slow)} faster). The latest, run {last['id']},"
            f" took {last['duration']:.1f} s where {mid:.1f} s is typical and"
            f" {lo:.1f}–{hi:.1f} s is the expected range (median and spread of log duration"
            f" over the previous {ANOMALY_WINDOW} runs)."
        )
        sev = "high" if last["id"] == last["latest"] or abs(last["z"]) > 2 * ANOMALY_Z else "medium"
        out.append(
            _insight(
                "anomaly", pid, sid, "duration", at, timedelta(days=1),
                severity=sev if len(slow) else "low",
                confidence=round(min(1.0, 0.5 + 0.1 * float(g["z"].abs().max())), 3),
                title=f"Unusual duration of {what}: {last['duration']:.1f} s vs {lo:.1f}–{hi:.1f} s expected",
                explanation=text, evidence=g["id"].to_list(),
                data={"count": len(g), "duration_s": last["duration"], "expected_s": mid,
                      "expected_low_s": lo, "expected_high_s": hi, "z": round(last["z"], 2)},
            )
        )  # fmt: skip
    return out


def forecast_durations(runs: pl.DataFrame) -> pl.DataFrame:
    """Per pipeline, the next run's duration as the median and 10th–90th percentile of its
    latest RECENT completed runs: an empirical interval, honest about spread, with no model
    to go stale. Pipelines with fewer than 5 completed runs get no forecast."""
    q = pl.col("duration")
    return (
        runs.filter(pl.col("status") == "completed")
        .group_by("pipeline_id")
        .agg(
            q.tail(RECENT).quantile(0.1, "linear").alias("p10"),
            q.tail(RECENT).median().alias("p50"),
            q.tail(RECENT).quantile(0.9, "linear").alias("p90"),
            q.tail(RECENT).len().alias("n"),
            pl.col("id").tail(RECENT).alias("ids"),
        )
        .filter(pl.col("n") >= 5)
        .sort("pipeline_id")
    )


def forecast_insights(runs: pl.DataFrame, at: datetime) -> list[Insight]:
    out = []
    for r in forecast_durations(runs).iter_rows(named=True):
        out.append(
            _insight(
                "cost", r["pipeline_id"], None, "forecast", at, timedelta(hours=6),
                severity="info", confidence=round(min(1.0, r["n"] / RECENT), 3),
                title=f"Next run of {r['pipeline_id']}: about {r['p50']:.1f} s",
                explanation=(
                    f"The next run should take about {r['p50']:.1f} s, most likely between"
                    f" {r['p10']:.1f} and {r['p90']:.1f} s (10th–90th percentile of the latest"
                    f" {r['n']} completed runs)."
                ),
                evidence=r["ids"][-5:],
                data={"p10_s": r["p10"], "p50_s": r["p50"], "p90_s": r["p90"], "runs": r["n"]},
            )
        )  # fmt: skip
    return out


# --- recommendations --------------------------------------------------------------------------


def dominant_stages(stages: pl.DataFrame, share: float = 0.5) -> pl.DataFrame:
    """Per pipeline with several stages: the stage whose median duration over the latest
    RECENT completed runs is at least `share` of the sum of all stages' medians."""
    med = (
        stages.filter(pl.col("status") == "completed")
        .group_by("pipeline_id", "stage_id")
        .agg(pl.col("duration").tail(RECENT).median().alias("median_s"), pl.col("id").tail(5))
        .with_columns(
            share=pl.col("median_s") / pl.col("median_s").sum().over("pipeline_id"),
            stages=pl.len().over("pipeline_id"),
        )
    )
    return med.filter((pl.col("stages") > 1) & (pl.col("share") >= share)).sort("pipeline_id")


def transient_failures(stages: pl.DataFrame) -> pl.DataFrame:
    """Per pipeline, stage and error type: failures without retries (one attempt) after which
    the next run's same stage completed, i.e. failures a retry would likely have absorbed."""
    nxt = pl.col("status").shift(-1).over("pipeline_id", "stage_id")
    return (
        stages.with_columns(next_status=nxt)
        .filter((pl.col("status") == "failed") & (pl.col("attempts") <= 1))
        .group_by("pipeline_id", "stage_id", pl.col("error_type").fill_null("error"))
        .agg(
            pl.len().alias("failures"),
            (pl.col("next_status") == "completed").sum().alias("transient"),
            pl.col("id").filter(pl.col("next_status") == "completed").tail(20).alias("ids"),
        )
        .filter((pl.col("transient") >= 3) & (pl.col("transient") >= 0.6 * pl.col("failures")))
        .sort("pipeline_id", "stage_id")
    )


def schedule_overlaps(runs: pl.DataFrame) -> pl.DataFrame:
    """Per pipeline: scheduled runs among its latest RECENT*2 that were still running at the
    next fire time of the same pipeline (duration longer than the interval to it)."""
    interval = pl.col("scheduled").shift(-1).over("pipeline_id") - pl.col("scheduled")
    return (
        runs.filter(pl.col("scheduled").is_not_null())
        .with_columns(interval=interval)
        .group_by("pipeline_id")
        .tail(RECENT * 2)
        .group_by("pipeline_id")
        .agg(
            (pl.col("duration") > pl.col("interval")).sum().alias("overlaps"),
            pl.col("interval").drop_nulls().len().alias("scheduled"),
            pl.col("interval").median().alias("interval_s"),
            pl.col("duration").quantile(0.9, "linear").alias("p90_s"),
            pl.col("id").filter(pl.col("duration") > pl.col("interval")).tail(20).alias("ids"),
        )
        .filter(pl.col("overlaps") > 0)
        .sort("pipeline_id")
    )


def timeout_mismatches(stages: pl.DataFrame, timeouts: dict[tuple[str, str], float]) -> list[dict]:
    """Stages whose timeout is far above their p99 duration (a hung run holds a worker for
    nothing) or close under it (healthy runs get killed)."""
    if not timeouts:
        return []
    p99 = (
        stages.filter(pl.col("status") == "completed")
        .group_by("pipeline_id", "stage_id")
        .agg(pl.col("duration").tail(RECENT * 4).quantile(0.99, "linear").alias("p99"), pl.len())
        .filter(pl.col("len") >= MIN_RUNS)
    )
    out = []
    for r in p99.iter_rows(named=True):
        limit = timeouts.get((r["pipeline_id"], r["stage_id"]))
        if limit is None or not r["p99"]:
            continue
        if limit > 10 * r["p99"] and limit - r["p99"] > 60:
            out.append({**r, "timeout": limit, "suggest": math.ceil(3 * r["p99"]), "far": True})
        elif r["p99"] > 0.8 * limit:
            out.append({**r, "timeout": limit, "suggest": math.ceil(2 * r["p99"]), "far": False})
    return out


def recommendation_insights(
    runs: pl.DataFrame, stages: pl.DataFrame, timeouts: dict, at: datetime
) -> list[Insight]:
    out, day = [], timedelta(days=1)
    for r in dominant_stages(stages).iter_rows(named=True):
        out.append(
            _insight(
                "optimization", r["pipeline_id"], r["stage_id"], "dominant", at, day,
                severity="medium" if r["share"] >= 0.8 else "low", confidence=0.9,
                title=f"Stage {r['stage_id']} takes {r['share']:.0%} of {r['pipeline_id']}'s runtime",
                explanation=(
                    f"Stage {r['stage_id']} dominates the runtime of {r['pipeline_id']}: its median"
                    f" of {r['median_s']:.1f} s is {r['share']:.0%} of the stages' total over the"
                    f" latest {RECENT} runs. Speeding it up is where time is won."
                ),
                evidence=r["id"], data={"share": round(r["share"], 4), "median_s": r["median_s"]},
            )
        )  # fmt: skip
    for r in transient_failures(stages).iter_rows(named=True):
        out.append(
            _insight(
                "optimization", r["pipeline_id"], r["stage_id"], f"retry|{r['error_type']}", at, day,
                severity="medium", confidence=round(r["transient"] / r["failures"], 3),
                title=f"Retries would absorb {r['error_type']} failures of stage {r['stage_id']}",
                explanation=(
                    f"{r['transient']} of {r['failures']} {r['error_type']} failures of stage"
                    f" {r['stage_id']} ({r['pipeline_id']}) ran without a retry and the stage"
                    " succeeded on the next run: they look transient. Set `retries: 2` on it."
                ),
                evidence=r["ids"], data={"failures": r["failures"], "transient": r["transient"]},
            )
        )  # fmt: skip
    for r in timeout_mismatches(stages, timeouts):
        gap = "far above" if r["far"] else "close to"
        out.append(
            _insight(
                "optimization", r["pipeline_id"], r["stage_id"], "timeout", at, day,
                severity="low" if r["far"] else "medium", confidence=0.8,
                title=f"Timeout of stage {r['stage_id']} is {gap} its p99 duration",
                explanation=(
                    f"Stage {r['stage_id']} of {r['pipeline_id']} has timeout {r['timeout']:g} s and a"
                    f" p99 duration of {r['p99']:.1f} s: " + (
                        "a hung run would hold a worker for the whole timeout."
                        if r["far"] else "healthy but slow runs risk being stopped."
                    ) + f" Consider `timeout: {r['suggest']}`."
                ),
                evidence=[], data={"timeout_s": r["timeout"], "p99_s": r["p99"],
                                   "suggested_s": float(r["suggest"])},
            )
        )  # fmt: skip
    for r in schedule_overlaps(runs).iter_rows(named=True):
        share = r["overlaps"] / max(r["scheduled"], 1)
        out.append(
            _insight(
                "optimization", r["pipeline_id"], None, "overlap", at, day,
                severity="medium" if share >= 0.1 else "low", confidence=0.9,
                title=f"{r['pipeline_id']} overlaps its own schedule",
                explanation=(
                    f"{r['overlaps']} of the latest {r['scheduled']} scheduled runs were still"
                    f" running at the next fire time (every {r['interval_s']:.0f} s; p90 duration"
                    f" {r['p90_s']:.0f} s). Space the schedule out or make the run faster."
                ),
                evidence=r["ids"], data={"overlaps": r["overlaps"], "share": round(share, 4),
                                         "interval_s": r["interval_s"], "p90_s": r["p90_s"]},
            )
        )  # fmt: skip
    return out


# --- all together -----------------------------------------------------------------------------


def compute_insights(store: Store, now: datetime | None = None) -> list[Insight]:
    """Load the history, fit the failure model, and return every insight, most severe first
    (in this process; the runtime computes them in a child, see insights_job.py)."""
    at = now or datetime.now(UTC)
    runs = load_history(store)
    if runs.is_empty():
        return []
    return compute_from(runs, load_stage_history(store), stage_timeouts(store), at)


def compute_from(
    runs: pl.DataFrame, stages: pl.DataFrame, timeouts: dict[tuple[str, str], float], at: datetime
) -> list[Insight]:
    """Every insight from a loaded history (load_history, load_stage_history, stage_timeouts)."""
    if runs.is_empty():
        return []
    feats = run_features(with_next_runs(runs, at))
    model = fit_failure_model(feats)
    nxt = feats.filter(pl.col("id") == "next")
    found = [
        *failure_insights(model, nxt, at),
        *anomaly_insights(runs, stages, at),
        *forecast_insights(runs, at),
        *recommendation_insights(runs, stages, timeouts, at),
    ]
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
    return sorted(found, key=lambda i: (rank[i.severity], -i.confidence, i.pipeline_id))
