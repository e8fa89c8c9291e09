"""Shared fixtures: a real store file under tmp_path and an engine over it."""

from __future__ import annotations

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
