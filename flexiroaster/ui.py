"""What every page of the Streamlit app shares: the API client, and how things are shown.

Pages talk to the runtime only through `Client` (never the store): the runtime owns the DuckDB
file. The runtime's URL comes from FLEXIROASTER_API_URL (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from .client import Client, RuntimeUnavailable
from .errors import FlexiError

STATUS_ICON = {
    "completed": "✅",
    "failed": "❌",
    "cancelled": "⏹️",
    "running": "🔄",
    "pending": "⏳",
    "held": "✋",
    "retrying": "🔁",
    "skipped": "⏭️",
}


def api_url() -> str:
    return os.environ.get("FLEXIROASTER_API_URL", "http://127.0.0.1:8000").rstrip("/")


@st.cache_resource
def _client(url: str, token: str | None) -> Client:
    return Client(url, token, timeout=30)


def client() -> Client:
    """The runtime's API client; stops the page with how to start a runtime when none answers."""
    c = _client(api_url(), os.environ.get("FLEXIROASTER_API_TOKEN"))
    if "runtime_ok" not in st.session_state:
        try:
            c.health()
        except RuntimeUnavailable:
            st.error(
                f"No FlexiRoaster runtime answers at {api_url()}.\n\n"
                "Start the runtime and this app together with `flexiroaster up`, or start a"
                " runtime with `flexiroaster serve` (and set FLEXIROASTER_API_URL if it is not"
                " on 127.0.0.1:8000)."
            )
            st.stop()
        except FlexiError:
            pass  # it answers; a degraded runtime is shown on the pages
        st.session_state["runtime_ok"] = True
    return c


def show_error(exc: Exception, what: str = "") -> None:
    """An API error as the message it carries (never a traceback)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, RuntimeUnavailable):
        st.error(f"{prefix}the runtime does not answer: {exc}")
    elif isinstance(exc, FlexiError):
        st.error(f"{prefix}{exc}")
    else:
        st.error(f"{prefix}{type(exc).__name__}: {exc}")


def icon(status: str | None) -> str:
    return f"{STATUS_ICON.get(status or '', '')} {status or '-'}".strip()


def when(iso: str | None) -> str:
    """An API timestamp as local-free 'YYYY-MM-DD HH:MM:SS' UTC, or '-'."""
    if not iso:
        return "-"
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def ago(iso: str | None) -> str:
    if not iso:
        return "-"
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    s = (datetime.now(UTC) - t).total_seconds()
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(max(s, 0))}s ago"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def run_link(run_id: str) -> str:
    """A link to a run's page (the Executions page with ?run=)."""
    return f"/executions?run={run_id}"


def rows_table(records: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    return [{c: r.get(c) for c in columns} for r in records]


# --- who acts: one name across the pages that record decisions ----------------------------------

REVIEWER = "reviewer"  # a plain session key: a widget's own key is dropped on a page not drawing it


def reviewer_input(key: str, help: str | None = None, container: Any = None) -> None:
    """The "Your name" box, kept under REVIEWER so Insights, Alerts and Executions share it."""

    def keep() -> None:
        st.session_state[REVIEWER] = st.session_state[key].strip()

    st.session_state.setdefault(REVIEWER, "")
    st.session_state[key] = st.session_state[REVIEWER]
    (container or st).text_input("Your name", key=key, on_change=keep, help=help)


def reviewer() -> str:
    """The name entered on any page ('' when none)."""
    return st.session_state.get(REVIEWER, "").strip()


def tell(key: str, kind: str, message: str | Exception, what: str = "") -> None:
    """Keep a callback's outcome under `key` for the page run that follows it."""
    st.session_state[key] = (kind, message, what)


def show_outcome(key: str) -> None:
    kind, message, what = st.session_state.pop(key, (None, None, None))
    if isinstance(message, Exception):
        show_error(message, what)
    elif kind == "success":
        st.success(message)
    elif kind == "error":
        st.error(message)
