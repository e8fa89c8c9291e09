"""A realistic pipeline over a 10-million-row Parquet file, against the same work hand-written.

Pipeline (YAML, run by the real engine, recorded in a real store):
    input (parquet) -> validation (not_null id, range amount; on_failure: fail)
      -> transform (fill_null qty, derive revenue, filter) -> sql (group by category)
      -> output (table, replace)

Hand-written, on a fresh DuckDB connection to a temp file, in the same process and run:
    the two check queries (null ids, out-of-range amounts), then
    CREATE TABLE ... AS the aggregate over read_parquet with the same fill / derive / filter.

Both are timed interleaved (median of 3 by default) and their result tables must be equal.

    .venv/bin/python bench/throughput.py                 # 10M rows
    .venv/bin/python bench/throughput.py --rows 1000000  # smaller
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from flexiroaster.engine import Engine
from flexiroaster.settings import load_settings
from flexiroaster.spec import load_pipeline_text
from flexiroaster.store import Store

TARGET_RATIO = 1.3
CATEGORIES = 50
AMOUNT_MIN, AMOUNT_MAX, AMOUNT_FLOOR = 0, 1000, 10

# Deterministic columns; every 17th qty is null. amount is 0.00 .. 999.99.
GENERATE = f"""
COPY (
    SELECT
        range AS id,
        'cat_' || lpad(CAST((range * 7919) % {CATEGORIES} AS VARCHAR), 2, '0') AS category,
        ((range * 2654435761) % 100000) / 100.0 AS amount,
        CASE WHEN range % 17 = 0 THEN NULL ELSE CAST(range % 100 AS INTEGER) END AS qty,
        TIMESTAMP '2024-01-01' + to_seconds(range % (365 * 86400)) AS ts
    FROM range({{rows}})
) TO '{{path}}' (FORMAT parquet)
"""

AGGREGATE = """
select category,
       count(*) as orders,
       sum(qty) as qty,
       sum(revenue) as revenue,
       avg(amount) as avg_amount,
       min(ts) as first_ts,
       max(ts) as last_ts
from {source}
group by category
"""

PIPELINE = f"""
name: throughput
stages:
  - id: events
    type: input
    config: {{source: "{{path}}"}}
  - id: checked
    type: validation
    dependencies: [events]
    config:
      on_failure: fail
      checks:
        - {{type: not_null, columns: [id]}}
        - {{type: range, column: amount, min: {AMOUNT_MIN}, max: {AMOUNT_MAX}}}
  - id: cleaned
    type: transform
    dependencies: [checked]
    config:
      operations:
        - fill_null: {{qty: 0}}
        - derive: {{revenue: "amount * qty"}}
        - filter: "amount >= {AMOUNT_FLOOR}"
  - id: by_category
    type: sql
    dependencies: [cleaned]
    config:
      query: |
{{aggregate}}
  - id: save
    type: output
    dependencies: [by_category]
    config: {{table: category_totals, mode: replace}}
"""

HAND_CHECKS = f"""
SELECT count(*) FILTER (WHERE id IS NULL),
       count(*) FILTER (WHERE amount IS NOT NULL AND (amount < {AMOUNT_MIN} OR amount > {AMOUNT_MAX}))
