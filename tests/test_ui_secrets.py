"""The Secrets and Connections pages against a real runtime (AppTest, in-process; the runtime is
served over HTTP by `ui_runtime`): what is added through their widgets reaches the API, a secret's
value is nowhere in what they render, and errors of the API are shown. One Chromium check."""

from __future__ import annotations

import pytest

from flexiroaster.errors import NotFound

from .conftest import app_test

VALUE = "sk-live-5cQ8wPz3-planted"
NEXT = "sk-live-7hN2rTy6-replaced"
USER = """
name: uses-token
stages:
  - id: q
    type: sql
    config: {query: "select {{ secrets.API_TOKEN }} = 'x' as same, {{ vars.REGION }} as r"}
"""


def rendered(at) -> str:
    """Everything the page drew: every element's value (tables as CSV) and its proto."""
    parts = []
    for node in at._tree:
        parts.append(str(getattr(node, "proto", "")))
        try:
            value = node.value
        except Exception:  # blocks and some elements have no value
            continue
        parts.append(value.to_csv() if hasattr(value, "to_csv") else repr(value))
    return "\n".join(parts)


def texts(elements) -> str:
    return " ".join(e.value for e in elements)


def ok(at) -> None:
    assert not at.exception, at.exception


def test_secrets_page_adds_replaces_and_deletes_without_showing_a_secret(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/secrets.py")
    ok(at)
    at.text_input(key="sec_new_key").input("API_TOKEN")
    at.radio(key="sec_new_kind").set_value("secret").run()
    at.text_input(key="sec_new_secret_value").input(VALUE)
    at.text_input(key="sec_new_description").input("vendor token")
    at.button(key="sec_add").click().run()
    ok(at)
    assert "Secret API_TOKEN saved" in texts(at.success)
    assert at.text_input(key="sec_new_secret_value").value == ""  # cleared after saving
    assert at.text_input(key="sec_new_key").value == ""

    at.text_input(key="sec_new_key").input("REGION")
    at.radio(key="sec_new_kind").set_value("plain").run()
    at.text_input(key="sec_new_plain_value").input("eu-west-1")
    at.button(key="sec_add").click().run()
    ok(at)
    got = {v["key"]: v for v in c.variables()["variables"]}
    assert (got["API_TOKEN"]["secret"], got["API_TOKEN"]["value"]) == (True, None)
    assert got["API_TOKEN"]["description"] == "vendor token"
    assert (got["REGION"]["secret"], got["REGION"]["value"]) == (False, "eu-west-1")

    c.create_pipeline(USER)
    at.run()
    table = next(d.value for d in at.dataframe if "kind" in d.value.columns).set_index("key")
    assert table.loc["API_TOKEN", "value"] == "••••••"
    assert table.loc["REGION", "value"] == "eu-west-1"
    assert table.loc["API_TOKEN", "used by"] == "1 pipeline: uses-token"
    page = rendered(at)
    assert VALUE not in page and "eu-west-1" in page and "vendor token" in page

    # The secret's edit form is write-only: empty, a password box, never the value.
    at.selectbox(key="sec_pick").select("API_TOKEN").run()
    box = at.text_input(key="sec_edit_API_TOKEN_value")
    assert box.value == "" and box.proto.type == box.proto.PASSWORD
    at.button(key="sec_save").click().run()
    assert "Enter API_TOKEN's new value" in texts(at.error)
    at.text_input(key="sec_edit_API_TOKEN_value").input(NEXT)
    at.button(key="sec_save").click().run()
    ok(at)
    assert "API_TOKEN replaced" in texts(at.success)
    assert at.text_input(key="sec_edit_API_TOKEN_value").value == ""
    assert NEXT not in rendered(at) and VALUE not in rendered(at)
    run = c.wait(c.trigger("uses-token")["id"], timeout=30)
    assert run["status"] == "completed"  # the replaced value reached the run (and was masked)

    # Delete: refused while a pipeline uses it (the API's 409 shown), done once it does not.
    at.checkbox(key="sec_del_sure_API_TOKEN").check()
    at.button(key="sec_delete").click().run()
    ok(at)
    assert "API_TOKEN not deleted" in texts(at.error) and "uses-token" in texts(at.error)
    c.delete_pipeline("uses-token")
    at.run()
    at.checkbox(key="sec_del_sure_API_TOKEN").check()
    at.button(key="sec_delete").click().run()
    ok(at)
    assert "API_TOKEN deleted" in texts(at.success)
    with pytest.raises(NotFound):
        c.variable("API_TOKEN")

    # A plain variable is edited in place, prefilled with its value.
    at.selectbox(key="sec_pick").select("REGION").run()
    assert at.text_input(key="sec_edit_REGION_value").value == "eu-west-1"
    at.text_input(key="sec_edit_REGION_value").input("us-east-2")
    at.button(key="sec_save").click().run()
    ok(at)
    assert c.variable("REGION")["value"] == "us-east-2"
    assert at.text_input(key="sec_edit_REGION_value").value == "us-east-2"


def test_secrets_page_refuses_bad_keys_and_shows_the_apis_refusal(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/secrets.py")
    at.text_input(key="sec_new_key").input("api-token")
    at.text_input(key="sec_new_secret_value").input(VALUE)
    at.button(key="sec_add").click().run()
    ok(at)
    assert "“api-token” is not a valid key" in texts(at.error)
    assert at.text_input(key="sec_new_secret_value").value == VALUE  # kept to fix the key
    assert VALUE in rendered(at)  # so the walk does see what a box holds
    at.text_input(key="sec_new_key").input("9LIVES").run()
    at.button(key="sec_add").click().run()
    assert "“9LIVES” is not a valid key" in texts(at.error)
    assert c.variables()["total"] == 0

    # The API's own 422: a value over its 64 KiB limit.
    at.text_input(key="sec_new_key").input("HUGE")
    at.text_input(key="sec_new_secret_value").input("x" * 70_000)
    at.button(key="sec_add").click().run()
    ok(at)
    assert "HUGE not saved" in texts(at.error) and "value" in texts(at.error)
    assert c.variables()["total"] == 0

    c.set_variable("TAKEN", "v", secret=False)
    at.run()
    at.text_input(key="sec_new_key").input("TAKEN")
    at.radio(key="sec_new_kind").set_value("plain").run()
    at.text_input(key="sec_new_plain_value").input("other")
    at.button(key="sec_add").click().run()
    assert "TAKEN exists already" in texts(at.error)
    assert c.variable("TAKEN")["value"] == "v"
