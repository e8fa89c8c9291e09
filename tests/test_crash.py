"""Crash safety: `flexiroaster serve` SIGKILLed at seeded points of real runs (reading input, SQL,
validation, merge/replace/append writes, log streaming); after each restart every run is final
with the right reason, every table is its before or its after state, nothing reported is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from flexiroaster.client import Client
from flexiroaster.states import RunStatus, StageStatus
from flexiroaster.store import RECOVERY_REASON

from .conftest import serve_env, start_serve, stop_serve

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("FLEXIROASTER_CRASH_KILLS", "21"))
SEED = int(os.environ.get("FLEXIROASTER_CRASH_SEED", "9"))
ROWS = 120_000  # rows of the input file; the phases below each take a few tenths of a second
CALC_MD5, CHECK_MD5, HEAVY_MD5 = 10, 10, 12
MODES = ("merge", "replace", "append")
# Which rows each mode's run writes (two thirds of the input, so every mode's stages take about
# as long): merge updates some keys and adds others, append adds rows, replace rewrites it all.
WHERE = {
    "merge": "(k + {{ tag }}) % 3 <> 0",
    "replace": "(k + 2 * {{ tag }}) % 3 <> 1",
    "append": "k % 3 <> {{ tag }} % 3",
}
TERMINAL = {s.value for s in RunStatus.terminal()}
STAGE_TERMINAL = {s.value for s in StageStatus.terminal()}


def _md5(expr: str, n: int) -> str:
    for _ in range(n):
        expr = f"md5({expr})"
    return expr


def calc_sql(mode: str, tag: str = "{{ tag }}") -> str:
    where = WHERE[mode].replace("{{ tag }}", tag)
    s = _md5(f"s || {tag}", CALC_MD5)
    return f"select k, x + {tag} as x, {tag} as tag, {s} as s from read where {where}"


def pipeline_yaml(mode: str) -> str:
    check = _md5("s", CHECK_MD5)
    return f"""
name: crash-{mode}
variables: {{tag: 0}}
stages:
  - {{id: read, type: input, config: {{source: "crash/src.csv.gz"}}}}
  - {{id: calc, type: sql, dependencies: [read], config: {{query: "{calc_sql(mode)}"}}}}
  - id: check
    type: validation
    dependencies: [calc]
    config:
      checks:
        - {{type: not_null, columns: [k, x]}}
        - {{type: unique, columns: [k]}}
        - {{type: regex, columns: [s], pattern: "^[0-9a-f]{{32}}$"}}
        - {{type: expression, expression: "length({check}) = 32"}}
  - id: heavy
    type: transform
    dependencies: [check]
    config: {{operations: [{{derive: {{h: "{_md5("s", HEAVY_MD5)}"}}}}]}}
  - id: write
    type: output
    dependencies: [heavy]
    config: {{table: crash_{mode}, mode: {mode}, keys: [k]}}
"""


# A run that only writes log lines, many per second: every kill lands in its stream.
LOG_PIPELINE = """
name: crash-log
stages:
  - id: talk
    type: shell
    config: {command: "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line $i; sleep 0.01; done"}
"""
# A run that completes (and is reported so) just before each kill: it must stay completed, and
# its one row be in its table exactly once.
QUICK_PIPELINE = """
name: crash-quick
variables: {tag: 0}
stages:
  - {id: one, type: sql, config: {query: "select {{ tag }} as tag"}}
  - {id: add, type: output, dependencies: [one], config: {table: crash_quick, mode: append}}
