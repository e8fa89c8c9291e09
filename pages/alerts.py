"""Alerts: what needs attention now, from the real run history and the runtime's health
(failed and cancelled runs, schedules that could not start, parts of the runtime not ok)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Alerts")
window = st.radio("Window", ["24 hours", "7 days"], horizontal=True, key="al_window")
since = datetime.now(UTC) - (timedelta(days=1) if window == "24 hours" else timedelta(days=7))

try:
    failed = c.executions(status="failed", since=since.isoformat(), limit=500)
    cancelled = c.executions(status="cancelled", since=since.isoformat(), limit=100)
    schedules = c.schedules()["schedules"]
    health = c.health()
except FlexiError as exc:
    ui.show_error(exc, "Could not load what needs attention")
    st.stop()

st.subheader("Runtime parts not ok")
bad = {k: v for k, v in health["components"].items() if v["status"] == "error"}
if bad:
    for name, comp in bad.items():
        st.error(f"{name}: {comp.get('detail', comp)}")
else:
    st.write("Every part of the runtime answers ok (store, engine, scheduler).")

st.subheader(f"Failed runs, last {window} ({failed['total']})")
if failed["executions"]:
    groups: dict[str, list[dict]] = {}
    for r in failed["executions"]:
        groups.setdefault(r["pipeline_id"], []).append(r)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "pipeline": p,
                    "failures": len(runs),
                    "latest": ui.run_link(runs[0]["id"]),
                    "at (UTC)": ui.when(runs[0]["created_at"]),
                    "latest error": (runs[0]["error"] or "")[:200],
                }
                for p, runs in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            ]
        ),  # fmt: skip
        hide_index=True,
        width="stretch",
        key="al_failed",
        column_config={
            "latest": st.column_config.LinkColumn("latest run", display_text=r"run=(.*)$")
        },
    )
else:
    st.write("No failed runs in this window.")

st.subheader(f"Cancelled runs, last {window} ({cancelled['total']})")
if cancelled["executions"]:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": r["id"],
                    "pipeline": r["pipeline_id"],
                    "at (UTC)": ui.when(r["created_at"]),
                    "reason": r["error"] or "",
                }
                for r in cancelled["executions"]
            ]
        ),  # fmt: skip
        hide_index=True,
        width="stretch",
        key="al_cancelled",
    )
else:
    st.write("No cancelled runs in this window.")

st.subheader("Schedules in trouble")
trouble = [s for s in schedules if s["last_error"] or s["last_run_status"] == "failed"]
if trouble:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "schedule": s["id"],
                    "pipeline": s["pipeline_id"],
                    "last run": s["last_run_status"],
                    "error": s["last_error"] or "",
                }
                for s in trouble
            ]
        ),  # fmt: skip
        hide_index=True,
        width="stretch",
        key="al_schedules",
    )
else:
    st.write("No schedule has an error or a failed last run.")
