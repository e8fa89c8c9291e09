"""Hypothesis fuzzing of the pipeline spec, the pipeline endpoints and the Airflow callbacks:
arbitrary text, random YAML structures and near-valid specs with mutated fields give a Pipeline
or a SpecError naming a line or field; over HTTP never a 500, bad bodies a 4xx in the one error
shape, and a refused callback changes nothing. Each target runs a bounded number of cases."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import time

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexiroaster.airflow_link import TriggerIn
from flexiroaster.api import create_app
from flexiroaster.errors import SpecError
from flexiroaster.runtime import Runtime
from flexiroaster.settings import load_settings
from flexiroaster.spec import Pipeline, load_pipeline_text

from .conftest import serving

pytestmark = pytest.mark.slow
ERROR_KEYS = {"error", "detail", "timestamp"}
SECRET = "fuzz-airflow-secret-8d2c"
# Cases per target: sized so that each test takes about 20 s or less on a busy CI machine.
CASES = {
    "spec_text": 1500,
    "spec_structures": 600,
    "spec_mutations": 600,
    "api_pipelines": 250,
    "airflow_callbacks": 250,
    "airflow_triggers": 150,
}
RAN: dict[str, int] = dict.fromkeys(CASES, 0)


def fuzz(target: str) -> settings:
    """Bounded cases, no deadline (a busy machine is slow), no example database."""
    return settings(
        max_examples=CASES[target], deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip


def report(target: str) -> None:
    """Print the cases a target ran (and append them to $FLEXIROASTER_FUZZ_STATS if set)."""
    print(f"fuzz {target}: {RAN[target]} cases")
    if out := os.environ.get("FLEXIROASTER_FUZZ_STATS"):
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"target": target, "cases": RAN[target]}) + "\n")


# --- the spec --------------------------------------------------------------------------------

VALID = {
    "name": "fuzzed",
    "description": "a pipeline to mutate",
    "variables": {"n": 3, "table": "fz_out"},
    "schedule": {"type": "cron", "expression": "0 2 * * *"},
    "stages": [
        {"id": "nums", "type": "sql", "config": {"query": "select range as x from range({{ n }})"}},
        {"id": "rows", "type": "input", "config": {"data": [{"a": 1}, {"a": 2}]}},
        {"id": "file", "type": "input", "config": {"source": "in/*.csv", "format": "csv"}},
        {
            "id": "shape", "type": "transform", "dependencies": ["nums"],
            "config": {"operations": [{"rename": {"x": "y"}}, {"filter": "y > 0"}]},
        },
        {
            "id": "check", "type": "validation", "dependencies": ["shape"],
            "config": {"checks": [{"type": "not_null", "columns": ["y"]},
                                  {"type": "range", "columns": ["y"], "min": 0}],
                       "on_failure": "warn"},
        },
        {
            "id": "save", "type": "output", "dependencies": ["check"],
            "config": {"table": "{{ table }}", "mode": "merge", "keys": ["y"]},
        },
        {"id": "hook", "type": "notify", "dependencies": ["save"],
         "config": {"url": "http://127.0.0.1:9/hook", "body": "done {{ run_id }}"}},
        {"id": "sh", "type": "shell", "config": {"command": ["true"]}, "timeout": 5, "retries": 1},
    ],
}  # fmt: skip
assert isinstance(load_pipeline_text(yaml.safe_dump(VALID), "fuzz.yaml"), Pipeline)

# An error names where: a line of the document, or a field (`stages[2].config.query: ...`).
_LINE = re.compile(r"line \d+")
_FIELD = re.compile(r"(^|\n)\s*(\(document\)|[^\s:]+(\[\d+\])*(\.[^\s:]+)*): ")


def located(exc: SpecError) -> bool:
    text = str(exc)
    return bool(_LINE.search(text) or _FIELD.search(text) or "`name` and `stages`" in text)


def judge(text: str) -> Pipeline | SpecError:
    """load_pipeline_text on `text`: a Pipeline, or a SpecError that says where; anything else
    raised fails the test."""
    try:
        return load_pipeline_text(text, "fuzz.yaml")
    except SpecError as exc:
        assert str(exc).startswith(("fuzz.yaml", "invalid YAML in fuzz.yaml")), str(exc)
        assert located(exc), str(exc)
        return exc


YAMLISH = st.sampled_from(
    list("abc:-[]{},&*!|>'\"#%@`?\n\t ") + ["name: x", "stages:", "  - ", "id: a", "type: sql",
    "config:", "query: q", "&a", "*a", "<<: *a", "!!binary", "!!python/object", "---", "...",
    "\\ud800", "\x00", "\ufeff", "{{ n }}", "2024-13-01", "0x", "1e999", ".nan", "~"]
)  # fmt: skip


@fuzz("spec_text")
@given(st.one_of(st.text(max_size=400), st.lists(YAMLISH, max_size=60).map("".join)))
def test_arbitrary_text_gives_a_pipeline_or_a_located_spec_error(text):
    RAN["spec_text"] += 1
    judge(text)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20), st.dates(), st.sampled_from(["sql", "input", "output", "{{ n }}"]),
)  # fmt: skip
KEYS = st.one_of(
    st.sampled_from(["name", "stages", "id", "type", "config", "query", "dependencies",
                     "operations", "checks", "table", "source", "path", "mode", "keys"]),
    st.text(max_size=10), st.integers(), st.booleans(), st.none(),
)  # fmt: skip
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=40,
)


@fuzz("spec_structures")
@given(STRUCTURES, st.booleans())
def test_random_yaml_structures_give_a_pipeline_or_a_located_spec_error(data, flow):
    RAN["spec_structures"] += 1
    judge(yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True))
    if isinstance(data, dict):  # also as the `stages` of a pipeline, and as one stage
        judge(yaml.safe_dump({"name": "x", "stages": [data]}, allow_unicode=True))
        judge(yaml.safe_dump({"name": "x", "stages": data}, allow_unicode=True))


def _paths(node, here=()):
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, here + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, here + (i,))


PATHS = [p for p in _paths(VALID) if p]


@st.composite
def mutated(draw):
    """VALID with 0-3 fields replaced, deleted or added somewhere, and where it was changed."""
    doc = copy.deepcopy(VALID)
    changed = []
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            parent[key]  # still there after earlier mutations?
        except (KeyError, IndexError, TypeError):
            continue
        how = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if how == "replace":
            parent[key] = draw(STRUCTURES)
        elif how == "delete":
            del parent[key]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(SCALARS)
        elif how == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))  # e.g. a stage id twice
        changed.append(path)
    return doc, changed


@fuzz("spec_mutations")
@given(mutated())
def test_near_valid_specs_with_mutated_fields_name_the_field_and_line(case):
    doc, _ = case
    RAN["spec_mutations"] += 1
    got = judge(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    if isinstance(got, SpecError) and got.details:
        # Field errors of a block-style document carry the field's path and its line.
        for line in got.details:
            if line.startswith("..."):
                continue
            assert ": " in line and _LINE.search(line), line  # `where: what (file line N)`


def test_fuzz_counts_spec():
    """The spec targets ran their bounded number of cases (run after them, in file order)."""
    for target in ("spec_text", "spec_structures", "spec_mutations"):
        report(target)
        # (0 when the target was deselected: `-k` runs of part of the file)
        assert RAN[target] == 0 or RAN[target] >= CASES[target] * 0.9, (target, RAN[target])


# --- over HTTP -------------------------------------------------------------------------------

STAGED = """
name: fz-staged
stages:
  - {id: extract, type: sql, config: {query: "select 1 as x"}}
  - {id: load, type: sql, dependencies: [extract], config: {query: "select x from extract"}}
