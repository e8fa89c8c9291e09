"""Alerts: rules (alert_rules.py) judged after every finished run and, for missed schedules,
every alert_check_interval s; at most one unresolved alert per rule and pipeline, acknowledged
and resolved by people or by itself when its condition clears. A new alert is POSTed, signed,
to its webhooks (webhooks.py says how a receiver verifies the signature)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from . import channels
from .alert_rules import (
    JUDGES,
    AlertError,
    RecentRuns,
    Rule,
    RuleIn,
    RuleKind,
    Severity,
    Verdict,
    as_row,
    missed_schedules,
    rule_id,
    secs,
)
from .errors import Conflict, NotFound
from .records import ExecutionRecord, now
from .states import RunStatus
from .store import StoreUnavailable
from .webhooks import Notification, Outbox, new_id

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

EVIDENCE_KEEP = 50  # run ids an alert keeps as evidence (the latest)
AUTO = "auto"  # resolved_by of an alert whose condition cleared
BATCH = 1000  # finished runs judged per wake-up of the alerts thread


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @classmethod
    def terminal(cls) -> frozenset[AlertStatus]:
        return frozenset({cls.RESOLVED})


@dataclass(frozen=True)
class Alert:
    id: str
    rule_id: str
    pipeline_id: str
    kind: RuleKind
    severity: Severity
    status: AlertStatus
    title: str
    message: str
    evidence: tuple[str, ...]  # run ids, the latest EVIDENCE_KEEP
    occurrences: int
    created_at: datetime
    last_seen_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alert:
        return cls(**{**row, "kind": RuleKind(row["kind"]), "severity": Severity(row["severity"]),
                      "status": AlertStatus(row["status"]), "evidence": tuple(row["evidence"] or ())})  # fmt: skip

    def payload(self) -> dict[str, Any]:
        """What a webhook receiver gets of the alert."""
        keep = ("id", "rule_id", "pipeline_id", "kind", "severity", "status", "title", "message")
        return {k: str(getattr(self, k)) for k in keep} | {
            "evidence": list(self.evidence),
            "created_at": self.created_at.isoformat(),
        }


# --- the service ------------------------------------------------------------------------------


class Alerts:
    """Judges finished runs on its own thread, owns the alert tables, sends notifications."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.store = runtime.store
        self.settings = runtime.settings
        self._lock = threading.RLock()  # every change of a rule or an alert
        self._rules = {
            r["id"]: Rule.from_row(r)
            for r in self.store.rows("alert_rules", order="created_at, id")
        }
        self.outbox = Outbox(self.store, self.settings, channel=self._send_via)
        # Unresolved alerts by (rule, pipeline): every change of an alert goes through here.
        self._active: dict[tuple[str, str], Alert] = {}
        for row in self.store.rows("alerts", "status <> 'resolved'", order="created_at"):
            a = Alert.from_row(row)
            self._active[(a.rule_id, a.pipeline_id)] = a
        self.recent = RecentRuns(self.store, stage_types=self._stage_types)
        self._inbox: queue.Queue[ExecutionRecord | None] = queue.Queue()
        self._judged: OrderedDict[str, None] = OrderedDict()  # run ids, the latest 10,000
        self._judged_cv = threading.Condition()
        # (rule id, pipeline id) -> (schedule id, next_run_at) seen missed by check_schedules
        self._missed: dict[tuple[str, str], set[tuple[str, datetime]]] = {}
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Judge runs as they finish, check schedules now and every alert_check_interval, and
        deliver notifications (those left pending by an earlier runtime too)."""
        if self._worker is not None:
            return
        self._safely(self.check_schedules)  # before the scheduler catches up what was missed
        self.rt.engine.on_finish.append(self._on_finish)
        self._worker = threading.Thread(target=self._work, name="alerts", daemon=True)
        self._worker.start()
        pending = self.outbox.pending()
        alerts = {a.id: a for a in map(self.get_or_none, {n.alert_id for n in pending}) if a}
        self.outbox.start(
            [(n, alerts[n.alert_id].payload()) for n in pending if n.alert_id in alerts]
        )

    def close(self, timeout: float = 1.0) -> None:
        """Stop judging and delivering within `timeout` s (a delivery still waiting for its
        receiver is left to its daemon thread and stays pending in the store)."""
        if self._on_finish in self.rt.engine.on_finish:
            self.rt.engine.on_finish.remove(self._on_finish)
        self._stop.set()
        self._inbox.put(None)
        deadline = time.monotonic() + timeout
        if self._worker is not None:
            self._worker.join(timeout)
        self.outbox.close(max(0.1, deadline - time.monotonic()))

    def _on_finish(self, rec: ExecutionRecord) -> None:
        self._inbox.put(replace(rec))  # judged on our thread: the run's thread is not held up

    def _work(self) -> None:
        interval = self.settings.alert_check_interval
        next_check = time.monotonic() + interval
        while not self._stop.is_set():
            wait = next_check - time.monotonic()
            if wait <= 0:
                self._safely(self.check_schedules)
                next_check = time.monotonic() + interval
                continue
            try:
                batch = [self._inbox.get(timeout=wait)]
            except queue.Empty:
                continue
            while len(batch) < BATCH:  # the runs that finished meanwhile, judged in one go
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for rec in batch:
                if rec is not None:
                    self._safely(self.evaluate, rec)

    def _safely(self, fn: Any, *args: Any) -> None:
        """Call fn; while the store cannot write, wait and try again (an alert is not lost to
        a full disk), stopping on shutdown."""
        told = False
        while True:
            try:
                fn(*args)
                return
            except StoreUnavailable as exc:
                if not told:
                    log.warning("alerts: %s waits for the store to write again: %s", fn.__name__, exc)
                    told = True
                if self._stop.wait(1.0):
                    return
            except Exception:  # one bad judgement never stops the next
                log.exception("alerts: %s failed", fn.__name__)
                return

    def judged(self, run_id: str, timeout: float = 10.0) -> bool:
        """Wait until the finished run `run_id` has been judged against the rules."""
        with self._judged_cv:
            return self._judged_cv.wait_for(lambda: run_id in self._judged, timeout)

    # --- judging --------------------------------------------------------------------------------

    def evaluate(self, rec: ExecutionRecord) -> None:
        """Judge a finished run against every enabled rule covering its pipeline (cancelled
        runs neither fail nor succeed: they are left out)."""
        try:
            if rec.status in (RunStatus.COMPLETED, RunStatus.FAILED):
                at = self.rt.scheduler.clock()
                with self._lock:
                    rules = [r for r in self._rules.values() if r.covers(rec.pipeline_id)]
                    self.recent.add(rec)
                for rule in rules:
                    try:
                        verdict = JUDGES[rule.kind](rule, rec, self.recent, at)
                    except Exception:
                        log.exception("alert rule %s could not judge run %s", rule.id, rec.id)
                        continue
                    if verdict is not None:
                        self._apply(rule, rec.pipeline_id, verdict, rec.id)
        finally:
            with self._judged_cv:
                self._judged[rec.id] = None
                while len(self._judged) > 10_000:
                    self._judged.popitem(last=False)
                self._judged_cv.notify_all()

    # --- missed schedules -----------------------------------------------------------------------

    def check_schedules(self) -> None:
        """Alert on timed schedules that missed a fire time (the runtime was down, or its
        scheduler stalled); resolve those alerts once every schedule of the pipeline caught up."""
        with self._lock:  # the worker's periodic check and a caller's may meet
            self._check_schedules(self.rt.scheduler.clock())

    def _check_schedules(self, at: datetime) -> None:
        rules = [r for r in self._rules.values() if r.enabled and r.kind == RuleKind.SCHEDULE_LATE]
        live = {r.id for r in rules}
        self._missed = {k: v for k, v in self._missed.items() if k[0] in live}
        for rule in rules:
            missed = missed_schedules(rule, self.store, at)
            for pid, found in missed.items():
                marks = {(sid, due) for sid, _, due in found}
                seen = self._missed.setdefault((rule.id, pid), set())
                if marks <= seen:
                    continue  # already told
                seen |= marks
                sid, name, due = min(found, key=lambda f: f[2])
                self._apply(rule, pid, Verdict(
                    True,
                    f"{pid}: scheduled run missed",
                    f"schedule {sid!r} ({name}) did not fire at {due.isoformat()}; now"
                    f" {secs((at - due).total_seconds())} overdue"
                    + (f" ({len(found)} schedules behind)" if len(found) > 1 else ""),
                ), None)  # fmt: skip
            for key in [k for k in self._missed if k[0] == rule.id and k[1] not in missed]:
                del self._missed[key]
                caught_up = "no schedule of the pipeline is behind any more"
                self._apply(rule, key[1], Verdict(False, message=caught_up), None)

    # --- alert state ----------------------------------------------------------------------------

    def _open(self, rid: str, pipeline_id: str) -> Alert | None:
        return self._active.get((rid, pipeline_id))

    def _put(self, a: Alert) -> None:
        """Store an alert's new state and keep the index of unresolved ones in step."""
        self.store.put_rows("alerts", [as_row(a)])
        key = (a.rule_id, a.pipeline_id)
        if a.status != AlertStatus.RESOLVED:
            self._active[key] = a
        elif key in self._active and self._active[key].id == a.id:
            del self._active[key]

    def _stage_types(self, rec: ExecutionRecord) -> set[str]:
        """The stage types of the run's pipeline as the runtime holds it parsed (when it is not
        there any more, "validation" so that the rule reads the store rather than skip)."""
        try:
            return {str(s.type) for s in self.rt.get_pipeline(rec.pipeline_id).pipeline.stages}
        except Exception:
            return {"validation"}

    def _apply(self, rule: Rule, pipeline_id: str, v: Verdict, run_id: str | None) -> None:
        """Open, repeat or auto-resolve the alert of (rule, pipeline) by a verdict."""
        with self._lock:
            if self._rules.get(rule.id) != rule:
                return  # deleted or changed while the run was being judged
            current = self._open(rule.id, pipeline_id)
            if not v.firing:
                if current is not None:
                    self._resolve(current, AUTO, v.message, run_id)
                return
            at = now()
            if current is None:
                alert = Alert(
                    new_id(), rule.id, pipeline_id, rule.kind, rule.severity, AlertStatus.OPEN,
                    v.title, v.message, v.evidence[-EVIDENCE_KEEP:], 1, at, at,
                )  # fmt: skip
                self._put(alert)
                detail = {"rule_id": rule.id, "pipeline_id": pipeline_id, "run_id": run_id,
                          "severity": str(rule.severity), "title": alert.title}  # fmt: skip
                self.store.audit("alerts", "alert.open", "alert", alert.id, detail)
                self._say(run_id, "WARN", f"alert {alert.id} opened ({rule.severity}): {v.message}")
                self.outbox.send(alert.id, alert.payload(), self._urls(rule))
            elif v.occurrence:
                evidence = current.evidence
                if run_id is not None and run_id not in evidence:
                    evidence = (*evidence, run_id)[-EVIDENCE_KEEP:]
                repeat = replace(
                    current, message=v.message, evidence=evidence, last_seen_at=at,
                    occurrences=current.occurrences + 1,
                )  # fmt: skip
                self._put(repeat)
                self._say(
                    run_id, "WARN",
                    f"alert {current.id} seen again ({repeat.occurrences} times): {v.message}",
                )  # fmt: skip

    def _resolve(
        self, a: Alert, by: str, resolution: str, run_id: str | None = None, note: str | None = None
    ) -> Alert:
        done = replace(
            a, status=AlertStatus.RESOLVED, resolved_by=by, resolved_at=now(), resolution=resolution
        )
        self._put(done)
        detail = {"by": by, "resolution": resolution, "note": note, "run_id": run_id,
                  "rule_id": a.rule_id, "pipeline_id": a.pipeline_id}  # fmt: skip
        self.store.audit("alerts" if by == AUTO else by, "alert.resolve", "alert", a.id, detail)
        self._say(run_id, "INFO", f"alert {a.id} resolved by {by}: {resolution}")
        return done

    def _say(self, run_id: str | None, level: str, message: str) -> None:
        """Python's log, and the log of the run behind it (so the Logs page shows it)."""
        log.log(logging.WARNING if level == "WARN" else logging.INFO, message)
        if run_id is not None:
            self.store.log(run_id, None, level, message, {"source": "alerts"})

    def _urls(self, rule: Rule) -> list[str]:
        """Where a new alert of the rule goes: webhook URLs, then its channels."""
        urls = [*rule.webhooks, *self.settings.alert_webhooks]
        return list(dict.fromkeys([*urls, *(channels.PREFIX + c for c in rule.channels)]))

    def _send_via(self, name: str, payload: dict[str, Any], http: Any) -> int | None:
        """Deliver an alert through the channel `name` with its rule's templates (on a delivery
        thread of the outbox)."""
        with self._lock:
            rule = self._rules.get(payload["rule_id"])
        try:
            conn = self.rt.connections.open(name)
        except NotFound:
            raise channels.ChannelError(f"no connection {name} (deleted?)", final=True) from None
        subject, text = channels.render(
            payload, rule.subject if rule else None, rule.body if rule else None
        )
        return channels.deliver(conn, subject, text, list(rule.recipients if rule else ()), http)

    # --- people ---------------------------------------------------------------------------------

    def alerts(
        self,
        *,
        status: str | None = None,
        pipeline_id: str | None = None,
        severity: str | None = None,
        rule_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Alert], int]:
        """A page of alerts, newest first, and how many match; status "active": not resolved."""
        parts: list[tuple[str, Any]] = [
            ("status <> 'resolved'" if status == "active" else "status = ?", status),
            ("pipeline_id = ?", pipeline_id),
            ("severity = ?", severity),
            ("rule_id = ?", rule_id),
        ]
        given = [(c, v) for c, v in parts if v is not None]
        where = " AND ".join(["true", *(c for c, _ in given)])
        args = [v for c, v in given if "?" in c]
        total = self.store.count("alerts", where, args)
        rows = self.store.rows(
            "alerts", where, args, order="created_at DESC, id DESC", limit=limit, offset=offset
        )
        return [Alert.from_row(r) for r in rows], total

    def get(self, alert_id: str) -> Alert:
        found = self.store.rows("alerts", "id = ?", [alert_id])
        if not found:
            raise NotFound(f"no alert {alert_id!r}")
        return Alert.from_row(found[0])

    def get_or_none(self, alert_id: str) -> Alert | None:
        try:
            return self.get(alert_id)
        except NotFound:
            return None

    def notifications(self, alert_id: str) -> list[Notification]:
        """The alert's webhook deliveries and how each went."""
        return self.outbox.of(alert_id)

    def acknowledge(self, alert_id: str, by: str, note: str | None = None) -> Alert:
        """A person says they are on it; the alert can still resolve itself."""
        by = _person(by)
        with self._lock:
            a = self.get(alert_id)
            if a.status == AlertStatus.RESOLVED:
                raise Conflict(
                    f"alert {alert_id} is resolved (by {a.resolved_by}); a resolved alert cannot"
                    " be acknowledged"
                )
            if a.status == AlertStatus.ACKNOWLEDGED:
                raise Conflict(
                    f"alert {alert_id} is already acknowledged by {a.acknowledged_by} at"
                    f" {a.acknowledged_at:%Y-%m-%d %H:%M:%S %Z}"
                )
            done = replace(
                a, status=AlertStatus.ACKNOWLEDGED, acknowledged_by=by, acknowledged_at=now()
            )
            self._put(done)
            self.store.audit(by, "alert.acknowledge", "alert", a.id, {"by": by, "note": note})
            log.info("alert %s acknowledged by %s", a.id, by)
            return done

    def resolve(self, alert_id: str, by: str, note: str | None = None) -> Alert:
        """A person closes the alert (open or acknowledged)."""
        by = _person(by)
        with self._lock:
            a = self.get(alert_id)
            if a.status == AlertStatus.RESOLVED:
                raise Conflict(
                    f"alert {alert_id} is already resolved by {a.resolved_by} at"
                    f" {a.resolved_at:%Y-%m-%d %H:%M:%S %Z}"
                )
            return self._resolve(a, by, note or f"resolved by {by}", note=note)

    # --- rules ----------------------------------------------------------------------------------

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules.values())

    def rule(self, rid: str) -> Rule:
        with self._lock:
            found = self._rules.get(rid)
        if found is None:
            raise NotFound(f"no alert rule {rid!r}")
        return found

    def create_rule(self, body: RuleIn, actor: str = "api") -> Rule:
        body = self._check(body)
        rid = rule_id(body.name)
        with self._lock:
            if rid in self._rules:
                raise Conflict(
                    f"alert rule {rid!r} exists; PUT /api/v1/alert-rules/{rid} changes it"
                )
            at = now()
            rule = Rule(rid, created_at=at, updated_at=at, **_definition(body))
            self.store.put_rows("alert_rules", [as_row(rule)])
            self._rules[rid] = rule
            self.store.audit(actor, "alert_rule.create", "alert_rule", rid, body.model_dump())
            return rule

    def update_rule(self, rid: str, body: RuleIn, actor: str = "api") -> Rule:
        """Replace a rule's definition; its alerts of another kind or pipeline are resolved."""
        body = self._check(body)
        with self._lock:
            old = self.rule(rid)
            rule = replace(old, updated_at=now(), **_definition(body))
            self.store.put_rows("alert_rules", [as_row(rule)])
            self._rules[rid] = rule
            self.store.audit(actor, "alert_rule.update", "alert_rule", rid, body.model_dump())
            for a in self._active_of(rid):
                if a.kind != rule.kind or rule.pipeline_id not in (None, a.pipeline_id):
                    self._resolve(a, actor, "rule changed")
            return rule

    def delete_rule(self, rid: str, actor: str = "api") -> list[str]:
        """Delete a rule; its unresolved alerts are resolved ("rule deleted"). Returns their ids."""
        with self._lock:
            self.rule(rid)
            active = self._active_of(rid)
            for a in active:
                self._resolve(a, actor, "rule deleted")
            self.store.delete_rows("alert_rules", "id = ?", [rid])
            del self._rules[rid]
            self.store.audit(
                actor, "alert_rule.delete", "alert_rule", rid, {"resolved": len(active)}
            )
            return [a.id for a in active]

    def _active_of(self, rid: str) -> list[Alert]:
        return [a for (r, _), a in self._active.items() if r == rid]

    def _check(self, body: RuleIn) -> RuleIn:
        body = body.checked()
        if body.pipeline_id is not None and not self.store.has_pipeline(body.pipeline_id):
            raise NotFound(f"pipeline_id: no pipeline {body.pipeline_id!r}")
        for i, name in enumerate(body.channels):
            try:
                kind = str(self.rt.connections.get(name).type)
            except NotFound:
                raise AlertError(f"channels[{i}]: no connection {name!r}") from None
            if kind not in ("smtp", "webhook"):
                raise AlertError(
                    f"channels[{i}]: connection {name!r} is of type {kind}; a channel is an smtp"
                    " or webhook connection"
                )
            if kind == "smtp" and not body.recipients:
                raise AlertError(f"recipients: channel {name!r} sends email; say to whom")
        return body


def _definition(body: RuleIn) -> dict[str, Any]:
    return {
        "name": body.name, "kind": body.kind, "pipeline_id": body.pipeline_id,
        "threshold": body.threshold, "window_runs": body.window_runs, "severity": body.severity,
        "webhooks": tuple(body.webhooks), "enabled": body.enabled,
        "channels": tuple(body.channels), "recipients": tuple(body.recipients),
        "subject": body.subject, "body": body.body,
    }  # fmt: skip


def _person(by: str) -> str:
    by = (by or "").strip()
    if not by:
        raise AlertError("by: say who you are (a name); it is recorded with the alert")
    return by
