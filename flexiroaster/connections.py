"""Connections: named, typed places pipelines read from, write to and notify (postgres, http,
smtp, webhook). Their secret fields are encrypted like secrets (secrets.py), write-only through
the API and UI, and reach a stage only at run time, masked in everything it records."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError

from .errors import Conflict, FlexiError, NotFound, SpecError
from .records import now
from .secrets import Masker, SecretBox
from .settings import Settings
from .spec import CONNECTION_NAME
from .store import Store

log = logging.getLogger(__name__)

TEST_MESSAGE = "FlexiRoaster connection test"


class ConnectionType(StrEnum):
    POSTGRES = "postgres"
    HTTP = "http"
    SMTP = "smtp"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Connection:
    """What a stage gets: the connection's settings (every field, defaults filled) with its
    secret fields decrypted."""

    name: str
    type: ConnectionType
    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def masker(self) -> Masker:
        return Masker(mask_values(self.secrets, self.config))


@dataclass(frozen=True)
class StoredConnection:
    """A connection as the API shows it: which secret fields are set, never their values."""

    name: str
    type: ConnectionType
    description: str | None
    config: dict[str, Any]
    secrets_set: list[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TestResult:
    ok: bool
    detail: str
    took_ms: float


# --- per-type settings ---------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostgresConfig(_Config):
    host: str = Field(min_length=1, max_length=255, description="Server host name or address")
    port: int = Field(5432, ge=1, le=65535, description="Server port")
    database: str = Field(min_length=1, max_length=255, description="Database name")
    user: str = Field(min_length=1, max_length=255, description="Role to log in as")
    options: dict[str, str] = Field(
        default_factory=dict, description="Further libpq parameters, e.g. {sslmode: require}"
    )
    connect_timeout: int = Field(10, ge=1, le=3600, description="Seconds to wait for a connection")


class HttpConfig(_Config):
    base_url: AnyHttpUrl = Field(description="The API's root URL (http or https)")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Plain headers sent with every request (no secrets here)"
    )
    auth: Literal["none", "bearer", "header", "basic"] = Field(
        "none",
        description="none; bearer (Authorization: Bearer <token>); header (<auth_header>: <token>);"
        " basic (username + secret password)",
    )
    auth_header: str = Field(
        "Authorization", min_length=1, max_length=200, description="auth header: the header name"
    )
    username: str | None = Field(None, max_length=255, description="auth basic: the user name")
    timeout: float = Field(30, gt=0, le=3600, description="Seconds per request")
    max_retries: int = Field(4, ge=0, le=20, description="Retries of a failed request (5xx, 429)")
    verify_tls: bool = Field(True, description="Check the server's TLS certificate")


class SmtpConfig(_Config):
    host: str = Field(min_length=1, max_length=255, description="SMTP server")
    port: int = Field(25, ge=1, le=65535, description="SMTP port")
    sender: str = Field(min_length=3, max_length=320, description="From address")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS")
    ssl: bool = Field(False, description="Connect over TLS from the start (SMTPS, port 465)")
    username: str | None = Field(None, max_length=255, description="Log in as (with the password)")
    timeout: float = Field(10, gt=0, le=3600, description="Seconds to wait for the server")


class WebhookConfig(_Config):
    format: Literal["slack"] = Field("slack", description="Message format (Slack-compatible JSON)")


CONFIGS: dict[ConnectionType, type[_Config]] = {
    ConnectionType.POSTGRES: PostgresConfig,
    ConnectionType.HTTP: HttpConfig,
    ConnectionType.SMTP: SmtpConfig,
    ConnectionType.WEBHOOK: WebhookConfig,
}
SECRET_FIELDS: dict[ConnectionType, tuple[str, ...]] = {
    ConnectionType.POSTGRES: ("password",),
    ConnectionType.HTTP: ("token", "password"),
    ConnectionType.SMTP: ("password",),
    ConnectionType.WEBHOOK: ("url",),
}
MAX_SECRET = 65_536


def needed_secrets(kind: ConnectionType, config: dict[str, Any]) -> set[str]:
    """The secret fields a connection of this type and config cannot work without."""
    if kind == ConnectionType.HTTP:
        return {"bearer": {"token"}, "header": {"token"}, "basic": {"password"}}.get(
            config.get("auth"), set()
        )
    if kind == ConnectionType.SMTP and config.get("username"):
        return {"password"}
    if kind == ConnectionType.WEBHOOK:
        return {"url"}
    return set()


def mask_values(secrets: dict[str, str], config: dict[str, Any] | None = None) -> list[str]:
    """A connection's secret values as they could surface: plain, URL-quoted (in a URI), a
    secret URL's path, query and long last segment (a receiver may quote its request line), and
    basic credentials as they travel (base64 of user:password, in an echoed header)."""
    import base64
    from urllib.parse import parse_qsl, urlsplit

    out = []
    for field_, v in secrets.items():
        if not v:
            continue
        out += [v, quote(v, safe=""), quote(v)]
        if field_ == "url":
            u = urlsplit(v)
            if u.path.strip("/"):
                out += [u.path + (f"?{u.query}" if u.query else ""), u.path.rstrip("/")]
                last = u.path.rstrip("/").rsplit("/", 1)[-1]
                out += [last] if len(last) >= 16 else []
            out += [val for _k, val in parse_qsl(u.query) if len(val) >= 16]
            out += [u.password] if u.password else []
    if (config or {}).get("auth") == "basic" and secrets.get("password"):
        pair = f"{config.get('username') or ''}:{secrets['password']}"
        out.append(base64.b64encode(pair.encode()).decode())
    return out


def check_name(name: str) -> str:
    if not re.match(CONNECTION_NAME, name):
        raise SpecError(
            f"name: invalid connection name {name!r}: lowercase letters, digits, _ and -,"
            f" starting with a letter, at most 63 characters (pattern {CONNECTION_NAME})"
        )
    return name


def _type(kind: str) -> ConnectionType:
    try:
        return ConnectionType(kind)
    except ValueError:
        known = ", ".join(t.value for t in ConnectionType)
        raise SpecError(f"type: unknown connection type {kind!r} (known: {known})") from None


def _config(kind: ConnectionType, config: Any) -> dict[str, Any]:
    """The config validated for its type, every field present (defaults filled), JSON-ready."""
    try:
        model = CONFIGS[kind].model_validate(config if config is not None else {})
    except ValidationError as exc:
        lines = [
            f"config.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".replace("config.: ", "config: ")
            for e in exc.errors()
        ]
        raise SpecError(f"invalid {kind} connection config", details=lines) from None
    out = model.model_dump(mode="json")
    if kind == ConnectionType.HTTP and not out["base_url"].startswith(("http://", "https://")):
        raise SpecError("config.base_url: must be an http:// or https:// URL")
    if kind == ConnectionType.HTTP and model.base_url.username is not None:
        raise SpecError("config.base_url: credentials in the URL are secret; use auth basic")
    # Settings are shown to anyone who can read the API: secrets belong in `secrets`.
    for key in out.get("options", {}) if kind == ConnectionType.POSTGRES else ():
        if key.lower() in ("password", "passfile"):
            raise SpecError(f"config.options.{key}: give the password as secrets.password")
    for key in out.get("headers", {}) if kind == ConnectionType.HTTP else ():
        if key.lower() in ("authorization", "proxy-authorization", "cookie"):
            raise SpecError(
                f"config.headers.{key}: credentials are secret; use auth (bearer, header or basic)"
                " with secrets.token or secrets.password"
            )
    return out


def _secret_input(kind: ConnectionType, secrets: dict[str, Any] | None) -> dict[str, str | None]:
    fields = SECRET_FIELDS[kind]
    out: dict[str, str | None] = {}
    for key, value in (secrets or {}).items():
        if key not in fields:
            raise SpecError(
                f"secrets.{key}: a {kind} connection has no secret field {key!r}"
                f" (its secret fields: {', '.join(fields)})"
            )
        if value is not None and (not isinstance(value, str) or not value):
            raise SpecError(f"secrets.{key}: give a non-empty string, or null to remove it")
        if value is not None and len(value) > MAX_SECRET:
            raise SpecError(f"secrets.{key}: longer than {MAX_SECRET} characters")
        out[key] = value
    url = out.get("url") if kind == ConnectionType.WEBHOOK else None
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise SpecError("secrets.url: must be an http:// or https:// URL")
    return out


# --- the service ---------------------------------------------------------------------------


class Connections:
    """The connections table: settings as JSON, secret fields as one Fernet-encrypted JSON
    object (the same key as secrets.Variables)."""

    def __init__(self, store: Store, settings: Settings, box: SecretBox | None = None):
        self.store = store
        self.box = box or SecretBox(settings)

    def _row(self, name: str) -> dict[str, Any] | None:
        found = self.store.rows("connections", "name = ?", [check_name(name)])
        return found[0] if found else None

    def _secrets(self, row: dict[str, Any]) -> dict[str, str]:
        if not row["secrets"]:
            return {}
        return json.loads(self.box.decrypt(row["secrets"], f"the secrets of connection {row['name']}"))

    def _out(self, row: dict[str, Any]) -> StoredConnection:
        return StoredConnection(
            row["name"], ConnectionType(row["type"]), row["description"], row["config"] or {},
            sorted(self._secrets(row)), row["created_at"], row["updated_at"],
        )  # fmt: skip

    def list(self) -> list[StoredConnection]:
        return [self._out(r) for r in self.store.rows("connections", order="name")]

    def get(self, name: str) -> StoredConnection:
        row = self._row(name)
        if row is None:
            raise NotFound(f"no connection {name}")
        return self._out(row)

    def put(
        self,
        name: str,
        kind: str,
        config: dict[str, Any] | None,
        secrets: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> tuple[StoredConnection, bool]:
        """Create or replace; returns (connection, created). A secret field given replaces the
        stored one, one left out keeps it, null removes it. A type change drops the old
        secrets: the body must then give every secret the new type needs."""
        check_name(name)
        ctype = _type(kind)
        cfg = _config(ctype, config)
        given = _secret_input(ctype, secrets)
        old = self._row(name)
        merged: dict[str, str] = {}
        if old is not None and old["type"] == ctype:
            merged = self._secrets(old)
        elif old is not None:
            wanted = set(SECRET_FIELDS[ctype]) if ctype == ConnectionType.POSTGRES else set()
            missing = sorted((wanted | needed_secrets(ctype, cfg)) - {k for k, v in given.items() if v})
            if missing:
                raise SpecError(
                    f"secrets: changing connection {name} from {old['type']} to {ctype} needs its"
                    f" secrets given in the same request: {', '.join(missing)}"
                )
        for key, value in given.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        missing = sorted(needed_secrets(ctype, cfg) - set(merged))
        if missing:
            raise SpecError(
                f"secrets.{missing[0]}: a {ctype} connection with this config needs the secret"
                f" field(s) {', '.join(missing)}"
            )
        stamp = now()
        row = {
            "name": name, "type": str(ctype), "description": description, "config": cfg,
            "secrets": self.box.encrypt(json.dumps(merged)) if merged else None,
            "created_at": old["created_at"] if old else stamp, "updated_at": stamp,
        }  # fmt: skip
        self.store.put_rows("connections", [row])
        return StoredConnection(
            name, ctype, description, cfg, sorted(merged), row["created_at"], stamp
        ), old is None

    def delete(self, name: str) -> None:
        self.get(name)
        users = self.usage().get(name, [])
        if users:
            raise Conflict(
                f"connection {name} is used by pipeline(s) {', '.join(users)}; remove it from"
                " their stages first"
            )
        rules = self.alert_rules_using(name)
        if rules:
            raise Conflict(
                f"connection {name} is a channel of alert rule(s) {', '.join(rules)}; remove it"
                " from their channels first"
            )
        self.store.delete_rows("connections", "name = ?", [name])

    def alert_rules_using(self, name: str) -> list[str]:
        """Ids of the alert rules that send through the connection (their `channels`)."""
        rules = self.store.rows("alert_rules", order="id")
        return [r["id"] for r in rules if name in (r.get("channels") or [])]

    def usage(self) -> dict[str, list[str]]:
        """Connection name -> ids of the stored pipelines whose stages use it."""
        from .spec import load_pipeline_text

        used: dict[str, set[str]] = {}
        for row in self.store.rows("pipelines", order="id"):
            if "connection" not in (row["spec_yaml"] or ""):
                continue  # most pipelines: no need to parse them
            try:
                pipeline = load_pipeline_text(row["spec_yaml"], f"pipeline {row['id']}")
            except FlexiError:
                continue  # stored pipelines validated when saved; an old one may not any more
            for name in referenced(pipeline):
                used.setdefault(name, set()).add(row["id"])
        return {k: sorted(v) for k, v in used.items()}

    def open(self, name: str) -> Connection:
        """The connection with its secrets decrypted: for the engine and tests, never an answer."""
        row = self._row(name)
        if row is None:
            raise NotFound(f"no connection {name}")
        return Connection(row["name"], ConnectionType(row["type"]), row["config"], self._secrets(row))

    def resolve(self, names: set[str]) -> dict[str, Connection]:
        """The named connections that exist, opened (the caller reports the missing ones)."""
        if not names:
            return {}
        rows = self.store.rows("connections", "name IN (SELECT unnest(?))", [sorted(names)])
        return {
            r["name"]: Connection(r["name"], ConnectionType(r["type"]), r["config"], self._secrets(r))
            for r in rows
        }

    def definition(
        self, kind: str, config: dict[str, Any] | None, secrets: dict[str, Any] | None
    ) -> Connection:
        """An unsaved connection, validated like put() (for a test before saving)."""
        ctype = _type(kind)
        cfg = _config(ctype, config)
        given = {k: v for k, v in _secret_input(ctype, secrets).items() if v is not None}
        missing = sorted(needed_secrets(ctype, cfg) - set(given))
        if missing:
            raise SpecError(f"secrets.{missing[0]}: this {ctype} connection needs it")
        return Connection("unsaved", ctype, cfg, given)

    def test(self, target: str | Connection) -> TestResult:
        """Reach the connection's system once; never raises for an unreachable one."""
        conn = self.open(target) if isinstance(target, str) else target
        mask = conn.masker()
        started = time.perf_counter()
        try:
            ok, detail = _PROBES[conn.type](conn)
        except Exception as exc:  # any failure to reach it is the answer, not an error
            ok, detail = False, f"{type(exc).__name__}: {exc}".strip()
        took = round((time.perf_counter() - started) * 1000, 1)
        return TestResult(ok, mask(detail)[:2000], took)