"""
# (pipeline, stage) kill targets, in turn; the modes rotate through the non-write phases.
PHASES = [("read", None), ("calc", None), ("check", None), ("write", "merge"),
          ("write", "replace"), ("write", "append"), ("talk", "log")]  # fmt: skip


def env_for(data_dir: Path) -> dict[str, str]:
    return serve_env(data_dir) | {
        "FLEXIROASTER_LOG_FLUSH_INTERVAL": "0.05",
        "FLEXIROASTER_MAX_WORKERS": "4",
        "FLEXIROASTER_QUERY_MAX_ROWS": "1000000",
        "FLEXIROASTER_INSIGHTS_INTERVAL": "3600",  # no insight jobs competing for the 2 cores
    }


class Serve:
    """One `flexiroaster serve` process over the data dir (output to a file, not a pipe)."""

    def __init__(self, data_dir: Path, log: Path):
        self.out = log.open("ab")
        self.proc, self.url = start_serve(
            data_dir, env=env_for(data_dir), stdout=self.out, stderr=subprocess.STDOUT, wait=60,
            output=lambda _p: log.read_text()[-3000:],
        )  # fmt: skip
        self.client = Client(self.url, timeout=60)

    def kill(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.out.close()

    def stop(self) -> None:
        self.client.close()
        stop_serve(self.proc, timeout=20)
        self.out.close()


@dataclass
class Seen:
    """What the API reported before a kill: runs accepted, runs finished, log lines."""

    runs: set[str] = field(default_factory=set)
    completed: dict[str, dict] = field(default_factory=dict)
    logs: dict[str, dict[int, str]] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)

    def poll(self, c: Client, run_id: str) -> dict:
        run = c.execution(run_id)
        if run["status"] == "completed":
            self.completed[run_id] = run
        page = c.logs(run_id, after=self.cursors.get(run_id, 0))
        for line in page["logs"]:
            self.logs.setdefault(run_id, {})[line["id"]] = line["message"]
        self.cursors[run_id] = page["next_cursor"]
        return run


class Expected:
    """The tables' states computed on the side, in an in-memory DuckDB over the same input."""

    def __init__(self, src: Path):
        self.con = duckdb.connect()
        self.con.execute(f"CREATE VIEW read AS SELECT * FROM read_csv('{src}')")
        self.n = 0

    def new_rows(self, mode: str, tag: int) -> str:
        self.n += 1
        name = f"new_{self.n}"
        heavy = _md5("s", HEAVY_MD5)
        self.con.execute(
            f"CREATE TABLE {name} AS SELECT *, {heavy} AS h FROM ({calc_sql(mode, str(tag))})"
        )
        return name

    def after(self, mode: str, before: str | None, tag: int) -> str:
        new = self.new_rows(mode, tag)
        if before is None or mode == "replace":
            return new
        self.n += 1
        name = f"after_{self.n}"
        if mode == "append":
            self.con.execute(f"CREATE TABLE {name} AS FROM {before} UNION ALL FROM {new}")
        else:
            self.con.execute(
                f"CREATE TABLE {name} AS FROM {before} WHERE k NOT IN (SELECT k FROM {new})"
                f" UNION ALL FROM {new}"
            )
        return name

    def load(self, arrow) -> str:
        self.n += 1
        name = f"actual_{self.n}"
        self.con.register("_arrow", arrow)
        self.con.execute(f"CREATE TABLE {name} AS FROM _arrow")
        self.con.unregister("_arrow")
        return name

    def keep(self, names) -> None:
        """Drop every table but `names` (the states still to compare against)."""
        for (name,) in self.con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            if name not in names:
                self.con.execute(f"DROP TABLE {name}")

    def equal(self, a: str, b: str | None) -> bool:
        """The same rows, each as many times (full contents, order aside)."""
        if b is None:
            return False
        for x, y in ((a, b), (b, a)):
            sql = f"SELECT count(*) FROM (FROM {x} EXCEPT ALL FROM {y})"
            if self.con.execute(sql).fetchall()[0][0]:
                return False
        return True


def _table(c: Client, exp: Expected, mode: str) -> str | None:
    """The table's full contents as read over the API (None: no such table)."""
    sql = f"SELECT count(*) FROM duckdb_tables() WHERE table_name = 'crash_{mode}'"
    if not c.query(sql)["rows"][0][0]:
        return None
    return exp.load(c.query_arrow(f"SELECT * FROM crash_{mode}", limit=1_000_000))


def _wait_for_stage(c: Client, seen: Seen, target: str, stage: str, others: list[str]) -> str:
    """Poll (recording what is reported) until `stage` of the target run runs; what was seen."""
    deadline = time.monotonic() + 60
    logs_at = 0.0
    while time.monotonic() < deadline:
        run = c.execution(target)  # the one quick call: see the stage start soon after it does
        if run["status"] == "completed":
            seen.completed[target] = run
        if time.monotonic() > logs_at:  # the rest now and then, then all again before the kill
            run = seen.poll(c, target)
            for other in others:
                seen.poll(c, other)
            logs_at = time.monotonic() + 0.25
        states = {s["stage_id"]: s["status"] for s in run["stages"]}
        if states.get(stage) == "running":
            return "running"
        if states.get(stage) in STAGE_TERMINAL or run["status"] in TERMINAL:
            return "passed"  # it went by between two polls: the kill lands later in the run
        time.sleep(0.02)
    raise AssertionError(f"stage {stage} of run {target} did not start within 60 s")


