"""A data dir that cannot be written: `serve` refuses to start on a read-only one, naming it; a
disk that fills while serving degrades /health (503, with the reason) and refuses new runs,
stored runs stay readable, and everything resumes once there is room again."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flexiroaster.client import Client
from flexiroaster.settings import load_settings

from .conftest import free_port, serve_env, start_serve, stop_serve

pytestmark = pytest.mark.slow

OK = """
name: df-ok
stages:
  - {id: nums, type: sql, config: {query: "select range as x, md5(range::varchar) as h from range(1000)"}}
  - {id: save, type: output, dependencies: [nums], config: {table: df_nums, mode: replace}}
"""
# Log lines every 20 ms for ~4 s: the store has a stream of writes to make while the disk fills.
TALK = """
name: df-talk
stages:
  - id: talk
    type: shell
    config: {command: "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo line $i; sleep 0.02; done"}
"""

# Waits (outside the full file system) for the test's go, then replaces df_nums with 200,000
# rows: that write meets the full disk.
WAIT = """
name: df-wait
stages:
  - {id: wait, type: shell, config: {command: 'while [ ! -e "$DF_GO" ]; do sleep 0.05; done'}}
  - id: nums
    type: sql
    dependencies: [wait]
    config: {query: "select range as x, md5(range::varchar) || repeat('y', 200) as h from range(200000)"}
  - {id: save, type: output, dependencies: [nums], config: {table: df_nums, mode: replace}}
"""


def _mount(path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip


@contextlib.contextmanager
def small_fs(path: Path, size: str):
    """A real, small file system at `path` (a tmpfs of `size`): fills up, and remounts read-only
    even for root, for whom chmod stops nothing."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = _mount(path, f"size={size}", "mode=0755")
    if done.returncode:
        pytest.skip(f"this machine refuses a tmpfs mount: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path: Path, mode: str) -> None:
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def env_for(data_dir: Path) -> dict[str, str]:
    return serve_env(
        data_dir, FLEXIROASTER_LOG_FLUSH_INTERVAL="0.05", FLEXIROASTER_INSIGHTS_INTERVAL="3600"
    )


def _fill(folder: Path) -> Path:
    """Write a file until the file system says it is full."""
    filler = folder / "filler.bin"
    block = b"\0" * (1 << 16)
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(block)
            f.flush()
    # The last pages: what a buffered write left.
    with contextlib.suppress(OSError), open(folder / "filler-tail.bin", "wb") as f:
        for _ in range(1 << 16):
            f.write(b"\0" * 512)
            f.flush()
    st = os.statvfs(folder)
    assert st.f_bavail * st.f_frsize < 64 * 1024, "the file system did not fill"
    return filler


def test_serve_on_a_read_only_data_dir_exits_at_once_naming_it(tmp_path):
    data = tmp_path / "data"
    with small_fs(data, "16m"):
        from flexiroaster.runtime import Runtime

        rt = Runtime(load_settings(data_dir=data))  # a store with its history, then read-only
        rt.save_pipeline(OK)
        rt.close()
        _remount(data, "ro")
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "flexiroaster", "serve", "--port", str(free_port())],
            env=env_for(data), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        took = time.monotonic() - t0
        assert out.returncode == 1, out
        assert f"the data directory {data} is not writable (Read-only file system)" in out.stderr
        assert str(data / "flexiroaster.duckdb") in out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""
        assert took < 20, f"serve took {took:.1f} s to give up"
        # Writable again: the same store opens with what it held.
        _remount(data, "rw")
        rt = Runtime(load_settings(data_dir=data))
        try:
            assert rt.store.has_pipeline("df-ok") and rt.store.degraded is None
        finally:
            rt.close()


