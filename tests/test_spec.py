"""Loading pipeline files: every bad file gives a one-screen error naming file, line and field."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexiroaster.errors import FlexiError, SpecError
from flexiroaster.spec import (
    CONFIG_MODELS,
    OPERATIONS,
    RULE_ALIASES,
    Check,
    Dedupe,
    Normalize,
    Operation,
    Pipeline,
    Sort,
    StageType,
    load_pipeline,
    load_pipeline_text,
    pipeline_to_yaml,
)


def load(text: str, **params) -> Pipeline:
    return load_pipeline_text(textwrap.dedent(text), "p.yaml", params or None)


def problem(text: str, **params) -> str:
    """The error a bad pipeline gives, checked to be readable: one screen, no traceback."""
    with pytest.raises(SpecError) as err:
        load(text, **params)
    message = str(err.value)
    assert len(message.splitlines()) <= 25, message
    assert "Traceback" not in message and "p.yaml" in message, message
    assert "function-after" not in message and "function-before" not in message, message
    return message


STAGE = "{id: a, type: sql, config: {query: select 1 as x}}"

EVERY_STAGE = """
name: every-stage
description: one stage of each type
version: 2
variables: {limit: 10, region: north}
tags: [demo, fuzz]
owner: data-team
max_workers: 2
max_active_runs: 3
schedule: "0 * * * *"
stages:
  - id: raw
    name: Raw rows
    description: inline rows
    type: input
    config:
      data:
        - {id: 1, email: a@example.com, region: north, seen: 2024-01-02}
        - {id: 2, email: bad, region: null, seen: 2024-02-03}
  - id: files
    type: input
    config: {source: "data/*.csv", format: csv, options: {header: true, delim: ";"}}
  - id: picked
    type: sql
    dependencies: [raw]
    timeout: 30
    retries: 2
    retry_delay: 0.5
    config:
      query: "select * from raw where region = {{ region }} limit {{ limit }}"
  - id: renamed
    type: transform
    dependencies: [picked]
    config:
      operations:
        - rename: {email: mail}
        - filter: "id > 0"
        - normalize: {columns: [mail], case: lower, collapse_spaces: true}
        - dedupe: [id]
        - sort: id
        - cast: {id: BIGINT}
        - fill_null: {region: unknown, other: null}
        - derive: {domain: "split_part(mail, '@', 2)"}
        - select: [id, mail, region, domain]
        - drop: [domain]
  - id: checked
    type: validation
    dependencies: [renamed]
    config:
      on_failure: quarantine
      quarantine_table: bad_rows
      checks:
        - {type: not_null, columns: [id]}
        - {type: unique, columns: [id], name: unique ids}
        - {type: accepted_values, columns: [region], values: [north, south, null]}
        - {type: range, columns: [id], min: 0, max: 100.5}
        - {type: regex, columns: [mail], preset: email}
        - {type: regex, columns: [mail], pattern: "^[a-z]+@"}
        - {type: row_count, min: 1}
        - {type: expression, expression: "id is not null"}
        - {type: sql, query: "select * from renamed where id < 0"}
        - {type: schema, types: {id: BIGINT}, strict: true}
  - id: saved
    type: output
    dependencies: [checked]
    config: {table: analytics.people, mode: merge, keys: [id]}
  - id: exported
    type: output
    dependencies: [checked]
    config: {path: out/people.parquet, format: parquet}
  - id: scored
    type: python
    dependencies: [checked]
    config: {callable: "mymodule:score", params: {factor: 2}}
  - id: listed
    type: shell
    dependencies: [exported]
    config: {command: [ls, -l, out], env: {LC_ALL: C}, cwd: out}
  - id: told
    type: notify
    dependencies: [saved, scored, listed]
    config: {channel: webhook, url: "http://127.0.0.1:9/hook", body: "done {{ run_id }}"}
  - id: mailed
    type: notify
    dependencies: [told]
    config: {channel: email, to: [ops@example.com], subject: "{{ pipeline }} finished"}
"""


ORIGINAL = """
name: Customer Data Pipeline
description: Process customer data
version: "1.0.0"
variables:
  source_path: /data/customers.csv
