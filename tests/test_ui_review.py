"""The review pages under AppTest against a real runtime served over HTTP: insights computed from
an imported run history are approved, rejected and refused on the Insights page, the review
policy is edited there, a held run is released on the Executions page, and a real alert is
acknowledged and resolved on the Alerts page."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from flexiroaster.runtime import Runtime
from flexiroaster.scheduler import ScheduleIn
from flexiroaster.settings import load_settings

from .conftest import app_test
from .test_insights import history, streaky, write
from .test_review import PIPE

NAME = "Ann Ops"
HISTORIES = (
    ("flaky", streaky(300, 3) + [True] * 12, 1),
    ("steady", [False] * 300, 2),
    ("newbie", [False, True, False, False], 3),
)


def seed(rt) -> None:
    """300 hourly runs of `flaky` ending in a failure streak (its next run is at critical risk)
    and of `steady`, a 2-hourly schedule on each, and four runs of `newbie` (too few to be
    sure: low confidence), imported into the runtime's store."""
    end = datetime.now(UTC)
    for name, failed, n in HISTORIES:
        rt.save_pipeline(PIPE.format(name=name))
        write(rt.store, history(name, failed, end=end, seed=n))
        if name != "newbie":
            rt.scheduler.create(
                ScheduleIn(name=f"{name}-2h", pipeline_id=name, type="interval", expression="2h")
            )


def seeded(data_dir) -> None:
    """seed() a runtime's store under `data_dir` and close it (for a runtime started later)."""
    rt = Runtime(load_settings(data_dir=data_dir))
    try:
        seed(rt)
    finally:
        rt.close()


@pytest.fixture
def review(ui_runtime):
    """The `ui_runtime`, seed()ed, with the insights computed from that history."""
    rt, c = ui_runtime
    seed(rt)
    c.recompute_insights()
    return rt, c


def risk(c, pipeline_id: str) -> dict:
    (one,) = c.insights(pipeline_id=pipeline_id, type="failure_prediction")["insights"]
    return one


def texts(*groups) -> str:
    return "\n".join(str(e.value) for g in groups for e in g)


def ok(at) -> None:
    assert not at.exception, at.exception


def named(at, name: str = NAME):
    at.text_input(key="in_reviewer").input(name).run()
    ok(at)
    return at


def test_approving_a_real_insight_pauses_its_schedule_and_is_audited(review):
    _, c = review
    flaky = risk(c, "flaky")
    assert flaky["status"] == "pending_review" and flaky["severity"] == "critical"
    at = app_test("views/insights.py")
    ok(at)
    shown = texts(at.markdown)
    assert flaky["title"] in shown and f"confidence **{flaky['confidence']:.0%}**" in shown
    assert "Waiting for review: 1" in texts(at.subheader)
    assert flaky["action"]["description"] in shown

    # no name: refused on the page, nothing decided
    at.button(key=f"in_approve_{flaky['id']}").click().run()
    ok(at)
    assert "Enter your name" in texts(at.error)
    assert risk(c, "flaky")["status"] == "pending_review"
    assert c.schedule("flaky-2h")["enabled"]

    named(at)
    at.text_input(key=f"in_reason_{flaky['id']}").input("six failures in a row").run()
    at.button(key=f"in_approve_{flaky['id']}").click().run()
    ok(at)
    said = texts(at.success)
    assert "schedule flaky-2h paused" in said and "**approved**" in said and NAME in said
    assert not c.schedule("flaky-2h")["enabled"]
    assert risk(c, "flaky")["status"] == "approved"
    (entry,) = c.audit(target_type="insight", target_id=flaky["id"], action="insight.approve")[
        "entries"
    ]
    assert entry["actor"] == NAME and entry["detail"]["reason"] == "six failures in a row"
    assert entry["detail"]["input_hash"] == flaky["input_hash"]
    # the page now shows it decided, and the decision among the recent ones
    assert "Waiting for review: 0" in texts(at.subheader)
    decisions = next(d.value for d in at.dataframe if "who" in d.value.columns)
    row = decisions[decisions["what"] == "insight.approve"].iloc[0]
    assert (row["who"], row["on"], row["status"]) == (
        NAME,
        flaky["id"],
        "pending_review → approved",
    )

    # the dashboard's top insights: the approved risk first, never a low-confidence one
    dash = app_test("views/dashboard.py")
    ok(dash)
    tops = [m.value for m in dash.markdown if "confident" in m.value]
    assert len(tops) == 5 and tops[0].startswith(f"🔴 **flaky** · {flaky['title']}")
    assert not any("newbie" in t and "failure_prediction" in t for t in tops)


