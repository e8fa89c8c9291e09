"""Variables and secrets: list, read, set, delete. A secret's value is never in an answer."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from ..runtime import Runtime
from ..secrets import Variable, check_key
from .deps import require_token, runtime
from .errors import documented

router = APIRouter(prefix="/variables", tags=["variables"])


class VariableIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str = Field(max_length=65_536, description="The value; a secret's is stored encrypted")
    secret: bool = Field(True, description="Encrypt at rest, mask in runs, never return it")
    description: str | None = Field(None, max_length=2000)


class VariableOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    value: str | None = Field(description="The plain value; always null for a secret")
    secret: bool
    description: str | None
    created_at: datetime
    updated_at: datetime
    used_by: list[str] = Field(description="Stored pipelines that reference it")


class VariableList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: list[VariableOut]
    total: int


def _out(v: Variable, usage: dict[str, list[str]]) -> VariableOut:
    return VariableOut(
        key=v.key, value=None if v.secret else v.value, secret=v.secret,
        description=v.description, created_at=v.created_at, updated_at=v.updated_at,
        used_by=usage.get(v.key, []),
    )  # fmt: skip


@router.get("", response_model=VariableList)
def list_variables(rt: Runtime = Depends(runtime)) -> VariableList:
    usage = rt.variables.usage()
    found = rt.variables.list()
    return VariableList(variables=[_out(v, usage) for v in found], total=len(found))


@router.get("/{key}", response_model=VariableOut, responses=documented(404, 422))
def get_variable(key: str, rt: Runtime = Depends(runtime)) -> VariableOut:
    """A plain variable with its value; a secret without it."""
    return _out(rt.variables.get(key), rt.variables.usage())


@router.put(
    "/{key}",
    response_model=VariableOut,
    responses=documented(400, 401, 413, 422),
    dependencies=[Depends(require_token)],
)
def put_variable(key: str, body: VariableIn, rt: Runtime = Depends(runtime)) -> VariableOut:
    """Create or replace a variable or secret (pipelines use `{{ vars.KEY }}` / `{{ secrets.KEY }}`)."""
    check_key(key)
    v = rt.variables.put(key, body.value, secret=body.secret, description=body.description)
    rt.store.audit("api", "variable.put", "variable", key, {"secret": body.secret})
    return _out(v, rt.variables.usage())


@router.delete(
    "/{key}",
    status_code=204,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def delete_variable(key: str, rt: Runtime = Depends(runtime)) -> Response:
    """Delete; refused while a stored pipeline references it."""
    rt.variables.delete(key)
    rt.store.audit("api", "variable.delete", "variable", key)
    return Response(status_code=204)
