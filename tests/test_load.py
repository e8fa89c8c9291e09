"""Load on a real `flexiroaster serve` process over loopback: 1,000 concurrent triggers are 1,000
runs within `max_active_runs` and `max_workers` while /health answers, and 50 one-second interval
schedules fire for a minute without drifting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise

import duckdb
import httpx
import pytest

from flexiroaster.client import Client

from .conftest import serve_env, start_serve, stop_serve

pytestmark = pytest.mark.slow

MAX_WORKERS = 4
TRIGGERS = 1_000
CLIENTS = 12
SCHEDULES = 50
SCHEDULE_SECONDS = 60.0

# A python stage run on the engine's worker pool notes when it held its worker.
MARKS_PY = textwrap.dedent(
    """
    import os
    import time


    def mark(inputs, params):
        t0 = time.time()
        time.sleep(params.get("ms", 10) / 1000)
        t1 = time.time()
        with open(os.path.join(os.path.dirname(__file__), "marks.txt"), "a") as f:
            f.write(f"{params['run_id']} {t0!r} {t1!r}\\n")
    """
)
LOADED = """
name: load {name}
max_active_runs: {runs}
stages:
  - {{id: left, type: python, config: {{callable: "marks.py:mark", params: {{ms: 15}}}}}}
  - {{id: right, type: python, config: {{callable: "marks.py:mark", params: {{ms: 5}}}}}}
  - {{id: both, type: sql, dependencies: [left, right], config: {{query: "select 1 as x"}}}}
"""
TICK = """
name: tick {i}
stages:
  - {{id: one, type: sql, config: {{query: "select {i} as x"}}}}
"""


@contextlib.contextmanager
def served(data_dir, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`flexiroaster serve` on a free loopback port; yields (process, URL) once /health answers.
    Stopped with SIGTERM (which must end it within 15 s)."""
    proc, url = start_serve(
        data_dir, env=serve_env(data_dir, **env), stdout=subprocess.DEVNULL,
        output=lambda p: p.communicate()[1][-3000:],
    )  # fmt: skip
    try:
        yield proc, url
    finally:
        stopped = stop_serve(proc)
        proc.stderr.close()
        assert stopped, "serve did not stop within 15 s of SIGTERM"


class HealthProbe:
    """GET /health every `every` s on its own thread; keeps every status and the worst latency."""

    def __init__(self, url: str, every: float = 0.1):
        self.url, self.every = url, every
        self.statuses: Counter[int | str] = Counter()
        self.worst = 0.0
        self.last: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-probe", daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = c.get("/api/v1/health")
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.last = r.json()
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                self.worst = max(self.worst, time.perf_counter() - t0)
                self._stop.wait(self.every)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def wait_idle(url: str, timeout: float) -> dict:
    """Wait until the server has no active or queued run; returns the engine's health figures."""
    deadline = time.monotonic() + timeout
    while True:
        engine = httpx.get(f"{url}/api/v1/health", timeout=10).json()["components"]["engine"]
        if engine["active_runs"] == 0 and engine["queued_runs"] == 0:
            return engine
        assert time.monotonic() < deadline, f"runs still going after {timeout} s: {engine}"
        time.sleep(0.25)


def test_1000_concurrent_triggers_are_1000_runs_within_every_bound(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "marks.py").write_text(MARKS_PY)
    bounds = {"load-a": 3, "load-b": 2}  # together they could ask for 10 workers at once
    with served(data, FLEXIROASTER_MAX_WORKERS=str(MAX_WORKERS)) as (proc, url):
        with Client(url) as c:
            for name, runs in bounds.items():
                c.create_pipeline(LOADED.format(name=name[-1], runs=runs))
        returned: list[tuple[str, str]] = []
        errors: list[str] = []
        lock = threading.Lock()
        next_i = iter(range(TRIGGERS))

        def client_thread() -> None:
            with httpx.Client(base_url=url, timeout=30.0) as c:
                for i in next_i:  # shared iterator: each trigger is sent once, by one thread
                    pid = "load-a" if i % 5 < 3 else "load-b"
                    try:
                        r = c.post("/api/v1/executions", json={"pipeline_id": pid})
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(f"{i}: {type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        if r.status_code == 202:
                            returned.append((r.json()["id"], pid))
                        else:
                            errors.append(f"{i}: {r.status_code} {r.text[:200]}")

        with HealthProbe(url) as health:
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client_thread) for _ in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            trigger_s = time.perf_counter() - t0
            wait_idle(url, 150)
            drain_s = time.perf_counter() - t0
        assert not errors, errors[:10]
        assert len(returned) == TRIGGERS
        ids = [i for i, _ in returned]
        assert len(set(ids)) == TRIGGERS, "a trigger was answered with another trigger's run id"
        # /health answered 200 throughout
        assert set(health.statuses) == {200}, health.statuses
        assert health.count >= 10 and health.worst < 5.0, (health.count, health.worst)
        # Every returned id is final through the API too (read back before the server stops).
        with Client(url) as c:
            page = c.executions(limit=1000)
            assert page["total"] == TRIGGERS
    assert proc.returncode == -signal.SIGTERM  # stopped cleanly by our SIGTERM

    con = duckdb.connect(str(data / "flexiroaster.duckdb"), read_only=True)
    try:
        stored = con.execute(
            "SELECT id, pipeline_id, status, epoch(started_at), epoch(completed_at)"
            " FROM flexiroaster.flexiroaster.executions"
        ).fetchall()
        stages = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed')"
            " FROM flexiroaster.flexiroaster.stage_executions"
        ).fetchall()[0]
    finally:
        con.close()
    by_id = {r[0]: r for r in stored}
    assert len(stored) == len(by_id) == TRIGGERS  # none lost, none duplicated
    assert set(by_id) == set(ids)  # exactly the runs the triggers were told about
    assert all(by_id[i][1] == pid for i, pid in returned)
    assert Counter(r[2] for r in stored) == {"completed": TRIGGERS}
    assert stages == (3 * TRIGGERS, 3 * TRIGGERS)
    # max_active_runs, measured from the runs' own start and end times
    overlaps = {
        pid: max_overlap([(r[3], r[4]) for r in stored if r[1] == pid]) for pid in bounds
    }
    for pid, bound in bounds.items():
        assert 1 <= overlaps[pid] <= bound, overlaps
    # the worker bound, measured inside the stages as they held a worker
    marks = [line.split() for line in (data / "marks.txt").read_text().splitlines()]
    assert len(marks) == 2 * TRIGGERS and {m[0] for m in marks} == set(ids)
    workers = max_overlap([(float(m[1]), float(m[2])) for m in marks])
    assert 2 <= workers <= MAX_WORKERS, workers
    print(
        f"\nload: {TRIGGERS} triggers from {CLIENTS} clients in {trigger_s:.1f} s"
        f" ({TRIGGERS / trigger_s:.0f}/s), all {TRIGGERS} runs final after {drain_s:.1f} s;"
        f" duplicates 0, lost 0; max active runs {overlaps} (bounds {bounds});"
        f" max stages at once {workers} (max_workers {MAX_WORKERS}); /health {health.count}"
        f" answers, all 200, worst {health.worst * 1000:.0f} ms"
    )