"""
TRIGGERED = """
name: fz-triggered
stages:
  - {id: one, type: sql, config: {query: "select 1 as x"}}
"""
TABLES = ("pipelines", "pipeline_versions", "executions", "stage_executions", "logs",
          "audit_log", "airflow_callbacks", "schedules")  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(runtime, client, runs): a served runtime with the Airflow secret, a stages-mode run
    waiting for its tasks' callbacks and a finished trigger-mode run."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    rt = Runtime(
        load_settings(data_dir=data, max_workers=2, log_flush_interval=0.05, airflow_secret=SECRET)
    )
    try:
        rt.save_pipeline(STAGED)
        rt.save_pipeline(TRIGGERED)
        runs = {}
        for pid, mode, dag_run in (("fz-staged", "stages", "s1"), ("fz-triggered", "trigger", "t1")):
            lineage = dict(pipeline_id=pid, dag_id="etl", dag_run_id=dag_run, task_id="go")
            runs[mode] = rt.airflow.trigger(TriggerIn(**lineage, mode=mode))[0]
        assert rt.engine.wait(runs["trigger"].id, timeout=20)
        with serving(create_app(runtime=rt)) as url, httpx.Client(base_url=url, timeout=30) as c:
            yield rt, c, runs
    finally:
        rt.close()


def snapshot(rt: Runtime) -> tuple:
    """Everything a request could change: row counts of every table a write touches, and the
    status of every run and stage."""
    rt.store.flush()
    counts = tuple(rt.store.count(t) for t in TABLES)
    runs = sorted((r.id, str(r.status), r.error, r.stages_completed)
                  for r in rt.store.list_executions(limit=1000)[0])  # fmt: skip
    stages = sorted(
        (s.execution_id, s.stage_id, str(s.status), s.attempts, s.rows_out)
        for r in runs for s in rt.store.get_stages(r[0])
    )  # fmt: skip
    return counts, runs, stages


def refused_cleanly(resp: httpx.Response) -> None:
    """A 4xx in the one error shape (never a 500, never a traceback)."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    assert body["detail"] and "Traceback" not in body["detail"]


