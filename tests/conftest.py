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
