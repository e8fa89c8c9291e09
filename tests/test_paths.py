"""Path traversal over HTTP on a real runtime: input and output file paths outside the data
roots are refused (at save time when static, at run time when filled from parameters, every
glob match after symlinks), and /query reads no host file outside them; both unless allowed."""

from __future__ import annotations

import contextlib
import os
import textwrap

import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings

from .conftest import serving

ERROR_KEYS = {"error", "detail", "timestamp"}


@contextlib.contextmanager
def served(data, **settings):
    rt = Runtime(load_settings(data_dir=data, max_workers=2, log_flush_interval=0.05, **settings))
    try:
        with serving(create_app(runtime=rt)) as url, httpx.Client(base_url=url, timeout=30) as c:
            yield rt, c
    finally:
        rt.close()


@pytest.fixture
def world(tmp_path):
    """A data dir with a CSV in it; outside it a directory of secrets, and inside it a symlink
    to that directory and a symlink to one of its files."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "in").mkdir(parents=True)
    outside.mkdir()
    (data / "in" / "ok.csv").write_text("a,b\n1,2\n3,4\n")
    (outside / "secret.csv").write_text("a,b\n666,666\n")
    os.symlink(outside, data / "in" / "escape")  # a directory symlink out of the root
    os.symlink(outside / "secret.csv", data / "in" / "zz_link.csv")  # a file symlink out
    return data, outside


def doc(name: str, source: str, out: str = "out/copy.csv") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        variables: {{f: in/ok.csv, o: out/copy.csv}}
        stages:
          - id: read
            type: input
            config:
              source: "{source}"
              format: csv
          - id: write
            type: output
            dependencies: [read]
            config:
              path: "{out}"
        """)


def save(c: httpx.Client, text: str) -> httpx.Response:
    return c.post("/api/v1/pipelines", content=text, headers={"content-type": "application/yaml"})


def run(rt: Runtime, c: httpx.Client, pipeline_id: str, **params) -> dict:
    r = c.post("/api/v1/executions", json={"pipeline_id": pipeline_id, "params": params})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    assert rt.engine.wait(run_id, timeout=30)
    return c.get(f"/api/v1/executions/{run_id}").json()


def test_static_paths_outside_the_roots_are_refused_at_save_time(world):
    data, outside = world
    with served(data) as (rt, c):
        refused = [
            ("abs", doc("abs", str(outside / "secret.csv")), "source", 7),
            ("dotdot", doc("dotdot", "in/../../outside/secret.csv"), "source", 7),
            ("etc", doc("etc", "/etc/passwd"), "source", 7),
            ("symlink-dir", doc("symlink-dir", "in/escape/secret.csv"), "source", 7),
            ("symlink-file", doc("symlink-file", "in/zz_link.csv"), "source", 7),
            ("home", doc("home", "~/.ssh/id_rsa"), "source", 7),
            ("out-abs", doc("out-abs", "in/ok.csv", str(outside / "x.csv")), "path", 13),
            ("out-dotdot", doc("out-dotdot", "in/ok.csv", "../outside/x.csv"), "path", 13),
            ("out-link", doc("out-link", "in/ok.csv", "in/escape/x.csv"), "path", 13),
        ]
        for name, text, field, line in refused:
            r = save(c, text)
            assert r.status_code == 422, (name, r.text)
            body = r.json()
            assert set(body) == ERROR_KEYS
            stage = "read" if field == "source" else "write"
            # The stage, the field and the line are named, and how to allow it.
            assert f"stage '{stage}': `{field}` " in body["detail"], body["detail"]
            assert f"request body line {line}" in body["detail"], body["detail"]
            assert "outside the data roots" in body["detail"]
            assert "FLEXIROASTER_ALLOW_ANY_PATH" in body["detail"]
            assert c.get(f"/api/v1/pipelines/{name}").status_code == 404
        assert not (outside / "x.csv").exists()
        # Inside the root, and paths with placeholders (judged when a run fills them): saved.
        assert save(c, doc("inside", "in/ok.csv")).status_code == 201
        assert save(c, doc("glob", "in/*.csv")).status_code == 201
        assert save(c, doc("templated", "{{ f }}", "{{ o }}")).status_code == 201
        assert run(rt, c, "inside")["status"] == "completed"
        assert (data / "out" / "copy.csv").read_text().splitlines() == ["a,b", "1,2", "3,4"]
        # /validate judges the document alone, without a runtime's roots.
        r = c.post("/api/v1/pipelines/validate", content=doc("v", "/etc/passwd"),
                   headers={"content-type": "application/yaml"})  # fmt: skip
        assert r.status_code == 200 and r.json()["valid"] is True


