"""Insights: what the models say about each pipeline and a person's review of it (approve,
reject, dismiss, snooze; the review policy; the audit trail of decisions), then what the run
history says (reliability, durations, the last 14 days), measured from the stored runs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

DAYS = 14
TOP = 5
SHOWN = 50  # insight cards per filter; the total is always the API's count
SEVERITY = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵", "info": "⚪"}
TYPES = ["failure_prediction", "anomaly", "optimization", "cost"]
STATUSES = [
    "open",
    "pending_review",
    "blocked",
    "applied",
    "approved",
    "rejected",
    "dismissed",
    "snoozed",
    "expired",
]
LOW = "low confidence — shown, never acted on"
EFFECT = {"reject": "nothing changed", "dismiss": "hidden for a week or until it worsens"}
ALL = "(all)"

c = ui.client()
st.title("Insights")


# --- who decides, and what the last decision did ------------------------------------------------


ui.reviewer_input(
    "in_reviewer", help="Recorded in the audit log with every decision and policy change."
)


def tell(kind: str, message: str | Exception, what: str = "") -> None:
    ui.tell("in_outcome", kind, message, what)


def show_outcome() -> None:
    ui.show_outcome("in_outcome")


def reviewer() -> str | None:
    name = ui.reviewer()
    if not name:
        tell(
            "error",
            "Enter your name at the top of the page first: every decision and policy"
            " change is recorded with who made it.",
        )
    return name or None


def changes_of(insight_id: str) -> str:
    """What an approval changed, as the audit log recorded it."""
    try:
        found = c.audit(
            target_type="insight", target_id=insight_id, action="insight.approve", limit=1
        )["entries"]
    except FlexiError as exc:
        return f"what it changed could not be read from the audit log ({exc})"
    said = []
    for ch in found[0]["detail"].get("changes") or [] if found else []:
        if ch["before"] is None:
            said.append(f"schedule {ch['schedule_id']} no longer exists")
        elif ch["before"]["enabled"]:
            said.append(f"schedule {ch['schedule_id']} paused")
        else:
            said.append(f"schedule {ch['schedule_id']} was already paused")
    return ", ".join(said) or "nothing to change"


def decide(ins: dict, decision: str) -> None:
    """A decision button's on_click: done before the page is drawn again, so every section
    shows the insight's new status."""
    by = reviewer()
    if by is None:
        return
    reason = st.session_state.get(f"in_reason_{ins['id']}", "").strip() or None
    if decision != "approve" and reason is None:
        tell("error", f"Give a reason to {decision} “{ins['title']}” (kept in the audit log).")
        return
    more = {"hours": st.session_state[f"in_hours_{ins['id']}"]} if decision == "snooze" else {}
    try:
        done = c.decide_insight(ins["id"], decision, by, reason, **more)
    except FlexiError as exc:
        tell("error", exc, f"Could not {decision} “{ins['title']}”")
        return
    if decision == "approve":
        effect = changes_of(ins["id"])
    elif decision == "snooze":
        effect = f"hidden until {ui.when(done['snoozed_until'])} UTC"
    else:
        effect = EFFECT[decision]
    tell(
        "success",
        f"{ins['pipeline_id']}: “{ins['title']}” — {effect}. Its status is now"
        f" **{done['status']}** (by {done['decided_by']}).",
    )


def recompute() -> None:
    try:
        r = c.recompute_insights()
    except FlexiError as exc:
        tell("error", exc, "Could not recompute the insights")
        return
    tell(
        "success",
        f"Recomputed {r['insights']} insights in {r['seconds']:.1f} s: {r['created']}"
        f" new, {r['updated']} updated, {r['kept']} decisions kept, {r['expired']} expired.",
    )


# --- the insights -----------------------------------------------------------------------------