stages:
  - id: load
    name: Load customers
    type: input
    config:
      source: /data/customers.csv
      format: csv
  - id: rename
    name: Rename fields
    type: transform
    dependencies: [load]
    config:
      operation: rename
      mappings:
        cust_id: customer_id
        cust_name: name
  - id: check
    name: Validate
    type: validation
    dependencies: [rename]
    config:
      schema:
        customer_id: integer
        email: string
      rules:
        - {field: email, type: email}
        - {field: customer_id, type: required}
    timeout: 60
"""


# --- files that load -------------------------------------------------------------------------


def test_every_stage_type_loads_and_round_trips_through_yaml():
    p = load(EVERY_STAGE)
    assert {s.type for s in p.stages} == {
        "input", "sql", "transform", "validation", "output", "python", "shell", "notify",
    }  # fmt: skip
    text = pipeline_to_yaml(p)
    again = load_pipeline_text(text, "again.yaml")
    assert again == p
    assert pipeline_to_yaml(again) == text
    # Dates in inline rows stay dates, not strings.
    assert type(again.stage("raw").config.data[0]["seen"]).__name__ == "date"


def test_the_original_flexiroaster_format_loads_unchanged():
    p = load(ORIGINAL)
    assert p.name == "Customer Data Pipeline" and p.version == "1.0.0"
    assert p.variables == {"source_path": "/data/customers.csv"}
    rename = p.stage("rename").config.operations
    assert len(rename) == 1 and rename[0].rename == {"cust_id": "customer_id", "cust_name": "name"}
    checks = p.stage("check").config.checks
    assert [c.type for c in checks] == ["schema", "regex", "not_null"]
    assert checks[0].types == {"customer_id": "integer", "email": "string"}
    assert checks[1].preset == "email" and checks[1].columns == ["email"]
    assert checks[2].columns == ["customer_id"]
    assert p.stage("check").timeout == 60


def test_json_is_accepted():
    p = load_pipeline_text(
        '{"name": "j", "stages": [{"id": "a", "type": "sql", "config": {"query": "select 1"}}]}',
        "p.json",
    )
    assert p.stages[0].config.query == "select 1"


def test_merge_keys_are_not_duplicate_keys():
    p = load(
        """
        name: m
        stages:
          - &first {id: a, type: sql, timeout: 5, config: {query: select 1}}
          - {<<: *first, id: b, retries: 1}
        """
    )
    assert [s.id for s in p.stages] == ["a", "b"] and p.stages[1].timeout == 5


# --- YAML that does not parse ----------------------------------------------------------------


def test_tabs_name_the_line_and_say_use_spaces():
    msg = problem("name: x\nstages:\n\t- id: a\n")
    assert "p.yaml line 3, column 1" in msg and "use spaces" in msg
    assert "3 | →- id: a" in msg


def test_bad_indentation_names_the_line():
    msg = problem("name: x\nstages:\n  - id: a\n   type: sql\n")
    assert "p.yaml line 4" in msg and "indentation" in msg


def test_an_unclosed_quote_points_at_the_opening_quote():
    msg = problem("name: 'x\nstages: []\nowner: me\n")
    assert (
        "p.yaml line 1, column 7: a quote opened here is never closed (the file ends at line 4)"
        in msg
    )
    assert "1 | name: 'x" in msg


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "got list"), ("hello\n", "got str"), ("42\n", "got int"), ("", "got empty"),
     ("# only a comment\n", "got empty"), ("---\n", "got empty")],
)  # fmt: skip
def test_a_document_that_is_not_a_mapping(text, got):
    msg = problem(text)
    assert "a pipeline is a mapping with `name` and `stages`" in msg and got in msg


def test_two_documents_in_one_file():
    assert "expected a single document" in problem(f"name: a\nstages: [{STAGE}]\n---\nname: b\n")


def test_duplicate_keys_name_the_path_and_the_second_line():
    msg = problem(
        """
        name: x
        stages:
          - id: a
            type: sql
            config:
              query: select 1
              query: select 2
        """
    )
    assert "stages[0].config.query: duplicate key (p.yaml line 8)" in msg


def test_duplicate_top_level_key():
    assert "name: duplicate key (p.yaml line 3)" in problem(
        f"name: x\nstages: [{STAGE}]\nname: y\n"
    )


@pytest.mark.parametrize(
    ("key", "reads"),
    [
        ("1", "a number"),
        ("yes", "true"),
        ("null", "null"),
        ("2024-01-01", "a date"),
        ("1.5", "a number"),
    ],
)
def test_keys_that_yaml_does_not_read_as_text(key, reads):
    msg = problem(f"name: x\nvariables:\n  {key}: v\nstages: [{STAGE}]\n")
    assert f"variables.{key}: a key must be text, but YAML reads `{key}` as {reads}" in msg
    assert f"quote it: '{key}' (p.yaml line 3)" in msg


def test_a_list_as_a_key():
    assert "a key must be plain text" in problem(f"name: x\n? [a, b]\n: 1\nstages: [{STAGE}]\n")


def test_a_recursive_alias():
    assert "a recursive alias" in problem(f"name: x\nvariables: &v {{a: *v}}\nstages: [{STAGE}]\n")


def test_alias_bombs_stop_early():
    bomb = "name: x\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
    assert "aliases repeat more than 100000 values" in problem(bomb + f"stages: [{STAGE}]\n")


def test_absurd_nesting():
    assert "nested more than 64 levels deep" in problem(
        "name: x\nstages:\n  - {id: a, type: input, config: {data: [{a: "
        + "[" * 300
        + "]" * 300
        + "}]}}\n"
    )
    assert "nested too deeply" in problem("name: " + "[" * 5000 + "]" * 5000 + "\n")


@pytest.mark.parametrize(
    ("value", "says"),
    [("!!binary /w==", "binary data (!!binary) is not supported"),
     ("!!set {a, b}", "a set (!!set) is not supported"),
     ("2024-13-45", "cannot read '2024-13-45'"),
     ("1" * 5000, "cannot read"),
     ('"\\ud800"', "invalid character"),
     ("!custom x", "could not determine a constructor for the tag '!custom'")],
)  # fmt: skip
def test_values_that_yaml_cannot_turn_into_plain_data(value, says):
    msg = problem(f"name: x\nvariables:\n  v: {value}\nstages: [{STAGE}]\n")
    assert says in msg and "line 3" in msg


def test_control_characters():
    msg = problem(f"name: x\x07\nstages: [{STAGE}]\n")
    assert "p.yaml line 1" in msg and "not allowed" in msg


# --- fields ----------------------------------------------------------------------------------


def test_unknown_field_at_the_top_suggests_the_right_one():
    msg = problem(f"name: x\ndescripton: typo\nstages: [{STAGE}]\n")
    assert (
        "descripton: unknown field; did you mean `description`?" in msg and "(p.yaml line 2)" in msg
    )


def test_unknown_field_in_a_stage():
    msg = problem(
        f"name: x\nstages:\n  - {STAGE}\n  - {{id: b, type: sql, dependecies: [a], config: {{query: select 1}}}}\n"
    )
    assert "stages[1].dependecies: unknown field; did you mean `dependencies`?" in msg
    assert "(p.yaml line 4)" in msg


def test_unknown_field_inside_a_stage_config_lists_what_is_allowed():
    msg = problem(
        """
        name: x
        stages:
          - id: a
            type: output
            config:
              table: t
              mode: append
              primary_key: [id]
        """
    )
    assert (
        "stages[0].config.primary_key: unknown field; allowed: destination, table, mode, keys"
        in msg
    )
    assert "(p.yaml line 9)" in msg


def test_unknown_field_in_an_original_format_check_knows_the_original_keys():
    msg = problem(
        """
        name: x
        stages:
          - id: a
            type: validation
            config:
              rules:
                - {feild: email, type: email}
        """
    )
    assert "stages[0].config.checks[0].feild: unknown field; did you mean `field`?" in msg


@pytest.mark.parametrize(
    ("stage", "expected"),
    [("{id: a, type: sql, timeout: abc, config: {query: select 1}}",
      "stages[0].timeout: Input should be a valid number"),
     ("{id: a, type: sql, retries: -1, config: {query: select 1}}",
      "stages[0].retries: Input should be greater than or equal to 0"),
     ("{id: a, type: sql, retries: 1.5, config: {query: select 1}}",
      "stages[0].retries: Input should be a valid integer"),
     ("{id: a, type: sql, dependencies: b, config: {query: select 1}}",
      "stages[0].dependencies: Input should be a valid list"),
     ("{id: a, type: sql, config: {query: ''}}", "stages[0].config.query: query is empty"),
     ("{id: a, type: sql, config: select 1}", "stages[0].config: Input should be a valid dictionary"),
     ("{id: 'my stage', type: sql, config: {query: select 1}}",
      "stages[0].id: a stage id starts with a letter or _ and has only letters, digits, _ and -;"
      " got 'my stage'"),
     ("{id: a, type: python, config: {callable: score}}",
      "stages[0].config.callable: expected `module:function` or `file.py:function`; got 'score'"),
     ("{id: a, type: input, config: {source: x.csv, format: xlsx}}",
      "stages[0].config.format: Input should be 'auto', 'csv', 'parquet', 'json' or 'ndjson'"),
     ("{id: a, type: output, config: {table: t, mode: merge}}", "stages[0].config: merge mode needs `keys`")],
)  # fmt: skip
def test_wrong_types_and_values_name_the_field_and_line(stage, expected):
    msg = problem(f"name: x\nowner: me\nstages:\n  - {stage}\n")
    assert expected in msg and "(p.yaml line 4)" in msg


def test_stages_must_be_a_list():
    assert "stages: Input should be a valid list (p.yaml line 2)" in problem(
        "name: x\nstages: {a: 1}\n"
    )
    assert "stages: List should have at least 1 item" in problem("name: x\nstages: []\n")


def test_missing_required_fields():
    assert "name: field required (p.yaml line 1)" in problem(f"stages: [{STAGE}]\n")
    assert "stages: field required" in problem("name: x\n")
    msg = problem(
        """
        name: x
        stages:
          - id: a
            type: sql
            config:
              querry: select 1
        """
    )
    assert "stages[0].config.query: field required (p.yaml line 6)" in msg
    assert "stages[0].config.querry: unknown field; did you mean `query`?" in msg
    msg = problem("name: x\nstages:\n  - id: a\n    config: {query: select 1}\n")
    assert "stages[0].type: field required: the stage type, one of input, sql" in msg
    assert "stages[0].config: field required" in problem(
        "name: x\nstages:\n  - {id: a, type: sql}\n"
    )


def test_unknown_stage_type_names_the_type_line_and_suggests():
    msg = problem("name: x\nstages:\n  - id: a\n    type: transfrom\n    config: {}\n")
    assert "stages[0].type: unknown stage type 'transfrom'; did you mean 'transform'?" in msg
    assert "expected one of input, sql, transform, validation, output, python, shell, notify" in msg
    assert "(p.yaml line 4)" in msg


def test_union_labels_do_not_leak_into_the_path():
    msg = problem(
        """
        name: x
        schedule: 5
        variables: {n: [1, 2]}
        stages:
          - {id: a, type: shell, config: {command: 5}}
          - id: b
            type: validation
            config: {checks: [{type: range, columns: [x], min: [1]}]}
        """
    )
    assert "schedule: Input should be a valid dictionary or a valid string (p.yaml line 3)" in msg
    assert (
        "variables.n: Input should be a valid string, a valid integer, a valid number or a valid boolean"
        in msg
    )
    assert (
        "stages[0].config.command: Input should be a valid string or a valid list (p.yaml line 6)"
        in msg
    )
    assert "stages[1].config.checks[0].min: Input should be a valid number" in msg
    for label in (".str", ".int", ".float", ".bool", "list[", "dict[", ".shell.", ".validation."):
        assert label not in msg, label


def test_a_user_key_that_looks_like_a_label_is_kept():
    msg = problem(
        "name: x\nstages:\n  - {id: a, type: transform, config: {operations: [{cast: {str: 5}}]}}\n"
    )
    assert "stages[0].config.operations[0].cast.str: Input should be a valid string" in msg


def test_many_problems_fit_on_one_screen():
    stages = "\n".join(f"  - {{id: s{i}, type: sql, bogus: 1, config: {{}}}}" for i in range(60))
    msg = problem(f"name: x\nstages:\n{stages}\n")
    assert msg.startswith("p.yaml: 120 problem(s) in the pipeline")
    assert "more problem(s)" in msg


def test_load_pipeline_names_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_pipeline(tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match="cannot read"):
        load_pipeline(tmp_path / "latin1.yaml")


# --- regressions found by the fuzzer below ---------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [  # before-validators met values of the wrong shape and raised TypeError
        ("{type: transform, config: {operation: rename, mappings: {a: b}, operations: 5}}",
         "stages[0].config: `operations` is a list of operations"),
        ("{type: transform, config: {operation: [rename], mappings: {a: b}}}",
         "stages[0].config: unknown operation ['rename']"),
        ("{type: validation, config: {checks: [{type: [email], columns: [a]}]}}",
         "stages[0].config.checks[0].type: Input should be 'not_null'"),
        ("{type: validation, config: {checks: [{type: not_null, field: a, columns: 5}]}}",
         "stages[0].config.checks[0]: give `field` (one column) or `columns` (a list), not both"),
        ("{type: validation, config: {schema: {a: int}, checks: 5}}",
         "stages[0].config: `checks` and `rules` are lists of checks"),
        ("{type: validation, config: {rules: 5}}", "stages[0].config: `checks` and `rules` are lists"),
        ("{type: validation, config: {schema: [a]}}", "stages[0].config: `schema` maps each column"),
        # re.compile raised OverflowError, which pydantic does not catch
        ("{type: validation, config: {checks: [{type: regex, column: a, pattern: 'a{99999999999}'}]}}",
         "stages[0].config.checks[0]: invalid regex pattern: the repetition number is too large"),
        # model_dump(mode="json") could not encode non-UTF-8 bytes
        ("{type: input, config: {source: x.csv, options: {a: !!binary /w==}}}",
         "stages[0].config.options.a: binary data (!!binary) is not supported"),
        # DuckDB's binding raised TypeError for a lone surrogate
        ('{type: sql, config: {query: "select \'\\ud800\'"}}', "stages[0].config.query: text with an invalid"),
        # pydantic's serializer raised ValueError past ~250 levels of inline data
        ("{type: input, config: {data: [{a: " + "[" * 300 + "]" * 300 + "}]}}", "nested more than 64"),
    ],
)  # fmt: skip
def test_fuzzer_regressions(config, expected):
    msg = problem(f"name: x\nstages:\n  - {{id: a, {config[1:]}\n")
    assert expected in msg


@pytest.mark.parametrize(
    ("value", "says"),
    [  # PyYAML's constructors raised KeyError, AttributeError, IndexError on these
        ("!!bool x", "variables.v: cannot read 'x' as !!bool (p.yaml line 3)"),
        ("!!timestamp x", "variables.v: cannot read 'x' as !!timestamp (p.yaml line 3)"),
        ("!!int", "variables.v: cannot read '' as !!int (p.yaml line 3)"),
        ("!!bool", "variables.v: cannot read '' as !!bool (p.yaml line 3)"),
        ("!!float x", "variables.v: cannot read 'x': could not convert string to float"),
    ],
)
def test_fuzzer_regressions_explicit_tags(value, says):
    assert says in problem(f"name: x\nvariables:\n  v: {value}\nstages: [{STAGE}]\n")


# --- the command line ------------------------------------------------------------------------


def validate(tmp_path, *files):
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-m", "flexiroaster", "validate", *map(str, files)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_validate_prints_one_error_with_the_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nstages:\n  - id: a\n    type: sql\n    config:\n      querry: select 1\n"
    )
    out = validate(tmp_path, bad)
    assert out.returncode != 0
    assert out.stderr.startswith(f"Error: {bad}: 2 problem(s) in the pipeline"), out.stderr
    assert (
        f"stages[0].config.querry: unknown field; did you mean `query`? ({bad} line 6)"
        in out.stderr
    )
    assert "Traceback" not in out.stdout + out.stderr
    assert len(out.stderr.splitlines()) <= 25


def test_cli_validate_yaml_error_and_good_file(tmp_path):
    bad = tmp_path / "tabs.yaml"
    bad.write_text("name: x\nstages:\n\t- id: a\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"name: good\nstages: [{STAGE}]\n")
    out = validate(tmp_path, good, bad)
    assert out.returncode != 0
    assert "good.yaml: ok (good, 1 stages)" in out.stdout
    assert f"Error: invalid YAML in {bad} line 3, column 1" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert validate(tmp_path, good).returncode == 0


# --- fuzzing: any text gives a Pipeline or a FlexiError, never another exception -------------


def check_any(text: str) -> None:
    try:
        load_pipeline_text(text, "fuzz.yaml")
    except FlexiError as exc:
        message = str(exc)
        assert len(message.splitlines()) <= 25, message
        assert "function-after" not in message and "Traceback" not in message, message


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run; a new crash is a regression, not luck
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TYPES = [k.value for k in StageType]
CONFIG_KEYS = {k.value: [*m.model_fields, "operation", "mappings", "schema", "rules", "field", "column"]
               for k, m in CONFIG_MODELS.items()}  # fmt: skip
STAGE_KEYS = ["id", "name", "description", "type", "config", "dependencies", "timeout", "retries",
              "retry_delay", "<<", "bogus"]  # fmt: skip
PIPELINE_KEYS = [*Pipeline.model_fields, "bogus"]
CHECK_KEYS = [*Check.model_fields, "field", "column"]
CHECK_TYPES = [*RULE_ALIASES, "not_null", "unique", "accepted_values", "range", "regex", "row_count",
               "schema", "sql", "bogus"]  # fmt: skip
OP_KEYS = [
    *Operation.model_fields,
    *Normalize.model_fields,
    *Sort.model_fields,
    *Dedupe.model_fields,
]
FIELDS = sorted({*CONFIG_KEYS["sql"], *sum(CONFIG_KEYS.values(), []), *STAGE_KEYS, *PIPELINE_KEYS,
                 *CHECK_KEYS, *OP_KEYS})  # fmt: skip
YAML_CHARS = (
    list(":-[]{}&*!|>'\"%@`#,?\\ \t\n") + list("abcxyz019_.$") + ["\u00e9", "\x00", "\ufeff"]
)


def _subtrees(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _subtrees(v)
    elif isinstance(node, list):
        for v in node:
            yield from _subtrees(v)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# Pieces of valid pipelines, to be put in the wrong places.
FRAGMENTS = [
    t
    for doc in (EVERY_STAGE, ORIGINAL)
    for t in _subtrees(yaml.safe_load(doc))
    if len(repr(t)) < 300
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=12),
    st.sampled_from([*FIELDS, *TYPES, *CHECK_TYPES, *OPERATIONS, "email", "a", "b", "x", "select 1",
                     "{{ x }}", "{{ limit }}", "a:b", "yes", "a{99999999999}", "(", "file", "merge"]),
    st.dates(),
    st.binary(max_size=3),  # dumped as !!binary
    st.sets(st.integers(0, 3), max_size=2),  # dumped as !!set
    st.sampled_from(["\ud800", "a\udfff"]),  # lone surrogates, dumped as "\ud800" escapes
    st.integers(60, 70).map(nested),  # nesting past the limit
)  # fmt: skip
keys = st.one_of(
    st.sampled_from(FIELDS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none()
)
values = st.recursive(
    scalars | st.sampled_from(FRAGMENTS).map(copy.deepcopy),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=8,
)
sql_text = st.one_of(
    st.sampled_from([
        "select 1", "select * from a", "select * from b join a using (x)", "select 1; select 2",
        "insert into t values (1)", "with a as (select 1) select * from a", "selec 1 frm",
        "select {{ x }}", "select * from {{ t | ident }}", "select {{ limit | upper }}",
        "create table t (x int)", "", "  ", "pivot a on x using sum(y)", "select * from A",
        "from a", "describe a", "drop table a", "select '\ud800'", "select * from main.a",
    ]),
    st.text(alphabet=st.sampled_from(list("selct *frombwhij;()'\"$,.{} 1a")), max_size=40),
)  # fmt: skip
stage_ids = st.sampled_from(["a", "b", "c", "A", "a-b", "1x", "", "a b", "x" * 70]) | st.text(
    max_size=5
)


def shaped(names: list[str], inner) -> st.SearchStrategy:
    """Mappings whose keys are mostly real field names."""
    return st.dictionaries(st.sampled_from(names) | keys, inner, max_size=5)


near = values | sql_text
troublemakers = st.sampled_from(
    [5, -1, 0, 1.5, [1], [[]], {}, {"a": 1}, {1: 2}, None, True, "", "a{99999999999}", b"\xff",
     {1, 2}, "\ud800", "x" * 70, "{{ nope }}", "select 1; select 2", nested(100)]
).map(copy.deepcopy)  # fmt: skip
check_values = st.sampled_from([*CHECK_TYPES, "a{99999999999}", "(", "[a-z]+", "email", "x"])
checks = shaped(CHECK_KEYS, check_values | near) | values
operations = shaped(OP_KEYS, near | shaped(OP_KEYS, near)) | values


@st.composite
def stages(draw):
    stage: dict = {}
    kind = draw(st.sampled_from(TYPES) | scalars)
    config_keys = CONFIG_KEYS.get(kind) if isinstance(kind, str) else None
    config = draw(shaped(config_keys or FIELDS, near))
    if kind == "validation" or draw(st.integers(0, 9)) == 0:
        many = st.lists(checks, max_size=3) | values
        config[draw(st.sampled_from(["checks", "rules"]))] = draw(many)
        if draw(st.booleans()):
            config["schema"] = draw(shaped(["a", "b"], st.sampled_from(["INTEGER", "x"])) | values)
    if kind == "transform" or draw(st.integers(0, 9)) == 0:
        config["operations"] = draw(st.lists(operations, max_size=3) | values)
        if draw(st.booleans()):
            config["operation"] = draw(st.sampled_from(OPERATIONS) | near)
    if kind == "sql":
        config["query"] = draw(sql_text)
    for field in draw(st.lists(st.sampled_from(STAGE_KEYS), max_size=2, unique=True)):
        stage[field] = draw(values)
    if draw(st.integers(0, 9)):
        stage["id"] = draw(stage_ids)
    if draw(st.integers(0, 9)):
        stage["type"] = kind
    if draw(st.integers(0, 9)):
        stage["config"] = config
    if draw(st.booleans()):
        stage["dependencies"] = draw(st.lists(stage_ids, max_size=3))
    return stage


@st.composite
def documents(draw):
    doc = draw(shaped(PIPELINE_KEYS, values))
    if draw(st.integers(0, 9)):
        doc["name"] = draw(st.sampled_from(["p", "my pipeline", ""]) | scalars)
    if draw(st.booleans()):
        doc["variables"] = draw(
            st.dictionaries(st.sampled_from(["x", "t", "limit"]) | keys, scalars)
        )
    if draw(st.integers(0, 9)):
        doc["stages"] = draw(st.lists(stages(), max_size=5))
    return doc


def dump(doc, flow: bool) -> str:
    options = {"default_flow_style": flow, "sort_keys": False, "allow_unicode": True}
    try:  # libyaml is faster, but cannot write lone surrogates
        return yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), **options)
    except (UnicodeEncodeError, yaml.YAMLError):
        return yaml.safe_dump(doc, **options)


@pytest.mark.slow
@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text):
    check_any(text)


@pytest.mark.slow
@FUZZ
@given(st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=200))
def test_fuzz_yaml_punctuation(text):
    check_any(text)


YAML_TOKENS = [
    "\n", "\n  ", "\n    ", "\n- ", "- ", ": ", "name", "stages", "id", "type", "config", "query",
    "sql", "input", "select 1", "a", "{", "}", "[", "]", ", ", "'", '"', "&a ", "*a", "<<", "? ",
    "!!bool ", "!!int ", "!!float ", "!!timestamp ", "!!str ", "!!map ", "!!seq ", "!!binary ",
    "!!set ", "!!omap ", "!!null ", "!!python/name:os.system ", "!x ", "---\n", "...\n", "#",
    "|\n", ">-\n", "\\u", "\t", "%YAML 1.1\n", "yes", "~", "1e9", "0x", "2024-13-40", "",
]  # fmt: skip


@pytest.mark.slow
@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=40))
def test_fuzz_yaml_tokens(tokens):
    check_any("".join(tokens))


@pytest.mark.slow
@FUZZ
@given(documents(), st.booleans())
def test_fuzz_pipeline_shaped_documents(doc, flow):
    check_any(dump(doc, flow))


def one_stage_pipelines():
    """Each stage of EVERY_STAGE (and the original format) alone: small documents, every field."""
    for doc in (EVERY_STAGE, ORIGINAL):
        data = yaml.safe_load(doc)
        for stage in data["stages"]:
            stage.pop("dependencies", None)
            yield {**data, "stages": [stage]}


GRAPH = """
name: graph
variables: {src: a}
stages:
  - {id: a, type: sql, config: {query: select 1 as x}}
  - {id: b, type: sql, dependencies: [a], config: {query: "select * from a"}}
  - {id: c, type: sql, dependencies: [a, b], config: {query: "select * from {{ src | ident }}, b"}}
