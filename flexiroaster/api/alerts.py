"""Alerts (list, read with their deliveries, acknowledge, resolve) and alert rules (CRUD)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from ..alert_rules import Rule, RuleIn, RuleKind, Severity, as_row
from ..alerts import Alert, AlertStatus
from ..runtime import Runtime
from ..webhooks import Delivery, Notification
from .deps import MAX_OFFSET, require_token, runtime
from .errors import documented
from .models import _Out

router = APIRouter(tags=["alerts"])


class AlertOut(_Out):
    id: str
    rule_id: str
    pipeline_id: str
    kind: RuleKind
    severity: Severity
    status: AlertStatus
    title: str
    message: str = Field(description="What happened at the latest occurrence")
    evidence: list[str] = Field(description="Ids of the runs behind it (the latest 50)")
    occurrences: int
    created_at: datetime
    last_seen_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    resolved_by: str | None = Field(description='A person, or "auto" when the condition cleared')
    resolved_at: datetime | None
    resolution: str | None

    @classmethod
    def of(cls, a: Alert) -> AlertOut:
        return cls(**as_row(a))


class NotificationOut(_Out):
    id: str = Field(description="Sent as X-FlexiRoaster-Delivery")
    alert_id: str
    url: str
    status: Delivery
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, n: Notification) -> NotificationOut:
        return cls(**as_row(n))


class AlertDetail(AlertOut):
    notifications: list[NotificationOut] = Field(description="Its webhook deliveries")


class AlertList(_Out):
    alerts: list[AlertOut]
    total: int


class PersonIn(BaseModel):
    """Who acknowledges or resolves an alert, and why."""

    model_config = ConfigDict(extra="forbid", strict=True)
    by: str = Field(min_length=1, max_length=200, pattern=r"\S", description="A person's name")
    note: str | None = Field(None, max_length=2000)


class RuleOut(_Out):
    id: str
    name: str
    kind: RuleKind
    pipeline_id: str | None = Field(description="None: every pipeline")
    threshold: float | None
    window_runs: int | None
    severity: Severity
    webhooks: list[str]
    channels: list[str] = Field(description="Stored smtp / webhook connections it notifies")
    recipients: list[str]
    subject: str | None = Field(description="Message subject template (null: the default)")
    body: str | None = Field(description="Message text template (null: the default)")
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, r: Rule) -> RuleOut:
        return cls(**as_row(r))


class RuleList(_Out):
    rules: list[RuleOut]
    total: int


# --- alerts -----------------------------------------------------------------------------------


@router.get("/alerts", response_model=AlertList, responses=documented(422))
def list_alerts(
    rt: Runtime = Depends(runtime),
    status: Literal["open", "acknowledged", "resolved", "active"] | None = Query(
        None, description="active: open or acknowledged"
    ),
    pipeline_id: str | None = Query(None, max_length=200),
    severity: Severity | None = None,
    rule_id: str | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> AlertList:
    """Alerts, newest first."""
    found, total = rt.alerts.alerts(
        status=status, pipeline_id=pipeline_id, severity=severity, rule_id=rule_id,
        limit=limit, offset=offset,
    )  # fmt: skip
    return AlertList(alerts=[AlertOut.of(a) for a in found], total=total)


@router.get("/alerts/{alert_id}", response_model=AlertDetail, responses=documented(404, 422))
def get_alert(alert_id: str, rt: Runtime = Depends(runtime)) -> AlertDetail:
    """An alert with the delivery state of each of its webhook notifications."""
    a = rt.alerts.get(alert_id)
    sent = [NotificationOut.of(n) for n in rt.alerts.notifications(alert_id)]
    return AlertDetail(**AlertOut.of(a).model_dump(), notifications=sent)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def acknowledge_alert(alert_id: str, body: PersonIn, rt: Runtime = Depends(runtime)) -> AlertOut:
    """Someone is on it. 409 once resolved; an acknowledged alert still resolves itself when
    its condition clears."""
    return AlertOut.of(rt.alerts.acknowledge(alert_id, body.by, body.note))


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=AlertOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def resolve_alert(alert_id: str, body: PersonIn, rt: Runtime = Depends(runtime)) -> AlertOut:
    """Close an open or acknowledged alert (409 when it is resolved already)."""
    return AlertOut.of(rt.alerts.resolve(alert_id, body.by, body.note))


# --- rules ------------------------------------------------------------------------------------


@router.get("/alert-rules", response_model=RuleList)
def list_rules(rt: Runtime = Depends(runtime)) -> RuleList:
    found = rt.alerts.rules()
    return RuleList(rules=[RuleOut.of(r) for r in found], total=len(found))


@router.post(
    "/alert-rules",
    status_code=201,
    response_model=RuleOut,
    responses=documented(400, 401, 404, 409, 413, 422),
    dependencies=[Depends(require_token)],
)
def create_rule(body: RuleIn, rt: Runtime = Depends(runtime)) -> RuleOut:
    """A new rule; its id is made from its name. 404 names an unknown pipeline_id."""
    return RuleOut.of(rt.alerts.create_rule(body))


@router.get("/alert-rules/{rule_id}", response_model=RuleOut, responses=documented(404, 422))
def get_rule(rule_id: str, rt: Runtime = Depends(runtime)) -> RuleOut:
    return RuleOut.of(rt.alerts.rule(rule_id))


@router.put(
    "/alert-rules/{rule_id}",
    response_model=RuleOut,
    responses=documented(400, 401, 404, 413, 422),
    dependencies=[Depends(require_token)],
)
def update_rule(rule_id: str, body: RuleIn, rt: Runtime = Depends(runtime)) -> RuleOut:
    """Replace a rule (its id stays). Its unresolved alerts of another kind or pipeline are
    resolved ("rule changed")."""
    return RuleOut.of(rt.alerts.update_rule(rule_id, body))


@router.delete(
    "/alert-rules/{rule_id}",
    status_code=204,
    responses=documented(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def delete_rule(rule_id: str, rt: Runtime = Depends(runtime)) -> Response:
    """Delete a rule; its unresolved alerts are resolved ("rule deleted")."""
    rt.alerts.delete_rule(rule_id)
    return Response(status_code=204)
