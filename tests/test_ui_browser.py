"""The app in a real browser: `flexiroaster up` on free ports, Debian's Chromium through
Playwright; create a pipeline from a template, run it, see it complete, take screenshots."""

from __future__ import annotations

import os
import shutil
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


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"`flexiroaster up` exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def settle(page) -> None:
    """Wait until Streamlit has finished its script run (the running indicator is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=30_000)


@pytest.mark.slow
def test_create_run_and_watch_a_pipeline_in_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does it)")
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    sample_data_dir(data)
    port, ui_port = free_port(), free_port()
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(data)}
    env.pop("FLEXIROASTER_API_TOKEN", None)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flexiroaster",
            "up",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    app = f"http://127.0.0.1:{ui_port}"
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v1/health", up)
        wait_http(f"{app}/_stcore/health", up)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{app}/dashboard")
            page.get_by_text("Runs today").first.wait_for(timeout=60_000)
            settle(page)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            page.goto(f"{app}/pipelines")
            page.get_by_text("New from a template").first.wait_for(timeout=60_000)
            settle(page)
            page.get_by_role("tab", name="New from a template").click()
            settle(page)
            # The template picker defaults to the first pipeline; choose the log analyzer.
            page.get_by_label("Template").last.click()
            page.get_by_role("option", name="log-analyzer").click()
            settle(page)
            name = page.get_by_label("Name of the new pipeline")
            name.fill("Browser Made")
            name.press("Enter")
            settle(page)
            page.get_by_role("button", name="Create").click()
            settle(page)
            wait_http(f"http://127.0.0.1:{port}/api/v1/pipelines/browser-made", up, timeout=30)

            # The new pipeline is now the open one: run it.
            page.get_by_role("tab", name="Open a pipeline").click()
            settle(page)
            page.get_by_role("button", name="Run now").click()
            settle(page)
            link = page.get_by_role("link", name="Open run")
            link.first.wait_for(timeout=30_000)
            link.first.click()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                settle(page)
                if page.get_by_text("completed", exact=True).count():
                    break
                refresh = page.get_by_role("button", name="Refresh")
                if refresh.count():
                    refresh.click()
                else:
                    page.wait_for_timeout(500)
            assert page.get_by_text("completed", exact=True).count(), "the run did not complete"
            assert "browser-made" in page.content()
            page.screenshot(path=str(tmp_path / "execution.png"), full_page=True)
            browser.close()
        for shot in ("dashboard.png", "execution.png"):
            assert (tmp_path / shot).stat().st_size > 20_000, shot
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            out, _ = up.communicate()
        shutil.rmtree(data / "work", ignore_errors=True)
    assert up.returncode == 0, out
    assert "stopping" in out