FROM read_parquet('{{path}}')
"""

HAND_CLEANED = f"""(
    SELECT *, amount * qty AS revenue
    FROM (SELECT * REPLACE (coalesce(qty, 0) AS qty) FROM read_parquet('{{path}}'))
    WHERE amount >= {AMOUNT_FLOOR}
)"""

RESULT_ORDER = "SELECT * FROM {table} ORDER BY category"


class CheckFailed(Exception):
    pass


def pipeline_text(path: Path) -> str:
    body = "\n".join(
        "        " + line for line in AGGREGATE.format(source="cleaned").strip().splitlines()
    )
    return PIPELINE.replace("{path}", str(path)).replace("{aggregate}", body)


def run_hand(parquet: Path, db: Path) -> tuple[float, list[tuple]]:
    """The same work written by hand; returns (wall seconds, result rows)."""
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    try:
        nulls, out_of_range = con.execute(HAND_CHECKS.format(path=parquet)).fetchall()[0]
        if nulls or out_of_range:
            raise CheckFailed(f"hand checks failed: {nulls} null ids, {out_of_range} out of range")
        source = HAND_CLEANED.format(path=parquet)
        con.execute(f"CREATE OR REPLACE TABLE category_totals AS {AGGREGATE.format(source=source)}")
        wall = time.perf_counter() - t0
        rows = con.execute(RESULT_ORDER.format(table="category_totals")).fetchall()
    finally:
        con.close()
    return wall, rows


def run_pipeline(engine: Engine, store: Store, pipeline) -> tuple[float, list[tuple]]:
    t0 = time.perf_counter()
    rec = engine.run(pipeline)
    store.flush()
    wall = time.perf_counter() - t0
    if rec.status != "completed":
        raise CheckFailed(f"pipeline run {rec.id} ended {rec.status}: {rec.error}")
    stages = store.query(
        "SELECT count(*) FROM flexiroaster.stage_executions"
        " WHERE execution_id = ? AND status = 'completed'",
        [rec.id],
    )[0][0]
    if stages != len(pipeline.stages):
        raise CheckFailed(
            f"run {rec.id}: {stages} completed stage rows, want {len(pipeline.stages)}"
        )
    rows = store.query(RESULT_ORDER.format(table="main.category_totals"))
    return wall, rows


def compare(a: list[tuple], b: list[tuple]) -> str:
    """'identical', 'equal within 1e-9 (doubles)', or raise CheckFailed."""
    if a == b:
        return "identical"
    if len(a) != len(b):
        raise CheckFailed(f"results differ: {len(a)} rows vs {len(b)}")
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            same = (
                math.isclose(x, y, rel_tol=1e-9)
                if isinstance(x, float) and isinstance(y, float)
                else x == y
            )
            if not same:
                raise CheckFailed(f"results differ: {ra} vs {rb}")
    return "equal (doubles within 1e-9 relative: parallel float sums)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows in the Parquet file")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each (median)")
    ap.add_argument("--quick", action="store_true", help="--reps 1 (still one warm-up each)")
    args = ap.parse_args(argv)
    reps = 1 if args.quick else args.reps

    tmp = Path(tempfile.mkdtemp(prefix="flexiroaster-throughput-"))
    store = engine = None
    try:
        parquet = tmp / "events.parquet"
        t0 = time.perf_counter()
        with duckdb.connect() as con:
            con.execute(GENERATE.format(rows=args.rows, path=parquet))
        gen = time.perf_counter() - t0
        size = parquet.stat().st_size / 1e6
        print(
            f"throughput: {args.rows:,} rows, {size:.0f} MB parquet (generated in {gen:.1f} s);"
            f" duckdb {duckdb.__version__}; median of {reps}",
            flush=True,
        )

        settings = load_settings(data_dir=tmp / "data")
        store = Store(settings.store_file, flush_interval=settings.log_flush_interval)
        engine = Engine(store, settings)
        pipeline = load_pipeline_text(pipeline_text(parquet), "throughput.yaml")
        hand_db = tmp / "hand.duckdb"

        # One untimed run of each: page cache, first-use costs.
        _, want = run_hand(parquet, hand_db)
        _, got = run_pipeline(engine, store, pipeline)
        verdict = compare(got, want)
        pipe, hand = [], []
        for i in range(reps):  # interleaved, alternating which goes first
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    wall, rows = run_hand(parquet, hand_db)
                    hand.append(wall)
                    compare(rows, want)
                else:
                    wall, rows = run_pipeline(engine, store, pipeline)
                    pipe.append(wall)
                    compare(rows, want)
        p, h = statistics.median(pipe), statistics.median(hand)
        ratio = p / h
        paired = statistics.median(x / y for x, y in zip(pipe, hand, strict=True))
        print()
        head = f"{'':28} {'median':>8}  {'runs':24}"
        print(head)
        print("-" * len(head))
        print(
            f"{'pipeline (engine.run+flush)':28} {p:>7.2f}s  {', '.join(f'{x:.2f}' for x in pipe)}"
        )
        print(f"{'hand-written DuckDB':28} {h:>7.2f}s  {', '.join(f'{x:.2f}' for x in hand)}")
        ok = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(f"{'ratio pipeline / hand':28} {ratio:>7.2f}x  target <= {TARGET_RATIO}  {ok}")
        print(f"{'  (median of paired ratios)':28} {paired:>7.2f}x")
        print(
            f"\n{len(want)} categories; results {verdict};"
            f" {args.rows / p / 1e6:.1f} M rows/s through the pipeline"
        )
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


if __name__ == "__main__":
    sys.exit(main())