def test_50_one_second_schedules_fire_for_a_minute_without_drift(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with served(data, FLEXIROASTER_MAX_WORKERS=str(MAX_WORKERS)) as (proc, url):
        with Client(url) as c:
            schedules = []
            for i in range(SCHEDULES):
                c.create_pipeline(TICK.format(i=i))
            cpu0 = cpu_seconds(proc.pid)
            with HealthProbe(url, every=0.25) as health:
                for i in range(SCHEDULES):
                    schedules.append(
                        c.create_schedule(
                            name=f"tick {i}", pipeline_id=f"tick-{i}", type="interval",
                            expression="1s", overlap="queue",
                        )["id"]
                    )  # fmt: skip
                time.sleep(SCHEDULE_SECONDS)
                for sid in schedules:
                    c.pause_schedule(sid)
                wait_idle(url, 60)
            cpu = (cpu_seconds(proc.pid) - cpu0) / SCHEDULE_SECONDS
        assert set(health.statuses) == {200}, health.statuses
    assert proc.returncode == -signal.SIGTERM  # stopped cleanly by our SIGTERM

    con = duckdb.connect(str(data / "flexiroaster.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT trigger, status, scheduled_for, created_at, started_at"
            " FROM flexiroaster.flexiroaster.executions ORDER BY trigger, scheduled_for"
        ).fetchall()
    finally:
        con.close()
    by_schedule: dict[str, list[tuple]] = {}
    for r in rows:
        by_schedule.setdefault(r[0], []).append(r)
    assert set(by_schedule) == {f"schedule:{s}" for s in schedules}
    assert Counter(r[1] for r in rows) == {"completed": len(rows)}
    late = sorted((r[4] - r[2]).total_seconds() for r in rows)
    fire = sorted((r[3] - r[2]).total_seconds() for r in rows)  # fire time -> run recorded
    gaps, missing = [], 0
    for runs in by_schedule.values():
        due = [r[2] for r in runs]
        missing += sum(round((b - a).total_seconds()) - 1 for a, b in pairwise(due))
        starts = [r[4] for r in runs]
        gaps += [(b - a).total_seconds() for a, b in pairwise(starts)]

    def pct(xs: list[float], q: float) -> str:
        return f"{xs[min(len(xs) - 1, int(len(xs) * q))] * 1000:.0f}"

    print(
        f"\nschedules: {SCHEDULES} x 1 s for {SCHEDULE_SECONDS:.0f} s: {len(rows)} runs, {missing}"
        f" fire times missed; start lateness median {pct(late, 0.5)} ms, p99 {pct(late, 0.99)} ms,"
        f" max {late[-1] * 1000:.0f} ms (recorded: median {pct(fire, 0.5)}, p99 {pct(fire, 0.99)},"
        f" max {fire[-1] * 1000:.0f} ms); spacing of consecutive starts {min(gaps):.3f}-"
        f"{max(gaps):.3f} s; /health {health.count} answers, all 200, worst"
        f" {health.worst * 1000:.0f} ms; server CPU {cpu:.2f} s/s; load average"
        f" {os.getloadavg()[0]:.1f}"
    )
    assert missing == 0  # every fire time is there, one second apart: none missed or doubled
    assert all(len(runs) >= SCHEDULE_SECONDS - 3 for runs in by_schedule.values())
    assert late[0] >= 0 and late[-1] < 1.0, (late[0], late[-1])
    assert all(0 < g < 2.0 for g in gaps), (min(gaps), max(gaps))