def test_paths_filled_at_run_time_are_checked_when_the_run_reads_or_writes(world):
    data, outside = world
    with served(data) as (rt, c):
        assert save(c, doc("templated", "{{ f }}", "{{ o }}")).status_code == 201
        assert save(c, doc("globbed", "in/*.csv")).status_code == 201
        assert save(c, doc("deep", "in/**/*.csv")).status_code == 201
        ok = run(rt, c, "templated")
        assert ok["status"] == "completed", ok
        cases = [
            ("templated", {"f": str(outside / "secret.csv")}, "read", "`source`"),
            ("templated", {"f": "../outside/secret.csv"}, "read", "`source`"),
            ("templated", {"f": "/etc/passwd"}, "read", "`source`"),
            ("templated", {"o": str(outside / "written.csv")}, "write", "`path`"),
            ("templated", {"o": "in/escape/written.csv"}, "write", "`path`"),
            # The glob itself is inside; one match is a symlink out of the root.
            ("globbed", {}, "read", "`source` matched"),
            # `**` walks into the symlinked directory.
            ("deep", {}, "read", "`source` matched"),
        ]
        for pipeline_id, params, stage, field in cases:
            got = run(rt, c, pipeline_id, **params)
            assert got["status"] == "failed", (params, got)
            [failed] = [s for s in got["stages"] if s["status"] == "failed"]
            assert failed["stage_id"] == stage
            assert f"stage {stage!r}: {field}" in failed["error"], failed["error"]
            assert "outside the data roots" in failed["error"]
            assert failed["traceback"] is None or "Traceback" not in (failed["error"] or "")
        # Nothing was written outside, and the secret's rows were read by no run.
        assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]
        r = c.post("/api/v1/query", json={"sql": "select count(*) from information_schema.tables"})
        assert r.status_code == 200


def test_data_roots_and_allow_any_path_settings_at_save_time_and_in_query(world, tmp_path):
    data, outside = world
    # Another root: the outside directory is allowed, /etc still is not.
    with served(data, data_roots=[data, outside]) as (rt, c):
        text = doc("extra", str(outside / "secret.csv"), str(outside / "w.csv"))
        assert save(c, text).status_code == 201
        assert save(c, doc("etc", "/etc/hostname")).status_code == 422
        r = c.post("/api/v1/query", json={"sql": f"select * from read_csv('{outside}/secret.csv')"})
        assert r.status_code == 200 and r.json()["rows"] == [[666, 666]]
        r = c.post("/api/v1/query", json={"sql": "select * from read_text('/etc/hostname')"})
        assert r.status_code == 400
    # allow_any_path: anything goes, as before roots existed.
    with served(data, allow_any_path=True) as (rt, c):
        text = doc("anywhere", "in/zz_link.csv", str(tmp_path / "free.csv"))
        assert save(c, text).status_code == 201
        r = c.post("/api/v1/query", json={"sql": "select count(*) from read_text('/etc/hostname')"})
        assert r.status_code == 200 and r.json()["rows"] == [[1]]


def test_runs_obey_data_roots_and_allow_any_path(world, tmp_path):
    data, outside = world
    with served(data, data_roots=[data, outside]) as (rt, c):
        assert save(c, doc("extra", str(outside / "secret.csv"), str(outside / "w.csv"))).status_code == 201
        assert run(rt, c, "extra")["status"] == "completed"
        assert (outside / "w.csv").read_text().splitlines() == ["a,b", "666,666"]
    with served(data, allow_any_path=True) as (rt, c):
        assert save(c, doc("anywhere", "in/zz_link.csv", str(tmp_path / "free.csv"))).status_code == 201
        assert run(rt, c, "anywhere")["status"] == "completed"
        assert (tmp_path / "free.csv").exists()


