"""What a stage gets to work with (StageContext) and what it hands back (StageResult)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ..errors import Cancelled, StageError
from ..template import quote_ident

if TYPE_CHECKING:
    from ..connections import Connection
    from ..spec import Pipeline
    from ..store import Store


@dataclass
class StageResult:
    relation: str | None = None  # qualified name of the stage's output in the run's scratch schema
    rows_out: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    run_id: str
    pipeline: Pipeline
    stage: Any
    config: Any  # the stage's config model with placeholders filled
    sql_params: dict[str, Any]
    inputs: dict[str, str]  # dependency id -> qualified relation (only deps that produce data)
    store: Store
    schema: str  # the run's scratch schema, e.g. scratch."r_ab12"
    data_dir: Path
    logger: Callable[[str, str], None]
    cancel: threading.Event
    scope: dict[str, Any] = field(default_factory=dict)
    rows_in: int | None = None  # rows of the stage's inputs, where known
    created_rows: int | None = None  # rows of the last table create_relation made
    # name -> the run's resolved connection (secrets decrypted); set by the engine
    connections: dict[str, Connection] = field(default_factory=dict, repr=False)
    # Where file paths may point (Settings.path_roots): () the data dir alone, None any path
    path_roots: tuple[Path, ...] | None = ()
    _killers: list[Callable[[], None]] = field(default_factory=list)
    _cursor: duckdb.DuckDBPyConnection | None = None
    _killed: threading.Event = field(default_factory=threading.Event)

    # --- plumbing the engine uses -----------------------------------------------------------

    @property
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of this attempt alone; the engine interrupts it on timeout or cancel."""
        if self._cursor is None:
            self._cursor = self.store.new_cursor()
        return self._cursor

    def on_kill(self, fn: Callable[[], None]) -> None:
        self._killers.append(fn)

    def kill(self) -> None:
        self._killed.set()
        if self._cursor is not None:
            self._cursor.interrupt()
        for fn in list(self._killers):
            try:
                fn()
            except Exception:  # a killer of something already gone
                pass

    def close(self) -> None:
        if self._cursor is not None:
            try:
                self._cursor.close()
            except Exception:
                pass

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("the run was cancelled")

    # --- helpers for stage modules ----------------------------------------------------------

    def connection(self, name: str) -> Connection:
        """A stored connection this run resolved before it started (unknown ones stop the run
        at validation)."""
        try:
            return self.connections[name]
        except KeyError:
            raise StageError(f"connection {name!r} was not resolved for this run") from None

    def log(self, message: str, level: str = "INFO") -> None:
        self.logger(level, message)

    @property
    def output_name(self) -> str:
        return f"{self.schema}.{quote_ident(self.stage.id)}"

    def single_input(self) -> str:
        if len(self.inputs) != 1:
            got = ", ".join(self.inputs) or "none"
            raise StageError(
                f"a {self.stage.type} stage reads exactly one upstream table; it depends on: {got}"
            )
        return next(iter(self.inputs.values()))

    @contextmanager
    def transaction(self, table: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing writes to user tables on this attempt's cursor.

        With `table`, the write holds that table's lock for its whole transaction: two runs
        replacing or altering one table at once would otherwise fail with DuckDB's catalog
        write-write conflict, so they take turns instead (the later one's write wins)."""
        with self._table_lock(table):
            yield from self._transaction()

    @contextmanager
    def _table_lock(self, table: str | None) -> Iterator[None]:
        if table is None:
            yield
            return
        lock = self.store.table_lock(table)
        waited = False
        while not lock.acquire(timeout=0.05):
            if not waited:
                self.log(f"waiting for another run's write to table {table} to finish")
                waited = True
            self.check_cancelled()
            if self._killed.is_set():
                raise StageError(f"stopped while waiting to write table {table}")
        try:
            yield
        finally:
            lock.release()

    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.cursor
        cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except duckdb.Error:  # an interrupted transaction may already be gone
                pass
            raise
        cur.execute("COMMIT")

    def params_for(self, sql: str) -> dict[str, Any] | None:
        """The bound parameters `sql` uses (DuckDB refuses unused named parameters)."""
        used = {k: v for k, v in self.sql_params.items() if re.search(rf"\${k}\b", sql)}
        return used or None

    def query(self, sql: str) -> list[tuple]:
        return self.cursor.execute(sql, self.params_for(sql)).fetchall()

    def create_relation(
        self, select_sql: str, *, lazy: bool = True, name: str | None = None
    ) -> str:
        """Store `select_sql` as this stage's output (or `name`): a view when lazy, else a table.

        Views cannot hold bound parameters, so a query with parameters is always materialised.
        """
        params = self.params_for(select_sql)
        kind = "VIEW" if lazy and not params else "TABLE"
        name = name or self.output_name
        res = self.cursor.execute(f"CREATE OR REPLACE {kind} {name} AS {select_sql}", params)
        # CREATE TABLE AS answers with its row count: keep it rather than count again.
        self.created_rows = res.fetchall()[0][0] if kind == "TABLE" else None
        return name

    def create_from_frame(self, frame: Any) -> str:
        """Store a polars DataFrame or Arrow table as this stage's output table."""
        name = f"_frame_{self.stage.id}".replace("-", "_")
        self.cursor.register(name, frame)
        try:
            self.cursor.execute(
                f"CREATE OR REPLACE TABLE {self.output_name} AS SELECT * FROM {name}"
            )
        finally:
            self.cursor.unregister(name)
        return self.output_name

    def count(self, relation: str) -> int:
        return self.query(f"SELECT count(*) FROM {relation}")[0][0]

    def columns(self, relation: str) -> list[tuple[str, str]]:
        sql = f"SELECT * FROM {relation} LIMIT 0"
        rel = self.cursor.sql(sql, params=self.params_for(sql))
        return list(zip(rel.columns, [str(t) for t in rel.types], strict=True))

    @property
    def roots(self) -> tuple[Path, ...] | None:
        return self.path_roots if self.path_roots != () else (self.data_dir.resolve(),)

    def resolve_path(self, path: str, what: str = "path") -> Path:
        """`path` relative to the data dir; a StageError if it resolves (symlinks and `..`
        followed) outside the data roots."""
        from ..spec import data_path, outside_roots, path_refusal

        p = data_path(path, self.data_dir)
        roots = self.roots
        if roots is not None and outside_roots(p, roots):
            raise StageError(path_refusal(f"stage {self.stage.id!r}: `{what}`", path, roots))
        return p

    def check_inside_roots(self, found: Path, what: str) -> None:
        """A file a pattern matched must resolve inside the roots too (a symlink out of them)."""
        from ..spec import outside_roots, path_refusal

        roots = self.roots
        if roots is not None and outside_roots(found, roots):
            raise StageError(
                path_refusal(f"stage {self.stage.id!r}: `{what}` matched", str(found), roots)
            )

    def target_table(self, name: str) -> str:
        """A user table name (`t` or `schema.t`) qualified in the store's catalog."""
        schema, _, table = name.rpartition(".")
        return ".".join(quote_ident(x) for x in (self.store.catalog, schema or "main", table))
