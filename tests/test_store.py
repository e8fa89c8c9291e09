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
from flexiroaster.store import RECOVERY_REASON, Store

from .conftest import pipeline, rows


def _env(data_dir) -> dict:
    return {**os.environ, "FLEXIROASTER_DATA_DIR": str(data_dir)}


def test_migrations_apply_once(settings):
    s = Store(settings.store_file)
    s.close()
    s = Store(settings.store_file)
    try:
        assert rows(s, f"select version from {s.meta}.schema_version") == [(1,)]
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
        env=_env(data_dir), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if ".. write (output)" in line:
            break
    time.sleep(0.8)  # well inside the write, and past a flush of the stage rows
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
