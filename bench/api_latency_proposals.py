"""Prototypes of the changes bench/api_latency.md proposes, measured with the same load.

Nothing in flexiroaster/ is edited: each proposal is applied by monkeypatching in this process,
which then serves the API exactly as `flexiroaster serve` does (Runtime + create_app + uvicorn)
while the load generator of bench/api_latency.py drives it from another process. Every variant
gets a fresh copy of the same 100k-run store.

Proposals (see bench/api_latency.md for the reasoning and the profile behind each):
  list-query     Store.list_executions: the page query filters on `created_at >= cutoff` before
                 its top-N (a window holding the newest offset+limit rows, guessed from the
                 total, min and max created_at and checked with a count) and leaves out
                 spec_yaml, which the list response never shows.
  async-deps     the `runtime` dependency as `async def`: one thread-pool hop less per request.
  pipeline-cache Runtime.get_pipeline keeps the parsed pipeline per (id, stored version) instead
                 of parsing and validating the YAML on every trigger.
  write-behind   Store.insert_execution / update_execution queue the row like stage states and
                 log lines already are; the flusher writes all queued rows in one transaction
                 (readers flush first). Runs no longer cost a synchronous transaction each.
  async-trigger  POST /executions as `async def` on the event loop, with no DuckDB call on its
                 path: the store keeps stored pipelines' rows in memory (it is their only
                 writer: save and delete refresh it); needs write-behind and pipeline-cache to
                 be free of blocking work.
  threads-1      (experiment, not in "all") `SET threads = 1` on the store's DuckDB: many small
                 concurrent queries instead of a few parallel ones.
  switch-1ms     (experiment, not in "all") sys.setswitchinterval(0.001): a thread waiting for
                 the GIL gets it after 1 ms instead of 5 ms.

    .venv/bin/python bench/api_latency_proposals.py --quick                  # as-is vs all
    .venv/bin/python bench/api_latency_proposals.py --variants as-is,list-query --phases list

These are prototypes to size the gains, not finished implementations (the write-behind one
leaves out, e.g., a write error surfacing to the run that caused it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_latency as bench  # noqa: E402

ALL = ["list-query", "async-deps", "pipeline-cache", "write-behind", "async-trigger"]
EXTRA = ["threads-1", "switch-1ms"]  # not in "all": experiments, see bench/api_latency.md


# --- the prototypes --------------------------------------------------------------------------


def patch_list_query() -> None:
    from flexiroaster.records import execution_from_row
    from flexiroaster.store import Store

    def list_executions(
        self, *, pipeline_id=None, status=None, since=None, until=None, limit=50, offset=0
    ):
        if getattr(self, "_exec_buf", None):
            self.flush()
        where, args = ["true"], []
        for cond, value in (
            ("pipeline_id = ?", pipeline_id),
            ("status = ?", status),
            ("created_at >= ?", since),
            ("created_at < ?", until),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        cond = " AND ".join(where)
        cur = self.cursor()
        want = int(offset) + int(limit)
        total, lo, hi = self._exec(
            cur,
            f"SELECT count(*), min(created_at), max(created_at) FROM flexiroaster.executions"
            f" WHERE {cond}",
            args,
        ).fetchall()[0]
        if not total or offset >= total:
            return [], total
        # The wanted rows are the newest `want`: guess a created_at window holding them (twice
        # the share of the time span, as if runs came evenly), check it with a count, widen.
        frac = min(1.0, 2.0 * want / total)
        while True:
            cutoff = lo if frac >= 1.0 else hi - (hi - lo) * frac
            if frac >= 1.0:
                break
            n = self._exec(
                cur,
                f"SELECT count(*) FROM flexiroaster.executions WHERE {cond} AND created_at >= ?",
                [*args, cutoff],
            ).fetchall()[0][0]
            if n >= want:
                break
            frac *= 4
        res = self._exec(
            cur,
            f"SELECT * EXCLUDE (spec_yaml) FROM flexiroaster.executions"
            f" WHERE {cond} AND created_at >= ?"
            f" ORDER BY created_at DESC, id DESC LIMIT {int(limit)} OFFSET {int(offset)}",
            [*args, cutoff],
        )
        names = [d[0] for d in res.description]
        rows = [dict(zip(names, r, strict=True)) for r in res.fetchall()]
        return [execution_from_row(r) for r in rows], total

    Store.list_executions = list_executions


def patch_async_deps(app) -> None:
    from flexiroaster.api import deps

    async def runtime(request):
        return request.app.state.runtime

    from fastapi import Request

    runtime.__annotations__ = {"request": Request}
    app.dependency_overrides[deps.runtime] = runtime


def patch_pipeline_cache() -> None:
    from flexiroaster.runtime import LoadedPipeline, Runtime
    from flexiroaster.spec import load_pipeline_text

    def get_pipeline(self, pipeline_id):
        rec = self.store.get_pipeline(pipeline_id)
        cache = self.__dict__.setdefault("_parsed", {})
        hit = cache.get(pipeline_id)
        if hit is None or hit[0] != (rec.version, rec.updated_at):
            hit = (
                (rec.version, rec.updated_at),
                load_pipeline_text(rec.spec_yaml, f"pipeline {pipeline_id}"),
            )
            cache[pipeline_id] = hit
        return LoadedPipeline(rec, hit[1])

    Runtime.get_pipeline = get_pipeline


def patch_write_behind() -> None:
    import contextlib

    import pyarrow as pa

    from flexiroaster.records import EXEC_COLS, db_value
    from flexiroaster.store import Store

    # Store.flush takes _flush_lock and calls _flush (stage states and log lines); older
    # versions had flush alone. Run rows are written first, under the same lock.
    inner = getattr(Store, "_flush", None) or Store.flush

    def queue(self, rec, new: bool) -> None:
        snap = dataclasses.replace(rec, params=dict(rec.params))
        with self._buf_lock:
            buf = self.__dict__.setdefault("_exec_buf", {})
            was_new = buf.get(rec.id, (None, False))[1]
            buf[rec.id] = (snap, new or was_new)

    def insert_execution(self, rec, stages) -> None:
        queue(self, rec, True)
        for s in stages:
            self.record_stage(s)

    def update_execution(self, rec, **_ignored) -> None:  # e.g. flush=False: queued either way
        queue(self, rec, False)

    def write_runs(self) -> None:
        with self._buf_lock:
            buf = self.__dict__.get("_exec_buf") or {}
            self._exec_buf = {}
        if not buf:
            return
        new = [r for r, is_new in buf.values() if is_new]
        old = [r for r, is_new in buf.values() if not is_new]
        try:
            with self.transaction() as cur:
                if new:
                    cols = {c: [db_value(c, getattr(r, c)) for r in new] for c in EXEC_COLS}
                    self._insert_arrow(
                        cur, pa.table(cols), "INSERT INTO flexiroaster.executions", EXEC_COLS
                    )
                if old:
                    cols = {c: [db_value(c, getattr(r, c)) for r in old] for c in EXEC_COLS}
                    sets = ", ".join(f"{c} = _batch.{c}" for c in EXEC_COLS if c != "id")
                    cur.register("_batch", pa.table(cols))
                    try:
                        self._exec(
                            cur,
                            f"UPDATE flexiroaster.executions SET {sets} FROM _batch"
                            " WHERE executions.id = _batch.id",
                        )
                    finally:
                        cur.unregister("_batch")
        except Exception:
            with self._buf_lock:  # put them back; newer states win
                for k, v in buf.items():
                    self._exec_buf.setdefault(k, v)
            raise

    def flush(self) -> None:
        with getattr(self, "_flush_lock", None) or contextlib.nullcontext():
            write_runs(self)
            inner(self)

    def reading(method):
        def wrapper(self, *a, **kw):
            if self.__dict__.get("_exec_buf"):
                self.flush()
            return method(self, *a, **kw)

        return wrapper

    Store.insert_execution = insert_execution
    Store.update_execution = update_execution
    Store.flush = flush
    for name in ("get_execution", "list_executions", "query"):
        setattr(Store, name, reading(getattr(Store, name)))


def patch_async_trigger() -> None:
    """Before create_app: swap the POST /executions route for an async one; cache pipeline rows."""
    from fastapi import Depends, Request

    from flexiroaster.api import executions
    from flexiroaster.api.deps import require_token
    from flexiroaster.api.models import ExecutionOut, TriggerIn
    from flexiroaster.store import Store

    get, save, delete = Store.get_pipeline, Store.save_pipeline, Store.delete_pipeline

    def get_pipeline(self, pipeline_id):
        cache = self.__dict__.setdefault("_pipeline_rows", {})
        if pipeline_id not in cache:
            cache[pipeline_id] = get(self, pipeline_id)
        return cache[pipeline_id]

    def save_pipeline(self, pipeline_id, *a, **kw):
        rec = save(self, pipeline_id, *a, **kw)
        self.__dict__.setdefault("_pipeline_rows", {})[pipeline_id] = rec
        return rec

    def delete_pipeline(self, pipeline_id):
        self.__dict__.setdefault("_pipeline_rows", {}).pop(pipeline_id, None)
        delete(self, pipeline_id)

    Store.get_pipeline, Store.save_pipeline = get_pipeline, save_pipeline
    Store.delete_pipeline = delete_pipeline

    async def trigger(body: TriggerIn, request: Request) -> ExecutionOut:
        rt = request.app.state.runtime
        return ExecutionOut.of(rt.trigger(body.pipeline_id, body.params, trigger="api"))

    # real classes, not the strings `from __future__ import annotations` leaves
    trigger.__annotations__ = {"body": TriggerIn, "request": Request, "return": ExecutionOut}
    router = executions.router
    router.routes = [
        r for r in router.routes if not (r.path == "/executions" and "POST" in r.methods)
    ]

    router.post(
        "", status_code=202, response_model=ExecutionOut, dependencies=[Depends(require_token)]
    )(trigger)


# --- one variant -----------------------------------------------------------------------------


def serve_variant(data_dir: Path, patches: list[str], phases: list, duration: float, workers: int):
    import uvicorn

    from flexiroaster.api import create_app
    from flexiroaster.runtime import Runtime
    from flexiroaster.settings import load_settings

    port = bench.free_port()
    url = f"http://127.0.0.1:{port}"
    runtime = Runtime(load_settings(data_dir=data_dir, port=port))
    if "threads-1" in patches:
        runtime.store.query("SET threads = 1")
    app = create_app(runtime=runtime, close_runtime=True)
    if "async-deps" in patches:
        patch_async_deps(app)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    rows: list[dict] = []

    def drive() -> None:
        try:
            while not server.started:
                time.sleep(0.05)
            started = datetime.now(UTC)
            sampler = bench.RssPeak(os.getpid())
            for name, targets, rate in phases:
                sampler.take()
                c0 = time.process_time()
                out = bench.run_phase(url, targets, rate, duration, workers)
                s = bench.summarize(name, out, rate)
                s["server_cpu_ms_per_req"] = (time.process_time() - c0) * 1000 / s["requests"]
                s["rss_peak_mb"] = sampler.take()
                rows.append(s)
                if len(targets) > 1:
                    rows.extend(bench.summarize(name, out, rate, t[0]) for t in targets)
                if name == "trigger":
                    c0 = time.process_time()
                    waited, _ = bench.wait_drained(url, timeout=300)
                    s["drain_s"], s["drain_cpu_s"] = waited, time.process_time() - c0
                    # every triggered run must have finished, with its stage row, in the store
                    s["triggered_runs"] = runtime.store.query(
                        "SELECT e.status, count(DISTINCT e.id), count(s.stage_id)"
                        " FROM flexiroaster.executions e LEFT JOIN flexiroaster.stage_executions s"
                        " ON s.execution_id = e.id WHERE e.pipeline_id = ? AND e.created_at >= ?"
                        " GROUP BY 1",
                        [bench.pipeline_id(bench.TRIVIAL_NAME), started],
                    )
        finally:
            server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    try:
        server.run()
    finally:
        runtime.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 s phases instead of 15 s")
    ap.add_argument("--duration", type=float)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument(
        "--variants",
        default="as-is,all",
        help=f"comma list of as-is, all, {', '.join(ALL + EXTRA)}; join several with +",
    )
    ap.add_argument("--phases", default="health,list,trigger", help="of health, list, trigger")
    ap.add_argument("--trigger-rate", type=float, default=100.0)
    ap.add_argument("--list-rate", type=float, default=50.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child: run one variant
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    duration = args.duration or (5.0 if args.quick else 15.0)
    wanted = args.phases.split(",")
    phases = [p for p in bench.make_phases(args.trigger_rate, args.list_rate) if p[0] in wanted]

    if args.variant is not None:  # a fresh process per variant: patches never leak across
        patches = []
        for part in args.variant.split("+"):
            patches += ALL if part == "all" else [] if part == "as-is" else [part]
        unknown = set(patches) - set(ALL + EXTRA)
        if unknown:
            raise SystemExit(f"unknown variant part(s): {', '.join(sorted(unknown))}")
        if "switch-1ms" in patches:
            sys.setswitchinterval(0.001)
        if "list-query" in patches:
            patch_list_query()
        if "pipeline-cache" in patches:
            patch_pipeline_cache()
        if "write-behind" in patches:
            patch_write_behind()
        if "async-trigger" in patches:
            patch_async_trigger()
        rows = serve_variant(Path(args.data), patches, phases, duration, args.workers)
        print("@@" + json.dumps(rows))
        return 0

    print(f"api_latency_proposals: {bench.machine()}; code {bench.revision()}")
    base = Path(tempfile.mkdtemp(prefix="flexi-api-prop-"))
    results = {}
    try:
        hist = bench.build_store(base, args.runs)
        print(f"history: {hist['runs']:,} runs; phases {duration:g} s each")
        for variant in args.variants.split(","):
            data = base / variant.replace("+", "_")
            data.mkdir()
            shutil.copy(base / "flexiroaster.duckdb", data / "flexiroaster.duckdb")
            cmd = [sys.executable, __file__, "--variant", variant, "--data", str(data)]
            cmd += [
                "--duration",
                str(duration),
                "--phases",
                args.phases,
                "--workers",
                str(args.workers),
            ]
            cmd += ["--trigger-rate", str(args.trigger_rate), "--list-rate", str(args.list_rate)]
            import subprocess

            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            line = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
            if proc.returncode != 0 or not line:
                print(f"{variant}: failed\n{proc.stderr[-3000:]}")
                continue
            rows = json.loads(line[0][2:])
            results[variant] = rows
            print(f"\n== {variant}")
            bench.print_table(rows)
            print(
                "   server RSS peak per phase: "
                + ", ".join(
                    f"{r['phase']} {r['rss_peak_mb']:.0f} MB" for r in rows if "rss_peak_mb" in r
                )
            )
            for r in rows:
                if "drain_s" in r:
                    print(
                        f"   after the trigger phase: drained in {r['drain_s']:.1f} s"
                        f" ({r['drain_cpu_s']:.1f} s CPU); triggered runs (status, runs, stage"
                        f" rows): {r['triggered_runs']}"
                    )
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