# --- what a test does per type -------------------------------------------------------------


def _probe_postgres(conn: Connection) -> tuple[bool, str]:
    from .connectors.postgres import server_version

    return True, f"connected: {server_version(conn)}"


def _probe_http(conn: Connection) -> tuple[bool, str]:
    from .connectors.http import client

    cfg = conn.config
    with client(conn) as http:  # as an http stage sends it: headers, auth, timeout, TLS
        resp = http.get(cfg["base_url"])
    reachable = resp.status_code < 500
    return reachable, (
        f"{'reachable' if reachable else 'server error'}: GET {cfg['base_url']} answered HTTP"
        f" {resp.status_code} {resp.reason_phrase}".rstrip()
    )


def _probe_smtp(conn: Connection) -> tuple[bool, str]:
    from .channels import smtp_session, smtp_settings

    session = smtp_settings(conn)
    with smtp_session(**session) as smtp:  # as mail is sent: TLS checked, logged in
        code, banner = smtp.ehlo()
        if code != 250:
            return False, f"EHLO refused: {code} {banner.decode(errors='replace')}"
    done = [
        "EHLO", *(["STARTTLS"] if session["tls"] == "starttls" else []),
        *(["login"] if session["login"] else []),
    ]  # fmt: skip
    return True, f"SMTP {session['host']}:{session['port']} accepted {' + '.join(done)}"


