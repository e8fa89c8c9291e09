"""Insights: what the run history says about each pipeline (reliability, durations, the last
14 days), measured from the runtime's stored runs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

DAYS = 14
TOP = 5

c = ui.client()
st.title("Insights")
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
    pipelines = c.pipelines(limit=1000)["pipelines"]
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
