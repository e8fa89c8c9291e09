"""Retention on real stores: old finished runs go with every row of theirs, newer and active ones
stay, runs keep executing during a prune, and a 10,000-run soak keeps the store file bounded."""

from __future__ import annotations

import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from flexiroaster.errors import FlexiError
from flexiroaster.records import ExecutionRecord, StageRecord
from flexiroaster.retention import prune, store_bytes
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings
from flexiroaster.states import RunStatus, StageStatus

TRIVIAL = textwrap.dedent(
    """
    name: keep going
    stages:
      - {id: one, type: sql, config: {query: "select 42 as x"}}
    """
)
SLEEPY = textwrap.dedent(
    """
    name: sleepy
    stages:
      - {id: nap, type: shell, config: {command: "exec sleep 30"}}
    """
)
SPEC = textwrap.dedent(
    """
    name: imported
    stages:
      - {id: extract, type: sql, config: {query: "select * from range(1000)"}}
      - {id: load, type: output, dependencies: [extract], config: {table: t, mode: append}}
    """
)


def history(
    store,
    n: int,
    start: datetime,
    *,
    step: timedelta = timedelta(seconds=1),
    status: RunStatus = RunStatus.COMPLETED,
    pipeline: str = "imported",
    logs: int = 3,
    prefix: str = "",
) -> list[str]:
    """Write `n` runs created from `start` on, two stage rows and `logs` log lines each."""
    runs, stages = [], []
    final = status in RunStatus.terminal()
    for i in range(n):
        at = start + step * i
        rid = f"{prefix}{int(at.timestamp() * 1000):012x}{i:08x}"
        runs.append(
            ExecutionRecord(
                id=rid, pipeline_id=pipeline, pipeline_version="1.0.0", status=status,
                trigger="schedule", params={"run_date": at.date().isoformat()}, created_at=at,
                total_stages=2, started_at=at, completed_at=at + timedelta(seconds=2) if final else None,
                error="stage load failed: Binder Error" if status == RunStatus.FAILED else None,
                stages_completed=2 if status == RunStatus.COMPLETED else 0, pid=4242, spec_yaml=SPEC,
            )
        )  # fmt: skip
        for pos, sid in enumerate(("extract", "load")):
            s = StageRecord(rid, sid, "sql" if pos == 0 else "output", pos)
            if final:
                s.status, s.attempts, s.duration = StageStatus.COMPLETED, 1, 1.0
                s.started_at, s.completed_at = at, at + timedelta(seconds=1)
                s.rows_in, s.rows_out, s.metrics = 1000, 1000, {"rows": 1000, "bytes": 48000}
            stages.append(s)
    store.import_executions(runs, stages)
    for r in runs:
        for k in range(logs):
            store.log(r.id, "extract" if k else None, "INFO", f"line {k} of run {r.id}: rows 1000")
    store.flush()
    return [r.id for r in runs]


def callbacks(store, run_ids: list[str], at: datetime) -> None:
    store.put_rows(
        "airflow_callbacks",
        [
            {"id": f"cb-{rid}", "execution_id": rid, "dag_id": "d", "dag_run_id": "r",
             "task_id": "extract", "try_number": 1, "state": "success", "message": None,
             "error": None, "start_date": at, "end_date": at, "received_at": at, "payload": {}}
            for rid in run_ids
        ],
    )  # fmt: skip


def alert(store, aid: str, status: str, at: datetime, notes: dict[str, str]) -> None:
    store.put_rows(
        "alerts",
        [{"id": aid, "rule_id": "run-failed", "pipeline_id": "imported", "kind": "run_failed",
          "severity": "high", "status": status, "title": "t", "message": "m", "evidence": [],
          "occurrences": 1, "created_at": at, "last_seen_at": at, "acknowledged_by": None,
          "acknowledged_at": None, "resolved_by": "auto" if status == "resolved" else None,
          "resolved_at": at if status == "resolved" else None,
          "resolution": "auto" if status == "resolved" else None}],
    )  # fmt: skip
    store.put_rows(
        "alert_notifications",
        [{"id": nid, "alert_id": aid, "url": "http://127.0.0.1:9/x", "status": st, "attempts": 1,
          "last_status_code": 200, "last_error": None, "created_at": at,
          "delivered_at": at if st == "delivered" else None}
         for nid, st in notes.items()],
    )  # fmt: skip


def ids_in(store, table: str, col: str = "execution_id") -> set[str]:
    return {r[0] for r in store.query(f"SELECT DISTINCT {col} FROM flexiroaster.{table}")}


