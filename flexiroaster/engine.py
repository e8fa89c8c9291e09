"""The one run loop: ready stages to a bounded pool, retries, timeouts, cancel, skips, re-runs."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .connections import Connection, Connections, check_uses, mask_values, referenced
from .dag import downstream
from .errors import Conflict, FlexiError, SpecError, StageTimeout
from .records import ExecutionRecord, StageRecord, now
from .secrets import Masker, Variables, references
from .settings import Settings
from .spec import Pipeline, check_placeholders, load_pipeline_text, pipeline_to_yaml
from .stages import REGISTRY, StageContext, StageResult
from .states import RunStatus, StageStatus
from .store import Store
from .template import SqlParams, quote_ident, render_config

log = logging.getLogger(__name__)

# How long a killed stage gets to notice before the engine stops waiting for it.
KILL_GRACE = 2.0
Listener = Callable[[str, ExecutionRecord, StageRecord | None], None]


@dataclass
class _Attempt:
    stage: Any
    ctx: StageContext
    started: float
    deadline: float | None
    killed_for: str | None = None  # "timeout" or "cancel" once the engine has killed it
    killed_at: float | None = None


@dataclass
class _Run:
    pipeline: Pipeline
    record: ExecutionRecord
    stages: dict[str, StageRecord]
    scope: dict[str, Any]
    schema: str
    listener: Listener | None
    cancel: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, str | None] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)  # stage id -> spilled parquet to read
    done: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"
    mask: Masker = field(default_factory=Masker)  # this run's secret values -> ***
    # name -> the stored connections its stages use, secrets decrypted (resolved when prepared)
    connections: dict[str, Connection] = field(default_factory=dict, repr=False)


def run_scope(
    pipeline: Pipeline, params: dict[str, Any], run_id: str, stands_for: datetime, settings: Settings
) -> dict[str, Any]:
    """What `{{ ... }}` placeholders see. Run parameters win over variables and over the date
    builtins (a backfill passes its own run_date); run_id and pipeline always name this run.
    A scheduled run stands for its fire time (a catch-up run for a past day)."""
    return {
        "run_date": stands_for.date().isoformat(),
        "run_ts": stands_for.isoformat(),
        "data_dir": str(settings.data_dir),
        **pipeline.variables,
        **params,
        "run_id": run_id,
        "pipeline": pipeline.name,
    }


def new_run_id() -> str:
    """Time-ordered (milliseconds, then 32 random bits), so the store's rows for recent runs sit
    together and its zone maps skip the rest when a batch of run states is written."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


