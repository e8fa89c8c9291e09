"""Alerts over a real runtime served over HTTP, on a real store file, notifying a real webhook
receiver on loopback: signed deliveries and retries, every rule kind opening and resolving
itself, people acknowledging and resolving, rule CRUD and its errors, and the audit trail."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.client import Client
from flexiroaster.errors import Conflict, NotFound, SpecError
from flexiroaster.records import ExecutionRecord, StageRecord
from flexiroaster.runtime import Runtime
from flexiroaster.scheduler import ScheduleIn
from flexiroaster.settings import load_settings
from flexiroaster.states import RunStatus, StageStatus

from .conftest import serving

TOKEN = "alerts-test-token"
SECRET = "alerts-test-signing-secret"
BOOM = """
name: boom
stages:
  - {id: bad, type: sql, config: {query: "select error('on purpose') as x"}}
"""
FLAKY = """
name: flaky
variables: {fail: 0}
stages:
  - {id: gate, type: shell, config: {command: "test {{ fail }} = 0"}}
"""
NAPPER = """
name: napper
variables: {secs: 0.3}
stages:
  - {id: nap, type: shell, config: {command: "sleep {{ secs }}"}}
"""
CHECKED = """
name: checked
variables: {v: 1}
stages:
  - {id: src, type: sql, config: {query: "select {{ v }}::INTEGER as x"}}
  - id: check
    type: validation
    dependencies: [src]
    config:
      on_failure: warn
      checks: [{type: range, column: x, min: 0, max: 10}]
"""
QUICK = """
name: late-one
stages:
  - {id: one, type: sql, config: {query: "select 1 as x"}}
