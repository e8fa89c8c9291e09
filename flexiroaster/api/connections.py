"""Connections: list, read, create or replace, delete, test. Secret fields are write-only: an
answer says which are set, never what they are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from ..connections import StoredConnection, TestResult
from ..runtime import Runtime
from ..spec import CONNECTION_NAME
from .deps import require_token, runtime
from .errors import documented

router = APIRouter(prefix="/connections", tags=["connections"])

Name = Path(pattern=CONNECTION_NAME, description="The connection's name (lowercase, - and _)")
Kind = Literal["postgres", "http", "smtp", "webhook"]
CONFIG_HELP = (
    "Plain settings, by type. postgres: host, port (5432), database, user, options (libpq"
    " parameters, e.g. sslmode), connect_timeout (10). http: base_url, headers, auth"
    " (none|bearer|header|basic), auth_header (Authorization), username, timeout (30),"
    " max_retries (4), verify_tls (true). smtp: host, port (25), sender, starttls, ssl, username,"
    " timeout (10). webhook: format (slack)."
)
SECRETS_HELP = (
    "Secret fields, by type: postgres password; http token (bearer/header) and password (basic);"
    " smtp password; webhook url. On a replace, a field given replaces the stored one, one left"
    " out keeps it, null removes it."
)


class ConnectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Kind = Field(description="What the connection reaches")
    description: str | None = Field(None, max_length=2000)
    config: dict[str, Any] = Field(description=CONFIG_HELP)
    secrets: dict[str, str | None] | None = Field(None, description=SECRETS_HELP)


class ConnectionTestIn(BaseModel):
    """An unsaved connection to test before saving it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Kind = Field(description="What the connection reaches")
    config: dict[str, Any] = Field(description=CONFIG_HELP)
    secrets: dict[str, str] | None = Field(None, description="Its secret fields, by type")


class ConnectionOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: Kind
    description: str | None
    config: dict[str, Any] = Field(description="The plain settings, defaults filled")
    secrets_set: list[str] = Field(description="Which secret fields are stored (never their values)")
    used_by: list[str] = Field(description="Stored pipelines whose stages use it")
    created_at: datetime
    updated_at: datetime


class ConnectionList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connections: list[ConnectionOut]
    total: int


class ConnectionTestOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool = Field(description="Whether the system was reached (and accepted the login)")
    detail: str = Field(description="What happened, secrets masked")
    took_ms: float


def _out(c: StoredConnection, usage: dict[str, list[str]]) -> ConnectionOut:
    return ConnectionOut(
        name=c.name, type=str(c.type), description=c.description, config=c.config,
        secrets_set=c.secrets_set, used_by=usage.get(c.name, []), created_at=c.created_at,
        updated_at=c.updated_at,
    )  # fmt: skip


def _tested(r: TestResult) -> ConnectionTestOut:
    return ConnectionTestOut(ok=r.ok, detail=r.detail, took_ms=r.took_ms)


@router.get("", response_model=ConnectionList, responses=documented(409))
def list_connections(rt: Runtime = Depends(runtime)) -> ConnectionList:
    """Every connection; 409 when the secret key does not open what is stored."""
    usage = rt.connections.usage()
    found = rt.connections.list()
    return ConnectionList(connections=[_out(c, usage) for c in found], total=len(found))


@router.post(
    "/test",
    response_model=ConnectionTestOut,
    responses=documented(400, 401, 413, 422),
    dependencies=[Depends(require_token)],
)
def test_unsaved(body: ConnectionTestIn, rt: Runtime = Depends(runtime)) -> ConnectionTestOut:
    """Try a connection before saving it: ok false with the reason when it cannot be reached."""
    conn = rt.connections.definition(body.type, body.config, body.secrets)
    return _tested(rt.connections.test(conn))


@router.get("/{name}", response_model=ConnectionOut, responses=documented(404, 409, 422))
def get_connection(name: str = Name, rt: Runtime = Depends(runtime)) -> ConnectionOut:
    return _out(rt.connections.get(name), rt.connections.usage())


@router.put(
    "/{name}",
    response_model=ConnectionOut,
    responses={201: {"model": ConnectionOut, "description": "Created"}}
    | documented(400, 401, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def put_connection(
    body: ConnectionIn, response: Response, name: str = Name, rt: Runtime = Depends(runtime)
) -> ConnectionOut:
    """Create (201) or replace (200) a connection."""
    c, created = rt.connections.put(name, body.type, body.config, body.secrets, body.description)
    rt.store.audit(
        "api", "connection.create" if created else "connection.update", "connection", name,
        {"type": body.type, "secrets_given": sorted(body.secrets or {})},
    )  # fmt: skip
    response.status_code = 201 if created else 200
    return _out(c, rt.connections.usage())


@router.delete(
    "/{name}",
    status_code=204,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def delete_connection(name: str = Name, rt: Runtime = Depends(runtime)) -> Response:
    """Delete; refused (409) while a stored pipeline uses it."""
    rt.connections.delete(name)
    rt.store.audit("api", "connection.delete", "connection", name)
    return Response(status_code=204)


@router.post(
    "/{name}/test",
    response_model=ConnectionTestOut,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def test_connection(name: str = Name, rt: Runtime = Depends(runtime)) -> ConnectionTestOut:
    """Reach the stored connection once (postgres SELECT version(), http GET, smtp EHLO,
    webhook POST); ok false with the reason when it cannot."""
    return _tested(rt.connections.test(name))
