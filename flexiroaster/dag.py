"""The stage graph of a pipeline: duplicate and unknown ids, cycles, SQL references, levels."""

from __future__ import annotations

from difflib import get_close_matches
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
    from .yamldoc import capped

    problems: list[str] = []
    seen: dict[str, int] = {}
    folded: dict[str, int] = {}  # SQL ignores case: `Load` and `load` are one table
    for i, stage in enumerate(pipeline.stages):
        where = _where(marks, ("stages", i, "id"), source)
        first = folded.get(stage.id.lower())
        if first is None:
            seen[stage.id] = folded[stage.id.lower()] = i
        elif stage.id in seen:
            problems.append(
                f"stages[{i}].id: duplicate stage id {stage.id!r} (first at stages[{first}]) ({where})"
            )
        else:
            other = pipeline.stages[first].id
            problems.append(
                f"stages[{i}].id: stage id {stage.id!r} differs from {other!r} (stages[{first}])"
                f" only in case, and SQL table names ignore case ({where})"
            )
    for i, stage in enumerate(pipeline.stages):
        for j, dep in enumerate(stage.dependencies):
            where = _where(marks, ("stages", i, "dependencies", j), source)
            if dep == stage.id:
                problems.append(f"stages[{i}].dependencies: {dep!r} depends on itself ({where})")
            elif dep not in seen:
                problems.append(f"stages[{i}].dependencies: {_unknown(dep, seen)} ({where})")
    if not problems:
        cycle = find_cycle(pipeline)
        if cycle:
            where = _where(marks, ("stages", seen[cycle[0]], "dependencies"), source)
            problems.append(f"dependencies form a cycle: {' -> '.join(cycle)} ({where})")
    if not problems:
        problems.extend(_sql_reference_problems(pipeline, source, marks, seen))
    if problems:
        raise SpecError(
            f"{source}: {len(problems)} problem(s) in the pipeline", details=capped(problems)
        )


def _unknown(dep: str, seen: dict[str, int]) -> str:
    from .yamldoc import short

    close = get_close_matches(dep, list(seen), n=1)
    if close:
        return f"unknown stage {short(dep)}; did you mean {close[0]!r}?"
    known = sorted(seen)
    listed = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
    return f"unknown stage {short(dep)} (stages: {listed})"


def _sql_reference_problems(
    pipeline: Pipeline, source: str, marks: Any, index: dict[str, int]
) -> list[str]:
    from .stages.sql import referenced_tables
    from .template import sql_shape

    problems = []
    by_folded = {sid.lower(): sid for sid in index}
    for stage in pipeline.stages:
        if stage.type != "sql":
            continue
        i = index[stage.id]
        field = f"stages[{i}].config.query"
        where = _where(marks, ("stages", i, "config", "query"), source)
        try:
            names = referenced_tables(sql_shape(stage.config.query, pipeline.variables))
        except SpecError as exc:
            # DuckDB's message ends with the query line and a caret under the problem.
            first, *rest = exc.message.splitlines() or [""]
            problems.append(
                f"{field}: {first} ({where})" + "".join(f"\n    {r}" for r in rest if r)
            )
            continue
        ancestors = upstream(pipeline, stage.id)
        for name in sorted({by_folded[n.lower()] for n in names if n.lower() in by_folded}):
            if name == stage.id:
                problems.append(
                    f"{field}: reads its own stage {name!r}; a stage reads upstream stages ({where})"
                )
            elif name not in ancestors:
                problems.append(
                    f"{field}: reads stage {name!r} but does not depend on it;"
                    f" add it to `dependencies` ({where})"
                )
    return problems


def find_cycle(pipeline: Pipeline) -> list[str] | None:
    """The first dependency cycle in run order as [a, b, ..., a], starting at its first-declared stage."""
    sorter = TopologicalSorter({s.id: s.dependencies for s in pipeline.stages})
    try:
        sorter.prepare()
    except CycleError as exc:
        # Each node is a dependency of the next, so the list is in run order; first == last.
        ring = list(exc.args[1])[:-1]
        order = {s.id: i for i, s in enumerate(pipeline.stages)}
        start = min(range(len(ring)), key=lambda k: order.get(ring[k], len(order)))
        ring = ring[start:] + ring[:start]
        return ring + ring[:1]
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
