"""Alerts: what the alert rules opened (acknowledge, resolve, the delivery of their webhooks),
the rules themselves (list, create, edit, enable or disable, delete), and the parts of the
runtime that are not ok."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

SHOWN = 25  # active alerts per status drawn with their deliveries; totals are the API's counts
RESOLVED_SHOWN = 50
SEVERITY = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵"}
RANK = {s: n for n, s in enumerate(SEVERITY)}
# kind: what its threshold means (kinds without one take none)
KINDS = {
    "run_failed": None,
    "consecutive_failures": "failed runs in a row (2 or more)",
    "duration_limit": "seconds a run may take",
    "duration_anomaly": None,
    "schedule_late": "seconds a scheduled run may start late",
    "validation_failure_rate": "percent of runs whose validation fails (0-100)",
}
DELIVERY = {"delivered": "✅", "pending": "⏳", "failed": "❌"}
EVERY = "(every pipeline)"
ALL = "(all)"

c = ui.client()
st.title("Alerts")


# --- who acts, and what the last action did ---------------------------------------------------


ui.reviewer_input("al_reviewer", help="Recorded with every acknowledgement and resolution.")


def tell(kind: str, message: str | Exception, what: str = "") -> None:
    ui.tell("al_outcome", kind, message, what)


def show_outcome() -> None:
    ui.show_outcome("al_outcome")


def act(alert: dict, verb: str) -> None:
    """Acknowledge or resolve (a button's on_click, done before the page is drawn again)."""
    by = ui.reviewer()
    if not by:
        tell(
            "error",
            f"Enter your name at the top of the page first: it is recorded with the"
            f" alert when you {verb} it.",
        )
        return
    note = st.session_state.get(f"al_note_{alert['id']}", "").strip() or None
    call = c.acknowledge_alert if verb == "acknowledge" else c.resolve_alert
    try:
        done = call(alert["id"], by, note)
    except FlexiError as exc:
        tell("error", exc, f"Could not {verb} “{alert['title']}”")
        return
    tell(
        "success",
        f"“{done['title']}” is now **{done['status']}** (by {by}"
        + (f": {note}" if note else "")
        + ").",
    )


# --- alerts -----------------------------------------------------------------------------------


def deliveries(alert_id: str) -> None:
    """How the alert's webhook notifications went."""
    try:
        sent = c.alert(alert_id)["notifications"]
    except FlexiError as exc:
        ui.show_error(exc, "Could not read its deliveries")
        return
    if not sent:
        st.caption("Webhooks: none configured for its rule or the runtime, so nothing was sent.")
        return
    lines = []
    for n in sent:
        tries = f"{n['attempts']} attempt{'s' if n['attempts'] != 1 else ''}"
        got = f", last answer HTTP {n['last_status_code']}" if n["last_status_code"] else ""
        err = f", last error: {n['last_error']}" if n["last_error"] else ""
        at = f" at {ui.when(n['delivered_at'])} UTC" if n["delivered_at"] else ""
        lines.append(
            f"{DELIVERY.get(n['status'], '')} {n['url']}: **{n['status']}**{at} ({tries}{got}{err})"
        )
    st.markdown("Webhooks:  \n" + "  \n".join(lines))


def card(alert: dict) -> None:
    st.markdown(
        f"{SEVERITY.get(alert['severity'], '')} **{alert['severity']}** ·"
        f" **{alert['pipeline_id']}** · {alert['title']}"
    )
    st.text(alert["message"])  # as written: an error message is not markdown
    st.caption(
        f"{alert['occurrences']} occurrence{'s' if alert['occurrences'] != 1 else ''}; first seen"
        f" {ui.when(alert['created_at'])} UTC, last seen {ui.when(alert['last_seen_at'])} UTC"
        f" ({ui.ago(alert['last_seen_at'])}); rule {alert['rule_id']} ({alert['kind']})"
    )
    if alert["evidence"]:
        st.markdown(
            "Runs: "
            + ", ".join(f"[{r}]({ui.run_link(r)})" for r in alert["evidence"][-10:])
            + (
                f" (the latest 10 of {len(alert['evidence'])})"
                if len(alert["evidence"]) > 10
                else ""
            )
        )
    if alert["acknowledged_by"]:
        st.markdown(
            f"Acknowledged by **{alert['acknowledged_by']}** at"
            f" {ui.when(alert['acknowledged_at'])} UTC"
        )
    deliveries(alert["id"])
    note, ack, res = st.columns([4, 1, 1], vertical_alignment="bottom")
    note.text_input("Note (optional)", key=f"al_note_{alert['id']}", max_chars=2000)
    if alert["status"] == "open":
        ack.button(
            "Acknowledge", key=f"al_ack_{alert['id']}", on_click=act, args=(alert, "acknowledge")
        )
    res.button(
        "Resolve",
        key=f"al_resolve_{alert['id']}",
        type="primary",
        on_click=act,
        args=(alert, "resolve"),
    )


try:
    health = c.health()  # a degraded runtime (503) answers with its body
    pipelines = [p["id"] for p in c.pipelines(limit=1000)["pipelines"]]
    rules = c.alert_rules()["rules"]
except FlexiError as exc:
    ui.show_error(exc, "Could not reach the runtime")
    st.stop()
show_outcome()

st.subheader("Runtime parts not ok")
st.caption("From /health: store, engine and scheduler.")
not_ok = {k: v for k, v in health["components"].items() if v.get("status") != "ok"}
for name, comp in not_ok.items():
    detail = comp.get("detail") or ", ".join(f"{k}: {v}" for k, v in comp.items() if k != "status")
    if comp.get("status") == "off":
        st.warning(f"{name} is off (this runtime was started without it). {detail}")
    else:
        st.error(f"{name}: {comp.get('status')} — {detail}")
if not not_ok:
    st.write(f"All {len(health['components'])} parts answer ok: {', '.join(health['components'])}.")

f1, f2 = st.columns(2)
pick = f1.selectbox("Pipeline", [ALL, *pipelines], key="al_f_pipe")
level = f2.selectbox("Severity", [ALL, *SEVERITY], key="al_f_severity")
filters = {
    "pipeline_id": None if pick == ALL else pick,
    "severity": None if level == ALL else level,
}
try:
    found = {
        status: c.alerts(
            status=status, limit=SHOWN if status != "resolved" else RESOLVED_SHOWN, **filters
        )
        for status in ("open", "acknowledged", "resolved")
    }
except FlexiError as exc:
    ui.show_error(exc, "Could not list the alerts")
    st.stop()

for status, blurb in (
    ("open", "Nobody has said they are on these yet. Most severe first, then newest."),
    (
        "acknowledged",
        "Someone is on these; they still resolve themselves when the condition clears.",
    ),
):
    page = found[status]
    st.subheader(f"{status.capitalize()}: {page['total']}")
    st.caption(
        blurb + (f" The {SHOWN} newest are shown." if page["total"] > len(page["alerts"]) else "")
    )
    if not page["alerts"]:
        st.write(f"No {status} alert.")
    for alert in sorted(page["alerts"], key=lambda a: RANK.get(a["severity"], 9)):
        with st.container(border=True):
            card(alert)

done = found["resolved"]
st.subheader(f"Resolved: {done['total']}")
if done["alerts"]:
    st.caption(
        "Newest first"
        + (f"; the latest {RESOLVED_SHOWN}" if done["total"] > len(done["alerts"]) else "")
        + '. Resolved by "auto": its condition cleared by itself.'
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "severity": f"{SEVERITY.get(a['severity'], '')} {a['severity']}",
                    "pipeline": a["pipeline_id"],
                    "title": a["title"],
                    "occurrences": a["occurrences"],
                    "first seen (UTC)": ui.when(a["created_at"]),
                    "last seen (UTC)": ui.when(a["last_seen_at"]),
                    "acknowledged by": a["acknowledged_by"] or "",
                    "acknowledged (UTC)": ui.when(a["acknowledged_at"]),
                    "resolved by": a["resolved_by"] or "",
                    "resolved (UTC)": ui.when(a["resolved_at"]),
                    "resolution": a["resolution"] or "",
                    "latest run": ui.run_link(a["evidence"][-1]) if a["evidence"] else None,
                }
                for a in done["alerts"]
            ]
        ),
        hide_index=True,
        width="stretch",
        key="al_resolved",
        column_config={
            "latest run": st.column_config.LinkColumn(display_text=r"run=(.*)$"),
        },
    )
