"""What the engine costs on top of DuckDB itself, per stage, and what `flexiroaster run` costs to start.

  (a) chain:   200 trivial sql stages, each reading the one before it
  (b) fan-out: one root, 50 independent sql stages reading it, one gather stage joining them
  (c) cli:     `flexiroaster run one_stage.yaml` in a fresh process, start to exit

Every figure is compared with a baseline measured in the same run, interleaved with it:
(a) and (b) against the same SQL run directly on a fresh DuckDB connection to a temp file
(`CREATE TABLE s{i} AS <query>`, in order) -- and, for reference, the same on an in-memory
DuckDB; (c) against `python -c "import duckdb"`.
The pipeline timing is `engine.run(pipeline)` plus `store.flush()`, so it includes writing
every stage state and log line to the store; after each run the store is checked for them.

    .venv/bin/python bench/engine_overhead.py            # about 30 s
    .venv/bin/python bench/engine_overhead.py --quick    # fewer repetitions
    .venv/bin/python bench/engine_overhead.py --profile  # also cProfile one chain run

Exit status 1 when a check fails (a run not completed, records missing, the CLI failing).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from flexiroaster import engine as engine_mod
from flexiroaster.engine import Engine
from flexiroaster.settings import load_settings
from flexiroaster.spec import load_pipeline_text
from flexiroaster.store import Store

TARGET_MS_PER_STAGE = 1.0
TARGET_CLI_S = 1.5
VENV_BIN = Path(sys.executable).parent


class CheckFailed(Exception):
    pass


# --- the pipelines and their baseline SQL ---------------------------------------------------


def chain_stages(n: int) -> list[tuple[str, list[str], str]]:
    """(id, dependencies, query) of a chain s0 -> s1 -> ... -> s{n-1}."""
    out = [("s0", [], "select 1 as x")]
    out += [(f"s{i}", [f"s{i - 1}"], f"select x + 1 as x from s{i - 1}") for i in range(1, n)]
    return out


def fanout_stages(width: int) -> list[tuple[str, list[str], str]]:
    """One root, `width` independent stages reading it, one stage joining them all back."""
    out = [("root", [], "select range as x from range(10)")]
    fans = [f"f{i}" for i in range(1, width + 1)]
    out += [(f, ["root"], f"select x, x + {i} as y from root") for i, f in enumerate(fans, 1)]
    union = " union all ".join(f"select x, y from {f}" for f in fans)
    gather = (
        f"select x, count(*) as n, sum(y) as total from ({union}) as u"
        " join root using (x) group by x"
    )
    out.append(("gather", fans, gather))
    return out


def pipeline_yaml(name: str, stages: list[tuple[str, list[str], str]]) -> str:
    lines = [f"name: {name}", "stages:"]
    for sid, deps, query in stages:
        lines += [f"  - id: {sid}", "    type: sql"]
        if deps:
            lines.append(f"    dependencies: [{', '.join(deps)}]")
        lines.append(f'    config: {{query: "{query}"}}')
    return "\n".join(lines) + "\n"


def run_baseline(stages: list[tuple[str, list[str], str]], path: Path | None) -> float:
    """Wall seconds of the same SQL straight on DuckDB: a fresh connection to a temp file
    (or, with path None, to a fresh in-memory database)."""
    if path is not None:
        path.unlink(missing_ok=True)
    con = duckdb.connect(str(path) if path is not None else ":memory:")
    try:
        t0 = time.perf_counter()
        for sid, _, query in stages:
            con.execute(f"CREATE TABLE {sid} AS {query}")
        return time.perf_counter() - t0
    finally:
        con.close()
        if path is not None:
            path.unlink(missing_ok=True)
            Path(str(path) + ".wal").unlink(missing_ok=True)


def run_pipeline(engine: Engine, store: Store, pipeline, n_stages: int) -> float:
    """Wall seconds of engine.run + flush; then check the run and its records in the store."""
    t0 = time.perf_counter()
    rec = engine.run(pipeline)
    store.flush()
    wall = time.perf_counter() - t0
    if rec.status != "completed":
        raise CheckFailed(f"run {rec.id} of {pipeline.name} ended {rec.status}: {rec.error}")
    stage_rows = store.query(
        "SELECT count(*), count(*) FILTER (WHERE status = 'completed')"
        " FROM flexiroaster.stage_executions WHERE execution_id = ?",
        [rec.id],
    )[0]
    if stage_rows != (n_stages, n_stages):
        raise CheckFailed(
            f"run {rec.id}: stage rows (all, completed) = {stage_rows}, want {n_stages}"
        )
    log_rows, log_stages = store.query(
        "SELECT count(*), count(DISTINCT stage_id) FROM flexiroaster.logs WHERE execution_id = ?",
        [rec.id],
    )[0]
    # At least: run started, started + completed per stage, run completed.
    if log_rows < 2 * n_stages + 2 or log_stages != n_stages:
        raise CheckFailed(
            f"run {rec.id}: {log_rows} log lines over {log_stages} stages,"
            f" want >= {2 * n_stages + 2} over {n_stages}"
        )
    return wall


def bench_engine(label, stages, engine, store, tmp: Path, reps: int) -> dict:
    text = pipeline_yaml(label, stages)
    t0 = time.perf_counter()
    pipeline = load_pipeline_text(text, f"{label}.yaml")
    parse = time.perf_counter() - t0
    n = len(stages)
    db = tmp / f"baseline_{label}.duckdb"
    # One untimed round of each: first-use costs (imports, parser connection) land here.
    cold = run_pipeline(engine, store, pipeline, n)
    run_baseline(stages, db)
    run_baseline(stages, None)
    runs: dict[str, list[float]] = {"pipe": [], "base": [], "mem": []}
    todo = {
        "pipe": lambda: run_pipeline(engine, store, pipeline, n),
        "base": lambda: run_baseline(stages, db),
        "mem": lambda: run_baseline(stages, None),
    }
    keys = list(todo)
    for i in range(reps):  # interleaved, rotating which goes first
        for key in keys[i % 3 :] + keys[: i % 3]:
            runs[key].append(todo[key]())
    pipe, base, mem = runs["pipe"], runs["base"], runs["mem"]
    # Each pair ran back to back under the same load: the median of the paired differences
    # is the headline; the quartiles show how steady the machine was.
    per_stage = sorted((x - y) / n * 1e3 for x, y in zip(pipe, base, strict=True))
    q = statistics.quantiles(per_stage, n=4) if len(per_stage) > 1 else per_stage * 3
    return {
        "label": label,
        "stages": n,
        "pipeline_s": statistics.median(pipe),
        "baseline_s": statistics.median(base),
        "memory_s": statistics.median(mem),
        "cold_s": cold,
        "parse_s": parse,
        "overhead_ms": statistics.median(per_stage),
        "overhead_iqr": (q[0], q[2]),
        "ratio": statistics.median(x / y for x, y in zip(pipe, base, strict=True)),
        "memory_ms": statistics.median((x - y) / n * 1e3 for x, y in zip(pipe, mem, strict=True)),
    }


# --- the CLI ----------------------------------------------------------------------------------


ONE_STAGE = pipeline_yaml("one-stage", [("s0", [], "select 1 as x")])


def _time_process(argv: list[str], env: dict, cwd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, proc.returncode, proc.stdout + proc.stderr


def bench_cli(tmp: Path, reps: int) -> dict:
    work = tmp / "cli"
    work.mkdir()
    (work / "one_stage.yaml").write_text(ONE_STAGE)
    env = {**os.environ, "FLEXIROASTER_DATA_DIR": str(work / "data")}
    env.pop("FLEXIROASTER_STORE_PATH", None)
    script = VENV_BIN / "flexiroaster"  # the console script, as a user runs it
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "flexiroaster"]
    cli += ["run", "one_stage.yaml"]
    imp = [sys.executable, "-c", "import duckdb"]
    bare = [sys.executable, "-c", "pass"]
    # Untimed warm-up of each (page cache, .pyc files).
    for argv in (cli, imp, bare):
        _time_process(argv, env, work)
    times: dict[str, list[float]] = {"cli": [], "import duckdb": [], "python -c pass": []}
    failures: list[str] = []
    for _ in range(reps):
        for key, argv in (("cli", cli), ("import duckdb", imp), ("python -c pass", bare)):
            wall, rc, out = _time_process(argv, env, work)
            if rc != 0:
                how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
                said = " / ".join(
                    "".join(c for c in line if c.isprintable())
                    for line in out.strip().splitlines()[-2:]
                )
                ran = "after the run completed" if "completed" in out else "run not completed"
                failures.append(f"{key}: {how}, {ran}: {said}")
            elif key == "cli" and "completed" not in out:
                failures.append(f"cli: run not completed: {out.strip()[-300:]}")
            times[key].append(wall)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median": med, "runs": times, "failures": failures, "reps": reps}


# --- profile ----------------------------------------------------------------------------------


def profile_chain(engine: Engine, store: Store, stages, top: int) -> None:
    """cProfile one chain run: the coordinating thread, and the pool threads (stage bodies)."""
    pipeline = load_pipeline_text(pipeline_yaml("chain", stages), "chain.yaml")
    run_pipeline(engine, store, pipeline, len(stages))  # warm
    worker_profiles: list[cProfile.Profile] = []
    original = engine_mod._run_stage

    def profiled(ctx, sql_params):
        prof = cProfile.Profile()
        worker_profiles.append(prof)
        return prof.runcall(original, ctx, sql_params)

    engine_mod._run_stage = profiled
    main = cProfile.Profile()
    try:
        main.enable()
        run_pipeline(engine, store, pipeline, len(stages))
        main.disable()
    finally:
        engine_mod._run_stage = original
    n = len(stages)
    for title, stats in (
        ("coordinating thread (engine.run + flush)", pstats.Stats(main)),
        ("pool threads (_run_stage, all stages)", _merged(worker_profiles)),
    ):
        buf = io.StringIO()
        stats.stream = buf
        stats.sort_stats("cumulative").print_stats(top)
        print(f"\n--- cProfile, {title}; divide by {n} for per stage ---")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])


def _merged(profiles: list[cProfile.Profile]) -> pstats.Stats:
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    return stats


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--reps", type=int, help="repetitions of (a) and (b) (default 15, quick 3)")
    ap.add_argument("--cli-reps", type=int, help="repetitions of (c) (default 5, quick 3)")
    ap.add_argument("--chain", type=int, default=200, help="stages in the chain")
    ap.add_argument("--width", type=int, default=50, help="parallel stages in the fan-out")
    ap.add_argument("--no-cli", action="store_true", help="skip (c)")
    ap.add_argument("--profile", action="store_true", help="cProfile one chain run afterwards")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 15)
    cli_reps = args.cli_reps or (3 if args.quick else 5)

    tmp = Path(tempfile.mkdtemp(prefix="flexiroaster-bench-"))
    store = engine = None
    try:
        settings = load_settings(data_dir=tmp / "data")
        store = Store(settings.store_file, flush_interval=settings.log_flush_interval)
        engine = Engine(store, settings)
        print(
            f"engine overhead: {reps} repetitions, median; max_workers {settings.max_workers};"
            f" duckdb {duckdb.__version__}; python {sys.version.split()[0]}; {os.cpu_count()} cpus",
            flush=True,
        )
        chain = bench_engine("chain", chain_stages(args.chain), engine, store, tmp, reps)
        fan = bench_engine("fan-out", fanout_stages(args.width), engine, store, tmp, reps)
        cli = None if args.no_cli else bench_cli(tmp, cli_reps)
        report(chain, fan, cli)
        if args.profile:
            profile_chain(engine, store, chain_stages(args.chain), top=30)
        if cli and cli["failures"]:
            print(f"\nFAILED: {len(cli['failures'])} process run(s) exited abnormally:")
            for f in cli["failures"]:
                print(f"  {f}")
            return 1
        return 0
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            engine.shutdown()
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def report(chain: dict, fan: dict, cli: dict | None) -> None:
    print()
    head = (
        f"{'case':8} {'stages':>6} {'pipeline':>9} {'baseline':>9} {'ratio':>6}"
        f" {'overhead/stage':>14} {'(quartiles)':>13} {'target':>7}  {'cold run':>8} {'parse':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in (chain, fan):
        ok = "ok" if r["overhead_ms"] < TARGET_MS_PER_STAGE else "MISSED"
        lo, hi = r["overhead_iqr"]
        print(
            f"{r['label']:8} {r['stages']:>6} {r['pipeline_s'] * 1e3:>7.0f}ms"
            f" {r['baseline_s'] * 1e3:>7.0f}ms {r['ratio']:>5.2f}x {r['overhead_ms']:>11.2f} ms"
            f" {f'{lo:.2f}..{hi:.2f}':>13} {'<' + format(TARGET_MS_PER_STAGE, 'g') + ' ms':>7}"
            f"  {r['cold_s'] * 1e3:>6.0f}ms {r['parse_s'] * 1e3:>4.0f}ms  {ok}"
        )
    for r in (chain, fan):
        print(
            f"  {r['label']}: against an in-memory DuckDB instead ({r['memory_s'] * 1e3:.0f} ms),"
            f" {r['memory_ms']:.2f} ms/stage (stage outputs live in an in-memory scratch schema)"
        )
    print(
        "  pipeline, baseline: median wall; pipeline = engine.run + store.flush (records included)."
        "\n  ratio, overhead/stage = (pipeline - baseline) / stages: medians over the"
        " back-to-back pairs.\n  cold run: the first, untimed run. parse: load_pipeline_text"
        " (not in pipeline)."
    )
    if cli is None:
        return
    m = cli["median"]
    base = m["import duckdb"]
    print()
    head = f"{'process, start to exit':34} {'median':>8} {'vs import duckdb':>17} {'target':>8}"
    print(head)
    print("-" * len(head))
    ok = "ok" if m["cli"] < TARGET_CLI_S else "MISSED"
    print(
        f"{'flexiroaster run one_stage.yaml':34} {m['cli']:>7.2f}s {m['cli'] / base:>16.2f}x"
        f" {'<' + format(TARGET_CLI_S, 'g') + ' s':>8}  {ok}"
    )
    label = 'python -c "import duckdb"'
    print(f"{label:34} {base:>7.2f}s {1:>16.2f}x")
    print(
        f"{'python -c pass':34} {m['python -c pass']:>7.2f}s {m['python -c pass'] / base:>16.2f}x"
    )
    print(
        f"  median of {cli['reps']} interleaved runs each (after one untimed warm-up);"
        f" cli runs: {', '.join(f'{t:.2f}' for t in cli['runs']['cli'])} s"
    )


if __name__ == "__main__":
    sys.exit(main())
