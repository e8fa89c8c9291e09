"""One JSON error shape everywhere: {"error", "detail", "timestamp"}, with the right status."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FlexiError
from .models import ErrorOut

log = logging.getLogger(__name__)

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable"}  # fmt: skip


WHY = {
    400: "The request is understood but refused (the detail says why)",
    401: "Missing or wrong bearer token",
    404: "No such pipeline, run or path",
    409: "The request conflicts with the current state",
    413: "The request body is too large",
    422: "The request or the pipeline in it does not validate",
    503: "The store cannot write (disk full or read-only); nothing new is accepted",
}


def documented(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for error statuses, all in the one error shape."""
    return {s: {"model": ErrorOut, "description": WHY[s]} for s in statuses}


class InvalidBody(FlexiError):
    """A request body that is not a pipeline document at all (empty, not UTF-8, not JSON ...)."""

    status = 422
    code = "invalid_request"


def encodable(text: str) -> str:
    """`text` with lone surrogates (from a JSON `\\ud800` escape it quotes) written as escapes,
    so a message that quotes the request still encodes as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int, code: str, detail: str, headers: dict | None = None
) -> JSONResponse:
    body = {"error": code, "detail": encodable(detail), "timestamp": datetime.now(UTC).isoformat()}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(FlexiError)
    async def flexi(_: Request, exc: FlexiError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if refused := await _unauthenticated(request):
            return refused
        lines = [f"{_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(lines))

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if refused := await _unauthenticated(request):  # e.g. a body that is not UTF-8
            return refused
        code = CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:8]
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return error_response(
            500, "internal_error", f"internal error {ref}; the runtime's log has the details"
        )


async def _unauthenticated(request: Request) -> JSONResponse | None:
    """FastAPI decodes a JSON body before the route's dependencies run: on a route that needs
    the bearer token, a caller without it gets the 401, not what was wrong with their body
    (None when the route needs no token or the request carries it)."""
    from .deps import bearer, require_token

    route = request.scope.get("route")
    if request.method not in (getattr(route, "methods", None) or ()):
        return None  # not this route's method: a 405 stays a 405
    dependant = getattr(route, "dependant", None)
    if not any(d.call is require_token for d in getattr(dependant, "dependencies", [])):
        return None
    try:
        await require_token(request, await bearer(request))
    except FlexiError as exc:
        return error_response(exc.status, exc.code, str(exc))
    return None


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413, before any handler reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = error_response(413, "too_large", f"request body over {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        seen, over, started = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                over = True
                raise _TooLarge
            return message

        async def sending(message):
            # FastAPI turns any error while it reads a JSON body into its own 400: once the
            # body is over the limit, that answer is dropped and the 413 goes out instead.
            nonlocal started
            if over and not started:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except _TooLarge:
            pass
        if over and not started:
            await too_big(scope, receive, send)


class _TooLarge(Exception):
    pass
