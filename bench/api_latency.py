"""REST API latency and memory of `flexiroaster serve` over a 100,000-run history.

Set-up, in a temp data dir:
  1. this process opens the store, writes 100k finished runs (2-3 stage rows each, a mix of
     pipelines, statuses, triggers and durations over the last 60 days, in creation order)
     with `Store.import_executions`, saves one trivial pipeline (one sql stage), closes it;
  2. `.venv/bin/flexiroaster serve --port <free port>` starts as a subprocess on that data dir.

Load comes from a separate load-generator process per phase (this file with `--loadgen`;
httpx, one keep-alive connection per worker thread, loopback only). The schedule is open loop:
request i is due at t0 + i/rate whatever happened to the ones before it. Each phase is bounded
in time and count and starts with 3 untimed warm-up requests. Latency is reported from the
request's due time (includes any wait for a free worker, so a stalled server cannot hide
behind a slowed-down client), from its actual send (`send`), and how late it was sent.

Phases, in order:
  health   GET /api/v1/health at the trigger rate            baseline: the cheapest round trip
  list     GET /api/v1/executions?limit=50, round-robin with ?pipeline_id=...&limit=50 and
           ?limit=50&offset=5000, against the 100k history (default 50/s)
  trigger  POST /api/v1/executions {"pipeline_id": ...} at 100/s (the runs execute in the server)
  drain    wait until the server has no active or queued run (reported, not a latency phase)
  health2  the baseline again, after the load

Server RSS (psutil) is read after start (idle), sampled every 50 ms during the load (peak),
and read after it. The server is stopped with SIGTERM and must exit within 10 s; the store is
then reopened to check that no run was left unfinished and none is missing.

    .venv/bin/python bench/api_latency.py                 # 15 s per phase, about 80 s in all
    .venv/bin/python bench/api_latency.py --quick         # 5 s per phase
    .venv/bin/python bench/api_latency.py --keep          # keep the temp data dir and server logs
    .venv/bin/python bench/api_latency.py --profile list  # in-process server under cProfile

Figures, spread across runs and what changed: BENCHMARKS.md, section "REST API latency and
memory". Exit status 1 when a request errs, a target is missed, or the server does not stop
cleanly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL_NAME = "Bench Trivial"
TRIVIAL_YAML = """\
name: Bench Trivial
description: One sql stage; what the trigger phase starts.
stages:
  - id: one
    type: sql
    config:
      query: select 1 as x