else:
    st.write("No resolved alert.")


# --- rules ------------------------------------------------------------------------------------


def rule_body(prefix: str) -> dict:
    """A rule as the API takes it, from the widgets under `prefix`."""
    s = st.session_state
    pipeline = s[f"{prefix}pipeline"]
    return {
        "name": s[f"{prefix}name"].strip(),
        "kind": s[f"{prefix}kind"],
        "pipeline_id": None if pipeline == EVERY else pipeline,
        "threshold": s[f"{prefix}threshold"],
        "window_runs": s[f"{prefix}window"],
        "severity": s[f"{prefix}severity"],
        "webhooks": [u.strip() for u in s[f"{prefix}webhooks"].splitlines() if u.strip()],
        "enabled": s[f"{prefix}enabled"],
    }


def as_body(rule: dict, **changes) -> dict:
    keep = (
        "name",
        "kind",
        "pipeline_id",
        "threshold",
        "window_runs",
        "severity",
        "webhooks",
        "enabled",
    )
    return {k: rule[k] for k in keep} | changes


def create_rule() -> None:
    try:
        made = c.create_alert_rule(rule_body("al_new_"))
    except FlexiError as exc:
        tell("error", exc, "Rule not created")
        return
    tell("success", f"Rule {made['id']} created ({made['kind']}).")
    st.session_state["al_rule_pick"] = made["id"]


