"""Executions: a paged, filtered list of runs; one run (open it with ?run=<id>) with its stages,
timeline, live log, output tables, cancel and retry, release of a run the risk gate held, and
for a run Airflow started its DAG run and the task states Airflow reported."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

PAGE = 50
ACTIVE = ("pending", "running", "retrying")
STATUSES = ["held", "pending", "running", "retrying", "completed", "failed", "cancelled"]
COLOURS = {
    "held": "#9b59b6",
    "completed": "#2e9e5b",
    "failed": "#d9534f",
    "cancelled": "#8c8c8c",
    "running": "#3b82f6",
    "retrying": "#f0ad4e",
    "pending": "#c7c7c7",
    "skipped": "#d0d0d0",
}
LOG_PAGE = 1000
LOG_CAP = 5000  # lines kept per run in the page's memory; the Logs page searches all of them
c = ui.client()


def open_run(run_id: str | None) -> None:
    """Show a run (or the list) on the next run of the page."""
    if run_id:
        st.query_params["run"] = run_id
    else:
        st.query_params.pop("run", None)


def first_line(text: str | None, width: int = 200) -> str:
    return text.strip().splitlines()[0][:width] if text and text.strip() else ""


def stage_frame(stages: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "stage": s["stage_id"],
                "type": s["stage_type"],
                "status": ui.icon(s["status"]),
                "rows in": s["rows_in"],
                "rows out": s["rows_out"],
                "attempts": s["attempts"],
                "duration": ui.seconds(s["duration"]),
                "reused from": s["reused_from"] or "",
                "error": first_line(s["error"]),
            }
            for s in stages
        ]
    )


def gantt(run: dict) -> None:
    """The stages on a time axis, coloured by status (a running stage ends now)."""
    import plotly.express as px

    now = datetime.now(UTC).isoformat()
    spans = [
        {
            "stage": s["stage_id"],
            "start": s["started_at"],
            "end": s["completed_at"] or now,
            "status": s["status"],
            "duration": ui.seconds(s["duration"]),
        }
        for s in run["stages"]
        if s["started_at"]
    ]
    if not spans:
        st.caption("No stage has started yet.")
        return
    frame = pd.DataFrame(spans)
    for col in ("start", "end"):
        frame[col] = pd.to_datetime(frame[col], format="ISO8601", utc=True)
    fig = px.timeline(
        frame,
        x_start="start",
        x_end="end",
        y="stage",
        color="status",
        color_discrete_map=COLOURS,
        hover_data={"duration": True},
    )
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_layout(height=120 + 30 * len(spans), margin={"t": 10, "b": 10}, xaxis_title="UTC")
    st.plotly_chart(fig, key=f"gantt_{run['id']}")


def header(run: dict) -> None:
    st.subheader(f"{ui.icon(run['status'])} — run {run['id']} of {run['pipeline_id']}")
    done, total = run["stages_completed"], run["total_stages"]
    a, b, d, e = st.columns(4)
    a.metric("Status", run["status"])
    b.metric("Stages done", f"{done}/{total}")
    d.metric("Duration", ui.seconds(run["duration"]))
    e.metric("Trigger", run["trigger"])
    st.caption(
        f"created {ui.when(run['created_at'])} UTC, started {ui.when(run['started_at'])}, ended"
        f" {ui.when(run['completed_at'])}; pipeline version {run['pipeline_version'] or '-'}"
        + (f"; retry of [{run['retry_of']}]({ui.run_link(run['retry_of'])})" if run["retry_of"] else "")
        + (f"; scheduled for {ui.when(run['scheduled_for'])}" if run.get("scheduled_for") else "")
    )  # fmt: skip
    if run["params"]:
        st.caption("parameters: " + ", ".join(f"{k}={v}" for k, v in run["params"].items()))
    if run["status"] in ACTIVE:
        st.progress(done / total if total else 0.0, text=f"{done} of {total} stages done")
    if run["error"]:
        st.error(run["error"])


def held(run: dict) -> None:
    """Why the risk gate holds the run (its log says so), and releasing it with a name."""
    try:
        lines = c.logs(run["id"], level="WARN")["logs"]
    except FlexiError as exc:
        ui.show_error(exc, "Could not read why the run is held")
        lines = []
    why = [x["message"] for x in lines if "risk gate" in x["message"]]
    st.warning(
        f"This run waits for a person — its log says: “{why[-1] if why else 'held'}”."
        " Release it to start it now, or cancel it."
    )
    a, b = st.columns([1, 2])
    ui.reviewer_input("ex_reviewer", container=a)  # the name Insights and Alerts ask for too
    b.text_input("Reason (optional, kept in the audit log)", key="run_release_reason")
    if st.button("Release run", key="run_release", type="primary"):
        by = ui.reviewer()
        if not by:
            st.error("Enter your name first: releasing a held run is recorded with who did it.")
            return
        try:
            done = c.release(run["id"], by, st.session_state["run_release_reason"].strip() or None)
        except FlexiError as exc:
            ui.show_error(exc, "Not released")
        else:
            st.toast(f"Run {done['id']} released by {by} ({done['status']}).")
            st.rerun()


def actions(run: dict) -> None:
    """Cancel an active or held run; retry a failed or cancelled one from where it stopped."""
    left, right, _ = st.columns([1, 1, 3])
    if run["status"] in (*ACTIVE, "held") and left.button("Cancel run", key="run_cancel"):
        try:
            done = c.cancel(run["id"])
        except FlexiError as exc:
            ui.show_error(exc, "Not cancelled")
        else:
            st.toast(f"Run {done['id']}: cancel requested ({done['status']}).")
            if run["status"] == "held":  # no live view to pick the change up
                st.rerun()
    if run["status"] in ("failed", "cancelled") and right.button(
        "Retry from failure", key="run_retry", type="primary"
    ):
        try:
            new = c.retry(run["id"])
        except FlexiError as exc:
            ui.show_error(exc, "Not retried")
        else:
            open_run(new["id"])
            st.rerun()


def stages_section(run: dict) -> None:
    st.markdown("**Stages**")
    st.dataframe(stage_frame(run["stages"]), hide_index=True, width="stretch", key="run_stages")
    gantt(run)
    for s in run["stages"]:
        if s["error"] and s["status"] != "completed":
            with st.expander(f"{s['stage_id']}: {s['error_type'] or 'error'}"):
                st.code(s["traceback"] or s["error"], language=None)


def airflow(run: dict) -> None:
    """Where Airflow started the run (DAG, DAG run, task, mode) and the task states it reported."""
    lineage = run["context"].get("airflow")
    if not lineage:
        return
    st.markdown("**Airflow**")
    st.text(
        f"DAG id: {lineage.get('dag_id')}   DAG run id: {lineage.get('dag_run_id')}   task id:"
        f" {lineage.get('task_id')}   mode: {lineage.get('mode', 'trigger')}"
    )
    try:
        found = c.airflow_callbacks(run["id"])["callbacks"]
    except FlexiError as exc:
        ui.show_error(exc, "Could not read Airflow's callbacks")
        return
    if not found:
        st.caption("No task state reported by Airflow yet.")
        return
    frame = pd.DataFrame(
        [
            {
                "received (UTC)": ui.when(x["received_at"]),
                "task": x["task_id"],
                "try": x["try_number"],
                "state": x["state"],
                "started": ui.when(x["start_date"]),
                "ended": ui.when(x["end_date"]),
                "message": first_line(x["message"]),
                "error": first_line(x["error"]),
            }
            for x in found
        ]
    )
    st.dataframe(frame, hide_index=True, width="stretch", key="run_airflow")


def quoted(table: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def outputs(run: dict) -> None:
    """The tables and files the run's stages wrote, as their stages' metrics record them."""
    tables, files = [], []
    for s in run["stages"]:
        m = s["metrics"] or {}
        if s["status"] != "completed":
            continue
        if m.get("table"):
            tables.append((s["stage_id"], m["table"], m.get("mode"), m.get("inserted")))
        if m.get("quarantine_table") and m.get("rows_quarantined"):
            tables.append((s["stage_id"], m["quarantine_table"], "quarantine", None))
        if m.get("path"):
            files.append((s["stage_id"], m["path"], m.get("format")))
    if not tables and not files:
        return
    st.markdown("**Outputs**")
    if tables:
        st.caption("Tables as they are now (a later run may have changed them); first 50 rows.")
    for stage_id, table, mode, inserted in tables:
        what = ", ".join(str(x) for x in (mode, inserted and f"{inserted} rows written") if x)
        with st.expander(f"{table} (by {stage_id}{', ' + what if what else ''})"):
            try:
                res = c.query(f"select * from {quoted(table)} limit 50")
            except FlexiError as exc:
                ui.show_error(exc, f"Preview of {table}")
            else:
                st.dataframe(
                    pd.DataFrame(res["rows"], columns=res["columns"]),
                    hide_index=True,
                    key=f"out_{stage_id}_{table}",
                )
    for stage_id, path, fmt in files:
        st.markdown(f"- file `{path}` ({fmt or 'file'}, by {stage_id})")


def log_tail(run_id: str) -> bool:
    """Read the run's new log lines after the cursor and show the last ones; True when it ended."""
    key = f"log_{run_id}"
    state = st.session_state.setdefault(key, {"cursor": 0, "lines": [], "finished": False})
    while not state["finished"]:
        try:
            got = c.logs(run_id, after=state["cursor"], limit=LOG_PAGE)
        except FlexiError as exc:
            ui.show_error(exc, "Could not read the log")
            break
        state["lines"] = (state["lines"] + got["logs"])[-LOG_CAP:]
        state["cursor"], state["finished"] = got["next_cursor"], got["finished"]
        if len(got["logs"]) < LOG_PAGE:
            break
    text = "\n".join(
        f"{ui.when(x['timestamp'])} {x['level']:7} {x['stage_id'] or '-':22} {x['message']}"
        for x in state["lines"][-500:]
    )
    st.code(text or "(no lines yet)", language=None)
    if len(state["lines"]) > 500:
        st.caption("The last 500 lines; the Logs page searches them all.")
    return state["finished"]


