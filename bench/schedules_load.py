"""How long a runtime takes to start with 1,000 schedules in its store (target: under 2 s).

A store gets 1,000 schedules over 50 pipelines: 400 cron (in six timezones, some every minute),
400 interval, 100 webhook and 100 event schedules, all enabled and about half of the timed ones
with catch-up work to do (their stored next time is an hour in the past, policy `skip` or
`latest` for a few). Each repetition opens a Runtime on that store and starts its scheduler
(read the schedules, catch up, compute every next fire time, arm one APScheduler job each,
write the next times back), then closes it. The baseline is the same on a store with the same
pipelines and no schedules, measured interleaved with it in the same run.

    .venv/bin/python bench/schedules_load.py            # 5 repetitions each, about 30 s
    .venv/bin/python bench/schedules_load.py --n 2000   # more schedules

Exit status 1 when the target is missed or the started scheduler does not hold every schedule.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from flexiroaster.runtime import Runtime
from flexiroaster.scheduler import ScheduleIn
from flexiroaster.settings import load_settings

TARGET_S = 2.0
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
]
CRONS = ["0 6 * * 1-5", "*/5 * * * *", "30 2 * * *", "0 0 1 * *", "15 */2 * * *", "* * * * *"]
PIPELINE = """
name: load {i}
stages:
  - id: one
    type: sql
    config: {{query: "select {i} as x"}}
"""


def build(data_dir: Path, n: int, with_schedules: bool) -> None:
    settings = load_settings(data_dir=data_dir)
    rt = Runtime(settings)
    try:
        for i in range(50):
            rt.save_pipeline(PIPELINE.format(i=i))
        if not with_schedules:
            return
        for k in range(n):
            pid = f"load-{k % 50}"
            kind = k % 10
            if kind < 4:
                body = dict(
                    type="cron", expression=CRONS[k % len(CRONS)], timezone=ZONES[k % len(ZONES)]
                )
            elif kind < 8:
                body = dict(type="interval", expression=f"{1 + k % 90} minutes")
            elif kind == 8:
                body = dict(
                    type="webhook", expression=f"hook-{k}", secret=f"secret-{k:012d}-abcdef"
                )
            else:  # events fed by pipelines 0-24 into 25-49: no loops
                body = dict(
                    type="event", expression=f"load-{k % 25}", pipeline_id=f"load-{25 + k % 25}"
                )
            body.setdefault("pipeline_id", pid)
            if kind < 8 and k % 3 == 0:
                body["catchup"] = "latest" if k % 99 == 0 else "skip"
            rt.scheduler.create(ScheduleIn(name=f"sched {k}", **body))
        # Half of the timed ones look as if the runtime was down for an hour.
        rows = [
            {"id": s.id, "next_run_at": s.next_run_at - timedelta(hours=1)}
            for s in rt.scheduler.schedules()
            if s.next_run_at is not None and hash(s.id) % 2
        ]
        rt.store.set_schedule_states(rows)
    finally:
        rt.close()


def start_once(data_dir: Path) -> tuple[float, float, int]:
    """(seconds to open and start, of which the scheduler, schedules armed)."""
    settings = load_settings(data_dir=data_dir)
    t0 = time.perf_counter()
    rt = Runtime(settings)
    rt.start()
    took = time.perf_counter() - t0
    try:
        armed = len(rt.scheduler._aps.get_jobs())
        for run_id in rt.active_runs():  # catch-up runs: let them finish before closing
            rt.engine.wait(run_id, 30)
        return took, rt.scheduler.load_seconds or 0.0, armed
    finally:
        rt.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="schedules (default 1000)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fr-sched-bench-"))
    try:
        full, empty = root / "full", root / "empty"
        t0 = time.perf_counter()
        build(full, args.n, True)
        build(empty, args.n, False)
        print(f"built {args.n} schedules over 50 pipelines in {time.perf_counter() - t0:.1f} s")
        with_s, without, sched, armed = [], [], [], 0
        for _ in range(args.reps):  # interleaved: the baseline sees the same machine
            took, load, armed = start_once(full)
            with_s.append(took)
            sched.append(load)
            without.append(start_once(empty)[0])
        med, base, med_sched = (statistics.median(x) for x in (with_s, without, sched))
        timed = args.n * 8 // 10
        print(
            f"start with {args.n} schedules: median {med:.3f} s (scheduler {med_sched:.3f} s),"
            f" runs {', '.join(f'{x:.3f}' for x in with_s)}"
        )
        print(f"baseline, same store without schedules: median {base:.3f} s")
        print(f"ratio {med / base:.2f}x the baseline; {med - base:.3f} s for the schedules")
        print(f"armed jobs: {armed} (expected {timed}: cron and interval)")
        ok = med < TARGET_S and armed == timed
        print(
            f"target start < {TARGET_S:.0f} s with {args.n} schedules: {'ok' if ok else 'MISSED'}"
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
