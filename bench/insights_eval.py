"""Accuracy and speed of flexiroaster.insights on a labelled run history.

A seeded generator writes a history of six scheduled pipelines, each failing for a known,
feature-driven reason, into a temp store with `Store.import_executions`:

  streaky-etl      failures come in bursts (80% after a failure, else 3%)
  night-batch      fails 70% of its runs at 01:00-03:59 UTC, else 2%
  growing-ingest   input rows double for 30 runs now and then; 70% fail while they are doubled
  release-svc      a new version every ~80 runs; its first 6 runs fail 60%, else 2%
  flaky-api        8% independent ConnectionError failures of one stage (transient)
  warehouse-load   1% failures; hourly, and about 50 minutes a run (overlaps its schedule)

and 0.4% of completed runs get a duration anomaly with a known run id (one stage 4-10x slower,
or the whole run 3-6x slower). Then:

  failure risk   features from load_history/run_features; the model is fitted on the first
                 70% of runs in time and scores the rest: ROC AUC of P(fail) vs what happened,
                 against a naive predictor (each run's failure rate over its previous 10 runs)
  anomalies      anomalous_runs over the held-out 30%: precision and recall against the
                 injected run ids
  speed          compute_insights over the whole store, against a plain count(*) query

    .venv/bin/python bench/insights_eval.py            # 100,000 runs, about a minute
    .venv/bin/python bench/insights_eval.py --quick    # 50,000 runs, about 15 s
    .venv/bin/python bench/insights_eval.py --runs 50000 --seed 3

Targets: AUC >= 0.85, anomaly precision >= 0.9 and recall >= 0.8, compute_insights < 10 s.
Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_AUC, TARGET_PRECISION, TARGET_RECALL, TARGET_SECONDS = 0.85, 0.9, 0.8, 10.0
ANOMALY_SHARE = 0.004

# id, schedule interval (minutes), stages (id, type, median seconds)
PIPELINES = [
    ("streaky-etl", 10, [("extract", "input", 20.0), ("clean", "transform", 12.0), ("load", "output", 8.0)]),
    ("night-batch", 15, [("orders", "input", 30.0), ("summary", "sql", 240.0), ("publish", "output", 6.0)]),
    ("growing-ingest", 15, [("read", "input", 25.0), ("dedupe", "sql", 40.0), ("write", "output", 10.0)]),
    ("release-svc", 20, [("fetch", "shell", 5.0), ("build", "sql", 15.0)]),
    ("flaky-api", 10, [("fetch", "shell", 4.0), ("upsert", "output", 9.0)]),
    ("warehouse-load", 60, [("stage", "input", 600.0), ("merge", "sql", 2100.0), ("vacuum", "sql", 300.0)]),
]  # fmt: skip


def _spec_yaml(pid: str, stages) -> str:
    lines = [f"name: {pid}", "stages:"]
    for sid, kind, _ in stages:
        lines += [f"  - id: {sid}", f"    type: {kind}", "    timeout: 3600"]
    return "\n".join(lines) + "\n"


def make_history(n: int, seed: int = 11):
    """n finished runs of PIPELINES over the same time span, in creation order, their stage
    rows, the ids of the runs given an injected duration anomaly, and each run's true P(fail)
    (what an oracle would predict), and the end of the span."""
    from flexiroaster.records import ExecutionRecord, StageRecord
    from flexiroaster.states import RunStatus, StageStatus

    rng = random.Random(seed)
    per_minute = sum(1 / p[1] for p in PIPELINES)
    span_min = n / per_minute
    end = datetime(2025, 6, 1, tzinfo=UTC)
    start = end - timedelta(minutes=span_min)
    runs, stages, anomalies, risk = [], [], set(), {}
    for pid, every, stage_defs in PIPELINES:
        spec = _spec_yaml(pid, stage_defs)
        count = round(span_min / every)
        prev_failed, version, version_age, surge = False, 1, 100, 0
        for i in range(count):
            fire = start + timedelta(minutes=every * i)
            created = fire + timedelta(seconds=rng.uniform(0.05, 2.0))
            rows = 100_000 * rng.lognormvariate(0, 0.1)
            if pid == "release-svc" and rng.random() < 1 / 80:
                version, version_age = version + 1, 0
            if pid == "growing-ingest":
                surge = surge - 1 if surge > 0 else (30 if rng.random() < 0.01 else 0)
                rows *= 2.0 if surge else 1.0
            p_fail = {
                "streaky-etl": 0.8 if prev_failed else 0.03,
                "night-batch": 0.7 if 1 <= fire.hour <= 3 else 0.02,
                "growing-ingest": 0.7 if surge else 0.02,
                "release-svc": 0.6 if version_age < 6 else 0.02,
                "flaky-api": 0.08,
                "warehouse-load": 0.01,
            }[pid]
            version_age += 1
            failed = rng.random() < p_fail
            prev_failed = failed
            rid = f"{int(created.timestamp() * 1000):012x}{rng.getrandbits(32):08x}"
            risk[rid] = p_fail
            fail_at = (1 if pid != "flaky-api" else 0) if failed else None
            if fail_at is not None and pid != "flaky-api":
                fail_at = rng.randrange(1, len(stage_defs))  # the input stage read its rows
            slow_stage, slow_factor = None, 1.0
            if not failed and rng.random() < ANOMALY_SHARE:
                anomalies.add(rid)
                if rng.random() < 0.5:
                    slow_stage, slow_factor = rng.randrange(len(stage_defs)), rng.uniform(4, 10)
                else:
                    slow_factor = rng.uniform(3, 6)
            t = created + timedelta(seconds=rng.uniform(0.01, 0.3))
            started, done = t, 0
            for pos, (sid, kind, median) in enumerate(stage_defs):
                s = StageRecord(rid, sid, kind, pos)
                scale = (rows / 100_000) ** 0.5 if pos else 1.0
                d = median * scale * rng.lognormvariate(0, 0.2)
                if slow_stage is None or slow_stage == pos:
                    d *= slow_factor
                if fail_at is None or pos < fail_at:
                    s.status, s.attempts = StageStatus.COMPLETED, 1
                    s.rows_in, s.rows_out = (int(rows) if pos else None), int(rows)
                    done += 1
                elif pos == fail_at:
                    d *= rng.uniform(0.05, 0.9)
                    s.status, s.attempts = StageStatus.FAILED, 1
                    s.error_type = "ConnectionError" if pid == "flaky-api" else "StageError"
                    s.error = f"stage {sid}: {s.error_type}"
                else:
                    s.status = StageStatus.SKIPPED
                    stages.append(s)
                    continue
                s.started_at, s.completed_at, s.duration = t, t + timedelta(seconds=d), d
                t += timedelta(seconds=d)
                stages.append(s)
            runs.append(
                ExecutionRecord(
                    id=rid, pipeline_id=pid, pipeline_version=f"1.0.{version}",
                    status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
                    trigger="schedule", params={}, created_at=created,
                    total_stages=len(stage_defs), started_at=started, completed_at=t,
                    error=f"stage {stage_defs[fail_at][0]} failed" if failed else None,
                    stages_completed=done, spec_yaml=spec, scheduled_for=fire,
                )
            )  # fmt: skip
    order = sorted(range(len(runs)), key=lambda k: runs[k].created_at)
    by_run: dict[str, list] = {}
    for s in stages:
        by_run.setdefault(s.execution_id, []).append(s)
    runs = [runs[k] for k in order]
    return runs, [s for r in runs for s in by_run[r.id]], anomalies, risk, end


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="50,000 runs")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    n = 50_000 if args.quick else args.runs

    import numpy as np
    import polars as pl
    from sklearn.metrics import roc_auc_score

    from flexiroaster import insights
    from flexiroaster.runtime import Runtime
    from flexiroaster.settings import Settings

    (runs, stages, injected, risk, end), t_gen = timed(make_history, n, args.seed)
    print(f"history: {len(runs):,} runs, {len(stages):,} stage rows, {len(injected)} injected"
          f" anomalies, {sum(r.status == 'failed' for r in runs):,} failures ({t_gen:.1f} s)")  # fmt: skip
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(Settings(data_dir=Path(tmp), store_path=Path(tmp) / "s.duckdb"))
        store = rt.store
        try:
            _, t_imp = timed(store.import_executions, runs, stages)
            print(f"import: {t_imp:.1f} s")

            # --- failure risk: fit on the first 70% in time, score the rest
            hist = insights.load_history(store)
            feats = insights.run_features(hist)
            cut = float(np.quantile(feats["t"].to_numpy(), 0.7))
            train, test = feats.filter(pl.col("t") < cut), feats.filter(pl.col("t") >= cut)
            model, t_fit = timed(insights.fit_failure_model, train)
            y = test["failed"].to_numpy().astype(int)
            p = model.predict(test)
            auc = roc_auc_score(y, p)
            naive_p = test["fail_rate_10"].fill_null(0.0).to_numpy()
            naive = roc_auc_score(y, naive_p)
            ece = insights._ece(p, y)
            oracle = roc_auc_score(y, [risk[i] for i in test["id"]])
            print(f"failure risk: AUC {auc:.3f} on {len(test):,} held-out runs"
                  f" ({y.sum():,} failed); naive last-10 failure rate AUC {naive:.3f}"
                  f" (x{auc / naive:.2f}); oracle (true P(fail)) AUC {oracle:.3f};"
                  f" calibration error {ece:.3f}; fit {t_fit:.1f} s")  # fmt: skip
            for pid in test["pipeline_id"].unique().sort():
                m = (test["pipeline_id"] == pid).to_numpy()
                if 0 < y[m].sum() < m.sum():
                    truth = [risk[i] for i in test.filter(pl.col("pipeline_id") == pid)["id"]]
                    print(f"  {pid:16} AUC {roc_auc_score(y[m], p[m]):.3f}"
                          f"  naive {roc_auc_score(y[m], naive_p[m]):.3f}"
                          f"  oracle {roc_auc_score(y[m], truth):.3f}")  # fmt: skip
            ok &= auc >= TARGET_AUC

            # --- anomalies: over the held-out part
            st = insights.load_stage_history(store)
            found = insights.anomalous_runs(hist, st).filter(pl.col("t") >= cut)
            flagged = set(found["id"].to_list())
            truth = {r.id for r in runs if r.id in injected and r.created_at.timestamp() >= cut}
            tp = len(flagged & truth)
            precision = tp / len(flagged) if flagged else 0.0
            recall = tp / len(truth) if truth else 0.0
            print(f"anomalies: precision {precision:.3f}, recall {recall:.3f}"
                  f" ({tp} of {len(truth)} injected found, {len(flagged) - tp} false alarms)")  # fmt: skip
            ok &= precision >= TARGET_PRECISION and recall >= TARGET_RECALL

            # --- speed of everything, against a plain count query
            _, t_count = timed(store.query, "SELECT count(*) FROM flexiroaster.executions")
            found, t_all = timed(insights.compute_insights, store, end)
            kinds = {}
            for i in found:
                kinds[i.type] = kinds.get(i.type, 0) + 1
            print(f"compute_insights over {len(runs):,} runs: {t_all:.2f} s"
                  f" (count(*) {t_count * 1000:.1f} ms, x{t_all / max(t_count, 1e-6):.0f});"
                  f" {len(found)} insights {kinds}")  # fmt: skip
            ok &= t_all < TARGET_SECONDS
            # ... and as the runtime does it: compute, store, band and gate (first and again)
            first, t_first = timed(rt.review.recompute, end)
            again, t_again = timed(rt.review.recompute, end)
            print(f"review.recompute (compute + store + policy): {t_first:.2f} s first"
                  f" ({first['created']} created), {t_again:.2f} s again"
                  f" ({again['updated']} updated, {again['kept']} kept)")  # fmt: skip
            ok &= max(t_first, t_again) < TARGET_SECONDS
        finally:
            rt.close()
    print(f"targets: AUC >= {TARGET_AUC}, precision >= {TARGET_PRECISION}, recall >="
          f" {TARGET_RECALL}, compute_insights < {TARGET_SECONDS:g} s: {'met' if ok else 'MISSED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
