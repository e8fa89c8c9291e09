"""Connections: the named PostgreSQL databases, HTTP APIs, SMTP servers and webhooks stages use
(`connection: NAME`); add, change, test and delete them. Secret fields are write-only here."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")  # the API's rule (flexiroaster.spec.CONNECTION_NAME)
NEW = "(new connection)"
TYPES = ("postgres", "http", "smtp", "webhook")
# type -> its plain settings: (field, kind, default, help); kinds: text, optional (text or
# nothing), int, float, bool, pairs (one `name: value` a line), or a tuple of choices
FIELDS: dict[str, list[tuple[str, Any, Any, str]]] = {
    "postgres": [
        ("host", "text", "", "Server host name or address"),
        ("port", "int", 5432, "Server port"),
        ("database", "text", "", "Database name"),
        ("user", "text", "", "Role to log in as"),
        ("options", "pairs", {}, "Further libpq parameters, one `name: value` a line"),
        ("connect_timeout", "int", 10, "Seconds to wait for a connection"),
    ],
    "http": [
        ("base_url", "text", "", "The API's root URL (http or https)"),
        ("headers", "pairs", {}, "Plain headers, one `Name: value` a line (no credentials)"),
        ("auth", ("none", "bearer", "header", "basic"), "none", "How requests log in"),
        ("auth_header", "text", "Authorization", "auth header: the header carrying the token"),
        ("username", "optional", None, "auth basic: the user name"),
        ("timeout", "float", 30.0, "Seconds per request"),
        ("max_retries", "int", 4, "Retries of a failed request (5xx, 429)"),
        ("verify_tls", "bool", True, "Check the server's TLS certificate"),
    ],
    "smtp": [
        ("host", "text", "", "SMTP server"),
        ("port", "int", 25, "SMTP port"),
        ("sender", "text", "", "From address"),
        ("starttls", "bool", False, "Upgrade the connection with STARTTLS"),
        ("ssl", "bool", False, "Connect over TLS from the start (SMTPS, port 465)"),
        ("username", "optional", None, "Log in as (with the password)"),
        ("timeout", "float", 10.0, "Seconds to wait for the server"),
    ],
    "webhook": [("format", ("slack",), "slack", "Message format (Slack-compatible JSON)")],
}
SECRETS: dict[str, dict[str, str]] = {
    "postgres": {"password": "The role's password"},
    "http": {"token": "auth bearer or header: the token", "password": "auth basic: the password"},
    "smtp": {"password": "The login's password"},
    "webhook": {"url": "The webhook URL (it carries its own credential)"},
}

c = ui.client()
st.title("Connections")
st.caption(
    "Stages reach other systems through a stored connection: `input` and `output` stages read"
    " from and write to a postgres or http one, `notify` stages send through an smtp or webhook"
    " one (`connection: NAME` in the stage's config). Secret fields are stored encrypted, masked"
    " in every record of a run, and never shown again: a secret box left empty keeps what is"
    " stored."
)


def tell(kind: str, message: str | Exception, what: str = "") -> None:
    ui.tell("cn_outcome", kind, message, what)


def settings_text(config: dict) -> str:
    def shown(v: Any) -> str:
        return ", ".join(f"{k}: {x}" for k, x in v.items()) if isinstance(v, dict) else str(v)

    return "; ".join(f"{k}={shown(v)}" for k, v in config.items() if v not in (None, "", {}))


def used_by(conn: dict) -> str:
    users = conn["used_by"]
    return f"{len(users)}: {', '.join(users)}" if users else "-"


def pairs(text: str, field: str) -> dict[str, str]:
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"{field}, line {n}: write `name: value`, got {line.strip()!r}")
        out[name.strip()] = value.strip()
    return out


def prefix(slot: str, kind: str) -> str:
    return f"cn_{slot}_{kind}_"


def form_config(slot: str, kind: str) -> dict[str, Any]:
    """The plain settings as the form holds them (ValueError naming a field it cannot read)."""
    s, p, out = st.session_state, prefix(slot, kind), {}
    for field, how, _default, _help in FIELDS[kind]:
        value = s[p + field]
        if how == "pairs":
            value = pairs(value, field)
        elif how == "optional":
            value = value.strip() or None
        elif how == "text":
            value = value.strip()
        out[field] = value
    return out


def form_secrets(slot: str, kind: str, *, removals: bool) -> dict[str, str | None]:
    """Secret fields typed in (given), and with `removals` those ticked for removal (None)."""
    s, p, out = st.session_state, prefix(slot, kind), {}
    for field in SECRETS[kind]:
        if s.get(f"{p}secret_{field}"):
            out[field] = s[f"{p}secret_{field}"]
        elif removals and s.get(f"{p}remove_{field}"):
            out[field] = None
    return out


def clear_secrets(slot: str, kind: str) -> None:
    for field in SECRETS[kind]:
        st.session_state[f"{prefix(slot, kind)}secret_{field}"] = ""
        st.session_state.pop(f"{prefix(slot, kind)}remove_{field}", None)


def save(slot: str, kind: str) -> None:
    s = st.session_state
    name = s["cn_new_name"].strip() if slot == "new" else slot
    if not NAME.match(name):
        tell(
            "error",
            f"“{name}” is not a valid connection name: lowercase letters, digits, _ and -,"
            " starting with a letter, at most 63 characters." if name else "Enter a name.",
        )
        return
    try:
        config = form_config(slot, kind)
    except ValueError as exc:
        tell("error", str(exc), f"{name} not saved")
        return
    description = s[f"{prefix(slot, kind)}description"].strip() or None
    try:
        saved = c.put_connection(
            name, kind, config, form_secrets(slot, kind, removals=slot != "new"), description
        )
    except FlexiError as exc:
        tell("error", exc, f"{name} not saved")
        return
    clear_secrets(slot, kind)  # nothing typed as a secret stays in the form
    if slot == "new":
        s["cn_new_name"] = ""
        s["cn_pick"] = name
    stored = ", ".join(saved["secrets_set"]) or "none"
    tell("success", f"Connection {name} ({kind}) saved; secret fields stored: {stored}.")


def test(slot: str, kind: str, saved: bool) -> None:
    """Test the saved connection, or the form as it stands (before saving it)."""
    try:
        if saved:
            result = c.test_connection(slot)
            what = f"Saved connection {slot}"
        else:
            body = {"type": kind, "config": form_config(slot, kind)}
            body["secrets"] = form_secrets(slot, kind, removals=False)
            result = c.test_connection(body)
            what = "The form's connection"
    except (FlexiError, ValueError) as exc:
        st.session_state["cn_test"] = (slot, "error", exc)
        return
    st.session_state["cn_test"] = (slot, "result", (what, result))


def show_test(slot: str) -> None:
    found = st.session_state.get("cn_test")
    if not found or found[0] != slot:
        return
    _, kind, payload = found
    if kind == "error":
        ui.show_error(payload, "Could not test")
        return
    what, r = payload
    line = f"{what}: {r['detail']} ({r['took_ms']:.0f} ms)"
    if r["ok"]:
        st.success(f"OK. {line}")
    else:
        st.error(f"Not OK. {line}")


def delete(name: str) -> None:
    if not st.session_state.get(f"cn_del_sure_{name}"):
        tell("error", f"Tick “yes, delete {name}” first.")
        return
    try:
        c.delete_connection(name)
    except FlexiError as exc:
        tell("error", exc, f"{name} not deleted")
        return
    st.session_state.pop("cn_pick", None)
    tell("success", f"Connection {name} deleted.")


def fields(slot: str, kind: str, conn: dict | None) -> None:
    """The widgets of a connection of `kind` (a new one when `conn` is None)."""
    p, saved = prefix(slot, kind), (conn or {}).get("config", {})
    cols = st.columns(2)
    for n, (field, how, default, help_) in enumerate(FIELDS[kind]):
        value = saved.get(field, default)
        box, label = cols[n % 2], field.replace("_", " ").capitalize()
        if isinstance(how, tuple):
            box.selectbox(label, how, how.index(value), key=p + field, help=help_)
        elif how == "bool":
            box.checkbox(label, bool(value), key=p + field, help=help_)
        elif how == "int":
            box.number_input(label, value=int(value), step=1, key=p + field, help=help_)
        elif how == "float":
            box.number_input(label, value=float(value), step=1.0, key=p + field, help=help_)
        elif how == "pairs":
            text = "\n".join(f"{k}: {v}" for k, v in (value or {}).items())
            box.text_area(label, text, key=p + field, help=help_, height=68)
        else:
            box.text_input(label, value or "", key=p + field, help=help_)
    st.text_input(
        "Description (optional)", (conn or {}).get("description") or "", key=p + "description",
        max_chars=2000,
    )  # fmt: skip
    stored = set((conn or {}).get("secrets_set", []))
    cols = st.columns(len(SECRETS[kind]))
    for box, (field, help_) in zip(cols, SECRETS[kind].items(), strict=True):
        state = "set: leave empty to keep it" if field in stored else "not set"
        box.text_input(
            f"{field.capitalize()} (secret, {state})", key=f"{p}secret_{field}", type="password",
            help=help_ + ". Never shown again once saved.",
        )  # fmt: skip
        if field in stored:
            box.checkbox(f"remove the stored {field}", key=f"{p}remove_{field}")


try:
    connections = c.connections()["connections"]
except FlexiError as exc:
    ui.show_error(exc, "Could not list the connections")
    st.stop()
by_name = {x["name"]: x for x in connections}
ui.show_outcome("cn_outcome")

st.subheader(f"{len(connections)} connection{'s' if len(connections) != 1 else ''}")
if connections:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "name": x["name"],
                    "type": x["type"],
                    "description": x["description"] or "",
                    "settings": settings_text(x["config"]),
                    "secrets set": ", ".join(x["secrets_set"]) or "-",
                    "used by": used_by(x),
                    "updated (UTC)": ui.when(x["updated_at"]),
                }
                for x in connections
            ]
        ),
        hide_index=True,
        width="stretch",
        key="cn_table",
    )
else:
    st.write("No connection yet. Add one below.")

if st.session_state.get("cn_pick") not in (NEW, *by_name):
    st.session_state.pop("cn_pick", None)
pick = st.selectbox("Connection", [NEW, *by_name], key="cn_pick")
if pick == NEW:
    a, b = st.columns(2)
    a.text_input(
        "Name", key="cn_new_name", placeholder="warehouse-db",
        help="Lowercase letters, digits, _ and -, starting with a letter",
    )  # fmt: skip
    kind = b.selectbox("Type", TYPES, key="cn_new_type")
    slot, conn = "new", None
else:
    slot, conn = pick, by_name[pick]
    kind = conn["type"]
    st.caption(
        f"Type {kind}; used by {used_by(conn)}; created {ui.when(conn['created_at'])} UTC,"
        f" updated {ui.when(conn['updated_at'])} UTC."
    )

with st.container(border=True):
    fields(slot, kind, conn)
    cols = st.columns(4, vertical_alignment="center")
    cols[0].button("Save", key="cn_save", type="primary", on_click=save, args=(slot, kind))
    cols[1].button(
        "Test the form", key="cn_test_form", on_click=test, args=(slot, kind, False),
        help="Tries the settings and the secrets typed above, without saving them",
    )  # fmt: skip
    if conn is not None:
        cols[2].button(
            "Test connection", key="cn_test_saved", on_click=test, args=(slot, kind, True),
            help="Tries the saved connection with its stored secrets",
        )  # fmt: skip
    show_test(slot)
    if conn is not None:
        d, sure = st.columns([1, 3], vertical_alignment="center")
        d.button("Delete", key="cn_delete", on_click=delete, args=(slot,))
        sure.checkbox(f"yes, delete {slot}", key=f"cn_del_sure_{slot}")
        if conn["used_by"]:
            st.caption(
                f"{slot} cannot be deleted while a pipeline uses it: remove it from"
                f" {', '.join(conn['used_by'])} first."
            )
