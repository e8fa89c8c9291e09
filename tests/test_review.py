"""The review of insights over the real API: confidence bands, auto-apply, a person's decisions,
the audit trail, background recomputation and the pre-run risk gate."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.insights import MODEL_VERSION
from flexiroaster.review import PolicyIn
from flexiroaster.runtime import Runtime
from flexiroaster.scheduler import ScheduleIn
from flexiroaster.settings import Settings

from .conftest import serving
from .test_insights import history, streaky, write

AI = f"ai:{MODEL_VERSION}"
PIPE = """
name: {name}
stages:
  - {{id: extract, type: sql, config: {{query: "select range as x from range(10)"}}}}
  - {{id: transform, type: sql, dependencies: [extract], config: {{query: "select sum(x) as s from extract"}}}}
  - {{id: load, type: sql, dependencies: [transform], config: {{query: "select * from transform"}}}}
"""


@pytest.fixture
def rt(tmp_path):
    """A runtime whose store holds 300 hourly runs of `flaky` ending in 12 failures in a row (its
    next run is at critical risk) and of `steady` (never fails), each with a 2-hourly schedule."""
    settings = Settings(data_dir=tmp_path / "data", log_flush_interval=0.05, insights_interval=0.2)
    runtime = Runtime(settings)
    end = datetime.now(UTC)
    for name, failed, seed in (
        ("flaky", streaky(300, 3) + [True] * 12, 1),
        ("steady", [False] * 300, 2),
    ):
        runtime.save_pipeline(PIPE.format(name=name))
        write(runtime.store, history(name, failed, end=end, seed=seed))
        runtime.scheduler.create(
            ScheduleIn(name=f"{name}-2h", pipeline_id=name, type="interval", expression="2h")
        )
    yield runtime
    runtime.close()


@pytest.fixture
def http(rt):
    with serving(create_app(runtime=rt)) as base, httpx.Client(base_url=base, timeout=60) as h:
        yield h


def ok(resp: httpx.Response, status: int = 200) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()


def failure_risk(http, pipeline_id: str) -> dict:
    found = ok(http.get("/api/v1/insights", params={"pipeline_id": pipeline_id}))["insights"]
    (risk,) = [i for i in found if i["type"] == "failure_prediction"]
    return risk


def schedule_enabled(http, sid: str) -> bool:
    return ok(http.get(f"/api/v1/schedules/{sid}"))["enabled"]


def audit(http, **filters) -> list[dict]:
    return ok(http.get("/api/v1/audit", params={**filters, "limit": 500}))["entries"]


def set_policy(http, scope: str = "", **fields) -> dict:
    path = "/api/v1/insights/policy" + (f"/{scope}" if scope else "")
    return ok(http.put(path, json={"by": "ops lead", **fields}))


def test_nothing_applies_by_default_and_a_high_risk_waits_for_review(http):
    ok(http.post("/api/v1/insights/recompute"))
    policy = ok(http.get("/api/v1/insights/policy"))
    assert policy["global"] == {"high": 0.8, "medium": 0.5, "auto_apply": False, "risk_gate": False}
    risk = failure_risk(http, "flaky")
    assert risk["severity"] == "critical" and risk["confidence"] >= 0.8, risk
    assert risk["band"] == "high" and risk["status"] == "pending_review"
    assert risk["action"]["type"] == "pause_schedule"
    assert risk["action"]["schedule_ids"] == ["flaky-2h"]
    assert len(risk["input_hash"]) == 64 and risk["model_version"] == MODEL_VERSION
    assert schedule_enabled(http, "flaky-2h")  # high confidence alone does not act
    (entry,) = audit(http, target_type="insight", target_id=risk["id"])
    assert entry["actor"] == AI and entry["action"] == "insight.hold_for_review"
    assert entry["detail"]["input_hash"] == risk["input_hash"]
    assert entry["detail"]["model_version"] == MODEL_VERSION
    # steady's low risk proposes nothing to do
    assert failure_risk(http, "steady")["action"] is None


@pytest.mark.parametrize(
    ("band", "auto_apply", "status", "paused"),
    [
        ("high", False, "pending_review", False),
        ("high", True, "applied", True),
        ("medium", False, "pending_review", False),
        ("medium", True, "pending_review", False),
        ("low", False, "blocked", False),
        ("low", True, "blocked", False),
    ],
)
def test_each_confidence_band_with_auto_apply_on_and_off(http, band, auto_apply, status, paused):
    ok(http.post("/api/v1/insights/recompute"))
    c = failure_risk(http, "flaky")["confidence"]
    assert 0.05 < c < 0.99
    bounds = {
        "high": {"high": round(c - 0.01, 4), "medium": 0.0},
        "medium": {"high": round(c + 0.01, 4), "medium": round(c - 0.01, 4)},
        "low": {"high": 1.0, "medium": round(c + 0.01, 4)},
    }[band]
    # The thresholds and auto-apply of flaky's own policy; the global one stays default.
    set_policy(http, "flaky", auto_apply=auto_apply, **bounds)
    risk = failure_risk(http, "flaky")
    assert (risk["band"], risk["status"], risk["low_confidence"]) == (band, status, band == "low")
    assert schedule_enabled(http, "flaky-2h") is not paused
    assert schedule_enabled(http, "steady-2h")
    entries = audit(http, target_type="insight", target_id=risk["id"])
    if paused:
        assert risk["decided_by"] == AI
        applied = [e for e in entries if e["action"] == "insight.auto_apply"]
        assert applied and applied[0]["actor"] == AI
        assert applied[0]["detail"]["changes"] == [
            {"schedule_id": "flaky-2h", "before": {"enabled": True}, "after": {"enabled": False}}
        ]
        (pause,) = audit(
            http, target_type="schedule", target_id="flaky-2h", action="schedule.pause"
        )
        assert pause["actor"] == AI and pause["detail"]["insight_id"] == risk["id"]
    if band == "low":
        refused = http.post(f"/api/v1/insights/{risk['id']}/approve", json={"by": "ann"})
        assert (
            refused.status_code == 409 and "below the medium threshold" in refused.json()["detail"]
        )
        assert schedule_enabled(http, "flaky-2h")
    # Policy changes are audited with before and after.
    (change,) = audit(http, target_type="policy", target_id="flaky")
    assert change["actor"] == "ops lead" and change["detail"]["before"] is None
    assert change["detail"]["after"]["auto_apply"] is auto_apply


def test_approve_pauses_the_schedule_and_reject_changes_nothing(http, rt):
    ok(http.post("/api/v1/insights/recompute"))
    risk = failure_risk(http, "flaky")
    # reject first on a copy of the situation: nothing changes, the decision is audited
    rejected = ok(
        http.post(
            f"/api/v1/insights/{risk['id']}/reject",
            json={"by": "bob", "reason": "a known outage upstream, fixed"},
        )
    )
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "bob")
    assert schedule_enabled(http, "flaky-2h")
    (entry,) = [e for e in audit(http, target_id=risk["id"]) if e["action"] == "insight.reject"]
    assert entry["actor"] == "bob" and entry["detail"]["reason"] == "a known outage upstream, fixed"
    assert entry["detail"]["before"] == {"status": "pending_review"}
    assert "changes" not in entry["detail"]
    # A decided insight is not decided again, and a recomputation keeps the decision.
    again = http.post(f"/api/v1/insights/{risk['id']}/approve", json={"by": "ann"})
    assert again.status_code == 409
    ok(http.post("/api/v1/insights/recompute"))
    assert failure_risk(http, "flaky")["status"] == "rejected"

    # After a week the subject is open for review again; this time it is approved.
    rt.review.recompute(datetime.now(UTC) + timedelta(days=8))
    reopened = failure_risk(http, "flaky")
    assert reopened["status"] == "pending_review", reopened
    approved = ok(
        http.post(f"/api/v1/insights/{risk['id']}/approve", json={"by": "ann", "reason": "agreed"})
    )
    assert (approved["status"], approved["decided_by"]) == ("approved", "ann")
    assert not schedule_enabled(http, "flaky-2h")
    (entry,) = [e for e in audit(http, target_id=risk["id"]) if e["action"] == "insight.approve"]
    assert entry["actor"] == "ann"
    # the insight's whole story is one trace: the policy's hold, the rejection, the approval
    story = [e for e in audit(http) if e["trace_id"] == f"insight:{risk['id']}"]
    assert [e["action"] for e in reversed(story)] == [
        "insight.hold_for_review", "insight.reject", "insight.hold_for_review", "insight.approve"
    ]  # fmt: skip
    assert entry["detail"]["changes"] == [
        {"schedule_id": "flaky-2h", "before": {"enabled": True}, "after": {"enabled": False}}
    ]
    assert entry["detail"]["input_hash"] == reopened["input_hash"]
    (pause,) = audit(http, target_id="flaky-2h", action="schedule.pause")
    assert pause["actor"] == "ann"
    assert ok(http.get("/api/v1/audit", params={"limit": 1}))["chain_ok"] is True


def test_dismiss_snooze_and_bad_decisions(http):
    ok(http.post("/api/v1/insights/recompute"))
    found = ok(http.get("/api/v1/insights", params={"pipeline_id": "steady"}))["insights"]
    first, second = found[0], found[1]
    assert (
        http.post(f"/api/v1/insights/{first['id']}/dismiss", json={"by": "ann"}).status_code == 422
    )
    assert (
        http.post(
            f"/api/v1/insights/{first['id']}/dismiss", json={"by": "", "reason": "x"}
        ).status_code
        == 422
    )
    assert (
        http.post("/api/v1/insights/nope/dismiss", json={"by": "a", "reason": "x"}).status_code
        == 404
    )
    done = ok(
        http.post(f"/api/v1/insights/{first['id']}/dismiss", json={"by": "ann", "reason": "noise"})
    )
    assert done["status"] == "dismissed"
    bad = http.post(
        f"/api/v1/insights/{second['id']}/snooze", json={"by": "ann", "reason": "later"}
    )
    assert bad.status_code == 422 and "until" in bad.json()["detail"]
    snoozed = ok(
        http.post(
            f"/api/v1/insights/{second['id']}/snooze",
            json={"by": "ann", "reason": "later", "hours": 2},
        )
    )
    assert snoozed["status"] == "snoozed"
    until = datetime.fromisoformat(snoozed["snoozed_until"])
    assert timedelta(hours=1.9) < until - datetime.now(UTC) < timedelta(hours=2.1)
    # No action to approve on an insight that proposes none.
    risk = failure_risk(http, "steady")
    refused = http.post(f"/api/v1/insights/{risk['id']}/approve", json={"by": "ann"})
    assert refused.status_code == 409 and "no action" in refused.json()["detail"]
    # medium above high is refused, naming the policy
    bad = http.put("/api/v1/insights/policy", json={"by": "ann", "medium": 0.9, "high": 0.6})
    assert bad.status_code == 422 and "global policy" in bad.json()["detail"]
    assert http.put("/api/v1/insights/policy/nope", json={"by": "ann"}).status_code == 404
    actions = {e["action"] for e in audit(http, target_type="insight") if e["actor"] == "ann"}
    assert actions == {"insight.dismiss", "insight.snooze"}


def test_a_short_history_says_so_and_is_blocked(http, rt):
    rt.save_pipeline(PIPE.format(name="newbie"))
    write(rt.store, history("newbie", [False, True, False, False], end=datetime.now(UTC)))
    ok(http.post("/api/v1/insights/recompute"))
    risk = failure_risk(http, "newbie")
    assert risk["confidence"] <= 0.2 and risk["band"] == "low" and risk["low_confidence"]
    assert risk["status"] == "blocked"
    assert (
        "too short to be sure" in risk["explanation"]
        and "only 4 finished run(s)" in risk["explanation"]
    )


def test_insights_are_recomputed_after_runs_without_holding_them_up(http, rt):
    rt.start()
    deadline = time.monotonic() + 30
    while rt.review.last is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rt.review.last is not None  # computed once at start
    rt.save_pipeline(PIPE.format(name="fresh"))
    ran = ok(http.post("/api/v1/executions", json={"pipeline_id": "fresh"}), 202)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = ok(http.get(f"/api/v1/executions/{ran['id']}"))
        if run["status"] == "completed":
            break
        time.sleep(0.05)
    assert run["status"] == "completed"
    done_at = datetime.fromisoformat(run["completed_at"])
    # within a few seconds, the next computation covers the run: an insight about `fresh`
    while time.monotonic() < deadline:
        found = ok(http.get("/api/v1/insights", params={"pipeline_id": "fresh"}))
        if found["insights"]:
            break
        time.sleep(0.1)
    assert found["insights"] and datetime.fromisoformat(found["computed_at"]) >= done_at
    assert failure_risk(http, "fresh")["data"]["runs"] == 1  # the one finished run


def test_the_risk_gate_holds_a_critical_run_until_released(http, rt):
    ok(http.post("/api/v1/insights/recompute"))
    # off by default: a run starts
    free = ok(http.post("/api/v1/executions", json={"pipeline_id": "flaky"}), 202)
    assert free["status"] != "held"
    set_policy(http, "flaky", risk_gate=True)
    held = ok(http.post("/api/v1/executions", json={"pipeline_id": "flaky"}), 202)
    other = ok(http.post("/api/v1/executions", json={"pipeline_id": "flaky"}), 202)
    steady = ok(http.post("/api/v1/executions", json={"pipeline_id": "steady"}), 202)
    assert (held["status"], other["status"]) == ("held", "held")
    assert steady["status"] != "held"  # its policy has no gate, and its risk is low
    time.sleep(0.5)
    assert ok(http.get(f"/api/v1/executions/{held['id']}"))["status"] == "held"
    logs = ok(http.get(f"/api/v1/executions/{held['id']}/logs"))["logs"]
    assert any("held by the risk gate" in line["message"] for line in logs)
    (hold,) = audit(http, target_id=held["id"], action="run.hold")
    assert hold["actor"] == AI and hold["detail"]["probability"] > 0.7
    # releasing needs a name; a run that is not held cannot be released
    assert http.post(f"/api/v1/executions/{held['id']}/release", json={}).status_code == 422
    assert (
        http.post(f"/api/v1/executions/{free['id']}/release", json={"by": "a"}).status_code == 409
    )
    released = ok(
        http.post(
            f"/api/v1/executions/{held['id']}/release",
            json={"by": "ann", "reason": "fixed upstream"},
        ),
        202,
    )
    assert released["status"] in ("pending", "running", "completed")
    (rel,) = audit(http, target_id=held["id"], action="run.release")
    assert rel["actor"] == "ann" and rel["detail"]["reason"] == "fixed upstream"
    cancelled = ok(http.post(f"/api/v1/executions/{other['id']}/cancel"), 202)
    assert cancelled["status"] == "cancelled"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ok(http.get(f"/api/v1/executions/{held['id']}"))["status"] == "completed":
            break
        time.sleep(0.05)
    assert ok(http.get(f"/api/v1/executions/{held['id']}"))["status"] == "completed"


def test_a_held_run_left_at_shutdown_is_cancelled_not_failed(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", log_flush_interval=0.05)
    rt = Runtime(settings)
    rt.save_pipeline(PIPE.format(name="flaky"))
    write(rt.store, history("flaky", streaky(300, 3) + [True] * 12, end=datetime.now(UTC), seed=1))
    rt.review.recompute()
    rt.review.set_policy("flaky", PolicyIn(risk_gate=True, medium=0.0), "ann")
    rec = rt.trigger("flaky")
    assert rec.status == "held"
    rt.store.close()  # the process "dies" with the run held: no engine shutdown
    rt2 = Runtime(settings)
    try:
        after = rt2.store.get_execution(rec.id)
        assert after.status == "cancelled" and "held" in after.error
    finally:
        rt2.close()
