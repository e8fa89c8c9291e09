"""http connections end to end: a real JSON API on loopback (bearer token, cursor and page-number
pagination, a 429 and 503 on the way), read by input stages and written to by a batched output
stage, through a real runtime, its REST API and engine; secrets never recorded."""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from flexiroaster.client import Client
from flexiroaster.connectors.retry import backoff, retry_after

from .conftest import http_server, run_pipeline, runtime_over_http

TOKEN = "api-tok-7Qx93LmZpW-secret"
ITEMS = [{"id": i, "name": f"item {i}", "meta": {"score": i * 1.5, "tag": f"t{i % 3}"}}
         for i in range(1, 38)]  # fmt: skip
PEOPLE = [{"pid": i, "email": f"p{i}@example.org"} for i in range(1, 24)]


@dataclass
class Api:
    """What the loopback API saw and what it still has to answer wrongly."""

    base: str = ""
    token: str = TOKEN
    auth: list[str] = field(default_factory=list)  # Authorization headers received
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # method, path, query
    faults: dict[tuple[str, str], list[tuple[int, dict]]] = field(default_factory=dict)
    posts: list[tuple[str, int]] = field(default_factory=list)  # Idempotency-Key, status given
    received: list[dict] = field(default_factory=list)  # rows of every accepted POST
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, path: str, key: str) -> tuple[int, dict] | None:
        with self.lock:
            queue = self.faults.get((path, key))
            return queue.pop(0) if queue else None