def sign(raw: bytes, key: str = SECRET, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    return f"t={t},v1={hmac.new(key.encode(), f'{t}.'.encode() + raw, hashlib.sha256).hexdigest()}"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
DOCS = st.one_of(
    mutated().map(lambda case: yaml.safe_dump(case[0], sort_keys=False, allow_unicode=True)),
    STRUCTURES.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=300),
)
BODIES = st.one_of(
    DOCS.map(lambda t: ("application/yaml", t.encode("utf-8", "surrogatepass"))),
    DOCS.map(lambda t: ("application/json", json.dumps({"yaml": t}).encode())),
    mutated().map(lambda case: ("application/json", json.dumps(case[0], default=str).encode())),
    JSON.map(lambda d: ("application/json", json.dumps(d).encode())),
    st.binary(max_size=200).map(lambda b: (None, b)),
    st.tuples(st.sampled_from(["text/plain", "application/xml", "multipart/form-data", ""]),
              st.binary(max_size=100)),
)  # fmt: skip


@fuzz("api_pipelines")
@given(BODIES, st.sampled_from(["/api/v1/pipelines", "/api/v1/pipelines/validate"]))
def test_pipeline_endpoints_answer_every_body_without_a_500(served, body, path):
    rt, c, _ = served
    ctype, raw = body
    RAN["api_pipelines"] += 1
    before = snapshot(rt) if path.endswith("/pipelines") else None
    headers = {"content-type": ctype} if ctype is not None else {}
    resp = c.post(path, content=raw, headers=headers)
    STATUSES[path][resp.status_code] = STATUSES[path].get(resp.status_code, 0) + 1
    if path.endswith("/validate"):
        if resp.status_code == 200:
            got = resp.json()
            assert got["valid"] is (not got["errors"]), got
            assert all(": " in e or "line" in e for e in got["errors"]), got
        else:
            refused_cleanly(resp)
        return
    if resp.status_code == 201:
        assert resp.json()["id"]
        c.delete(f"/api/v1/pipelines/{resp.json()['id']}")
        return
    refused_cleanly(resp)
    assert resp.status_code in (400, 409, 413, 415, 422), resp.text
    assert snapshot(rt) == before  # a refused pipeline is not stored, not even in part


STATUSES: dict[str, dict[int, int]] = {"/api/v1/pipelines": {}, "/api/v1/pipelines/validate": {}}


def _callback_fields(runs) -> dict:
    staged, triggered = runs["stages"], runs["trigger"]
    text = st.text(max_size=30)
    junk = st.none() | st.booleans() | st.floats() | st.lists(st.integers(), max_size=2) | JSON
    states = ["running", "success", "failure", "retry", "cancelled", "skipped",
              "on_execute_callback", "on_success_callback", "on_failure_callback"]  # fmt: skip
    dates = st.datetimes().map(lambda d: d.isoformat() + "Z")
    return {
        "execution_id": st.sampled_from([staged.id, triggered.id, "no-such-run", ""]) | text | junk,
        "dag_id": st.sampled_from(["etl", "other"]) | text | junk,
        "dag_run_id": st.sampled_from(["s1", "t1", "x"]) | text | junk,
        "task_id": st.sampled_from(["go", "extract", "load", "nope"]) | text | junk,
        "try_number": st.integers(-3, 3) | st.integers() | junk,
        "state": st.sampled_from(states) | text | junk,
        "callback_type": st.sampled_from(states) | text | junk,
        "message": text | junk,
        "error": text | junk,
        "start_date": dates | text | junk,
        "end_date": dates | text | junk,
        "rows_in": st.integers(-5, 10) | st.integers() | junk,
        "rows_out": st.integers(-5, 10) | st.integers() | junk,
        "metrics": st.dictionaries(text, JSON, max_size=3) | junk,
        "logs": st.lists(st.lists(text, max_size=3), max_size=3) | junk,
        "unknown": JSON,
    }


