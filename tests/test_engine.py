"""The run loop end to end on a real store: order, parallelism, retries, timeouts, cancel, re-runs."""

from __future__ import annotations

import os
import threading
import time

import pytest

from flexiroaster.errors import Conflict, TemplateError
from flexiroaster.states import RunStatus, StageStatus

from .conftest import pipeline, rows

TRIANGLE = """
name: triangle
variables: {bonus: 10}
stages:
  - id: people
    type: input
    config:
      data:
        - {id: 1, name: ann, dept: a, salary: 100}
        - {id: 2, name: bob, dept: b, salary: 200}
        - {id: 3, name: cid, dept: a, salary: 300}
  - id: by_dept
    type: sql
    dependencies: [people]
    config: {query: "select dept, sum(salary)::bigint as total from people group by dept"}
  - id: raised
    type: sql
    dependencies: [people]
    config: {query: "select id, dept, salary + {{ bonus }} as salary from people"}
  - id: joined
    type: sql
    dependencies: [by_dept, raised]
    config:
      query: >
        select r.id, r.salary, d.total from raised r join by_dept d using (dept) order by r.id
  - id: save
    type: output
    dependencies: [joined]
    config: {table: report.salaries, mode: replace}
"""


def test_triangle_run_records_everything_and_writes_the_table(engine, store):
    rec = engine.run(pipeline(TRIANGLE), {"bonus": 5})
    assert rec.status == RunStatus.COMPLETED, rec.error
    assert rec.stages_completed == rec.total_stages == 5
    assert rows(store, "select * from report.salaries order by id") == [
        (1, 105, 400),
        (2, 205, 200),
        (3, 305, 400),
    ]

    stages = {s.stage_id: s for s in store.get_stages(rec.id)}
    assert [s.status for s in stages.values()] == [StageStatus.COMPLETED] * 5
    assert (stages["people"].rows_out, stages["by_dept"].rows_out, stages["raised"].rows_out) == (
        3,
        2,
        3,
    )
    assert stages["joined"].rows_in == 5 and stages["joined"].rows_out == 3
    assert stages["save"].metrics == {"table": "report.salaries", "mode": "replace", "inserted": 3}
    assert all(
        s.attempts == 1 and s.duration is not None and s.duration >= 0 for s in stages.values()
    )
    # Dependencies finished before their dependents started.
    assert stages["joined"].started_at >= max(
        stages["by_dept"].completed_at, stages["raised"].completed_at
    )

    stored = store.get_execution(rec.id)
    assert stored.status == RunStatus.COMPLETED and stored.params == {"bonus": 5}
    assert stored.completed_at >= stored.started_at
    messages = [log.message for log in store.get_logs(rec.id)]
    assert messages[0].startswith("run started") and messages[-1] == "run completed"
    assert "wrote 3 row(s) to table report.salaries (replace)" in messages
    # The run's scratch schema is gone once it ends.
    assert rows(
        store, f"select count(*) from duckdb_schemas() where schema_name = 'r_{rec.id}'"
    ) == [(0,)]


def test_independent_stages_overlap_in_time(engine, store):
    p = pipeline(
        """
        name: parallel
        stages:
          - {id: a, type: shell, config: {command: "sleep 1"}}
          - {id: b, type: shell, config: {command: "sleep 1"}}
          - {id: c, type: shell, config: {command: "sleep 1"}}
          - {id: d, type: shell, dependencies: [a, b, c], config: {command: "true"}}
        """
    )
    t0 = time.monotonic()
    rec = engine.run(p)
    wall = time.monotonic() - t0
    assert rec.status == RunStatus.COMPLETED
    st = {s.stage_id: s for s in store.get_stages(rec.id)}
    starts = [st[x].started_at for x in "abc"]
    ends = [st[x].completed_at for x in "abc"]
    # All three were running at the same moment: each started before any ended.
    assert max(starts) < min(ends)
    assert st["d"].started_at >= max(ends)
    assert wall < 2.5, f"three 1 s sleeps in parallel took {wall:.2f} s"


