"""Schedules: fire times (DST included), a live 1-second schedule, pause/resume/run-now, catch-up
across a real restart, webhooks, event chains, YAML schedules and clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from flexiroaster.api import create_app
from flexiroaster.client import Client
from flexiroaster.errors import FlexiError
from flexiroaster.runtime import Runtime
from flexiroaster.scheduler import ScheduleType, next_fire, parse_interval

from .conftest import serving

BERLIN = ZoneInfo("Europe/Berlin")

QUICK = """
name: {name}
stages:
  - id: one
    type: sql
    config: {{query: "select 1 as x"}}
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- fire times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("every 2 hours", 7200),
        ("30 minutes", 1800),
        ("every 5 minutes", 300),
        ("every minute", 60),
        ("every day", 86400),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("90s", 90),
        ("every 1 second", 1),
        ("1 hour and 15 minutes", 4500),
    ],
)
def test_interval_text(text, seconds):
    assert parse_interval(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["0 minutes", "-5m", "every 0 hours", "0.5s", "soon", "5 parsecs", ""]
)
def test_bad_interval_text(text):
    with pytest.raises(ValueError):
        parse_interval(text)


def fires(expr: str, tz: str, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = next_fire(ScheduleType.CRON, expr, tz, start, t)
        out.append(t)
    return out


def test_cron_next_times_on_weekdays_in_a_timezone():
    # Friday 2026-11-27 07:00 Berlin; "0 6 * * 1-5" next: Mon 30th, Tue 1st Dec, Wed 2nd
    start = datetime(2026, 11, 27, 7, 0, tzinfo=BERLIN).astimezone(UTC)
    got = fires("0 6 * * 1-5", "Europe/Berlin", start, 3)
    assert [t.astimezone(BERLIN).isoformat() for t in got] == [
        "2026-11-30T06:00:00+01:00",
        "2026-12-01T06:00:00+01:00",
        "2026-12-02T06:00:00+01:00",
    ]


def test_cron_0230_berlin_fires_once_on_the_autumn_dst_day():
    # 2026-10-25: 03:00 CEST -> 02:00 CET, so 02:30 happens twice; fire at the first only.
    got = fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12), 4)
    assert got == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two 02:30s
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]
    assert sum(t.astimezone(BERLIN).date().isoformat() == "2026-10-25" for t in got) == 1


def test_cron_0230_berlin_fires_once_on_the_spring_dst_day_at_the_next_valid_time():
    # 2027-03-28: 02:00 CET -> 03:00 CEST, so 02:30 does not exist; fire when the gap ends.
    got = fires("30 2 * * *", "Europe/Berlin", utc(2027, 3, 26, 12), 3)
    assert got == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 28, 1, 0), utc(2027, 3, 29, 0, 30)]
    assert got[1].astimezone(BERLIN).isoformat() == "2027-03-28T03:00:00+02:00"


def test_every_15_minutes_through_the_spring_gap_fires_once_at_its_end():
    got = fires("*/15 * * * *", "Europe/Berlin", utc(2027, 3, 28, 0, 40), 4)
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in got] == [
        "01:45",
        "03:00",
        "03:15",
        "03:30",
    ]


