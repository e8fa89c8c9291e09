"""`{{ name }}` placeholders: find them, and fill them as text, as bound SQL parameters or shell words."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

from .errors import TemplateError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\|\s*([a-z]+)\s*)?\}\}")
FILTERS = ("ident",)
BUILTINS = ("run_id", "pipeline", "run_date", "run_ts", "data_dir")
# Config keys whose strings are SQL: placeholders there become bound parameters.
SQL_KEYS = frozenset({"query", "filter", "expression"})


def placeholders(value: Any, path: tuple = ()) -> Iterator[tuple[str, str | None, tuple]]:
    """Every (name, filter, location) in a nested config value."""
    if isinstance(value, str):
        for m in PLACEHOLDER.finditer(value):
            yield m.group(1), m.group(2), path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from placeholders(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from placeholders(v, path + (i,))


def _lookup(name: str, scope: dict[str, Any]) -> Any:
    head, _, rest = name.partition(".")
    # `secrets.NAME` / `vars.NAME`: a mapping in the scope, filled when the run is prepared.
    if name not in scope and rest and isinstance(scope.get(head), dict):
        if rest in scope[head]:
            return scope[head][rest]
        raise TemplateError(f"undefined variable {{{{ {name} }}}}: no stored {head} entry {rest}")
    if name not in scope:
        names = sorted(scope)
        known = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise TemplateError(
            f"undefined variable {{{{ {name} }}}}: define it under `variables` or pass it as a run"
            f" parameter (known: {known or 'none'})"
        )
    return scope[name]


def quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def render_text(text: str, scope: dict[str, Any]) -> str:
    def sub(m: re.Match) -> str:
        value = _lookup(m.group(1), scope)
        return quote_ident(value) if m.group(2) == "ident" else str(value)

    return PLACEHOLDER.sub(sub, text)


def render_shell(text: str, scope: dict[str, Any]) -> str:
    """Fill a shell command line; every value becomes one quoted shell word."""
    return PLACEHOLDER.sub(lambda m: shlex.quote(str(_lookup(m.group(1), scope))), text)


class SqlParams:
    """Collects bound parameter values for the SQL fragments of one stage."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def render(self, sql: str, scope: dict[str, Any]) -> str:
        def sub(m: re.Match) -> str:
            value = _lookup(m.group(1), scope)
            if m.group(2) == "ident":
                return quote_ident(value)
            key = f"p{len(self.values)}"
            self.values[key] = value
            return f"${key}"

        return PLACEHOLDER.sub(sub, sql)


def sql_shape(sql: str, known: dict[str, Any] | None = None) -> str:
    """The SQL with placeholders swapped for parameters, so it parses before values exist.

    An `| ident` placeholder whose value is `known` (a pipeline variable) becomes that name, so
    the stage check sees which table it reads.
    """
    known = known or {}

    def sub(m: re.Match) -> str:
        if m.group(2) != "ident":
            return "$placeholder"
        return quote_ident(known.get(m.group(1), m.group(1)))

    return PLACEHOLDER.sub(sub, sql)


def render_config(
    value: Any, scope: dict[str, Any], params: SqlParams, key: str | None = None
) -> Any:
    """Fill placeholders through a config tree: SQL keys get bound parameters, others text."""
    if key == "command":
        if isinstance(value, str):
            return render_shell(value, scope)
        return [render_text(v, scope) for v in value]
    if isinstance(value, str):
        if key in SQL_KEYS or key == "__sql__":
            return params.render(value, scope)
        return render_text(value, scope)
    if isinstance(value, dict):
        # `derive` maps new column -> SQL expression: its values are SQL.
        inner = "__sql__" if key == "derive" else None
        return {k: render_config(v, scope, params, inner or k) for k, v in value.items()}
    if isinstance(value, list):
        return [render_config(v, scope, params, key) for v in value]
    return value