def test_timeout_kills_a_long_shell_stage_near_its_limit(engine, store, data_dir):
    pidfile = data_dir / "sleep.pid"
    p = pipeline(
        f"""
        name: slow
        stages:
          - id: nap
            type: shell
            timeout: 1
            config: {{command: "echo $$ > {pidfile}; exec sleep 60"}}
          - {{id: after, type: shell, dependencies: [nap], config: {{command: "true"}}}}
        """
    )
    t0 = time.monotonic()
    rec = engine.run(p)
    wall = time.monotonic() - t0
    assert rec.status == RunStatus.FAILED
    nap, after = store.get_stages(rec.id)
    assert nap.status == StageStatus.FAILED and nap.error_type == "StageTimeout"
    assert "timed out after 1 s" in nap.error
    assert 1.0 <= nap.duration < 2.0, nap.duration
    assert wall < 2.5
    assert after.status == StageStatus.SKIPPED and after.error == "upstream `nap` failed"
    pid = int(pidfile.read_text())
    time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_timeout_interrupts_a_long_duckdb_query(engine, store):
    p = pipeline(
        """
        name: heavy
        stages:
          - id: big
            type: sql
            timeout: 0.5
            config: {query: "select count(*) from range(1000000000000) a where a % 7 = 3"}
        """
    )
    t0 = time.monotonic()
    rec = engine.run(p)
    assert time.monotonic() - t0 < 2.0
    (big,) = store.get_stages(rec.id)
    assert big.status == StageStatus.FAILED and big.error_type == "StageTimeout"


def test_cancel_stops_running_stages_and_skips_the_rest(engine, store, data_dir):
    p = pipeline(
        """
        name: cancellable
        stages:
          - {id: long, type: shell, config: {command: "sleep 30"}}
          - {id: quick, type: shell, config: {command: "true"}}
          - {id: later, type: shell, dependencies: [long], config: {command: "true"}}
        """
    )
    rec = engine.submit(p)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if {s.stage_id: s.status for s in store.get_stages(rec.id)}.get(
            "long"
        ) == StageStatus.RUNNING:
            break
        time.sleep(0.02)
    t0 = time.monotonic()
    assert engine.cancel(rec.id)
    assert engine.wait(rec.id, timeout=5)
    assert time.monotonic() - t0 < 1.5
    final = store.get_execution(rec.id)
    assert final.status == RunStatus.CANCELLED
    st = {s.stage_id: s.status for s in store.get_stages(rec.id)}
    assert st == {
        "long": StageStatus.CANCELLED,
        "quick": StageStatus.COMPLETED,
        "later": StageStatus.SKIPPED,
    }
    assert not engine.cancel(rec.id)  # no longer active


def test_retries_back_off_exponentially_then_succeed(engine, store, data_dir):
    counter = data_dir / "attempts"
    p = pipeline(
        f"""
        name: flaky
        stages:
          - id: flaky
            type: shell
            retries: 3
            retry_delay: 0.2
            config:
              command: "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; test $n -ge 3"
        """
    )
    rec = engine.run(p)
    assert rec.status == RunStatus.COMPLETED
    (flaky,) = store.get_stages(rec.id)
    assert flaky.attempts == 3 and flaky.error is None
    logs = store.get_logs(rec.id)
    retry_lines = [log for log in logs if "retrying in" in log.message]
    assert [line.message.rsplit("retrying in ", 1)[1] for line in retry_lines] == ["0.2 s", "0.4 s"]
    started = [
        log.timestamp for log in logs if log.message.startswith("stage flaky (shell) started")
    ]
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    assert len(started) == 3 and 0.2 <= gaps[0] < 0.6 and 0.4 <= gaps[1] < 0.8, gaps


def test_failure_skips_downstream_but_independent_branches_finish(engine, store):
    p = pipeline(
        """
        name: branches
        stages:
          - {id: bad, type: sql, config: {query: "select error('boom from data') as x"}}
          - {id: child, type: sql, dependencies: [bad], config: {query: "select * from bad"}}
          - {id: grandchild, type: sql, dependencies: [child], config: {query: "select * from child"}}
          - {id: good, type: sql, config: {query: "select 1 as x"}}
        """
    )
    rec = engine.run(p)
    assert rec.status == RunStatus.FAILED
    assert rec.error.startswith("stage bad failed: ") and "boom from data" in rec.error
    st = {s.stage_id: s for s in store.get_stages(rec.id)}
    assert (
        st["bad"].status == StageStatus.FAILED and st["bad"].error_type == "InvalidInputException"
    )
    assert "Traceback" in st["bad"].traceback
    assert (st["child"].status, st["child"].error) == (StageStatus.SKIPPED, "upstream `bad` failed")
    assert (st["grandchild"].status, st["grandchild"].error) == (
        StageStatus.SKIPPED,
        "upstream `child` skipped",
    )
    assert st["good"].status == StageStatus.COMPLETED


