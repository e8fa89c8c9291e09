"""Limits against hostile input on a real `flexiroaster serve`: oversize bodies get a 413 before
they are read, huge or alias-bomb YAML a quick 422 without eating memory, run parameters reach
SQL as bound values, and the token and secrets appear in no log, file or API answer."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

pytestmark = pytest.mark.slow
API_TOKEN = "lim-api-token-Q3x8Vb1N"
AIRFLOW_SECRET = "lim-airflow-secret-Z7k2Mw4R"
HOOK_SECRET = "lim-hook-secret-H5t9Pc6D"
VAR_SECRET = "lim-variable-secret-J1r4Ye8S"
SECRETS = {"API token": API_TOKEN, "Airflow secret": AIRFLOW_SECRET,
           "webhook schedule secret": HOOK_SECRET, "secret variable": VAR_SECRET}  # fmt: skip
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
YAML = {"content-type": "application/yaml"}
ERROR_KEYS = {"error", "detail", "timestamp"}
LIMIT = 1_000_000  # Settings.max_body_bytes' default
FIGURES: dict[str, object] = {}


class Serve:
    """`flexiroaster serve` as a child process, its stdout and stderr in files."""

    def __init__(self, data: Path, logs: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = logs / "serve.out", logs / "serve.err"
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEXIROASTER_")}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flexiroaster", "serve", "--port", str(self.port)],
                env=base | {"FLEXIROASTER_DATA_DIR": str(data)} | env, stdout=out, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.err.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve did not answer within 60 s"
            time.sleep(0.1)

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak) of the runtime process, in kB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    data = root / "data"
    server = Serve(data, root, FLEXIROASTER_API_TOKEN=API_TOKEN,
                   FLEXIROASTER_AIRFLOW_SECRET=AIRFLOW_SECRET, FLEXIROASTER_MAX_WORKERS="2")  # fmt: skip
    server.data = data
    try:
        yield server
    finally:
        server.stop()
        if FIGURES:
            print("limits figures:", json.dumps(FIGURES))
            if out := os.environ.get("FLEXIROASTER_FUZZ_STATS"):
                with open(out, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"target": "limits", **FIGURES}) + "\n")


def refused(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    return body["detail"]


def pipelines(url: str) -> int:
    return httpx.get(f"{url}/api/v1/pipelines", timeout=30).json()["total"]


# --- oversize bodies ------------------------------------------------------------------------


def test_oversize_bodies_answer_413_before_they_are_read(serve):
    url = serve.url
    big = b"x" * (LIMIT + 1)
    targets = [
        ("/api/v1/pipelines", AUTH | YAML),
        ("/api/v1/pipelines/validate", YAML),
        ("/api/v1/executions", AUTH),
        ("/api/v1/query", AUTH),
        ("/api/v1/schedules", AUTH),
        ("/api/v1/hooks/anything", {"X-Webhook-Secret": "x"}),
        ("/api/v1/airflow/callback", {"X-Airflow-Secret": AIRFLOW_SECRET}),
        ("/api/v1/airflow/trigger", {}),
    ]
    before = pipelines(url)
    slowest = 0.0
    for path, headers in targets:
        # With a Content-Length: refused from the header alone.
        t0 = time.perf_counter()
        detail = refused(httpx.post(url + path, content=big, headers=headers, timeout=30), 413)
        slowest = max(slowest, time.perf_counter() - t0)
        assert f"over {LIMIT} bytes" in detail
        # Chunked, without a Content-Length: refused once the count passes the limit.
        chunks = (b"y" * 65536 for _ in range(40))  # 2.6 MB
        detail = refused(httpx.post(url + path, content=chunks, headers=headers, timeout=30), 413)
        assert f"over {LIMIT} bytes" in detail
    # Without a token, a mutating endpoint still answers 413 for a body it never read.
    refused(httpx.post(f"{url}/api/v1/pipelines", content=big, headers=YAML, timeout=30), 413)
    assert pipelines(url) == before
    FIGURES["oversize_413_slowest_s"] = round(slowest, 3)


# --- huge YAML ------------------------------------------------------------------------------

BOMB = """name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
stages: *i
"""  # 9^9 = 387 million "lol"s once expanded


def _stage_bomb() -> str:
    """Aliases of stages: a handful of lines that stand for 4^12 = 16.7 million stages."""
    lines = ["name: stage-bomb", "s0: &s0 [{id: a, type: sql, config: {query: select 1}}]"]
    for k in range(1, 13):
        lines.append(f"s{k}: &s{k} [*s{k - 1}, *s{k - 1}, *s{k - 1}, *s{k - 1}]")
    return "\n".join(lines + ["stages: *s12", ""])


def _merge_bomb() -> str:
    """Merge keys of merge keys (`<<: [*m, *m]`) twenty deep."""
    lines = ["name: merge-bomb", "m0: &m0 {a: 1}"]
    for k in range(1, 21):
        lines.append(f"m{k}: &m{k} {{<<: [*m{k - 1}, *m{k - 1}], k{k}: 1}}")
    lines.append("stages: [{id: a, type: sql, config: {query: select 1}, <<: *m20}]")
    return "\n".join(lines + [""])


def test_huge_and_alias_bomb_yaml_is_refused_quickly_without_eating_memory(serve):
    url = serve.url
    many = "name: many\nstages:\n" + "".join(
        f"  - {{id: s{i}, type: sql, config: {{query: 'select {i}'}}}}\n" for i in range(15_000)
    )
    assert len(many.encode()) < LIMIT  # under the body limit: the spec must refuse it itself
    cases = {
        "billion laughs": (BOMB, "aliases repeat more than"),
        "stage alias bomb": (_stage_bomb(), "aliases repeat more than"),
        "merge-key bomb": (_merge_bomb(), "aliases repeat more than"),
        "15,000 stages": (many, "15000 stages; a pipeline has at most 1000"),
        "nested 50,000 deep": ("name: deep\nstages: " + "[" * 50_000 + "]" * 50_000, "nested"),
        "1.2 MB document": ("name: big\ndescription: " + "z" * 1_200_000 + "\nstages: []\n", None),
    }
    before = pipelines(url)
    for name, (text, why) in cases.items():
        mem0 = serve.memory()
        for path, headers in (("/api/v1/pipelines", AUTH | YAML), ("/api/v1/pipelines/validate", YAML)):
            t0 = time.perf_counter()
            resp = httpx.post(url + path, content=text.encode(), headers=headers, timeout=120)
            took = time.perf_counter() - t0
            if why is None:
                refused(resp, 413)
            elif path.endswith("/validate"):
                assert resp.status_code == 200 and resp.json()["valid"] is False, resp.text[:300]
                assert why in " ".join(resp.json()["errors"]), resp.json()
            else:
                assert why in refused(resp, 422)
            mem1 = serve.memory()
            grew = (mem1["VmHWM"] - mem0["VmHWM"]) / 1024
            FIGURES[f"{name} {path.rsplit('/', 1)[-1]}"] = {
                "status": resp.status_code, "seconds": round(took, 2), "peak_rss_growth_mb": round(grew, 1),
                "rss_mb": round(mem1["VmRSS"] / 1024, 1),
            }  # fmt: skip
            # Bounded: the peak grows by little (expanded, the billion laughs is many GB),
            # and the answer comes in seconds (15,000 stages are 1 MB of YAML to parse).
            assert grew < 150, (name, mem0, mem1)
            assert took < (30 if name == "15,000 stages" else 5), (name, took)
    assert pipelines(url) == before
    assert httpx.get(f"{url}/api/v1/health", timeout=10).status_code == 200


# --- SQL in parameters ----------------------------------------------------------------------

VICTIM = """
name: victim
stages:
  - {id: rows, type: input, config: {data: [{id: 1, name: keep}, {id: 2, name: me}]}}
  - {id: save, type: output, dependencies: [rows], config: {table: victims, mode: replace}}
