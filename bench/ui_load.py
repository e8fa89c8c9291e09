"""The app with 100,000 runs of history: the Dashboard's data loads in under 1 s, and the
Executions list stays one page.

For each history size (100 runs as the baseline, then 100,000), in a temp data dir:
  1. this process writes the runs (and their stage rows) with `Store.import_executions`, through
     bench/api_latency.py's `build_store` (runs spread over the last 60 days, ~6 % failed);
  2. `.venv/bin/flexiroaster serve --port <free port>` starts as a subprocess on that data dir;
  3. measured, each 5 times after one untimed warm-up, medians reported:
     - the Dashboard's API calls, one by one and together, exactly as pages/dashboard.py makes
       them (system metrics, the 48 h timeline, the 10 latest failed runs, schedules, health),
       and the 30-day timeline its radio switches to;
     - the Dashboard page itself: `AppTest.from_file("app.py")` (whose default page is the
       Dashboard) with FLEXIROASTER_API_URL set to the server, timing `at.run()` (script, API
       calls, pandas and plotly figures; not the browser's drawing). The first, cold run (imports)
       is reported apart;
     - the Executions list's data: GET /executions?limit=50 at offset 0 and 5000, and the size
       of the answer (it must hold 50 runs, not the history).
The ratios 100k / 100 show what the history costs.

    .venv/bin/python bench/ui_load.py               # about 40 s, most of it writing 100k runs
    .venv/bin/python bench/ui_load.py --runs 200000 --repeat 9
    .venv/bin/python bench/ui_load.py --keep        # keep the temp data dirs and server logs

Exit status 1 when the Dashboard's median page run (AppTest) at the large history takes 1 s or
more, or an Executions page does not hold exactly one page of runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import api_latency as bench  # noqa: E402

from flexiroaster.client import Client  # noqa: E402

TARGET_S = 1.0
PAGE = 50
OFFSETS = (0, 5000)


def dashboard_calls(c: Client) -> dict:
    """The calls pages/dashboard.py makes on a load with its default 48-hour window."""
    return {
        "system_metrics": lambda: c.system_metrics(),
        "timeline 48h/hour": lambda: c.timeline(hours=48, bucket="hour"),
        "failed runs limit=10": lambda: c.executions(status="failed", limit=10),
        "schedules": lambda: c.schedules(),
        "health": lambda: c.health(),
    }


def median_s(fn, repeat: int) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(url: str, n_runs: int, repeat: int) -> dict:
    from streamlit.testing.v1 import AppTest

    out: dict = {}
    with Client(url) as c:
        calls = dashboard_calls(c)
        for name, fn in calls.items():
            out[name] = median_s(fn, repeat)
        out["dashboard calls together"] = median_s(lambda: [fn() for fn in calls.values()], repeat)
        out["timeline 30d/day"] = median_s(lambda: c.timeline(hours=720, bucket="day"), repeat)

        sizes = {}
        for off in OFFSETS:
            params = {"limit": PAGE, "offset": off}

            def page(params=params):
                resp = c.http.get("/executions", params=params)
                resp.raise_for_status()
                return resp

            out[f"executions limit=50 offset={off}"] = median_s(page, repeat)
            resp = page()
            body = resp.json()
            sizes[off] = {
                "bytes": len(resp.content),
                "runs": len(body["executions"]),
                "total": body["total"],
            }
        out["sizes"] = sizes

    os.environ["FLEXIROASTER_API_URL"] = url
    os.environ.pop("FLEXIROASTER_API_TOKEN", None)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    t0 = time.perf_counter()
    at.run()
    out["page cold (first run)"] = time.perf_counter() - t0
    problems = [e.value for e in at.exception] + [e.value for e in at.error]
    if problems:
        raise RuntimeError(f"the Dashboard shows errors at {n_runs:,} runs: {problems}")
    today = [m.value for m in at.metric if m.label == "Runs today (UTC)"]
    out["runs today shown"] = today[0] if today else "?"
    out["dashboard page (AppTest run)"] = median_s(at.run, repeat)

    def thirty_days():
        at.radio(key="dash_window").set_value("30 days, per day").run()
        at.radio(key="dash_window").set_value("48 hours, per hour").run()

    out["dashboard page, 30-day window"] = median_s(thirty_days, repeat) / 2
    return out


def one_history(n_runs: int, repeat: int, keep: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"flexi-ui-bench-{n_runs}-"))
    proc = None
    try:
        hist = bench.build_store(tmp, n_runs)
        print(
            f"history {n_runs:,}: {hist['runs']:,} runs, {hist['stage_rows']:,} stage rows,"
            f" written in {hist['generate_s'] + hist['import_s']:.1f} s,"
            f" store {hist['store_mb']:.0f} MB",
            flush=True,
        )
        port = bench.free_port()
        url = f"http://127.0.0.1:{port}"
        proc = bench.start_server(tmp, port)
        bench.wait_healthy(url, proc)
        return measure(url, n_runs, repeat)
    finally:
        if proc is not None:
            bench.stop_server(proc)
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def ms(x: float) -> str:
    return f"{x * 1000:9.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000, help="runs of the large history")
    ap.add_argument("--baseline", type=int, default=100, help="runs of the small history")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions (median)")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dirs")
    args = ap.parse_args()
    print(f"ui_load: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {bench.machine()};"
          f" code {bench.revision()}")  # fmt: skip

    small = one_history(args.baseline, args.repeat, args.keep)
    large = one_history(args.runs, args.repeat, args.keep)

    rows = [k for k in large if k not in ("sizes", "runs today shown")]
    head = (
        f"{'median of ' + str(args.repeat) + ', ms':<34} {args.baseline:>9,} {args.runs:>9,}  ratio"
    )
    print()
    print(head)
    print("-" * len(head))
    for k in rows:
        print(f"{k:<34} {ms(small[k])} {ms(large[k])}  {large[k] / small[k]:5.1f}x")
    print()
    print("Executions list answers (limit=50):")
    for label, got in ((args.baseline, small), (args.runs, large)):
        for off, s in got["sizes"].items():
            print(
                f"  {label:>9,} runs, offset {off:>5}: {s['runs']} runs in {s['bytes']:,} bytes"
                f" (total {s['total']:,})"
            )
    print(f"runs today on the Dashboard: {small['runs today shown']} / {large['runs today shown']}")

    failures = []
    page = large["dashboard page (AppTest run)"]
    if page >= TARGET_S:
        failures.append(f"the Dashboard's median run takes {page:.2f} s at {args.runs:,} runs")
    for off, s in large["sizes"].items():
        if s["runs"] != PAGE or s["total"] != args.runs:
            failures.append(f"executions at offset {off}: {s['runs']} runs, total {s['total']}")
    for f in failures:
        print(f"FAIL: {f}")
    if not failures:
        print(f"OK: Dashboard median {page * 1000:.0f} ms < {TARGET_S * 1000:.0f} ms; every"
              f" Executions answer is one page of {PAGE}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