@pytest.fixture
def make_runtime(data_dir):
    made = []

    def make(clock=None, **kw) -> Runtime:
        settings = load_settings(data_dir=data_dir, max_workers=4, log_flush_interval=0.05, **kw)
        rt = Runtime(settings, **({"clock": clock} if clock else {}))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def test_retention_days_must_be_positive_and_defaults_to_keeping_everything(make_runtime):
    for bad in (0, -3):
        with pytest.raises(FlexiError) as err:
            load_settings(retention_days=bad)
        assert "FLEXIROASTER_RETENTION_DAYS" in "\n".join(err.value.details)
    rt = make_runtime()
    assert rt.settings.retention_days is None and not rt.retention.enabled
    ancient = history(rt.store, 5, datetime(2020, 1, 1, tzinfo=UTC))
    rt.start()
    assert rt.retention._thread is None  # nothing prunes without the setting
    assert ids_in(rt.store, "executions", "id") == set(ancient)


def test_old_finished_runs_go_with_all_their_rows_newer_and_unfinished_ones_stay(make_runtime):
    rt = make_runtime(retention_days=7)
    store, t = rt.store, datetime.now(UTC)
    old = history(store, 20, t - timedelta(days=20), step=timedelta(hours=6))
    old += history(store, 5, t - timedelta(days=9), status=RunStatus.FAILED, prefix="f")
    old += history(store, 5, t - timedelta(days=8), status=RunStatus.CANCELLED, prefix="c")
    # Never finished (a dead process's leftovers would be marked failed at open; these stand for
    # rows in those states while the runtime runs): kept however old.
    unfinished = [
        *history(store, 2, t - timedelta(days=30), status=RunStatus.HELD, prefix="h"),
        *history(store, 2, t - timedelta(days=30), status=RunStatus.RUNNING, prefix="r"),
        *history(store, 2, t - timedelta(days=30), status=RunStatus.PENDING, prefix="p"),
    ]
    new = history(store, 10, t - timedelta(days=6), step=timedelta(hours=12), prefix="n")
    callbacks(store, old + unfinished + new, t - timedelta(days=10))
    alert(store, "a-old", "resolved", t - timedelta(days=10), {"n1": "delivered", "n2": "failed"})
    alert(store, "a-open", "open", t - timedelta(days=10), {"n3": "pending", "n4": "delivered"})
    alert(store, "a-new", "resolved", t - timedelta(days=1), {"n5": "delivered"})
    kept = set(unfinished + new)
    # a failed run keeps the outputs its retry would reuse under DATA_DIR/work/<run id>
    work = {rid: rt.engine.work_dir(rid) for rid in (old[20], new[0])}
    for path in work.values():
        path.mkdir(parents=True)
        (path / "extract.parquet").write_bytes(b"PAR1")
    before = {tb: store.count(tb) for tb in ("stage_executions", "logs", "airflow_callbacks")}

    result = rt.retention.run_once()

    assert result.runs == len(old) == 30
    assert (result.stages, result.logs, result.callbacks) == (60, 90, 30)
    for table in ("stage_executions", "logs", "airflow_callbacks"):
        assert ids_in(store, table) == kept, table
    assert ids_in(store, "executions", "id") == kept
    assert not work[old[20]].exists() and work[new[0]].is_dir()
    after = {tb: store.count(tb) for tb in before}
    assert after == {"stage_executions": 2 * len(kept), "logs": 3 * len(kept),
                     "airflow_callbacks": len(kept)}  # fmt: skip
    # resolved long ago: gone with its notifications; the open one keeps its pending delivery
    assert ids_in(store, "alerts", "id") == {"a-open", "a-new"}
    assert ids_in(store, "alert_notifications", "id") == {"n3", "n5"}
    assert (result.alerts, result.notifications) == (1, 3)
    assert result.checkpoint_error is None and result.checkpoint_seconds is not None
    # a second prune finds nothing
    again = rt.retention.run_once()
    assert (again.runs, again.logs, again.alerts, again.notifications) == (0, 0, 0, 0)


def test_live_runs_are_never_pruned_and_the_thread_prunes_at_start(make_runtime):
    offset = [timedelta(0)]
    rt = make_runtime(clock=lambda: datetime.now(UTC) + offset[0], retention_days=1)
    rt.save_pipeline(TRIVIAL)
    rt.save_pipeline(SLEEPY)
    done = rt.trigger("keep-going")
    assert rt.engine.wait(done.id, 30)
    running = rt.trigger("sleepy")
    held = rt.engine.submit(rt.get_pipeline("keep-going").pipeline, held=True)
    deadline = time.monotonic() + 10
    while rt.store.get_execution(running.id).status != RunStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    offset[0] = timedelta(days=3)  # every run is now older than the cutoff
    # the engine's active set is honoured even for a row that says it is finished
    assert prune(rt.store, rt.retention.cutoff(), keep=lambda: [done.id]).runs == 0

    rt.start()  # the retention thread prunes once at start
    deadline = time.monotonic() + 10
    while rt.retention.last is None:
        assert time.monotonic() < deadline, "no prune at start"
        time.sleep(0.05)
    assert rt.retention.last.runs == 1
    assert ids_in(rt.store, "executions", "id") == {running.id, held.id}
    assert rt.store.get_execution(running.id).status == RunStatus.RUNNING
    assert rt.store.get_execution(held.id).status == RunStatus.HELD
    assert len(rt.store.get_stages(running.id)) == 1
    assert rt.retention.status()["last_prune"]["runs"] == 1
    rt.close()
    assert rt.retention._thread is None  # stopped with the runtime


