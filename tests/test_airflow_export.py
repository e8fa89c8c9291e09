"""export-airflow without Airflow: the files are valid Python, name the DAG and carry the
pipeline's schedule, retries, timeouts and dependencies over."""

from __future__ import annotations

import ast

import pytest

from flexiroaster.airflow_export import dag_id, render
from flexiroaster.cli import main as cli
from flexiroaster.spec import load_pipeline_text

PIPE = """
name: Export Me
schedule: {schedule}
stages:
  - {{id: pull-a, type: sql, retries: 2, retry_delay: 3, timeout: 40, config: {{query: "select 1 as x"}}}}
  - {{id: pull_a, type: sql, config: {{query: "select 2 as x"}}}}
  - {{id: both, type: sql, dependencies: [pull-a, pull_a], config: {{query: "select * from pull_a"}}}}
"""


def _render(schedule: str, mode: str) -> str:
    text = PIPE.format(schedule=schedule)
    p = load_pipeline_text(text, "export.yaml")
    return render(p, text, mode, api_url="http://127.0.0.1:9", warehouse="/w", data_dir="/d")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [('"0 6 * * 1-5"', "schedule='0 6 * * 1-5'"), ('"every 2 hours"', "schedule=timedelta(seconds=7200)"),
     ("null", "schedule=None")],
)  # fmt: skip
def test_the_schedule_is_carried_over(schedule, expected):
    for mode in ("trigger", "stages"):
        source = _render(schedule, mode)
        ast.parse(source)
        assert expected in source


def test_stages_mode_has_a_task_per_stage_with_its_dependencies_retries_and_timeout():
    source = _render("null", "stages")
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "func", None)]
    staged = {
        c.func.args[0].value: c.func for c in calls if getattr(c.func.func, "id", "") == "stage"
    }
    assert set(staged) == {"pull-a", "pull_a", "both"}  # ids that clash as Python names stay apart
    kw = {k.arg: ast.unparse(k.value) for k in staged["pull-a"].keywords}
    assert kw == {
        "retries": "2",
        "retry_delay": "timedelta(seconds=3)",
        "timeout": "timedelta(seconds=40)",
    }
    assert "s0_pull_a >> s2_both" in source and "s1_pull_a >> s2_both" in source
    assert "dag_id='flexiroaster__export-me__stages'" in source
    assert "SECRET" not in source.replace("FLEXIROASTER_AIRFLOW_SECRET", "")


def test_the_cli_writes_the_file(tmp_path, monkeypatch):
    src = tmp_path / "p.yaml"
    src.write_text(PIPE.format(schedule='"30m"'))
    monkeypatch.setenv("FLEXIROASTER_DATA_DIR", str(tmp_path))
    assert cli(["export-airflow", str(src), "--mode", "trigger", "-o", str(tmp_path / "dags")]) == 0
    p = load_pipeline_text(src.read_text(), str(src))
    out = tmp_path / "dags" / f"{dag_id(p, 'trigger')}.py"
    assert "schedule=timedelta(seconds=1800)" in out.read_text()
    with pytest.raises(SystemExit) as bad:  # argparse names the choices
        cli(["export-airflow", str(src), "--mode", "nope", "-o", str(tmp_path)])
    assert bad.value.code == 2
