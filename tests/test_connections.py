"""Stored connections over the real API: CRUD, write-only secrets, tests against real servers
(PostgreSQL, HTTP, SMTP, a webhook), delete refused while used, encrypted at rest, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import httpx
import pytest
from cryptography.fernet import Fernet

from flexiroaster.api import create_app
from flexiroaster.client import Client
from flexiroaster.connections import TEST_MESSAGE, Connections
from flexiroaster.errors import FlexiError
from flexiroaster.runtime import Runtime
from flexiroaster.secrets import SecretKeyError, Variables
from flexiroaster.settings import load_settings
from flexiroaster.store import Store

from .conftest import REPO, free_port, serving
from .pg import pg  # noqa: F401  (the session's PostgreSQL server)

TOKEN = "conn-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP_TOKEN = "http-tok-Zq81-never-shown"
HOOK_URL_SECRET = "T000/B000/hook-key-Xy77"


@pytest.fixture
def served(data_dir):
    """A runtime with an API token, served on a free port: (runtime, base URL)."""
    rt = Runtime(load_settings(data_dir=data_dir, api_token=TOKEN, log_flush_interval=0.05))
    try:
        with serving(create_app(runtime=rt)) as url:
            yield rt, url
    finally:
        rt.close()


@pytest.fixture
def client(served):
    with Client(served[1], TOKEN) as c:
        yield c


def _pg_config(pg, **over):  # noqa: F811
    return {"host": pg.host, "port": pg.port, "database": pg.dbname, "user": pg.user, **over}


class Seen:
    """Every response body of a test, to search for plain secret values at the end."""

    def __init__(self, url: str):
        self.bodies: list[str] = []
        self.http = httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=30)

    def __call__(self, method: str, path: str, **kw) -> httpx.Response:
        resp = self.http.request(method, path, **kw)
        self.bodies.append(resp.text)
        return resp

    def assert_never_shown(self, *values: str) -> None:
        for body in self.bodies:
            for v in values:
                assert v not in body, body


def test_crud_secrets_write_only_and_kept_when_omitted(served, pg):  # noqa: F811
    rt, url = served
    api = Seen(url)
    body = {"type": "postgres", "description": "warehouse", "config": _pg_config(pg),
            "secrets": {"password": pg.password}}  # fmt: skip
    made = api("PUT", "/connections/warehouse", json=body)
    assert made.status_code == 201, made.text
    got = made.json()
    assert got["secrets_set"] == ["password"] and got["used_by"] == []
    assert got["config"] == {**_pg_config(pg), "options": {}, "connect_timeout": 10}
    # Replaced without secrets: the stored password stays and still works.
    again = api("PUT", "/connections/warehouse", json={**body, "secrets": None, "description": "dw"})
    assert again.status_code == 200 and again.json()["secrets_set"] == ["password"]
    assert again.json()["created_at"] == got["created_at"]
    assert api("POST", "/connections/warehouse/test").json()["ok"] is True
    listed = api("GET", "/connections").json()
    assert listed["total"] == 1 and listed["connections"][0]["description"] == "dw"
    assert api("GET", "/connections/warehouse").json()["secrets_set"] == ["password"]
    # http with a bearer token; the token is replaced, then removed with its auth.
    http_body = {"type": "http", "config": {"base_url": "https://api.example.com/v1", "auth": "bearer"},
                 "secrets": {"token": HTTP_TOKEN}}  # fmt: skip
    assert api("PUT", "/connections/vendor", json=http_body).status_code == 201
    gone = api("PUT", "/connections/vendor", json={
        "type": "http", "config": {"base_url": "https://api.example.com/v1"}, "secrets": {"token": None},
    })  # fmt: skip
    assert gone.status_code == 200 and gone.json()["secrets_set"] == []
    assert gone.json()["config"]["auth"] == "none" and gone.json()["config"]["timeout"] == 30
    # Type change: only with the new type's secrets in the same request.
    change = api("PUT", "/connections/vendor", json={"type": "webhook", "config": {}})
    assert change.status_code == 422 and "needs its secrets given" in change.json()["detail"]
    hook = {"type": "webhook", "config": {}, "secrets": {"url": f"https://hooks.example.com/{HOOK_URL_SECRET}"}}
    assert api("PUT", "/connections/vendor", json=hook).json()["secrets_set"] == ["url"]
    assert api("DELETE", "/connections/vendor").status_code == 204
    assert api("GET", "/connections/vendor").status_code == 404
    assert api("DELETE", "/connections/vendor").status_code == 404
    api.assert_never_shown(pg.password, HTTP_TOKEN, HOOK_URL_SECRET)
    api.http.close()
    audit = rt.store.audit_log(target_type="connection")[0][::-1]
    assert [a["action"] for a in audit] == [
        "connection.create", "connection.update", "connection.create", "connection.update",
        "connection.update", "connection.delete",
    ]  # fmt: skip
    assert pg.password not in str(audit)


@pytest.mark.parametrize(
    ("name", "body", "status", "says"),
    [
        ("Bad Name", {"type": "webhook", "config": {}}, 422, "name"),
        ("w", {"type": "ftp", "config": {}}, 422, "body.type"),
        ("w", {"type": "postgres", "config": {"port": 5432}}, 422, "config.host: Field required"),
        ("w", {"type": "postgres", "config": {"host": "h", "database": "d", "user": "u", "port": "x"}},
         422, "config.port: Input should be a valid integer"),
        ("w", {"type": "postgres", "config": {"host": "h", "database": "d", "user": "u", "ssl": 1}},
         422, "config.ssl: Extra inputs are not permitted"),
        ("w", {"type": "postgres", "config": {"host": "h", "database": "d", "user": "u"},
               "secrets": {"token": "x"}}, 422, "secrets.token: a postgres connection has no secret"),
        ("w", {"type": "postgres", "config": {"host": "h", "database": "d", "user": "u",
                                               "options": {"password": "x"}}},
         422, "config.options.password"),
        ("w", {"type": "http", "config": {"base_url": "ftp://x"}}, 422, "config.base_url"),
        ("w", {"type": "http", "config": {"base_url": "https://u:pw@x"}}, 422, "config.base_url: credentials"),
        ("w", {"type": "http", "config": {"base_url": "https://x", "headers": {"Authorization": "t"}}},
         422, "config.headers.Authorization"),
        ("w", {"type": "http", "config": {"base_url": "https://x", "auth": "bearer"}},
         422, "secrets.token"),
        ("w", {"type": "webhook", "config": {}}, 422, "secrets.url"),
        ("w", {"type": "webhook", "config": {}, "secrets": {"url": "not a url"}}, 422, "secrets.url"),
        ("w", {"type": "webhook", "config": {}, "extra": 1}, 422, "extra"),
        ("w", {"type": "webhook", "config": {}, "secrets": {"url": 5}}, 422, "body.secrets.url"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(served, name, body, status, says):
    _rt, url = served
    resp = httpx.put(f"{url}/api/v1/connections/{name}", json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["detail"], resp.json()


def test_token_is_required_for_mutations_and_tests(served):
    _rt, url = served
    body = {"type": "webhook", "config": {}, "secrets": {"url": "https://h.example.com/x"}}
    assert httpx.put(f"{url}/api/v1/connections/w", json=body).status_code == 401
    assert httpx.post(f"{url}/api/v1/connections/test", json=body).status_code == 401
    assert httpx.put(f"{url}/api/v1/connections/w", json=body, headers=AUTH).status_code == 201
    assert httpx.post(f"{url}/api/v1/connections/w/test").status_code == 401
    assert httpx.delete(f"{url}/api/v1/connections/w").status_code == 401
    assert httpx.get(f"{url}/api/v1/connections/w").status_code == 200  # reading needs none


def test_test_action_reports_reachable_and_unreachable(served, client, pg):  # noqa: F811
    rt, url = served
    c = client
    c.put_connection("db", "postgres", _pg_config(pg), {"password": pg.password})
    ok = c.test_connection("db")
    assert ok["ok"] and "PostgreSQL 15" in ok["detail"] and ok["took_ms"] > 0
    wrong = c.test_connection({"type": "postgres", "config": _pg_config(pg),
                               "secrets": {"password": "Wr0ng-pass%word"}})  # fmt: skip
    assert not wrong["ok"] and "password authentication failed" in wrong["detail"]
    assert "Wr0ng" not in wrong["detail"]
    port = free_port()  # nothing listens there
    down = c.test_connection({"type": "postgres", "config": _pg_config(pg, port=port, connect_timeout=3)})
    assert not down["ok"] and "Connection refused" in down["detail"] and str(port) in down["detail"]
    http_down = c.test_connection({"type": "http", "config": {"base_url": f"http://127.0.0.1:{port}/"}})
    assert not http_down["ok"] and "ConnectError" in http_down["detail"]
    with pytest.raises(FlexiError) as err:
        c.test_connection("nope")
    assert err.value.status == 404
    with pytest.raises(FlexiError) as err:
        c.test_connection({"type": "postgres", "config": {"host": "x"}})
    assert err.value.status == 422 and "config.database" in str(err.value)


@contextmanager
def _http_server():
    """A plain HTTP server on a free port that records what it is sent: (url, requests)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str, dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self):  # noqa: N802
            self._answer(404 if self.path.startswith("/missing") else 200)

        def do_POST(self):  # noqa: N802
            self._answer(500 if "broken" in self.path else 200)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_http_webhook_and_smtp_tests_reach_real_servers(served, client):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    rt, url = served
    c = client
    with _http_server() as (base, seen):
        c.put_connection("api", "http", {"base_url": f"{base}/missing", "auth": "header",
                                          "auth_header": "X-Api-Key", "headers": {"Accept": "application/json"}},
                         {"token": HTTP_TOKEN})  # fmt: skip
        got = c.test_connection("api")
        assert got["ok"] and "HTTP 404" in got["detail"], got
        method, path, headers, _ = seen[-1]
        assert (method, path, headers["X-Api-Key"], headers["Accept"]) == (
            "GET", "/missing", HTTP_TOKEN, "application/json",
        )  # fmt: skip
        c.put_connection("hook", "webhook", {}, {"url": f"{base}/hooks/{HOOK_URL_SECRET}"})
        got = c.test_connection("hook")
        assert got["ok"] and "HTTP 200" in got["detail"]
        assert seen[-1][0] == "POST" and seen[-1][3] == f'{{"text":"{TEST_MESSAGE}"}}'.encode()
        c.put_connection("hook", "webhook", {}, {"url": f"{base}/broken/{HOOK_URL_SECRET}"})
        bad = c.test_connection("hook")
        assert not bad["ok"] and "HTTP 500" in bad["detail"] and HOOK_URL_SECRET not in bad["detail"]

    class Auth:
        def __call__(self, server, session, envelope, mechanism, auth_data):
            good = isinstance(auth_data, LoginPassword) and auth_data.password == b"smtp-pw-1"
            return AuthResult(success=good, handled=False)

    port = free_port()
    smtp = Controller(object(), hostname="127.0.0.1", port=port, authenticator=Auth(),
                      auth_require_tls=False)  # fmt: skip
    smtp.start()
    try:
        cfg = {"host": "127.0.0.1", "port": port, "sender": "flexi@example.com", "timeout": 5}
        c.put_connection("mail", "smtp", cfg)
        got = c.test_connection("mail")
        assert got["ok"] and "EHLO" in got["detail"], got
        c.put_connection("mail", "smtp", {**cfg, "username": "flexi"}, {"password": "smtp-pw-1"})
        got = c.test_connection("mail")
        assert got["ok"] and "login" in got["detail"], got
        c.put_connection("mail", "smtp", {**cfg, "username": "flexi"}, {"password": "smtp-pw-2"})
        bad = c.test_connection("mail")
        assert not bad["ok"] and "smtp-pw-2" not in bad["detail"] and "535" in bad["detail"], bad
    finally:
        smtp.stop()


