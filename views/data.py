"""Data: the tables pipelines wrote (schema and a preview), a read-only SQL editor over the query
API, a quick chart of the result, and CSV/Parquet downloads of it."""

from __future__ import annotations

import io

import pandas as pd
import plotly.express as px
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Data")

PREVIEW_ROWS = 100
CHARTS = ["bar", "line", "scatter", "histogram"]
NONE = "(none)"


def quoted(*names: str) -> str:
    """`"schema"."name"`, with any double quote inside a name doubled."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


NUMERIC = ("DECIMAL", "DOUBLE", "FLOAT", "REAL", "HUGEINT", "UHUGEINT")
TEMPORAL = ("DATE", "TIMESTAMP")


def frame_of(res: dict) -> pd.DataFrame:
    """The JSON result as a frame; DECIMAL, DATE and TIMESTAMP come as text on the wire, so they
    are turned back into numbers and datetimes by their DuckDB type (for sorting and charts)."""
    frame = pd.DataFrame(res["rows"], columns=res["columns"])
    for i, kind in enumerate(res["types"]):
        col = frame.iloc[:, i]
        try:
            if kind.startswith(NUMERIC):
                frame.isetitem(i, pd.to_numeric(col))
            elif kind.startswith(TEMPORAL):
                frame.isetitem(i, pd.to_datetime(col, utc="TIME ZONE" in kind))
        except (ValueError, TypeError, OverflowError):
            pass  # out of pandas' range (e.g. year 9999): keep the text
    return frame


def run_query(sql: str) -> None:
    """Run `sql` through the read-only query API; keep the result (or the error) in the session,
    so the chart and the downloads still have it after later reruns."""
    try:
        res = c.query(sql)
    except FlexiError as exc:
        st.session_state["data_result"] = {"sql": sql, "error": exc}
        return
    st.session_state["data_result"] = {"sql": sql, "frame": frame_of(res), "meta": res}


def open_in_editor(sql: str) -> None:
    """Button callback: put `sql` in the editor (before the editor is drawn) and run it."""
    st.session_state["sql"] = sql
    run_query(sql)


def parquet_of(sql: str):
    """A download callable: the result again, as Arrow from the API, written as Parquet."""

    def build() -> bytes:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(c.query_arrow(sql), buf)
        return buf.getvalue()

    return build


# --- the tables ------------------------------------------------------------------------------

try:
    tables = c.tables()["tables"]
except FlexiError as exc:
    ui.show_error(exc, "Could not list the tables")
    tables = []

st.subheader("Tables")
if not tables:
    st.write("No pipeline has written a table yet. Run one from the Pipelines page.")
else:
    names = [f"{t['schema_name']}.{t['name']}" for t in tables]
    listing = pd.DataFrame(
        [
            {
                "table": name,
                "kind": t["kind"],
                "rows": t["rows"],
                "columns": ", ".join(f"{col['name']} {col['type']}" for col in t["columns"]),
            }
            for name, t in zip(names, tables, strict=True)
        ]
    )
    left, right = st.columns([2, 3])
    with left:
        st.dataframe(listing, hide_index=True, width="stretch", key="data_tables")
        picked = st.selectbox("Table", names, key="data_table")
    table = tables[names.index(picked)]
    preview_sql = (
        f"select * from {quoted(table['schema_name'], table['name'])} limit {PREVIEW_ROWS}"
    )
    with right:
        rows = table["rows"] if table["rows"] is not None else "row count not known for a view"
        st.markdown(f"**{picked}** ({table['kind']}, {rows} rows)")
        schema_tab, preview_tab = st.tabs(["Schema", f"First {PREVIEW_ROWS} rows"])
        with schema_tab:
            st.dataframe(
                pd.DataFrame(table["columns"], columns=["name", "type"]),
                hide_index=True,
                width="stretch",
                key="data_columns",
            )
        with preview_tab:
            try:
                st.dataframe(
                    frame_of(c.query(preview_sql)),
                    hide_index=True,
                    width="stretch",
                    key="data_preview_table",
                )
            except FlexiError as exc:
                ui.show_error(exc, f"Could not preview {picked}")
        st.button(
            "Open in the SQL editor",
            key="data_preview",
            on_click=open_in_editor,
            args=(preview_sql,),
        )

# --- the SQL editor --------------------------------------------------------------------------

st.subheader("SQL")
st.caption(
    "Read-only: one SELECT, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN, with the runtime's row cap and"
    " timeout. Run metadata is in schema `flexiroaster` (executions, stage_executions, logs)."
)
sql = st.text_area("Query", key="sql", height=140, placeholder="select * from my_table limit 10")
if st.button("Run", key="run_sql", type="primary") and sql.strip():
    with st.spinner("Running ..."):
        run_query(sql)

result = st.session_state.get("data_result")
if result and "error" in result:
    ui.show_error(result["error"], "The query failed")
elif result:
    frame: pd.DataFrame = result["frame"]
    meta = result["meta"]
    more = " (capped: more rows exist)" if meta["truncated"] else ""
    st.caption(f"{meta['row_count']} row(s) in {meta['elapsed_ms']:.0f} ms{more}")
    st.dataframe(frame, hide_index=True, width="stretch", key="data_result_table")

    d1, d2, _ = st.columns([1, 1, 4])
    d1.download_button(
        "Download CSV",
        frame.to_csv(index=False).encode(),
        "result.csv",
        "text/csv",
        key="data_csv",
    )
    d2.download_button(
        "Download Parquet",
        parquet_of(result["sql"]),
        "result.parquet",
        "application/vnd.apache.parquet",
        key="data_parquet",
    )

    if len(frame.columns) and len(frame):
        with st.expander("Chart", expanded=False):
            cols = list(frame.columns)
            numeric = [col for col in cols if pd.api.types.is_numeric_dtype(frame[col])]
            k1, k2, k3, k4 = st.columns(4)
            kind = k1.selectbox("Chart", CHARTS, key="chart_kind")
            x = k2.selectbox("x", cols, key="chart_x")
            y_options = ["(count)", *cols]
            y_default = y_options.index(numeric[-1]) if numeric else 0
            y = k3.selectbox("y", y_options, index=y_default, key="chart_y")
            colour = k4.selectbox("colour", [NONE, *cols], key="chart_colour")
            kw = {"x": x, "color": None if colour == NONE else colour}
            try:
                if kind == "histogram" or y == "(count)":
                    fig = px.histogram(frame, **kw)
                else:
                    fig = getattr(px, kind)(frame, y=y, **kw)
                st.plotly_chart(fig, key="chart")
            except (ValueError, TypeError) as exc:
                st.warning(f"Cannot draw that chart: {exc}")
