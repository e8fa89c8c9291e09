"""Insights under review: the safety policy between what the models say and what changes.

Each computed insight (insights.py) is kept in the store under its subject's id and put in a
confidence band by the review policy (global thresholds, overridable per pipeline):

- `high` (confidence >= high): an action on SAFE_ACTIONS applies at once, but only where
  `auto_apply` is on (off by default); otherwise it waits for a person's review;
- `medium` (medium <= confidence < high): it waits for a person's review (`pending_review`);
- `low` (below medium): it is `blocked` and shown as low-confidence; it cannot be approved.

A person approves (the action applies), rejects (nothing changes), dismisses or snoozes, with
a reason. Every decision, the policy's own and each person's, goes to the audit log with the
insight's confidence, band, model version and the hash of its model inputs.

The optional pre-run risk gate (`risk_gate`, off by default) holds a new run of a pipeline whose
next-run failure risk is critical, not dismissed or rejected and at least medium-confidence,
until a person releases or cancels it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import Conflict, FlexiError, NotFound
from .history import MODEL_VERSION, Insight
from .insights_job import InsightsJob
from .records import now

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

Band = Literal["high", "medium", "low"]
SAFE_ACTIONS = frozenset({"pause_schedule"})  # actions the policy may apply on its own
REOPEN_AFTER = timedelta(days=7)  # a decision stands this long unless the severity worsens
ACTIVE = ("open", "pending_review", "blocked")
COST_SHARE = 10  # recomputations are spaced by at least 10 times their own duration
QUIET, MAX_DEFER = 2.0, 300.0  # wait for 2 s without a finished run, for 5 min at most
DECIDED = ("approved", "applied", "rejected", "dismissed")
_DECISION = ("status", "decided_by", "decided_at", "reason", "snoozed_until", "decided_severity",
             "created_at")  # fmt: skip
RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
AI = f"ai:{MODEL_VERSION}"


def _trace(insight_id: str) -> str:
    """The trace id of every audit entry about one insight: its story reads as one trace."""
    return f"insight:{insight_id}"


class InvalidPolicy(FlexiError):
    status = 422
    code = "invalid_request"


class PolicyIn(BaseModel):
    """Review policy fields; in a per-pipeline override, a field left out follows the global."""

    model_config = ConfigDict(extra="forbid")
    high: float | None = Field(
        None, ge=0, le=1, strict=True, description="Confidence from which the band is high"
    )
    medium: float | None = Field(
        None,
        ge=0,
        le=1,
        strict=True,
        description="Confidence from which the band is medium (below: blocked)",
    )
    auto_apply: bool | None = Field(
        None, strict=True, description="Apply safe actions of high-band insights without review"
    )
    risk_gate: bool | None = Field(
        None, strict=True, description="Hold new runs whose predicted failure risk is critical"
    )


@dataclass(frozen=True)
class Policy:
    high: float = 0.8
    medium: float = 0.5
    auto_apply: bool = False
    risk_gate: bool = False

    def band(self, confidence: float) -> Band:
        if confidence >= self.high:
            return "high"
        return "medium" if confidence >= self.medium else "low"

    def merged(self, override: dict[str, Any] | None) -> Policy:
        given = {k: v for k, v in (override or {}).items() if k in _POLICY_FIELDS and v is not None}
        return replace(self, **given)


_POLICY_FIELDS = ("high", "medium", "auto_apply", "risk_gate")


class Review:
    """Keeps the stored insights in step with the run history and the policy; recomputes them
    on its own thread after runs finish (at most every `settings.insights_interval` s)."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.store = rt.store
        self._lock = threading.RLock()  # one recomputation or decision at a time
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None  # figures of the latest recomputation
        self._rows: dict[str, dict[str, Any]] | None = None  # policy rows (see _policy_rows)
        self._job = InsightsJob()  # the computation runs in a child process
        self._last_finish = -math.inf  # monotonic time the latest run finished
        rt.engine.on_finish.append(self._on_finish)

    # --- background recomputation -----------------------------------------------------------

    def _on_finish(self, _rec: Any) -> None:
        self._last_finish = time.monotonic()
        self._dirty.set()

    def start(self) -> None:
        if self._thread is None:
            self._dirty.set()  # once at start: the history may have grown while stopped
            self._thread = threading.Thread(target=self._loop, name="insights", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._job.kill()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        """Recompute when runs have finished, at most every insights_interval s and never
        more than 1/COST_SHARE of the time: a computation that took 4 s waits 40 s for the
        next, so a big history cannot keep a core busy while the API serves. And it waits for
        a quiet moment (no run finished for QUIET s), for MAX_DEFER s at most."""
        gap, last = 0.0, -math.inf
        while not self._stop.is_set():
            if not self._dirty.wait(0.25):
                continue
            if self._stop.wait(max(0.0, last + gap - time.monotonic())):
                return
            deferred = time.monotonic()
            while time.monotonic() - self._last_finish < QUIET:
                if time.monotonic() - deferred > MAX_DEFER or self._stop.wait(0.25):
                    break
            if self._stop.is_set():
                return
            self._dirty.clear()
            began = time.monotonic()
            try:
                self.recompute()
            except Exception:  # a bad history must not stop later recomputations
                if not self._stop.is_set():
                    log.exception("insight recomputation failed")
            last = time.monotonic()
            gap = max(self.rt.settings.insights_interval, COST_SHARE * (last - began))

    # --- policy -----------------------------------------------------------------------------

    def _policy_rows(self) -> dict[str, dict[str, Any]]:
        """The stored policy rows by scope, kept in memory: this is their only writer, and
        every trigger asks the risk gate (a store read there would wait for the flusher)."""
        if self._rows is None:
            self._rows = {r["scope"]: r for r in self.store.rows("policies", order="scope")}
        return self._rows

    def policy(self, pipeline_id: str | None = None) -> Policy:
        rows = self._policy_rows()
        pol = Policy().merged(rows.get("*"))
        return pol.merged(rows.get(pipeline_id)) if pipeline_id else pol

    def policies(self) -> dict[str, Any]:
        rows = dict(sorted(self._policy_rows().items()))
        overrides = {
            scope: {k: r[k] for k in _POLICY_FIELDS if r[k] is not None}
            for scope, r in rows.items()
            if scope != "*"
        }
        return {"global": asdict(self.policy()), "pipelines": overrides}

    def set_policy(self, scope: str, body: PolicyIn, by: str) -> dict[str, Any]:
        """Set the global policy (`scope` "*": fields not given keep their value) or a
        pipeline's override (it holds exactly the fields sent; the rest follow the global)."""
        if scope != "*" and not self.store.has_pipeline(scope):
            raise NotFound(f"no pipeline {scope!r}")
        with self._lock:
            before = self.policies()
            given = body.model_dump()
            if scope == "*":
                given = {k: before["global"][k] if v is None else v for k, v in given.items()}
            overrides = (
                {**before["pipelines"], scope: given} if scope != "*" else before["pipelines"]
            )
            glob = Policy().merged(given if scope == "*" else before["global"])
            for where, pol in [("*", glob), *((p, glob.merged(o)) for p, o in overrides.items())]:
                if pol.medium > pol.high:
                    name = "the global policy" if where == "*" else f"pipeline {where}'s policy"
                    raise InvalidPolicy(
                        f"{name}: medium ({pol.medium}) must not be above high ({pol.high})"
                    )
            self.store.put_rows(
                "policies", [{"scope": scope, **given, "updated_at": now(), "updated_by": by}]
            )
            self._rows = None
            self._audit_policy(scope, by, before)
        self._regate()
        return self.policies()

    def delete_policy(self, pipeline_id: str, by: str) -> dict[str, Any]:
        with self._lock:
            before = self.policies()
            if pipeline_id not in before["pipelines"]:
                raise NotFound(f"pipeline {pipeline_id!r} has no policy of its own")
            self.store.delete_rows("policies", "scope = ?", [pipeline_id])
            self._rows = None
            self._audit_policy(pipeline_id, by, before)
        self._regate()
        return self.policies()

    def _audit_policy(self, scope: str, by: str, before: dict[str, Any]) -> None:
        after = self.policies()
        pick = (lambda p: p["global"]) if scope == "*" else (lambda p: p["pipelines"].get(scope))
        self.store.audit(
            by, "policy.update", "policy", scope, {"before": pick(before), "after": pick(after)}
        )

    def _regate(self) -> None:
        """Re-band the undecided insights under a changed policy (thresholds moved)."""
        with self._lock:
            rows = self.store.rows("insights", "status IN ('open', 'pending_review', 'blocked')")
            self.store.put_rows("insights", [self._gate(r, now(), r) for r in rows])

    # --- recomputation ----------------------------------------------------------------------

    def recompute(self, at: datetime | None = None) -> dict[str, Any]:
        """Compute every insight from the history and store it. New subjects are banded and
        gated, undecided ones re-banded; a decision (or a snooze) stands, with the insight's
        figures kept current, for REOPEN_AFTER (or until its time), unless the severity
        worsens; subjects no longer found expire."""
        at = at or now()
        started = time.perf_counter()
        found = self._job.compute(self.store, at)
        took = time.perf_counter() - started
        with self._lock:
            existing = {r["id"]: r for r in self.store.rows("insights")}
            timed = self._timed_schedules()
            out, counts = [], {"created": 0, "updated": 0, "kept": 0, "expired": 0}
            for ins in found:
                old = existing.pop(ins.id, None)
                row = self._row(ins, timed.get(ins.pipeline_id, []))
                if old is not None and self._decision_stands(old, ins, at):
                    row.update({k: old[k] for k in _DECISION})
                    row["band"] = self.policy(row["pipeline_id"]).band(row["confidence"])
                    out.append(row)
                    counts["kept"] += 1
                    continue
                active = old is not None and old["status"] in ACTIVE
                if active:
                    row["created_at"] = old["created_at"]
                out.append(self._gate(row, at, old if active else None))
                counts["updated" if active else "created"] += 1
            for old in existing.values():
                if old["status"] in (*ACTIVE, "snoozed"):
                    out.append({**old, "status": "expired", "updated_at": at})
                    counts["expired"] += 1
            self.store.put_rows("insights", out)
        self.last = {
            "insights": len(found), **counts, "computed_at": at, "seconds": round(took, 3),
            "child_peak_rss_mb": self._job.peak_rss_mb,
        }  # fmt: skip
        return self.last

    def _timed_schedules(self) -> dict[str, list[str]]:
        """Enabled cron/interval schedule ids by pipeline (what a pause would stop)."""
        out: dict[str, list[str]] = {}
        for s in self.rt.scheduler.schedules():
            if s.enabled and s.type in ("cron", "interval"):
                out.setdefault(s.pipeline_id, []).append(s.id)
        return out

    @staticmethod
    def _decision_stands(old: dict[str, Any], ins: Insight, at: datetime) -> bool:
        if old["status"] == "snoozed":
            return old["snoozed_until"] is not None and at < old["snoozed_until"]
        if old["status"] not in DECIDED or old["decided_at"] is None:
            return False
        worse = RANK[ins.severity] < RANK[old["decided_severity"] or ins.severity]
        return at - old["decided_at"] < REOPEN_AFTER and not worse

    @staticmethod
    def _row(ins: Insight, schedules: list[str]) -> dict[str, Any]:
        action = None
        if ins.type == "failure_prediction" and ins.severity in ("critical", "high") and schedules:
            action = {
                "type": "pause_schedule",
                "schedule_ids": schedules,
                "description": f"Pause the schedule(s) {', '.join(schedules)} of"
                f" {ins.pipeline_id} until its failures are understood",
            }
        return {
            "id": ins.id, "pipeline_id": ins.pipeline_id, "stage_id": ins.stage_id,
            "type": ins.type, "severity": ins.severity, "confidence": ins.confidence,
            "title": ins.title, "explanation": ins.explanation, "evidence": ins.evidence,
            "data": ins.data, "created_at": ins.created_at, "updated_at": ins.created_at,
            "expires_at": ins.expires_at, "model_version": ins.model_version,
            "input_hash": ins.input_hash, "action": action, "band": "low", "status": "open",
            "decided_by": None, "decided_at": None, "reason": None, "snoozed_until": None,
            "decided_severity": None,
        }  # fmt: skip

    def _gate(self, row: dict[str, Any], at: datetime, before: dict[str, Any] | None) -> dict:
        """`row` banded by its pipeline's policy, with the status the policy gives it; the
        decision is audited when band or status differ from `before` (the stored row)."""
        pol = self.policy(row["pipeline_id"])
        band = pol.band(row["confidence"])
        action = row["action"]
        if band == "low":
            status = "blocked"
        elif action is None:
            status = "open"
        elif band == "high" and pol.auto_apply and action["type"] in SAFE_ACTIONS:
            status = "applied"
        else:
            status = "pending_review"
        new = {**row, "band": band, "status": status}
        if before is not None and (before["band"], before["status"]) == (band, status):
            return new
        new["updated_at"] = at
        detail = {
            **self._evidence(new), "policy": asdict(pol),
            "before": {"band": before["band"], "status": before["status"]} if before else None,
        }  # fmt: skip
        if status == "applied":
            detail["changes"] = self._apply(action, AI, new)
            new.update(decided_by=AI, decided_at=at, reason="auto-applied: high confidence",
                       decided_severity=new["severity"])  # fmt: skip
        verb = {"blocked": "block", "open": "open", "pending_review": "hold_for_review",
                "applied": "auto_apply"}[status]  # fmt: skip
        self.store.audit(AI, f"insight.{verb}", "insight", new["id"], detail, _trace(new["id"]))
        return new

    @staticmethod
    def _evidence(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "pipeline_id": row["pipeline_id"], "type": row["type"], "title": row["title"],
            "severity": row["severity"], "confidence": row["confidence"], "band": row["band"],
            "action": row["action"], "model_version": row["model_version"],
            "input_hash": row["input_hash"],
        }  # fmt: skip

    def _apply(self, action: dict[str, Any], actor: str, row: dict[str, Any]) -> list[dict]:
        """Carry out an action; returns what changed (before/after per target)."""
        if action["type"] != "pause_schedule":
            raise Conflict(f"unknown action {action['type']!r}")
        changes = []
        for sid in action["schedule_ids"]:
            try:
                s = self.rt.scheduler.get(sid)
            except NotFound:
                changes.append({"schedule_id": sid, "before": None, "after": None})
                continue
            if s.enabled:
                self.rt.scheduler.pause(sid, actor, {"insight_id": row["id"]})
            changes.append({"schedule_id": sid, "before": {"enabled": s.enabled},
                            "after": {"enabled": False}})  # fmt: skip
        return changes

    # --- reading ------------------------------------------------------------------------------

    def get(self, insight_id: str) -> dict[str, Any]:
        found = self.store.rows("insights", "id = ?", [insight_id])
        if not found:
            raise NotFound(f"no insight {insight_id!r}")
        return found[0]

    def list(
        self,
        *,
        pipeline_id: str | None = None,
        type: str | None = None,
        severity: str | None = None,
        status: str | None = None,
        band: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Insights, most severe and most confident first; expired ones only when asked for."""
        from .store import _filters

        cond, args = _filters(
            ("pipeline_id = ?", pipeline_id), ("type = ?", type), ("severity = ?", severity),
            ("status = ?", status), ("band = ?", band),
        )  # fmt: skip
        if status is None:
            cond += " AND status <> 'expired'"
        rank = "CASE severity " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in RANK.items()) + " END"
        rows = self.store.rows(
            "insights", cond, args, order=f"{rank}, confidence DESC, pipeline_id, id",
            limit=limit, offset=offset,
        )  # fmt: skip
        return rows, self.store.count("insights", cond, args)

    # --- a person's decisions -----------------------------------------------------------------

    def decide(
        self,
        insight_id: str,
        decision: Literal["approve", "reject", "dismiss", "snooze"],
        by: str,
        reason: str | None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            row = self.get(insight_id)
            status = row["status"]
            if status in (*DECIDED, "expired"):
                raise Conflict(
                    f"insight {insight_id} is {status}"
                    + (f" (by {row['decided_by']})" if row["decided_by"] else "")
                    + "; only open, pending, blocked or snoozed insights can be decided"
                )
            at = now()
            detail: dict[str, Any] = {**self._evidence(row), "reason": reason,
                                      "before": {"status": status}}  # fmt: skip
            if decision == "approve":
                if row["action"] is None:
                    raise Conflict(
                        f"insight {insight_id} proposes no action to approve; dismiss it instead"
                    )
                if row["band"] == "low":
                    pol = self.policy(row["pipeline_id"])
                    raise Conflict(
                        f"insight {insight_id} is blocked: its confidence {row['confidence']:.2f}"
                        f" is below the medium threshold {pol.medium:.2f} of {row['pipeline_id']}'s"
                        " policy, so its action cannot be approved (reject or dismiss it)"
                    )
                detail["changes"] = self._apply(row["action"], by, row)
                new_status = "approved"
            elif decision == "snooze":
                if until is None or until <= at:
                    raise InvalidPolicy("snooze needs `until` in the future")
                new_status = "snoozed"
            else:
                new_status = {"reject": "rejected", "dismiss": "dismissed"}[decision]
            row.update(
                status=new_status, decided_by=by, decided_at=at, reason=reason, updated_at=at,
                snoozed_until=until if decision == "snooze" else None,
                decided_severity=row["severity"],
            )  # fmt: skip
            detail["after"] = {"status": new_status, "snoozed_until": row["snoozed_until"]}
            self.store.put_rows("insights", [row])
            self.store.audit(
                by, f"insight.{decision}", "insight", insight_id, detail, _trace(insight_id)
            )
            return row

    # --- the pre-run risk gate ----------------------------------------------------------------

    def gate(self, pipeline_id: str) -> dict[str, Any] | None:
        """The failure prediction that holds a new run of `pipeline_id`, or None (also when the
        pipeline's policy has no risk gate, the default)."""
        if not self.policy(pipeline_id).risk_gate:
            return None
        found = self.store.rows(
            "insights",
            "pipeline_id = ? AND type = 'failure_prediction' AND severity = 'critical'"
            " AND band <> 'low' AND status IN ('open', 'pending_review', 'applied', 'approved')"
            " AND expires_at > ?",
            [pipeline_id, now()],
        )
        return found[0] if found else None