"""
# Small documents mutate and load fast; together they hold every stage type and a graph.
MUTATION_BASES = [*one_stage_pipelines(), yaml.safe_load(ORIGINAL), yaml.safe_load(GRAPH)]


@st.composite
def mutated_pipelines(draw):
    data = copy.deepcopy(draw(st.sampled_from(MUTATION_BASES)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 6]))):  # mostly one: the rest stays valid
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["set", "set", "delete", "add", "wrap"]))
        if action == "set":
            parent[path[-1]] = draw(troublemakers | near | shaped(FIELDS, near))
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELDS) | keys)] = draw(near)
        elif action == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
    return dump(data, draw(st.booleans()))


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


@pytest.mark.slow
@FUZZ
@given(mutated_pipelines())
def test_fuzz_mutated_valid_pipelines(text):
    check_any(text)


@st.composite
def edited_pipelines(draw):
    text = draw(st.sampled_from([EVERY_STAGE, ORIGINAL]))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        text = text[:i] + draw(st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=6)) + text[j:]
    return text


@pytest.mark.slow
@FUZZ
@given(edited_pipelines())
def test_fuzz_text_edits_of_a_valid_pipeline(text):
    check_any(text)


TROUBLEMAKERS = [
    5, -1, 1.5, [1], {}, {"field": "x"}, None, True, "", "a{99999999999}", b"\xff", {1, 2},
    "\ud800", "x" * 70, "{{ nope }}", "select 1; select 2", nested(70),
]  # fmt: skip


@pytest.mark.slow
def test_every_field_of_every_stage_type_replaced_by_bad_values():
    """A systematic sweep: each value deleted, wrapped in a list, or swapped for a troublemaker."""
    loads = 0
    for n, base in enumerate(one_stage_pipelines()):
        # The top-level fields are the same in every base: sweep them once.
        for path in [p for p in _paths(base) if p and (n == 0 or p[0] == "stages")]:
            for action in ["delete", "wrap", *range(len(TROUBLEMAKERS))]:
                data = copy.deepcopy(base)
                parent = data
                for part in path[:-1]:
                    parent = parent[part]
                if action == "delete":
                    del parent[path[-1]]
                elif action == "wrap":
                    parent[path[-1]] = [parent[path[-1]]]
                else:
                    parent[path[-1]] = copy.deepcopy(TROUBLEMAKERS[action])
                check_any(dump(data, flow=False))
                loads += 1
    assert loads > 2500