def test_params_override_variables_and_undefined_placeholders_are_errors(engine, store):
    text = """
        name: params
        variables: {n: 1}
        stages:
          - {id: q, type: sql, config: {query: "select {{ n }} * 2 as v, {{ label }} as label"}}
          - {id: out, type: output, dependencies: [q], config: {table: "{{ target }}"}}
        """
    with pytest.raises(TemplateError) as err:
        pipeline(text)
    assert "undefined variable {{ label }}" in str(err.value) and "test.yaml line" in str(err.value)
    p = pipeline(text, label="x", target="t")
    with pytest.raises(TemplateError):
        engine.run(p, {"label": "x"})  # `target` missing at run time: refused before anything runs
    assert store.list_executions()[1] == 0
    rec = engine.run(p, {"n": 21, "label": "it's bound", "target": "params_out"})
    assert rec.status == RunStatus.COMPLETED, rec.error
    assert rows(store, "select * from params_out") == [(42, "it's bound")]


def test_sql_params_are_bound_not_spliced(engine, store):
    p = pipeline(
        """
        name: inject
        variables: {name: "x'; drop table victim; --"}
        stages:
          - {id: q, type: sql, config: {query: "select {{ name }} as name"}}
        """
    )
    store.cursor().execute("create table victim as select 1 as v")
    rec = engine.run(p)
    assert rec.status == RunStatus.COMPLETED
    assert rows(store, "select * from victim") == [(1,)]


COUNTED = """
name: rerun
stages:
  - id: extract
    type: python
    config: {callable: "steps.py:extract"}
  - id: gate
    type: shell
    dependencies: [extract]
    config: {command: "test -f open.flag"}
  - id: load
    type: sql
    dependencies: [extract, gate]
    config: {query: "select sum(v)::bigint as total from extract"}
  - id: save
    type: output
    dependencies: [load]
    config: {table: rerun_total}
"""


def test_retry_reruns_from_the_failed_stage_reusing_completed_outputs(engine, store, data_dir):
    (data_dir / "steps.py").write_text(
        "import polars as pl, pathlib\n"
        "def extract(inputs, params):\n"
        "    p = pathlib.Path(__file__).with_name('extract.count')\n"
        "    p.write_text(str(int(p.read_text()) + 1) if p.exists() else '1')\n"
        "    return pl.DataFrame({'v': [1, 2, 3, 4]})\n"
    )
    first = engine.run(pipeline(COUNTED))
    assert first.status == RunStatus.FAILED
    assert {s.stage_id: s.status for s in store.get_stages(first.id)}["gate"] == StageStatus.FAILED
    (data_dir / "open.flag").write_text("")
    with pytest.raises(Conflict):
        engine.retry(
            engine.run(
                pipeline("""
            name: ok
            stages: [{id: a, type: sql, config: {query: "select 1"}}]
            """)
            ).id
        )
    second = engine.retry(first.id)
    assert second.status == RunStatus.COMPLETED, second.error
    assert second.retry_of == first.id
    st = {s.stage_id: s for s in store.get_stages(second.id)}
    assert st["extract"].reused_from == first.id and st["extract"].attempts == 0
    assert st["gate"].attempts == 1 and st["gate"].reused_from is None
    assert (data_dir / "extract.count").read_text() == "1"  # extract ran once, in the first run
    assert rows(store, "select * from rerun_total") == [(10,)]


def test_retry_after_restart_reruns_stages_whose_outputs_were_not_kept(
    engine, store, data_dir, settings
):
    (data_dir / "steps.py").write_text(
        "import polars as pl\ndef extract(inputs, params):\n    return pl.DataFrame({'v': [5]})\n"
    )
    first = engine.run(pipeline(COUNTED))
    assert first.status == RunStatus.FAILED
    kept = engine.work_dir(first.id) / "extract.parquet"
    assert kept.exists()
    kept.unlink()  # as if the work dir was cleaned
    (data_dir / "open.flag").write_text("")
    second = engine.retry(first.id)
    assert second.status == RunStatus.COMPLETED
    st = {s.stage_id: s for s in store.get_stages(second.id)}
    assert st["extract"].attempts == 1 and st["extract"].reused_from is None
    assert rows(store, "select * from rerun_total") == [(5,)]


def test_a_timed_out_table_write_leaves_the_previous_table(engine, store):
    store.cursor().execute("create table target as select 'old' as v, 1 as n")
    p = pipeline(
        """
        name: atomic
        stages:
          - {id: src, type: sql, config: {query: "select 'new' as v, range as n from range(3)"}}
          - id: huge
            type: transform
            dependencies: [src]
            config: {operations: [{derive: {n: "n"}}]}
          - id: boom
            type: sql
            dependencies: [huge]
            config: {query: "select v, n from huge union all select 'x', error('fails mid-write')::bigint"}
          - {id: write, type: output, dependencies: [boom], config: {table: target, mode: replace}}
        """
    )
    rec = engine.run(p)
    assert rec.status == RunStatus.FAILED
    assert rows(store, "select * from target") == [("old", 1)]