class Engine:
    """Runs pipelines against one Store. Thread-safe; any number of runs at once."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.variables = Variables(store, settings)
        self.connections = Connections(store, settings, self.variables.box)
        self.pool = ThreadPoolExecutor(settings.max_workers, thread_name_prefix="stage")
        self._active: dict[str, _Run] = {}  # every run not yet finished: queued or running
        self._running: dict[str, _Run] = {}  # runs started with submit() and still going
        self._queue: list[_Run] = []  # submitted runs waiting for their pipeline's slot
        self._lock = threading.Lock()
        # Called with each finished run's record, after it is recorded (event schedules).
        self.on_finish: list[Callable[[ExecutionRecord], None]] = []

    # --- public API -------------------------------------------------------------------------

    def run(
        self, pipeline: Pipeline, params: dict[str, Any] | None = None, **kw: Any
    ) -> ExecutionRecord:
        """Run a pipeline to the end in this thread; returns the final execution record."""
        run = self.prepare(pipeline, params, **kw)
        return self.execute(run)

    def submit(
        self, pipeline: Pipeline, params: dict[str, Any] | None = None, **kw: Any
    ) -> ExecutionRecord:
        """Start a run on its own coordinator thread, or queue it (pending) while its pipeline
        already has `max_active_runs` runs going. Returns the pending record at once."""
        run = self.prepare(pipeline, params, **kw)
        self._start_or_queue(run)
        return run.record

    async def submit_async(
        self, pipeline: Pipeline, params: dict[str, Any] | None = None, **kw: Any
    ) -> ExecutionRecord:
        """submit() for an event loop: waits for the run's row to be committed without holding
        a thread (the API's trigger)."""
        run, written = self._prepare(pipeline, params, **kw)
        await asyncio.wrap_future(written)
        self._register(run)
        self._start_or_queue(run)
        return run.record

    def release(self, execution_id: str) -> ExecutionRecord:
        """Start (or queue) a held run; Conflict if the run is not held."""
        self.store.check_writes()  # refused before the run changes: it stays held
        with self._lock:
            run = self._active.get(execution_id)
            if run is None or run.record.status != RunStatus.HELD:
                raise Conflict(f"run {execution_id} is not held; only held runs can be released")
            run.record.status = RunStatus.PENDING
        self.store.update_execution(run.record, wait=True)
        self._start_or_queue(run)
        return run.record

    def log_held(self, rec: ExecutionRecord, why: str) -> None:
        """A held run's log says why it waits."""
        with self._lock:
            run = self._active.get(rec.id)
        if run is not None:
            self._log(run, None, "WARN", f"held by the risk gate until a person releases it: {why}")

    def _start_or_queue(self, run: _Run) -> None:
        if run.record.status == RunStatus.HELD:
            return  # it waits in _active until release() or cancel()
        with self._lock:
            name = run.pipeline.name
            busy = sum(1 for r in self._running.values() if r.pipeline.name == name)
            if busy >= run.pipeline.max_active_runs:
                self._queue.append(run)
            else:
                self._start(run)

    def _start(self, run: _Run, *, takes_slot: bool = True) -> None:
        """Start a run's coordinator thread; the caller holds the lock."""
        if takes_slot:
            self._running[run.record.id] = run
        threading.Thread(
            target=self.execute, args=(run,), name=f"run-{run.record.id}", daemon=True
        ).start()

    def queued(self) -> int:
        """Runs waiting for a slot (pending)."""
        with self._lock:
            return len(self._queue)

    def prepare(self, pipeline: Pipeline, params: dict[str, Any] | None = None, **kw: Any) -> _Run:
        """Create a run (pending, committed to the store) ready for execute()."""
        run, written = self._prepare(pipeline, params, **kw)
        written.result()
        self._register(run)
        return run

    def _register(self, run: _Run) -> None:
        with self._lock:
            self._active[run.record.id] = run

    def _prepare(
        self,
        pipeline: Pipeline,
        params: dict[str, Any] | None = None,
        *,
        trigger: str = "manual",
        listener: Listener | None = None,
        retry_of: ExecutionRecord | None = None,
        run_id: str | None = None,
        scheduled_for: datetime | None = None,
        held: bool = False,
        lineage: dict[str, Any] | None = None,
    ) -> tuple[_Run, Future[None]]:
        params = dict(params or {})
        refs = references([s.config.model_dump() for s in pipeline.stages])
        stored = self.variables.resolve(refs)
        check_placeholders(
            pipeline, f"pipeline {pipeline.name}", None, params, {k: set(v) for k, v in stored.items()}
        )
        conns = self.resolve_connections(pipeline)
        run_id = run_id or new_run_id()
        created = now()
        record = ExecutionRecord(
            id=run_id,
            pipeline_id=pipeline.id,
            pipeline_version=pipeline.version,
            status=RunStatus.HELD if held else RunStatus.PENDING,
            trigger=trigger,
            params=params,
            created_at=created,
            total_stages=len(pipeline.stages),
            retry_of=retry_of.id if retry_of else None,
            pid=os.getpid(),
            spec_yaml=pipeline_to_yaml(pipeline),
            scheduled_for=scheduled_for,
            lineage=lineage,
        )
        stages = {s.id: StageRecord(run_id, s.id, s.type, i) for i, s in enumerate(pipeline.stages)}
        scope = run_scope(pipeline, params, run_id, scheduled_for or created, self.settings)
        scope.update(stored)  # secrets and vars live only in the scope, never in params
        run = _Run(pipeline, record, stages, scope, f'scratch."r_{run_id}"', listener)
        run.connections = conns
        run.mask = Masker(
            list(stored["secrets"].values()) + [v for c in conns.values() for v in mask_values(c.secrets)]
        )
        if retry_of is not None:
            self._plan_reuse(run, retry_of)
        return run, self.store.insert_execution_async(record, list(stages.values()))

    def resolve_connections(self, pipeline: Pipeline) -> dict[str, Connection]:
        """The stored connections the pipeline's stages use, opened; a SpecError before the run
        names each unknown one and each of a type its stage cannot use."""
        names = set(referenced(pipeline))
        if not names:
            return {}
        found = self.connections.resolve(names)
        problems = check_uses(pipeline.stages, found)
        if problems:
            raise SpecError(
                f"pipeline {pipeline.name}: {len(problems)} connection problem(s)", details=problems
            )
        return found

    def retry(self, execution_id: str, **kw: Any) -> ExecutionRecord:
        """Re-run a failed or cancelled run from where it stopped, reusing completed stages."""
        old, pipeline = self._retry_source(execution_id)
        return self.run(pipeline, old.params, retry_of=old, **kw)

    def _retry_source(self, execution_id: str) -> tuple[ExecutionRecord, Pipeline]:
        old = self.store.get_execution(execution_id)
        if old.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise Conflict(
                f"run {execution_id} is {old.status}; only failed or cancelled runs can be retried"
            )
        return old, load_pipeline_text(old.spec_yaml, f"run {execution_id}", old.params)

    def cancel(self, execution_id: str, reason: str = "cancelled") -> bool:
        """Ask a run to stop: running stages are killed, the rest skipped. False if not active."""
        with self._lock:
            run = self._active.get(execution_id)
        if run is None:
            return False
        run.cancel_reason = reason
        run.cancel.set()
        with self._lock:
            held = run.record.status == RunStatus.HELD
            if run in self._queue or held:  # never started: let it record itself cancelled now
                if not held:
                    self._queue.remove(run)
                self._start(run, takes_slot=False)
        return True

    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def pipeline_of(self, execution_id: str) -> str | None:
        with self._lock:
            run = self._active.get(execution_id)
        return run.pipeline.id if run else None

    def live(self, execution_id: str) -> ExecutionRecord | None:
        """The in-memory record of an active run (fresher than the store's row), or None."""
        with self._lock:
            run = self._active.get(execution_id)
        return run.record if run else None

    def submit_retry(self, execution_id: str, **kw: Any) -> ExecutionRecord:
        """Like retry(), but the new run goes through submit() and this returns at once."""
        old, pipeline = self._retry_source(execution_id)
        return self.submit(pipeline, old.params, retry_of=old, **kw)

    def wait(self, execution_id: str, timeout: float | None = None) -> bool:
        with self._lock:
            run = self._active.get(execution_id)
        return True if run is None else run.done.wait(timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every active run and wait for them to be recorded."""
        with self._lock:
            runs = list(self._active.values())
        for run in runs:
            self.cancel(run.record.id, "cancelled: the runtime stopped")
        for run in runs:
            run.done.wait(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- the loop ---------------------------------------------------------------------------

    def execute(self, run: _Run) -> ExecutionRecord:
        rec = run.record
        cur = None
        try:
            rec.status, rec.started_at = RunStatus.RUNNING, now()
            self.store.update_execution(rec)  # queued: written with the next flush
            self._emit(run, "run_started")
            self._log(
                run,
                None,
                "INFO",
                f"run started ({len(run.pipeline.stages)} stages, trigger {rec.trigger})",
            )
            cur = self.store.new_cursor()
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {run.schema}")
            for stage_id, path in run.reused.items():
                rel = f"{run.schema}.{quote_ident(stage_id)}"
                cur.execute(f"CREATE VIEW {rel} AS SELECT * FROM read_parquet('{_sql_str(path)}')")
                run.outputs[stage_id] = rel
            self._loop(run)
        except Exception as exc:  # engine trouble, not a stage failure: record it, never crash
            log.exception("engine error in run %s", rec.id)
            rec.error = f"engine error: {type(exc).__name__}: {exc}"
            for s in run.stages.values():
                if s.status not in StageStatus.terminal():
                    self._finish_stage(run, s, StageStatus.FAILED, error="engine error")
        self._finish_run(run, cur)
        return rec

    def _loop(self, run: _Run) -> None:
        order = [s for s in run.pipeline.stages if run.stages[s.id].status == StageStatus.PENDING]
        limit = run.pipeline.max_workers or self.settings.max_workers
        running: dict[Future, _Attempt] = {}
        delayed: dict[str, float] = {}  # stage id -> monotonic time its retry may start
        while True:
            if run.cancel.is_set():
                self._cancel_all(run, running, delayed)
                return
            current = time.monotonic()
            for sid, ready_at in list(delayed.items()):
                if ready_at <= current:
                    del delayed[sid]
                    run.stages[sid].status = StageStatus.PENDING
            for stage in order:
                srec = run.stages[stage.id]
                if srec.status != StageStatus.PENDING:
                    continue
                blocked = [d for d in stage.dependencies if run.stages[d].status in _BLOCKING]
                if blocked:
                    cause = run.stages[blocked[0]].status
                    self._finish_stage(
                        run, srec, StageStatus.SKIPPED, error=f"upstream `{blocked[0]}` {cause}"
                    )
                    continue
                if len(running) < limit and all(
                    run.stages[d].status == StageStatus.COMPLETED for d in stage.dependencies
                ):
                    attempt = self._launch(run, stage)
                    running[attempt[0]] = attempt[1]
            if not running and not delayed:
                return
            waits = [a.deadline for a in running.values() if a.deadline and not a.killed_for]
            waits += [a.killed_at + KILL_GRACE for a in running.values() if a.killed_at]
            waits += list(delayed.values())
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
            # Wake at least every 0.1 s to notice a cancel.
            timeout = 0.1 if timeout is None else min(timeout, 0.1)
            if running:
                done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            else:
                run.cancel.wait(timeout)
                done = set()
            for fut in done:
                self._settle(run, running.pop(fut), fut, delayed)
            self._enforce_deadlines(run, running, delayed)

    def _launch(self, run: _Run, stage: Any) -> tuple[Future, _Attempt]:
        srec = run.stages[stage.id]
        srec.status = StageStatus.RUNNING
        srec.attempts += 1
        if srec.started_at is None:
            srec.started_at = now()
        srec.rows_in = _sum(run.stages[d].rows_out for d in stage.dependencies)
        self.store.record_stage(srec)
        self._emit(run, "stage_started", srec)
        suffix = f" (attempt {srec.attempts})" if srec.attempts > 1 else ""
        self._log(run, stage.id, "INFO", f"stage {stage.id} ({stage.type}) started{suffix}")
        sql_params = SqlParams()
        ctx = StageContext(
            run_id=run.record.id,
            pipeline=run.pipeline,
            stage=stage,
            config=None,
            sql_params=sql_params.values,
            inputs={d: run.outputs[d] for d in stage.dependencies if run.outputs.get(d)},
            store=self.store,
            schema=run.schema,
            data_dir=Path(self.settings.data_dir),
            logger=lambda level, msg, sid=stage.id: self._log(run, sid, level, msg),
            cancel=run.cancel,
            scope=run.scope,
            rows_in=srec.rows_in,
            connections=_connections_of(stage, run.connections),
            path_roots=self.settings.path_roots,
        )
        timeout = stage.timeout or self.settings.default_timeout
        started = time.monotonic()
        attempt = _Attempt(stage, ctx, started, started + timeout if timeout else None)
        fut = self.pool.submit(_run_stage, ctx, sql_params)
        return fut, attempt

    def _settle(self, run: _Run, attempt: _Attempt, fut: Future, delayed: dict[str, float]) -> None:
        stage, srec = attempt.stage, run.stages[attempt.stage.id]
        exc = fut.exception()
        if attempt.killed_for == "timeout" and exc is not None:
            exc = StageTimeout(
                f"stage timed out after {stage.timeout or self.settings.default_timeout:g} s"
            )
        if exc is None and not run.cancel.is_set():
            result: StageResult = fut.result()
            run.outputs[stage.id] = result.relation
            srec.rows_out = result.rows_out
            srec.metrics = run.mask(result.metrics)
            srec.error = srec.error_type = srec.traceback = None
            self._finish_stage(run, srec, StageStatus.COMPLETED)
            attempt.ctx.close()
            return
        attempt.ctx.close()
        if run.cancel.is_set() or attempt.killed_for == "cancel":
            self._finish_stage(run, srec, StageStatus.CANCELLED, error="run cancelled")
            return
        self._fail_attempt(run, stage, srec, exc, delayed)

    def _fail_attempt(
        self, run: _Run, stage: Any, srec: StageRecord, exc: BaseException, delayed: dict
    ) -> None:
        srec.error_type = type(exc).__name__
        srec.error = run.mask(str(exc))
        srec.traceback = (
            None if isinstance(exc, FlexiError) else run.mask("".join(traceback.format_exception(exc)))
        )
        if srec.attempts <= stage.retries:
            delay = stage.retry_delay * 2 ** (srec.attempts - 1)
            srec.status = StageStatus.RETRYING
            delayed[stage.id] = time.monotonic() + delay
            self.store.record_stage(srec)
            self._emit(run, "stage_retrying", srec)
            self._log(
                run, stage.id, "WARN",
                f"attempt {srec.attempts} failed ({srec.error_type}: {srec.error}); retrying in {delay:g} s",
            )  # fmt: skip
            return
        self._finish_stage(run, srec, StageStatus.FAILED, error=srec.error)

    def _enforce_deadlines(self, run: _Run, running: dict[Future, _Attempt], delayed: dict) -> None:
        current = time.monotonic()
        for fut, attempt in list(running.items()):
            if attempt.killed_for is None and attempt.deadline and current >= attempt.deadline:
                attempt.killed_for, attempt.killed_at = "timeout", current
                self._log(
                    run,
                    attempt.stage.id,
                    "WARN",
                    f"stage {attempt.stage.id} exceeded its timeout; stopping it",
                )
                attempt.ctx.kill()
            elif attempt.killed_at and current >= attempt.killed_at + KILL_GRACE:
                # Python code cannot be killed inside a thread: stop waiting and let it finish unseen.
                del running[fut]
                exc = StageTimeout(
                    f"stage timed out after {attempt.stage.timeout:g} s (left running, result discarded)"
                )
                self._fail_attempt(run, attempt.stage, run.stages[attempt.stage.id], exc, delayed)

    def _cancel_all(self, run: _Run, running: dict[Future, _Attempt], delayed: dict) -> None:
        self._log(run, None, "WARN", "run cancelled; stopping running stages")
        for attempt in running.values():
            attempt.killed_for = "cancel"
            attempt.ctx.kill()
        wait(list(running), timeout=KILL_GRACE)
        for attempt in running.values():
            self._finish_stage(
                run, run.stages[attempt.stage.id], StageStatus.CANCELLED, error="run cancelled"
            )
        for srec in run.stages.values():
            if srec.status not in StageStatus.terminal():
                self._finish_stage(run, srec, StageStatus.SKIPPED, error="run cancelled")

    # --- recording --------------------------------------------------------------------------

    def _finish_stage(
        self, run: _Run, srec: StageRecord, status: StageStatus, error: str | None = None
    ) -> None:
        srec.status = status
        srec.completed_at = now()
        if srec.started_at:
            srec.duration = (srec.completed_at - srec.started_at).total_seconds()
        if status != StageStatus.COMPLETED:
            srec.error = error = run.mask(error)
        else:
            run.record.stages_completed += 1
        self.store.record_stage(srec)
        self._emit(run, f"stage_{status}", srec)
        if status == StageStatus.COMPLETED:
            rows = f", {srec.rows_out} rows" if srec.rows_out is not None else ""
            self._log(
                run,
                srec.stage_id,
                "INFO",
                f"stage {srec.stage_id} completed in {srec.duration:.3f} s{rows}",
            )
        elif status == StageStatus.FAILED:
            self._log(
                run,
                srec.stage_id,
                "ERROR",
                f"stage {srec.stage_id} failed: {srec.error_type or ''} {error}".strip(),
            )
        else:
            self._log(run, srec.stage_id, "WARN", f"stage {srec.stage_id} {status}: {error}")

    def _finish_run(self, run: _Run, cur: Any) -> None:
        rec = run.record
        statuses = {s.status for s in run.stages.values()}
        if run.cancel.is_set():
            rec.status = RunStatus.CANCELLED
            rec.error = rec.error or run.cancel_reason
        elif rec.error or statuses & {
            StageStatus.FAILED,
            StageStatus.SKIPPED,
            StageStatus.CANCELLED,
        }:
            rec.status = RunStatus.FAILED
            failed = [s for s in run.stages.values() if s.status == StageStatus.FAILED]
            if failed and not rec.error:
                rec.error = f"stage {failed[0].stage_id} failed: {failed[0].error}"
        else:
            rec.status = RunStatus.COMPLETED
        if cur is not None:
            if rec.status != RunStatus.COMPLETED:
                self._spill(run, cur)
            try:
                cur.execute(f"DROP SCHEMA IF EXISTS {run.schema} CASCADE")
            except Exception:
                log.exception("could not drop scratch schema of run %s", rec.id)
        rec.completed_at = now()
        rec.error = run.mask(rec.error)
        self._log(
            run,
            None,
            "INFO" if rec.status == RunStatus.COMPLETED else "ERROR",
            f"run {rec.status}"
            + (f": {rec.error}" if rec.error and rec.status != RunStatus.COMPLETED else ""),
        )
        # Queued, not waited for: runs finishing close together share one commit. Whoever reads
        # the run back (API, CLI) goes through the store, which commits what is queued first,
        # so no outcome is reported before it is durable.
        self.store.update_execution(rec)
        if cur is not None:
            cur.close()  # before `done`: nothing of this run may touch DuckDB after waiters wake
        with self._lock:
            self._active.pop(rec.id, None)
            if self._running.pop(rec.id, None) is not None:
                self._start_next(run.pipeline.name)
        run.done.set()
        self._emit(run, "run_finished")
        for callback in list(self.on_finish):
            try:
                callback(rec)
            except Exception:  # a subscriber's trouble never breaks the engine
                log.exception("run-finished callback failed for run %s", rec.id)

    def _start_next(self, pipeline_name: str) -> None:
        """A slot of `pipeline_name` freed: start its oldest queued run. The caller holds the lock."""
        busy = sum(1 for r in self._running.values() if r.pipeline.name == pipeline_name)
        for i, queued in enumerate(self._queue):
            if queued.pipeline.name == pipeline_name and busy < queued.pipeline.max_active_runs:
                del self._queue[i]
                self._start(queued)
                return

    def _spill(self, run: _Run, cur: Any) -> None:
        """Keep completed outputs that unfinished stages need, so a retry can start from them."""
        unfinished = {sid for sid, s in run.stages.items() if s.status != StageStatus.COMPLETED}
        needed = {d for s in run.pipeline.stages if s.id in unfinished for d in s.dependencies}
        work = self.work_dir(run.record.id)
        for sid in sorted(needed - unfinished):
            rel = run.outputs.get(sid)
            if not rel:
                continue
            work.mkdir(parents=True, exist_ok=True)
            path = work / f"{sid}.parquet"
            try:
                cur.execute(
                    f"COPY (SELECT * FROM {rel}) TO '{_sql_str(str(path))}' (FORMAT parquet)"
                )
            except Exception as exc:
                self._log(
                    run, sid, "WARN", f"could not keep the output of {sid} for a retry: {exc}"
                )

    def work_dir(self, run_id: str) -> Path:
        return Path(self.settings.data_dir) / "work" / run_id

    def _plan_reuse(self, run: _Run, old: ExecutionRecord) -> None:
        """Mark stages completed in `old` as reused, where their outputs (if needed) were kept."""
        old_stages = {s.stage_id: s for s in self.store.get_stages(old.id)}
        done = {
            sid
            for sid, s in old_stages.items()
            if s.status == StageStatus.COMPLETED and sid in run.stages
        }
        pipe = run.pipeline
        rerun = set(run.stages) - done
        while True:  # a needed output that was not kept means that stage runs again too
            needed = {d for s in pipe.stages if s.id in rerun for d in s.dependencies} - rerun
            # Stages with no output (shell, notify) have nothing to keep.
            lost = {
                d for d in needed
                if old_stages[d].rows_out is not None and not (self.work_dir(old.id) / f"{d}.parquet").exists()
            }  # fmt: skip
            if not lost:
                break
            rerun |= lost | {x for d in lost for x in downstream(pipe, d)}
        for sid in set(run.stages) - rerun:
            o, srec = old_stages[sid], run.stages[sid]
            srec.status, srec.rows_in, srec.rows_out = StageStatus.COMPLETED, o.rows_in, o.rows_out
            srec.metrics, srec.reused_from = o.metrics, o.reused_from or old.id
            srec.started_at, srec.completed_at, srec.duration = (
                o.started_at,
                o.completed_at,
                o.duration,
            )
            run.record.stages_completed += 1
            spilled = self.work_dir(old.id) / f"{sid}.parquet"
            if sid in needed and spilled.exists():
                run.reused[sid] = str(spilled)

    def _emit(self, run: _Run, event: str, srec: StageRecord | None = None) -> None:
        if run.listener:
            try:
                run.listener(event, run.record, srec)
            except Exception:
                log.exception("run listener failed")

    def _log(self, run: _Run, stage_id: str | None, level: str, message: str) -> None:
        self.store.log(run.record.id, stage_id, level, run.mask(message))


_BLOCKING = frozenset({StageStatus.FAILED, StageStatus.SKIPPED, StageStatus.CANCELLED})


def _run_stage(ctx: StageContext, sql_params: SqlParams) -> StageResult:
    """One attempt, on a pool thread: fill placeholders, then the stage type's own code."""
    stage = ctx.stage
    raw = stage.config.model_dump(mode="json", exclude_none=True)
    ctx.config = type(stage.config).model_validate(render_config(raw, ctx.scope, sql_params))
    ctx.check_cancelled()
    return REGISTRY[stage.type](ctx)


def _connections_of(stage: Any, resolved: dict[str, Connection]) -> dict[str, Connection]:
    """The one connection a stage names (a stage sees no other connection's secrets)."""
    name = getattr(stage.config, "connection", None)
    return {name: resolved[name]} if name in resolved else {}


def _sum(values: Any) -> int | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _sql_str(text: str) -> str:
    return text.replace("'", "''")
