"""Executions: a paged, filtered list of runs; one run's stages, timeline, live log, outputs,
cancel and retry (open one with ?run=<id>)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

PAGE = 50
ACTIVE = ("pending", "running", "retrying")
c = ui.client()


def open_run(run_id: str | None) -> None:
    if run_id:
        st.query_params["run"] = run_id
    else:
        st.query_params.pop("run", None)


def stage_frame(stages: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"stage": s["stage_id"], "type": s["stage_type"], "status": ui.icon(s["status"]),
             "rows in": s["rows_in"], "rows out": s["rows_out"], "attempts": s["attempts"],
             "duration": ui.seconds(s["duration"]), "error": (s["error"] or "").splitlines()[0][:200]
             if s["error"] else ""}
            for s in stages
        ]
    )  # fmt: skip


def gantt(stages: list[dict]) -> None:
    spans = [
        {"stage": s["stage_id"], "start": s["started_at"], "end": s["completed_at"] or
         datetime.now(UTC).isoformat(), "status": s["status"]}
        for s in stages
        if s["started_at"]
    ]  # fmt: skip
    if not spans:
        st.caption("No stage has started yet.")
        return
    frame = pd.DataFrame(spans)
    frame["start"] = pd.to_datetime(frame["start"], format="ISO8601")
    frame["end"] = pd.to_datetime(frame["end"], format="ISO8601")
    fig = px.timeline(frame, x_start="start", x_end="end", y="stage", color="status")
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_layout(height=120 + 28 * len(spans), margin={"t": 10, "b": 10})
    st.plotly_chart(fig, key="run_gantt")


@st.fragment(run_every=1.0)
def live_log(run_id: str) -> None:
    """The run's log, followed with a cursor while the run goes on."""
    key = f"log_{run_id}"
    state = st.session_state.setdefault(key, {"cursor": 0, "lines": [], "finished": False})
    if not state["finished"]:
        try:
            got = c.logs(run_id, after=state["cursor"])
        except FlexiError as exc:
            ui.show_error(exc, "Could not read the log")
            return
        state["lines"].extend(got["logs"])
        state["cursor"], state["finished"] = got["next_cursor"], got["finished"]
    text = "\n".join(
        f"{ui.when(x['timestamp'])} {x['level']:5} {x['stage_id'] or '-':20} {x['message']}"
        for x in state["lines"][-500:]
    )
    st.code(text or "(no lines yet)", language=None)
    if not state["finished"]:
        st.caption("following ...")


def detail(run_id: str) -> None:
    try:
        run = c.execution(run_id)
    except FlexiError as exc:
        ui.show_error(exc, f"Run {run_id}")
        if st.button("Back to the list", key="run_back"):
            open_run(None)
            st.rerun()
        return
    if st.button("← All runs", key="run_back"):
        open_run(None)
        st.rerun()
    st.subheader(f"{ui.icon(run['status'])} — run {run['id']} of {run['pipeline_id']}")
    done, total = run["stages_completed"], run["total_stages"]
    a, b, d, e = st.columns(4)
    a.metric("Status", run["status"])
    b.metric("Stages done", f"{done}/{total}")
    d.metric("Duration", ui.seconds(run["duration"]))
    e.metric("Trigger", run["trigger"])
    st.caption(
        f"created {ui.when(run['created_at'])} UTC, started {ui.when(run['started_at'])}, ended"
        f" {ui.when(run['completed_at'])}"
        + (f"; retry of {run['retry_of']}" if run["retry_of"] else "")
        + (f"; scheduled for {ui.when(run['scheduled_for'])}" if run.get("scheduled_for") else "")
    )
    if run["params"]:
        st.caption("parameters: " + ", ".join(f"{k}={v}" for k, v in run["params"].items()))
    if run["status"] in ACTIVE:
        st.progress(done / total if total else 0.0, text=f"{done} of {total} stages done")
    if run["error"]:
        st.error(run["error"])

    b1, b2, b3 = st.columns(3)
    if run["status"] in ACTIVE and b1.button("Cancel run", key="run_cancel"):
        try:
            c.cancel(run_id)
            st.toast("cancel requested")
        except FlexiError as exc:
            ui.show_error(exc, "Cancel")
    if run["status"] in ("failed", "cancelled") and b2.button(
        "Retry from failure", key="run_retry"
    ):
        try:
            new = c.retry(run_id)
        except FlexiError as exc:
            ui.show_error(exc, "Retry")
        else:
            open_run(new["id"])
            st.rerun()
    if run["status"] in ACTIVE:
        b3.button("Refresh", key="run_refresh")

    st.markdown("**Stages**")
    st.dataframe(stage_frame(run["stages"]), hide_index=True, width="stretch", key="run_stages")
    gantt(run["stages"])
    for s in run["stages"]:
        if s["error"] and s["status"] != "completed":
            with st.expander(f"{s['stage_id']}: {s['error_type'] or 'error'}"):
                st.code(s["traceback"] or s["error"], language=None)

    outputs = [s for s in run["stages"] if s["metrics"].get("table") and s["status"] == "completed"]
    if outputs:
        st.markdown("**Output tables**")
        for s in outputs:
            table = s["metrics"]["table"]
            with st.expander(
                f"{table} (written by {s['stage_id']}, {s['metrics'].get('mode', '')})"
            ):
                try:
                    name = ".".join('"' + p.replace('"', '""') + '"' for p in table.split("."))
                    res = c.query(f"select * from {name} limit 50")
                    st.dataframe(
                        pd.DataFrame(res["rows"], columns=res["columns"]),
                        hide_index=True,
                        key=f"out_{s['stage_id']}",
                    )
                except FlexiError as exc:
                    ui.show_error(exc, f"Preview of {table}")

    st.markdown("**Log**")
    live_log(run_id)