def test_hourly_through_the_autumn_repeat_fires_once_per_wall_hour():
    got = fires("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22, 30), 4)  # 00:30 CEST
    walls = [t.astimezone(BERLIN).strftime("%H:%M%z") for t in got]
    assert walls == ["01:00+0200", "02:00+0200", "03:00+0100", "04:00+0100"]


def test_intervals_count_from_their_anchor():
    anchor = utc(2026, 1, 1, 0, 0, 0)
    assert next_fire(ScheduleType.INTERVAL, "2h", "UTC", anchor, utc(2026, 1, 1, 3)) == utc(
        2026, 1, 1, 4
    )
    assert next_fire(ScheduleType.INTERVAL, "2h", "UTC", anchor, utc(2026, 1, 1, 4)) == utc(
        2026, 1, 1, 6
    )
    assert next_fire(ScheduleType.INTERVAL, "2h", "UTC", anchor, utc(2025, 1, 1)) == anchor


# --- a runtime that serves ----------------------------------------------------------------------


@pytest.fixture
def served(settings):
    """A started runtime (schedules fire) behind a real HTTP server; yields (runtime, client)."""
    rt = Runtime(settings)
    rt.start()
    try:
        with serving(create_app(runtime=rt)) as url, Client(url) as client:
            for name in ("sched-a", "sched-b", "sched-c"):
                client.create_pipeline(QUICK.format(name=name))
            yield rt, client
    finally:
        rt.close()


def runs_of(client: Client, trigger: str | None = None, pipeline: str | None = None) -> list[dict]:
    found = client.executions(pipeline_id=pipeline, limit=1000)["executions"]
    return [e for e in found if trigger is None or e["trigger"] == trigger]


def test_a_one_second_interval_fires_on_time(served):
    rt, client = served
    s = client.create_schedule(
        name="every second",
        pipeline_id="sched-a",
        type="interval",
        expression="1s",
        overlap="queue",
    )
    assert s["next_run_at"] is not None
    time.sleep(3.7)
    client.pause_schedule(s["id"])
    runs = sorted(runs_of(client, f"schedule:{s['id']}"), key=lambda r: r["scheduled_for"])
    assert len(runs) >= 3
    due = [datetime.fromisoformat(r["scheduled_for"]) for r in runs]
    late = [
        (datetime.fromisoformat(r["created_at"]) - d).total_seconds()
        for r, d in zip(runs, due, strict=True)
    ]
    assert all(0 <= x < 1.0 for x in late), late
    assert all(b - a == timedelta(seconds=1) for a, b in zip(due, due[1:], strict=False)), due
    # measured lateness, for the record
    print(f"1 s schedule: {len(runs)} runs, lateness max {max(late) * 1000:.1f} ms")


def test_pause_resume_and_run_now(served):
    rt, client = served
    s = client.create_schedule(
        name="pausing", pipeline_id="sched-b", type="interval", expression="1s"
    )
    time.sleep(1.5)
    paused = client.pause_schedule(s["id"])
    assert paused["enabled"] is False and paused["next_run_at"] is None
    before = len(runs_of(client, f"schedule:{s['id']}"))
    assert before >= 1
    time.sleep(2.2)
    assert len(runs_of(client, f"schedule:{s['id']}")) == before  # nothing while paused

    resumed = client.resume_schedule(s["id"])
    nxt = datetime.fromisoformat(resumed["next_run_at"])
    assert datetime.now(UTC) < nxt <= datetime.now(UTC) + timedelta(seconds=1)
    client.pause_schedule(s["id"])

    hourly = client.create_schedule(
        name="hourly", pipeline_id="sched-b", type="interval", expression="every hour"
    )
    run = client.run_schedule_now(hourly["id"])
    assert run["trigger"] == f"schedule:{hourly['id']}" and run["scheduled_for"] is None
    after = client.schedule(hourly["id"])
    assert after["next_run_at"] == hourly["next_run_at"]  # run-now does not move the next time
    assert after["last_run_id"] == run["id"]
    assert client.wait(run["id"], timeout=20)["status"] == "completed"
    assert client.schedule(hourly["id"])["last_run_status"] == "completed"


def test_preview_gives_the_next_times_on_the_local_clock(served):
    _, client = served
    s = client.create_schedule(
        name="weekday mornings", pipeline_id="sched-a", type="cron", expression="0 6 * * 1-5",
        timezone="Europe/Berlin",
    )  # fmt: skip
    got = client.preview_schedule(s["id"], n=7)
    local = [datetime.fromisoformat(t) for t in got["local_times"]]
    assert len(local) == 7 and all(t.hour == 6 and t.minute == 0 for t in local)
    assert all(t.weekday() < 5 for t in local)
    assert [datetime.fromisoformat(t) for t in got["times"]] == [t.astimezone(UTC) for t in local]
    assert got["times"][0] == s["next_run_at"].replace("+00:00", "Z") or datetime.fromisoformat(
        got["times"][0]
    ) == datetime.fromisoformat(s["next_run_at"])


def test_webhook_starts_one_run_with_its_body_and_needs_the_secret(served):
    rt, client = served
    s = client.create_schedule(
        name="orders hook", pipeline_id="sched-c", type="webhook", expression="orders-in"
    )
    secret = s["secret"]
    assert secret and s["has_secret"] and s["hook_path"] == "/api/v1/hooks/orders-in"
    assert "secret" not in client.schedule(s["id"])  # shown once, never again

    run = client.call_webhook("orders-in", secret, {"batch": "b-17", "rows": 3})
    assert run["params"] == {"batch": "b-17", "rows": 3}
    assert run["trigger"] == f"webhook:{s['id']}"
    client.wait(run["id"], timeout=20)
    assert len(runs_of(client, f"webhook:{s['id']}")) == 1

    base = str(client.http.base_url).rstrip("/")
    for headers, status in (
        ({"X-Webhook-Secret": secret[:-1] + "x"}, 401),
        ({}, 401),
    ):
        r = httpx.post(f"{base}/hooks/orders-in", json={"a": 1}, headers=headers)
        assert r.status_code == status and r.json()["error"] == "unauthorized", r.text
    r = httpx.post(f"{base}/hooks/nope", json={}, headers={"X-Webhook-Secret": secret})
    assert r.status_code == 404
    r = httpx.post(
        f"{base}/hooks/orders-in", content=b"[1, 2]", headers={"X-Webhook-Secret": secret}
    )
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]
    assert len(runs_of(client, f"webhook:{s['id']}")) == 1  # refused calls started nothing