def action_state(ins: dict) -> str:
    by = f" by {ins['decided_by']}" if ins["decided_by"] else ""
    reason = f": {ins['reason']}" if ins["reason"] else ""
    return {
        "pending_review": "waiting for a person's review",
        "open": "open, for information",
        "blocked": "blocked: too unsure to act on",
        "applied": f"applied automatically{by} ({ins['reason'] or 'auto-apply'})",
        "approved": f"approved and carried out{by}{reason}",
        "rejected": f"rejected{by}, nothing changed{reason}",
        "dismissed": f"dismissed{by}{reason}",
        "snoozed": f"snoozed{by} until {ui.when(ins['snoozed_until'])} UTC{reason}",
        "expired": "expired: the history no longer shows it",
    }[ins["status"]]


def figure(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def headline(ins: dict) -> str:
    stage = f" / stage {ins['stage_id']}" if ins["stage_id"] else ""
    return (
        f"{SEVERITY[ins['severity']]} {ins['severity']} · {ins['pipeline_id']}{stage} ·"
        f" {ins['title']} · {ins['confidence']:.0%} · {ins['status']}"
        + (" · ⚠️ low confidence" if ins["low_confidence"] else "")
    )


def card(ins: dict) -> None:
    """One insight: how sure, what it says, what it rests on, what it proposes, its status."""
    st.markdown(
        f"{ins['type']} · confidence **{ins['confidence']:.0%}** · band **{ins['band']}** ·"
        f" status **{ins['status']}**"
    )
    if ins["low_confidence"]:
        st.warning(f"{LOW}: below the medium threshold of {ins['pipeline_id']}'s review policy.")
    st.write(ins["explanation"])
    if ins["evidence"]:
        st.markdown("Evidence: " + ", ".join(f"[{r}]({ui.run_link(r)})" for r in ins["evidence"]))
    if ins["action"]:
        st.markdown(f"Proposed action: {ins['action']['description']} — *{action_state(ins)}*")
    else:
        st.markdown(f"No action proposed — *{action_state(ins)}*")
    st.caption(
        " · ".join(f"{k} {figure(v)}" for k, v in ins["data"].items())
        + f"  \nmodel {ins['model_version']}, input {ins['input_hash'][:12]}, updated"
        f" {ui.ago(ins['updated_at'])}, valid until {ui.when(ins['expires_at'])} UTC"
    )


def controls(ins: dict) -> None:
    """Approve (optional reason) / reject / dismiss / snooze (required reason) one insight."""
    key = ins["id"]
    st.text_input(
        "Reason (needed to reject, dismiss or snooze)", key=f"in_reason_{key}", max_chars=2000
    )
    a, r, d, h, s = st.columns([1, 1, 1, 1, 1], vertical_alignment="bottom")
    a.button(
        "Approve",
        key=f"in_approve_{key}",
        type="primary",
        on_click=decide,
        args=(ins, "approve"),
        help=ins["action"]["description"] if ins["action"] else None,
    )
    r.button("Reject", key=f"in_reject_{key}", on_click=decide, args=(ins, "reject"))
    d.button("Dismiss", key=f"in_dismiss_{key}", on_click=decide, args=(ins, "dismiss"))
    h.number_input("Hours", 1.0, 24.0 * 365, 24.0, 1.0, key=f"in_hours_{key}")
    s.button("Snooze", key=f"in_snooze_{key}", on_click=decide, args=(ins, "snooze"))


try:
    pipelines = c.pipelines(limit=1000)["pipelines"]
    policy = c.insight_policy()
except FlexiError as exc:
    ui.show_error(exc, "Could not reach the runtime")
    st.stop()
show_outcome()

st.header("Model insights")
try:
    pending = c.insights(status="pending_review", limit=100)
except FlexiError as exc:
    ui.show_error(exc, "Could not list the insights")
    st.stop()
left, right = st.columns([4, 1], vertical_alignment="center")
left.caption(
    "Fitted on this runtime's own run history, recomputed after runs finish; last computed"
    + (
        f" {ui.when(pending['computed_at'])} UTC ({ui.ago(pending['computed_at'])})."
        if pending["computed_at"]
        else " never since the runtime started."
    )
)
right.button("Recompute now", key="in_recompute", on_click=recompute)

st.subheader(f"Waiting for review: {pending['total']}")
g = policy["global"]
st.caption(
    "Insights whose action needs a person (confidence at or above the medium threshold). Approve"
    " carries the action out; reject, dismiss and snooze change nothing and need a reason."
)
if not pending["insights"]:
    st.write("Nothing waits for a decision.")
for ins in pending["insights"]:
    with st.container(border=True):
        st.markdown(f"**{headline(ins)}**")
        card(ins)
        controls(ins)

st.subheader("All insights")
f1, f2, f3, f4 = st.columns(4)
filters = {
    "pipeline_id": f1.selectbox("Pipeline", [ALL, *(p["id"] for p in pipelines)], key="in_f_pipe"),
    "type": f2.selectbox("Type", [ALL, *TYPES], key="in_f_type"),
    "severity": f3.selectbox("Severity", [ALL, *SEVERITY], key="in_f_severity"),
    "status": f4.selectbox("Status", [ALL, *STATUSES], key="in_f_status"),
}
try:
    found = c.insights(**{k: None if v == ALL else v for k, v in filters.items()}, limit=SHOWN)
except FlexiError as exc:
    ui.show_error(exc, "Could not list the insights")
    found = {"insights": [], "total": 0}
st.caption(
    f"{found['total']} insight(s), most severe and most confident first"
    + (f"; the first {SHOWN} shown" if found["total"] > SHOWN else "")
    + ("; expired ones only under status expired" if filters["status"] == ALL else "")
)
for ins in found["insights"]:
    with st.expander(headline(ins)):
        card(ins)
if not found["insights"]:
    st.write(
        "No insight matches."
        if any(v != ALL for v in filters.values())
        else "No insights yet: they need finished runs to learn from."
    )


# --- the review policy ------------------------------------------------------------------------


def save_policy(pipeline_id: str | None) -> None:
    by = reviewer()
    if by is None:
        return
    if pipeline_id is None:
        fields = {
            k: st.session_state[f"in_pol_{k}"]
            for k in ("high", "medium", "auto_apply", "risk_gate")
        }
    else:
        fields = {k: st.session_state[f"in_ov_{k}_{pipeline_id}"] for k in ("high", "medium")} | {
            k: {"on": True, "off": False}.get(st.session_state[f"in_ov_{k}_{pipeline_id}"])
            for k in ("auto_apply", "risk_gate")
        }
        fields = {k: v for k, v in fields.items() if v is not None}
    try:
        c.set_insight_policy(by, pipeline_id, **fields)
    except FlexiError as exc:
        tell("error", exc, "Policy not changed")
        return
    tell("success", f"Policy of {pipeline_id or 'every pipeline (global)'} saved by {by}.")


def remove_override(pipeline_id: str) -> None:
    by = reviewer()
    if by is None:
        return
    try:
        c.delete_insight_policy(pipeline_id, by)
    except FlexiError as exc:
        tell("error", exc, "Override not removed")
        return
    tell("success", f"{pipeline_id} follows the global policy again (removed by {by}).")


def onoff(v: bool) -> str:
    return "on" if v else "off"


st.header("Review policy")
st.caption(
    f"Now: high from {g['high']:.2f}, medium from {g['medium']:.2f} (below: blocked, shown as"
    f" low confidence), auto-apply {onoff(g['auto_apply'])}, risk gate {onoff(g['risk_gate'])}."
    " Auto-apply is off by default; when on, a high-band insight's action is carried out without"
    f" review only if it is on the safe list: {', '.join(policy['safe_actions'])}. The risk gate"
    " (off by default) holds a new run whose next-run failure risk is critical until a person"
    " releases it on the Executions page."
)
a, b, d, e = st.columns(4)
a.number_input("High band from", 0.0, 1.0, g["high"], 0.05, format="%.2f", key="in_pol_high")
b.number_input("Medium band from", 0.0, 1.0, g["medium"], 0.05, format="%.2f", key="in_pol_medium")
d.toggle("Auto-apply safe actions", g["auto_apply"], key="in_pol_auto_apply")
e.toggle("Risk gate", g["risk_gate"], key="in_pol_risk_gate")
st.button("Save the global policy", key="in_pol_save", on_click=save_policy, args=(None,))

st.subheader("Per-pipeline overrides")
overrides = policy["pipelines"]
if overrides:
    st.dataframe(
        pd.DataFrame(
            [
                {"pipeline": pid, **{k: o.get(k, "(global)") for k in ("high", "medium")}}
                | {k: onoff(o[k]) if k in o else "(global)" for k in ("auto_apply", "risk_gate")}
                for pid, o in overrides.items()
            ]
        ).astype(str),
        hide_index=True,
        key="in_overrides",
    )
else:
    st.write("No pipeline has its own policy: all follow the global one.")
if pipelines:
    pid = st.selectbox("Pipeline", [p["id"] for p in pipelines], key="in_ov_pipeline")
    mine = overrides.get(pid, {})
    st.caption("Empty or “global”: the field follows the global policy.")
    a, b, d, e = st.columns(4)
    a.number_input(
        "High band from",
        0.0,
        1.0,
        mine.get("high"),
        0.05,
        format="%.2f",
        key=f"in_ov_high_{pid}",
        placeholder="global",
    )
    b.number_input(
        "Medium band from",
        0.0,
        1.0,
        mine.get("medium"),
        0.05,
        format="%.2f",
        key=f"in_ov_medium_{pid}",
        placeholder="global",
    )
    for col, k, label in ((d, "auto_apply", "Auto-apply"), (e, "risk_gate", "Risk gate")):
        now = "global" if k not in mine else onoff(mine[k])
        col.selectbox(
            label,
            ["global", "on", "off"],
            ["global", "on", "off"].index(now),
            key=f"in_ov_{k}_{pid}",
        )
    s, r, _ = st.columns([1, 1, 3])
    s.button("Save the override", key="in_ov_save", on_click=save_policy, args=(pid,))
    if pid in overrides:
        r.button("Remove the override", key="in_ov_remove", on_click=remove_override, args=(pid,))


# --- recent decisions -------------------------------------------------------------------------

st.header("Recent decisions")
st.caption(
    "From the audit log: every decision on an insight, the model's own (actor ai:…) and each"
    " person's, and every policy change."
)
try:
    decided = c.audit(target_type="insight", limit=50)
    changed = c.audit(target_type="policy", limit=20)
except FlexiError as exc:
    ui.show_error(exc, "Could not read the audit log")
else:
    entries = sorted(
        decided["entries"] + changed["entries"], key=lambda e: e["created_at"], reverse=True
    )
    if not entries:
        st.write("No decision yet.")
    else:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "when (UTC)": ui.when(e["created_at"]),
                        "who": e["actor"],
                        "what": e["action"],
                        "on": e["target_id"],
                        "title": e["detail"].get("title", ""),
                        "status": " → ".join(
                            str((e["detail"].get(k) or {}).get("status") or "-")
                            for k in ("before", "after")
                        )
                        if e["target_type"] == "insight"
                        else "",
                        "reason": e["detail"].get("reason") or "",
                        "model version": e["detail"].get("model_version") or "",
                        "input hash": (e["detail"].get("input_hash") or "")[:16],
                    }
                    for e in entries
                ]
            ),
            hide_index=True,
            width="stretch",
            key="in_decisions",
        )
        st.caption(
            f"{decided['total']} insight and {changed['total']} policy entries in all; the audit"
            f" chain {'checks out' if decided['chain_ok'] else 'is BROKEN (an entry was altered)'}."
        )