def listing() -> None:
    try:
        pipelines = [p["id"] for p in c.pipelines(limit=1000)["pipelines"]]
    except FlexiError as exc:
        ui.show_error(exc, "Could not list pipelines")
        pipelines = []
    f1, f2, f3, f4 = st.columns(4)
    pipeline = f1.selectbox("Pipeline", ["(all)", *pipelines], key="ex_pipeline")
    status = f2.selectbox(
        "Status", ["(all)", "completed", "failed", "cancelled", "running", "pending"],
        key="ex_status",
    )  # fmt: skip
    since = f3.date_input("Since", value=None, key="ex_since")
    until = f4.date_input("Until (inclusive)", value=None, key="ex_until")
    filters = {
        "pipeline_id": None if pipeline == "(all)" else pipeline,
        "status": None if status == "(all)" else status,
        "since": datetime.combine(since, time(), UTC).isoformat() if since else None,
        "until": datetime.combine(until, time.max, UTC).isoformat() if until else None,
    }
    if st.session_state.get("ex_filters") != filters:
        st.session_state["ex_filters"], st.session_state["ex_offset"] = filters, 0
    offset = st.session_state.get("ex_offset", 0)
    try:
        page = c.executions(**filters, limit=PAGE, offset=offset)
    except FlexiError as exc:
        ui.show_error(exc, "Could not list runs")
        return
    total, runs = page["total"], page["executions"]
    st.caption(f"{total} run(s); showing {offset + 1 if runs else 0}–{offset + len(runs)}")
    if not runs:
        st.write("No runs match. Start one from the Pipelines page.")
        return
    frame = pd.DataFrame(
        [
            {"run": ui.run_link(r["id"]), "status": ui.icon(r["status"]), "pipeline": r["pipeline_id"],
             "trigger": r["trigger"], "created (UTC)": ui.when(r["created_at"]),
             "duration": ui.seconds(r["duration"]),
             "stages": f"{r['stages_completed']}/{r['total_stages']}", "error": (r["error"] or "")[:120]}
            for r in runs
        ]
    )  # fmt: skip
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        key="ex_table",
        column_config={"run": st.column_config.LinkColumn("run", display_text=r"run=(.*)$")},
    )
    p1, p2, p3 = st.columns([1, 1, 3])
    if p1.button("← Newer", key="ex_prev", disabled=offset == 0):
        st.session_state["ex_offset"] = max(0, offset - PAGE)
        st.rerun()
    if p2.button("Older →", key="ex_next", disabled=offset + PAGE >= total):
        st.session_state["ex_offset"] = offset + PAGE
        st.rerun()
    names = {r["id"]: r["pipeline_id"] for r in runs}

    def picked() -> None:
        open_run(st.session_state["ex_open"])
        st.session_state["ex_open"] = ""

    p3.selectbox(
        "Open run", ["", *names], key="ex_open", on_change=picked,
        format_func=lambda i: i and f"{i} ({names[i]})",
    )  # fmt: skip


st.title("Executions")
run_id = st.query_params.get("run")
if run_id:
    detail(run_id)
else:
    listing()
