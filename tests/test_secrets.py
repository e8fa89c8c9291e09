"""Variables and secrets: encrypted at rest, resolved at run time, masked everywhere, over the API."""

from __future__ import annotations

import json
import stat
import sys
from contextlib import ExitStack

import httpx
import pytest
from cryptography.fernet import Fernet

from flexiroaster import cli
from flexiroaster.api import create_app
from flexiroaster.client import Client
from flexiroaster.errors import Conflict, TemplateError
from flexiroaster.runtime import Runtime
from flexiroaster.secrets import SecretKeyError, Variables
from flexiroaster.settings import load_settings
from flexiroaster.store import Store

from .conftest import pipeline, serving

VALUE = "tok-9f3Kq7Zx2-never-seen"

LEAKY = """
name: leaky
stages:
  - id: check
    type: sql
    config: {query: "select count(*) as n from range(3) where {{ secrets.API_TOKEN }} = 'x' or {{ vars.REGION }} = 'eu'"}
  - id: shout
    type: shell
    dependencies: [check]
    config:
      command: 'echo "token=$TOKEN arg={{ secrets.API_TOKEN }}"; echo "oops $TOKEN" >&2; exit 3'
      env: {TOKEN: "{{ secrets.API_TOKEN }}"}
"""


def _store_bytes(settings) -> bytes:
    raw = settings.store_file.read_bytes()
    wal = settings.store_file.with_name(settings.store_file.name + ".wal")
    return raw + (wal.read_bytes() if wal.exists() else b"")


def test_secret_encrypted_at_rest_with_a_0600_key_file(settings):
    store = Store(settings.store_file)
    variables = Variables(store, settings)
    key_file = settings.data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    variables.put("API_TOKEN", VALUE, secret=True, description="vendor")
    variables.put("REGION", "eu-west-1", secret=False)
    assert variables.get("API_TOKEN").value is None
    assert variables.get("REGION").value == "eu-west-1"
    token = store.rows("variables", "key = ?", ["API_TOKEN"])[0]["value"]
    assert VALUE not in token
    assert Fernet(key_file.read_bytes().strip()).decrypt(token.encode()).decode() == VALUE
    store.close()
    assert VALUE.encode() not in _store_bytes(settings)
    assert b"eu-west-1" in _store_bytes(settings)  # plain variables are stored as is


def test_a_wrong_key_is_a_clear_error_and_leaves_the_secret_alone(settings, data_dir):
    store = Store(settings.store_file)
    Variables(store, settings).put("API_TOKEN", VALUE, secret=True)
    before = store.rows("variables")
    other = load_settings(data_dir=data_dir, secret_key=Fernet.generate_key().decode())
    wrong = Variables(store, other)
    with pytest.raises(SecretKeyError) as err:
        wrong.resolve({"secrets": {"API_TOKEN"}})
    assert "cannot decrypt secret API_TOKEN" in str(err.value)
    assert "FLEXIROASTER_SECRET_KEY does not match" in str(err.value)
    assert store.rows("variables") == before
    store.close()


def test_unknown_names_fail_before_the_run_and_vars_are_substituted(engine, store, settings):
    bad = pipeline(
        """
        name: bad
        stages:
          - {id: q, type: sql, config: {query: "select {{ secrets.NOPE }} as x"}}
        """
    )
    with pytest.raises(TemplateError) as err:
        engine.run(bad)
    assert "stages[0].config.query" in str(err.value) and "secrets.NOPE" in str(err.value)
    assert store.count("executions") == 0
    engine.variables.put("REGION", "eu-west-1", secret=False)
    good = pipeline(
        """
        name: good
        stages:
          - {id: q, type: sql, config: {query: "select {{ vars.REGION }} as region"}}
          - {id: save, type: output, dependencies: [q], config: {table: regions, mode: replace}}
        """
    )
    assert engine.run(good).status == "completed"
    assert store.query("select region from regions") == [("eu-west-1",)]


def test_the_api_never_returns_a_secret_and_masks_every_run_record(settings):
    rt = Runtime(settings)
    rt.start()
    try:
        with serving(create_app(runtime=rt)) as url, Client(url) as c, ExitStack() as stack:
            raw = stack.enter_context(httpx.Client(base_url=url))
            bad = raw.put("/api/v1/variables/api-token", json={"value": "x", "secret": True})
            assert bad.status_code == 422 and "api-token" in bad.json()["detail"]
            c.set_variable("API_TOKEN", VALUE, description="vendor token")
            c.set_variable("REGION", "eu", secret=False)
            c.create_pipeline(LEAKY)

            listed = c.variables()["variables"]
            assert [(v["key"], v["value"], v["used_by"]) for v in listed] == [
                ("API_TOKEN", None, ["leaky"]),
                ("REGION", "eu", ["leaky"]),
            ]
            assert c.variable("API_TOKEN")["value"] is None
            with pytest.raises(Conflict) as err:
                c.delete_variable("API_TOKEN")
            assert "leaky" in str(err.value)

            run = c.trigger("leaky")
            done = c.wait(run["id"], timeout=30)
            assert done["status"] == "failed"
            assert len(done["stages"]) == 2 and not done.get("params")
            logs = c.logs(run["id"])
            text = json.dumps(logs)
            assert "token=*** arg=***" in text and "oops ***" in text
            answers = [
                done,
                logs,
                c.execution(run["id"]),
                c.executions(),
                c.audit(),
                c.variables(),
                c.search_logs(q="token"),
                raw.get("/api/v1/variables/API_TOKEN").json(),
            ]
            for answer in answers:
                assert VALUE not in json.dumps(answer)
            assert "***" in json.dumps(done)
            actions = [e["action"] for e in c.audit()["entries"]]
            assert actions.count("variable.put") == 2
    finally:
        rt.close()
    found = _store_bytes(settings).count(VALUE.encode())
    assert found == 0


