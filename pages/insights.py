"""Insights: what the run history says about each pipeline — reliability, duration and their
trends — measured from the store's real runs."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Insights")
st.caption("From each pipeline's stored runs: success rate, durations and the last 14 days.")

try:
    pipelines = c.pipelines(limit=1000)["pipelines"]
    stats = {p["id"]: c.pipeline_metrics(p["id"]) for p in pipelines}
except FlexiError as exc:
    ui.show_error(exc, "Could not load the run history")
    st.stop()

ran = {pid: m for pid, m in stats.items() if m["total_executions"]}
if not ran:
    st.write("No pipeline has run yet, so there is no history to learn from.")
    st.stop()

table = pd.DataFrame(
    [
        {"pipeline": pid, "runs": m["total_executions"],
         "success rate %": round(m["success_rate"], 1) if m["success_rate"] is not None else None,
         "p50": ui.seconds(m["p50_duration"]), "p95": ui.seconds(m["p95_duration"]),
         "p95 s": m["p95_duration"], "last run": ui.icon((m["last_execution"] or {}).get("status"))}
        for pid, m in ran.items()
    ]
)  # fmt: skip
st.dataframe(table.drop(columns=["p95 s"]), hide_index=True, width="stretch", key="in_table")

a, b = st.columns(2)
with a:
    st.subheader("Least reliable")
    worst = table.sort_values("success rate %").head(5)
    for _, r in worst.iterrows():
        st.write(
            f"**{r['pipeline']}**: {r['success rate %']}% of {r['runs']} finished runs completed"
        )
with b:
    st.subheader("Slowest (p95)")
    slow = table.dropna(subset=["p95 s"]).sort_values("p95 s", ascending=False).head(5)
    for _, r in slow.iterrows():
        st.write(f"**{r['pipeline']}**: p95 {r['p95']}, median {r['p50']}")

pick = st.selectbox("Trend of", list(ran), key="in_pick")
trend = pd.DataFrame(ran[pick]["trend"])
if trend.empty:
    st.write("No runs in the last 14 days.")
else:
    fig = px.bar(trend, x="day", y=["runs", "failed"], barmode="group")
    st.plotly_chart(fig, key="in_trend")
    if trend["avg_duration"].notna().any():
        st.plotly_chart(px.line(trend, x="day", y="avg_duration", markers=True), key="in_dur")
