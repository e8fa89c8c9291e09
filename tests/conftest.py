"""Shared fixtures: a real store file under tmp_path and an engine over it."""

from __future__ import annotations

import contextlib
import textwrap

import pytest

from flexiroaster.engine import Engine
from flexiroaster.settings import load_settings
from flexiroaster.spec import load_pipeline_text
from flexiroaster.store import Store


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def settings(data_dir):
    return load_settings(data_dir=data_dir, max_workers=4, log_flush_interval=0.05)


@pytest.fixture
def store(settings):
    s = Store(settings.store_file, flush_interval=settings.log_flush_interval)
    yield s
    s.close()


@pytest.fixture
def engine(store, settings):
    e = Engine(store, settings)
    yield e
    e.shutdown()


def pipeline(text: str, **params):
    """A pipeline from indented YAML text."""
    return load_pipeline_text(textwrap.dedent(text), "test.yaml", params or None)


def rows(store, sql: str) -> list[tuple]:
    return store.cursor().execute(sql).fetchall()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, timeout: float = 10.0):
    """`app` under a real uvicorn server on a free loopback port; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(
                f"uvicorn did not start on 127.0.0.1:{port} (port taken, or the app failed to start: see the log)"
            )
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def sample_data_dir(target) -> None:
    """Copy the repo's sample pipelines and data into `target` (a fresh data dir)."""
    import shutil

    shutil.copytree(
        REPO / "data",
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.duckdb*", "out", "work", "warehouse", "*.key", "__pycache__"),
    )


@pytest.fixture
def ui_runtime(tmp_path, monkeypatch):
    """A started runtime over the sample pipelines, served over HTTP on a free port, with
    FLEXIROASTER_API_URL pointing at it (what the Streamlit pages read). Yields (runtime, client).
    """
    from flexiroaster.api import create_app
    from flexiroaster.client import Client
    from flexiroaster.runtime import Runtime

    data = tmp_path / "data"
    sample_data_dir(data)
    rt = Runtime(load_settings(data_dir=data, max_workers=4, log_flush_interval=0.05))
    rt.start()
    try:
        with serving(create_app(runtime=rt)) as url, Client(url) as c:
            monkeypatch.setenv("FLEXIROASTER_API_URL", url)
            monkeypatch.delenv("FLEXIROASTER_API_TOKEN", raising=False)
            yield rt, c
    finally:
        rt.close()


def app_test(page: str | None = None, timeout: float = 30):
    """AppTest of app.py (run once), switched to `page` (e.g. "views/pipelines.py") if given."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout).run()
    if page:
        at.switch_page(page).run()
    return at


def rendered(at) -> str:
    """Everything an AppTest page drew: every element's value (tables as CSV) and its proto."""
    parts = []
    for node in at._tree:
        parts.append(str(getattr(node, "proto", "")))
        try:
            value = node.value
        except Exception:  # blocks and some elements have no value
            continue
        parts.append(value.to_csv() if hasattr(value, "to_csv") else repr(value))
    return "\n".join(parts)


# --- `flexiroaster serve` as a real process -------------------------------------------------------


def serve_env(data_dir, **extra: str) -> dict[str, str]:
    """The environment without any FLEXIROASTER_* of the caller's, plus the data dir and ours."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXIROASTER_")}
    return env | {"FLEXIROASTER_DATA_DIR": str(data_dir)} | extra


def start_serve(
    data_dir, *args: str, env: dict[str, str] | None = None, stdout=None, stderr=None,
    wait: float = 30.0, output=None,
):  # fmt: skip
    """Start `flexiroaster serve` on a free port and wait until /health answers 200; returns
    (process, base URL). `output(process)` says what it printed when it exits or never answers
    (default: what it wrote to its pipes)."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexiroaster", "serve", "--port", str(port), *args],
        env=env or serve_env(data_dir),
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
    )
    said = (lambda: output(proc)) if output else (lambda: str(proc.communicate(timeout=10))[-3000:])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early ({proc.returncode}): {said()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return proc, url
        if time.monotonic() > deadline:
            stop_serve(proc)
            raise AssertionError(f"serve did not answer /health within {wait:g} s: {said()}")
        time.sleep(0.05)


def stop_serve(proc, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout` s; whether it stopped on SIGTERM in time."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


# --- loopback servers and a runtime over HTTP ------------------------------------------------


@contextlib.contextmanager
def http_server(handler, name: str = "test-http"):
    """A ThreadingHTTPServer with `handler` on a free loopback port; yields its base URL."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def runtime_over_http(data_dir, **settings):
    """A runtime served over HTTP: (runtime, client, raw httpx client on /api/v1)."""
    import httpx

    from flexiroaster.api import create_app
    from flexiroaster.client import Client
    from flexiroaster.runtime import Runtime

    defaults = dict(data_dir=data_dir, max_workers=4, log_flush_interval=0.05)
    rt = Runtime(load_settings(**(defaults | settings)))
    try:
        with (
            serving(create_app(runtime=rt)) as url,
            Client(url) as client,
            httpx.Client(base_url=f"{url}/api/v1", timeout=30) as raw,
        ):
            yield rt, client, raw
    finally:
        rt.close()


def run_pipeline(client, yaml_text: str, timeout: float = 30) -> tuple[dict, list[str]]:
    """Save and run a pipeline through the API; the finished run and its log lines."""
    pid = client.create_pipeline(yaml_text)["id"]
    done = client.wait(client.trigger(pid)["id"], timeout=timeout)
    return done, [line["message"] for line in client.logs(done["id"])["logs"]]