def test_cli_sets_from_stdin_lists_and_deletes(settings, monkeypatch, capsys):
    rt = Runtime(settings)
    try:
        with serving(create_app(runtime=rt)) as url:
            monkeypatch.setenv("FLEXIROASTER_API_URL", url)
            monkeypatch.delenv("FLEXIROASTER_API_TOKEN", raising=False)
            monkeypatch.setattr(sys, "stdin", _Stdin(VALUE + "\n"))
            assert cli.main(["secrets", "set", "API_TOKEN", "-d", "vendor"]) == 0
            monkeypatch.setattr(sys, "stdin", _Stdin("eu"))
            assert cli.main(["secrets", "set", "REGION", "--plain"]) == 0
            assert cli.main(["secrets", "list"]) == 0
            out = capsys.readouterr().out
            assert "API_TOKEN" in out and "***" in out and "eu" in out and VALUE not in out
            assert cli.main(["secrets", "delete", "REGION"]) == 0
            assert [v.key for v in rt.variables.list()] == ["API_TOKEN"]
    finally:
        rt.close()


class _Stdin:
    def __init__(self, text: str):
        self.text = text

    def isatty(self) -> bool:
        return False

    def read(self) -> str:
        return self.text


def test_airflow_stages_mode_runs_stages_using_secrets_in_the_runtime(engine, store, settings, tmp_path):
    """Only the runtime holds the key: a stage referencing secrets or vars is one the runtime
    runs for the Airflow task (stage_runner.needs_store), with them resolved and masked."""
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from flexiroaster.errors import StageError
    from flexiroaster.stage_runner import needs_store, run_one_stage

    engine.variables.put("API_TOKEN", VALUE, secret=True)
    engine.variables.put("REGION", "eu-west-1", secret=False)
    p = pipeline(
        """
        name: stages-secrets
        stages:
          - {id: q, type: sql, config: {query: "select {{ vars.REGION }} as region, length({{ secrets.API_TOKEN }}) as n"}}
          - {id: say, type: shell, config: {command: "echo token={{ secrets.API_TOKEN }}; exit 2"}}
          - {id: gone, type: sql, config: {query: "select {{ secrets.NOT_THERE }} as x"}}
          - {id: plain, type: sql, config: {query: "select 1 as x"}}
        """
    )
    assert [needs_store(s) for s in p.stages] == [True, True, True, False]
    kw = dict(run_id="r1", params={}, stands_for=datetime.now(UTC), warehouse=tmp_path)
    done = run_one_stage(store, settings, p, "q", **kw)
    assert pq.read_table(done.output).to_pylist() == [{"region": "eu-west-1", "n": len(VALUE)}]
    with pytest.raises(StageError) as err:
        run_one_stage(store, settings, p, "say", **kw)
    assert VALUE not in str(err.value)
    with pytest.raises(StageError, match="stage gone: no stored secrets.NOT_THERE"):
        run_one_stage(store, settings, p, "gone", **kw)


def test_what_a_python_stage_prints_goes_to_its_log_masked(engine, store, settings, capfd):
    """print() in a python stage is a line of the run's log (stderr as WARN), masked like every
    log line; nothing of it reaches the runtime's own stdout or stderr."""
    engine.variables.put("API_TOKEN", VALUE, secret=True)
    (settings.data_dir / "chatty.py").write_text(
        "import sys\n"
        "def go(inputs, params):\n"
        "    print('calling the vendor with', params['token'])\n"
        "    print('partial', end='')\n"
        "    print(' line done')\n"
        "    print('careful:', params['token'], file=sys.stderr)\n"
        "    print('no newline at the end', end='')\n"
    )
    p = pipeline(
        """
        name: chatty
        stages:
          - {id: py, type: python, config: {callable: "chatty.py:go", params: {token: "{{ secrets.API_TOKEN }}"}}}
        """
    )
    done = engine.run(p)
    assert done.status == "completed"
    lines = [(r.level, r.message) for r in store.get_logs(done.id) if r.stage_id == "py"]
    assert ("INFO", "calling the vendor with ***") in lines
    assert ("INFO", "partial line done") in lines
    assert ("WARN", "careful: ***") in lines
    assert ("INFO", "no newline at the end") in lines
    out, err = capfd.readouterr()
    assert VALUE not in out + err and "calling the vendor" not in out