def save_rule(rule_id: str, body: dict | None = None) -> None:
    try:
        saved = c.update_alert_rule(rule_id, body or rule_body(f"al_edit_{rule_id}_"))
    except FlexiError as exc:
        tell("error", exc, f"Rule {rule_id} not saved")
        return
    tell("success", f"Rule {rule_id} saved ({'enabled' if saved['enabled'] else 'disabled'}).")
    st.session_state.pop(f"al_edit_{rule_id}_enabled", None)  # the form shows the saved state


def delete_rule(rule_id: str) -> None:
    if not st.session_state.get(f"al_del_sure_{rule_id}"):
        tell("error", f"Tick “yes, delete {rule_id}” first.")
        return
    try:
        c.delete_alert_rule(rule_id)
    except FlexiError as exc:
        tell("error", exc, f"Rule {rule_id} not deleted")
        return
    tell("success", f"Rule {rule_id} deleted; its unresolved alerts were resolved.")
    st.session_state.pop("al_rule_pick", None)


def rule_fields(prefix: str, rule: dict | None) -> None:
    """The widgets of a rule (a new one when `rule` is None), keyed under `prefix`."""
    r = rule or {}
    a, b, d = st.columns(3)
    a.text_input("Name", r.get("name", ""), key=f"{prefix}name", max_chars=200)
    kinds = list(KINDS)
    kind = b.selectbox("Kind", kinds, kinds.index(r.get("kind", "run_failed")), key=f"{prefix}kind")
    levels = list(SEVERITY)
    d.selectbox(
        "Severity", levels, levels.index(r.get("severity", "medium")), key=f"{prefix}severity"
    )
    a, b, d = st.columns(3)
    where = [EVERY, *pipelines]
    now = r.get("pipeline_id") or EVERY
    a.selectbox("Pipeline", where, where.index(now) if now in where else 0, key=f"{prefix}pipeline")
    b.number_input(
        "Threshold",
        value=r.get("threshold"),
        key=f"{prefix}threshold",
        help=f"{kind}: {KINDS[kind] or 'takes none, leave it empty'}",
    )
    d.number_input(
        "Window (runs)",
        1,
        1000,
        r.get("window_runs"),
        1,
        key=f"{prefix}window",
        help="validation_failure_rate only: the latest runs it counts (default 20)",
    )
    st.text_area(
        "Webhooks (one http(s) URL per line)",
        "\n".join(r.get("webhooks", [])),
        key=f"{prefix}webhooks",
        height=68,
    )
    st.checkbox("Enabled", r.get("enabled", True), key=f"{prefix}enabled")


st.header("Rules")
st.caption(
    "Each rule judges every finished run of its pipeline (or of every pipeline); schedule_late"
    " also watches the schedules' fire times. A new alert is POSTed to the rule's webhooks."
)
if rules:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "id": r["id"],
                    "name": r["name"],
                    "kind": r["kind"],
                    "pipeline": r["pipeline_id"] or EVERY,
                    "threshold": r["threshold"],
                    "window": r["window_runs"],
                    "severity": f"{SEVERITY.get(r['severity'], '')} {r['severity']}",
                    "webhooks": len(r["webhooks"]),
                    "enabled": r["enabled"],
                }
                for r in rules
            ]
        ),
        hide_index=True,
        width="stretch",
        key="al_rules",
    )
else:
    st.write("No rules: nothing opens alerts. Create one below.")

edit, new = st.tabs(["Change a rule", "New rule"])
with edit:
    by_id = {r["id"]: r for r in rules}
    if by_id:
        if st.session_state.get("al_rule_pick") not in by_id:
            st.session_state.pop("al_rule_pick", None)
        rid = st.selectbox(
            "Rule",
            list(by_id),
            key="al_rule_pick",
            format_func=lambda i: f"{i} ({by_id[i]['name']})",
        )
        rule = by_id[rid]
        rule_fields(f"al_edit_{rid}_", rule)
        s, t, d, sure = st.columns([1, 1, 1, 2], vertical_alignment="center")
        s.button(
            "Save changes", key="al_rule_save", type="primary", on_click=save_rule, args=(rid,)
        )
        t.button(
            "Disable" if rule["enabled"] else "Enable",
            key="al_rule_toggle",
            on_click=save_rule,
            args=(rid, as_body(rule, enabled=not rule["enabled"])),
        )
        d.button("Delete", key="al_rule_delete", on_click=delete_rule, args=(rid,))
        sure.checkbox(f"yes, delete {rid}", key=f"al_del_sure_{rid}")
    else:
        st.write("No rule to change.")
with new:
    rule_fields("al_new_", None)
    st.button("Create rule", key="al_new_create", type="primary", on_click=create_rule)
