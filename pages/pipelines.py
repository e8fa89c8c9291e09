"""Pipelines: the list with last and next runs; a YAML editor with live validation, the DAG,
versions with a diff, run with parameters, new from a template, delete."""

from __future__ import annotations

import difflib
import re

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Pipelines")


def numbered(text: str) -> str:
    return "\n".join(f"{i:4} │ {line}" for i, line in enumerate(text.splitlines(), 1))


def validate(text: str) -> dict:
    try:
        return c.validate_pipeline(text)
    except FlexiError as exc:
        return {"valid": False, "errors": [str(exc)]}


def show_validation(result: dict, text: str) -> None:
    if result["valid"]:
        st.success(f"Valid: {result.get('stages')} stage(s).")
        return
    for err in result["errors"]:
        st.error(err)
    lines = {int(n) for e in result["errors"] for n in re.findall(r"\bline (\d+)", e)}
    if lines:
        rows = text.splitlines()
        st.caption("At: " + "; ".join(f"line {n}: `{rows[n - 1].strip()}`" for n in sorted(lines)
                                      if 0 < n <= len(rows)))  # fmt: skip


def dag(pipeline: dict) -> str:
    out = ["digraph { rankdir=LR; node [shape=box, style=rounded, fontsize=11];"]
    for s in pipeline["stages"]:
        out.append(f'"{s["id"]}" [label="{s["id"]}\\n({s["type"]})"];')
        out += [f'"{d}" -> "{s["id"]}";' for d in s["dependencies"]]
    return "\n".join(out + ["}"])


try:
    pipelines = c.pipelines(limit=1000)["pipelines"]
    schedules = c.schedules()["schedules"]
except FlexiError as exc:
    ui.show_error(exc, "Could not load pipelines")
    st.stop()

nexts: dict[str, str] = {}
for s in schedules:
    if s["next_run_at"] and (
        s["pipeline_id"] not in nexts or s["next_run_at"] < nexts[s["pipeline_id"]]
    ):
        nexts[s["pipeline_id"]] = s["next_run_at"]
rows = []
for p in pipelines:
    last = c.executions(pipeline_id=p["id"], limit=1)["executions"]
    rows.append(
        {"id": p["id"], "name": p["name"], "stages": len(p["stages"]), "version": p["version"],
         "last run": ui.icon(last[0]["status"]) if last else "-",
         "last run at": ui.ago(last[0]["created_at"]) if last else "-",
         "next run (UTC)": ui.when(nexts.get(p["id"])), "description": p["description"]}
    )  # fmt: skip
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="pl_table")

tab_edit, tab_new = st.tabs(["Open a pipeline", "New from a template"])

with tab_new:
    if pipelines:
        template = st.selectbox("Template", [p["id"] for p in pipelines], key="tpl_pick")
        name = st.text_input("Name of the new pipeline", key="new_pipeline_name")
        source = next(p for p in pipelines if p["id"] == template)["yaml"]
        if name.strip():
            text = re.sub(r"(?m)^name:.*$", f"name: {name.strip()}", source, count=1)
            result = validate(text)
            show_validation(result, text)
            if st.button("Create", key="tpl_create", disabled=not result["valid"]):
                try:
                    made = c.create_pipeline(text)
                except FlexiError as exc:
                    ui.show_error(exc, "Create")
                else:
                    st.success(f"Created {made['id']}.")
                    st.session_state["pl_open"] = made["id"]
                    st.rerun()

with tab_edit:
    ids = [p["id"] for p in pipelines]
    if not ids:
        st.write("No pipelines yet: create one from a template.")
        st.stop()
    pid = st.selectbox("Pipeline", ids, key="pl_open")
    current = c.pipeline(pid)
    st.caption(
        f"version {current['version']} saved {ui.when(current['updated_at'])} UTC;"
        f" {len(current['stages'])} stages"
    )
    st.graphviz_chart(dag(current))

    run_col, edit_col = st.columns([1, 2])
    with run_col:
        st.markdown("**Run**")
        with st.form("pl_run_form"):
            params = {
                k: st.text_input(k, value=str(v), key=f"param_{pid}_{k}")
                for k, v in current["variables"].items()
            }
            extra = st.text_area("More parameters (name=value per line)", key=f"extra_{pid}")
            go = st.form_submit_button("Run now", type="primary")
        if go:
            for line in extra.splitlines():
                if "=" in line:
                    k, v = line.split("=", 1)
                    params[k.strip()] = v.strip()
            changed = {k: v for k, v in params.items() if str(current["variables"].get(k)) != v}
            try:
                run = c.trigger(pid, changed)
            except FlexiError as exc:
                ui.show_error(exc, "Run")
            else:
                st.session_state["pl_last_run"] = run["id"]
        if st.session_state.get("pl_last_run"):
            rid = st.session_state["pl_last_run"]
            st.success(f"Started run {rid}.")
            st.page_link("pages/executions.py", label=f"Open run {rid}", query_params={"run": rid})

    with edit_col:
        st.markdown("**YAML**")
        key = f"yaml_{pid}_{current['version']}"
        text = st.text_area("Pipeline YAML", value=current["yaml"], height=380, key=key)
        st.session_state["pipeline_yaml"] = text
        result = validate(text)
        show_validation(result, text)
        if text != current["yaml"]:
            diff = "\n".join(
                difflib.unified_diff(
                    current["yaml"].splitlines(), text.splitlines(),
                    f"version {current['version']}", "edited", lineterm="",
                )
            )  # fmt: skip
            st.code(diff, language="diff")
        if st.button("Save as a new version", key="pl_save", disabled=text == current["yaml"]):
            if not result["valid"]:
                st.error("Not saved: fix the errors above first.")
            else:
                try:
                    saved = c.update_pipeline(pid, text)
                except FlexiError as exc:
                    ui.show_error(exc, "Not saved")
                else:
                    st.success(f"Saved as version {saved['version']}.")
                    st.rerun()
        with st.expander("Versions"):
            versions = c.versions(pid)["versions"]
            for older, newer in zip(versions[1:], versions, strict=False):
                st.markdown(f"version {newer['version']} ({ui.when(newer['created_at'])} UTC)")
                st.code(
                    "\n".join(difflib.unified_diff(
                        older["yaml"].splitlines(), newer["yaml"].splitlines(),
                        f"version {older['version']}", f"version {newer['version']}", lineterm="",
                    )) or "(no change)",
                    language="diff",
                )  # fmt: skip
        with st.expander("Delete"):
            sure = st.checkbox(f"Delete {pid} (its runs stay in the history)", key="pl_del_sure")
            if st.button("Delete pipeline", key="pl_delete", disabled=not sure):
                try:
                    c.delete_pipeline(pid)
                except FlexiError as exc:
                    ui.show_error(exc, "Not deleted")
                else:
                    st.session_state.pop("pl_open", None)
                    st.rerun()