def test_output_interrupted_mid_write_rolls_back(engine, store, data_dir):
    store.cursor().execute("create table big_target as select 'old' as v")
    (data_dir / "report.csv").write_text("old file\n")
    p = pipeline(
        """
        name: slow-write
        stages:
          - id: src
            type: input
            config: {source: "gen/*.parquet"}
          - id: slow
            type: transform
            dependencies: [src]
            config:
              operations:
                - derive: {h: "md5(md5(md5(md5(md5(md5(md5(md5(md5(md5(x::varchar))))))))))"}
          - {id: write, type: output, timeout: 0.5, dependencies: [slow], config: {table: big_target, mode: replace}}
          - {id: file, type: output, timeout: 0.5, dependencies: [slow], config: {path: report.csv}}
        """
    )
    (data_dir / "gen").mkdir()
    store.cursor().execute(
        f"copy (select range as x from range(2000000)) to '{data_dir}/gen/x.parquet'"
    )
    rec = engine.run(p)
    st = {s.stage_id: s for s in store.get_stages(rec.id)}
    assert st["write"].error_type == "StageTimeout" and st["file"].error_type == "StageTimeout"
    assert rows(store, "select * from big_target") == [("old",)]
    assert (data_dir / "report.csv").read_text() == "old file\n"
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".report")] == []


def test_max_workers_bounds_parallel_stages(store, settings, data_dir):
    from flexiroaster.engine import Engine

    engine = Engine(store, settings)
    try:
        stages = "\n".join(
            f"  - {{id: s{i}, type: shell, config: {{command: 'sleep 0.3'}}}}" for i in range(6)
        )
        rec = engine.run(pipeline(f"name: bounded\nmax_workers: 2\nstages:\n{stages}\n"))
        st = store.get_stages(rec.id)
        events = sorted([(s.started_at, 1) for s in st] + [(s.completed_at, -1) for s in st])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak == 2
    finally:
        engine.shutdown()


def test_concurrent_runs_share_the_engine(engine, store):
    p = pipeline(
        """
        name: concurrent
        stages:
          - {id: a, type: sql, config: {query: "select range as x from range(1000)"}}
          - {id: b, type: sql, dependencies: [a], config: {query: "select sum(x)::bigint as s from a"}}
        """
    )
    results = []
    threads = [threading.Thread(target=lambda: results.append(engine.run(p))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [RunStatus.COMPLETED] * 8
    assert len({r.id for r in results}) == 8
    assert store.list_executions(pipeline_id="concurrent")[1] == 8


@pytest.mark.parametrize("mode", ["replace", "append", "merge"])
def test_concurrent_runs_writing_one_table_take_turns(engine, store, mode):
    # Without a per-table write lock, DuckDB refuses all but one of these transactions
    # ("Catalog write-write conflict") and the other runs fail.
    p = pipeline(
        f"""
        name: shared-{mode}
        variables: {{k: 0}}
        stages:
          - {{id: a, type: sql, config: {{query: "select {{{{ k }}}} as k, range as x from range(50)"}}}}
          - id: save
            type: output
            dependencies: [a]
            config: {{table: shared.t_{mode}, mode: {mode}, keys: [k, x]}}
        """.replace(", keys: [k, x]", "" if mode != "merge" else ", keys: [k, x]")
    )
    results = []
    threads = [
        threading.Thread(target=lambda k=k: results.append(engine.run(p, {"k": k}))) for k in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [RunStatus.COMPLETED] * 6, [r.error for r in results]
    counts = rows(store, f"select count(*), count(distinct k) from shared.t_{mode}")[0]
    assert counts == ((50, 1) if mode == "replace" else (300, 6))


def test_submit_queues_runs_beyond_max_active_runs(engine, store):
    p = pipeline(
        """
        name: one-at-a-time
        max_active_runs: 1
        stages:
          - {id: nap, type: shell, config: {command: "sleep 0.3"}}
        """
    )
    recs = [engine.submit(p) for _ in range(3)]
    assert engine.queued() == 2
    third = recs[2].id
    assert engine.cancel(third)  # a queued run cancels without ever running its stages
    for r in recs:
        assert engine.wait(r.id, timeout=10)
    final = [store.get_execution(r.id) for r in recs]
    assert [f.status for f in final] == [
        RunStatus.COMPLETED,
        RunStatus.COMPLETED,
        RunStatus.CANCELLED,
    ]
    assert final[1].started_at >= final[0].completed_at  # never two at once
    assert [s.status for s in store.get_stages(third)] == [StageStatus.SKIPPED]
    assert engine.queued() == 0
