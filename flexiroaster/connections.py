"""Connections: named, typed places pipelines read from, write to and notify (postgres, http,
smtp, webhook). Their secret fields are encrypted like secrets (secrets.py), write-only through
the API and UI, and reach a stage only at run time, masked in everything it records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ConnectionType(StrEnum):
    POSTGRES = "postgres"
    HTTP = "http"
    SMTP = "smtp"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Connection:
    """What a stage gets: the connection's settings with its secret fields decrypted."""

    name: str
    type: ConnectionType
    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def referenced(pipeline: Any) -> dict[str, list[str]]:
    """Connection name -> ids of the pipeline's stages that use it."""
    out: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        name = getattr(stage.config, "connection", None)
        if name:
            out.setdefault(name, []).append(stage.id)
    return out