def _probe_webhook(conn: Connection) -> tuple[bool, str]:
    import httpx

    resp = httpx.post(conn.secrets["url"], json={"text": TEST_MESSAGE}, timeout=10)
    ok = 200 <= resp.status_code < 300
    return ok, f"webhook answered HTTP {resp.status_code}" + ("" if ok else f": {resp.text[:200]}")


_PROBES = {
    ConnectionType.POSTGRES: _probe_postgres,
    ConnectionType.HTTP: _probe_http,
    ConnectionType.SMTP: _probe_smtp,
    ConnectionType.WEBHOOK: _probe_webhook,
}


# --- what a pipeline uses ------------------------------------------------------------------

# stage type -> (config field that picks the kind of use, connection types it needs)
_WANTS: dict[tuple[str, str], set[ConnectionType]] = {
    ("input", "query"): {ConnectionType.POSTGRES},
    ("input", "endpoint"): {ConnectionType.HTTP},
    ("output", "table"): {ConnectionType.POSTGRES},
    ("output", "endpoint"): {ConnectionType.HTTP},
    ("notify", ""): {ConnectionType.SMTP, ConnectionType.WEBHOOK},
}


def referenced(pipeline: Any) -> dict[str, list[str]]:
    """Connection name -> ids of the pipeline's stages that use it."""
    out: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        name = getattr(stage.config, "connection", None)
        if name:
            out.setdefault(name, []).append(stage.id)
    return out


def check_uses(stages: Any, found: dict[str, Connection]) -> list[str]:
    """Problems with the connections stages name: unknown ones, and ones of a type the stage
    cannot use (an input `query` needs postgres, an `endpoint` http ...)."""
    problems = []
    for stage in stages:
        name = getattr(stage.config, "connection", None)
        if not name:
            continue
        conn = found.get(name)
        if conn is None:
            problems.append(f"stage {stage.id}: no connection {name}")
            continue
        for (stype, key), kinds in _WANTS.items():
            if stype != str(stage.type) or (key and getattr(stage.config, key, None) is None):
                continue
            if conn.type not in kinds:
                use = f"an {stype} with `{key}`" if key else f"a {stype} stage"
                need = " or ".join(sorted(kinds))
                problems.append(
                    f"stage {stage.id}: connection {name} is a {conn.type} connection; {use}"
                    f" needs a {need} connection"
                )
    return problems