"""
PAYLOAD_KEYS = {
    "id", "rule_id", "pipeline_id", "kind", "severity", "status", "title", "message",
    "evidence", "created_at",
}  # fmt: skip


# --- a webhook receiver on loopback -------------------------------------------------------------


class Receiver:
    """A real HTTP server recording every POST; `plan[path]` lists the statuses it answers
    with first (then 200) and `say[path]` the body; with `hold[path]` it answers once that
    event is set."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.plan: dict[str, list[int]] = {}
        self.hold: dict[str, threading.Event] = {}
        self.say: dict[str, bytes] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    codes = outer.plan.get(self.path)
                    code = codes.pop(0) if codes else 200
                    outer.got.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body, "at": time.monotonic(), "answer": code})  # fmt: skip
                if self.path in outer.hold:
                    outer.hold[self.path].wait(10)
                said = outer.say.get(self.path, b"")
                self.send_response(code)
                self.send_header("Content-Length", str(len(said)))
                self.end_headers()
                self.wfile.write(said)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [g for g in self.got if g["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# --- helpers ------------------------------------------------------------------------------------


def alert_settings(data_dir, **kw):
    defaults = dict(
        data_dir=data_dir, max_workers=4, log_flush_interval=0.05, api_token=TOKEN,
        alert_secret=SECRET, alert_webhooks=[], alert_retry_delay=0.2, alert_retries=3,
        alert_check_interval=3600, insights_interval=3600,
    )  # fmt: skip
    return load_settings(**(defaults | kw))


@contextlib.contextmanager
def served(settings, *pipelines: str, **runtime_kw):
    """A started runtime behind a real HTTP server, with `pipelines` saved; (runtime, client)."""
    rt = Runtime(settings, **runtime_kw)
    rt.start()
    try:
        with serving(create_app(runtime=rt)) as url, Client(url, token=TOKEN) as client:
            for text in pipelines:
                client.create_pipeline(text)
            yield rt, client
    finally:
        rt.close()


def run(rt: Runtime, client: Client, pipeline_id: str, **params) -> dict:
    """Trigger a run, wait for it to end and for the alert rules to have judged it."""
    done = client.wait(client.trigger(pipeline_id, params)["id"], timeout=30, interval=0.02)
    assert rt.alerts.judged(done["id"], timeout=10), f"run {done['id']} was never judged"
    return done


def of_rule(client: Client, rule_id: str, **filters) -> list[dict]:
    return client.alerts(rule_id=rule_id, **filters)["alerts"]


def eventually(fn, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {fn}")
        time.sleep(interval)


def verify(key: bytes, headers: dict, body: bytes) -> None:
    """What a receiver does: the HMAC over f"{t}." + body, and a recent t."""
    parts = dict(p.split("=", 1) for p in headers["X-FlexiRoaster-Signature"].split(","))
    assert set(parts) == {"t", "v1"}
    mac = hmac.new(key, f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, parts["v1"]), "signature does not verify"
    assert abs(time.time() - int(parts["t"])) < 60


# --- notifications ------------------------------------------------------------------------------


def test_one_signed_notification_per_new_alert_and_a_retry_after_a_500(data_dir, receiver, caplog):
    caplog.set_level(logging.INFO, logger="flexiroaster")
    receiver.plan["/pager"] = [500]
    settings = alert_settings(data_dir, alert_webhooks=[receiver.url("/all")])
    with served(settings, BOOM) as (rt, client):
        rule = client.create_alert_rule(
            {
                "name": "boom pager",
                "kind": "run_failed",
                "pipeline_id": "boom",
                "severity": "critical",
                "webhooks": [receiver.url("/pager")],
            }
        )
        assert rule["id"] == "boom-pager" and rule["webhooks"] == [receiver.url("/pager")]
        first, second = run(rt, client, "boom"), run(rt, client, "boom")
        assert first["status"] == second["status"] == "failed"

        # Two failures of one pipeline: one alert per rule, seen twice.
        found = client.alerts(pipeline_id="boom")
        assert found["total"] == 2
        by_rule = {a["rule_id"]: a for a in found["alerts"]}
        assert set(by_rule) == {"run-failed", "boom-pager"}
        for a in by_rule.values():
            assert (a["status"], a["occurrences"]) == ("open", 2)
            assert a["evidence"] == [first["id"], second["id"]]
            assert second["id"] in a["message"]
        assert by_rule["boom-pager"]["severity"] == "critical"

        def all_delivered():
            notes = [n for a in by_rule.values() for n in client.alert(a["id"])["notifications"]]
            return len(notes) == 3 and all(n["status"] == "delivered" for n in notes) and notes

        notes = eventually(all_delivered)
        pager = [n for n in notes if n["url"].endswith("/pager")]
        assert [(n["attempts"], n["last_status_code"]) for n in pager] == [(2, 200)]
        assert pager[0]["last_error"] is None and pager[0]["delivered_at"]
        assert sorted(n["attempts"] for n in notes if n["url"].endswith("/all")) == [1, 1]

        # Exactly one POST per new alert to the global URL; the pager's 500 got one retry with
        # the same delivery id, after the retry delay.
        everyone = receiver.at("/all")
        assert len(everyone) == 2
        sent = [json.loads(g["body"]) for g in everyone]
        assert {s["alert"]["id"] for s in sent} == {a["id"] for a in by_rule.values()}
        assert len({g["headers"]["X-FlexiRoaster-Delivery"] for g in everyone}) == 2
        paged = receiver.at("/pager")
        assert [g["answer"] for g in paged] == [500, 200]
        assert len({g["headers"]["X-FlexiRoaster-Delivery"] for g in paged}) == 1
        assert paged[0]["headers"]["X-FlexiRoaster-Delivery"] == pager[0]["id"]
        assert paged[1]["at"] - paged[0]["at"] >= 0.15
        for g in everyone + paged:
            h = g["headers"]
            assert h["Content-Type"] == "application/json"
            assert h["X-FlexiRoaster-Event"] == "alert.opened"
            verify(SECRET.encode(), h, g["body"])
            body = json.loads(g["body"])
            assert body["event"] == "alert.opened" and set(body["alert"]) == PAYLOAD_KEYS
            assert body["alert"]["status"] == "open" and body["alert"]["pipeline_id"] == "boom"
            assert body["alert"]["evidence"] == [first["id"]]
            datetime.fromisoformat(body["sent_at"])
        # A tampered body does not verify.
        with pytest.raises(AssertionError, match="does not verify"):
            verify(SECRET.encode(), everyone[0]["headers"], everyone[0]["body"] + b" ")

        # The run that opened the alerts says so in its log (the Logs page shows it).
        lines = client.logs(first["id"], level="WARN")["logs"]
        assert any("opened" in line["message"] for line in lines)
        # The secret is in no answer and no log line.
        assert SECRET not in json.dumps([client.alert(a["id"]) for a in by_rule.values()])
        assert SECRET not in json.dumps(client.settings())
        assert SECRET not in caplog.text and "signature" not in caplog.text.lower()


def test_without_a_secret_a_0600_key_file_signs_and_a_slow_receiver_holds_up_no_run(
    data_dir, receiver
):
    answer = receiver.hold["/slow"] = threading.Event()
    settings = alert_settings(data_dir, alert_secret=None, alert_webhooks=[receiver.url("/slow")])
    with served(settings, BOOM, FLAKY) as (rt, client):
        failed = run(rt, client, "boom")
        eventually(lambda: receiver.at("/slow"))  # the receiver is now sitting on it
        run(rt, client, "flaky", fail=1)  # judged, and its alert opened, while that hangs
        [alert] = of_rule(client, "run-failed", pipeline_id="boom")
        [other] = of_rule(client, "run-failed", pipeline_id="flaky")
        [hanging] = client.alert(alert["id"])["notifications"]
        assert (hanging["status"], hanging["attempts"]) == ("pending", 0)
        answer.set()
        key_path = data_dir / "alert-webhook.key"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = key_path.read_text().strip()
        assert len(key) == 64 and int(key, 16) >= 0
        eventually(lambda: client.alert(alert["id"])["notifications"][0]["status"] == "delivered")
        eventually(lambda: client.alert(other["id"])["notifications"][0]["status"] == "delivered")
        got = {json.loads(g["body"])["alert"]["id"]: g for g in receiver.at("/slow")}
        assert set(got) == {alert["id"], other["id"]}
        for g in got.values():
            verify(key.encode(), g["headers"], g["body"])
        assert json.loads(got[alert["id"]]["body"])["alert"]["evidence"] == [failed["id"]]


def test_a_receiver_that_keeps_failing_is_given_up_after_the_retries(data_dir, receiver):
    receiver.plan["/down"] = [503] * 5
    receiver.say["/down"] = b"busy, try later"
    settings = alert_settings(
        data_dir, alert_webhooks=[receiver.url("/down")], alert_retries=2, alert_retry_delay=0.05
    )
    with served(settings, BOOM) as (rt, client):
        run(rt, client, "boom")
        [alert] = of_rule(client, "run-failed")
        note = eventually(
            lambda: [
                n for n in client.alert(alert["id"])["notifications"] if n["status"] != "pending"
            ]
        )[0]
        assert (note["status"], note["attempts"], note["last_status_code"]) == ("failed", 3, 503)
        assert note["last_error"] == "HTTP 503: busy, try later" and note["delivered_at"] is None
        assert len(receiver.at("/down")) == 3


def test_alerts_stop_within_a_second_and_a_delivery_cut_short_goes_out_after_a_restart(
    data_dir, receiver
):
    answer = receiver.hold["/held"] = threading.Event()
    settings = alert_settings(data_dir, alert_webhooks=[receiver.url("/held")])
    rt = Runtime(settings)
    rt.start()
    try:
        rt.save_pipeline(BOOM)
        rec = rt.trigger("boom")
        assert rt.engine.wait(rec.id, 20) and rt.alerts.judged(rec.id)
        eventually(lambda: receiver.at("/held"))  # in flight, and the receiver sits on it
    finally:
        t0 = time.monotonic()
        rt.alerts.close()  # as the runtime's close() does, timed on its own
        took = time.monotonic() - t0
        rt.close()
    answer.set()
    assert took < 1.5, f"the alerts took {took:.1f} s to stop"

    rt = Runtime(settings)
    try:
        [note] = rt.alerts.notifications(rt.alerts.alerts()[0][0].id)
        assert (note.status, note.attempts) == ("pending", 0)  # cut short: not recorded as sent
        rt.start()  # delivers what an earlier runtime left pending
        eventually(lambda: rt.alerts.notifications(note.alert_id)[0].status == "delivered")
        sent = receiver.at("/held")
        assert len(sent) == 2
        assert {g["headers"]["X-FlexiRoaster-Delivery"] for g in sent} == {note.id}
        verify(SECRET.encode(), sent[1]["headers"], sent[1]["body"])
    finally:
        rt.close()


# --- the rule kinds -----------------------------------------------------------------------------


def test_consecutive_failures_open_at_the_nth_and_a_completed_run_resolves(data_dir):
    with served(alert_settings(data_dir), FLAKY) as (rt, client):
        client.create_alert_rule(
            {
                "name": "flaky streak",
                "kind": "consecutive_failures",
                "threshold": 2,
                "pipeline_id": "flaky",
                "severity": "high",
            }
        )
        r1 = run(rt, client, "flaky", fail=1)
        assert of_rule(client, "flaky-streak") == []
        r2 = run(rt, client, "flaky", fail=1)
        [streak] = of_rule(client, "flaky-streak")
        assert (streak["status"], streak["occurrences"]) == ("open", 1)
        assert streak["evidence"] == [r1["id"], r2["id"]]
        assert "2 failed runs in a row" in streak["title"]
        assert of_rule(client, "failure-streak") == []  # the default rule wants 3

        # Acknowledged, it still resolves itself when the pipeline recovers.
        client.acknowledge_alert(streak["id"], "dana", "looking at the gate")
        r3 = run(rt, client, "flaky", fail=1)
        [streak] = of_rule(client, "flaky-streak")
        assert (streak["status"], streak["occurrences"]) == ("acknowledged", 2)
        assert streak["evidence"][-1] == r3["id"]
        [default] = of_rule(client, "failure-streak")
        assert default["severity"] == "critical" and default["evidence"] == [
            r1["id"], r2["id"], r3["id"],
        ]  # fmt: skip

        ok = run(rt, client, "flaky", fail=0)
        assert ok["status"] == "completed"
        for rid in ("flaky-streak", "failure-streak", "run-failed"):
            [a] = of_rule(client, rid)
            assert (a["status"], a["resolved_by"]) == ("resolved", "auto"), a
            assert ok["id"] in a["resolution"]
        [streak] = of_rule(client, "flaky-streak")
        assert streak["acknowledged_by"] == "dana" and streak["resolved_at"]


def history(pipeline_id: str, n: int, seconds: float) -> tuple[list, list]:
    """n completed one-stage runs of `pipeline_id` taking about `seconds` each, hours ago."""
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=n + 1)
    runs, stages = [], []
    for i in range(n):
        at = start + timedelta(hours=i)
        took = timedelta(seconds=seconds * rng.uniform(0.97, 1.03))
        rid = f"hist-{pipeline_id}-{i:03d}"
        runs.append(ExecutionRecord(
            id=rid, pipeline_id=pipeline_id, pipeline_version="1", status=RunStatus.COMPLETED,
            trigger="api", params={}, created_at=at, started_at=at, completed_at=at + took,
            total_stages=1, stages_completed=1,
        ))  # fmt: skip
        stages.append(StageRecord(
            rid, "nap", "shell", 0, StageStatus.COMPLETED, at, at + took,
            took.total_seconds(), attempts=1,
        ))  # fmt: skip
    return runs, stages


def test_duration_limit_and_duration_anomaly_open_on_a_slow_run_and_resolve_on_a_normal_one(
    data_dir,
):
    with served(alert_settings(data_dir), NAPPER) as (rt, client):
        rt.store.import_executions(*history("napper", 40, 0.3))
        client.create_alert_rule(
            {
                "name": "napper limit",
                "kind": "duration_limit",
                "threshold": 1.0,
                "pipeline_id": "napper",
            }
        )
        slow = run(rt, client, "napper", secs=1.6)
        [limit] = of_rule(client, "napper-limit")
        assert limit["status"] == "open" and limit["evidence"] == [slow["id"]]
        assert "over the 1.0 s limit" in limit["message"]
        [anomaly] = of_rule(client, "duration-anomaly", pipeline_id="napper")
        assert anomaly["status"] == "open" and anomaly["evidence"] == [slow["id"]]
        assert "slower" in anomaly["title"] and "expected" in anomaly["message"]

        normal = run(rt, client, "napper", secs=0.3)
        for a in (limit, anomaly):
            [done] = of_rule(client, a["rule_id"], pipeline_id="napper")
            assert (done["id"], done["status"], done["resolved_by"]) == (
                a["id"],
                "resolved",
                "auto",
            )
            assert normal["id"] in done["resolution"]


def test_a_schedule_missed_while_the_runtime_was_down_alerts_and_resolves_when_caught_up(
    data_dir,
):
    settings = alert_settings(data_dir)
    # An hourly schedule made 2.5 hours ago (by the clock of a runtime that then stopped):
    # its next fire time, 1.5 hours ago, and the one after passed with nothing firing.
    made = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    down = Runtime(settings, clock=lambda: made)
    try:
        down.save_pipeline(QUICK)
        down.scheduler.create(ScheduleIn(
            name="hourly late", pipeline_id="late-one", type="interval",
            expression="every hour", catchup="latest",
        ))  # fmt: skip
    finally:
        down.close()

    with served(settings) as (rt, client):
        # catchup: latest started one run for the fire time half an hour ago: 30 minutes late.
        [late_run] = client.executions(pipeline_id="late-one")["executions"]
        assert late_run["trigger"] == "schedule:hourly-late"
        client.wait(late_run["id"], timeout=20, interval=0.02)
        assert rt.alerts.judged(late_run["id"])
        # The check at start, before the scheduler caught up, saw the missed fire time; the late
        # run is a second occurrence of the same alert.
        [seen] = of_rule(client, "schedule-late")
        assert seen["pipeline_id"] == "late-one" and "missed" in seen["title"]
        assert (seen["status"], seen["occurrences"]) == ("open", 2)
        assert seen["evidence"] == [late_run["id"]] and "min after its fire time" in seen["message"]
        [opened] = client.audit(target_type="alert", target_id=seen["id"])["entries"]
        assert (opened["action"], opened["actor"]) == ("alert.open", "alerts")
        assert opened["detail"]["run_id"] is None and "missed" in opened["detail"]["title"]

        rt.alerts.check_schedules()  # the next check: the schedule is armed in the future again
        [done] = of_rule(client, "schedule-late")
        assert (done["status"], done["resolved_by"]) == ("resolved", "auto")
        assert done["resolution"] == "no schedule of the pipeline is behind any more"


def test_the_periodic_check_alerts_on_a_stalled_schedule_and_resolves_when_it_moves_on(data_dir):
    settings = alert_settings(data_dir, alert_check_interval=0.1)
    with served(settings, QUICK) as (rt, client):
        client.create_schedule(
            name="hourly", pipeline_id="late-one", type="interval", expression="every hour"
        )
        # Its stored next fire time an hour past, as a stalled scheduler would leave it.
        rt.store.set_schedule_state("hourly", next_run_at=datetime.now(UTC) - timedelta(hours=1))
        [alert] = eventually(lambda: of_rule(client, "schedule-late"))
        assert alert["status"] == "open" and "'hourly'" in alert["message"]
        assert "60.0 min overdue" in alert["message"]
        time.sleep(0.3)  # a few more checks: the same miss is told once
        [alert] = of_rule(client, "schedule-late")
        assert alert["occurrences"] == 1
        rt.store.set_schedule_state("hourly", next_run_at=datetime.now(UTC) + timedelta(hours=1))
        eventually(lambda: of_rule(client, "schedule-late", status="resolved"))


def test_validation_failure_rate_over_the_latest_runs(data_dir):
    with served(alert_settings(data_dir), CHECKED) as (rt, client):
        client.create_alert_rule(
            {
                "name": "checked quality",
                "kind": "validation_failure_rate",
                "threshold": 50,
                "window_runs": 4,
                "pipeline_id": "checked",
                "severity": "low",
            }
        )
        rule = client.alert_rules()["rules"][-1]
        assert (rule["id"], rule["window_runs"]) == ("checked-quality", 4)
        runs = [run(rt, client, "checked", v=1), run(rt, client, "checked", v=99)]
        assert all(r["status"] == "completed" for r in runs)  # warn: the run goes on
        assert of_rule(client, "checked-quality") == []  # 1 of 2 is 50%, not over it
        runs.append(run(rt, client, "checked", v=99))  # 2 of 3
        [a] = of_rule(client, "checked-quality")
        assert a["status"] == "open" and a["evidence"] == [runs[1]["id"], runs[2]["id"]]
        assert "2 of the last 3 runs" in a["message"]
        runs.append(run(rt, client, "checked", v=99))  # 3 of 4: seen again
        runs.append(run(rt, client, "checked", v=1))  # 3 of 4: still over, not a new failure
        [a] = of_rule(client, "checked-quality")
        assert (a["status"], a["occurrences"]) == ("open", 2)
        assert a["evidence"][-1] == runs[3]["id"]
        runs.append(run(rt, client, "checked", v=1))  # 2 of 4: back at the threshold
        [a] = of_rule(client, "checked-quality")
        assert (a["status"], a["resolved_by"]) == ("resolved", "auto")
        assert "50% of the last 4 runs" in a["resolution"]
        # The default rule (over 20% of 20) saw it too, and still does (3 of 6).
        [default] = of_rule(client, "validation-rate", pipeline_id="checked")
        assert default["status"] == "open"


# --- people, rules, errors ----------------------------------------------------------------------


def test_acknowledge_then_resolve_with_who_and_when_and_conflicts(data_dir):
    with served(alert_settings(data_dir), BOOM) as (rt, client):
        failed = run(rt, client, "boom")
        [alert] = of_rule(client, "run-failed")
        aid = alert["id"]
        with httpx.Client(base_url=f"{client.url}/api/v1") as raw:
            refused = raw.post(f"/alerts/{aid}/acknowledge", json={"by": "dana"})
            assert refused.status_code == 401  # the token guards every change
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for body in ({"by": ""}, {"by": "   "}, {}, {"by": "dana", "extra": 1}):
                bad = raw.post(f"/alerts/{aid}/acknowledge", json=body, headers=auth)
                assert bad.status_code == 422, (body, bad.text)
                assert "by" in bad.json()["detail"] or "extra" in bad.json()["detail"]
            missing = raw.post("/alerts/nope/resolve", json={"by": "dana"}, headers=auth)
            assert missing.status_code == 404 and "nope" in missing.json()["detail"]

        acked = client.acknowledge_alert(aid, "dana", "on it")
        assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "dana")
        with pytest.raises(Conflict, match="already acknowledged by dana"):
            client.acknowledge_alert(aid, "erin")
        done = client.resolve_alert(aid, "erin", "restored the source table")
        assert (done["status"], done["resolved_by"]) == ("resolved", "erin")
        assert done["resolution"] == "restored the source table"
        assert done["acknowledged_at"] <= done["resolved_at"]
        with pytest.raises(Conflict, match="already resolved by erin"):
            client.resolve_alert(aid, "dana")
        with pytest.raises(Conflict, match="cannot be acknowledged"):
            client.acknowledge_alert(aid, "dana")
        with pytest.raises(NotFound):
            client.alert("no-such-alert")
        assert client.alerts(status="resolved")["total"] == 1
        assert client.alerts(status="active")["total"] == 0

        entries = client.audit(target_type="alert", target_id=aid)["entries"]
        assert [(e["action"], e["actor"]) for e in reversed(entries)] == [
            ("alert.open", "alerts"), ("alert.acknowledge", "dana"), ("alert.resolve", "erin"),
        ]  # fmt: skip
        assert entries[0]["detail"]["note"] == "restored the source table"
        assert client.audit()["chain_ok"]

        # Resolved means done: the next failure is a new alert.
        again = run(rt, client, "boom")
        [new, old] = of_rule(client, "run-failed")
        assert old["id"] == aid and new["id"] != aid
        assert new["evidence"] == [again["id"]] and failed["id"] not in new["evidence"]


def test_rule_crud_errors_name_the_field_and_deleting_resolves_its_alerts(data_dir):
    with served(alert_settings(data_dir), BOOM) as (rt, client):
        defaults = {r["id"]: r for r in client.alert_rules()["rules"]}
        assert set(defaults) == {
            "run-failed", "failure-streak", "duration-anomaly", "schedule-late", "validation-rate",
        }  # fmt: skip
        assert defaults["failure-streak"]["threshold"] == 3
        assert defaults["validation-rate"]["window_runs"] == 20

        ok = {"name": "Boom over a minute", "kind": "duration_limit", "threshold": 60,
              "pipeline_id": "boom"}  # fmt: skip
        bad = [
            ({"kind": "on_fire"}, "kind"),
            ({"kind": "consecutive_failures", "threshold": 1.5}, "threshold"),
            ({"kind": "consecutive_failures", "threshold": 1}, "threshold"),
            ({"threshold": None}, "threshold"),
            ({"threshold": 0}, "threshold"),
            ({"threshold": "60"}, "threshold"),
            ({"kind": "run_failed"}, "threshold"),
            ({"kind": "validation_failure_rate", "threshold": 120}, "threshold"),
            ({"window_runs": 5}, "window_runs"),
            ({"severity": "apocalyptic"}, "severity"),
            ({"webhooks": ["ftp://example.com/x"]}, "webhooks"),
            ({"name": "   "}, "name"),
            ({"colour": "red"}, "colour"),
        ]
        for change, field in bad:
            with pytest.raises(SpecError, match=field):
                client.create_alert_rule(ok | change)
        with pytest.raises(NotFound, match="pipeline_id: no pipeline 'nowhere'"):
            client.create_alert_rule(ok | {"pipeline_id": "nowhere"})

        made = client.create_alert_rule(ok)
        assert made["id"] == "boom-over-a-minute" and made["severity"] == "medium"
        with pytest.raises(Conflict, match="exists"):
            client.create_alert_rule(ok)
        assert client.alert_rules()["total"] == 6
        changed = client.update_alert_rule(made["id"], ok | {"kind": "run_failed", "threshold": None,
                                                             "severity": "low"})  # fmt: skip
        assert (changed["kind"], changed["severity"]) == ("run_failed", "low")
        assert changed["created_at"] == made["created_at"] < changed["updated_at"]
        for call in (
            lambda: client.create_alert_rule(ok | {"pipeline_id": "nowhere"}),
            lambda: client.update_alert_rule("no-rule", ok),
            lambda: client.delete_alert_rule("no-rule"),
        ):
            with pytest.raises(NotFound):
                call()
        with pytest.raises(NotFound, match="no alert rule 'no-rule'"):
            client.update_alert_rule("no-rule", ok)

        run(rt, client, "boom")
        [open_] = of_rule(client, made["id"])
        assert open_["severity"] == "low" and open_["status"] == "open"
        client.delete_alert_rule(made["id"])
        [gone] = of_rule(client, made["id"])
        assert (gone["status"], gone["resolution"]) == ("resolved", "rule deleted")
        with pytest.raises(NotFound):
            client.delete_alert_rule(made["id"])
        actions = [e["action"] for e in client.audit(target_type="alert_rule")["entries"]]
        assert actions == ["alert_rule.delete", "alert_rule.update", "alert_rule.create"]


def test_channels_send_the_rules_templates_through_stored_webhook_and_smtp_connections(
    data_dir, receiver
):
    from .test_notify import PASSWORD, smtp_server

    hook_path = "/services/T000/B000/channel-secret-path"
    with smtp_server(auth_require_tls=False) as (box, port), served(
        alert_settings(data_dir), BOOM
    ) as (rt, client):
        client.put_connection("team-hook", "webhook", {}, {"url": receiver.url(hook_path)})
        client.put_connection(
            "mail", "smtp", {"host": "127.0.0.1", "port": port, "sender": "alerts@example.org",
                             "username": "mailer"}, {"password": PASSWORD},
        )  # fmt: skip
        bad = [
            ({"channels": ["nowhere"]}, "channels[0]: no connection 'nowhere'"),
            ({"channels": ["mail"]}, "recipients: channel 'mail' sends email"),
            ({"subject": "{{ alert.nope }}"}, "subject: unknown placeholder {{ alert.nope }}"),
            ({"body": "{{ run_id }}"}, "body: unknown placeholder {{ run_id }}"),
        ]
        for extra, said in bad:
            with pytest.raises(Exception, match=re.escape(said)) as err:
                client.create_alert_rule({"name": "x", "kind": "run_failed", **extra})
            assert getattr(err.value, "status", 422) == 422
        client.put_connection("api", "http", {"base_url": "http://127.0.0.1:9"})
        with pytest.raises(Exception, match=r"channels\[0\]: connection 'api' is of type http"):
            client.create_alert_rule({"name": "x", "kind": "run_failed", "channels": ["api"]})

        rule = client.create_alert_rule({
            "name": "boom to people", "kind": "run_failed", "pipeline_id": "boom",
            "channels": ["team-hook", "mail"], "recipients": ["oncall@example.org"],
            "subject": "{{ alert.severity }} on {{ alert.pipeline_id }}: {{ alert.title }}",
            "body": "{{ alert.message }} (runs: {{ alert.evidence }}, alert {{ alert.id }})",
        })  # fmt: skip
        assert rule["channels"] == ["team-hook", "mail"]
        failed = run(rt, client, "boom")
        [alert] = of_rule(client, rule["id"])

        def delivered():
            notes = client.alert(alert["id"])["notifications"]
            return len(notes) == 2 and all(n["status"] == "delivered" for n in notes) and notes

        notes = eventually(delivered)
        assert sorted(n["url"] for n in notes) == ["connection:mail", "connection:team-hook"]
        subject = "medium on boom: boom: run failed"
        text = f"{alert['message']} (runs: {failed['id']}, alert {alert['id']})"
        [hooked] = receiver.at(hook_path)
        assert json.loads(hooked["body"]) == {"text": f"*{subject}*\n{text}"}
        [mail] = box.messages
        assert mail["to"] == ["oncall@example.org"] and mail["user"] == "mailer"
        assert mail["message"]["Subject"] == subject
        assert mail["message"].get_content().strip() == text
        # The channel's secrets are in no answer.
        answers = json.dumps([client.alert(alert["id"]), client.alert_rules(), client.connections()])
        assert hook_path not in answers and PASSWORD not in answers

        # A receiver that answers 404 is told once (no retry mends it), a 503 is retried.
        receiver.plan[hook_path] = [404]
        client.put_connection("team-hook", "webhook", {}, {"url": receiver.url(hook_path)})
        client.resolve_alert(alert["id"], "ann")
        run(rt, client, "boom")
        [again] = of_rule(client, rule["id"], status="open")
        note = eventually(lambda: [
            n for n in client.alert(again["id"])["notifications"]
            if n["url"] == "connection:team-hook" and n["status"] == "failed"
        ])[0]  # fmt: skip
        assert note["attempts"] == 1 and note["last_status_code"] == 404
        assert "webhook channel team-hook answered HTTP 404" in note["last_error"]
        assert hook_path not in json.dumps(note)
        # A channel in use is not deleted from under its rule.
        with pytest.raises(Conflict, match="channel of alert rule.*boom-to-people"):
            client.delete_connection("team-hook")