# --- the run history --------------------------------------------------------------------------

st.header("Run history")
st.caption(
    "Measured from each pipeline's stored runs: success rate (completed of completed + failed),"
    f" p50/p95 duration of completed runs, and the last {DAYS} days (UTC)."
)


def last_days() -> list[date]:
    today = datetime.now(UTC).date()
    return [today - timedelta(days=n) for n in range(DAYS - 1, -1, -1)]


def daily(trend: list[dict]) -> pd.DataFrame:
    """The API's trend (days with runs only) over every one of the last DAYS days."""
    found = {date.fromisoformat(d["day"][:10]): d for d in trend}
    return pd.DataFrame(
        [
            {
                "day": day,
                "runs": found.get(day, {}).get("runs", 0),
                "failed": found.get(day, {}).get("failed", 0),
                "avg_duration": found.get(day, {}).get("avg_duration"),
            }
            for day in last_days()
        ]
    )


try:
    stats = {p["id"]: c.pipeline_metrics(p["id"]) for p in pipelines}
    latest = {
        pid: c.executions(pipeline_id=pid, limit=1)["executions"][0]
        for pid, m in stats.items()
        if m["total_executions"]
    }
except FlexiError as exc:
    ui.show_error(exc, "Could not load the run history")
    st.stop()

ran = {pid: m for pid, m in stats.items() if m["total_executions"]}
if not ran:
    st.write(
        f"None of the {len(pipelines)} pipelines has run yet, so there is no history to measure."
    )
    st.stop()

