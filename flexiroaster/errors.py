"""The FlexiError family: every error a person sees, with a message they can act on."""

from __future__ import annotations


class FlexiError(Exception):
    """Root of every user-facing error; `status` is the HTTP status the API maps it to."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  {line}" for line in self.details)


class SpecError(FlexiError):
    """A pipeline file or body that cannot be parsed or does not validate."""

    status = 422
    code = "invalid_pipeline"


class TemplateError(SpecError):
    """A `{{ name }}` placeholder with no value."""

    code = "undefined_variable"


class NotFound(FlexiError):
    status = 404
    code = "not_found"


class Unauthorized(FlexiError):
    """A missing or wrong token or secret."""

    status = 401
    code = "unauthorized"


class Conflict(FlexiError):
    status = 409
    code = "conflict"


class StoreLocked(FlexiError):
    """Another process holds the DuckDB store file."""

    status = 503
    code = "store_locked"


class StageError(FlexiError):
    """A stage failed because of its config or data (user-side, not engine trouble)."""

    code = "stage_failed"


class StageTimeout(StageError):
    code = "stage_timeout"


class Cancelled(StageError):
    code = "cancelled"
