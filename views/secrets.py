"""Secrets and variables: what pipelines read as `{{ secrets.KEY }}` and `{{ vars.KEY }}`; add,
replace and delete them. A secret's value is write-only: this page never shows or prefills it."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from flexiroaster import ui
from flexiroaster.errors import FlexiError

KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")  # the API's own rule (flexiroaster.secrets.KEY)
MASKED = "••••••"
KINDS = ("secret", "plain")

c = ui.client()
st.title("Secrets and variables")
st.caption(
    "Pipelines read a secret as `{{ secrets.KEY }}` and a plain variable as `{{ vars.KEY }}`."
    " Secrets are stored encrypted, masked (`***`) in every log and record of a run, and never"
    " shown again once saved: to change one, enter its new value."
)


def tell(kind: str, message: str | Exception, what: str = "") -> None:
    ui.tell("sec_outcome", kind, message, what)


def key_problem(key: str) -> str | None:
    if not key:
        return "Enter a key."
    if not KEY.match(key):
        return (
            f"“{key}” is not a valid key: use capital letters, digits and _, not starting"
            " with a digit (UPPER_SNAKE_CASE, pattern ^[A-Z_][A-Z0-9_]*$)."
        )
    return None


def used_by(v: dict) -> str:
    users = v["used_by"]
    if not users:
        return "no pipeline"
    return f"{len(users)} pipeline{'s' if len(users) != 1 else ''}: {', '.join(users)}"


def add(existing: set[str]) -> None:
    """Save the new variable or secret (the Add button's on_click)."""
    s = st.session_state
    key = s["sec_new_key"].strip()
    secret = s["sec_new_kind"] == "secret"
    value_key = "sec_new_secret_value" if secret else "sec_new_plain_value"
    if problem := key_problem(key):
        tell("error", problem)
        return
    if key in existing:
        tell("error", f"{key} exists already: change it under “Change or delete” instead.")
        return
    value = s[value_key]
    if secret and not value:
        tell("error", "Enter the secret's value.")
        return
    description = s["sec_new_description"].strip() or None
    try:
        c.set_variable(key, value, secret=secret, description=description)
    except FlexiError as exc:
        tell("error", exc, f"{key} not saved")
        return
    s[value_key] = ""  # a secret typed here does not stay in the form
    s["sec_new_key"] = s["sec_new_description"] = ""
    s["sec_pick"] = key
    tell("success", f"{'Secret' if secret else 'Variable'} {key} saved.")


def change(v: dict) -> None:
    """Replace a secret's value or change a plain variable (the Save button's on_click)."""
    s, key = st.session_state, v["key"]
    value_key = f"sec_edit_{key}_value"
    value = s[value_key]
    if v["secret"] and not value:
        tell("error", f"Enter {key}'s new value (the current one is never shown, nor kept here).")
        return
    description = s[f"sec_edit_{key}_description"].strip() or None
    try:
        c.set_variable(key, value, secret=v["secret"], description=description)
    except FlexiError as exc:
        tell("error", exc, f"{key} not saved")
        return
    if v["secret"]:
        s[value_key] = ""
    else:
        s.pop(value_key, None)  # drawn again from the saved value
    tell("success", f"{key} {'replaced' if v['secret'] else 'saved'}.")


def delete(key: str) -> None:
    if not st.session_state.get(f"sec_del_sure_{key}"):
        tell("error", f"Tick “yes, delete {key}” first.")
        return
    try:
        c.delete_variable(key)
    except FlexiError as exc:
        tell("error", exc, f"{key} not deleted")
        return
    st.session_state.pop("sec_pick", None)
    tell("success", f"{key} deleted.")


try:
    variables = c.variables()["variables"]
except FlexiError as exc:
    ui.show_error(exc, "Could not list the variables")
    st.stop()
by_key = {v["key"]: v for v in variables}
ui.show_outcome("sec_outcome")

secrets_n = sum(v["secret"] for v in variables)
plain_n = len(variables) - secrets_n
st.subheader(f"{secrets_n} secret{'s' if secrets_n != 1 else ''}, {plain_n} plain")
if variables:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "key": v["key"],
                    "kind": "secret" if v["secret"] else "plain",
                    "value": MASKED if v["secret"] else v["value"],
                    "description": v["description"] or "",
                    "used by": used_by(v),
                    "updated (UTC)": ui.when(v["updated_at"]),
                }
                for v in variables
            ]
        ),
        hide_index=True,
        width="stretch",
        key="sec_table",
    )
else:
    st.write("No secret or variable yet. Add one below.")

new, edit = st.tabs(["Add", "Change or delete"])
with new:
    a, b = st.columns([3, 1])
    a.text_input("Key", key="sec_new_key", placeholder="API_TOKEN", help="UPPER_SNAKE_CASE")
    kind = b.radio("Kind", KINDS, key="sec_new_kind", horizontal=True)
    if kind == "secret":
        st.text_input(
            "Value",
            key="sec_new_secret_value",
            type="password",
            help="Stored encrypted; nobody can read it back, this page included.",
        )
    else:
        st.text_input("Value", key="sec_new_plain_value")
    st.text_input("Description (optional)", key="sec_new_description", max_chars=2000)
    st.button("Add", key="sec_add", type="primary", on_click=add, args=(set(by_key),))

with edit:
    if not by_key:
        st.write("Nothing to change yet.")
    else:
        if st.session_state.get("sec_pick") not in by_key:
            st.session_state.pop("sec_pick", None)
        key = st.selectbox(
            "Key",
            list(by_key),
            key="sec_pick",
            format_func=lambda k: f"{k} ({'secret' if by_key[k]['secret'] else 'plain'})",
        )
        v = by_key[key]
        st.caption(f"Used by {used_by(v)}; updated {ui.when(v['updated_at'])} UTC.")
        if v["secret"]:
            st.text_input(
                "New value",
                key=f"sec_edit_{key}_value",
                type="password",
                help="Replaces the stored value; the current one is never shown.",
            )
        else:
            st.text_input("Value", v["value"], key=f"sec_edit_{key}_value")
        st.text_input(
            "Description (optional)",
            v["description"] or "",
            key=f"sec_edit_{key}_description",
            max_chars=2000,
        )
        save, remove, sure = st.columns([1, 1, 3], vertical_alignment="center")
        save.button(
            "Replace value" if v["secret"] else "Save",
            key="sec_save",
            type="primary",
            on_click=change,
            args=(v,),
        )
        remove.button("Delete", key="sec_delete", on_click=delete, args=(key,))
        sure.checkbox(f"yes, delete {key}", key=f"sec_del_sure_{key}")
        if v["used_by"]:
            st.caption(
                f"{key} cannot be deleted while a pipeline uses it: remove it from"
                f" {', '.join(v['used_by'])} first."
            )
