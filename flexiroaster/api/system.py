"""The root and /health: what answers here and whether its parts work."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from .. import __version__
from ..runtime import Runtime
from .deps import runtime
from .errors import documented
from .models import HealthOut

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(rt: Runtime = Depends(runtime)) -> Any:
    """Store, engine and their figures; 503 when a part does not work."""
    components: dict[str, dict[str, Any]] = {}
    try:
        t0 = time.perf_counter()
        rt.store.query("SELECT count(*) FROM flexiroaster.schema_version")
        components["store"] = {
            "status": "ok",
            "path": str(rt.store.path),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
            "writable": True,
        }
    except Exception as exc:  # reported, not raised: this endpoint says what is wrong
        components["store"] = {"status": "error", "detail": str(exc)}
    degraded = rt.store.degraded
    if degraded is not None:  # readable, but writes fail: new runs are refused
        components["store"] |= {
            "status": "error",
            "writable": False,
            "detail": f"{degraded}; new runs are refused until writes succeed again",
        }
    engine_ok = not rt.closed and not rt.engine.pool._shutdown
    components["engine"] = {
        "status": "ok" if engine_ok else "error",
        "active_runs": len(rt.engine.active()),
        "queued_runs": rt.engine.queued(),
        "max_workers": rt.settings.max_workers,
    }
    components["scheduler"] = rt.scheduler.status()
    components["retention"] = rt.retention.status()
    ok = not any(c["status"] == "error" for c in components.values())
    body = HealthOut(
        status="ok" if ok else "degraded",
        version=__version__,
        uptime_seconds=round(time.time() - rt.started_at, 1),
        components=components,
    )
    return body if ok else JSONResponse(body.model_dump(mode="json"), status_code=503)


def root_info() -> dict[str, str]:
    return {
        "name": "FlexiRoaster",
        "version": __version__,
        "api": "/api/v1",
        "docs": "/docs",
        "health": "/api/v1/health",
    }


@router.get("/")
def api_root() -> dict[str, str]:
    return root_info()


@router.get("/settings")
def runtime_settings(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """The runtime's settings as it runs (secrets only as set / not set)."""
    s = rt.settings
    out: dict[str, Any] = {}
    for name in type(s).model_fields:
        value = getattr(s, name)
        if name == "api_token":
            out["api_token_set"] = value is not None
            continue
        out[name] = (
            str(value) if value is not None and not isinstance(value, int | float | bool) else value
        )
    out["store_file"] = str(s.store_file)
    out["pid"] = __import__("os").getpid()
    return out


@router.get("/audit", responses=documented(422))
def audit_log(
    rt: Runtime = Depends(runtime),
    target_type: str | None = Query(None, max_length=50),
    target_id: str | None = Query(None, max_length=200),
    action: str | None = Query(None, max_length=100),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**62),
) -> dict[str, Any]:
    """The append-only audit log, newest first: pipeline edits, schedule changes, manual runs,
    retries and cancels. `chain_ok` says whether every entry's hash chain checks out."""
    entries, total = rt.store.audit_log(
        target_type=target_type, target_id=target_id, action=action, limit=limit, offset=offset
    )
    bad = rt.store.verify_audit()
    return {
        "entries": [{**e, "created_at": e["created_at"].isoformat()} for e in entries],
        "total": total,
        "chain_ok": bad is None,
        "first_bad_id": bad,
    }
