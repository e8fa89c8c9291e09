"""The stage graph: duplicate and unknown ids, cycles, SQL references, levels."""

from __future__ import annotations

import textwrap

import pytest

from flexiroaster.dag import downstream, find_cycle, levels, upstream
from flexiroaster.errors import SpecError
from flexiroaster.spec import load_pipeline_text
from flexiroaster.stages.sql import parse_select, referenced_tables


def load(text: str, **params):
    return load_pipeline_text(textwrap.dedent(text), "p.yaml", params or None)


def problem(text: str) -> str:
    with pytest.raises(SpecError) as err:
        load(text)
    message = str(err.value)
    assert len(message.splitlines()) <= 25 and "Traceback" not in message, message
    return message


def sql(stage_id: str, query: str = "select 1 as x", deps: str = "") -> str:
    return (
        f'  - {{id: {stage_id}, type: sql, dependencies: [{deps}], config: {{query: "{query}"}}}}\n'
    )


DIAMOND = (
    "name: diamond\nstages:\n"
    + sql("top")
    + sql("east", "select * from top", "top")
    + sql("west", "select * from top", "top")
    + sql("bottom", "select * from west join east using (x)", "west, east")
)


def test_levels_of_a_diamond():
    p = load(DIAMOND)
    # Declaration order within a level: `east` is declared before `west`.
    assert levels(p) == [["top"], ["east", "west"], ["bottom"]]
    assert upstream(p, "bottom") == {"top", "west", "east"}
    assert upstream(p, "top") == set()
    assert downstream(p, "top") == {"west", "east", "bottom"}
    assert downstream(p, "west") == {"bottom"}
    assert find_cycle(p) is None


def test_levels_of_independent_chains():
    p = load(
        "name: chains\nstages:\n" + sql("a") + sql("b", deps="a") + sql("c") + sql("d", deps="c")
    )
    assert levels(p) == [["a", "c"], ["b", "d"]]


def test_duplicate_stage_ids():
    msg = problem("name: x\nstages:\n" + sql("a") + sql("b") + sql("a"))
    assert "stages[2].id: duplicate stage id 'a' (first at stages[0]) (p.yaml line 5)" in msg


def test_stage_ids_that_differ_only_in_case_collide_as_tables():
    msg = problem("name: x\nstages:\n" + sql("load") + sql("Load"))
    assert "stages[1].id: stage id 'Load' differs from 'load' (stages[0]) only in case" in msg
    assert "(p.yaml line 4)" in msg


def test_a_cycle_is_named_stage_by_stage_in_run_order():
    msg = problem(
        "name: x\nstages:\n"
        + sql("start")
        + sql("a", deps="start, c")
        + sql("b", deps="a")
        + sql("c", deps="b")
    )
    # c runs before a (a depends on c), a before b, b before c; the first declared stage leads.
    assert "dependencies form a cycle: a -> b -> c -> a (p.yaml line 4)" in msg


def test_a_two_stage_cycle():
    msg = problem("name: x\nstages:\n" + sql("x", deps="y") + sql("y", deps="x"))
    assert "dependencies form a cycle: x -> y -> x (p.yaml line 3)" in msg


