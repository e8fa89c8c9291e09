"""notify stages end to end: mail through stored smtp connections to a real SMTP server on
loopback (login, STARTTLS, SMTPS), Slack-compatible messages through stored webhook connections
to a real receiver, subject and body templated by the engine; secrets never recorded."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
from email import message_from_bytes
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from flexiroaster.client import Client
from flexiroaster.runtime import Runtime

from .conftest import free_port, http_server, run_pipeline, runtime_over_http

PASSWORD = "smtp-pw-Kd82nQ-secret"
HOOK_PATH = "/services/T01/B02/whsec-9mZr4Lq"  # the secret part of a webhook URL


# --- an SMTP server -------------------------------------------------------------------------


def _tls(server, session) -> bool:
    """The session runs over TLS: upgraded by STARTTLS, or TLS from the start (SMTPS)."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.logins: list[tuple[str, str, bool]] = []  # user, password, over TLS

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append({
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "message": message_from_bytes(envelope.content, policy=email_policy),
            "user": session.auth_data if session.authenticated else None,
            "tls": _tls(server, session),
        })  # fmt: skip
        return "250 OK"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((user, password, _tls(server, session)))
        ok = (user, password) == ("mailer", PASSWORD)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


@contextlib.contextmanager
def smtp_server(**kwargs):
    """aiosmtpd on a free loopback port; yields (mailbox, port)."""
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, authenticator=box.authenticator, **kwargs
    )
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def tls_files(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1 that this process's default SSL context trusts
    (SSL_CERT_FILE), as a server context for aiosmtpd."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    loopback = ipaddress.ip_address("127.0.0.1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


# --- a webhook receiver ---------------------------------------------------------------------


class Hooks:
    def __init__(self) -> None:
        self.base = ""
        self.received: list[tuple[str, dict]] = []
        self.faults: dict[str, list[tuple[int, dict]]] = {}  # path -> answers to give first
        self.lock = threading.Lock()


@contextlib.contextmanager
def webhook_receiver():
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with hooks.lock:
                queue = hooks.faults.get(self.path)
                fault = queue.pop(0) if queue else None
                if fault is None and self.path in (HOOK_PATH, "/plain"):
                    hooks.received.append((self.path, body))
            known = self.path in (HOOK_PATH, "/plain")
            status, headers = fault or ((200, {}) if known else (404, {}))
            out = b"ok" if status == 200 else b"no_service"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    with http_server(Handler, "test-hooks") as base:
        hooks.base = base
        yield hooks


# --- a runtime over HTTP --------------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    """(runtime, client, raw httpx client on the API)."""
    data = tmp_path / "data"
    data.mkdir()
    with runtime_over_http(data) as found:
        yield found


def put_connection(raw: httpx.Client, name: str, kind: str, config: dict, secrets: dict) -> dict:
    resp = raw.put(
        f"/connections/{name}", json={"type": kind, "config": config, "secrets": secrets}
    )
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


run = run_pipeline


def stage(done: dict, stage_id: str) -> dict:
    return next(s for s in done["stages"] if s["stage_id"] == stage_id)


def recorded(rt: Runtime, client: Client, done: dict, *answers: object) -> str:
    """Everything the run left behind and the API said, as one text to search."""
    rows = rt.store.rows("logs") + rt.store.rows("stage_executions") + rt.store.rows("executions")
    assert len(rows) > 3
    return json.dumps(
        [rows, client.execution(done["id"]), client.logs(done["id"]), *answers], default=str
    )


# --- email ----------------------------------------------------------------------------------

MAIL = """
name: nightly-sales
variables: {region: emea}
stages:
  - id: tell
    type: notify
    config:
      connection: mail
      to: [ops@example.org, lead@example.org]
      subject: "{{ pipeline }} run {{ run_id }} done"
      body: "Run {{ run_id }} of {{ pipeline }} for {{ run_date }} ({{ region }}) finished."
  - id: legacy
    type: notify
    config:
      channel: email
      smtp_host: 127.0.0.1
      smtp_port: {{ port }}
      sender: old@example.org
      to: [old@example.org]
      body: "no connection"
"""


def test_mail_through_an_smtp_connection_with_login_is_templated_and_masked(env):
    rt, client, raw = env
    with smtp_server(auth_require_tls=False) as (box, port):
        shown = put_connection(
            raw, "mail", "smtp",
            {"host": "127.0.0.1", "port": port, "sender": "roaster@example.org",
             "username": "mailer"},
            {"password": PASSWORD},
        )  # fmt: skip
        done, lines = run(client, MAIL.replace("{{ port }}", str(port)))
    assert done["status"] == "completed", done
    run_id = done["id"]
    mail = next(m for m in box.messages if m["from"] == "roaster@example.org")
    assert mail["to"] == ["ops@example.org", "lead@example.org"]
    msg = mail["message"]
    assert msg["Subject"] == f"nightly-sales run {run_id} done"
    assert msg["To"] == "ops@example.org, lead@example.org"
    today = done["created_at"][:10]
    assert msg.get_content().strip() == (
        f"Run {run_id} of nightly-sales for {today} (emea) finished."
    )
    assert mail["user"] == "mailer"  # sent after the login
    assert box.logins == [("mailer", PASSWORD, False)]
    assert stage(done, "tell")["metrics"] == {"recipients": 2, "connection": "mail"}
    # The stage without a connection still mails the host it names.
    old = next(m for m in box.messages if m["from"] == "old@example.org")
    assert old["to"] == ["old@example.org"] and old["user"] is None
    assert any(x.startswith("email sent through smtp connection 'mail' (127.0.0.1:") for x in lines)
    text = recorded(rt, client, done, shown, raw.get("/connections/mail").json())
    assert PASSWORD not in text


BAD_MAIL = """
name: bad-mail
stages:
  - {id: refused, type: notify, config: {connection: mail, to: [ops@example.org], body: hi}}
  - {id: nobody, type: notify, config: {connection: mail, body: "to no one"}}
  - {id: wrongtype, type: notify, config: {connection: api, to: [ops@example.org]}}
"""


def test_a_refused_login_and_a_missing_to_are_clear_failures(env):
    rt, client, raw = env
    wrong = "wrong-pw-Xy7Qa1"
    with smtp_server(auth_require_tls=False) as (box, port):
        put_connection(
            raw, "mail", "smtp",
            {"host": "127.0.0.1", "port": port, "sender": "roaster@example.org",
             "username": "mailer"},
            {"password": wrong},
        )  # fmt: skip
        put_connection(raw, "api", "http", {"base_url": "http://127.0.0.1:9/"}, {})
        pid = client.create_pipeline(BAD_MAIL)["id"]
        with pytest.raises(Exception) as refused:  # a webhook/smtp stage given an http one
            client.trigger(pid)
        assert "connection api is a http connection; a notify stage needs a smtp or webhook" in (
            str(refused.value)
        )
        client.update_pipeline(pid, BAD_MAIL.replace("connection: api", "connection: mail"))
        done = client.wait(client.trigger(pid)["id"], timeout=30)
    assert done["status"] == "failed"
    err = stage(done, "refused")["error"]
    assert err.startswith(
        f"smtp connection 'mail' (127.0.0.1:{port}): login as 'mailer' refused (535"
    ), err
    assert stage(done, "nobody")["error"] == (
        f"an email notification through smtp connection 'mail' (127.0.0.1:{port}) needs `to`"
        " (the recipients)"
    )
    assert box.messages == [] and box.logins and box.logins[0][1] == wrong
    assert wrong not in recorded(rt, client, done)


def test_starttls_and_smtps_connections_log_in_over_tls(env, tls_files):
    rt, client, raw = env
    pipeline = """
name: tls-mail
stages:
  - {id: tell, type: notify, config: {connection: mail, to: [ops@example.org], body: over tls}}
"""
    cases = [("starttls", dict(tls_context=tls_files, require_starttls=True)),
             ("ssl", dict(ssl_context=tls_files, auth_require_tls=False))]  # fmt: skip
    pid = client.create_pipeline(pipeline)["id"]
    for mode, server in cases:
        with smtp_server(**server) as (box, port):
            put_connection(
                raw, "mail", "smtp",
                {"host": "127.0.0.1", "port": port, "sender": "roaster@example.org",
                 "username": "mailer", mode: True},
                {"password": PASSWORD},
            )  # fmt: skip
            done = client.wait(client.trigger(pid)["id"], timeout=30)
        assert done["status"] == "completed", (mode, stage(done, "tell")["error"])
        assert box.logins == [("mailer", PASSWORD, True)], mode
        assert [m["tls"] for m in box.messages] == [True], mode
        assert box.messages[0]["message"].get_content().strip() == "over tls"


# --- webhooks -------------------------------------------------------------------------------

HOOK = """
name: hooked
variables: {team: data-eng}
stages:
  - id: slack
    type: notify
    config:
      connection: alerts
      subject: "{{ pipeline }} finished"
      body: "run {{ run_id }} for {{ team }}"
  - {id: gone, type: notify, config: {connection: stale, body: "lost"}}
  - {id: legacy, type: notify, config: {url: "{{ base }}/plain", body: "no connection"}}
"""


def test_webhook_connection_posts_slack_json_retrying_a_429_and_never_shows_its_url(env):
    rt, client, raw = env
    with webhook_receiver() as hooks:
        hooks.faults[HOOK_PATH] = [(429, {"Retry-After": "1"})]
        shown = put_connection(raw, "alerts", "webhook", {}, {"url": hooks.base + HOOK_PATH})
        put_connection(raw, "stale", "webhook", {}, {"url": hooks.base + HOOK_PATH + "-old"})
        done, lines = run(client, HOOK.replace("{{ base }}", hooks.base))
    run_id = done["id"]
    assert stage(done, "slack")["status"] == "completed", done
    assert (HOOK_PATH, {"text": f"*hooked finished*\nrun {run_id} for data-eng"}) in hooks.received
    assert ("/plain", {"text": "*FlexiRoaster pipeline hooked*\nno connection"}) in hooks.received
    assert len(hooks.received) == 2
    assert stage(done, "slack")["metrics"] == {
        "status_code": 200, "retries": 1, "connection": "alerts"
    }  # fmt: skip
    assert "POST webhook alerts: 429, retry in 1.0 s (attempt 2 of 5)" in lines
    assert "webhook alerts: message sent (200)" in lines
    assert stage(done, "gone")["error"] == "webhook stale answered 404 Not Found: no_service"
    text = recorded(rt, client, done, shown, raw.get("/connections").json())
    assert "whsec-9mZr4Lq" not in text and HOOK_PATH not in text