def _check_run(c: Client, run_id: str, seen: Seen) -> tuple[str, str | None]:
    """A run after a restart: final, with the right reason; (status, stage the kill hit)."""
    run = c.execution(run_id)
    stages = {s["stage_id"]: s for s in run["stages"]}
    assert run["status"] in TERMINAL, run
    assert all(s["status"] in STAGE_TERMINAL for s in stages.values()), run["stages"]
    if run_id in seen.completed:
        before = seen.completed[run_id]
        assert run["status"] == "completed", (run, before)
        assert run["stages_completed"] == before["stages_completed"]
    hit = None
    if run["status"] == "failed":
        # Only the recovery may have failed it: every pipeline here succeeds when left alone.
        assert run["error"] == RECOVERY_REASON, run
        for s in stages.values():
            if s["status"] == "failed":
                assert s["error"] == RECOVERY_REASON, s
                hit = s["stage_id"]
            elif s["status"] == "skipped":
                assert s["error"] == RECOVERY_REASON, s
            else:
                assert s["status"] == "completed", s
    else:
        assert run["status"] == "completed", run
    # Every log line the API showed is still there, the same.
    stored = {x["id"]: x["message"] for x in c.logs(run_id, limit=10_000)["logs"]}
    for line_id, message in seen.logs.get(run_id, {}).items():
        assert stored.get(line_id) == message, (run_id, line_id, message)
    return run["status"], hit


