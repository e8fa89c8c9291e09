"""Stages that read from and write to stored connections (connections.py): one module per
connection type, each with `read(ctx, conn, cfg)` (input stages) and `write(ctx, conn, cfg,
source)` (output stages), both returning a StageResult."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..errors import StageError
from ..stages.base import StageContext, StageResult

# connection type -> what a stage can do with it
CAN = {"postgres": {"read", "write"}, "http": {"read", "write"}}


def _module(ctx: StageContext, name: str, action: str) -> tuple[Any, Any]:
    conn = ctx.connection(name)
    if action not in CAN.get(str(conn.type), ()):
        kinds = ", ".join(sorted(t for t, can in CAN.items() if action in can))
        raise StageError(
            f"connection {name!r} is of type {conn.type}; {action} needs a {kinds} connection"
        )
    return import_module(f"{__name__}.{conn.type}"), conn


def read(ctx: StageContext) -> StageResult:
    mod, conn = _module(ctx, ctx.config.connection, "read")
    return mod.read(ctx, conn, ctx.config)


def write(ctx: StageContext, source: str) -> StageResult:
    mod, conn = _module(ctx, ctx.config.connection, "write")
    return mod.write(ctx, conn, ctx.config, source)
