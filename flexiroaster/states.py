"""Run and stage states, with the terminal sets the engine and the store agree on."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    HELD = "held"  # waiting for a person to release it (the pre-run risk gate)
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[RunStatus]:
        return frozenset({cls.COMPLETED, cls.FAILED, cls.CANCELLED})


class StageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[StageStatus]:
        return frozenset({cls.COMPLETED, cls.FAILED, cls.SKIPPED, cls.CANCELLED})