@pytest.mark.slow
def test_runs_keep_executing_while_a_big_prune_goes_on(make_runtime):
    rt = make_runtime(retention_days=1)
    rt.save_pipeline(TRIVIAL)
    pipeline = rt.get_pipeline("keep-going").pipeline
    start = datetime.now(UTC) - timedelta(days=40)
    n = 20_000
    for k in range(0, n, 5_000):
        history(rt.store, 5_000, start + timedelta(seconds=k), prefix=f"b{k}", logs=2)

    def timed_run() -> float:
        t0 = time.perf_counter()
        rec = rt.engine.run(pipeline)
        assert rec.status == RunStatus.COMPLETED
        return time.perf_counter() - t0

    baseline = sorted(timed_run() for _ in range(20))
    out: dict = {}
    pruner = threading.Thread(target=lambda: out.update(r=rt.retention.run_once()))
    pruner.start()
    during = []
    while pruner.is_alive():
        during.append(timed_run())
    pruner.join()
    result = out["r"]
    assert result.runs == n and result.logs == 2 * n and result.stages == 2 * n
    assert result.batches == n // 500
    assert rt.store.count("executions") == len(baseline) + len(during)
    assert rt.store.count("logs", "execution_id LIKE 'b%'") == 0
    # Runs went on all along: many completed during the prune, none stalled behind it.
    assert len(during) >= 10, (len(during), result)
    assert max(during) < 2.0, during
    assert result.longest_batch < 1.0, result
    print(
        f"\nprune of {n} runs: {result.seconds:.2f} s in {result.batches} batches (longest"
        f" {result.longest_batch * 1000:.0f} ms, checkpoint {result.checkpoint_seconds} s);"
        f" {len(during)} runs meanwhile, median {sorted(during)[len(during) // 2] * 1000:.0f} ms"
        f" max {max(during) * 1000:.0f} ms (alone: median {baseline[10] * 1000:.0f} ms"
        f" max {baseline[-1] * 1000:.0f} ms)"
    )


@pytest.mark.slow
def test_store_size_stays_bounded_over_a_10000_run_soak(make_runtime):
    """40 simulated days of 250 runs (10,000 in all: 240 imported a day, 10 executed by the
    engine), a prune after each day, retention 3 days: the file levels off instead of growing."""
    offset = [timedelta(0)]
    rt = make_runtime(clock=lambda: datetime.now(UTC) + offset[0], retention_days=3)
    rt.save_pipeline(TRIVIAL)
    pipeline = rt.get_pipeline("keep-going").pipeline
    base = datetime.now(UTC)
    sizes, kept, prunes = [], [], []
    total = 0
    for day in range(40):
        offset[0] = timedelta(days=day)
        history(rt.store, 240, base + offset[0], step=timedelta(minutes=6), prefix=f"d{day:02}-")
        for _ in range(10):  # real runs, created at the real time: old after 3 simulated days
            assert rt.engine.run(pipeline).status == RunStatus.COMPLETED
        total += 250
        result = rt.retention.run_once()
        prunes.append(result)
        sizes.append(store_bytes(rt.store.path))
        kept.append(rt.store.count("executions"))
    assert total == 10_000
    assert sum(p.runs for p in prunes) + kept[-1] == total
    assert max(kept) <= 4 * 250 + 10  # retention 3 days holds 3-4 days of runs
    # Levels off: the last 20 days never exceed the first plateau by more than a quarter,
    # while 2x more runs went through.
    plateau = max(sizes[5:20])
    assert max(sizes[20:]) <= 1.25 * plateau, [s // 1024 for s in sizes]
    assert all(p.checkpoint_error is None for p in prunes if p.runs), [
        p.checkpoint_error for p in prunes
    ]
    longest = max(p.longest_batch for p in prunes)
    print(
        f"\nsoak: {total} runs, kept <= {max(kept)}, store KB by day "
        f"{[s // 1024 for s in sizes[::5]]} (max {max(sizes) // 1024} KB, plateau"
        f" {plateau // 1024} KB); prune median {sorted(p.seconds for p in prunes)[20] * 1000:.0f} ms,"
        f" longest batch {longest * 1000:.0f} ms"
    )