def test_query_reads_no_host_file_outside_the_roots(world):
    data, outside = world
    secret = outside / "secret.csv"
    with served(data) as (rt, c):
        refused = {
            f"select * from read_csv('{secret}')": "read_csv(): the file",
            "select * from read_text('/etc/passwd')": "read_text(): the file",
            "select * from read_blob('/etc/hostname')": "read_blob(): the file",
            "select * from read_csv_auto('/etc/passwd')": "read_csv_auto(): the file",
            "select * from read_json('/proc/self/environ')": "read_json(): the file",
            "select * from read_parquet('/etc/*.parquet')": "read_parquet(): the file",
            "select * from glob('/etc/*')": "glob(): the file",
            "select * from sniff_csv('/etc/passwd')": "sniff_csv(): the file",
            "select * from parquet_metadata('/etc/x.parquet')": "parquet_metadata(): the file",
            f"select * from '{secret}'": "FROM",
            "select * from '/etc/passwd.csv'": "FROM",
            "describe '/etc/hostname'": "FROM",
            f"select * from read_csv('{data}/in/../../outside/secret.csv')": "read_csv(): the file",
            f"select * from read_csv('{data}/in/escape/secret.csv')": "read_csv(): the file",
            f"select * from read_csv('{data}/in/zz_link.csv')": "read_csv(): the file",
            f"select * from read_csv('{data}/in/*.csv')": "read_csv(): the file",  # a match links out
            f"select * from read_csv(['{data}/in/ok.csv', '/etc/passwd'])": "read_csv(): the file",
            "select * from read_text('~/.bashrc')": "read_text(): the file",
            "select * from read_text('/etc/' || 'passwd')": "as text constants",
            "select (select count(*) from read_text('/etc/hostname')) as n": "read_text(): the file",
            "with t as (select * from read_text('/etc/hostname')) select * from t": "read_text()",
            "select 1 where exists (select * from read_text('/etc/hostname'))": "read_text()",
            "explain analyze select * from read_text('/etc/hostname')": "read_text()",
            "summarize select * from read_text('/etc/hostname')": "read_text()",
            "select * from read_parquet('https://example.com/x.parquet')": "no remote files",
            "select * from query('select * from read_text(''/etc/hostname'')')": "query() is not allowed",
            "select * from query_table('x')": "query_table() is not allowed",
            "select * from sqlite_scan('/etc/x.db', 't')": "sqlite_scan() is not allowed",
            "select * from checkpoint()": "checkpoint() is not allowed",
            "attach '/etc/x.db' as x": "is not allowed",
            "copy t from '/etc/passwd'": "is not allowed",
            "load httpfs": "is not allowed",
        }  # fmt: skip
        for sql, why in refused.items():
            r = c.post("/api/v1/query", json={"sql": sql})
            assert r.status_code == 400, (sql, r.text)
            assert set(r.json()) == ERROR_KEYS
            assert why in r.json()["detail"], (sql, r.json()["detail"])
            assert "666" not in r.text and "root:" not in r.text
        # Files inside the roots, tables and DuckDB's own catalog functions still read.
        allowed = {
            f"select sum(a) from read_csv('{data}/in/ok.csv')": [[4]],
            f"select sum(a) from '{data}/in/ok.csv'": [[4]],
            f"select count(*) from glob('{data}/in/ok*')": [[1]],
            "select count(*) from range(5)": [[5]],
            "select count(*) > 0 from duckdb_settings()": [[True]],
        }
        for sql, rows in allowed.items():
            r = c.post("/api/v1/query", json={"sql": sql})
            assert r.status_code == 200, (sql, r.text)
            assert r.json()["rows"] == rows, sql
        r = c.post("/api/v1/query", json={"sql": f"select * from read_csv('{data}/in/ok.csv')", "format": "arrow"})
        assert r.status_code == 200 and r.headers["x-row-count"] == "2"
        # Pipelines keep reading files inside the roots (the guard is on /query alone).
        assert save(c, doc("still-reads", "in/ok.csv")).status_code == 201
        assert run(rt, c, "still-reads")["status"] == "completed"
