"""`flexiroaster serve` and `flexiroaster trigger` as real processes: one runtime per store,
loopback unless a token is set, SIGTERM records running runs cancelled, trigger --wait exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from flexiroaster.client import Client
from flexiroaster.store import Store

from .conftest import free_port, serve_env, start_serve, stop_serve

pytestmark = pytest.mark.slow

GOOD = """
name: serve-good
variables: {n: 3}
stages:
  - {id: nums, type: sql, config: {query: "select range as x from range({{ n }})"}}
  - {id: save, type: output, dependencies: [nums], config: {table: serve_nums, mode: replace}}
"""
FAILING = """
name: serve-failing
stages:
  - {id: ok, type: sql, config: {query: "select 1 as x"}}
  - {id: broken, type: sql, dependencies: [ok], config: {query: "select error('bad row') as x"}}
"""
SLOW = """
name: serve-slow
stages:
  - {id: nap, type: shell, config: {command: "echo $$ > nap.pid; exec sleep 60"}}
  - {id: after, type: shell, dependencies: [nap], config: {command: "true"}}
"""


env_for = serve_env


def flexiroaster(*args: str, env: dict[str, str], timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "flexiroaster", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def serve_process(data_dir, *args: str, **env: str):
    """`flexiroaster serve` on a free port; yields (process, base URL) once /health answers."""
    proc, url = start_serve(data_dir, *args, env=env_for(data_dir, **env))
    try:
        yield proc, url
    finally:
        stop_serve(proc)
        proc.stdout.close()
        proc.stderr.close()


def test_a_second_serve_on_the_same_data_dir_exits_at_once_naming_the_pid(data_dir):
    with serve_process(data_dir) as (first, url):
        t0 = time.monotonic()
        second = flexiroaster(
            "serve", "--port", str(free_port()), env=env_for(data_dir), timeout=30
        )
        took = time.monotonic() - t0
        assert second.returncode == 1, second
        assert f"in use by process {first.pid}" in second.stderr, second.stderr
        assert "only one FlexiRoaster runtime may open it" in second.stderr
        assert "Traceback" not in second.stderr and second.stdout == ""
        assert took < 10, f"the second serve took {took:.1f} s to give up"
        # The first runtime is unharmed and still does work.
        with Client(url) as c:
            c.create_pipeline(GOOD)
            assert c.wait(c.trigger("serve-good")["id"], timeout=30)["status"] == "completed"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_serve_refuses_a_non_loopback_host_without_a_token(data_dir, host):
    t0 = time.monotonic()
    out = flexiroaster("serve", "--host", host, "--port", str(free_port()), env=env_for(data_dir))
    assert out.returncode == 1
    assert f"refusing to listen on {host} without a token" in out.stderr
    assert "FLEXIROASTER_API_TOKEN" in out.stderr
    assert time.monotonic() - t0 < 10
    assert not (data_dir / "flexiroaster.duckdb").exists()  # refused before opening the store


def test_serve_on_all_interfaces_with_a_token_requires_it(data_dir):
    with serve_process(data_dir, "--host", "0.0.0.0", FLEXIROASTER_API_TOKEN="s3cret") as (_, url):
        with Client(url) as anonymous:
            assert anonymous.health()["status"] == "ok"
            refused = httpx.post(f"{url}/api/v1/pipelines", content=GOOD)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        with Client(url, token="s3cret") as c:
            assert c.create_pipeline(GOOD)["version"] == 1


def test_sigterm_cancels_running_runs_and_records_them_cancelled(data_dir):
    with serve_process(data_dir) as (proc, url), Client(url) as c:
        c.create_pipeline(SLOW)
        run = c.trigger("serve-slow")
        pidfile = data_dir / "nap.pid"
        deadline = time.monotonic() + 15
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the shell stage never started"
            time.sleep(0.05)
        sleep_pid = int(pidfile.read_text())

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    # uvicorn re-raises SIGTERM once it has shut down (after the app's lifespan closed the
    # runtime), so the process ends the conventional way for a terminated server.
    assert proc.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    assert took < 8, f"serve took {took:.1f} s to stop"
    with pytest.raises(ProcessLookupError):
        os.kill(sleep_pid, 0)

    # The runtime recorded the run itself: opening the store finds nothing to recover.
    store = Store(data_dir / "flexiroaster.duckdb")
    try:
        assert store.recovered == []
        rec = store.get_execution(run["id"])
        assert rec.status == "cancelled" and rec.error == "cancelled: the runtime stopped"
        assert rec.completed_at is not None
        assert {s.stage_id: str(s.status) for s in store.get_stages(run["id"])} == {
            "nap": "cancelled",
            "after": "skipped",
        }
        assert store.get_logs(run["id"])[-1].message.startswith("run cancelled")
    finally:
        store.close()


def test_trigger_wait_exits_by_the_outcome_of_the_run(data_dir):
    with serve_process(data_dir) as (_, url):
        with Client(url) as c:
            c.create_pipeline(GOOD)
            c.create_pipeline(FAILING)
        env = env_for(data_dir)

        ok = flexiroaster("trigger", "serve-good", "--wait", "--url", url, "-p", "n=5", env=env)
        assert ok.returncode == 0, ok.stderr
        lines = ok.stdout.splitlines()
        assert lines[0].startswith("run ") and " of serve-good " in lines[0]
        assert any(
            line.split() == ["ok", "nums", line.split()[2], "5", "rows"] for line in lines[1:]
        )
        assert " completed in " in lines[-1]

        # The URL can come from FLEXIROASTER_API_URL too.
        bad = flexiroaster(
            "trigger", "serve-failing", "--wait", env=env | {"FLEXIROASTER_API_URL": url}
        )
        assert bad.returncode == 1, bad.stderr
        assert "FAILED broken" in bad.stdout and "bad row" in bad.stdout
        assert " failed in " in bad.stdout.splitlines()[-1]

        queued = flexiroaster("trigger", "serve-good", "--url", url, env=env)
        assert queued.returncode == 0 and len(queued.stdout.splitlines()) == 1

        unknown = flexiroaster("trigger", "nope", "--wait", "--url", url, env=env)
        assert unknown.returncode == 1 and "no pipeline 'nope'" in unknown.stderr

        with Client(url) as c:
            good = c.executions(pipeline_id="serve-good")["executions"]
            failing = c.executions(pipeline_id="serve-failing")["executions"]
        assert len(good) == 2 and {"n": 5} in [r["params"] for r in good]
        assert [r["status"] for r in failing] == ["failed"]

    gone = flexiroaster("trigger", "serve-good", "--wait", "--url", url, env=env)
    assert gone.returncode == 1
    assert f"no FlexiRoaster runtime answers at {url}" in gone.stderr
    assert "flexiroaster serve" in gone.stderr