"""
ECHO = """
name: echo
variables: {x: "", t: victims}
stages:
  - id: said
    type: sql
    config: {query: "select {{ x }} as said, (select count(*) from victims) as n"}
  - id: picked
    type: transform
    dependencies: [said]
    config: {operations: [{filter: "said = {{ x }}"}, {derive: {again: "{{ x }}"}}]}
  - id: check
    type: validation
    dependencies: [picked]
    config: {checks: [{type: expression, expression: "again = {{ x }}"}], on_failure: fail}
  - {id: save, type: output, dependencies: [check], config: {table: echoed, mode: append}}
"""
IDENT = """
name: ident
variables: {t: victims}
stages:
  - {id: read, type: sql, config: {query: "select * from {{ t | ident }}"}}
"""


def _run(url: str, pipeline_id: str, params: dict) -> dict:
    r = httpx.post(f"{url}/api/v1/executions", headers=AUTH, timeout=30,
                   json={"pipeline_id": pipeline_id, "params": params})  # fmt: skip
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        got = httpx.get(f"{url}/api/v1/executions/{run_id}", timeout=30).json()
        if got["status"] in ("completed", "failed", "cancelled"):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def _query(url: str, sql: str) -> list[list]:
    r = httpx.post(f"{url}/api/v1/query", json={"sql": sql}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_run_parameters_reach_sql_as_bound_values(serve):
    url = serve.url
    for text in (VICTIM, ECHO, IDENT):
        assert httpx.post(f"{url}/api/v1/pipelines", content=text, headers=AUTH | YAML,
                          timeout=30).status_code == 201  # fmt: skip
    assert _run(url, "victim", {})["status"] == "completed"
    hostile = [
        "x'; DROP TABLE victims; --",
        "1; DROP TABLE victims",
        "' OR 1=1 --",
        "$$; DROP TABLE victims; $$",
        '"); COPY victims TO \'/tmp/stolen.csv\'; --',
        "\\'; DELETE FROM victims; --",
    ]
    for value in hostile:
        got = _run(url, "echo", {"x": value})
        assert got["status"] == "completed", got
    # Every value arrived as one literal string, and the table it names is untouched.
    assert _query(url, "select said, again, n from echoed order by rowid") == [
        [v, v, 2] for v in hostile
    ]
    assert _query(url, "select id, name from victims order by id") == [[1, "keep"], [2, "me"]]
    assert not Path("/tmp/stolen.csv").exists()
    # An `| ident` placeholder is quoted as one name: no such table, the victim survives.
    got = _run(url, "ident", {"t": 'victims"; DROP TABLE victims; --'})
    assert got["status"] == "failed"
    [stage] = got["stages"]
    assert 'victims"; DROP TABLE victims; --' in stage["error"] and "does not exist" in stage["error"]
    assert _query(url, "select count(*) from victims") == [[2]]


# --- secrets --------------------------------------------------------------------------------


def _sign(raw: bytes) -> str:
    t = int(time.time())
    mac = hmac.new(AIRFLOW_SECRET.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def test_secrets_appear_in_no_log_file_or_api_answer(serve):
    """Run last: it stops the runtime to read everything it wrote."""
    url = serve.url
    answers: list[str] = []

    def keep(resp: httpx.Response) -> None:
        resp.read()
        answers.append(resp.text)

    with httpx.Client(base_url=url, timeout=30, event_hooks={"response": [keep]}) as c:
        assert c.post("/api/v1/pipelines", content=VICTIM.replace("victim", "leaky"),
                      headers=AUTH | YAML).status_code in (201, 409)  # fmt: skip
        # Wrong credentials of every kind: the answers and logs must not echo the right ones.
        for wrong in ("Bearer nope", f"Bearer {API_TOKEN}x", API_TOKEN, f"Bearer {API_TOKEN[:-1]}"):
            assert c.post("/api/v1/executions", json={"pipeline_id": "leaky"},
                          headers={"Authorization": wrong}).status_code == 401  # fmt: skip
        created = c.post("/api/v1/schedules", headers=AUTH, json={
            "name": "leak hook", "pipeline_id": "leaky", "type": "webhook",
            "expression": "leak-in", "secret": HOOK_SECRET})  # fmt: skip
        assert created.status_code == 201, created.text
        answers.pop()  # the one answer that shows a webhook's secret: the create itself
        assert c.post("/api/v1/hooks/leak-in", json={}, headers={"X-Webhook-Secret": HOOK_SECRET + "x"}).status_code == 401
        fired = c.post("/api/v1/hooks/leak-in", json={}, headers={"X-Webhook-Secret": HOOK_SECRET})
        assert fired.status_code == 202, fired.text
        assert c.put("/api/v1/variables/LEAK_KEY", headers=AUTH,
                     json={"value": VAR_SECRET, "secret": True}).status_code == 200  # fmt: skip
        body = json.dumps({"pipeline_id": "leaky", "dag_id": "d", "dag_run_id": "r1", "task_id": "t"})
        assert c.post("/api/v1/airflow/trigger", content=body,
                      headers={"X-Airflow-Secret": AIRFLOW_SECRET[:-1]}).status_code == 401  # fmt: skip
        sig = {"X-Airflow-Signature": _sign(body.encode()), "content-type": "application/json"}
        assert c.post("/api/v1/airflow/trigger", content=body, headers=sig).status_code == 202
        assert c.post("/api/v1/airflow/trigger", content=body, headers=sig).status_code == 401  # replay
        # A failing run whose SQL names the secret variable: its error and logs are recorded.
        failing = """