def test_find_cycle_starts_at_the_first_declared_stage_whatever_graphlib_reports():
    for order in (["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]):
        deps = {"a": "c", "b": "a", "c": "b"}
        with pytest.raises(SpecError) as err:
            load("name: x\nstages:\n" + "".join(sql(s, deps=deps[s]) for s in order))
        cycle = str(err.value).split("cycle: ")[1].split(" (")[0].split(" -> ")
        assert cycle[0] == cycle[-1] == order[0]
        # In run order: each stage is a dependency of the next.
        for before, after in zip(cycle, cycle[1:], strict=False):
            assert deps[after] == before


def test_unknown_dependency_suggests_the_closest_stage():
    msg = problem("name: x\nstages:\n" + sql("load_orders") + sql("b", deps="load_order"))
    assert (
        "stages[1].dependencies: unknown stage 'load_order'; did you mean 'load_orders'? (p.yaml line 4)"
        in msg
    )


def test_unknown_dependency_lists_the_stages_when_nothing_is_close():
    msg = problem("name: x\nstages:\n" + sql("a") + sql("b", deps="zzz"))
    assert "stages[1].dependencies: unknown stage 'zzz' (stages: a, b) (p.yaml line 4)" in msg


def test_a_self_dependency():
    msg = problem("name: x\nstages:\n" + sql("a", deps="a"))
    assert "stages[0].dependencies: 'a' depends on itself (p.yaml line 3)" in msg
    assert "cycle" not in msg


def test_dependency_problems_are_listed_together():
    msg = problem("name: x\nstages:\n" + sql("a", deps="a") + sql("b", deps="nope") + sql("a"))
    assert msg.startswith("p.yaml: 3 problem(s) in the pipeline")


@pytest.mark.parametrize(
    ("query", "expected"),
    [("selec 1 frm", 'SQL does not parse: syntax error at or near "selec"'),
     ("select 1; select 2", "an sql stage runs exactly one query; found 2 statements"),
     ("insert into t values (1)", "an sql stage runs a query (SELECT/WITH/FROM), not INSERT"),
     ("create table t as select 1", "an sql stage runs a query (SELECT/WITH/FROM), not CREATE"),
     ("", "query is empty")],
)  # fmt: skip
def test_sql_that_is_not_one_query(query, expected):
    msg = problem("name: x\nowner: me\nstages:\n" + sql("a", query))
    assert f"stages[0].config.query: {expected}" in msg and "(p.yaml line 4)" in msg


def test_a_parse_error_shows_duckdbs_caret_under_the_line():
    msg = problem("name: x\nstages:\n" + sql("a", "select 1 frm t where"))
    lines = msg.splitlines()
    at = next(i for i, line in enumerate(lines) if "SQL does not parse" in line)
    assert lines[at].endswith("(p.yaml line 3)")
    assert lines[at + 1].strip().startswith("LINE 1: select 1 frm t where")
    assert "^" in lines[at + 2]


def test_a_stage_reading_a_stage_it_does_not_depend_on():
    msg = problem("name: x\nstages:\n" + sql("a") + sql("b", "select * from a"))
    assert (
        "stages[1].config.query: reads stage 'a' but does not depend on it; add it to `dependencies`"
        " (p.yaml line 4)"
    ) in msg


def test_sql_names_match_stages_whatever_their_case():
    msg = problem("name: x\nstages:\n" + sql("orders") + sql("b", "select * from ORDERS"))
    assert "reads stage 'orders' but does not depend on it" in msg


def test_a_stage_reading_itself():
    msg = problem("name: x\nstages:\n" + sql("a", "select * from a"))
    assert "stages[0].config.query: reads its own stage 'a'" in msg


def test_reading_through_an_indirect_dependency_is_fine():
    p = load(
        "name: x\nstages:\n" + sql("a") + sql("b", deps="a") + sql("c", "select * from a", "b")
    )
    assert levels(p) == [["a"], ["b"], ["c"]]


def test_names_that_are_not_stages_are_left_to_run_time():
    # A CTE named like a stage, a schema-qualified table, a table in the store, a table function.
    load(
        "name: x\nstages:\n"
        + sql("a")
        + sql("b", "with a as (select 1 as x) select * from a")
        + sql("c", "select * from main.a, warehouse_orders, range(3)")
    )


def test_placeholders_are_parameters_while_checking_and_ident_variables_are_resolved():
    load(
        """
        name: x
        variables: {n: 3}
        stages:
          - {id: a, type: sql, config: {query: "select range as x from range({{ n }})"}}
        """
    )
    msg = problem(
        """
        name: x
        variables: {src: a}
        stages:
          - {id: a, type: sql, config: {query: "select 1 as x"}}
          - {id: b, type: sql, config: {query: "select * from {{ src | ident }}"}}
        """
    )
    assert "stages[1].config.query: reads stage 'a' but does not depend on it" in msg


def test_a_query_too_deep_for_pythons_json_decoder_is_still_checked():
    # json.loads gives RecursionError on this tree; DuckDB walks it instead.
    deep = "select " + "x + " * 450 + "1 as y from a"
    assert referenced_tables(deep) == {"a"}
    msg = problem("name: x\nstages:\n" + sql("a") + sql("b", deep))
    assert "reads stage 'a' but does not depend on it" in msg
    load("name: x\nstages:\n" + sql("a") + sql("b", deep, "a"))
    nested = "select * from " + "(select * from " * 400 + "a" + ")" * 400
    assert referenced_tables(nested) == {"a"}


def test_referenced_tables():
    assert referenced_tables("select * from a join b using (x)") == {"a", "b"}
    assert referenced_tables("with a as (select 1) select * from a, b") == {"b"}
    assert referenced_tables("select * from s.t, main.u, v") == {"v"}
    assert referenced_tables("select * from x where y in (select y from w)") == {"x", "w"}
    assert referenced_tables('select * from "Mixed Case"') == {"Mixed Case"}
    assert referenced_tables("select * from read_csv('f.csv')") == set()


def test_parse_select_rejects_what_duckdb_cannot_take():
    with pytest.raises(SpecError, match="invalid character"):
        parse_select("select '\ud800'")
    with pytest.raises(SpecError, match="Max expression depth"):
        parse_select("select " + "(" * 3000 + "1" + ")" * 3000)
    assert parse_select("select 1;  ") == "select 1"
