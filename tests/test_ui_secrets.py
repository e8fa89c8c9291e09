"""The Secrets and Connections pages against a real runtime (AppTest, in-process; the runtime is
served over HTTP by `ui_runtime`): what is added through their widgets reaches the API, a secret's
value is nowhere in what they render, and errors of the API are shown. One Chromium check."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flexiroaster.errors import NotFound

from .conftest import app_test, free_port, rendered

VALUE = "sk-live-5cQ8wPz3-planted"
NEXT = "sk-live-7hN2rTy6-replaced"
USER = """
name: uses-token
stages:
  - id: q
    type: sql
    config: {query: "select {{ secrets.API_TOKEN }} = 'x' as same, {{ vars.REGION }} as r"}
"""


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


TOKEN = "tok-conn-8Jd2Wq5Xv-planted"


@contextlib.contextmanager
def vendor_api():
    """A loopback HTTP server answering 200 to `Bearer TOKEN` and 401 otherwise; yields its URL
    and the Authorization headers it received."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(200 if seen[-1] == f"Bearer {TOKEN}" else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


USES_API = """
name: uses-api
stages:
  - id: items
    type: input
    config: {connection: vendor-api, endpoint: /items}
"""


def test_connections_page_adds_tests_changes_and_deletes_an_http_connection(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/connections.py")
    ok(at)
    assert "No connection yet" in texts(at.markdown)
    with vendor_api() as (url, seen):
        at.text_input(key="cn_new_name").input("vendor-api")
        at.selectbox(key="cn_new_type").select("http").run()
        p = "cn_new_http_"
        at.text_input(key=p + "base_url").input(url)
        at.selectbox(key=p + "auth").select("bearer")
        at.text_area(key=p + "headers").input("Accept: application/json")
        at.text_input(key=p + "secret_token").input(TOKEN)
        at.button(key="cn_test_form").click().run()  # before saving
        ok(at)
        assert seen == [f"Bearer {TOKEN}"]
        assert "OK. The form's connection: reachable" in texts(at.success)
        assert not c.connections()["total"]
        at.button(key="cn_save").click().run()
        ok(at)
        assert "vendor-api (http) saved; secret fields stored: token" in texts(at.success)
        saved = c.connection("vendor-api")
        assert saved["secrets_set"] == ["token"] and saved["config"]["auth"] == "bearer"
        assert saved["config"]["headers"] == {"Accept": "application/json"}
        table = next(d.value for d in at.dataframe if "secrets set" in d.value.columns)
        assert table.set_index("name").loc["vendor-api", "secrets set"] == "token"
        assert TOKEN not in rendered(at) and url in rendered(at)

        # the saved one, with its stored token (the box is empty: empty keeps it)
        assert at.selectbox(key="cn_pick").value == "vendor-api"
        assert at.text_input(key="cn_vendor-api_http_secret_token").value == ""
        at.button(key="cn_test_saved").click().run()
        ok(at)
        assert seen[-1] == f"Bearer {TOKEN}"
        assert "OK. Saved connection vendor-api: reachable" in texts(at.success)
        assert "ms)" in texts(at.success)

    # the server is gone: the same connection now fails its test, with the reason
    at.button(key="cn_test_saved").click().run()
    ok(at)
    failed = texts(at.error)
    assert "Not OK. Saved connection vendor-api" in failed and "ConnectError" in failed, failed
    closed = f"http://127.0.0.1:{free_port()}"
    at.text_input(key="cn_vendor-api_http_base_url").input(closed)
    at.button(key="cn_save").click().run()
    ok(at)
    again = c.connection("vendor-api")
    assert again["config"]["base_url"].rstrip("/") == closed and again["secrets_set"] == ["token"]
    assert TOKEN not in rendered(at)

    # a name the API refuses, a headers line the page cannot read
    at.selectbox(key="cn_pick").select("(new connection)").run()
    at.selectbox(key="cn_new_type").select("http").run()
    assert at.text_input(key="cn_new_http_secret_token").value == ""  # cleared when saved
    at.text_input(key="cn_new_name").input("Bad Name")
    at.selectbox(key="cn_new_type").select("webhook").run()
    at.text_input(key="cn_new_webhook_secret_url").input("http://127.0.0.1:9/hook")
    at.button(key="cn_save").click().run()
    ok(at)
    assert "“Bad Name” is not a valid connection name" in texts(at.error)
    at.text_input(key="cn_new_name").input("hook")
    at.selectbox(key="cn_new_type").select("http").run()
    at.text_input(key="cn_new_http_base_url").input("ftp://127.0.0.1/x")  # the API's 422
    at.button(key="cn_save").click().run()
    ok(at)
    assert "hook not saved" in texts(at.error) and "base_url" in texts(at.error)
    at.text_input(key="cn_new_name").input("other")
    at.selectbox(key="cn_new_type").select("http").run()
    at.text_input(key="cn_new_http_base_url").input(closed)
    at.text_area(key="cn_new_http_headers").input("no colon here")
    at.button(key="cn_save").click().run()
    assert "headers, line 1" in texts(at.error)
    assert [x["name"] for x in c.connections()["connections"]] == ["vendor-api"]

    # delete: refused while a pipeline uses it, done once none does
    c.create_pipeline(USES_API)
    at.selectbox(key="cn_pick").select("vendor-api").run()
    at.checkbox(key="cn_del_sure_vendor-api").check()
    at.button(key="cn_delete").click().run()
    ok(at)
    assert "vendor-api not deleted" in texts(at.error) and "uses-api" in texts(at.error)
    c.delete_pipeline("uses-api")
    at.run()
    at.checkbox(key="cn_del_sure_vendor-api").check()
    at.button(key="cn_delete").click().run()
    ok(at)
    assert "Connection vendor-api deleted" in texts(at.success)
    assert c.connections()["total"] == 0


@pytest.mark.slow
def test_a_secret_typed_in_chromium_is_saved_and_never_shown(tmp_path):
    """`flexiroaster up` with an API token; a secret added through the Secrets page in Chromium
    reaches the runtime, and neither it nor the token is in the page's text, HTML or inputs."""
    import os

    import httpx

    from .conftest import sample_data_dir
    from .test_ui_browser import ARGS, CHROMIUM, running_up, settle

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    api_token = "api-tok-3Fh8Lq1Ws-planted"
    data = tmp_path / "data"
    sample_data_dir(data)
    with running_up(data, tmp_path / "up.log", FLEXIROASTER_API_TOKEN=api_token) as (up, root, app):
        api = f"{root}/api/v1"
        auth = {"Authorization": f"Bearer {api_token}"}
        httpx.put(f"{api}/variables/REGION", json={"value": "eu-west-1", "secret": False},
                  headers=auth).raise_for_status()  # fmt: skip
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{app}/secrets")
            page.get_by_text("Secrets and variables").first.wait_for()
            settle(page)
            key = page.get_by_label("Key", exact=True).filter(visible=True).first  # Add tab
            key.fill("VENDOR_TOKEN")
            key.press("Enter")
            settle(page)
            value = page.get_by_label("Value", exact=True).filter(visible=True).first
            assert value.get_attribute("type") == "password"
            value.fill(VALUE)
            value.press("Enter")
            settle(page)
            page.get_by_role("button", name="Add").click()
            page.get_by_text("Secret VENDOR_TOKEN saved").wait_for()
            settle(page)
            page.get_by_text("••••••").first.wait_for(state="attached")  # the grid's own cells
            shown = page.inner_text("body")
            html = page.content()
            boxes = page.locator("input, textarea").evaluate_all("els => els.map(e => e.value)")
            page.screenshot(path=str(tmp_path / "secrets.png"), full_page=True)
            browser.close()
        stored = httpx.get(f"{api}/variables/VENDOR_TOKEN").json()
        assert stored["secret"] is True and stored["value"] is None
        assert "VENDOR_TOKEN" in html and "eu-west-1" in html  # it did draw the table
        assert boxes and "" in boxes
        for text in (shown, html, "\n".join(boxes)):
            assert VALUE not in text and api_token not in text


def test_connections_page_keeps_replaces_and_removes_secret_fields(ui_runtime):
    _, c = ui_runtime
    at = app_test("views/connections.py")
    at.text_input(key="cn_new_name").input("warehouse")
    at.selectbox(key="cn_new_type").select("postgres").run()
    p = "cn_new_postgres_"
    at.text_input(key=p + "host").input("127.0.0.1")
    at.number_input(key=p + "port").set_value(free_port())
    at.text_input(key=p + "database").input("dw")
    at.text_input(key=p + "user").input("etl")
    at.text_area(key=p + "options").input("sslmode: disable\napplication_name: flexi")
    at.text_input(key=p + "secret_password").input(VALUE)
    at.button(key="cn_save").click().run()
    ok(at)
    saved = c.connection("warehouse")
    assert saved["secrets_set"] == ["password"]
    assert saved["config"]["options"] == {"sslmode": "disable", "application_name": "flexi"}
    assert VALUE not in rendered(at)

    # the form before saving: nothing listens on that port, so not ok, with the reason
    at.button(key="cn_test_form").click().run()
    ok(at)
    assert "Not OK. The form's connection" in texts(at.error)

    # a description changed with the secret box left empty keeps the password
    p = "cn_warehouse_postgres_"
    assert at.text_area(key=p + "options").value == "sslmode: disable\napplication_name: flexi"
    at.text_input(key=p + "description").input("the warehouse")
    at.button(key="cn_save").click().run()
    ok(at)
    saved = c.connection("warehouse")
    assert saved["description"] == "the warehouse" and saved["secrets_set"] == ["password"]
    # ticking "remove" drops it
    at.checkbox(key=p + "remove_password").check()
    at.button(key="cn_save").click().run()
    ok(at)
    assert c.connection("warehouse")["secrets_set"] == []
    assert "secret fields stored: none" in texts(at.success)
    assert p + "remove_password" not in [cb.key for cb in at.checkbox]  # nothing left to remove

    # a webhook's only setting is its secret URL
    at.selectbox(key="cn_pick").select("(new connection)").run()
    at.text_input(key="cn_new_name").input("chat")
    at.selectbox(key="cn_new_type").select("webhook").run()
    at.text_input(key="cn_new_webhook_secret_url").input(f"http://127.0.0.1:9/hook/{VALUE}")
    at.button(key="cn_save").click().run()
    ok(at)
    assert c.connection("chat")["secrets_set"] == ["url"]
    page = rendered(at)
    assert VALUE not in page and "warehouse" in page and "chat" in page