PIPE = """
name: nightly-sync
stages:
  - {id: load, type: input, config: {connection: wh, query: "select 1 as x"}}
  - {id: save, type: output, dependencies: [load], config: {connection: wh, table: t, mode: append}}
"""


def test_pipelines_name_connections_delete_refused_and_runs_check_them(served, client, pg):  # noqa: F811
    rt, url = served
    c = client
    # A pipeline may be saved before its connection exists; its run fails before it starts.
    c.create_pipeline(PIPE)
    with pytest.raises(FlexiError) as err:
        c.trigger("nightly-sync")
    assert err.value.status == 422
    assert "stage load: no connection wh" in str(err.value) and "stage save: no connection wh" in str(err.value)
    c.put_connection("wh", "http", {"base_url": "http://127.0.0.1:9/"})
    with pytest.raises(FlexiError) as err:
        c.trigger("nightly-sync")
    assert "connection wh is a http connection; an input with `query` needs a postgres" in str(err.value)
    assert "an output with `table` needs a postgres connection" in str(err.value)
    c.put_connection("wh", "postgres", _pg_config(pg), {"password": pg.password})
    assert c.connection("wh")["used_by"] == ["nightly-sync"]
    with pytest.raises(FlexiError) as err:
        c.delete_connection("wh")
    assert err.value.status == 409 and "used by pipeline(s) nightly-sync" in str(err.value)
    run = c.trigger("nightly-sync")
    assert rt.engine.wait(run["id"], timeout=30)
    assert c.execution(run["id"])["status"] == "completed"
    assert pg.sql("select count(*) from t")[0][0] >= 1
    c.delete_pipeline("nightly-sync")
    c.delete_connection("wh")
    pg.sql("drop table t")


