"""Data: the tables pipelines wrote, a read-only SQL editor, a quick chart, downloads."""

from __future__ import annotations

import io

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Data")


def quoted(*names: str) -> str:
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


def run_query(sql: str) -> None:
    """Run `sql` through the read-only query API; keep the result (or the error) in the session."""
    try:
        res = c.query(sql)
    except FlexiError as exc:
        st.session_state["data_result"] = {"sql": sql, "error": str(exc)}
        return
    frame = pd.DataFrame(res["rows"], columns=res["columns"])
    st.session_state["data_result"] = {"sql": sql, "frame": frame, "meta": res}


try:
    tables = c.tables()["tables"]
except FlexiError as exc:
    ui.show_error(exc, "Could not list the tables")
    tables = []

left, right = st.columns([1, 2])
with left:
    st.subheader("Tables")
    if not tables:
        st.write("No pipeline has written a table yet. Run one from the Pipelines page.")
    else:
        listing = pd.DataFrame(
            [
                {"table": f"{t['schema_name']}.{t['name']}", "kind": t["kind"], "rows": t["rows"],
                 "columns": len(t["columns"])}
                for t in tables
            ]
        )  # fmt: skip
        st.dataframe(listing, hide_index=True, width="stretch", key="data_tables")
        names = [f"{t['schema_name']}.{t['name']}" for t in tables]
        picked = st.selectbox("Table", names, key="data_table")
        table = tables[names.index(picked)]
        st.caption(f"{table['kind']}, {table['rows'] if table['rows'] is not None else '?'} rows")
        st.dataframe(
            pd.DataFrame(table["columns"]), hide_index=True, width="stretch", key="data_columns"
        )
        if st.button("Preview 100 rows", key="data_preview"):
            sql = f"select * from {quoted(table['schema_name'], table['name'])} limit 100"
            st.session_state["sql"] = sql
            run_query(sql)

with right:
    st.subheader("SQL")
    st.caption(
        "Read-only: one SELECT, DESCRIBE, SHOW or EXPLAIN, with a row cap and a timeout. Run"
        " metadata is in schema `flexiroaster`."
    )
    sql = st.text_area(
        "Query", key="sql", height=140, placeholder="select * from my_table limit 10"
    )
    if st.button("Run", key="run_sql", type="primary") and sql.strip():
        with st.spinner("Running ..."):
            run_query(sql)

    result = st.session_state.get("data_result")
    if result and "error" in result:
        st.error(f"The query failed: {result['error']}")
    elif result:
        frame: pd.DataFrame = result["frame"]
        meta = result["meta"]
        more = " (capped: more rows exist)" if meta["truncated"] else ""
        st.caption(f"{meta['row_count']} row(s) in {meta['elapsed_ms']:.0f} ms{more}")
        st.dataframe(frame, hide_index=True, width="stretch", key="data_result_table")

        d1, d2 = st.columns(2)
        d1.download_button(
            "Download CSV", frame.to_csv(index=False).encode(), "result.csv", "text/csv",
            key="data_csv",
        )  # fmt: skip
        try:
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            d2.download_button(
                "Download Parquet", buf.getvalue(), "result.parquet",
                "application/octet-stream", key="data_parquet",
            )  # fmt: skip
        except (ValueError, TypeError, ImportError) as exc:
            d2.caption(f"No Parquet for this result: {exc}")

        if len(frame.columns) and len(frame):
            with st.expander("Chart", expanded=False):
                cols = list(frame.columns)
                kind = st.selectbox(
                    "Chart", ["bar", "line", "scatter", "histogram"], key="chart_kind"
                )
                x = st.selectbox("x", cols, key="chart_x")
                y = st.selectbox("y", ["(count)", *cols], key="chart_y", index=min(2, len(cols)))
                colour = st.selectbox("colour", ["(none)", *cols], key="chart_colour")
                kw = {"x": x, "color": None if colour == "(none)" else colour}
                try:
                    if kind == "histogram" or y == "(count)":
                        fig = px.histogram(frame, **kw)
                    else:
                        fig = getattr(px, kind)(frame, y=y, **kw)
                    st.plotly_chart(fig, key="chart")
                except (ValueError, TypeError) as exc:
                    st.warning(f"Cannot draw that chart: {exc}")
