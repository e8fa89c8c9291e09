"""Pipelines: the list with last and next runs; a YAML editor validated on every change, the DAG,
versions with a diff, run with parameters, new from a template, delete."""

from __future__ import annotations

import difflib
import json
import re

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

FILL = {
    "completed": "#d4edda",
    "failed": "#f8d7da",
    "cancelled": "#e2e3e5",
    "skipped": "#eeeeee",
    "running": "#cfe2ff",
    "retrying": "#fff3cd",
}
c = ui.client()
st.title("Pipelines")


def error_lines(errors: list[str]) -> set[int]:
    """The YAML line numbers the validation errors point at."""
    return {int(n) for e in errors for n in re.findall(r"\bline (\d+)", e)}


def numbered(text: str, marks: set[int] = frozenset(), around: int | None = None) -> str:
    """The text with line numbers, ▶ on marked lines; only `around` lines either side of a mark
    when given."""
    rows = text.splitlines()
    keep = range(1, len(rows) + 1)
    if around is not None and marks:
        keep = sorted({n for m in marks for n in range(m - around, m + around + 1)} & set(keep))
    out, last = [], 0
    for n in keep:
        if last and n != last + 1:
            out.append("     ┆")
        out.append(f"{'▶' if n in marks else ' '}{n:4} │ {rows[n - 1]}")
        last = n
    return "\n".join(out)


def validate(text: str) -> dict:
    try:
        return c.validate_pipeline(text)
    except FlexiError as exc:  # e.g. an empty body is a 400, not a validation answer
        return {"valid": False, "errors": [str(exc)]}


def show_validation(result: dict, text: str) -> None:
    """Valid, or each error and the lines it points at (numbered, so the line is easy to find)."""
    if result["valid"]:
        st.success(f"Valid: pipeline {result['pipeline']!r}, {result['stages']} stage(s).")
        return
    for err in result["errors"]:
        st.error(err)
    lines = {n for n in error_lines(result["errors"]) if 0 < n <= len(text.splitlines())}
    if lines:
        st.code(numbered(text, lines, around=2), language=None)


def diff(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), old_name, new_name, lineterm=""
    )
    return "\n".join(lines) or "(no change)"


def dag(stages: list[dict], status: dict[str, str]) -> str:
    """The stages and their dependencies as a Graphviz DOT graph, filled by `status` (a run's)."""
    out = [
        'digraph { rankdir=LR; node [shape=box, style="rounded,filled", fillcolor=white,'
        ' fontname="sans-serif"];'
    ]
    for s in stages:
        fill = FILL.get(status.get(s["id"], ""), "white")
        out.append(f'"{s["id"]}" [label="{s["id"]}\\n{s["type"]}", fillcolor="{fill}"];')
        out += [f'"{d}" -> "{s["id"]}";' for d in s["dependencies"]]
    return "\n".join([*out, "}"])


def renamed(yaml_text: str, name: str) -> str:
    """The pipeline YAML with its top-level `name:` replaced (quoted, so "2026" stays a string)."""
    line = f"name: {json.dumps(name)}"
    if re.search(r"(?m)^name:.*$", yaml_text):
        return re.sub(r"(?m)^name:.*$", lambda _: line, yaml_text, count=1)
    return f"{line}\n{yaml_text}"


