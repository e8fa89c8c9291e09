"""Pydantic models of the pipeline YAML, and loading with errors that name file, line and field."""

from __future__ import annotations

import json
import re
import threading
from difflib import get_close_matches
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError
from .yamldoc import Marks, capped, loc_text, parse_document, short

Scalar = str | int | float | bool | None
STAGE_ID = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
_NAME = r"(\{\{[^{}]+\}\}|[A-Za-z_][A-Za-z0-9_]*)"  # a name, or a placeholder filled at run time
IDENT = rf"^{_NAME}(\.{_NAME})?$"
CONNECTION_NAME = r"^[a-z][a-z0-9_\-]{0,62}$"  # a stored connection (connections.py)
MAX_STAGES = 1000  # a pipeline's stages; more is generated text, not a pipeline to run


class StageType(StrEnum):
    INPUT = "input"
    SQL = "sql"
    TRANSFORM = "transform"
    VALIDATION = "validation"
    OUTPUT = "output"
    PYTHON = "python"
    SHELL = "shell"
    NOTIFY = "notify"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- input ---------------------------------------------------------------------------------


class Pagination(_Model):
    """How an http input asks for the next page: by a cursor the last response gave, or by
    page number. It stops at an empty page, a missing cursor or `max_pages`."""

    type: Literal["cursor", "page"]
    param: str = Field(description="Query parameter carrying the cursor or the page number")
    cursor_path: str | None = Field(
        None, description="cursor: dotted path of the next cursor in a response (e.g. meta.next)"
    )
    start: int = Field(1, description="page: the first page's number")
    size_param: str | None = Field(None, description="page: query parameter for the page size")
    size: int | None = Field(None, gt=0, description="page: records per page")
    max_pages: int = Field(10_000, gt=0, description="Stop after this many pages (a guard)")

    @model_validator(mode="after")
    def _cursor(self) -> Pagination:
        if self.type == "cursor" and not self.cursor_path:
            raise ValueError("cursor pagination needs `cursor_path` (where the next cursor is)")
        return self