def _handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest's output clean
            pass

        def _send(self, status: int, doc: object, headers: dict | None = None) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            with api.lock:
                api.auth.append(got)
            if hmac.compare_digest(got.encode(), f"Bearer {api.token}".encode()):
                return True
            self._send(401, {"error": "unauthorized"})
            return False

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            with api.lock:
                api.requests.append(("GET", url.path, q))
            if not self._authorized():
                return
            if url.path == "/v1/items":  # cursor pages of 10 under data.items, cursor in meta.next
                key = q.get("cursor", "start")
                if (bad := api.fault(url.path, key)) is not None:
                    return self._send(bad[0], {"error": "try later"}, bad[1])
                start = 0 if key == "start" else int(key.removeprefix("c"))
                page = ITEMS[start : start + 10]
                nxt = f"c{start + 10}" if start + 10 < len(ITEMS) else None
                return self._send(200, {"data": {"items": page}, "meta": {"next": nxt}})
            if url.path == "/v1/people":  # page numbers, a top-level list
                number, size = int(q.get("page", 1)), int(q.get("per_page", 5))
                if (bad := api.fault(url.path, str(number))) is not None:
                    return self._send(bad[0], {"error": "busy"}, bad[1])
                return self._send(200, PEOPLE[(number - 1) * size : number * size])
            if url.path == "/v1/forever":  # always another page, always another cursor
                n = int(q.get("cursor", "0"))
                return self._send(200, {"items": [{"n": n}], "next": str(n + 1)})
            if url.path == "/v1/object":
                return self._send(200, {"data": {"items": {"id": 1}}, "total": 1})
            self._send(404, {"error": f"no {url.path}"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with api.lock:
                api.requests.append(("POST", url.path, {}))
            if not self._authorized():
                return
            key = self.headers.get("Idempotency-Key", "")
            bad = api.fault(url.path, key.rsplit("-", 1)[-1])
            status = bad[0] if bad else 200
            with api.lock:
                api.posts.append((key, status))
                if status == 200:
                    api.received.extend(json.loads(body))
            self._send(status, {"accepted": status == 200}, bad[1] if bad else None)

    return Handler


@contextlib.contextmanager
def api_server():
    api = Api()
    with http_server(_handler(api), "test-api") as base:
        api.base = base
        yield api


# --- a runtime over HTTP ----------------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    """(runtime, client, raw httpx client on the API, loopback API under test)."""
    data = tmp_path / "data"
    data.mkdir()
    with api_server() as api, runtime_over_http(data) as (rt, client, raw):
        yield rt, client, raw, api


def put_connection(raw: httpx.Client, name: str, config: dict, secrets: dict) -> dict:
    resp = raw.put(
        f"/connections/{name}",
        json={"type": "http", "description": "test API", "config": config, "secrets": secrets},
    )
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


run = run_pipeline


def stage(done: dict, stage_id: str) -> dict:
    return next(s for s in done["stages"] if s["stage_id"] == stage_id)


def one(client: Client, sql: str) -> list:
    return client.query(sql)["rows"][0]


READ = """
name: pull
stages:
  - id: items
    type: input
    config:
      connection: shop
      endpoint: items
      params: {region: q-marker-4471}
      records: data.items
      pagination: {type: cursor, param: cursor, cursor_path: meta.next}
  - id: people
    type: input
    config:
      connection: shop
      endpoint: people
      pagination: {type: page, param: page, size_param: per_page, size: 10}
  - {id: keep_items, type: output, dependencies: [items], config: {table: got_items}}
  - {id: keep_people, type: output, dependencies: [people], config: {table: got_people}}
"""


def test_paged_reads_get_every_record_once_through_a_429_and_a_503(env):
    rt, client, raw, api = env
    shown = put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                           {"token": TOKEN})  # fmt: skip
    api.faults[("/v1/items", "c20")] = [(429, {"Retry-After": "1"})]  # cursor page 3
    api.faults[("/v1/people", "2")] = [(503, {})]
    done, lines = run(client, READ)
    assert done["status"] == "completed", done
    # Every record exactly once, nested objects as structs.
    assert one(client, "select count(*), count(distinct id), sum(id) from got_items") == [
        37, 37, sum(range(1, 38))
    ]
    assert one(client, "select meta.tag, meta.score from got_items where id = 4") == ["t1", 6.0]
    assert one(client, "select count(*), count(distinct pid) from got_people") == [23, 23]
    items, people = stage(done, "items"), stage(done, "people")
    assert items["rows_out"] == 37 and people["rows_out"] == 23
    assert items["metrics"] == {"connection": "shop", "pages": 4, "requests": 5, "retries": 1}
    assert people["metrics"] == {"connection": "shop", "pages": 3, "requests": 4, "retries": 1}
    # The server saw the stored token on every request, and the query parameters and cursors.
    assert api.auth and set(api.auth) == {f"Bearer {TOKEN}"}
    cursors = [q.get("cursor") for m, p, q in api.requests if p == "/v1/items"]
    assert cursors == [None, "c10", "c20", "c20", "c30"]
    assert all(q["region"] == "q-marker-4471" for m, p, q in api.requests if p == "/v1/items")
    pages = [(q["page"], q["per_page"]) for m, p, q in api.requests if p == "/v1/people"]
    assert pages == [("1", "10"), ("2", "10"), ("2", "10"), ("3", "10")]
    # Retries are logged, without the query string.
    assert "GET /v1/items page 3: 429, retry in 1.0 s (attempt 2 of 5)" in lines
    assert any(x.startswith("GET /v1/people page 2: 503, retry in ") for x in lines), lines
    assert not any("q-marker-4471" in x or "cursor=" in x for x in lines)
    # The token is in no log line, stage record or API answer.
    answers = [shown, raw.get("/connections/shop").json(), raw.get("/connections").json(),
               client.execution(done["id"]), client.logs(done["id"])]  # fmt: skip
    assert TOKEN not in json.dumps(answers, default=str)
    stored = rt.store.rows("logs") + rt.store.rows("stage_executions") + rt.store.rows("executions")
    assert len(stored) > 10 and TOKEN not in json.dumps(stored, default=str)


def test_a_wrong_token_is_a_clear_failure_and_401_is_not_retried(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                   {"token": "not-the-token-83jd"})  # fmt: skip
    done, lines = run(client, READ)
    assert done["status"] == "failed"
    err = stage(done, "items")["error"]
    assert err.startswith("http connection 'shop': GET /v1/items page 1 answered 401 Unauthorized")
    assert "check the connection's credentials" in err
    assert stage(done, "keep_items")["status"] == "skipped"
    assert len([r for r in api.requests if r[1] == "/v1/items"]) == 1  # no retry of a 401
    assert "not-the-token-83jd" not in json.dumps([client.execution(done["id"]), lines])


WRITE = """
name: push
stages:
  - id: src
    type: sql
    config:
      query: >
        select range + 1 as id, (range * 1.25)::decimal(12, 2) as amount,
               date '2024-01-01' + range::int as day, {'k': range % 7} as nested
        from range(1050)
  - id: send
    type: output
    dependencies: [src]
    config: {destination: connection, connection: shop, endpoint: ingest, batch_size: 500}
"""


def test_output_posts_1050_rows_in_3_batches_once_each_despite_a_503(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                   {"token": TOKEN})  # fmt: skip
    api.faults[("/v1/ingest", "2")] = [(503, {})]
    done, lines = run(client, WRITE)
    assert done["status"] == "completed", done
    key = f"{done['id']}-send-"
    assert api.posts == [(key + "1", 200), (key + "2", 503), (key + "2", 200), (key + "3", 200)]
    ids = [r["id"] for r in api.received]
    assert len(ids) == 1050 and sorted(ids) == list(range(1, 1051))
    assert api.received[0] == {"id": 1, "amount": 0, "day": "2024-01-01", "nested": {"k": 0}}
    assert api.received[5] == {"id": 6, "amount": 6.25, "day": "2024-01-06", "nested": {"k": 5}}
    send = stage(done, "send")
    assert send["rows_out"] == 1050
    assert send["metrics"] == {"connection": "shop", "batches": 3, "rows": 1050, "retries": 1}
    assert any(x.startswith("POST /v1/ingest batch 2: 503, retry in ") for x in lines), lines
    assert set(api.auth) == {f"Bearer {TOKEN}"}


def test_a_batch_that_keeps_failing_says_which_rows_and_what_was_sent(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer", "max_retries": 1},
                   {"token": TOKEN})  # fmt: skip
    api.faults[("/v1/ingest", "2")] = [(500, {}), (500, {})]
    done, _ = run(client, WRITE)
    assert done["status"] == "failed"
    err = stage(done, "send")["error"]
    assert "POST /v1/ingest batch 2 (rows 501..1000) failed: answered 500" in err
    assert "after 2 attempt(s)" in err
    assert "500 row(s) in 1 batch(es) were sent before it and stay sent" in err
    assert "not transactional" in err
    assert len(api.received) == 500  # batch 1 only; batch 3 never sent


GUARDS = """
name: guarded
stages:
  - id: endless
    type: input
    config:
      connection: shop
      endpoint: forever
      records: items
      pagination: {type: cursor, param: cursor, cursor_path: next, max_pages: 3}
  - {id: object, type: input, config: {connection: shop, endpoint: object, records: data.items}}
  - {id: toplevel, type: input, config: {connection: shop, endpoint: object}}
  - {id: missing, type: input, config: {connection: shop, endpoint: object, records: data.rows}}
  - {id: offhost, type: input, config: {connection: shop, endpoint: "http://example.org/v1/items"}}
  - {id: nothing, type: input, config: {connection: shop, endpoint: people, params: {page: 99}}}
"""


def test_pagination_guard_records_path_and_host_errors_are_clear(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                   {"token": TOKEN})  # fmt: skip
    done, _ = run(client, GUARDS)
    assert done["status"] == "failed"
    errors = {s["stage_id"]: s["error"] for s in done["stages"]}
    assert errors["endless"].startswith(
        "http connection 'shop': GET /v1/forever stopped at pagination.max_pages = 3 (3 pages,"
        " 3 records) and the API still had more"
    )
    assert errors["object"] == (
        "http connection 'shop': GET /v1/object: records path `data.items` holds an object"
        " (keys: id), not a list"
    )
    assert errors["toplevel"].startswith(
        "http connection 'shop': GET /v1/object: the response is an object (keys: data, total),"
        " not a list: set `records`"
    )
    assert errors["missing"] == (
        "http connection 'shop': GET /v1/object: records path `data.rows` not found: `data` is"
        " an object (keys: items)"
    )
    offhost = "endpoint 'http://example.org/v1/items' leaves the connection's host"
    assert offhost in errors["offhost"]
    assert not [r for r in api.requests if "example.org" in r[1]]
    # No records is no error: an empty table, and a warning.
    nothing = stage(done, "nothing")
    assert (nothing["status"], nothing["rows_out"]) == ("completed", 0)
    assert len([r for r in api.requests if r[1] == "/v1/forever"]) == 3


def test_cancel_ends_a_retry_after_wait_at_once(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                   {"token": TOKEN})  # fmt: skip
    api.faults[("/v1/items", "start")] = [(429, {"Retry-After": "50"})]
    pid = client.create_pipeline(READ)["id"]
    run_id = client.trigger(pid)["id"]
    deadline = time.monotonic() + 10
    while not any("retry in 50.0 s" in x["message"] for x in client.logs(run_id)["logs"]):
        assert time.monotonic() < deadline, client.logs(run_id)
        time.sleep(0.05)
    started = time.monotonic()
    client.cancel(run_id)
    done = client.wait(run_id, timeout=10)
    assert done["status"] == "cancelled"
    assert time.monotonic() - started < 3
    assert stage(done, "items")["status"] == "cancelled"


def test_a_stage_timeout_ends_a_retry_after_wait(env):
    rt, client, raw, api = env
    put_connection(raw, "shop", {"base_url": f"{api.base}/v1", "auth": "bearer"},
                   {"token": TOKEN})  # fmt: skip
    api.faults[("/v1/items", "start")] = [(429, {"Retry-After": "50"})]
    head = "  - id: items\n    type: input\n"
    timed = READ.replace(head, head + "    timeout: 1\n")
    started = time.monotonic()
    done, lines = run(client, timed)
    assert time.monotonic() - started < 5
    assert done["status"] == "failed"
    items = stage(done, "items")
    assert items["error_type"] == "StageTimeout" and "timed out after 1 s" in items["error"]
    assert "GET /v1/items page 1: 429, retry in 50.0 s (attempt 2 of 5)" in lines
    assert stage(done, "people")["status"] == "completed"


def test_retry_after_reads_seconds_and_http_dates_and_is_capped():
    from email.utils import format_datetime

    now = 1_800_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    assert retry_after(when, now=now) == pytest.approx(7)
    assert retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now=now) == 0  # in the past: at once
    assert retry_after("2") == 2 and retry_after(" 0.5 ") == 0.5
    assert retry_after("3600") == 60  # capped
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("") is None
    for n in range(1, 8):
        delay = 0.5 * 2 ** (n - 1)
        assert min(delay, 60) <= backoff(n) <= min(delay * 1.5, 60)