name: leak-sql
stages:
  - {id: s, type: sql, config: {query: "select error('boom ' || {{ secrets.LEAK_KEY }})"}}
"""
        assert c.post("/api/v1/pipelines", content=failing, headers=AUTH | YAML).status_code == 201
        assert _run(url, "leak-sql", {})["status"] == "failed"
        # Every GET endpoint, path parameters filled with real records.
        ids = {
            "pipeline_id": "leak-sql", "schedule_id": created.json()["id"], "key": "LEAK_KEY",
            "execution_id": c.get("/api/v1/executions", params={"limit": 1}).json()["executions"][0]["id"],
        }  # fmt: skip
        paths = [p for p, item in c.get("/openapi.json").json()["paths"].items() if "get" in item]
        for path in paths:
            filled = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "none"), path)
            c.get(filled, headers=AUTH)
            c.get(filled)
        FIGURES["secret_search_get_paths"] = len(paths)
    serve.stop()
    texts = {"stdout": serve.out.read_text(), "stderr": serve.err.read_text()}
    assert "FlexiRoaster runtime (pid" in texts["stdout"]  # the search reads the real output
    for f in serve.data.rglob("*"):
        if f.is_file() and not f.name.endswith((".duckdb", ".wal", ".key")):
            texts[str(f)] = f.read_bytes().decode("utf-8", "replace")
    texts |= {f"answer {i}": a for i, a in enumerate(answers)}
    assert any("leak-sql" in t for t in answers) and any("LEAK_KEY" in t for t in answers)
    for what, secret in SECRETS.items():
        found = [where for where, text in texts.items() if secret in text]
        assert not found, f"the {what} appears in {found}"
    FIGURES["secret_search_texts"] = len(texts)
