"""The store: migrations, one owner per file, recovery after a crash, batched logs readable live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flexiroaster.states import RunStatus, StageStatus
from flexiroaster.store import MIGRATIONS, RECOVERY_REASON, Store

from .conftest import pipeline, rows


def _env(data_dir) -> dict:
    return {**os.environ, "FLEXIROASTER_DATA_DIR": str(data_dir)}


def test_migrations_apply_once(settings):
    s = Store(settings.store_file)
    s.close()
    s = Store(settings.store_file)
    try:
        assert rows(s, f"select version from {s.meta}.schema_version order by 1") == [
            (n,) for n in range(1, len(MIGRATIONS) + 1)
        ]
    finally:
        s.close()


def test_an_older_store_is_migrated_and_keeps_its_runs(settings):
    """A store written at schema version 1 (before the stage index) opens, is upgraded, and
    its history is intact."""
    import re

    import duckdb

    con = duckdb.connect(str(settings.store_file))
    meta = f'"{settings.store_file.stem}".flexiroaster'

    def run(sql: str) -> None:
        con.execute(re.sub(r"\bflexiroaster\.", meta + ".", sql))

    con.execute(f"CREATE SCHEMA {meta}")
    run(
        "CREATE TABLE flexiroaster.schema_version (version INTEGER PRIMARY KEY,"
        " applied_at TIMESTAMPTZ NOT NULL)"
    )
    run(MIGRATIONS[0])
    run("INSERT INTO flexiroaster.schema_version VALUES (1, now())")
    run(
        "INSERT INTO flexiroaster.executions (id, pipeline_id, status, trigger, created_at,"
        " total_stages) VALUES ('old-run', 'p', 'completed', 'manual', now(), 0)"
    )
    con.close()
    s = Store(settings.store_file)
    try:
        assert not s.created
        assert s.get_execution("old-run").status == RunStatus.COMPLETED
        assert rows(s, f"select max(version) from {s.meta}.schema_version") == [(len(MIGRATIONS),)]
        indexes = rows(
            s, "select index_name from duckdb_indexes() where table_name = 'stage_executions'"
        )
        assert ("stage_executions_execution",) in indexes
    finally:
        s.close()


def test_a_second_process_fails_fast_naming_the_holder(store, data_dir):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flexiroaster", "runs"],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert f"in use by process {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 10


def test_second_store_in_another_process_raises_store_locked(store):
    code = f"from flexiroaster.store import Store\nStore({str(store.path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "StoreLocked" in proc.stderr and str(os.getpid()) in proc.stderr


def test_logs_are_readable_while_the_run_goes_on(engine, store):
    p = pipeline(
        """
        name: chatty
        stages:
          - {id: talk, type: shell, config: {command: "echo one; sleep 0.6; echo two; sleep 0.6; echo three"}}
        """
    )
    rec = engine.submit(p)
    seen: list[str] = []
    cursor = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = store.get_logs(rec.id, after=cursor)
        if batch:
            cursor = batch[-1].id
            seen += [b.message for b in batch]
            if "one" in seen and "three" not in seen:
                running = store.get_execution(rec.id).status
                assert running == RunStatus.RUNNING
        if store.get_execution(rec.id).status in RunStatus.terminal():
            seen += [b.message for b in store.get_logs(rec.id, after=cursor)]
            break
        time.sleep(0.05)
    assert [m for m in seen if m in ("one", "two", "three")] == ["one", "two", "three"]
    ids = [log.id for log in store.get_logs(rec.id)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


SLOW_WRITE = """
name: crashable
stages:
  - id: src
    type: input
    config: {{source: "gen/*.parquet"}}
  - id: slow
    type: transform
    dependencies: [src]
    config:
      operations:
        - derive: {{v: "'new'", h: "md5(md5(md5(md5(md5(md5(md5(md5(x::varchar))))))))"}}
        - select: [k, v, h]
  - id: write
    type: output
    dependencies: [slow]
    config: {{table: target, mode: {mode}, keys: [k]}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replace", "append", "merge"])
def test_sigkill_mid_write_keeps_the_old_table_and_marks_the_run_failed(data_dir, settings, mode):
    (data_dir / "gen").mkdir()
    s = Store(settings.store_file)
    s.cursor().execute(
        f"copy (select range as x, range as k from range(8000000)) to '{data_dir}/gen/x.parquet'"
    )
    s.cursor().execute(
        "create table target as select range as k, 'old' as v, 'h' as h from range(5)"
    )
    s.close()
    (data_dir / "p.yaml").write_text(textwrap.dedent(SLOW_WRITE.format(mode=mode)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexiroaster", "run", str(data_dir / "p.yaml")],
        # frequent flushes: the stage's start reaches the file even on a busy machine
        env=_env(data_dir) | {"FLEXIROASTER_LOG_FLUSH_INTERVAL": "0.05"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if ".. write (output)" in line:
            break
    time.sleep(2.0)  # well inside the write (8M md5 rows), and past a flush of its start
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    s = Store(settings.store_file)
    try:
        assert len(s.recovered) == 1
        rec = s.get_execution(s.recovered[0])
        assert rec.status == RunStatus.FAILED and rec.error == RECOVERY_REASON
        st = {x.stage_id: x for x in s.get_stages(rec.id)}
        assert st["write"].status == StageStatus.FAILED and st["write"].error == RECOVERY_REASON
        assert rows(s, "select k, v from target order by k") == [(k, "old") for k in range(5)]
    finally:
        s.close()


def test_list_pages_match_a_plain_newest_first_query(store):
    """The list narrows to a created_at window before its top-N; pages must be exactly what a
    plain ORDER BY ... LIMIT OFFSET returns, ties, filters and deep offsets included."""
    import random
    from datetime import timedelta

    from flexiroaster.records import ExecutionRecord, now

    rnd = random.Random(7)
    start = now() - timedelta(days=30)
    runs = []
    for i in range(3000):
        # creation order, bursts of equal timestamps, one pipeline only in the far past
        at = start + timedelta(seconds=(i // 3) * rnd.choice([1, 1, 60, 3600]) / 10)
        runs.append(
            ExecutionRecord(
                id=f"r{i:05d}",
                pipeline_id="rare" if i < 40 else rnd.choice(["a", "b"]),
                pipeline_version="1",
                status=rnd.choice([RunStatus.COMPLETED, RunStatus.FAILED]),
                trigger="manual",
                params={},
                created_at=at,
                total_stages=0,
                spec_yaml="stages: []",
            )
        )
    store.import_executions(runs, [])
    for filters in ({}, {"pipeline_id": "rare"}, {"pipeline_id": "a", "status": "failed"}):
        expected = [
            r
            for r in sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)
            if all(str(getattr(r, k)) == v for k, v in filters.items())
        ]
        for limit, offset in ((50, 0), (7, 13), (100, 900), (50, len(expected) - 3), (5, 5000)):
            page, total = store.list_executions(limit=limit, offset=offset, **filters)
            assert total == len(expected)
            assert [r.id for r in page] == [r.id for r in expected[offset : offset + limit]], (
                filters,
                limit,
                offset,
            )
            assert all(r.spec_yaml is None for r in page)  # lists leave the spec out
    assert store.get_execution("r00000").spec_yaml == "stages: []"


def test_a_trigger_is_durable_before_it_returns(store, engine):
    """prepare() commits the run row and its stages (a group commit), so a run the API
    accepted survives a crash right after the 202."""
    p = pipeline(
        """
        name: durable
        stages:
          - {id: a, type: sql, config: {query: select 1 as x}}
        """
    )
    run = engine.prepare(p)
    got = store._exec(
        store.new_cursor(),
        "SELECT status FROM flexiroaster.executions WHERE id = ?",
        [run.record.id],
    ).fetchall()
    assert got == [("pending",)]
    staged = store._exec(
        store.new_cursor(),
        "SELECT count(*) FROM flexiroaster.stage_executions WHERE execution_id = ?",
        [run.record.id],
    ).fetchall()
    assert staged == [(1,)]
    engine.execute(run)
    assert store.get_execution(run.record.id).status == RunStatus.COMPLETED


def test_the_store_never_downloads_extensions_on_its_own(store):
    assert rows(store, "select current_setting('autoinstall_known_extensions')") == [(False,)]
