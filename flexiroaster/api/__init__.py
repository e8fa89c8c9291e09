"""The FastAPI app: /api/v1 routers, one error shape, auth, body limits; the original /api paths redirect."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from .. import __version__
from ..errors import NotFound
from ..runtime import Runtime
from ..settings import Settings
from . import (
    airflow,
    alerts,
    connections,
    data,
    errors,
    executions,
    insights,
    metrics,
    pipelines,
    query,
    schedules,
    secrets,
    system,
)

PREFIX = "/api/v1"


def create_app(
    settings: Settings | None = None, runtime: Runtime | None = None, *, close_runtime: bool = False
) -> FastAPI:
    """The app over `runtime`, or over a runtime it opens from `settings` for its lifespan.

    The lifespan closes a runtime it opened, or the given one with `close_runtime` (the server
    process: uvicorn re-raises SIGTERM once the lifespan has ended, so later cleanup never runs).
    """
    if (settings is None) == (runtime is None):
        raise ValueError("give settings or a runtime")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = runtime is None or close_runtime
        app.state.runtime = runtime or Runtime(settings)
        if owned:  # the serving runtime fires schedules; a borrowed one is started by its owner
            app.state.runtime.start()
        try:
            yield
        finally:
            if owned:
                app.state.runtime.close()

    app = FastAPI(
        title="FlexiRoaster",
        version=__version__,
        description="Pipelines on DuckDB: trigger and follow runs, read metrics, query the store.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    errors.install(app)
    modules = (system, pipelines, executions, schedules, metrics, query, data, insights, alerts, secrets)
    for module in modules:
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(schedules.hooks, prefix=PREFIX)
    app.include_router(airflow.router, prefix=PREFIX)
    app.include_router(connections.router, prefix=PREFIX)
    app.include_router(metrics.prometheus)

    @app.get("/", include_in_schema=False)
    def root() -> dict[str, str]:
        return system.root_info()

    @app.api_route(
        "/api/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False
    )
    def original_paths(path: str, request: Request) -> RedirectResponse:
        # The original API lived under /api/...; 307 keeps the method and body.
        if path == "v1" or path.startswith("v1/"):
            raise NotFound(f"no endpoint {request.method} {request.url.path}; see /docs")
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{PREFIX}/{path}{query}", status_code=307)

    limit = (runtime.settings if runtime else settings).max_body_bytes
    app.add_middleware(errors.BodyLimit, limit=limit)
    return app
