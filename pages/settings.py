"""Settings: what the runtime runs with, the health of its parts, and how to change them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

c = ui.client()
st.title("Settings")

try:
    settings = c.settings()
    health = c.health()
except FlexiError as exc:
    ui.show_error(exc, "Could not read the runtime's settings")
    st.stop()

st.caption(
    f"Runtime at {ui.api_url()} (pid {settings['pid']}), version {health['version']}, up"
    f" {ui.seconds(health['uptime_seconds'])}. Overall: {health['status']}."
)
st.subheader("Running with")
shown = {k: v for k, v in settings.items() if k not in ("pid",)}
shown["api_token_set"] = "set" if settings["api_token_set"] else "not set"
st.dataframe(
    pd.DataFrame([{"setting": k, "value": str(v)} for k, v in shown.items()]),
    hide_index=True,
    width="stretch",
    key="settings_table",
)
st.subheader("Health")
for name, comp in health["components"].items():
    details = ", ".join(f"{k}: {v}" for k, v in comp.items() if k != "status")
    line = f"**{name}**: {comp['status']}" + (f" — {details}" if details else "")
    (st.success if comp["status"] == "ok" else st.info if comp["status"] == "off" else st.error)(
        line
    )
st.subheader("Changing them")
st.markdown(
    "Settings come from environment variables (or a `.env` file) read when the runtime starts:"
    " `FLEXIROASTER_DATA_DIR`, `FLEXIROASTER_STORE_PATH`, `FLEXIROASTER_MAX_WORKERS`,"
    " `FLEXIROASTER_DEFAULT_TIMEOUT`, `FLEXIROASTER_LOG_FLUSH_INTERVAL`, `FLEXIROASTER_HOST`,"
    " `FLEXIROASTER_PORT`, `FLEXIROASTER_API_TOKEN`, `FLEXIROASTER_QUERY_MAX_ROWS`,"
    " `FLEXIROASTER_QUERY_TIMEOUT`, `FLEXIROASTER_MAX_BODY_BYTES`. Restart the runtime"
    " (`flexiroaster up`) after changing them. This app finds the runtime through"
    " `FLEXIROASTER_API_URL`."
)
