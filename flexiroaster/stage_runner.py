"""One stage of a pipeline, run on its own: its inputs are Parquet files, its output becomes one.

This is how a pipeline runs across Airflow workers (`export-airflow --mode stages`): each
Airflow task runs one stage with this module — in the worker, on a throwaway store, or in the
runtime for the stages that read or write the runtime's own tables (`needs_store`) — and the
stages hand their data to each other as Parquet files under a shared warehouse path.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .connections import mask_values
from .engine import _run_stage, run_scope
from .errors import StageError, StageTimeout
from .secrets import Masker, Variables, references
from .settings import Settings
from .spec import Pipeline
from .stages import StageContext
from .store import Store
from .template import SqlParams
from .template import quote_ident as q


@dataclass
class StageOutcome:
    rows_in: int | None
    rows_out: int | None
    metrics: dict[str, Any]
    duration: float
    output: str | None  # the Parquet file written, or None for a stage without data out
    logs: list[tuple[str, str]] = field(default_factory=list)  # (level, message)


def needs_store(stage: Any) -> bool:
    """Whether the stage reads or writes tables of the runtime's store (then only the runtime,
    which owns the store file, may run it)."""
    cfg = stage.config
    if getattr(cfg, "connection", None):
        return True  # a stored connection's secrets are decrypted in the runtime alone
    if any(references(cfg.model_dump()).values()):
        return True  # so are stored variables and secrets (`{{ secrets.X }}`, `{{ vars.X }}`)
    if stage.type == "input":
        return cfg.table is not None
    if stage.type == "output":
        return cfg.destination != "file"
    if stage.type == "validation":
        return cfg.on_failure == "quarantine"
    return False


def _connections(store: Store, settings: Settings, pipeline: Pipeline, stage: Any) -> dict:
    """The stored connection the stage names, opened (checked as the engine checks a run)."""
    from .connections import Connections, check_uses

    name = getattr(stage.config, "connection", None)
    if not name:
        return {}
    found = Connections(store, settings).resolve({name})
    problems = check_uses([stage], found)
    if problems:
        raise StageError(problems[0])
    return found


def stage_file(warehouse: Path, run_id: str, stage_id: str) -> Path:
    """Where a stage's output is kept for the stages after it (ids may hold any character)."""
    safe = hashlib.sha1(stage_id.encode()).hexdigest()[:12]
    return warehouse / run_id / f"{safe}.parquet"


def _variables(store: Store, settings: Settings, stage: Any) -> dict[str, dict[str, str]]:
    """The stored variables and secrets the stage references (an unknown one is an error)."""
    refs = references(stage.config.model_dump())
    if not any(refs.values()):
        return {"secrets": {}, "vars": {}}
    found = Variables(store, settings).resolve(refs)
    missing = [f"{k}.{n}" for k, names in refs.items() for n in sorted(names) if n not in found[k]]
    if missing:
        raise StageError(f"stage {stage.id}: no stored {', '.join(missing)}")
    return found


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


def run_one_stage(
    store: Store,
    settings: Settings,
    pipeline: Pipeline,
    stage_id: str,
    *,
    run_id: str,
    params: dict[str, Any],
    stands_for: datetime,
    warehouse: Path,
    log: Callable[[str, str], None] | None = None,
) -> StageOutcome:
    """Run `stage_id` once with its dependencies' outputs read from the warehouse, and write
    its output there (atomically). Retries belong to the caller (Airflow); the stage's timeout
    is enforced here as the engine does (DuckDB interrupted, subprocesses killed)."""
    stage = next((s for s in pipeline.stages if s.id == stage_id), None)
    if stage is None:
        raise StageError(f"pipeline {pipeline.name} has no stage {stage_id!r}")
    logs: list[tuple[str, str]] = []
    conns = _connections(store, settings, pipeline, stage)
    stored = _variables(store, settings, stage)
    mask = Masker(
        [*(v for c in conns.values() for v in mask_values(c.secrets)), *stored["secrets"].values()]
    )

    def logger(level: str, message: str) -> None:
        message = mask(message)
        logs.append((level, message))
        if log is not None:
            log(level, message)

    inputs: dict[str, str] = {}
    unique = f"{run_id}/{stage_id}/{os.getpid()}/{time.time_ns()}"
    schema = f'scratch."s_{hashlib.sha1(unique.encode()).hexdigest()[:16]}"'
    cur = store.new_cursor()
    cur.execute(f"CREATE SCHEMA {schema}")
    rows_in = 0
    try:
        for dep in stage.dependencies:
            path = stage_file(warehouse, run_id, dep)
            if not path.exists():
                continue  # a dependency without data out (shell, notify ...)
            rel = f"{schema}.{q(dep)}"
            cur.execute(f"CREATE VIEW {rel} AS SELECT * FROM read_parquet('{_sql_str(str(path))}')")
            inputs[dep] = rel
            rows_in += cur.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0]
        sql_params = SqlParams()
        ctx = StageContext(
            run_id=run_id, pipeline=pipeline, stage=stage, config=None,
            sql_params=sql_params.values, inputs=inputs, store=store, schema=schema,
            data_dir=Path(settings.data_dir), logger=logger, cancel=threading.Event(),
            scope=run_scope(pipeline, params, run_id, stands_for, settings) | stored,
            rows_in=rows_in if inputs else None, connections=conns,
            path_roots=settings.path_roots,
        )  # fmt: skip
        timeout = stage.timeout or settings.default_timeout
        started = time.monotonic()
        pool = ThreadPoolExecutor(1, thread_name_prefix="stage")
        fut = pool.submit(_run_stage, ctx, sql_params)
        try:
            result = fut.result(timeout=timeout)
        except FutureTimeout:
            ctx.kill()  # a python stage cannot be killed: its thread is abandoned, as in the engine
            raise StageTimeout(f"stage timed out after {timeout:g} s") from None
        except Exception as exc:
            if not mask.values:
                raise
            text = exc.message if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
            raise StageError(mask(text)) from None  # a connection's secret never leaves masked
        finally:
            pool.shutdown(wait=False)
            ctx.close()
        output = None
        if result.relation is not None:
            final = stage_file(warehouse, run_id, stage_id)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_suffix(f".{os.getpid()}.tmp")
            cur.execute(
                f"COPY (SELECT * FROM {result.relation}) TO '{_sql_str(str(tmp))}' (FORMAT parquet)"
            )
            os.replace(tmp, final)
            output = str(final)
        return StageOutcome(
            rows_in=ctx.rows_in, rows_out=result.rows_out, metrics=mask(result.metrics),
            duration=time.monotonic() - started, output=output, logs=logs,
        )  # fmt: skip
    finally:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.close()
