"""Stage types: one module each, looked up by the stage's `type`."""

from __future__ import annotations

from collections.abc import Callable

from ..spec import StageType
from . import input, notify, output, python_call, shell, sql, transform, validation
from .base import StageContext, StageResult

REGISTRY: dict[StageType, Callable[[StageContext], StageResult]] = {
    StageType.INPUT: input.run,
    StageType.SQL: sql.run,
    StageType.TRANSFORM: transform.run,
    StageType.VALIDATION: validation.run,
    StageType.OUTPUT: output.run,
    StageType.PYTHON: python_call.run,
    StageType.SHELL: shell.run,
    StageType.NOTIFY: notify.run,
}

__all__ = ["REGISTRY", "StageContext", "StageResult"]