def test_rejecting_changes_nothing_and_needs_a_reason(review):
    _, c = review
    flaky = risk(c, "flaky")
    at = named(app_test("views/insights.py"))
    at.button(key=f"in_reject_{flaky['id']}").click().run()
    assert "Give a reason to reject" in texts(at.error)
    assert risk(c, "flaky")["status"] == "pending_review"

    at.text_input(key=f"in_reason_{flaky['id']}").input("known upstream outage").run()
    at.button(key=f"in_reject_{flaky['id']}").click().run()
    ok(at)
    assert "nothing changed" in texts(at.success) and "**rejected**" in texts(at.success)
    assert c.schedule("flaky-2h")["enabled"]
    after = risk(c, "flaky")
    assert (after["status"], after["decided_by"], after["reason"]) == (
        "rejected", NAME, "known upstream outage",
    )  # fmt: skip


def test_a_low_confidence_insight_is_labelled_and_filters_work(review):
    _, c = review
    newbie = risk(c, "newbie")
    assert newbie["low_confidence"] and newbie["status"] == "blocked"
    at = app_test("views/insights.py")
    at.selectbox(key="in_f_pipe").select("newbie").run()
    at.selectbox(key="in_f_type").select("failure_prediction").run()
    ok(at)
    assert "1 insight(s)" in texts(at.caption)
    (shown,) = at.expander
    assert newbie["title"] in shown.label and "low confidence" in shown.label
    assert "low confidence — shown, never acted on" in texts(shown.warning)
    assert "band **low** · status **blocked**" in texts(shown.markdown)
    # flaky's is sure enough: no such label when it is the one shown
    at.selectbox(key="in_f_pipe").select("flaky").run()
    (shown,) = at.expander
    assert risk(c, "flaky")["title"] in shown.label and "low confidence" not in shown.label
    assert not at.warning


def test_the_policy_editor_changes_the_policy_and_shows_a_refusal(review):
    _, c = review
    at = named(app_test("views/insights.py"))
    at.number_input(key="in_pol_medium").set_value(0.6).run()
    at.toggle(key="in_pol_risk_gate").set_value(True).run()
    at.button(key="in_pol_save").click().run()
    ok(at)
    assert c.insight_policy()["global"] == {
        "high": 0.8, "medium": 0.6, "auto_apply": False, "risk_gate": True,
    }  # fmt: skip
    assert "medium from 0.60" in texts(at.caption)
    # refused: medium above high; the API's message is shown and nothing changes
    at.number_input(key="in_pol_medium").set_value(0.9).run()
    at.number_input(key="in_pol_high").set_value(0.7).run()
    at.button(key="in_pol_save").click().run()
    ok(at)
    assert "medium (0.9) must not be above high (0.7)" in texts(at.error)
    assert c.insight_policy()["global"]["medium"] == 0.6

    # a per-pipeline override: added, then removed
    at.selectbox(key="in_ov_pipeline").select("flaky").run()
    at.number_input(key="in_ov_medium_flaky").set_value(0.3).run()
    at.selectbox(key="in_ov_auto_apply_flaky").select("off").run()
    at.button(key="in_ov_save").click().run()
    ok(at)
    assert c.insight_policy()["pipelines"] == {"flaky": {"medium": 0.3, "auto_apply": False}}
    at.button(key="in_ov_remove").click().run()
    ok(at)
    assert c.insight_policy()["pipelines"] == {}
    (change, *_) = c.audit(target_type="policy", target_id="flaky")["entries"]
    assert change["actor"] == NAME