"""
TARGETS_MS = {"trigger": 25.0, "list": 50.0}  # p99
TARGET_RSS_MB = 250.0
STOP_WITHIN_S = 10.0

# (pipeline name, share of the history, stage (id, type) list, median seconds, failure rate)
HISTORY_PIPELINES = [
    ("ETL Data Pipeline", 0.30, [("extract", "input"), ("clean", "transform"), ("load", "output")], 42.0, 0.06),
    ("Customer Data Validation", 0.20, [("customers", "input"), ("checks", "validation")], 8.0, 0.15),
    ("Daily Report Generator", 0.15, [("orders", "input"), ("summary", "sql"), ("publish", "output")], 95.0, 0.04),
    ("API Data Sync", 0.15, [("fetch", "shell"), ("upsert", "output")], 3.5, 0.10),
    ("Inventory Reconciliation", 0.12, [("stock", "input"), ("diff", "sql"), ("notify", "notify")], 20.0, 0.08),
    ("Bench Trivial", 0.08, [("one", "sql"), ("two", "sql")], 0.3, 0.02),
]  # fmt: skip
FILTER_PIPELINE = "customer-data-validation"
LIST_OFFSET = 5000


def pipeline_id(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --- history -----------------------------------------------------------------------------------


def _spec_yaml(name: str, stages: list[tuple[str, str]]) -> str:
    lines = [f"name: {name}", f"description: {name}, as stored with each of its runs.",
             'version: "1.0.0"', "tags: [bench]", "stages:"]  # fmt: skip
    prev = None
    for sid, kind in stages:
        lines += [f"  - id: {sid}", f"    type: {kind}", "    config:"]
        lines += [f"      query: select * from {prev or 'range(1000)'} where true  -- {sid}"]
        if prev:
            lines.append(f"    dependencies: [{prev}]")
        lines.append("    timeout: 600")
        prev = sid
    return "\n".join(lines) + "\n"


def make_history(n: int, seed: int = 7):
    """n finished runs over the last 60 days, and their stage rows."""
    from flexiroaster.records import ExecutionRecord, StageRecord
    from flexiroaster.states import RunStatus, StageStatus

    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(minutes=5)
    span = 60 * 86400.0
    names = [p[0] for p in HISTORY_PIPELINES]
    weights = [p[1] for p in HISTORY_PIPELINES]
    specs = {p[0]: _spec_yaml(p[0], p[2]) for p in HISTORY_PIPELINES}
    info = {p[0]: p for p in HISTORY_PIPELINES}
    triggers, tweights = ["schedule", "api", "manual", "retry"], [0.6, 0.25, 0.1, 0.05]
    runs, stages, ids = [], [], []
    picks = rng.choices(names, weights, k=n)
    for i in range(n):
        name = picks[i]
        _, _, stage_defs, median, fail_rate = info[name]
        created = end - timedelta(seconds=rng.random() * span)
        # the engine's run id format (flexiroaster.engine.new_run_id): time-ordered
        rid = f"{int(created.timestamp() * 1000):012x}{rng.getrandbits(32):08x}"
        started = created + timedelta(seconds=rng.expovariate(1 / 0.2))
        trig = rng.choices(triggers, tweights)[0]
        u = rng.random()
        status = (RunStatus.FAILED if u < fail_rate
                  else RunStatus.CANCELLED if u < fail_rate + 0.02 else RunStatus.COMPLETED)  # fmt: skip
        total = rng.lognormvariate(math.log(median), 0.6)
        stop_at = (
            len(stage_defs) if status == RunStatus.COMPLETED else rng.randrange(len(stage_defs))
        )
        t = started
        done = 0
        rows = rng.randrange(100, 2_000_000)
        for pos, (sid, kind) in enumerate(stage_defs):
            srec = StageRecord(rid, sid, kind, pos)
            if pos < stop_at:
                d = total / len(stage_defs) * rng.uniform(0.5, 1.5)
                srec.status, srec.attempts = StageStatus.COMPLETED, 1
                srec.started_at, srec.completed_at, srec.duration = t, t + timedelta(seconds=d), d
                srec.rows_in, srec.rows_out = (rows if pos else None), rows
                srec.metrics = {"rows": rows, "bytes": rows * 48}
                t += timedelta(seconds=d)
                done += 1
            elif pos == stop_at:
                d = rng.uniform(0.05, 5.0)
                srec.started_at, srec.completed_at, srec.duration = t, t + timedelta(seconds=d), d
                srec.attempts = 1
                if status == RunStatus.FAILED:
                    srec.status, srec.error_type = StageStatus.FAILED, "StageError"
                    srec.error = (
                        f'stage {sid}: Binder Error: column "amount_{rng.randrange(9)}" not found'
                    )
                    srec.traceback = (
                        "Traceback (most recent call last):\n  ...\nStageError: " + srec.error
                    )
                    srec.attempts = rng.randint(1, 3)
                else:
                    srec.status, srec.error = StageStatus.CANCELLED, "cancelled"
                t += timedelta(seconds=d)
            else:
                srec.status = StageStatus.SKIPPED
            stages.append(srec)
        runs.append(
            ExecutionRecord(
                id=rid,
                pipeline_id=pipeline_id(name),
                pipeline_version="1.0.0",
                status=status,
                trigger=trig,
                params={"run_date": created.date().isoformat()} if trig == "schedule" else {},
                created_at=created,
                total_stages=len(stage_defs),
                started_at=started,
                completed_at=t,
                error=None if status == RunStatus.COMPLETED
                else (f"stage {stage_defs[stop_at][0]} failed" if status == RunStatus.FAILED else "cancelled"),
                stages_completed=done,
                retry_of=rng.choice(ids[-500:]) if trig == "retry" and ids else None,
                pid=rng.randrange(1000, 60000),
                spec_yaml=specs[name],
            )
        )  # fmt: skip
        ids.append(rid)
    # A real store gets its runs in creation order: keep that physical order.
    order = sorted(range(n), key=lambda k: runs[k].created_at)
    by_run: dict[str, list] = {}
    for srec in stages:
        by_run.setdefault(srec.execution_id, []).append(srec)
    runs = [runs[k] for k in order]
    return runs, [srec for r in runs for srec in by_run[r.id]]


def build_store(data_dir: Path, n_runs: int) -> dict:
    from flexiroaster.store import Store

    t0 = time.perf_counter()
    runs, stages = make_history(n_runs)
    t1 = time.perf_counter()
    store = Store(data_dir / "flexiroaster.duckdb")
    try:
        store.import_executions(runs, stages)
        t2 = time.perf_counter()
        store.save_pipeline(pipeline_id(TRIVIAL_NAME), TRIVIAL_NAME, "One sql stage", TRIVIAL_YAML)
        n = store.query("SELECT count(*) FROM flexiroaster.executions")[0][0]
        ns = store.query("SELECT count(*) FROM flexiroaster.stage_executions")[0][0]
        nf = store.query(
            "SELECT count(*) FROM flexiroaster.executions WHERE pipeline_id = ?", [FILTER_PIPELINE]
        )[0][0]
    finally:
        store.close()
    size = (data_dir / "flexiroaster.duckdb").stat().st_size
    return {"runs": n, "stage_rows": ns, "filter_runs": nf, "generate_s": t1 - t0,
            "import_s": t2 - t1, "store_mb": size / 2**20}  # fmt: skip


# --- the load generator (its own process) ------------------------------------------------------


def loadgen(spec: dict) -> dict:
    """Open-loop: request i is due at t0 + i/rate; `workers` threads each take the next due one."""
    import httpx

    base, rate, duration = spec["url"], spec["rate"], spec["duration"]
    targets = spec["targets"]  # [label, method, path, json body or None, expected status]
    count = int(rate * duration)
    hard_stop = duration + spec.get("grace", 15.0)
    results: list = [None] * count
    next_i = [0]
    lock = threading.Lock()
    clients = [httpx.Client(base_url=base, timeout=10.0) for _ in range(spec["workers"])]
    for c in clients:  # open every keep-alive connection before the clock starts
        c.get("/api/v1/health")
    warmup = []  # a few of the phase's own requests, one at a time, not in the figures
    for _ in range(spec.get("warmup", 3)):
        for label, method, path, body, _expect in targets:
            w0 = time.perf_counter()
            status = clients[0].request(method, path, json=body).status_code
            warmup.append((label, (time.perf_counter() - w0) * 1000, status))
    t0 = time.perf_counter() + 0.2

    def work(client) -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                return
            due = t0 + i / rate
            if due - t0 > hard_stop:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            label, method, path, body, expect = targets[i % len(targets)]
            sent = time.perf_counter()
            err = None
            try:
                resp = client.request(method, path, json=body)
                status = resp.status_code
                if status != expect:
                    err = f"HTTP {status}: {resp.text[:200]}"
            except Exception as exc:  # counted, not raised: the phase goes on
                status, err = 0, f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            results[i] = (label, due - t0, sent - t0, done - t0, status, err)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, t0 + hard_stop + 11 - time.perf_counter()))
    for c in clients:
        c.close()
    got = [r for r in results if r is not None]
    cpu = time.process_time()
    return {"count": count, "results": got, "unsent": count - len(got), "warmup": warmup,
            "client_cpu_s": cpu}  # fmt: skip


class PhaseTimeout(Exception):
    pass


def run_phase(url: str, targets: list, rate: float, duration: float, workers: int) -> dict:
    spec = {"url": url, "targets": targets, "rate": rate, "duration": duration, "workers": workers}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--loadgen", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
    except subprocess.TimeoutExpired:
        raise PhaseTimeout(
            f"the load generator did not finish within {duration + 60:.0f} s"
        ) from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def server_answers(url: str, timeout: float = 5.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/v1/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def dump_threads(proc, data_dir: Path) -> str:
    """SIGABRT makes the server's faulthandler write every thread's stack to its stderr."""
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in proc._logs:
        f.flush()
    return (data_dir / "server.err").read_text(errors="replace")[-12000:]


# --- figures ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def summarize(name: str, out: dict, rate: float, label: str | None = None) -> dict:
    rows = [r for r in out["results"] if label is None or r[0] == label]
    ok = [r for r in rows if r[5] is None]
    errors = [r for r in rows if r[5] is not None]
    sched = [(r[3] - r[1]) * 1000 for r in ok]
    send = [(r[3] - r[2]) * 1000 for r in ok]
    span = (max(r[2] for r in rows) - min(r[2] for r in rows)) if len(rows) > 1 else float("nan")
    late = [(r[2] - r[1]) * 1000 for r in rows]
    return {
        "phase": name if label is None else f"  {label}",
        "target_rate": rate if label is None else None,
        "requests": len(rows),
        "rate": (len(rows) - 1) / span if span and span > 0 else float("nan"),
        "errors": len(errors),
        "unsent": out["unsent"] if label is None else 0,
        "first_ms": out["warmup"][0][1] if out.get("warmup") and label is None else None,
        "client_cpu_ms_per_req": out.get("client_cpu_s", 0) * 1000 / max(1, len(rows)),
        "first_error": errors[0][5] if errors else None,
        "p50": pct(sched, 50),
        "p99": pct(sched, 99),
        "max": max(sched) if sched else float("nan"),
        "p50_send": pct(send, 50),
        "p99_send": pct(send, 99),
        "late_p99": pct(late, 99),
    }


def print_table(rows: list[dict]) -> None:
    head = (f"{'phase':20} {'req':>6} {'req/s':>7} {'err':>4} {'unsent':>6} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'max ms':>8} {'p50 send':>9} {'p99 send':>9} {'late p99':>9} {'CPU ms/req':>10}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu = r.get("server_cpu_ms_per_req")
        print(
            f"{r['phase']:20} {r['requests']:>6} {r['rate']:>7.1f} {r['errors']:>4}"
            f" {r['unsent'] if r['target_rate'] else '':>6} {r['p50']:>8.2f}"
            f" {r['p99']:>8.2f} {r['max']:>8.2f} {r['p50_send']:>9.2f} {r['p99_send']:>9.2f}"
            f" {r['late_p99']:>9.2f} {'' if cpu is None else f'{cpu:.2f}':>10}"
        )


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXIROASTER_")}
    env.update(extra_env or {})
    env["FLEXIROASTER_DATA_DIR"] = str(data_dir)
    env["PYTHONFAULTHANDLER"] = "1"  # a hung server can be asked for its threads' stacks
    out = open(data_dir / "server.out", "w")  # noqa: SIM115 - closed by stop_server
    err = open(data_dir / "server.err", "w")  # noqa: SIM115
    exe = ROOT / ".venv" / "bin" / "flexiroaster"
    if not exe.exists():
        exe = Path(sys.executable).parent / "flexiroaster"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], cwd=data_dir, env=env, stdout=out, stderr=err
    )
    proc._logs = (out, err)  # type: ignore[attr-defined]
    return proc


def wait_healthy(url: str, proc, timeout: float = 60.0) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not healthy within {timeout} s")


def wait_drained(url: str, timeout: float) -> tuple[float, dict]:
    """Until the server has no active or queued run; returns seconds waited and the last health."""
    import httpx

    t0 = time.perf_counter()
    while True:
        h = httpx.get(f"{url}/api/v1/health", timeout=10).json()
        eng = h["components"]["engine"]
        if eng["active_runs"] == 0 and eng["queued_runs"] == 0:
            return time.perf_counter() - t0, h
        if time.perf_counter() - t0 > timeout:
            return float("nan"), h
        time.sleep(0.25)


def stop_server(proc) -> tuple[float, int | None]:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    for f in proc._logs:
        f.close()
    return time.perf_counter() - t0, code


def duckdb_memory_mb(url: str) -> float:
    """What DuckDB itself accounts for (buffer pool, indexes, ...), through POST /query."""
    import httpx

    try:
        resp = httpx.post(
            f"{url}/api/v1/query",
            json={"sql": "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"},
            timeout=10,
        )
        return float(resp.json()["rows"][0][0] or 0) / 2**20
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError):
        return float("nan")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class RssPeak:
    """Samples a process's RSS every 50 ms on a thread; take() returns the peak since the last."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.peak, self.lock = psutil.Process(pid), 0, threading.Lock()
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                rss = self.proc.memory_info().rss
            except Exception:  # the process is gone
                return
            with self.lock:
                self.peak = max(self.peak, rss)

    def take(self) -> float:
        with self.lock:
            peak, self.peak = self.peak, 0
        return peak / 2**20


def cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# --- profile mode: the server in this process, every Python thread under cProfile --------------


def profile_server(data_dir: Path, phases: list, duration: float, workers: int, top: int) -> None:
    """Serve the app here (as cmd_serve does), drive `phases` from the load generator, and print
    where the server's Python time went, all threads merged (DuckDB's own threads are C++)."""
    import cProfile
    import io
    import pstats

    import uvicorn

    from flexiroaster.api import create_app
    from flexiroaster.runtime import Runtime
    from flexiroaster.settings import load_settings

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def hook(*_):  # the first event of a new thread: give it a profiler of its own
        pr = cProfile.Profile()
        with lock:
            profiles.append(pr)
        pr.enable()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runtime = Runtime(load_settings(data_dir=data_dir, port=port))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime=runtime, close_runtime=True), port=port, log_level="warning"
        )
    )
    stats: dict = {}

    def drive() -> None:
        try:
            while not server.started:
                time.sleep(0.05)
            for name, targets, rate in phases:
                c0 = time.process_time()
                out = run_phase(url, targets, rate, duration, workers)
                stats[name] = (summarize(name, out, rate), time.process_time() - c0)
                if name == "trigger":
                    wait_drained(url, timeout=300)
        finally:
            server.should_exit = True

    threading.setprofile(hook)
    main_prof = cProfile.Profile()
    profiles.append(main_prof)
    threading.Thread(target=drive, name="bench-drive", daemon=True).start()
    main_prof.enable()
    try:
        server.run()
    finally:
        main_prof.disable()
        threading.setprofile(None)
        runtime.close()
    for name, (s, cpu) in stats.items():
        print(f"{name}: {s['requests']} requests, p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms,"
              f" server CPU {cpu * 1000 / max(1, s['requests']):.2f} ms/request (profiled)")  # fmt: skip
    merged = None
    for pr in profiles:
        try:
            st = pstats.Stats(pr)
        except TypeError:  # a thread that never recorded anything
            continue
        merged = st if merged is None else merged.add(st)
    if merged is None:
        return
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        merged.stream = buf
        merged.sort_stats(key).print_stats(top)
        print(buf.getvalue())


