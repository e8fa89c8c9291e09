"""Alerts: what needs attention now, read from the real run history, the schedules and the
runtime's health (alert rules do not exist yet: nothing here is configured or invented)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

FAILED_PAGE = 500  # failed runs grouped per pipeline; the total is always the API's count
CANCELLED_PAGE = 100
WINDOWS = {"24 hours": timedelta(days=1), "7 days": timedelta(days=7)}
LINK = st.column_config.LinkColumn(display_text=r"run=(.*)$")


c = ui.client()
st.title("Alerts")
st.caption(
    "What needs attention, from the runtime as it is now: parts of the runtime that are not ok,"
    " failed and cancelled runs in the window, and schedules whose last firing went wrong."
)
window = st.radio("Window", list(WINDOWS), horizontal=True, key="al_window")
since = (datetime.now(UTC) - WINDOWS[window]).isoformat()

try:
    health = c.health()  # a degraded runtime (503) answers with its body
    failed = c.executions(status="failed", since=since, limit=FAILED_PAGE)
    cancelled = c.executions(status="cancelled", since=since, limit=CANCELLED_PAGE)
    schedules = c.schedules()["schedules"]
except FlexiError as exc:
    ui.show_error(exc, "Could not load what needs attention")
    st.stop()

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

st.subheader(f"Failed runs, last {window}: {failed['total']}")
if failed["executions"]:
    if failed["total"] > len(failed["executions"]):
        st.caption(f"Grouped from the newest {len(failed['executions'])} of them.")
    groups: dict[str, list[dict]] = {}
    for r in failed["executions"]:  # newest first, so runs[0] is each pipeline's latest
        groups.setdefault(r["pipeline_id"], []).append(r)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "pipeline": pid,
                    "failures": len(runs),
                    "latest": ui.run_link(runs[0]["id"]),
                    "at (UTC)": ui.when(runs[0]["created_at"]),
                    "latest error": (runs[0]["error"] or "")[:300],
                }
                for pid, runs in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            ]
        ),
        hide_index=True,
        width="stretch",
        key="al_failed",
        column_config={
            "latest": st.column_config.LinkColumn("latest run", display_text=r"run=(.*)$")
        },
    )
else:
    st.write("No run failed in this window.")

st.subheader(f"Cancelled runs, last {window}: {cancelled['total']}")
if cancelled["executions"]:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": ui.run_link(r["id"]),
                    "pipeline": r["pipeline_id"],
                    "at (UTC)": ui.when(r["created_at"]),
                    "reason": r["error"] or "",
                }
                for r in cancelled["executions"]
            ]
        ),
        hide_index=True,
        width="stretch",
        key="al_cancelled",
        column_config={"run": LINK},
    )
else:
    st.write("No run was cancelled in this window.")

st.subheader("Schedules in trouble")
st.caption("Schedules whose last firing could not start a run, or whose last run failed.")
trouble = [s for s in schedules if s["last_error"] or s["last_run_status"] == "failed"]
if trouble:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "schedule": s["name"],
                    "pipeline": s["pipeline_id"],
                    "enabled": s["enabled"],
                    "last fired (UTC)": ui.when(s["last_fired_at"]),
                    "last run": ui.run_link(s["last_run_id"]) if s["last_run_id"] else None,
                    "last run status": ui.icon(s["last_run_status"]),
                    "error": s["last_error"] or "",
                }
                for s in trouble
            ]
        ),
        hide_index=True,
        width="stretch",
        key="al_schedules",
        column_config={"last run": LINK},
    )
else:
    st.write(f"None of the {len(schedules)} schedules has an error or a failed last run.")