def test_a_held_run_says_why_and_is_released_from_the_executions_page(review):
    _, c = review
    c.set_insight_policy("ops lead", "flaky", risk_gate=True, medium=0.0)
    held = c.trigger("flaky")
    other = c.trigger("flaky")
    assert (held["status"], other["status"]) == ("held", "held")

    at = app_test("views/executions.py")
    at.selectbox(key="ex_status").select("held").run()
    ok(at)
    listed = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert set(listed["status"]) == {"✋ held"} and len(listed) == 2

    at.query_params["run"] = held["id"]
    at.run()
    ok(at)
    assert "held by the risk gate" in texts(at.warning)
    assert risk(c, "flaky")["title"] in texts(at.warning)
    at.button(key="run_release").click().run()  # no name yet
    assert "Enter your name" in texts(at.error)
    assert c.execution(held["id"])["status"] == "held"

    at.text_input(key="ex_reviewer").input(NAME).run()
    at.text_input(key="run_release_reason").input("upstream fixed").run()
    at.button(key="run_release").click().run()
    ok(at)
    assert c.wait(held["id"], timeout=30)["status"] == "completed"
    (entry,) = c.audit(target_id=held["id"], action="run.release")["entries"]
    assert (entry["actor"], entry["detail"]["reason"]) == (NAME, "upstream fixed")

    # the other held run is cancelled from its page
    at.query_params["run"] = other["id"]
    at.run()
    at.button(key="run_cancel").click().run()
    ok(at)
    assert c.execution(other["id"])["status"] == "cancelled"


BROKEN = """
name: broken
stages:
  - {id: boom, type: sql, config: {query: "select * from no_such_table"}}
"""