@st.fragment(run_every=1.0)
def live(run_id: str) -> None:
    """An active run, read again every second; the whole page reruns once it has ended."""
    try:
        run = c.execution(run_id)
    except FlexiError as exc:
        ui.show_error(exc, f"Run {run_id}")
        return
    if run["status"] not in ACTIVE:
        st.rerun()  # the finished view: outputs, retry, and no more polling
    header(run)
    actions(run)
    stages_section(run)
    airflow(run)
    st.markdown("**Log** (following)")
    log_tail(run_id)


def detail(run_id: str) -> None:
    if st.button("← All runs", key="run_back"):
        open_run(None)
        st.rerun()
    try:
        run = c.execution(run_id)
    except FlexiError as exc:
        ui.show_error(exc, f"Run {run_id}")
        return
    if run["status"] in ACTIVE:
        live(run_id)
        return
    header(run)
    if run["status"] == "held":
        held(run)
    actions(run)
    stages_section(run)
    airflow(run)
    outputs(run)
    st.markdown("**Log**")
    log_tail(run_id)


def listing() -> None:
    try:
        pipelines = [p["id"] for p in c.pipelines(limit=1000)["pipelines"]]
    except FlexiError as exc:
        ui.show_error(exc, "Could not list the pipelines")
        pipelines = []
    f1, f2, f3, f4 = st.columns(4)
    pipeline = f1.selectbox("Pipeline", ["(all)", *pipelines], key="ex_pipeline")
    status = f2.selectbox("Status", ["(all)", *STATUSES], key="ex_status")
    since = f3.date_input("Since", value=None, key="ex_since")
    until = f4.date_input("Until (inclusive)", value=None, key="ex_until")
    filters = {
        "pipeline_id": None if pipeline == "(all)" else pipeline,
        "status": None if status == "(all)" else status,
        "since": datetime.combine(since, time(), UTC).isoformat() if since else None,
        "until": datetime.combine(until, time.max, UTC).isoformat() if until else None,
    }
    if st.session_state.get("ex_filters") != filters:  # new filters start at the first page
        st.session_state["ex_filters"], st.session_state["ex_offset"] = filters, 0
    offset = st.session_state.get("ex_offset", 0)
    try:
        page = c.executions(**filters, limit=PAGE, offset=offset)
    except FlexiError as exc:
        ui.show_error(exc, "Could not list the runs")
        return
    total, runs = page["total"], page["executions"]
    st.caption(
        f"{total:,} run(s); showing {offset + 1 if runs else 0}–{offset + len(runs)}, newest first"
    )
    if not runs:
        st.write("No runs match. Start one from the Pipelines page.")
        return
    frame = pd.DataFrame(
        [
            {
                "run": ui.run_link(r["id"]),
                "status": ui.icon(r["status"]),
                "pipeline": r["pipeline_id"],
                "trigger": r["trigger"],
                "created (UTC)": ui.when(r["created_at"]),
                "duration": ui.seconds(r["duration"]),
                "stages": f"{r['stages_completed']}/{r['total_stages']}",
                "error": first_line(r["error"], 120),
            }
            for r in runs
        ]
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        key="ex_table",
        column_config={"run": st.column_config.LinkColumn("run", display_text=r"run=(.*)$")},
    )
    p1, p2, p3 = st.columns([1, 1, 3])
    if p1.button("Previous page", key="ex_prev", disabled=offset == 0):
        st.session_state["ex_offset"] = max(0, offset - PAGE)
        st.rerun()
    if p2.button("Next page", key="ex_next", disabled=offset + PAGE >= total):
        st.session_state["ex_offset"] = offset + PAGE
        st.rerun()
    names = {r["id"]: f"{r['id']} ({r['pipeline_id']}, {r['status']})" for r in runs}

    def picked() -> None:
        open_run(st.session_state["ex_open"])
        st.session_state["ex_open"] = ""

    p3.selectbox(
        "Open a run of this page",
        ["", *names],
        key="ex_open",
        on_change=picked,
        format_func=lambda i: names.get(i, "choose a run"),
    )


st.title("Executions")
run_id = st.query_params.get("run")
if run_id:
    detail(run_id)
else:
    listing()
