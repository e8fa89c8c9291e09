"""Dashboard: today's runs, success rate, durations and the runtime's own load; runs over time;
recent failures, what needs attention, the open alerts and the top insights.

Seven API calls in all (system metrics, timeline, failed runs, schedules, health, open alerts,
insights), each answered from aggregates or one bounded page, so the page stays fast however
long the history is.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

WINDOWS = {"48 hours, per hour": (48, "hour"), "30 days, per day": (30 * 24, "day")}
STATUS_COLORS = {"completed": "#2e7d32", "failed": "#c62828", "cancelled": "#9e9e9e"}
SEVERITY = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵", "info": "⚪"}
RANK = {s: n for n, s in enumerate(SEVERITY)}
TOP = 5
ALERTS_READ = 100  # the API lists alerts newest first; the top 5 by severity are among these
INSIGHTS_READ = 50  # the API sorts by severity and confidence; the top 5 are among these
SHOW_INSIGHT = ("open", "pending_review", "applied", "approved")  # not dismissed, snoozed, ...


def filled_buckets(buckets: list[dict], hours: int, bucket: str):
    """The timeline as a DataFrame with a row for every bucket of the window (the API leaves
    out buckets without runs; a chart should show them as zero)."""
    import pandas as pd

    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    now = datetime.now(UTC)
    end = now.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        end = end.replace(hour=0)
    count = hours if bucket == "hour" else hours // 24
    starts = [end - step * i for i in range(count, -1, -1)]
    frame = pd.DataFrame({"start": pd.to_datetime(starts, utc=True)})
    got = pd.DataFrame(buckets)
    if got.empty:
        for col in ("runs", "completed", "failed", "cancelled"):
            frame[col] = 0
        frame["p50_duration"] = frame["p95_duration"] = None
        return frame
    got["start"] = pd.to_datetime(got["start"], utc=True)
    frame = frame.merge(got, on="start", how="outer").sort_values("start")
    counts = ["runs", "completed", "failed", "cancelled"]
    frame[counts] = frame[counts].fillna(0).astype(int)
    return frame


def runs_chart(frame, bucket: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for status, color in STATUS_COLORS.items():
        fig.add_bar(x=frame["start"], y=frame[status], name=status, marker_color=color)
    fig.update_layout(
        barmode="stack",
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"Runs per {bucket} (UTC)",
        legend={"orientation": "h"},
    )
    return fig


def duration_chart(frame, bucket: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for col, label in (("p50_duration", "p50"), ("p95_duration", "p95")):
        fig.add_scatter(
            x=frame["start"], y=frame[col], name=label, mode="lines+markers", connectgaps=False
        )
    fig.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"Run duration per {bucket}, seconds (finished runs)",
        legend={"orientation": "h"},
    )
    return fig


def health_components(c) -> dict[str, dict]:
    """The runtime's /health components; a degraded runtime answers 503 with the same body."""
    try:
        return c.health()["components"]
    except FlexiError as exc:
        try:
            return json.loads(str(exc))["components"]
        except (ValueError, KeyError, TypeError):
            return {"runtime": {"status": "error", "detail": str(exc)}}


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


c = ui.client()
st.title("Dashboard")

try:
    system = c.system_metrics()
except FlexiError as exc:
    ui.show_error(exc, "Could not read the runtime's metrics")
    st.stop()

window = st.radio("Window", list(WINDOWS), horizontal=True, key="dash_window")
hours, bucket = WINDOWS[window]
try:
    timeline = c.timeline(hours=hours, bucket=bucket)
except FlexiError as exc:
    ui.show_error(exc, "Could not read the runs timeline")
    timeline = None

today = sum(timeline["today"].values()) if timeline else None
finished = system["runs_by_status"].get("completed", 0) + system["runs_by_status"].get("failed", 0)

cols = st.columns(4)
cols[0].metric(
    "Runs today (UTC)",
    "-" if today is None else f"{today:,}",
    help="Runs created since midnight UTC, any status",
)
cols[1].metric(
    "Success rate",
    f"{system['success_rate']:.1f} %" if finished else "-",
    help=f"Completed of {finished:,} finished runs (all history)",
)
cols[2].metric(
    "p95 duration",
    ui.seconds(system["p95_duration"]),
    help=f"Completed runs; p50 {ui.seconds(system['p50_duration'])}",
)
cols[3].metric("Runs in history", f"{system['total_executions']:,}")

cols = st.columns(4)
cols[0].metric("Active runs", system["active_executions"])
cols[1].metric("Queue depth", system["queue_depth"], help="Runs waiting for a worker")
cols[2].metric(
    "Runtime CPU",
    f"{system['runtime_cpu_percent']:.1f} %",
    help=f"The runtime process, since the last read; the machine: {system['cpu_usage']:.1f} %",
)
cols[3].metric(
    "Runtime memory (RSS)",
    mib(system["runtime_rss_bytes"]),
    help=f"The machine's memory in use: {system['memory_usage']:.1f} %",
)

if timeline is not None:
    frame = filled_buckets(timeline["buckets"], hours, bucket)
    left, right = st.columns(2)
    left.plotly_chart(runs_chart(frame, bucket), key="dash_runs_chart")
    right.plotly_chart(duration_chart(frame, bucket), key="dash_duration_chart")