@pytest.fixture
def receiver():
    """A real webhook receiver on a free port: 204 on /ok, 500 on /fail; yields its base URL
    and the paths it was sent to."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            got.append(self.path)
            self.send_response(204 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()
    thread.join(5)


def until(what, check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)
    return found


def test_a_real_alert_is_acknowledged_then_resolved_with_the_reviewers_name(ui_runtime, receiver):
    _, c = ui_runtime
    url, got = receiver
    c.create_pipeline(BROKEN)
    c.create_alert_rule(
        {"name": "broken hooked", "kind": "run_failed", "pipeline_id": "broken",
         "severity": "critical", "webhooks": [f"{url}/ok", f"{url}/fail"]}
    )  # fmt: skip
    run = c.wait(c.trigger("broken")["id"], timeout=30)
    assert run["status"] == "failed"
    alerts = until("alerts", lambda: len(c.alerts(status="open")["alerts"]) == 2 and c.alerts())
    by_rule = {a["rule_id"]: a for a in alerts["alerts"]}
    alert, hooked = by_rule["run-failed"], by_rule["broken-hooked"]
    assert alert["evidence"] == [run["id"]]
    until("deliveries", lambda: sorted(got) == ["/fail", "/ok"])
    until(
        "delivery state", lambda: all(n["attempts"] for n in c.alert(hooked["id"])["notifications"])
    )

    # the dashboard counts them and shows the most severe first
    dash = app_test("views/dashboard.py")
    ok(dash)
    assert "Open alerts: 2" in texts(dash.subheader)
    tops = [m.value for m in dash.markdown if "occurrence" in m.value]
    assert len(tops) == 2 and tops[0].startswith("🔴 **broken** · broken: run failed")
    assert "high · 1 occurrence" in tops[1]

    # the name given on the Insights page is the one the Alerts page uses
    at = named(app_test("views/insights.py"))
    at.switch_page("views/alerts.py").run()
    ok(at)
    assert at.text_input(key="al_reviewer").value == NAME
    assert "Open: 2" in texts(at.subheader)
    assert alert["message"] in texts(at.text)
    shown = texts(at.markdown)
    assert f"[{run['id']}](/executions?run={run['id']})" in shown
    assert f"{url}/ok: **delivered**" in shown and f"{url}/fail: **" in shown
    assert "last answer HTTP 500" in shown
    assert "nothing was sent" in texts(at.caption)  # the default rule has no webhooks

    at.text_input(key=f"al_note_{alert['id']}").input("looking into it").run()
    at.button(key=f"al_ack_{alert['id']}").click().run()
    ok(at)
    assert "**acknowledged**" in texts(at.success)
    now = c.alert(alert["id"])
    assert (now["status"], now["acknowledged_by"]) == ("acknowledged", NAME)
    assert "Acknowledged: 1" in texts(at.subheader) and "Open: 1" in texts(at.subheader)
    assert f"Acknowledged by **{NAME}**" in texts(at.markdown)

    at.button(key=f"al_resolve_{alert['id']}").click().run()
    ok(at)
    now = c.alert(alert["id"])
    assert (now["status"], now["resolved_by"]) == ("resolved", NAME)
    resolved = next(d.value for d in at.dataframe if "resolved by" in d.value.columns)
    row = resolved.iloc[0]
    assert (row["title"], row["resolved by"], row["acknowledged by"]) == (
        alert["title"],
        NAME,
        NAME,
    )
    # someone else resolved the other one meanwhile: the API's refusal is shown
    c.resolve_alert(hooked["id"], "Bob")
    at.button(key=f"al_resolve_{hooked['id']}").click().run()
    ok(at)
    assert "already resolved by Bob" in texts(at.error)


def test_the_rule_editor_creates_disables_deletes_and_shows_validation_errors(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/alerts.py")
    ok(at)
    listed = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert set(listed["id"]) == {r["id"] for r in c.alert_rules()["rules"]}

    # a consecutive_failures rule without its threshold is refused with the API's message
    at.text_input(key="al_new_name").input("Orders streak").run()
    at.selectbox(key="al_new_kind").select("consecutive_failures").run()
    at.button(key="al_new_create").click().run()
    ok(at)
    assert "threshold: a consecutive_failures rule needs one" in texts(at.error)
    assert "orders-streak" not in {r["id"] for r in c.alert_rules()["rules"]}

    at.number_input(key="al_new_threshold").set_value(4).run()
    at.selectbox(key="al_new_pipeline").select("etl-data-pipeline").run()
    at.selectbox(key="al_new_severity").select("critical").run()
    at.button(key="al_new_create").click().run()
    ok(at)
    made = {r["id"]: r for r in c.alert_rules()["rules"]}["orders-streak"]
    assert (made["kind"], made["threshold"], made["pipeline_id"], made["severity"]) == (
        "consecutive_failures", 4, "etl-data-pipeline", "critical",
    )  # fmt: skip

    # the new rule is the one open for change: disable it, change it, delete it
    assert at.selectbox(key="al_rule_pick").value == "orders-streak"
    at.button(key="al_rule_toggle").click().run()
    ok(at)
    assert (
        c.alert_rules()["rules"]
        and not {r["id"]: r for r in c.alert_rules()["rules"]}["orders-streak"]["enabled"]
    )
    assert not at.checkbox(key="al_edit_orders-streak_enabled").value
    at.number_input(key="al_edit_orders-streak_threshold").set_value(1).run()
    at.button(key="al_rule_save").click().run()
    assert "needs a whole number of failed runs in a row, at least 2" in texts(at.error)
    at.button(key="al_rule_delete").click().run()
    assert "orders-streak" in {r["id"] for r in c.alert_rules()["rules"]}  # not ticked
    at.checkbox(key="al_del_sure_orders-streak").check().run()
    at.button(key="al_rule_delete").click().run()
    ok(at)
    assert "orders-streak" not in {r["id"] for r in c.alert_rules()["rules"]}
