"""The stage graph of a pipeline: duplicate and unknown ids, cycles, SQL references, levels."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:
    from .spec import Pipeline


def _where(marks: Any, loc: tuple, source: str) -> str:
    line = marks.line_of(loc) if marks else None
    return f"{source} line {line}" if line else source


def check_graph(pipeline: Pipeline, source: str = "<pipeline>", marks: Any = None) -> None:
    """Raise SpecError listing every graph problem: duplicates, unknown deps, cycles, bad SQL refs."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, stage in enumerate(pipeline.stages):
        if stage.id in seen:
            problems.append(
                f"stages[{i}].id: duplicate stage id {stage.id!r} (first at stages[{seen[stage.id]}])"
                f" ({_where(marks, ('stages', i, 'id'), source)})"
            )
        else:
            seen[stage.id] = i
    for i, stage in enumerate(pipeline.stages):
        for j, dep in enumerate(stage.dependencies):
            loc = ("stages", i, "dependencies", j)
            if dep == stage.id:
                problems.append(f"stages[{i}].dependencies: {stage.id!r} depends on itself ({_where(marks, loc, source)})")
            elif dep not in seen:
                known = ", ".join(sorted(seen))
                problems.append(
                    f"stages[{i}].dependencies: unknown stage {dep!r} (known: {known}) ({_where(marks, loc, source)})"
                )
    if not problems:
        cycle = find_cycle(pipeline)
        if cycle:
            first = seen[cycle[0]]
            problems.append(
                "dependencies form a cycle: " + " -> ".join(cycle)
                + f" ({_where(marks, ('stages', first, 'dependencies'), source)})"
            )
    if not problems:
        problems.extend(_sql_reference_problems(pipeline, source, marks, seen))
    if problems:
        raise SpecError(f"{source}: {len(problems)} problem(s) in the pipeline", details=problems)


def _sql_reference_problems(pipeline: Pipeline, source: str, marks: Any, index: dict[str, int]) -> list[str]:
    from .stages.sql import referenced_tables
    from .template import sql_shape

    problems = []
    ancestors = {s.id: upstream(pipeline, s.id) for s in pipeline.stages}
    for stage in pipeline.stages:
        if stage.type != "sql":
            continue
        i = index[stage.id]
        loc = ("stages", i, "config", "query")
        try:
            names = referenced_tables(sql_shape(stage.config.query))
        except SpecError as exc:
            problems.append(f"stages[{i}].config.query: {exc.message} ({_where(marks, loc, source)})")
            continue
        for name in sorted(names):
            if name in index and name not in ancestors[stage.id]:
                problems.append(
                    f"stages[{i}].config.query: reads stage {name!r} but does not depend on it;"
                    f" add it to `dependencies` ({_where(marks, loc, source)})"
                )
    return problems


def find_cycle(pipeline: Pipeline) -> list[str] | None:
    """The first dependency cycle as [a, b, ..., a], or None."""
    sorter = TopologicalSorter({s.id: s.dependencies for s in pipeline.stages})
    try:
        sorter.prepare()
    except CycleError as exc:
        # Each node is a dependency of the next: already in run order, first == last.
        return list(exc.args[1])
    return None


def upstream(pipeline: Pipeline, stage_id: str) -> set[str]:
    """Every stage that `stage_id` depends on, directly or not."""
    deps = {s.id: s.dependencies for s in pipeline.stages}
    out: set[str] = set()
    todo = list(deps.get(stage_id, []))
    while todo:
        d = todo.pop()
        if d not in out:
            out.add(d)
            todo.extend(deps.get(d, []))
    return out


def downstream(pipeline: Pipeline, stage_id: str) -> set[str]:
    """Every stage that depends on `stage_id`, directly or not."""
    return {s.id for s in pipeline.stages if stage_id in upstream(pipeline, s.id)}


def levels(pipeline: Pipeline) -> list[list[str]]:
    """Stages grouped by execution level (all of a level may run at once), declaration order within."""
    order = {s.id: i for i, s in enumerate(pipeline.stages)}
    sorter = TopologicalSorter({s.id: s.dependencies for s in pipeline.stages})
    sorter.prepare()
    out = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        out.append(ready)
        sorter.done(*ready)
    return out