def test_encrypted_at_rest_with_the_secrets_key(settings, pg):  # noqa: F811
    store = Store(settings.store_file)
    variables, conns = Variables(store, settings), Connections(store, settings)
    conns.put("wh", "postgres", _pg_config(pg), {"password": pg.password})
    variables.put("OTHER", "v", secret=True)
    row = store.rows("connections", "name = 'wh'")[0]
    assert pg.password not in row["secrets"]
    # One key for both: the key file's Fernet opens the connection's secrets too.
    key = (settings.data_dir / "secret.key").read_bytes().strip()
    assert pg.password in Fernet(key).decrypt(row["secrets"].encode()).decode()
    assert conns.open("wh").secrets == {"password": pg.password}
    wrong = Connections(store, load_settings(data_dir=settings.data_dir, secret_key=Fernet.generate_key().decode()))
    with pytest.raises(SecretKeyError) as err:
        wrong.open("wh")
    assert "cannot decrypt the secrets of connection wh" in str(err.value)
    store.close()
    raw = settings.store_file.read_bytes()
    wal = settings.store_file.with_name(settings.store_file.name + ".wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert b'"host"' in raw or pg.host.encode() in raw  # the plain settings are there
    assert pg.password.encode() not in raw


def test_cli_lists_and_tests_connections(served, client, pg):  # noqa: F811
    _rt, url = served
    c = client
    c.put_connection("wh", "postgres", _pg_config(pg), {"password": pg.password})
    c.put_connection("down", "postgres", _pg_config(pg, port=free_port(), connect_timeout=2))
    env = {**os.environ, "FLEXIROASTER_API_URL": url, "FLEXIROASTER_API_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flexiroaster", *args], env=env, cwd=REPO,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    listed = cli("connections")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["down", "postgres"] and "secrets: -" in lines[0]
    assert lines[1].split()[:2] == ["wh", "postgres"] and "secrets: password" in lines[1]
    good = cli("connections", "test", "wh")
    assert good.returncode == 0 and "wh: ok" in good.stdout and "PostgreSQL 15" in good.stdout
    bad = cli("connections", "test", "down")
    assert bad.returncode == 1 and "down: FAILED" in bad.stdout and "Connection refused" in bad.stdout
    missing = cli("connections", "test", "nope")
    assert missing.returncode == 1 and "no connection nope" in missing.stderr
    for out in (listed, good, bad, missing):
        assert pg.password not in out.stdout + out.stderr