records = []
for pid, m in ran.items():
    by = m["runs_by_status"]
    finished = by.get("completed", 0) + by.get("failed", 0)
    days = daily(m["trend"])
    last = latest[pid]
    records.append(
        {
            "pipeline": pid,
            "runs": m["total_executions"],
            "failed": by.get("failed", 0),
            # no finished run yet (only cancelled or running ones): no rate, rather than 0 %
            "success rate %": round(m["success_rate"], 1) if finished else None,
            "p50 s": m["p50_duration"],
            "p95 s": m["p95_duration"],
            "last run": ui.run_link(last["id"]),
            "last status": ui.icon(last["status"]),
            "last run at (UTC)": ui.when(last["created_at"]),
            f"runs, {DAYS} d": days["runs"].tolist(),
            f"failed, {DAYS} d": days["failed"].tolist(),
        }
    )
table = pd.DataFrame(records)
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    key="in_table",
    column_config={
        "success rate %": st.column_config.NumberColumn(format="%.1f"),
        "p50 s": st.column_config.NumberColumn("p50", format="%.2f s"),
        "p95 s": st.column_config.NumberColumn("p95", format="%.2f s"),
        "last run": st.column_config.LinkColumn(display_text=r"run=(.*)$"),
        f"runs, {DAYS} d": st.column_config.BarChartColumn(y_min=0),
        f"failed, {DAYS} d": st.column_config.BarChartColumn(y_min=0),
    },
)