def test_serve_on_a_dir_its_user_cannot_write_exits_naming_it():
    """chmod, as an unprivileged user (root writes through it): as root, serve runs as nobody."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="flexiroaster-ro-"))  # reachable by other users
    try:
        data = base / "data"
        data.mkdir()
        cmd = [sys.executable]
        if os.geteuid() == 0:
            base.chmod(0o755)
            cmd = ["runuser", "-u", "nobody", "--", sys.executable]
            probe = subprocess.run(
                [*cmd, "-c", "import flexiroaster"], capture_output=True, text=True
            )
            if probe.returncode:
                pytest.skip(f"nobody cannot run this interpreter: {probe.stderr.strip()[-200:]}")
        data.chmod(0o555)
        out = subprocess.run(
            [*cmd, "-m", "flexiroaster", "serve", "--port", str(free_port())],
            env=env_for(data) | {"HOME": str(base)}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1, out
        assert f"the data directory {data} is not writable (Permission denied)" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        import shutil

        with contextlib.suppress(OSError):
            (base / "data").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def serve(data: Path, log: Path):
    with log.open("ab") as out:
        proc, url = start_serve(
            data, env=env_for(data) | {"DF_GO": str(log.parent / "go")}, stdout=out,
            stderr=subprocess.STDOUT, wait=60, output=lambda _p: log.read_text()[-3000:],
        )  # fmt: skip
    try:
        with Client(url, timeout=60) as c:
            yield proc, url, c
    finally:
        stop_serve(proc, timeout=20)


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/health", timeout=30)


def _until(what, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout} s: {what.__doc__ or what}"
        time.sleep(every)


def test_a_full_disk_degrades_health_refuses_runs_keeps_reads_and_recovers(tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with small_fs(data, "48m"):
        again, talk, first, wait = _fill_and_free(data, log)
        # A restart finds every run final and the table whole.
        with serve(data, log) as (_proc, _url, c):
            runs = c.executions(limit=100)["executions"]
            assert {r["id"]: r["status"] for r in runs} == {
                first["id"]: "completed", talk: "completed", again["id"]: "completed",
                wait: "failed",
            }  # fmt: skip
            got = c.query("SELECT count(*), count(DISTINCT h) FROM df_nums")["rows"]
            assert got == [[1000, 1000]]


def _fill_and_free(data: Path, log: Path) -> tuple[dict, str, dict, str]:
    with serve(data, log) as (proc, url, c):
        for text in (OK, TALK, WAIT):
            c.create_pipeline(text)
        first = c.wait(c.trigger("df-ok")["id"], timeout=60)
        assert first["status"] == "completed"
        first_logs = c.logs(first["id"])["logs"]
        table = c.query("SELECT * FROM df_nums ORDER BY x", limit=10_000)["rows"]
        talk = c.trigger("df-talk")["id"]
        wait = c.trigger("df-wait")["id"]
        _until(lambda: c.logs(talk)["logs"], 30)  # its lines are being written

        filler = _fill(data)
        t_full = time.monotonic()
        down = _until(lambda: (r := _health(url)).status_code == 503 and r, 20)
        detected = time.monotonic() - t_full
        body = down.json()
        store = body["components"]["store"]
        assert body["status"] == "degraded" and store["status"] == "error"
        assert store["writable"] is False
        assert f"the store {data / 'flexiroaster.duckdb'} cannot be written" in store["detail"]
        assert "No space left on device" in store["detail"]

        # New runs are refused with a 503 that says why; nothing is half-recorded.
        refused = httpx.post(f"{url}/api/v1/executions", json={"pipeline_id": "df-ok"}, timeout=30)
        assert refused.status_code == 503, refused.text
        err = refused.json()
        assert err["error"] == "store_unavailable"
        assert "cannot be written" in err["detail"] and "No space left on device" in err["detail"]
        assert "new runs are refused" in err["detail"].lower()
        # What is stored stays readable: runs, their logs, the tables pipelines wrote.
        listed = c.executions(limit=100)
        assert first["id"] in {r["id"] for r in listed["executions"]}
        assert c.execution(first["id"])["status"] == "completed"
        assert c.logs(first["id"])["logs"] == first_logs
        assert c.query("SELECT count(*), count(DISTINCT h) FROM df_nums")["rows"] == [[1000, 1000]]
        # A run that writes a table while the disk is full fails that stage; the table keeps
        # what it held. (Its outcome is recorded once there is room: none is shown before.)
        (log.parent / "go").touch()
        _until(lambda: _health(url).json()["components"]["engine"]["active_runs"] == 0, 60)
        assert proc.poll() is None, "the runtime died on a full disk"
        assert _health(url).status_code == 503
        assert c.query("SELECT * FROM df_nums ORDER BY x", limit=10_000)["rows"] == table

        # Room again: the runtime resumes by itself, the queued lines and states are written.
        filler.unlink()
        (data / "filler-tail.bin").unlink()
        t_free = time.monotonic()
        _until(lambda: _health(url).status_code == 200, 20)
        resumed = time.monotonic() - t_free
        again = c.wait(c.trigger("df-ok")["id"], timeout=60)
        assert again["status"] == "completed", again
        talked = c.wait(talk, timeout=60)
        assert talked["status"] == "completed", talked
        waited = c.wait(wait, timeout=60)
        save = {x["stage_id"]: x for x in waited["stages"]}["save"]
        assert (waited["status"], save["status"]) == ("failed", "failed"), waited
        assert "No space left on device" in save["error"], save
        assert c.query("SELECT * FROM df_nums ORDER BY x", limit=10_000)["rows"] == table
        lines = [x["message"] for x in c.logs(talk)["logs"] if x["stage_id"] == "talk"]
        assert [m for m in lines if m.startswith("line ")] == [f"line {i}" for i in range(1, 201)]
        # The store logs the outage once and its end once, not a traceback per retry.
        lines = log.read_text().splitlines()
        gone = f"the store {data / 'flexiroaster.duckdb'} cannot be written"
        outage = [x for x in lines if x.startswith(gone)]
        assert len(outage) == 1, outage
        assert outage[0].endswith("; new runs are refused until writes succeed again")
        assert sum("writes again; accepting new runs" in x for x in lines) == 1
        assert not any("store flush failed" in x for x in lines)
        print(f"\ndisk full: detected in {detected:.2f} s, resumed in {resumed:.2f} s")
        return again, talk, first, wait


def test_a_held_run_released_on_a_full_disk_stays_held_until_there_is_room(tmp_path):
    from flexiroaster.engine import Engine
    from flexiroaster.spec import load_pipeline_text
    from flexiroaster.store import Store, StoreUnavailable

    data = tmp_path / "data"
    with small_fs(data, "16m"):
        settings = load_settings(data_dir=data, log_flush_interval=0.05)
        store = Store(settings.store_file, flush_interval=0.05)
        engine = Engine(store, settings)
        try:
            held = engine.submit(load_pipeline_text(OK, "ok.yaml"), held=True)
            filler = _fill(data)
            for i in range(200):  # log lines the flusher cannot write
                store.log(held.id, None, "INFO", f"waiting {i} " + "x" * 200)
            _until(lambda: store.degraded, 10)
            with pytest.raises(StoreUnavailable, match="No space left on device"):
                engine.release(held.id)
            assert engine.live(held.id).status == "held"
            filler.unlink()
            (data / "filler-tail.bin").unlink()
            _until(lambda: store.degraded is None, 10)
            assert engine.release(held.id).status in ("pending", "running")
            assert engine.wait(held.id, timeout=30)
            assert store.get_execution(held.id).status == "completed"
            assert len([x for x in store.get_logs(held.id) if x.message.startswith("waiting")]) == 200
        finally:
            engine.shutdown()
            store.close()