def test_event_schedule_chains_once_per_upstream_run_and_refuses_loops(served):
    rt, client = served
    client.create_schedule(
        name="b after a", pipeline_id="sched-b", type="event", expression="sched-a"
    )
    upstream = [client.trigger("sched-a") for _ in range(3)]
    for r in upstream:
        client.wait(r["id"], timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        chained = [
            r for r in runs_of(client, pipeline="sched-b") if r["trigger"].startswith("event:")
        ]
        if len(chained) >= 3 and all(r["status"] == "completed" for r in chained):
            break
        time.sleep(0.1)
    assert sorted(r["trigger"] for r in chained) == sorted(f"event:{r['id']}" for r in upstream)
    assert sorted(r["params"]["upstream_run_id"] for r in chained) == sorted(
        r["id"] for r in upstream
    )
    time.sleep(0.5)  # B's own completions must not start anything more
    assert len(runs_of(client, pipeline="sched-b")) == 3

    for name, pid, expr in (
        ("a after b", "sched-a", "sched-b"),
        ("a after a", "sched-a", "sched-a:any"),
    ):
        with pytest.raises(FlexiError) as err:
            client.create_schedule(name=name, pipeline_id=pid, type="event", expression=expr)
        assert err.value.status == 422 and "loop" in str(err.value)
    client.create_schedule(
        name="c after b failed", pipeline_id="sched-c", type="event", expression="sched-b:failed"
    )
    with pytest.raises(FlexiError, match="loop"):
        client.create_schedule(
            name="a after c", pipeline_id="sched-a", type="event", expression="sched-c"
        )


@pytest.mark.parametrize(
    ("fields", "where", "why"),
    [
        ({"type": "cron", "expression": "61 * * * *"}, "expression", "cron"),
        ({"type": "cron", "expression": "0 6 * *"}, "expression", "five fields"),
        (
            {"type": "cron", "expression": "0 6 * * *", "timezone": "Mars/Olympus"},
            "timezone",
            "unknown timezone",
        ),
        ({"type": "interval", "expression": "0 minutes"}, "expression", "longer than 0"),
        ({"type": "interval", "expression": "-2h"}, "expression", "longer than 0"),
        (
            {"type": "interval", "expression": "1h", "pipeline_id": "no-such"},
            "pipeline_id",
            "no pipeline",
        ),
        ({"type": "weekly", "expression": "x"}, "type", ""),
        ({"type": "event", "expression": "sched-a:exploded"}, "expression", "status"),
        ({"type": "interval", "expression": "1h", "secret": "x" * 20}, "secret", "webhook"),
    ],
)
def test_bad_schedules_are_422_naming_the_field(served, fields, where, why):
    _, client = served
    base = str(client.http.base_url).rstrip("/")
    body = {"name": "bad one", "pipeline_id": "sched-a", **fields}
    r = httpx.post(f"{base}/schedules", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert where in detail and why in detail, detail
    assert client.schedules()["total"] == 0


def test_a_pipeline_yaml_schedule_follows_its_yaml(served):
    _, client = served
    text = QUICK.format(name="yaml sched") + 'schedule: "every 2 hours"\n'
    client.create_pipeline(text)
    s = client.schedule("yaml-sched-schedule")
    assert (s["type"], s["expression"], s["source"]) == ("interval", "every 2 hours", "yaml")
    client.update_pipeline(
        "yaml-sched",
        QUICK.format(name="yaml sched")
        + "schedule: {type: cron, expression: '0 6 * * *', timezone: Europe/Berlin}\n",
    )
    s = client.schedule("yaml-sched-schedule")
    assert (s["type"], s["timezone"]) == ("cron", "Europe/Berlin")
    client.update_pipeline("yaml-sched", QUICK.format(name="yaml sched"))
    with pytest.raises(FlexiError) as err:
        client.schedule("yaml-sched-schedule")
    assert err.value.status == 404
    with pytest.raises(FlexiError) as err:
        client.update_pipeline(
            "yaml-sched", QUICK.format(name="yaml sched") + 'schedule: "61 * * * *"\n'
        )
    assert err.value.status == 422 and "schedule" in str(err.value)
    assert client.versions("yaml-sched")["versions"][0]["version"] == 3  # the bad one was not saved


def test_deleting_a_pipeline_deletes_its_schedules(served):
    _, client = served
    client.create_pipeline(QUICK.format(name="short lived"))
    client.create_schedule(
        name="short", pipeline_id="short-lived", type="interval", expression="1h"
    )
    client.delete_pipeline("short-lived")
    assert client.schedules(pipeline_id="short-lived")["total"] == 0


def test_cli_lists_and_pauses_schedules(served, data_dir):
    _, client = served
    client.create_schedule(
        name="cli one", pipeline_id="sched-a", type="cron", expression="0 6 * * *"
    )
    env = {"FLEXIROASTER_API_URL": str(client.http.base_url).removesuffix("/api/v1/").removesuffix("/api/v1"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "flexiroaster", "schedules"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "cli-one" in out.stdout and "06:00:00 UTC" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "flexiroaster", "schedule", "pause", "cli-one"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "paused" in out.stdout, out.stderr
    assert client.schedule("cli-one")["enabled"] is False


# --- catch-up across a real restart --------------------------------------------------------------


def test_missed_fire_times_after_a_restart_follow_the_catchup_policy(settings):
    """Three hourly schedules; the runtime stops, and starts again 3.5 hours later (by a fixed
    clock) over the same store file: skip starts none, latest one, all three."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    rt = Runtime(settings, clock=lambda: t0)
    rt.start()
    for name in ("catch a", "catch b", "catch c"):
        rt.save_pipeline(QUICK.format(name=name))
    from flexiroaster.scheduler import ScheduleIn

    for policy, pid in (("skip", "catch-a"), ("latest", "catch-b"), ("all", "catch-c")):
        rt.scheduler.create(
            ScheduleIn(
                name=f"hourly {policy}",
                pipeline_id=pid,
                type="interval",
                expression="every hour",
                catchup=policy,
                overlap="queue",
            )  # fmt: skip
        )
    rt.close()

    later = t0 + timedelta(hours=3, minutes=30)
    rt = Runtime(settings, clock=lambda: later)
    try:
        rt.start()
        got = {}
        for pid in ("catch-a", "catch-b", "catch-c"):
            runs = rt.store.list_executions(pipeline_id=pid)[0]
            got[pid] = sorted(r.scheduled_for for r in runs)
            for r in runs:
                rt.engine.wait(r.id, 20)
        hours = [t0 + timedelta(hours=h) for h in (1, 2, 3)]
        assert got == {"catch-a": [], "catch-b": hours[-1:], "catch-c": hours}
        for s in rt.scheduler.schedules():
            assert s.next_run_at == t0 + timedelta(hours=4)  # armed after now, not in the past
        runs = rt.store.list_executions(pipeline_id="catch-c")[0]
        assert {r.status for r in runs} == {"completed"}
        assert all(r.trigger.startswith("schedule:hourly-all") for r in runs)
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("expr", "start", "expected_weekdays"),
    [
        ("0 6 * * 1-5", utc(2026, 11, 28), ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]),
        ("0 6 * * 0", utc(2026, 11, 28), ["Sun"] * 6),
        ("0 6 * * 7", utc(2026, 11, 28), ["Sun"] * 6),
        ("0 6 * * sat,sun", utc(2026, 11, 28), ["Sat", "Sun"] * 3),
        ("0 6 * * */3", utc(2026, 11, 28), ["Sat", "Sun", "Wed"] * 2),
    ],
)
def test_cron_weekdays_count_from_sunday_like_cron(expr, start, expected_weekdays):
    got = fires(expr, "UTC", start, 6)
    assert [t.strftime("%a") for t in got] == expected_weekdays


def test_cron_with_day_and_weekday_fires_on_either():
    # the 1st of the month OR a Monday (classic cron)
    got = fires("0 0 1 * 1", "UTC", utc(2026, 11, 28), 4)
    assert [t.date().isoformat() for t in got] == [
        "2026-11-30",
        "2026-12-01",
        "2026-12-07",
        "2026-12-14",
    ]