a, b = st.columns(2)
with a:
    st.subheader("Least reliable")
    st.caption("Lowest success rate first; only pipelines with a failed run.")
    worst = table[table["failed"] > 0].sort_values(
        ["success rate %", "failed"], ascending=[True, False]
    )
    if worst.empty:
        st.write("No pipeline has a failed run.")
    for rank, (_, r) in enumerate(worst.head(TOP).iterrows(), 1):
        st.markdown(
            f"{rank}. **{r['pipeline']}**: {r['success rate %']:.1f}% completed,"
            f" {r['failed']} failed of {r['runs']} runs"
        )
with b:
    st.subheader("Slowest")
    st.caption("Highest p95 duration of completed runs first.")
    slow = table.dropna(subset=["p95 s"]).sort_values("p95 s", ascending=False)
    if slow.empty:
        st.write("No pipeline has a completed run yet.")
    for rank, (_, r) in enumerate(slow.head(TOP).iterrows(), 1):
        st.markdown(
            f"{rank}. **{r['pipeline']}**: p95 {ui.seconds(r['p95 s'])},"
            f" median {ui.seconds(r['p50 s'])}"
        )

st.subheader(f"The last {DAYS} days")
pick = st.selectbox("Pipeline", list(ran), key="in_pick")
days = daily(ran[pick]["trend"])
if not days["runs"].any():
    st.write(f"{pick} has not run in the last {DAYS} days.")
else:
    left, right = st.columns(2)
    runs_fig = px.bar(
        days.assign(**{"not failed": days["runs"] - days["failed"]}),
        x="day",
        y=["not failed", "failed"],
        labels={"value": "runs", "variable": ""},
        title="Runs per day",
    )
    left.plotly_chart(runs_fig, key="in_trend")
    if days["avg_duration"].notna().any():
        dur_fig = px.line(
            days,
            x="day",
            y="avg_duration",
            markers=True,
            labels={"avg_duration": "seconds"},
            title="Mean duration of completed runs",
        )
        right.plotly_chart(dur_fig, key="in_dur")
    else:
        right.write("No completed run in these days, so no duration to show.")