@st.composite
def callback_requests(draw, runs):
    """(raw body, headers, authenticated?) for POST /airflow/callback."""
    fields = _callback_fields(runs)
    if draw(st.booleans()):  # near-valid: a real task's callback with 0-2 fields changed
        body = {
            "execution_id": draw(st.sampled_from([runs["stages"].id] * 5 + ["no-such-run"])),
            "dag_id": "etl", "dag_run_id": "s1",
            "task_id": draw(st.sampled_from(["extract", "load", "go"])),
            "state": draw(st.sampled_from(["running", "success", "retry", "failure"])),
            "try_number": draw(st.integers(1, 3)),
        }  # fmt: skip
        for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2)):
            body[key] = draw(fields[key])
    else:
        keys = draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields)))
        body = {k: draw(fields[k]) for k in sorted(keys)}
    raw = draw(st.one_of(
        st.just(json.dumps(body).encode()),
        st.just(json.dumps(body).encode()),
        JSON.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=100),
    ))  # fmt: skip
    auth = draw(st.sampled_from(["secret", "signature", "none", "wrong", "bad-signature", "stale"]))
    headers = {"content-type": "application/json"}
    if auth == "secret":
        headers["X-Airflow-Secret"] = SECRET
    elif auth == "signature":
        headers["X-Airflow-Signature"] = sign(raw)
    elif auth == "wrong":
        headers["X-Airflow-Secret"] = draw(st.text(min_size=1, max_size=40).filter(
            lambda s: s != SECRET and s.isascii() and s.isprintable()))  # fmt: skip
    elif auth == "bad-signature":
        headers["X-Airflow-Signature"] = sign(raw + b"x")
    elif auth == "stale":
        headers["X-Airflow-Signature"] = sign(raw, t=int(time.time()) - 3600)
    return raw, headers, auth in ("secret", "signature")


def test_airflow_callbacks_refuse_bad_payloads_without_a_500_or_a_change(served):
    rt, c, runs = served
    seen: dict[int, int] = {}

    @fuzz("airflow_callbacks")
    @given(callback_requests(runs))
    def one(request):
        raw, headers, authenticated = request
        RAN["airflow_callbacks"] += 1
        before = snapshot(rt)
        resp = c.post("/api/v1/airflow/callback", content=raw, headers=headers)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        if resp.status_code == 200:
            assert authenticated
            assert resp.json()["accepted"] is True
            return
        refused_cleanly(resp)
        if not authenticated:
            assert resp.status_code == 401, resp.text
        assert snapshot(rt) == before, resp.text  # a refused callback changes nothing

    one()
    print(f"airflow callbacks by status: {dict(sorted(seen.items()))}")
    # Accepted callbacks, and every kind of refusal, were exercised.
    assert all(seen.get(status) for status in (200, 401, 404, 409, 422)), seen
    assert 500 not in seen


def test_airflow_triggers_refuse_bad_payloads_without_a_500_or_a_run(served):
    rt, c, _ = served
    text = st.text(max_size=30)
    junk = st.none() | st.booleans() | st.integers() | JSON
    fields = {
        "pipeline_id": st.sampled_from(["fz-triggered", "no-such", ""]) | text | junk,
        "dag_id": st.sampled_from(["etl"]) | text | junk,
        "dag_run_id": text | junk,
        "task_id": st.sampled_from(["go"]) | text | junk,
        "run_conf": st.dictionaries(text, JSON, max_size=3) | junk,
        "mode": st.sampled_from(["trigger", "stages", "other"]) | junk,
    }

    @fuzz("airflow_triggers")
    @given(st.fixed_dictionaries({}, optional=fields))
    def one(body):
        RAN["airflow_triggers"] += 1
        before = snapshot(rt)
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json", "X-Airflow-Signature": sign(raw)}
        resp = c.post("/api/v1/airflow/trigger", content=raw, headers=headers)
        if resp.status_code in (200, 202):
            assert rt.engine.wait(resp.json()["id"], timeout=20)
            return
        refused_cleanly(resp)
        assert snapshot(rt) == before, resp.text

    one()


def test_fuzz_counts_http():
    print(f"pipeline endpoints by status: {STATUSES}")
    for target in ("api_pipelines", "airflow_callbacks", "airflow_triggers"):
        report(target)
        # (0 when the target was deselected: `-k` runs of part of the file)
        assert RAN[target] == 0 or RAN[target] >= CASES[target] * 0.9, (target, RAN[target])
