"""Insights: list and read them, decide on them (approve / reject / dismiss / snooze), recompute
them, and set the review policy (confidence thresholds, auto-apply, risk gate)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..history import InsightType, Severity
from ..records import now
from ..review import Band, PolicyIn
from ..runtime import Runtime
from .deps import MAX_OFFSET, require_token, runtime
from .errors import documented
from .models import IsoTime

router = APIRouter(prefix="/insights", tags=["insights"])

Status = Literal[
    "open", "pending_review", "blocked", "applied", "approved", "rejected", "dismissed", "snoozed",
    "expired",
]  # fmt: skip
Who = Field(min_length=1, max_length=200, description="Who decides (a person's name)")


class InsightOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    pipeline_id: str
    stage_id: str | None
    type: InsightType
    severity: Severity
    confidence: float
    band: Band = Field(description="high / medium / low against the pipeline's review policy")
    low_confidence: bool = Field(description="Below the medium threshold: shown, never acted on")
    status: Status
    title: str
    explanation: str
    evidence: list[str] = Field(description="Ids of the runs the insight rests on")
    data: dict[str, Any]
    action: dict[str, Any] | None = Field(description="What approving it changes, if anything")
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    model_version: str
    input_hash: str = Field(description="SHA-256 of the model inputs it was computed from")
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    snoozed_until: datetime | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> InsightOut:
        fields = {k: row[k] for k in cls.model_fields if k in row}
        return cls(**fields, low_confidence=row["band"] == "low")


class InsightList(BaseModel):
    insights: list[InsightOut]
    total: int
    computed_at: datetime | None = Field(description="When insights were last recomputed")


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Who
    reason: str | None = Field(None, max_length=2000)


class ReasonedIn(DecisionIn):
    reason: str = Field(min_length=1, max_length=2000, description="Why (kept in the audit log)")


class SnoozeIn(ReasonedIn):
    until: IsoTime | None = Field(None, description="Snoozed until (ISO 8601)")
    hours: float | None = Field(None, gt=0, le=24 * 365, description="Or: snoozed this long")

    @model_validator(mode="after")
    def _one_time(self) -> SnoozeIn:
        if (self.until is None) == (self.hours is None):
            raise ValueError("give exactly one of `until` and `hours`")
        return self


class RecomputeOut(BaseModel):
    insights: int
    created: int
    updated: int
    kept: int
    expired: int
    computed_at: datetime
    seconds: float = Field(description="Seconds the models took")


class PolicyValues(BaseModel):
    high: float
    medium: float
    auto_apply: bool
    risk_gate: bool


class PolicyOut(BaseModel):
    global_: PolicyValues = Field(alias="global")
    pipelines: dict[str, dict[str, Any]] = Field(description="Per-pipeline overrides")
    safe_actions: list[str] = Field(description="Actions auto-apply may carry out")


class PolicyUpdate(PolicyIn):
    by: str = Who


def _policy(rt: Runtime) -> PolicyOut:
    from ..review import SAFE_ACTIONS

    return PolicyOut(**rt.review.policies(), safe_actions=sorted(SAFE_ACTIONS))


@router.get("", response_model=InsightList, responses=documented(422))
def list_insights(
    rt: Runtime = Depends(runtime),
    pipeline_id: str | None = Query(None, max_length=200),
    type: InsightType | None = None,
    severity: Severity | None = None,
    status: Status | None = Query(None, description="Default: every status but expired"),
    band: Band | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> InsightList:
    """Insights, most severe and most confident first."""
    rows, total = rt.review.list(
        pipeline_id=pipeline_id, type=type, severity=severity, status=status, band=band,
        limit=limit, offset=offset,
    )  # fmt: skip
    last = rt.review.last
    return InsightList(
        insights=[InsightOut.of(r) for r in rows],
        total=total,
        computed_at=last["computed_at"] if last else None,
    )


@router.post(
    "/recompute",
    response_model=RecomputeOut,
    responses=documented(401),
    dependencies=[Depends(require_token)],
)
def recompute(rt: Runtime = Depends(runtime)) -> RecomputeOut:
    """Fit the models on the history now and store the insights (this also happens by itself
    after runs finish)."""
    return RecomputeOut(**rt.review.recompute())


@router.get("/policy", response_model=PolicyOut, response_model_by_alias=True)
def get_policy(rt: Runtime = Depends(runtime)) -> PolicyOut:
    """The global review policy and each pipeline's overrides."""
    return _policy(rt)


