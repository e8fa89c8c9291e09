"""Schemathesis against the app's own OpenAPI schema: no 500s, every answer as documented.

The app runs under uvicorn on a loopback port over a real store file with the token on; a
seeded pipeline and finished runs give the GET endpoints something real to return.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from flexiroaster.airflow_link import TriggerIn
from flexiroaster.api import create_app
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings
from flexiroaster.states import RunStatus

from .conftest import serving

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AIRFLOW_SECRET = "schema-test-airflow-secret"
AIRFLOW = {"X-Airflow-Secret": AIRFLOW_SECRET}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
    ignored_auth,
]

SEED = """
name: seeded
description: gives the GET endpoints something real
variables: {n: 3}
stages:
  - {id: nums, type: sql, config: {query: "select range as x from range({{ n }})"}}
  - {id: save, type: output, dependencies: [nums], config: {table: seeded_nums, mode: replace}}
"""
SEED_FAILING = """
name: seeded-failing
stages:
  - {id: ok, type: sql, config: {query: "select 1 as x"}}
  - {id: bad, type: sql, dependencies: [ok], config: {query: "select error('on purpose') as x"}}
"""


# A body over the size limit is refused before it is read, with 413: a rejection too.
REJECTIONS = {
    "negative_data_rejection": {
        "expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
        ]
    }
}  # fmt: skip
CONFIG = schemathesis.Config.from_dict(
    {"headers": AUTH, "generation": {"max-examples": 40}, "seed": 20261129, "checks": REJECTIONS}
)
# The app's own schema; building the app opens nothing (the store opens in its lifespan).
OPENAPI = create_app(settings=load_settings(data_dir="never-opened")).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("schema") / "data"
    rt = Runtime(
        load_settings(
            data_dir=data,
            api_token=TOKEN,
            airflow_secret=AIRFLOW_SECRET,
            max_workers=2,
            log_flush_interval=0.05,
            query_timeout=2,
            query_max_rows=100,
        )
    )
    try:
        rt.alerts.start()  # the failed run opens a real alert
        for text in (SEED, SEED_FAILING):
            loaded = rt.save_pipeline(text)
            run = rt.trigger(loaded.record.id)
            assert rt.engine.wait(run.id, timeout=20)
            assert rt.alerts.judged(run.id, timeout=20)
        rt.runs = {str(r.status): r.id for r in rt.store.list_executions()[0]}
        assert set(rt.runs) == {RunStatus.COMPLETED, RunStatus.FAILED}
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def base_url(runtime):
    # A real socket: schemathesis' auth probes (ignored_auth) send their own requests.
    with serving(create_app(runtime=runtime)) as url:
        yield url


def test_the_schema_under_test_is_the_one_the_app_serves(base_url):
    served = httpx.get(f"{base_url}/openapi.json").json()
    assert served == OPENAPI
    # Every error a route documents has the one error shape.
    for path, item in served["paths"].items():
        for method, op in item.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")) and status != "503":
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, path, status)


HOOK_SECRET = "seeded-hook-secret-0123456789"


def test_real_records_conform(runtime, base_url):
    """Generated ids rarely hit a record: call every operation once on the seeded ones."""
    done, failed = runtime.runs["completed"], runtime.runs["failed"]
    new = SEED.replace("name: seeded", "name: brand-new")
    doc = yaml.safe_load(new)  # schemathesis writes YAML bodies from data
    # An insight's id names its subject: the failure risk of seeded's next run.
    risk = hashlib.sha1(b"failure_prediction|seeded|None|next").hexdigest()[:16]
    [alert] = [a.id for a in runtime.alerts.alerts(pipeline_id="seeded-failing")[0]]
    # A run Airflow started, for its callback (the trigger call below starts another).
    lineage = {"pipeline_id": "seeded", "dag_id": "etl", "dag_run_id": "sched__1", "task_id": "run"}
    airflow_run = runtime.airflow.trigger(TriggerIn(**lineage))[0].id
    calls = [
        ("GET", "/api/v1/health", {}, 200),
        ("GET", "/api/v1/", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("GET", "/api/v1/metrics/system", {}, 200),
        ("GET", "/api/v1/metrics/pipelines/{pipeline_id}", {"path_parameters": {"pipeline_id": "seeded"}}, 200),
        ("GET", "/api/v1/pipelines", {"query": {"skip": 1, "limit": 1}}, 200),
        ("GET", "/api/v1/pipelines/{pipeline_id}", {"path_parameters": {"pipeline_id": "seeded"}}, 200),
        ("GET", "/api/v1/pipelines/{pipeline_id}/versions", {"path_parameters": {"pipeline_id": "seeded"}}, 200),
        ("POST", "/api/v1/pipelines/validate", {"body": yaml.safe_load(SEED), "media_type": "application/yaml"}, 200),
        ("POST", "/api/v1/pipelines", {"body": {"yaml": new}, "media_type": "application/json"}, 201),
        ("PUT", "/api/v1/pipelines/{pipeline_id}", {"path_parameters": {"pipeline_id": "brand-new"}, "body": doc, "media_type": "application/yaml"}, 200),
        ("DELETE", "/api/v1/pipelines/{pipeline_id}", {"path_parameters": {"pipeline_id": "brand-new"}}, 204),
        ("GET", "/api/v1/executions", {"query": {"pipeline_id": "seeded", "status": "completed", "since": "2000-01-01T00:00:00Z"}}, 200),
        ("GET", "/api/v1/executions/{execution_id}", {"path_parameters": {"execution_id": done}}, 200),
        ("GET", "/api/v1/executions/{execution_id}", {"path_parameters": {"execution_id": failed}}, 200),
        ("GET", "/api/v1/executions/{execution_id}/logs", {"path_parameters": {"execution_id": failed}, "query": {"level": "ERROR"}}, 200),
        ("POST", "/api/v1/executions/{execution_id}/cancel", {"path_parameters": {"execution_id": done}}, 409),
        ("DELETE", "/api/v1/executions/{execution_id}", {"path_parameters": {"execution_id": done}}, 409),
        ("POST", "/api/v1/executions/{execution_id}/retry", {"path_parameters": {"execution_id": failed}}, 202),
        ("POST", "/api/v1/executions", {"body": {"pipeline_id": "seeded", "params": {"n": 2}}, "media_type": "application/json"}, 202),
        ("POST", "/api/v1/query", {"body": {"sql": "select * from seeded_nums order by x"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/query", {"body": {"sql": "select 42 as x", "format": "arrow"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/query", {"body": {"sql": "drop table seeded_nums"}, "media_type": "application/json"}, 400),
        ("POST", "/api/v1/schedules", {"body": {"name": "nightly", "pipeline_id": "seeded", "type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin"}, "media_type": "application/json"}, 201),
        ("POST", "/api/v1/schedules", {"body": {"name": "hook", "pipeline_id": "seeded", "type": "webhook", "expression": "seeded-in", "secret": HOOK_SECRET, "overlap": "queue"}, "media_type": "application/json"}, 201),
        ("GET", "/api/v1/schedules", {"query": {"pipeline_id": "seeded"}}, 200),
        ("PUT", "/api/v1/variables/{key}", {"path_parameters": {"key": "API_TOKEN"}, "body": {"value": "s3cr3t-value", "secret": True, "description": "the vendor's token"}, "media_type": "application/json"}, 200),
        ("PUT", "/api/v1/variables/{key}", {"path_parameters": {"key": "REGION"}, "body": {"value": "eu-west-1", "secret": False}, "media_type": "application/json"}, 200),
        ("GET", "/api/v1/variables", {}, 200),
        ("GET", "/api/v1/variables/{key}", {"path_parameters": {"key": "REGION"}}, 200),
        ("DELETE", "/api/v1/variables/{key}", {"path_parameters": {"key": "REGION"}}, 204),
        ("PUT", "/api/v1/connections/{name}", {"path_parameters": {"name": "vendor"}, "body": {"type": "http", "description": "the vendor's API", "config": {"base_url": "http://127.0.0.1:9/", "auth": "bearer"}, "secrets": {"token": "s3cr3t-token"}}, "media_type": "application/json"}, 201),
        ("PUT", "/api/v1/connections/{name}", {"path_parameters": {"name": "vendor"}, "body": {"type": "http", "config": {"base_url": "http://127.0.0.1:9/", "auth": "bearer", "timeout": 2}}, "media_type": "application/json"}, 200),
        ("GET", "/api/v1/connections", {}, 200),
        ("GET", "/api/v1/connections/{name}", {"path_parameters": {"name": "vendor"}}, 200),
        ("POST", "/api/v1/connections/{name}/test", {"path_parameters": {"name": "vendor"}}, 200),
        ("POST", "/api/v1/connections/test", {"body": {"type": "smtp", "config": {"host": "127.0.0.1", "port": 9, "sender": "a@example.com", "timeout": 2}}, "media_type": "application/json"}, 200),
        ("DELETE", "/api/v1/connections/{name}", {"path_parameters": {"name": "vendor"}}, 204),
        ("GET", "/api/v1/schedules/{schedule_id}", {"path_parameters": {"schedule_id": "nightly"}}, 200),
        ("PUT", "/api/v1/schedules/{schedule_id}", {"path_parameters": {"schedule_id": "nightly"}, "body": {"name": "nightly", "pipeline_id": "seeded", "type": "interval", "expression": "every 6 hours", "params": {"n": 3}}, "media_type": "application/json"}, 200),
        ("GET", "/api/v1/schedules/{schedule_id}/preview", {"path_parameters": {"schedule_id": "nightly"}, "query": {"n": 3}}, 200),
        ("POST", "/api/v1/schedules/preview", {"body": {"name": "x", "pipeline_id": "none-needed", "type": "cron", "expression": "*/5 * * * *"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/schedules/{schedule_id}/pause", {"path_parameters": {"schedule_id": "nightly"}}, 200),
        ("POST", "/api/v1/schedules/{schedule_id}/resume", {"path_parameters": {"schedule_id": "nightly"}}, 200),
        ("POST", "/api/v1/schedules/{schedule_id}/run-now", {"path_parameters": {"schedule_id": "nightly"}}, 202),
        ("POST", "/api/v1/hooks/{path}", {"path_parameters": {"path": "seeded-in"}, "headers": {"X-Webhook-Secret": HOOK_SECRET}, "body": {"n": 4}, "media_type": "application/json"}, 202),
        ("DELETE", "/api/v1/schedules/{schedule_id}", {"path_parameters": {"schedule_id": "hook"}}, 204),
        ("GET", "/api/v1/logs", {"query": {"level": "INFO", "pipeline_id": "seeded", "q": "run", "limit": 5}}, 200),
        ("GET", "/api/v1/tables", {}, 200),
        ("GET", "/api/v1/metrics/timeline", {"query": {"hours": 24, "bucket": "hour"}}, 200),
        ("GET", "/api/v1/settings", {}, 200),
        ("POST", "/api/v1/insights/recompute", {}, 200),
        ("GET", "/api/v1/insights", {"query": {"pipeline_id": "seeded", "type": "failure_prediction"}}, 200),
        ("GET", "/api/v1/insights/{insight_id}", {"path_parameters": {"insight_id": risk}}, 200),
        ("POST", "/api/v1/insights/{insight_id}/snooze", {"path_parameters": {"insight_id": risk}, "body": {"by": "ann", "reason": "later", "hours": 1}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/insights/{insight_id}/dismiss", {"path_parameters": {"insight_id": risk}, "body": {"by": "ann", "reason": "noise"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/insights/{insight_id}/reject", {"path_parameters": {"insight_id": risk}, "body": {"by": "ann", "reason": "decided"}, "media_type": "application/json"}, 409),
        ("POST", "/api/v1/insights/{insight_id}/approve", {"path_parameters": {"insight_id": risk}, "body": {"by": "ann"}, "media_type": "application/json"}, 409),
        ("GET", "/api/v1/insights/policy", {}, 200),
        ("PUT", "/api/v1/insights/policy", {"body": {"by": "ann", "high": 0.9}, "media_type": "application/json"}, 200),
        ("PUT", "/api/v1/insights/policy/{pipeline_id}", {"path_parameters": {"pipeline_id": "seeded"}, "body": {"by": "ann", "auto_apply": True}, "media_type": "application/json"}, 200),
        ("DELETE", "/api/v1/insights/policy/{pipeline_id}", {"path_parameters": {"pipeline_id": "seeded"}, "query": {"by": "ann"}}, 200),
        ("POST", "/api/v1/executions/{execution_id}/release", {"path_parameters": {"execution_id": done}, "body": {"by": "ann"}, "media_type": "application/json"}, 409),
        ("GET", "/api/v1/audit", {"query": {"target_type": "schedule", "limit": 10}}, 200),
        ("GET", "/api/v1/alerts", {"query": {"status": "open", "pipeline_id": "seeded-failing", "severity": "high", "limit": 5}}, 200),
        ("GET", "/api/v1/alerts/{alert_id}", {"path_parameters": {"alert_id": alert}}, 200),
        ("POST", "/api/v1/alerts/{alert_id}/acknowledge", {"path_parameters": {"alert_id": alert}, "body": {"by": "ann", "note": "on it"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/alerts/{alert_id}/resolve", {"path_parameters": {"alert_id": alert}, "body": {"by": "ann"}, "media_type": "application/json"}, 200),
        ("GET", "/api/v1/alert-rules", {}, 200),
        ("POST", "/api/v1/alert-rules", {"body": {"name": "seeded slow", "kind": "duration_limit", "pipeline_id": "seeded", "threshold": 60, "severity": "low", "webhooks": ["https://hooks.example.com/flexi"]}, "media_type": "application/json"}, 201),
        ("GET", "/api/v1/alert-rules/{rule_id}", {"path_parameters": {"rule_id": "seeded-slow"}}, 200),
        ("PUT", "/api/v1/alert-rules/{rule_id}", {"path_parameters": {"rule_id": "seeded-slow"}, "body": {"name": "seeded slow", "kind": "duration_limit", "pipeline_id": "seeded", "threshold": 120}, "media_type": "application/json"}, 200),
        ("DELETE", "/api/v1/alert-rules/{rule_id}", {"path_parameters": {"rule_id": "seeded-slow"}}, 204),
        ("POST", "/api/v1/airflow/trigger", {"headers": AIRFLOW, "body": {**lineage, "dag_run_id": "manual__2", "run_conf": {"n": 2}}, "media_type": "application/json"}, 202),
        ("POST", "/api/v1/airflow/callback", {"headers": AIRFLOW, "body": {"execution_id": airflow_run, "dag_id": "etl", "dag_run_id": "sched__1", "task_id": "run", "callback_type": "on_execute_callback", "start_date": "2026-11-29T09:00:00Z"}, "media_type": "application/json"}, 200),
        ("POST", "/api/v1/airflow/stage", {"headers": AIRFLOW, "body": {"execution_id": airflow_run, "dag_id": "etl", "dag_run_id": "sched__1", "task_id": "nums", "stage_id": "nums"}, "media_type": "application/json"}, 409),
        ("GET", "/api/v1/airflow/callbacks/{execution_id}", {"path_parameters": {"execution_id": airflow_run}}, 200),
    ]  # fmt: skip
    covered = set()
    for method, path, parts, status in calls:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)
        assert response.status_code == status, (method, path, response.text)
        covered.add((method, path))
    # Every documented operation was called at least once with real data.
    assert covered == {(m.upper(), p) for p, item in OPENAPI["paths"].items() for m in item}
    for run_id in runtime.active_runs():
        assert runtime.engine.wait(run_id, timeout=20)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case, base_url):
    checks = CHECKS
    if case.operation.path.endswith("/validate") and case.media_type == "application/yaml":
        # "Negative" YAML (a list or a number where the schema says mapping) is still YAML text:
        # judging a document that is not a pipeline is what /validate is for (200, valid: false).
        checks = [c for c in CHECKS if c is not negative_data_rejection]
    # The Airflow endpoints' bodies are read only after their secret checks out.
    headers = AUTH | (AIRFLOW if case.operation.path.startswith("/api/v1/airflow/") else {})
    case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=30)


# --- a real `flexiroaster serve` with FLEXIROASTER_API_TOKEN in its environment -------------

ENV_TOKEN = "env-token-6f1d0c-planted"
ENV_AUTH = {"Authorization": f"Bearer {ENV_TOKEN}"}
MUTATING = ("POST", "PUT", "DELETE")
SMALL = {"generation": {"max-examples": 6}, "seed": 20261129, "checks": REJECTIONS}
# Every operation the bearer token guards (the schema says so: `security: HTTPBearer`).
SECURED = {
    (m.upper(), p) for p, item in OPENAPI["paths"].items() for m, op in item.items()
    if op.get("security") == [{"HTTPBearer": []}]
}  # fmt: skip
no_token = schemathesis.openapi.from_dict(
    OPENAPI, config=schemathesis.Config.from_dict(SMALL)
).include(func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in SECURED)
env_token = schemathesis.openapi.from_dict(
    OPENAPI, config=schemathesis.Config.from_dict({"headers": ENV_AUTH} | SMALL)
)
REFUSED: list[tuple[str, str, int]] = []
CONFORMED: dict[int, int] = {}  # status -> calls of the run with the token


def counts(url: str) -> dict[str, int]:
    """What a mutating call could have added or removed, as the API reports it."""
    out = {}
    for path in ("pipelines", "executions", "schedules", "variables", "alert-rules",
                 "connections", "alerts", "audit"):  # fmt: skip
        body = httpx.get(f"{url}/api/v1/{path}", params={"limit": 1}, timeout=30).json()
        out[path] = body.get("total", len(next(v for v in body.values() if isinstance(v, list))))
    return out


@pytest.fixture(scope="module")
def env_served(tmp_path_factory):
    """`flexiroaster serve` whose token and Airflow secret come from its environment, seeded
    over HTTP; yields (base URL, counts after seeding)."""
    from .test_serve import serve_process

    data = tmp_path_factory.mktemp("schema-env") / "data"
    env = {"FLEXIROASTER_API_TOKEN": ENV_TOKEN, "FLEXIROASTER_AIRFLOW_SECRET": AIRFLOW_SECRET,
           "FLEXIROASTER_QUERY_TIMEOUT": "2", "FLEXIROASTER_MAX_WORKERS": "2"}  # fmt: skip
    with serve_process(data, **env) as (_, url):
        for text in (SEED, SEED_FAILING):
            r = httpx.post(f"{url}/api/v1/pipelines", content=text, timeout=30,
                           headers={"content-type": "application/yaml"} | ENV_AUTH)  # fmt: skip
            assert r.status_code == 201, r.text
        yield url, counts(url)


def test_the_token_guards_every_mutating_operation():
    mutating = {(m.upper(), p) for p, item in OPENAPI["paths"].items() for m in item
                if m.upper() in MUTATING}  # fmt: skip
    # Exempt: checks that change nothing, and the endpoints with their own secrets.
    exempt = {("POST", "/api/v1/pipelines/validate"), ("POST", "/api/v1/schedules/preview"),
              ("POST", "/api/v1/hooks/{path}"), ("POST", "/api/v1/connections/test")}  # fmt: skip
    exempt |= {(m, p) for m, p in mutating if p.startswith("/api/v1/airflow/")}
    assert mutating - exempt <= SECURED and len(SECURED) >= 30


@no_token.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_without_the_token_every_mutating_operation_answers_401(case, env_served):
    url, _ = env_served
    # Schemathesis fills the bearer scheme with tokens of its own (never ours); and without.
    headers = dict(case.headers or {})
    assert ENV_TOKEN not in str(headers)
    case.headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    for response in (case.call(base_url=url, timeout=30),
                     case.call(base_url=url, headers=headers, timeout=30)):  # fmt: skip
        body = response.json()
        assert set(body) == {"error", "detail", "timestamp"}, body
        assert ENV_TOKEN not in response.text
        if case.method.upper() != case.operation.method.upper():
            # The coverage phase's unexpected methods: no such operation (404 from the
            # catch-all of the original /api paths, else 405).
            assert response.status_code in (404, 405), (case.method, case.operation.label)
            continue
        REFUSED.append((case.operation.method.upper(), case.operation.path, response.status_code))
        assert response.status_code == 401, (case.operation.label, response.text)
        assert body["error"] == "unauthorized"


def test_refused_calls_changed_nothing(env_served):
    url, before = env_served
    assert {(m, p) for m, p, _ in REFUSED} == SECURED  # every guarded operation was tried
    print(f"no token: {len(REFUSED)} calls over {len(SECURED)} operations, all 401")
    assert counts(url) == before


@env_token.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_with_the_env_token_every_operation_conforms(case, env_served):
    url, _ = env_served
    checks = CHECKS
    if case.operation.path.endswith("/validate") and case.media_type == "application/yaml":
        checks = [c for c in CHECKS if c is not negative_data_rejection]
    headers = ENV_AUTH | (AIRFLOW if case.operation.path.startswith("/api/v1/airflow/") else {})
    response = case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=30)
    CONFORMED[response.status_code] = CONFORMED.get(response.status_code, 0) + 1
    assert response.status_code < 500
    assert ENV_TOKEN not in response.text and AIRFLOW_SECRET not in response.text


def test_the_env_token_run_covered_every_operation():
    total = sum(CONFORMED.values())
    print(f"with the env token: {total} calls over {len(OPENAPI['paths'])} paths, by status"
          f" {dict(sorted(CONFORMED.items()))}")  # fmt: skip
    assert total >= 2 * len(SECURED) and not any(s >= 500 for s in CONFORMED)
