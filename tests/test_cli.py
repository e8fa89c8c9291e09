"""The `flexiroaster` command as a real subprocess: run, runs, logs, retry, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from flexiroaster.states import RunStatus, StageStatus
from flexiroaster.store import Store


def cli(data_dir, *args, timeout=60):
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "flexiroaster", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GOOD = """
name: cli-good
variables: {n: 3}
stages:
  - {id: nums, type: sql, config: {query: "select range as x from range({{ n }})"}}
  - {id: save, type: output, dependencies: [nums], config: {table: cli_nums}}
"""

BAD_STAGE = """
name: cli-bad
stages:
  - {id: ok, type: sql, config: {query: "select 1 as x"}}
  - {id: broken, type: sql, dependencies: [ok], config: {query: "select * from ok where error('bad row') is null"}}
"""


def test_run_prints_progress_and_exits_by_outcome(data_dir):
    (data_dir / "good.yaml").write_text(GOOD)
    (data_dir / "bad.yaml").write_text(BAD_STAGE)
    ok = cli(data_dir, "run", str(data_dir / "good.yaml"), "--param", "n=5")
    assert ok.returncode == 0, ok.stderr
    assert "ok nums" in ok.stdout and "5 rows" in ok.stdout and " completed in " in ok.stdout
    bad = cli(data_dir, "run", str(data_dir / "bad.yaml"))
    assert bad.returncode == 1
    assert (
        "FAILED broken" in bad.stdout
        and "bad row" in bad.stdout
        and "Traceback" not in bad.stdout + bad.stderr
    )

    runs = cli(data_dir, "runs")
    assert runs.returncode == 0
    lines = runs.stdout.splitlines()
    assert (
        "cli-bad" in lines[1]
        and "failed" in lines[1]
        and "cli-good" in lines[2]
        and "completed" in lines[2]
    )
    run_id = lines[1].split()[0]
    logs = cli(data_dir, "logs", run_id)
    assert "stage broken failed" in logs.stdout and "run failed" in logs.stdout

    s = Store(data_dir / "flexiroaster.duckdb")
    try:
        assert s.cursor().execute("select count(*) from cli_nums").fetchall() == [(5,)]
    finally:
        s.close()


def test_unknown_pipeline_and_bad_params_are_clear_errors(data_dir):
    missing = cli(data_dir, "run", "no-such-pipeline")
    assert (
        missing.returncode == 1
        and "no pipeline file or sample named 'no-such-pipeline'" in missing.stderr
    )
    (data_dir / "good.yaml").write_text(GOOD)
    bad = cli(data_dir, "run", str(data_dir / "good.yaml"), "--param", "oops")
    assert bad.returncode == 1 and "expected NAME=VALUE" in bad.stderr
    unknown = cli(data_dir, "logs", "nope")
    assert unknown.returncode == 1 and "no execution 'nope'" in unknown.stderr


def test_run_by_name_from_the_pipelines_folder(data_dir):
    (data_dir / "pipelines").mkdir()
    (data_dir / "pipelines" / "good.yaml").write_text(GOOD)
    assert cli(data_dir, "run", "cli-good").returncode == 0
    assert cli(data_dir, "run", "good").returncode == 0


def test_retry_command_reruns_only_what_failed(data_dir):
    (data_dir / "gated.yaml").write_text(
        textwrap.dedent(
            """
            name: gated
            stages:
              - {id: first, type: sql, config: {query: "select 7 as x"}}
              - {id: gate, type: shell, dependencies: [first], config: {command: "test -f open.flag"}}
              - {id: save, type: output, dependencies: [first, gate], config: {table: gated_out}}
            """
        )
    )
    failed = cli(data_dir, "run", str(data_dir / "gated.yaml"))
    assert failed.returncode == 1
    run_id = failed.stdout.splitlines()[0].split()[1]
    (data_dir / "open.flag").write_text("")
    retried = cli(data_dir, "retry", run_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert ".. first" not in retried.stdout  # reused, not run again
    s = Store(data_dir / "flexiroaster.duckdb")
    try:
        assert s.cursor().execute("select * from gated_out").fetchall() == [(7,)]
    finally:
        s.close()


def test_ctrl_c_cancels_the_run_and_records_it(data_dir):
    (data_dir / "slow.yaml").write_text(
        "name: slow\nstages:\n  - {id: nap, type: shell, config: {command: 'sleep 30'}}\n"
    )
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexiroaster", "run", str(data_dir / "slow.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if ".. nap" in line:
            break
    time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert time.monotonic() - t0 < 5
    assert proc.returncode == 1 and "cancelled" in out
    s = Store(data_dir / "flexiroaster.duckdb")
    try:
        (rec,), _ = s.list_executions()
        assert rec.status == RunStatus.CANCELLED
        assert [x.status for x in s.get_stages(rec.id)] == [StageStatus.CANCELLED]
    finally:
        s.close()