# --- main ------------------------------------------------------------------------------------


def revision() -> str:
    """The commit measured, and whether flexiroaster/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "flexiroaster"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head or '?'}{' + uncommitted changes in flexiroaster/' if dirty else ''}"


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{os.cpu_count()} cores ({model}), Python {platform.python_version()},"
            f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip


def make_phases(trigger_rate: float, list_rate: float) -> list:
    """(name, [[label, method, path, json body, expected status], ...], rate) per phase."""
    tid, ex = pipeline_id(TRIVIAL_NAME), "/api/v1/executions"
    health = [["health", "GET", "/api/v1/health", None, 200]]
    return [
        ("health", health, trigger_rate),
        ("list", [
            ["limit=50", "GET", f"{ex}?limit=50", None, 200],
            ["pipeline_id filter", "GET", f"{ex}?pipeline_id={FILTER_PIPELINE}&limit=50", None, 200],
            [f"offset={LIST_OFFSET}", "GET", f"{ex}?limit=50&offset={LIST_OFFSET}", None, 200],
        ], list_rate),
        ("trigger", [["trigger", "POST", ex, {"pipeline_id": tid}, 202]], trigger_rate),
        ("health2", health, trigger_rate),
    ]  # fmt: skip


def check_store(data_dir: Path, expect_runs: int) -> str | None:
    """After the server stopped: the store opens, no run was left unfinished, none is missing."""
    from flexiroaster.store import Store

    store = Store(data_dir / "flexiroaster.duckdb")
    try:
        if store.recovered:
            return f"{len(store.recovered)} run(s) left unfinished by the server"
        n = store.query("SELECT count(*) FROM flexiroaster.executions")[0][0]
        if n != expect_runs:
            return f"{n} runs in the store, expected {expect_runs}"
    finally:
        store.close()
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 s phases instead of 15 s")
    ap.add_argument("--duration", type=float, help="seconds per phase")
    ap.add_argument("--runs", type=int, default=100_000, help="runs of history")
    ap.add_argument(
        "--trigger-rate", type=float, default=100.0, help="requests/s, also of the health baseline"
    )
    ap.add_argument("--list-rate", type=float, default=50.0, help="requests/s")
    ap.add_argument("--workers", type=int, default=16, help="load-generator threads")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument(
        "--profile",
        choices=["health", "list", "trigger"],
        help="instead: serve in this process under cProfile and profile one phase",
    )
    ap.add_argument("--top", type=int, default=40, help="rows of the --profile listing")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        json.dump(loadgen(json.loads(args.loadgen)), sys.stdout)
        return 0

    duration = args.duration or (5.0 if args.quick else 15.0)
    phases = make_phases(args.trigger_rate, args.list_rate)
    print(f"api_latency: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}; code {revision()}")
    tmp = Path(tempfile.mkdtemp(prefix="flexi-api-bench-"))
    proc = None
    failures: list[str] = []
    report: dict = {"date": datetime.now(UTC).isoformat(), "machine": machine(), "code": revision(),
                    "duration_s": duration, "server_env": args.server_env, "phases": []}  # fmt: skip
    if args.server_env:
        print(f"server environment: {' '.join(args.server_env)}")
    try:
        hist = build_store(tmp, args.runs)
        report["history"] = hist
        print(
            f"history: {hist['runs']:,} runs, {hist['stage_rows']:,} stage rows"
            f" (generated {hist['generate_s']:.1f} s, imported {hist['import_s']:.1f} s),"
            f" store {hist['store_mb']:.0f} MB; {hist['filter_runs']:,} runs of {FILTER_PIPELINE}"
        )
        if args.profile:
            chosen = [ph for ph in phases if ph[0] == args.profile]
            profile_server(tmp, chosen, duration, args.workers, args.top)
            return 0
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(tmp, port, dict(kv.split("=", 1) for kv in args.server_env))
        ready = wait_healthy(url, proc)
        time.sleep(1.0)  # let start-up allocations settle before reading idle memory
        rss_idle = rss_mb(proc.pid)
        duck_idle = duckdb_memory_mb(url)
        print(
            f"server pid {proc.pid} healthy after {ready:.2f} s; idle RSS {rss_idle:.1f} MB"
            f" (DuckDB's own accounting: {duck_idle:.1f} MB)"
        )

        rows, triggered = [], 0
        sampler = RssPeak(proc.pid)
        for name, targets, rate in phases:
            sampler.take()
            load = os.getloadavg()[0]
            c0 = cpu_s(proc.pid)
            try:
                out = run_phase(url, targets, rate, duration, args.workers)
            except PhaseTimeout as exc:
                failures.append(f"{name}: {exc}")
                if not server_answers(url):
                    failures.append(f"{name}: the server stopped answering /health")
                    print(f"{name}: the server does not answer; its threads:")
                    print(dump_threads(proc, tmp))
                    for f in failures:
                        print(f"FAIL: {f}")
                    return 1
                continue
            cpu = cpu_s(proc.pid) - c0
            s = summarize(name, out, rate)
            s["server_cpu_ms_per_req"] = cpu * 1000 / max(1, s["requests"])
            s["rss_after_mb"] = rss_mb(proc.pid)
            s["rss_peak_mb"] = sampler.take()
            s["loadavg_before"] = load
            rows.append(s)
            if len(targets) > 1:
                rows += [summarize(name, out, rate, t[0]) for t in targets]
            print(
                f"  {name}: {s['requests']} requests at {s['rate']:.1f}/s, p99 {s['p99']:.1f} ms,"
                f" server CPU {s['server_cpu_ms_per_req']:.2f} ms/request"
                f" (incl. background work), load generator CPU"
                f" {s['client_cpu_ms_per_req']:.2f} ms/request, load average before {load:.2f};"
                f" server RSS peak {s['rss_peak_mb']:.0f} MB, after {s['rss_after_mb']:.0f} MB",
                flush=True,
            )
            if s["errors"]:
                failures.append(f"{name}: {s['errors']} errors, first: {s['first_error']}")
            if s["unsent"]:
                failures.append(
                    f"{name}: {s['unsent']} requests never sent: the server fell so far behind"
                    " that the phase's time bound ran out"
                )
            if name == "trigger":
                triggered = sum(1 for r in out["results"] if r[5] is None)
                triggered += sum(1 for w in out["warmup"] if w[2] == 202)
                c0 = cpu_s(proc.pid)
                waited, h = wait_drained(url, timeout=300)
                s["drain_s"] = waited
                s["drain_cpu_s"] = cpu_s(proc.pid) - c0
                s["rss_after_drain_mb"] = rss_mb(proc.pid)
                s["rss_peak_drain_mb"] = sampler.take()
                print(f"  drain: the {triggered} triggered runs (with warm-up) all finished {waited:.1f} s after"
                      f" the phase ended (server CPU {s['drain_cpu_s']:.1f} s);"
                      f" server RSS peak {s['rss_peak_drain_mb']:.0f} MB,"
                      f" after {s['rss_after_drain_mb']:.0f} MB")  # fmt: skip
                if math.isnan(waited):
                    failures.append(f"triggered runs not finished: {h['components']['engine']}")
        report["phases"] = rows
        time.sleep(1.0)
        rss_after = rss_mb(proc.pid)
        sampler.stop.set()
        rss_peak = max(
            [r.get("rss_peak_mb", 0) for r in rows] + [r.get("rss_peak_drain_mb", 0) for r in rows]
        )
        duck_mb = duckdb_memory_mb(url)
        stop_s, code = stop_server(proc)
        problem = check_store(tmp, hist["runs"] + triggered) if code is not None else None
        report.update(
            rss_idle_mb=rss_idle,
            rss_after_mb=rss_after,
            rss_peak_mb=rss_peak,
            duckdb_idle_mb=duck_idle,
            duckdb_memory_mb=duck_mb,
            stop_s=stop_s,
            exit_code=code,
        )

        print()
        print_table(rows)
        print()
        print("latency in ms from each request's due time (open loop); 'send': from its actual")
        print("send; 'late': how long after its due time it was sent; CPU: server process CPU")
        print("time over the phase / requests (includes the runs it executes in the background)")
        print()
        print(
            "first request of each phase (after start, before its timed part): "
            + ", ".join(f"{r['phase']} {r['first_ms']:.0f} ms" for r in rows if r.get("first_ms"))
        )
        print(
            f"server RSS: idle {rss_idle:.1f} MB, after load {rss_after:.1f} MB, peak during load"
            f" {rss_peak:.1f} MB (DuckDB's own accounting after load: {duck_mb:.1f} MB)"
        )
        clean = code in (0, -signal.SIGTERM)
        print(f"SIGTERM: exited {'with ' + str(code) if code is not None else 'NOT'} within"
              f" {stop_s:.2f} s; store after stop: {problem or 'ok, no run left unfinished'}")  # fmt: skip
        if not clean:
            failures.append(f"server did not stop cleanly on SIGTERM (exit {code})")
        if problem:
            failures.append(problem)

        by = {r["phase"]: r for r in rows}
        for phase, target in TARGETS_MS.items():
            got = by[phase]["p99"]
            verdict = "ok" if got < target else "MISSED"
            print(f"target {phase} p99 < {target:.0f} ms: {got:.1f} ms {verdict}")
            if got >= target:
                failures.append(f"{phase} p99 {got:.1f} ms >= {target:.0f} ms")
        for label, v in (("idle", rss_idle), ("after load", rss_after)):
            verdict = "ok" if v < TARGET_RSS_MB else "MISSED"
            print(f"target RSS {label} < {TARGET_RSS_MB:.0f} MB: {v:.1f} MB {verdict}")
            if v >= TARGET_RSS_MB:
                failures.append(f"RSS {label} {v:.1f} MB")
        over = "over" if rss_peak >= TARGET_RSS_MB else "under"
        print(
            f"(not a target: RSS peak during load {rss_peak:.1f} MB, {over} {TARGET_RSS_MB:.0f} MB)"
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
