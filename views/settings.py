"""Settings: what the runtime runs with (secrets only as set / not set), the health of its parts,
and how to change them. Read-only: settings are read once when the runtime starts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

# Settings the API reports under a name that is not the variable's.
VARIABLE = {"api_token_set": "FLEXIROASTER_API_TOKEN", "store_file": "(from DATA_DIR/STORE_PATH)"}
HIDDEN = {"pid"}


def shown(key: str, value: object) -> str:
    if key == "api_token_set":
        return "set" if value else "not set"
    return "-" if value is None else str(value)


c = ui.client()
st.title("Settings")

try:
    settings = c.settings()
    health = c.health()  # a degraded runtime (503) answers with its body
except FlexiError as exc:
    ui.show_error(exc, "Could not read the runtime's settings")
    st.stop()

a, b, d = st.columns(3)
a.metric("Runtime version", health["version"])
b.metric("Up for", ui.seconds(health["uptime_seconds"]))
d.metric("Health", health["status"])
st.caption(f"This app talks to the runtime at {ui.api_url()} (runtime pid {settings['pid']}).")

st.subheader("Running with")
st.dataframe(
    pd.DataFrame(
        [
            {
                "setting": k,
                "value": shown(k, v),
                "variable": VARIABLE.get(k, f"FLEXIROASTER_{k.upper()}"),
            }
            for k, v in settings.items()
            if k not in HIDDEN
        ]
    ),
    hide_index=True,
    width="stretch",
    key="settings_table",
)

st.subheader("Health")
for name, comp in health["components"].items():
    details = ", ".join(f"{k}: {v}" for k, v in comp.items() if k != "status")
    line = f"**{name}**: {comp['status']}" + (f" — {details}" if details else "")
    if comp["status"] == "ok":
        st.success(line)
    elif comp["status"] == "off":
        st.info(line)
    else:
        st.error(line)

st.subheader("Changing them")
st.markdown(
    "The runtime reads its settings once, at start, from `FLEXIROASTER_*` environment variables"
    " (the **variable** column above), then a `.env` file in its working directory, then the"
    " defaults; an invalid value stops it with the variable's name. Set the variable and restart"
    " the runtime (`flexiroaster serve`, or `flexiroaster up` for the runtime and this app)."
    " README, section *Settings*, lists them. This app finds the runtime through"
    " `FLEXIROASTER_API_URL` and sends `FLEXIROASTER_API_TOKEN` when the runtime needs a token."
)