class InputConfig(_Model):
    source: str | None = Field(
        None, description="File path or glob (relative to the pipeline file)"
    )
    format: Literal["auto", "csv", "parquet", "json", "ndjson"] = Field(
        "auto", description="File format; `auto` decides from the extension"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Reader options passed to DuckDB (e.g. delim, header)"
    )
    data: list[dict[str, Any]] | None = Field(None, description="Inline rows")
    table: str | None = Field(None, description="An existing table to read", pattern=IDENT)
    connection: str | None = Field(
        None,
        pattern=CONNECTION_NAME,
        description="A stored connection to read from: postgres with `query`, http with `endpoint`",
    )
    query: str | None = Field(None, description="postgres: the SELECT whose result is read")
    endpoint: str | None = Field(
        None, description="http: path under the connection's base_url (or a full URL on it)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="http: query parameters")
    records: str | None = Field(
        None, description="http: dotted path to the list of records in each response (e.g. data.items)"
    )
    pagination: Pagination | None = Field(None, description="http: how to get the next page")

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        sources = ("source", "data", "table", "connection")
        given = [k for k in sources if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `source` (file path), `data` (inline rows), `table` or"
                " `connection`" + (f"; got {', '.join(given)}" if given else "")
            )
        remote = [k for k in ("query", "endpoint") if getattr(self, k) is not None]
        if self.connection is not None and len(remote) != 1:
            raise ValueError(
                "a `connection` input needs exactly one of `query` (postgres) or `endpoint` (http)"
                + (f"; got {', '.join(remote)}" if remote else "")
            )
        if self.connection is None and (remote or self.pagination or self.records or self.params):
            raise ValueError(
                "`query`, `endpoint`, `params`, `records` and `pagination` are for a `connection`"
                " input"
            )
        return self


# --- sql -----------------------------------------------------------------------------------


class SqlConfig(_Model):
    query: str = Field(description="A DuckDB query; upstream stage ids are usable as table names")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query is empty")
        return v


# --- transform -----------------------------------------------------------------------------

OPERATIONS = (
    "rename", "select", "drop", "filter", "cast", "fill_null",
    "normalize", "dedupe", "derive", "sort",
)  # fmt: skip


class Normalize(_Model):
    columns: list[str] = Field(min_length=1)
    case: Literal["lower", "upper", "none"] = "none"
    trim: bool = True
    collapse_spaces: bool = False
    empty_as_null: bool = False


class Dedupe(_Model):
    keys: list[str] = Field(
        default_factory=list, description="Columns that identify a row; all when empty"
    )
    keep: Literal["first", "last"] = "first"
    order_by: list[str] = Field(
        default_factory=list, description="Order deciding which row is first"
    )


class Sort(_Model):
    by: list[str] = Field(min_length=1)
    descending: bool = False


class Operation(_Model):
    """One transform step; exactly one key is set."""

    rename: dict[str, str] | None = None
    select: list[str] | None = None
    drop: list[str] | None = None
    filter: str | None = Field(
        None, description="SQL boolean expression; rows where it is true are kept"
    )
    cast: dict[str, str] | None = None
    fill_null: dict[str, Scalar] | None = None
    normalize: Normalize | None = None
    dedupe: Dedupe | None = None
    derive: dict[str, str] | None = Field(None, description="new column -> SQL expression")
    sort: Sort | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = dict(v)
            if isinstance(v.get("dedupe"), list):
                v["dedupe"] = {"keys": v["dedupe"]}
            if v.get("dedupe") is True:
                v["dedupe"] = {}
            if isinstance(v.get("sort"), (list, str)):
                by = v["sort"]
                v["sort"] = {"by": [by] if isinstance(by, str) else by}
            if isinstance(v.get("normalize"), list):
                v["normalize"] = {"columns": v["normalize"]}
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Operation:
        set_ = [k for k in OPERATIONS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(
                f"an operation has exactly one of {', '.join(OPERATIONS)}; got {set_ or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in OPERATIONS if getattr(self, k) is not None)


class TransformConfig(_Model):
    operations: list[Operation] = Field(min_length=1, description="Applied in order")

    @model_validator(mode="before")
    @classmethod
    def _original_form(cls, v: Any) -> Any:
        # The original format: `operation: rename` with `mappings: {old: new}` (or `columns: [...]`).
        if isinstance(v, dict) and "operation" in v:
            v = dict(v)
            op = v.pop("operation")
            arg = v.pop("mappings", None)
            if arg is None:
                arg = v.pop("columns", None)
            if arg is None:
                arg = v.pop("expression", None)
            if not isinstance(op, str) or op not in OPERATIONS:
                raise ValueError(
                    f"unknown operation {short(op)}; expected one of {', '.join(OPERATIONS)}"
                )
            more = v.pop("operations", [])
            if not isinstance(more, list):
                raise ValueError("`operations` is a list of operations")
            v["operations"] = [{op: arg}, *more]
        return v


# --- validation ----------------------------------------------------------------------------

PATTERNS = {
    # Pragmatic address check: one @, no spaces, a dot in the domain, a 2+ letter TLD.
    "email": r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$",
    # E.164 or common national forms: optional +, digits with spaces, dots, dashes, parentheses; 7-15 digits.
    "phone": r"^\+?(\(?[0-9]{1,4}\)?[ .\-]?){1,6}[0-9]{1,4}$",
}
RULE_ALIASES = {
    "required": "not_null",
    "email": "regex",
    "phone": "regex",
    "pattern": "regex",
    "values": "accepted_values",
    "in": "accepted_values",
    "min_rows": "row_count",
    "expression": "expression",
}


class Check(_Model):
    """One data-quality check. Row-level checks can quarantine the rows that fail them."""

    type: Literal[
        "not_null", "unique", "accepted_values", "range", "regex",
        "row_count", "schema", "expression", "sql",
    ]  # fmt: skip
    name: str | None = None
    columns: list[str] = Field(default_factory=list)
    values: list[Scalar] | None = None
    min: float | int | str | None = None
    max: float | int | str | None = None
    pattern: str | None = None
    preset: Literal["email", "phone"] | None = None
    expression: str | None = Field(None, description="SQL condition every row must meet")
    query: str | None = Field(None, description="SQL returning the violating rows")
    types: dict[str, str] | None = Field(None, description="schema check: column -> DuckDB type")
    strict: bool = Field(False, description="schema check: no columns beyond `types`")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        v = dict(v)
        kind = v.get("type")
        if isinstance(kind, str) and kind in RULE_ALIASES:
            if kind in ("email", "phone"):
                v.setdefault("preset", kind)
            v["type"] = RULE_ALIASES[kind]
        for key in ("field", "column"):
            if key in v:
                col = v.pop(key)
                cols = v.get("columns", [])
                if not isinstance(cols, list):
                    raise ValueError(f"give `{key}` (one column) or `columns` (a list), not both")
                v["columns"] = (col if isinstance(col, list) else [col]) + cols
        return v

    @model_validator(mode="after")
    def _needs(self) -> Check:
        need_cols = {"not_null", "unique", "accepted_values", "range", "regex"}
        if self.type in need_cols and not self.columns:
            raise ValueError(f"{self.type} check needs `columns` (or `field`)")
        if self.type in ("accepted_values", "range", "regex") and len(self.columns) != 1:
            raise ValueError(f"{self.type} check takes one column")
        if self.type == "accepted_values" and not self.values:
            raise ValueError("accepted_values check needs `values`")
        if self.type in ("range", "row_count") and self.min is None and self.max is None:
            raise ValueError(f"{self.type} check needs `min` and/or `max`")
        if self.type == "regex" and (self.pattern is None) == (self.preset is None):
            raise ValueError("regex check needs `pattern` or a preset (`email`, `phone`)")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except (re.error, OverflowError, RecursionError) as exc:
                raise ValueError(f"invalid regex pattern: {exc}") from None
        if self.type == "expression" and not self.expression:
            raise ValueError("expression check needs `expression`")
        if self.type == "sql" and not self.query:
            raise ValueError("sql check needs `query`")
        if self.type == "schema" and not self.types:
            raise ValueError("schema check needs `types`")
        return self

    @property
    def row_level(self) -> bool:
        return self.type not in ("row_count", "schema", "sql")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        what = self.preset or self.type
        return f"{what}({', '.join(self.columns)})" if self.columns else what


class ValidationConfig(_Model):
    checks: list[Check] = Field(default_factory=list)
    on_failure: Literal["fail", "warn", "quarantine"] = "fail"
    quarantine_table: str | None = Field(
        None, pattern=IDENT, description="Where failing rows go; default `<pipeline>_quarantine`"
    )

    @model_validator(mode="before")
    @classmethod
    def _original_form(cls, v: Any) -> Any:
        # The original format: `schema: {column: type}` plus `rules: [{field, type, ...}]`.
        if isinstance(v, dict) and ("schema" in v or "rules" in v):
            v = dict(v)
            checks = v.get("checks", [])
            schema = v.pop("schema", None)
            rules = v.pop("rules", None) or []
            if not isinstance(checks, list) or not isinstance(rules, list):
                raise ValueError("`checks` and `rules` are lists of checks")
            if schema is not None and not isinstance(schema, dict):
                raise ValueError("`schema` maps each column to a type, e.g. {id: INTEGER}")
            v["checks"] = ([{"type": "schema", "types": schema}] if schema else []) + checks + rules
        return v

    @model_validator(mode="after")
    def _some(self) -> ValidationConfig:
        if not self.checks:
            raise ValueError(
                "a validation stage needs at least one check (`checks`, `schema` or `rules`)"
            )
        return self


# --- output --------------------------------------------------------------------------------


class OutputConfig(_Model):
    destination: Literal["table", "warehouse", "database", "file", "connection"] = Field(
        "table",
        description="`table` (DuckDB; `warehouse`/`database` are synonyms), `file`, or"
        " `connection` (a stored postgres or http connection)",
    )
    table: str | None = Field(
        None, pattern=IDENT, description="Target table, optionally schema.table"
    )
    mode: Literal["append", "replace", "merge"] = "replace"
    keys: list[str] = Field(default_factory=list, description="Merge keys (mode: merge)")
    path: str | None = Field(None, description="File to write (destination: file)")
    format: Literal["auto", "parquet", "csv", "json", "html"] = "auto"
    connection: str | None = Field(
        None,
        pattern=CONNECTION_NAME,
        description="A stored connection to write to: postgres `table`, or http `endpoint`",
    )
    endpoint: str | None = Field(None, description="http: path the rows are POSTed to")
    batch_size: int = Field(500, gt=0, le=100_000, description="http: rows per POST")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = dict(v)
            if v.get("mode") in ("upsert",):
                v["mode"] = "merge"
            if v.get("mode") == "overwrite":
                v["mode"] = "replace"
            if "path" in v and "destination" not in v:
                v["destination"] = "file"
            if "connection" in v and "destination" not in v:
                v["destination"] = "connection"
        return v

    @model_validator(mode="after")
    def _target(self) -> OutputConfig:
        if self.destination == "connection" or self.connection is not None:
            if self.destination != "connection" or self.connection is None:
                raise ValueError("`connection` goes with `destination: connection`")
            if (self.table is None) == (self.endpoint is None):
                raise ValueError(
                    "a `connection` output needs exactly one of `table` (postgres) or"
                    " `endpoint` (http)"
                )
            if self.mode == "merge" and not self.keys:
                raise ValueError("merge mode needs `keys`")
            return self
        if self.endpoint is not None:
            raise ValueError("`endpoint` is for a `connection` output")
        if self.destination == "file":
            if not self.path:
                raise ValueError("a file output needs `path`")
            if self.mode == "merge":
                raise ValueError("merge mode is for tables; files are written whole")
        elif not self.table:
            raise ValueError("a table output needs `table`")
        if self.mode == "merge" and not self.keys:
            raise ValueError("merge mode needs `keys`")
        return self


# --- python, shell, notify -----------------------------------------------------------------


class PythonConfig(_Model):
    callable: str = Field(
        pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$",
        description="`module:function` or `file.py:function` (file relative to the pipeline)",
    )
    params: dict[str, Any] = Field(default_factory=dict)


class ShellConfig(_Model):
    command: str | list[str] = Field(description="A shell command line, or an argv list")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class NotifyConfig(_Model):
    channel: Literal["webhook", "email"] = "webhook"
    connection: str | None = Field(
        None,
        pattern=CONNECTION_NAME,
        description="A stored smtp or webhook connection (its type sets the channel)",
    )
    url: str | None = Field(None, description="webhook: where to POST (Slack-compatible JSON)")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = "flexiroaster@localhost"
    to: list[str] = Field(default_factory=list)
    subject: str = "FlexiRoaster pipeline {{ pipeline }}"
    body: str = Field("", description="Message text; may use {{ placeholders }}")

    @model_validator(mode="after")
    def _target(self) -> NotifyConfig:
        if self.connection is not None:
            if self.url is not None:
                raise ValueError("give `connection` or `url`, not both")
            return self  # the connection's type decides; an smtp one needs `to` (checked at run)
        if self.channel == "webhook" and not self.url:
            raise ValueError("a webhook notification needs `url`")
        if self.channel == "email" and not self.to:
            raise ValueError("an email notification needs `to`")
        return self


CONFIG_MODELS: dict[StageType, type[_Model]] = {
    StageType.INPUT: InputConfig,
    StageType.SQL: SqlConfig,
    StageType.TRANSFORM: TransformConfig,
    StageType.VALIDATION: ValidationConfig,
    StageType.OUTPUT: OutputConfig,
    StageType.PYTHON: PythonConfig,
    StageType.SHELL: ShellConfig,
    StageType.NOTIFY: NotifyConfig,
}


# --- stage and pipeline --------------------------------------------------------------------


def _stage_variant(kind: StageType) -> type[BaseModel]:
    cfg = CONFIG_MODELS[kind]

    class _Stage(_Model):
        id: str = Field(
            pattern=STAGE_ID, max_length=63, description="Unique id; a table name to SQL"
        )
        name: str | None = None
        description: str | None = None
        type: Literal[kind.value]  # type: ignore[valid-type]
        config: cfg  # type: ignore[valid-type]
        dependencies: list[str] = Field(default_factory=list)
        timeout: float | None = Field(
            None, gt=0, description="Seconds; the stage is stopped after it"
        )
        retries: int = Field(0, ge=0, le=50)
        retry_delay: float = Field(
            1.0, ge=0, le=3600, description="Seconds before the first retry; doubles"
        )

        @property
        def title(self) -> str:
            return self.name or self.id

    _Stage.__name__ = f"{kind.value.capitalize()}Stage"
    return _Stage


_VARIANTS = {kind: _stage_variant(kind) for kind in StageType}
Stage = Annotated[
    _VARIANTS[StageType.INPUT]
    | _VARIANTS[StageType.SQL]
    | _VARIANTS[StageType.TRANSFORM]
    | _VARIANTS[StageType.VALIDATION]
    | _VARIANTS[StageType.OUTPUT]
    | _VARIANTS[StageType.PYTHON]
    | _VARIANTS[StageType.SHELL]
    | _VARIANTS[StageType.NOTIFY],
    Field(discriminator="type"),
]


class Pipeline(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$", max_length=100)
    description: str = ""
    version: str = "1.0.0"
    variables: dict[str, Scalar] = Field(default_factory=dict)
    stages: list[Stage] = Field(min_length=1, description="At least one stage")  # type: ignore[valid-type]
    tags: list[str] = Field(default_factory=list)
    owner: str | None = None
    max_workers: int | None = Field(None, ge=1, le=64, description="Parallel stages in one run")
    max_active_runs: int = Field(1, ge=1, le=100)
    schedule: dict[str, Any] | str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @property
    def slug(self) -> str:
        """The name as an SQL-friendly word, e.g. for the default quarantine table."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    @property
    def id(self) -> str:
        """The pipeline's id in the store and the API: the name, lower case, words joined by `-`."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def stage(self, stage_id: str) -> Any:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)


# --- loading with positions ----------------------------------------------------------------

# pydantic names the members of a union in the location (`min.float`, `command.list[str]`).
_UNION_LABELS = frozenset({"str", "int", "float", "bool", "none", "bytes", "any", "is-instance"})
# Keys the before-validators accept besides the fields (the original FlexiRoaster format).
_ALSO_ACCEPTED: dict[type, tuple[str, ...]] = {
    TransformConfig: ("operation", "mappings", "columns", "expression"),
    ValidationConfig: ("schema", "rules"),
    Check: ("field", "column"),
}


def _pattern(model: type[BaseModel], field: str) -> str:
    return next(m.pattern for m in model.model_fields[field].metadata if hasattr(m, "pattern"))


_PATTERN_HELP = {
    STAGE_ID: "a stage id starts with a letter or _ and has only letters, digits, _ and -",
    IDENT: (
        "a table name has letters, digits and _ (optionally schema.table), or is a {{ placeholder }}"
    ),
    _pattern(Pipeline, "name"): (
        "a pipeline name starts with a letter or digit and has letters, digits, spaces, _ . -"
    ),
    _pattern(PythonConfig, "callable"): ("expected `module:function` or `file.py:function`"),
}
_MISSING = object()


def _is_label(part: Any) -> bool:
    return isinstance(part, str) and (
        part in _UNION_LABELS or "[" in part or part.startswith("function-")
    )


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return isinstance(part, (str, int)) and part in node
    return isinstance(node, list) and type(part) is int and 0 <= part < len(node)


def _clean_loc(loc: tuple, data: Any = _MISSING) -> tuple:
    """The location as the user wrote it: pydantic's stage-type tags and union labels removed.

    Parts that name a key or item of `data` always stay, so a field called `str` is kept.
    """
    tags = {k.value for k in StageType}
    out: list = []
    node = data
    for part in loc:
        if len(out) == 2 and out[0] == "stages" and isinstance(out[1], int) and part in tags:
            continue  # the discriminator tag of a stage: always right after `stages[i]`
        if _has(node, part):
            out.append(part)
            node = node[part]
        elif not _is_label(part):
            out.append(part)
            node = _MISSING  # past what the user wrote (a before-validator renamed it)
    return tuple(out)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model validating the value at a raw pydantic location, if any."""
    t: Any = Pipeline
    for part in loc:
        t = _step(t, part)
        if t is None:
            return None
    t = _unwrap(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _unwrap(t: Any) -> Any:
    while True:
        if get_origin(t) is Annotated:
            t = get_args(t)[0]
        elif get_origin(t) in (Union, UnionType):
            args = [a for a in get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _step(t: Any, part: Any) -> Any:
    t = _unwrap(t)
    origin = get_origin(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        field = t.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    if origin is list:
        return get_args(t)[0] if isinstance(part, int) else None
    if origin is dict:
        return get_args(t)[1]
    if origin in (Union, UnionType):  # the stage union: `part` is the type tag
        for arg in get_args(t):
            fields = getattr(_unwrap(arg), "model_fields", {})
            if "type" in fields and get_args(fields["type"].annotation) == (part,):
                return arg
    return None


def _unknown_field(field: Any, model: type[BaseModel] | None) -> str:
    if model is None:
        return "unknown field"
    allowed = list(model.model_fields) + list(_ALSO_ACCEPTED.get(model, ()))
    close = get_close_matches(str(field), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean `{close[0]}`?"
    return f"unknown field; allowed: {', '.join(allowed)}"


def _message(err: dict) -> tuple[str, tuple]:
    """A message for one pydantic error, and any parts to add to its location."""
    kind, ctx = err["type"], err.get("ctx") or {}
    types = ", ".join(k.value for k in StageType)
    if kind == "extra_forbidden":
        return _unknown_field(err["loc"][-1], _model_at(tuple(err["loc"][:-1]))), ()
    if kind == "missing":
        return "field required", ()
    if kind == "union_tag_not_found":
        return f"field required: the stage type, one of {types}", ("type",)
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag"))
        close = get_close_matches(tag, [k.value for k in StageType], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown stage type {short(tag)}; {hint}expected one of {types}", ("type",)
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return f"{_PATTERN_HELP[ctx['pattern']]}; got {short(err.get('input'))}", ()
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg, ()


def format_validation_error(
    exc: ValidationError, source: str, marks: Marks | None, data: Any = _MISSING
) -> list[str]:
    """One line per location: `stages[2].config.query: field required (p.yaml line 14)`."""
    by_loc: dict[tuple, list[str]] = {}
    for err in exc.errors():
        msg, more = _message(err)
        loc = _clean_loc(tuple(err["loc"]), data) + more
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    lines = []
    for loc, msgs in by_loc.items():
        # The members of a union each complain; say it once: "a valid string or a valid list".
        wants = [
            m.removeprefix("Input should be ") for m in msgs if m.startswith("Input should be ")
        ]
        if len(wants) > 1:
            others = [m for m in msgs if not m.startswith("Input should be ")]
            msgs = ["Input should be " + ", ".join(wants[:-1]) + " or " + wants[-1], *others]
        line = marks.line_of(loc) if marks else None
        where = f"{source} line {line}" if line else source
        lines.append(f"{loc_text(loc) or '(document)'}: {'; '.join(msgs)} ({where})")
    return lines


def load_pipeline_text(
    text: str,
    source: str = "<pipeline>",
    params: dict[str, Any] | None = None,
    *,
    data_dir: Path | None = None,
    roots: tuple[Path, ...] | None = None,
) -> Pipeline:
    """Parse and validate a pipeline document; every problem becomes a SpecError.

    Placeholders must name a variable, a builtin or one of `params`. With `data_dir` and
    `roots`, file paths without placeholders must lie inside the roots (None: any path).
    """
    data, marks = parse_document(text, source)
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SpecError(f"{source}: a pipeline is a mapping with `name` and `stages`, got {kind}")
    stages = data.get("stages")
    if isinstance(stages, list) and len(stages) > MAX_STAGES:
        # Checked before validation: the graph checks of tens of thousands of stages take minutes.
        line = marks.line_of(("stages",))
        raise SpecError(
            f"{source}: stages: {len(stages)} stages; a pipeline has at most {MAX_STAGES}"
            f" ({source} line {line}); split it into pipelines"
        )
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, source, marks, data)
        raise SpecError(
            f"{source}: {len(lines)} problem(s) in the pipeline", details=capped(lines)
        ) from None
    from .dag import check_graph  # graph rules live in dag.py

    check_graph(pipeline, source, marks)
    check_placeholders(pipeline, source, marks, params or {})
    if data_dir is not None:
        check_paths(pipeline, data_dir, roots, source, marks)
    return pipeline


# --- file paths and the data roots ----------------------------------------------------------


def data_path(path: str, data_dir: Path) -> Path:
    """A stage's file path as the runtime opens it: `~` expanded, relative to the data dir."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(data_dir) / p


def outside_roots(path: Path, roots: tuple[Path, ...] | None) -> bool:
    """Whether `path`, with symlinks and `..` resolved, lies outside every root (None: any
    path is allowed). Glob characters resolve as plain names, so a pattern is judged by its
    directories; its matches are judged one by one where they are read."""
    if roots is None:
        return False
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return True
    return not any(real.is_relative_to(root) for root in roots)


def roots_text(roots: tuple[Path, ...]) -> str:
    return ", ".join(str(r) for r in roots)


def path_refusal(what: str, path: str, roots: tuple[Path, ...]) -> str:
    return (
        f"{what} {short(path, 120)} is outside the data roots ({roots_text(roots)}); add its"
        " directory to FLEXIROASTER_DATA_ROOTS, or set FLEXIROASTER_ALLOW_ANY_PATH=true"
    )


def check_paths(
    pipeline: Pipeline,
    data_dir: Path,
    roots: tuple[Path, ...] | None,
    source: str = "<pipeline>",
    marks: Marks | None = None,
) -> None:
    """File paths of input and output stages that hold no placeholder must lie inside the
    data roots; a path with placeholders is checked when a run fills them in."""
    if roots is None:
        return
    problems = []
    for i, stage in enumerate(pipeline.stages):
        field = {"input": "source", "output": "path"}.get(stage.type)
        value = getattr(stage.config, field, None) if field else None
        if not isinstance(value, str) or "{{" in value:
            continue
        if outside_roots(data_path(value, data_dir), roots):
            loc = ("stages", i, "config", field)
            line = marks.line_of(loc) if marks else None
            where = f"{source} line {line}" if line else source
            problems.append(
                f"{loc_text(loc)}: stage {stage.id!r}: `{field}` {short(value, 100)} is outside"
                f" the data roots ({where})"
            )
    if problems:
        raise SpecError(
            f"{source}: {len(problems)} file path(s) outside the data roots"
            f" ({roots_text(roots)}); add their directories to FLEXIROASTER_DATA_ROOTS, or set"
            " FLEXIROASTER_ALLOW_ANY_PATH=true",
            details=capped(problems),
        )


def check_placeholders(
    pipeline: Pipeline,
    source: str = "<pipeline>",
    marks: Marks | None = None,
    params: dict | None = None,
    stored: dict[str, set[str]] | None = None,
) -> None:
    """Every `{{ name }}` in stage configs must have a value; list each one that does not.

    `secrets.NAME` / `vars.NAME` are checked against `stored` (kind -> names) when it is given,
    which the engine does as a run is prepared; a pipeline file alone cannot know them."""
    from .template import BUILTINS, FILTERS, placeholders

    known = set(pipeline.variables) | set(BUILTINS) | set(params or {})
    problems = []
    for i, stage in enumerate(pipeline.stages):
        raw = stage.config.model_dump()
        for name, filt, path in placeholders(raw, ("stages", i, "config")):
            loc = path
            line = marks.line_of(loc) if marks else None
            where = f"{source} line {line}" if line else source
            if filt is not None and filt not in FILTERS:
                problems.append(
                    f"{loc_text(loc)}: unknown filter `| {filt}` (known: ident) ({where})"
                )
            head, _, rest = name.partition(".")
            if head in ("secrets", "vars") and rest:
                if stored is not None and rest not in stored.get(head, ()):
                    problems.append(
                        f"{loc_text(loc)}: unknown {head} entry {{{{ {name} }}}}; store it with"
                        f" `flexiroaster secrets set {rest}{' --plain' if head == 'vars' else ''}`"
                        f" ({where})"
                    )
                continue
            if name not in known:
                problems.append(
                    f"{loc_text(loc)}: undefined variable {{{{ {name} }}}}; define it under `variables`"
                    f" or pass it as a parameter ({where})"
                )
    if problems:
        from .errors import TemplateError

        raise TemplateError(
            f"{source}: {len(problems)} undefined placeholder(s)", details=capped(problems)
        )


def load_pipeline(path: str | Path, params: dict[str, Any] | None = None) -> Pipeline:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    return load_pipeline_text(text, str(path), params)


def pipeline_to_yaml(p: Pipeline) -> str:
    """The pipeline as YAML that loads back to an equal Pipeline (dates in inline rows stay dates).

    Computed once per Pipeline object: every run records it, and a 200-stage dump costs ~25 ms.
    """
    with _YAML_LOCK:
        hit = _YAML_CACHE.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    text = _dump_yaml(p)
    with _YAML_LOCK:
        _YAML_CACHE[id(p)] = (p, text)  # holds `p`, so its id cannot be reused while cached
        while len(_YAML_CACHE) > 256:
            _YAML_CACHE.pop(next(iter(_YAML_CACHE)))
    return text


_YAML_CACHE: dict[int, tuple[Pipeline, str]] = {}
_YAML_LOCK = threading.Lock()


def _dump_yaml(p: Pipeline) -> str:
    try:
        return yaml.safe_dump(
            p.model_dump(exclude_none=True, exclude_defaults=True), sort_keys=False
        )
    except yaml.representer.RepresenterError:  # built in code with values YAML has no tag for
        data = json.loads(p.model_dump_json(exclude_none=True, exclude_defaults=True))
        return yaml.safe_dump(data, sort_keys=False)