@router.put(
    "/policy",
    response_model=PolicyOut,
    response_model_by_alias=True,
    responses=documented(400, 401, 413, 422),
    dependencies=[Depends(require_token)],
)
def set_global_policy(body: PolicyUpdate, rt: Runtime = Depends(runtime)) -> PolicyOut:
    """Change the global policy; fields left out keep their value. Audited."""
    rt.review.set_policy("*", PolicyIn(**body.model_dump(exclude={"by"})), body.by)
    return _policy(rt)


@router.put(
    "/policy/{pipeline_id}",
    response_model=PolicyOut,
    response_model_by_alias=True,
    responses=documented(400, 401, 404, 413, 422),
    dependencies=[Depends(require_token)],
)
def set_pipeline_policy(
    pipeline_id: str, body: PolicyUpdate, rt: Runtime = Depends(runtime)
) -> PolicyOut:
    """Give a pipeline its own policy; fields left out follow the global one. Audited."""
    rt.review.set_policy(pipeline_id, PolicyIn(**body.model_dump(exclude={"by"})), body.by)
    return _policy(rt)


@router.delete(
    "/policy/{pipeline_id}",
    response_model=PolicyOut,
    response_model_by_alias=True,
    responses=documented(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def delete_pipeline_policy(
    pipeline_id: str,
    rt: Runtime = Depends(runtime),
    by: str = Query(min_length=1, max_length=200, description="Who removes it"),
) -> PolicyOut:
    """The pipeline follows the global policy again. Audited."""
    rt.review.delete_policy(pipeline_id, by)
    return _policy(rt)


@router.get("/{insight_id}", response_model=InsightOut, responses=documented(404, 422))
def get_insight(insight_id: str, rt: Runtime = Depends(runtime)) -> InsightOut:
    return InsightOut.of(rt.review.get(insight_id))


DECIDE = {
    "responses": documented(400, 401, 404, 409, 413, 422),
    "dependencies": [Depends(require_token)],
    "response_model": InsightOut,
}


@router.post("/{insight_id}/approve", **DECIDE)
def approve(insight_id: str, body: DecisionIn, rt: Runtime = Depends(runtime)) -> InsightOut:
    """Carry out the insight's action (e.g. pause the schedule). Refused (409) for an insight
    without an action or below the medium confidence threshold. Audited with before/after."""
    return InsightOut.of(rt.review.decide(insight_id, "approve", body.by, body.reason))


@router.post("/{insight_id}/reject", **DECIDE)
def reject(insight_id: str, body: ReasonedIn, rt: Runtime = Depends(runtime)) -> InsightOut:
    """Decide against the insight's action; nothing changes. Audited."""
    return InsightOut.of(rt.review.decide(insight_id, "reject", body.by, body.reason))


@router.post("/{insight_id}/dismiss", **DECIDE)
def dismiss(insight_id: str, body: ReasonedIn, rt: Runtime = Depends(runtime)) -> InsightOut:
    """Hide the insight (it returns only if its severity worsens, or after a week). Audited."""
    return InsightOut.of(rt.review.decide(insight_id, "dismiss", body.by, body.reason))


@router.post("/{insight_id}/snooze", **DECIDE)
def snooze(insight_id: str, body: SnoozeIn, rt: Runtime = Depends(runtime)) -> InsightOut:
    """Hide the insight until a time. Audited."""
    until = body.until or now() + timedelta(hours=body.hours or 0)
    return InsightOut.of(rt.review.decide(insight_id, "snooze", body.by, body.reason, until))