def test_sigkill_at_seeded_points_loses_and_half_writes_nothing(tmp_path):
    data = tmp_path / "data"
    (data / "crash").mkdir(parents=True)
    src = data / "crash" / "src.csv.gz"  # compressed: reading it is a phase worth killing in
    duckdb.sql(
        f"COPY (SELECT range AS k, (range * 7919) % 100003 AS x,"
        f" 'row-' || range || '-' || md5(range::varchar) || repeat('x', 160) AS s,"
        f" range * 0.5 AS f, md5(range::varchar) AS m FROM range({ROWS})) TO '{src}'"
    )
    rnd = random.Random(SEED)
    exp = Expected(src)
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    srv = Serve(data, log)
    state: dict[str, str | None] = {}
    seen = Seen()
    figures = {"kills": 0, "runs_checked": 0, "tables_compared": 0, "log_lines_checked": 0,
               "recovered_runs": 0, "completed_runs": 0, "completed_before_kill": 0,
               "largest_table_rows": 0, "restart_seconds": 0.0, "hit": {}}  # fmt: skip
    try:
        c = srv.client
        for mode in MODES:
            c.create_pipeline(pipeline_yaml(mode))
        c.create_pipeline(LOG_PIPELINE)
        c.create_pipeline(QUICK_PIPELINE)
        quick: dict[str, int] = {}  # run id -> its tag
        # A first, unharmed run of each: the tables exist, the side computation matches, and
        # how long each stage takes says when to kill inside it.
        took = {}
        for mode in MODES:
            run = c.wait(c.trigger(f"crash-{mode}", {"tag": 0})["id"], timeout=120)
            assert run["status"] == "completed", run
            seen.runs.add(run["id"])
            seen.completed[run["id"]] = run
            took |= {(False, s["stage_id"], mode): s["duration"] for s in run["stages"]}
            state[mode] = _table(c, exp, mode)
            assert exp.equal(state[mode], exp.after(mode, None, 0)), mode
        took |= {(True, "talk", m): 3.0 for m in MODES}  # 400 lines, 10 ms apart
        for i in range(KILLS):
            stage, who = PHASES[i % len(PHASES)]
            mode = who if who in MODES else MODES[(i // len(PHASES)) % len(MODES)]
            tag = i + 1
            done = c.trigger("crash-quick", {"tag": tag})["id"]
            quick[done] = tag
            seen.runs.add(done)
            while seen.poll(c, done)["status"] not in TERMINAL:
                time.sleep(0.02)
            assert done in seen.completed, c.execution(done)
            write = c.trigger(f"crash-{mode}", {"tag": tag})["id"]
            talk = c.trigger("crash-log")["id"]
            seen.runs |= {write, talk}
            target = talk if who == "log" else write
            other = write if who == "log" else talk
            _wait_for_stage(c, seen, target, stage, [other])
            # Somewhere in the stage (as long as it took unharmed), still following the runs.
            until = time.monotonic() + rnd.uniform(0.05, 0.8) * took[target == talk, stage, mode]
            while time.monotonic() < until:
                seen.poll(c, target)
                seen.poll(c, other)
            srv.kill()
            figures["kills"] += 1

            t_restart = time.monotonic()
            srv = Serve(data, log)
            figures["restart_seconds"] += time.monotonic() - t_restart
            c = srv.client
            for run_id in (done, write, talk):
                status, hit = _check_run(c, run_id, seen)
                figures["runs_checked"] += 1
                figures["recovered_runs"] += status == "failed"
                figures["completed_runs"] += status == "completed"
                if run_id == target:
                    key = hit or ("after the run" if status == "completed" else "between stages")
                    key += f" ({mode})" if hit == "write" else ""
                    figures["hit"][key] = figures["hit"].get(key, 0) + 1
            figures["log_lines_checked"] += sum(
                len(seen.logs.get(r, {})) for r in (done, write, talk)
            )
            figures["completed_before_kill"] += done in seen.completed
            # The table is exactly its state before the run or exactly after it.
            actual = _table(c, exp, mode)
            write_done = {s["stage_id"]: s["status"] for s in c.execution(write)["stages"]}
            if exp.equal(actual, state[mode]):
                assert write_done["write"] != "completed", f"round {i}: write completed, old table"
            else:
                after = exp.after(mode, state[mode], tag)
                assert exp.equal(actual, after), f"round {i}: crash_{mode} neither before nor after"
            figures["tables_compared"] += 1
            n = exp.con.execute(f"SELECT count(*) FROM {actual}").fetchall()[0][0]
            figures["largest_table_rows"] = max(figures["largest_table_rows"], n)
            state[mode] = actual
            exp.keep(set(state.values()))
        # In the end: every run accepted is there, final; every table is its last known state.
        listed = c.executions(limit=1000)
        assert listed["total"] == len(seen.runs)
        assert {r["id"] for r in listed["executions"]} == seen.runs
        assert all(r["status"] in TERMINAL for r in listed["executions"])
        for mode in MODES:
            assert exp.equal(_table(c, exp, mode), state[mode]), mode
            figures["tables_compared"] += 1
        for run_id, run in seen.completed.items():
            assert c.execution(run_id)["status"] == "completed", run
        # Each quick run's row is there once if its write completed, and never twice.
        tags = [r[0] for r in c.query("SELECT tag FROM crash_quick", limit=10_000)["rows"]]
        assert len(tags) == len(set(tags)) and set(tags) <= set(quick.values())
        for run_id, tag in quick.items():
            add = {s["stage_id"]: s["status"] for s in c.execution(run_id)["stages"]}["add"]
            assert (add == "completed") <= (tag in tags), (run_id, tag)
        figures["tables_compared"] += 1
    finally:
        srv.stop()
    figures["seconds"] = round(time.monotonic() - t0, 1)
    figures["restart_seconds"] = round(figures["restart_seconds"], 1)
    print(f"stage seconds unharmed: { {k[1:]: round(v, 2) for k, v in took.items() if not k[0]} }")
    print(f"\ncrash figures (seed {SEED}): {figures}")
    assert figures["kills"] >= min(KILLS, 20)


HOLDER = """
import sys, time
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings
from flexiroaster.spec import load_pipeline_text

rt = Runtime(load_settings())
text = "name: crash-held\\nstages:\\n  - {id: one, type: sql, config: {query: 'select 1 as x'}}\\n"
rt.save_pipeline(text)
pipe = rt.get_pipeline("crash-held").pipeline
held = rt.engine.submit(pipe, {}, trigger="api", held=True)
ran = rt.engine.submit(pipe, {}, trigger="api")
rt.engine.wait(ran.id, timeout=30)
rt.store.get_execution(ran.id)  # read back: committed, as the API would report it
print(held.id, ran.id, flush=True)
time.sleep(600)
"""


def test_a_run_held_by_the_risk_gate_at_a_kill_is_cancelled_not_failed(tmp_path):
    """A held run never started: after a SIGKILL it is cancelled with its own reason (it must
    not count as a failure); a run that completed before the kill stays completed."""
    from flexiroaster.store import HELD_RECOVERY_REASON, Store

    data = tmp_path / "data"
    data.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER], env=env_for(data), stdout=subprocess.PIPE, text=True
    )
    try:
        held, ran = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    s = Store(data / "flexiroaster.duckdb")
    try:
        assert s.recovered == [held]
        rec = s.get_execution(held)
        assert (rec.status, rec.error) == (RunStatus.CANCELLED, HELD_RECOVERY_REASON)
        stages = [(x.status, x.error) for x in s.get_stages(held)]
        assert stages == [(StageStatus.SKIPPED, HELD_RECOVERY_REASON)]
        assert s.get_execution(ran).status == RunStatus.COMPLETED
    finally:
        s.close()
