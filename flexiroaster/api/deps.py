"""What routes depend on: the runtime, and the bearer token on mutating endpoints."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Unauthorized
from ..runtime import Runtime

# Paging offsets and log cursors stay inside DuckDB's BIGINT.
MAX_OFFSET = 2**62

bearer = HTTPBearer(
    auto_error=False, description="FLEXIROASTER_API_TOKEN, when the runtime has one"
)


async def runtime(request: Request) -> Runtime:
    """Async: it only reads app state, so it needs no thread-pool hop."""
    return request.app.state.runtime


async def require_token(
    request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
) -> None:
    """With a token configured, the request must carry it (compared in constant time)."""
    token = request.app.state.runtime.settings.api_token
    if token is None:
        return
    given = creds.credentials.encode() if creds else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise Unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <FLEXIROASTER_API_TOKEN>)"
        )