def param_value(text: str) -> object:
    """A run parameter typed the way YAML variables are: numbers and booleans, else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) else text


def goto(pipeline_id: str | None, message: str = "") -> None:
    """Open another pipeline (or the first) on the next run, with a message."""
    st.session_state["pl_goto"] = pipeline_id
    if message:
        st.session_state["pl_flash"] = message
    st.rerun()


try:
    pipelines = c.pipelines(limit=1000)["pipelines"]
    schedules = c.schedules()["schedules"]
except FlexiError as exc:
    ui.show_error(exc, "Could not load the pipelines")
    st.stop()

if "pl_goto" in st.session_state:  # set before the selectbox exists in this run
    target = st.session_state.pop("pl_goto")
    if target:
        st.session_state["pl_open"] = target
    else:
        st.session_state.pop("pl_open", None)
if "pl_flash" in st.session_state:
    st.success(st.session_state.pop("pl_flash"))

next_run: dict[str, str] = {}
for s in schedules:
    at, pid = s["next_run_at"], s["pipeline_id"]
    if s["enabled"] and at and (pid not in next_run or at < next_run[pid]):
        next_run[pid] = at

rows, last_run = [], {}
for p in pipelines:
    try:
        last = c.executions(pipeline_id=p["id"], limit=1)["executions"]
    except FlexiError:
        last = []
    if last:
        last_run[p["id"]] = last[0]
    rows.append(
        {
            "id": p["id"],
            "name": p["name"],
            "stages": len(p["stages"]),
            "version": p["version"],
            "last run": ui.icon(last[0]["status"]) if last else "never run",
            "last run at": ui.ago(last[0]["created_at"]) if last else "-",
            "next run (UTC)": ui.when(next_run.get(p["id"])),
            "description": p["description"],
        }
    )
st.caption(f"{len(pipelines)} pipeline(s)")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="pl_table")

tab_open, tab_new = st.tabs(["Open a pipeline", "New from a template"])

with tab_new:
    if not pipelines:
        st.write("There is no stored pipeline to start from: add one with `flexiroaster import`.")
    else:
        by_id = {p["id"]: p for p in pipelines}
        template = st.selectbox(
            "Template",
            list(by_id),
            key="tpl_pick",
            format_func=lambda i: f"{i} ({len(by_id[i]['stages'])} stages)",
        )
        name = st.text_input("Name of the new pipeline", key="new_pipeline_name").strip()
        if name:
            new_yaml = renamed(by_id[template]["yaml"], name)
            checked = validate(new_yaml)
            show_validation(checked, new_yaml)
            with st.expander("The new pipeline's YAML"):
                st.code(new_yaml, language="yaml", line_numbers=True)
            if st.button("Create", key="tpl_create", type="primary", disabled=not checked["valid"]):
                try:
                    made = c.create_pipeline(new_yaml)
                except FlexiError as exc:
                    ui.show_error(exc, "Not created")
                else:
                    goto(made["id"], f"Created pipeline {made['id']} from {template}.")

with tab_open:
    ids = [p["id"] for p in pipelines]
    if not ids:
        st.write(
            "No pipelines yet: create one from a template, or put YAML files in data/pipelines."
        )
        st.stop()
    pid = st.selectbox("Pipeline", ids, key="pl_open")
    try:
        current = c.pipeline(pid)
    except FlexiError as exc:
        ui.show_error(exc, f"Pipeline {pid}")
        st.stop()
    st.caption(
        f"version {current['version']} saved {ui.when(current['updated_at'])} UTC;"
        f" {len(current['stages'])} stages"
        + (f"; owner {current['owner']}" if current["owner"] else "")
        + (f"; tags {', '.join(current['tags'])}" if current["tags"] else "")
    )
    stage_status, last = {}, last_run.get(pid)
    if last:
        try:
            stage_status = {s["stage_id"]: s["status"] for s in c.execution(last["id"])["stages"]}
        except FlexiError:
            pass  # the graph without colours; the run page says what is wrong
        st.caption(f"Coloured by the last run, [{last['id']}]({ui.run_link(last['id'])}).")
    st.graphviz_chart(dag(current["stages"], stage_status))

    run_col, edit_col = st.columns([1, 2])
    with run_col:
        st.markdown("**Run**")
        with st.form(f"pl_run_form_{pid}"):
            values = {
                k: st.text_input(k, value=str(v), key=f"param_{pid}_{k}")
                for k, v in current["variables"].items()
            }
            extra = st.text_area("More parameters (name=value per line)", key=f"extra_{pid}")
            go = st.form_submit_button("Run now", type="primary")
        if go:
            params = {
                k: param_value(v) for k, v in values.items() if str(current["variables"][k]) != v
            }
            for line in extra.splitlines():
                if "=" in line:
                    k, v = line.split("=", 1)
                    params[k.strip()] = param_value(v.strip())
            try:
                run = c.trigger(pid, params)
            except FlexiError as exc:
                ui.show_error(exc, "Not started")
            else:
                st.session_state["pl_last_run"] = run["id"]
        if st.session_state.get("pl_last_run"):
            rid = st.session_state["pl_last_run"]
            st.success(f"Started run [{rid}]({ui.run_link(rid)}).")
            st.page_link(
                "views/executions.py", label=f"Open run {rid}", icon="▶️", query_params={"run": rid}
            )

    with edit_col:
        st.markdown("**YAML**")
        # The editor holds the open pipeline's latest version until the user edits it.
        if st.session_state.get("pipeline_yaml_of") != (pid, current["version"]):
            st.session_state["pipeline_yaml"] = current["yaml"]
            st.session_state["pipeline_yaml_of"] = (pid, current["version"])
        text = st.text_area("Pipeline YAML (Ctrl+Enter to check)", height=400, key="pipeline_yaml")
        result = validate(text)
        show_validation(result, text)
        with st.expander("The YAML with line numbers"):
            st.code(numbered(text, error_lines(result["errors"])), language=None)
        edited = text != current["yaml"]
        if edited:
            st.markdown(f"Changes against version {current['version']}:")
            st.code(diff(current["yaml"], text, f"version {current['version']}", "edited"), "diff")
        if st.button("Save as a new version", key="pl_save", disabled=not edited):
            if not result["valid"]:
                st.error(
                    "Not saved: the YAML is invalid. " + " ".join(result["errors"])
                )  # fmt: skip
            else:
                try:
                    saved = c.update_pipeline(pid, text)
                except FlexiError as exc:
                    ui.show_error(exc, "Not saved")
                else:
                    goto(saved["id"], f"Saved {saved['id']} as version {saved['version']}.")

        try:
            versions = c.versions(pid)["versions"]
        except FlexiError as exc:
            ui.show_error(exc, "Could not read the versions")
            versions = []
        with st.expander(f"Versions ({len(versions)})"):
            for newer, older in zip(versions, versions[1:], strict=False):
                st.markdown(f"version {newer['version']}, {ui.when(newer['created_at'])} UTC")
                label = f"version {older['version']}", f"version {newer['version']}"
                st.code(diff(older["yaml"], newer["yaml"], *label), language="diff")
            if versions:
                st.markdown(f"version {versions[-1]['version']}: first saved.")

        with st.expander("Delete"):
            sure = st.checkbox(
                f"Yes, delete {pid} (its past runs stay in the history)", key=f"pl_del_sure_{pid}"
            )
            if st.button("Delete pipeline", key="pl_delete", disabled=not sure):
                try:
                    c.delete_pipeline(pid)
                except FlexiError as exc:
                    ui.show_error(exc, "Not deleted")
                else:
                    st.session_state.pop("pl_last_run", None)
                    goto(None, f"Deleted pipeline {pid}.")
