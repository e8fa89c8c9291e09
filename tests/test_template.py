"""`{{ name }}` placeholders: undefined names are load errors; values fill text, SQL and shell."""

from __future__ import annotations

import textwrap

import pytest

from flexiroaster.errors import SpecError, TemplateError
from flexiroaster.spec import check_placeholders, load_pipeline_text
from flexiroaster.template import (
    SqlParams,
    placeholders,
    render_config,
    render_shell,
    render_text,
    sql_shape,
)

UNDEFINED = """
name: x
stages:
  - id: a
    type: sql
    config:
      query: "select * from range({{ n }})"
  - id: b
    type: shell
    config:
      command: "echo {{ greeting }} {{ run_id }}"
"""


def load(text: str, **params):
    return load_pipeline_text(textwrap.dedent(text), "p.yaml", params or None)


def test_an_undefined_variable_names_the_field_and_line():
    with pytest.raises(TemplateError) as err:
        load(UNDEFINED)
    message = str(err.value)
    assert isinstance(err.value, SpecError)
    assert message.startswith("p.yaml: 2 undefined placeholder(s)")
    assert (
        "stages[0].config.query: undefined variable {{ n }}; define it under `variables`"
        " or pass it as a parameter (p.yaml line 7)"
    ) in message
    assert "stages[1].config.command: undefined variable {{ greeting }}" in message
    assert "(p.yaml line 11)" in message
    assert "run_id" not in message  # a builtin


def test_defining_the_variable_fixes_it():
    p = load(UNDEFINED.replace("name: x\n", "name: x\nvariables: {n: 3, greeting: hi}\n"))
    assert p.variables == {"n": 3, "greeting": "hi"}


def test_passing_params_fixes_it():
    p = load(UNDEFINED, n=3, greeting="hi")
    with pytest.raises(TemplateError, match="greeting"):
        load(UNDEFINED, n=3)
    # The engine checks again with the run's parameters.
    check_placeholders(p, "run", None, {"n": 1, "greeting": "hello"})
    with pytest.raises(TemplateError, match=r"undefined variable \{\{ n \}\}"):
        check_placeholders(p, "run", None, {"greeting": "hello"})


def test_an_unknown_filter():
    with pytest.raises(TemplateError) as err:
        load(
            """
            name: x
            variables: {t: a}
            stages:
              - {id: a, type: sql, config: {query: "select '{{ t | upper }}' as x"}}
            """
        )
    assert "stages[0].config.query: unknown filter `| upper` (known: ident) (p.yaml line 5)" in str(
        err.value
    )


def test_placeholders_in_lists_and_nested_configs_have_exact_paths():
    with pytest.raises(TemplateError) as err:
        load(
            """
            name: x
            stages:
              - id: a
                type: transform
                config:
                  operations:
                    - filter: "amount > {{ floor }}"
                    - derive:
                        total: "amount * {{ rate }}"
            """
        )
    message = str(err.value)
    assert "stages[0].config.operations[0].filter: undefined variable {{ floor }};" in message
    assert "(p.yaml line 8)" in message
    assert "stages[0].config.operations[1].derive.total: undefined variable {{ rate }}" in message
    assert "(p.yaml line 10)" in message


def test_many_undefined_placeholders_fit_on_one_screen():
    query = " + ".join(f"{{{{ v{i} }}}}" for i in range(60))
    with pytest.raises(TemplateError) as err:
        load(f'name: x\nstages:\n  - {{id: a, type: sql, config: {{query: "select {query}"}}}}\n')
    lines = str(err.value).splitlines()
    assert lines[0] == "p.yaml: 60 undefined placeholder(s)"  # 22 shown, then a count
    assert len(lines) <= 25 and lines[-1].strip() == "... and 38 more problem(s)"


def test_placeholders_walks_nested_values():
    found = list(placeholders({"a": ["x {{ one }}", {"b": "{{ two | ident }}{{three}}"}], "n": 5}))
    assert found == [
        ("one", None, ("a", 0)),
        ("two", "ident", ("a", 1, "b")),
        ("three", None, ("a", 1, "b")),
    ]


def test_malformed_braces_are_not_placeholders():
    assert list(placeholders("{{ }} {{ 1x }} {{a b}} docker --format '{{.State}}'")) == []


def test_render_text_and_shell():
    scope = {"name": "O'Brien", "n": 3, "t": 'we"ird'}
    assert render_text("hi {{ name }} x{{n}}", scope) == "hi O'Brien x3"
    assert render_text("from {{ t | ident }}", scope) == 'from "we""ird"'
    assert render_shell("echo {{ name }}", scope) == "echo 'O'\"'\"'Brien'"
    with pytest.raises(
        TemplateError, match=r"undefined variable \{\{ nope \}\}.*known: n, name, t"
    ):
        render_text("{{ nope }}", scope)


def test_sql_values_are_bound_parameters_never_spliced():
    params = SqlParams()
    sql = params.render(
        "select * from {{ t | ident }} where name = {{ name }}", {"t": "a", "name": "x' or 1=1"}
    )
    assert sql == 'select * from "a" where name = $p0'
    assert params.values == {"p0": "x' or 1=1"}


def test_render_config_binds_sql_keys_and_fills_the_rest():
    params = SqlParams()
    config = {
        "query": "select {{ n }}",
        "path": "out/{{ run_id }}.csv",
        "derive": {"total": "x * {{ n }}"},
        "command": ["echo", "{{ n }}"],
    }
    out = render_config(config, {"n": 2, "run_id": "r1"}, params)
    assert out == {
        "query": "select $p0",
        "path": "out/r1.csv",
        "derive": {"total": "x * $p1"},
        "command": ["echo", "2"],
    }
    assert params.values == {"p0": 2, "p1": 2}


def test_sql_shape_parses_before_values_exist():
    assert sql_shape("select {{ n }} from {{ t | ident }}") == 'select $placeholder from "t"'
    assert sql_shape("select * from {{ t | ident }}", {"t": "orders"}) == 'select * from "orders"'
