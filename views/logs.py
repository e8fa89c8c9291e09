"""Logs: every stored log line of every run, newest first, filtered by level, pipeline, run,
time and text; older pages on demand, live follow, and export of the lines shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

LEVELS = ["DEBUG", "INFO", "WARN", "ERROR"]
ALL = "(all)"
KEEP_AT_MOST = 10_000  # lines kept while following or paging, so a long follow stays light


def parse_time(text: str, what: str) -> str | None:
    """An ISO date or date-time typed by a person, as UTC ISO 8601 for the API (naive = UTC)."""
    text = text.strip()
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{what}: {text!r} is not a date or time; write e.g. 2026-11-29 or 2026-11-29 06:30"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat()


def fetch(c, filters: dict[str, Any], **cursor: Any) -> dict:
    return c.search_logs(**filters, **cursor)


def start(c, filters: dict[str, Any]) -> None:
    """The newest page for these filters, replacing what is shown."""
    found = fetch(c, filters)
    st.session_state["logs_state"] = {
        "filters": filters,
        "lines": found["logs"],
        "pipelines": found["pipelines"],
        "next_before": found["next_before"],
    }


def load_older(c) -> None:
    state = st.session_state["logs_state"]
    try:
        found = fetch(c, state["filters"], before=state["next_before"])
    except FlexiError as exc:
        st.session_state["logs_flash"] = f"Could not load older lines: {exc}"
        return
    state["lines"] = (state["lines"] + found["logs"])[-KEEP_AT_MOST:]
    state["pipelines"] |= found["pipelines"]
    state["next_before"] = found["next_before"]


def follow(c) -> None:
    """Prepend lines newer than the newest shown; a full page means a gap, so start over."""
    state = st.session_state["logs_state"]
    newest = state["lines"][0]["id"] if state["lines"] else 0
    found = fetch(c, state["filters"], after=newest)
    if len(found["logs"]) >= state["filters"]["limit"]:
        start(c, state["filters"])
        return
    state["lines"] = (found["logs"] + state["lines"])[:KEEP_AT_MOST]
    state["pipelines"] |= found["pipelines"]


def stamp(iso: str) -> str:
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def table(lines: list[dict], pipelines: dict[str, str | None]):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "level": x["level"],
                "time (UTC)": stamp(x["timestamp"]),
                "pipeline": pipelines.get(x["execution_id"]) or "",
                "run": ui.run_link(x["execution_id"]),
                "stage": x["stage_id"] or "",
                "message": x["message"],
            }
            for x in lines
        ],
        columns=["level", "time (UTC)", "pipeline", "run", "stage", "message"],
    )


def show_lines(c, following: bool) -> None:
    """The table and its exports; while following, new lines are fetched first."""
    if following:
        try:
            follow(c)
        except FlexiError as exc:
            ui.show_error(exc, "Could not fetch new lines")
    state = st.session_state["logs_state"]
    lines = state["lines"]
    if not lines:
        st.write("No log lines match these filters.")
        return
    frame = table(lines, state["pipelines"])
    more = "; older lines exist" if state["next_before"] is not None else ""
    st.caption(f"{len(lines):,} line(s), newest first{more}.")
    st.dataframe(
        frame,
        hide_index=True,
        height=min(38 + 35 * len(frame), 640),
        column_config={
            "run": st.column_config.LinkColumn("run", display_text=r"run=(.*)"),
            "message": st.column_config.TextColumn("message", width="large"),
        },
    )
    export = [x | {"pipeline_id": state["pipelines"].get(x["execution_id"])} for x in lines]
    left, right, _ = st.columns([1, 1, 4])
    left.download_button(
        "Export CSV",
        frame.assign(run=[x["execution_id"] for x in lines]).to_csv(index=False),
        file_name="flexiroaster-logs.csv",
        mime="text/csv",
        key="logs_csv",
    )
    right.download_button(
        "Export JSON",
        json.dumps(export, indent=1),
        file_name="flexiroaster-logs.json",
        mime="application/json",
        key="logs_json",
    )


c = ui.client()
st.title("Logs")

if "logs_run" not in st.session_state and st.query_params.get("run"):
    st.session_state["logs_run"] = st.query_params["run"]

try:
    pipeline_ids = [p["id"] for p in c.pipelines(limit=1000)["pipelines"]]
except FlexiError as exc:
    ui.show_error(exc, "Could not list pipelines")
    pipeline_ids = []

cols = st.columns([1.3, 2, 2, 3])
level = cols[0].selectbox("Level (minimum)", LEVELS, key="logs_level")
pipeline = cols[1].selectbox("Pipeline", [ALL, *pipeline_ids], key="logs_pipeline")
run_id = cols[2].text_input("Run id", key="logs_run")
text = cols[3].text_input("Message contains", key="logs_q")
cols = st.columns([2, 2, 1, 2])
since = cols[0].text_input("Since (UTC)", key="logs_since", placeholder="2026-11-29 06:00")
until = cols[1].text_input("Until (UTC)", key="logs_until", placeholder="2026-11-29")
limit = cols[2].selectbox("Page", [20, 50, 100, 200, 500, 1000], index=3, key="logs_limit")
following = cols[3].toggle("Live follow", key="logs_follow", help="Poll for new lines every 2 s")

try:
    filters = {
        "level": None if level == "DEBUG" else level,
        "pipeline_id": None if pipeline == ALL else pipeline,
        "execution_id": run_id.strip() or None,
        "q": text.strip() or None,
        "since": parse_time(since, "Since"),
        "until": parse_time(until, "Until"),
        "limit": limit,
    }
except ValueError as exc:
    st.error(str(exc))
    st.stop()

state = st.session_state.get("logs_state")
if state is None or state["filters"] != filters:
    try:
        start(c, filters)
    except FlexiError as exc:
        ui.show_error(exc, "Could not search the logs")
        st.stop()

if message := st.session_state.pop("logs_flash", None):
    st.error(message)

st.fragment(run_every=2 if following else None)(show_lines)(c, following)

if st.session_state["logs_state"]["next_before"] is not None:
    st.button("Older lines", key="logs_older", on_click=load_older, args=(c,))