left, right = st.columns(2)

with left:
    st.subheader("Recent failures")
    try:
        failed = c.executions(status="failed", limit=10)
    except FlexiError as exc:
        ui.show_error(exc, "Could not list failed runs")
        failed = None
    if failed is not None:
        if not failed["executions"]:
            st.write("No failed runs in the history.")
        for run in failed["executions"]:
            error = (run["error"] or "").splitlines()[0] if run["error"] else "no error message"
            if len(error) > 160:
                error = error[:157] + "..."
            st.markdown(
                f"❌ [{run['id']}]({ui.run_link(run['id'])}) **{run['pipeline_id']}**"
                f" · {ui.ago(run['created_at'])}  \n{error}"
            )
        if failed["total"] > len(failed["executions"]):
            st.caption(f"{failed['total']:,} failed runs in all; see the Executions page.")

with right:
    st.subheader("Needs attention")
    attention: list[str] = []
    for name, comp in health_components(c).items():
        if comp.get("status") != "ok":
            detail = comp.get("detail") or ""
            attention.append(
                f"⚠️ Runtime component **{name}** is `{comp.get('status')}` {detail}".strip()
            )
    try:
        schedules = c.schedules()["schedules"]
    except FlexiError as exc:
        ui.show_error(exc, "Could not list schedules")
        schedules = []
    for s in schedules:
        if s["last_error"]:
            attention.append(f"⏰ Schedule **{s['name']}** ({s['pipeline_id']}): {s['last_error']}")
        elif s["last_run_status"] == "failed" and s["last_run_id"]:
            attention.append(
                f"⏰ Schedule **{s['name']}**: its last run"
                f" [{s['last_run_id']}]({ui.run_link(s['last_run_id'])}) failed"
            )
    if failed is not None:
        day_ago = datetime.now(UTC) - timedelta(days=1)
        recent: dict[str, int] = {}
        for run in failed["executions"]:
            if datetime.fromisoformat(run["created_at"].replace("Z", "+00:00")) >= day_ago:
                recent[run["pipeline_id"]] = recent.get(run["pipeline_id"], 0) + 1
        for pipeline_id, n in sorted(recent.items(), key=lambda kv: -kv[1]):
            attention.append(
                f"❌ Pipeline **{pipeline_id}** failed {n} time{'s' if n > 1 else ''}"
                " in the last 24 hours (of the 10 latest failures)"
            )
    if system["queue_depth"]:
        attention.append(f"⏳ {system['queue_depth']} run(s) are waiting for a free worker")
    if attention:
        for line in attention:
            st.markdown(line)
    else:
        st.write(
            "Nothing: every runtime component is ok, no schedule reports an error and no run"
            " failed in the last 24 hours."
        )

left, right = st.columns(2)

with left:
    try:
        alerts = c.alerts(status="open", limit=ALERTS_READ)
    except FlexiError as exc:
        st.subheader("Open alerts")
        ui.show_error(exc, "Could not list the open alerts")
        alerts = None
    if alerts is not None:
        st.subheader(f"Open alerts: {alerts['total']:,}")
        st.caption(
            "Most severe first, then newest"
            + (f" (of the newest {ALERTS_READ})" if alerts["total"] > ALERTS_READ else "")
            + "; acknowledged ones are left out."
        )
        if not alerts["alerts"]:
            st.write("No open alert.")
        for a in sorted(alerts["alerts"], key=lambda a: RANK.get(a["severity"], 9))[:TOP]:
            runs = a["occurrences"]
            st.markdown(
                f"{SEVERITY.get(a['severity'], '')} **{a['pipeline_id']}** · {a['title']}  \n"
                f"{a['severity']} · {runs} occurrence{'s' if runs != 1 else ''} · last"
                f" {ui.ago(a['last_seen_at'])}"
            )
    st.page_link("views/alerts.py", label="All alerts and their rules", icon="🚨")

with right:
    st.subheader("Top insights")
    st.caption("Most severe and most confident first; low-confidence ones are left out.")
    try:
        found = c.insights(limit=INSIGHTS_READ)
    except FlexiError as exc:
        ui.show_error(exc, "Could not list the insights")
        found = None
    if found is not None:
        top = [
            i for i in found["insights"] if not i["low_confidence"] and i["status"] in SHOW_INSIGHT
        ][:TOP]
        if not top:
            st.write(
                "No insight to show: none yet, or only low-confidence or decided ones."
                if found["total"]
                else "No insights yet: the models need finished runs to learn from."
            )
        for i in top:
            waiting = " · **waiting for review**" if i["status"] == "pending_review" else ""
            st.markdown(
                f"{SEVERITY[i['severity']]} **{i['pipeline_id']}** · {i['title']}  \n"
                f"{i['severity']} · {i['confidence']:.0%} confident · {i['type']}{waiting}"
            )
    st.page_link("views/insights.py", label="All insights and their review", icon="💡")

st.caption(f"Figures as of {ui.when(system['timestamp'])} UTC.")
if st.button("Refresh", key="dash_refresh"):
    st.rerun()
