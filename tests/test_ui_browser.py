"""The app in a real browser: `flexiroaster up` on free ports, Debian's Chromium through
Playwright; create a pipeline from a template, run it, watch it complete, take screenshots,
then stop `up` with Ctrl-C and check it took both its children down."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import free_port, sample_data_dir

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TEMPLATE = "log-analyzer"  # seven stages, well under a second on the sample data


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen, log, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"`flexiroaster up` exited with {proc.returncode}:\n{log.read_text()}"
            )
        if answers(url):
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def running_up(data, log, **env: str):
    """`flexiroaster up` on free ports over `data` (no API token or URL of the caller's, plus
    `env`), output to the file `log` (a full pipe would stall the servers); yields (process, API
    base URL, app base URL) once the app answers. At the end, Ctrl-C to `up` alone (it must stop
    its children); its process group is killed if it has not stopped within 30 s."""
    port, ui_port = free_port(), free_port()
    full = {k: v for k, v in os.environ.items()
            if k not in ("FLEXIROASTER_API_TOKEN", "FLEXIROASTER_API_URL")}  # fmt: skip
    full |= {"FLEXIROASTER_DATA_DIR": str(data), **env}
    with log.open("w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "flexiroaster", "up", "--port", str(port), "--ui-port",
             str(ui_port)],
            env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    app = f"http://127.0.0.1:{ui_port}"
    try:
        wait_http(f"{app}/_stcore/health", up, log)
        yield up, f"http://127.0.0.1:{port}", app
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def settle(page) -> None:
    """Wait until Streamlit has finished its script run (the running indicator is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=30_000)
    assert not page.locator("[data-testid=stException]").count(), page.inner_text("body")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_create_run_and_watch_a_pipeline_in_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    sample_data_dir(data)
    log = tmp_path / "up.log"
    with running_up(data, log) as (up, api, app):
        assert answers(f"{api}/api/v1/health")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)

            # The front door `up` prints; the pages are reached through the app's navigation.
            page.goto(app)
            nav = page.get_by_test_id("stSidebarNav")
            nav.get_by_text("Pipelines").wait_for()
            settle(page)
            nav.get_by_text("Pipelines").click()
            page.get_by_text("New from a template").first.wait_for()
            settle(page)
            page.get_by_role("tab", name="New from a template").click()
            settle(page)
            page.get_by_label("Template").last.click()
            page.get_by_role("option", name=TEMPLATE).click()
            settle(page)
            name = page.get_by_label("Name of the new pipeline")
            name.fill("Browser Made")
            name.press("Enter")
            settle(page)
            page.get_by_role("button", name="Create").click()
            page.get_by_text("Created pipeline browser-made").wait_for()
            settle(page)
            assert answers(f"{api}/api/v1/pipelines/browser-made")

            # The new pipeline is now the open one: run it and follow the link to the run.
            page.get_by_role("tab", name="Open a pipeline").click()
            page.get_by_role("button", name="Run now").click()
            link = page.get_by_role("link", name="Open run")
            link.first.wait_for()
            link.first.click()
            page.wait_for_url("**/executions?run=*")
            page.get_by_text("browser-made").first.wait_for()
            page.get_by_text("completed", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("Outputs").wait_for()  # the finished view, previews included
            settle(page)
            page.screenshot(path=str(tmp_path / "execution.png"), full_page=True)

            nav.get_by_text("Dashboard").click()
            page.get_by_text("Runs today").first.wait_for()
            settle(page)
            page.wait_for_timeout(1000)  # plotly draws its charts after the script run
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()
        for shot in ("dashboard.png", "execution.png"):
            assert (tmp_path / shot).stat().st_size > 20_000, shot
    output = log.read_text()
    assert up.returncode == 0, output
    assert "stopping" in output
    deadline = time.monotonic() + 10
    while group_alive(up.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(up.pid):
        os.killpg(up.pid, signal.SIGKILL)
        pytest.fail("`flexiroaster up` exited but left its runtime or app running")
    assert not answers(f"{api}/api/v1/health") and not answers(f"{app}/_stcore/health")


@pytest.mark.slow
def test_approve_an_insight_in_chromium(tmp_path):
    """A critical failure risk computed from a real imported history is approved on the Insights
    page: the schedule it names is paused."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    from .test_ui_review import seeded

    data = tmp_path / "data"
    sample_data_dir(data)
    seeded(data)  # the store is written, and closed, before `up` opens it
    with running_up(data, tmp_path / "up.log") as (up, root, app):
        api = f"{root}/api/v1"
        import httpx

        deadline = time.monotonic() + 30  # insights are computed once the runtime starts
        while not httpx.get(f"{api}/insights", params={"status": "pending_review"}).json()["total"]:
            assert time.monotonic() < deadline, "no insight waits for review"
            time.sleep(0.2)
        (risk,) = httpx.get(f"{api}/insights", params={"status": "pending_review"}).json()[
            "insights"
        ]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{app}/insights")
            page.get_by_text(risk["title"]).first.wait_for()
            settle(page)
            name = page.get_by_role("textbox", name="Your name")
            name.fill("Ann Ops")
            name.press("Enter")
            settle(page)
            page.get_by_role("button", name="Approve").click()
            page.get_by_text("schedule flaky-2h paused").wait_for()
            settle(page)
            page.screenshot(path=str(tmp_path / "insights.png"), full_page=True)
            browser.close()
        assert httpx.get(f"{api}/schedules/flaky-2h").json()["enabled"] is False
        assert httpx.get(f"{api}/insights/{risk['id']}").json()["decided_by"] == "Ann Ops"
