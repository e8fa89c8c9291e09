"""Soak: N runs through `flexiroaster serve` with retention on; the store must stay bounded.

Two phases, each a fresh temp data dir and a `flexiroaster serve` subprocess on loopback:
  baseline  BASELINE runs (default 5,000) of a one-stage pipeline, retention off: runs/s, and
            the store's bytes per run when nothing is pruned (what N runs would take without it)
  soak      N runs (default 100,000) of the same pipeline, retention on with a short horizon
            (--keep-seconds, default 60 s: FLEXIROASTER_RETENTION_DAYS = that in days) and a prune
            every --prune-every s (default 10 s): runs/s, store size over time, RSS, prunes
The load is closed-loop: --clients threads (default 8, one keep-alive httpx connection each) POST
/api/v1/executions, pausing while the server has more than --inflight runs active or queued.
Every --sample s (default 5) a line gives: elapsed, runs triggered, runs/s over the last
interval, runs kept in the store, store MB (file + WAL), server RSS MB. At the end the store is
opened: every trigger is in the (hash-chained, never pruned) audit log, and every run triggered
within the retention horizon before the end must still be there.

    .venv/bin/python bench/soak.py                          # 100,000 runs (about 20-30 min)
    .venv/bin/python bench/soak.py --runs 20000 --baseline 3000   # a few minutes

Figures: BENCHMARKS.md ("Soak"). Exit status 1 when a trigger fails, a run is lost or left
unfinished, or the store ends bigger than --max-mb (default: 4x its size at the first prune
plus 16 MB: bounded, not growing with N).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PIPELINE = """
name: soak
max_active_runs: 8
stages:
  - {id: one, type: sql, config: {query: "select 42 as answer, now() as at"}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("flexiroaster.duckdb*") if p.is_file())


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@contextlib.contextmanager
def serve(data: Path, env: dict[str, str]):
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEXIROASTER_")}
    full |= {"FLEXIROASTER_DATA_DIR": str(data), **env}
    log = open(data.parent / f"{data.name}-serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexiroaster", "serve", "--port", str(port)],
        env=full, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited early, see {log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("serve did not answer /health within 30 s")
            time.sleep(0.1)
        httpx.post(f"{url}/api/v1/pipelines", content=PIPELINE,
                   headers={"Content-Type": "application/yaml"}, timeout=10).raise_for_status()  # fmt: skip
        yield proc, url, Path(log.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def engine_load(url: str) -> tuple[int, int]:
    e = httpx.get(f"{url}/api/v1/health", timeout=30).json()["components"]["engine"]
    return e["active_runs"], e["queued_runs"]


def phase(
    name: str, data: Path, n: int, env: dict[str, str], args, samples: list, horizon: float
) -> dict:
    """Trigger n runs (closed loop), sampling as it goes; returns the phase's figures."""
    data.mkdir(parents=True)
    with serve(data, env) as (proc, url, log):
        rss_idle = rss_mb(proc.pid)
        start_bytes = store_bytes(data)
        sent, errors, lock, stop = [0], [], threading.Lock(), threading.Event()
        paused = threading.Event()
        paused.set()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30.0) as c:
                while not stop.is_set():
                    paused.wait()
                    with lock:
                        if sent[0] >= n:
                            return
                        sent[0] += 1
                    try:
                        r = c.post("/api/v1/executions", json={"pipeline_id": "soak"})
                        if r.status_code != 202:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        last_t, last_n, next_sample, peak_rss = t0, 0, t0 + args.sample, rss_idle
        while any(t.is_alive() for t in threads):
            active, queued = engine_load(url)  # backpressure: a bounded backlog
            if active + queued > args.inflight:
                paused.clear()
            else:
                paused.set()
            now_t = time.perf_counter()
            if now_t >= next_sample:
                kept = httpx.get(f"{url}/api/v1/executions", params={"limit": 1}, timeout=30)
                rss = rss_mb(proc.pid)
                peak_rss = max(peak_rss, rss)
                row = {"phase": name, "s": now_t - t0, "sent": sent[0],
                       "rate": (sent[0] - last_n) / (now_t - last_t), "kept": kept.json()["total"],
                       "mb": store_bytes(data) / 2**20, "rss": rss}  # fmt: skip
                samples.append(row)
                print(f"  {name:8} {row['s']:7.1f} s  sent {row['sent']:7d}  {row['rate']:6.1f} runs/s"
                      f"  kept {row['kept']:6d}  store {row['mb']:7.2f} MB  RSS {rss:6.1f} MB",
                      flush=True)  # fmt: skip
                last_t, last_n, next_sample = now_t, sent[0], now_t + args.sample
            time.sleep(0.05)
        paused.set()
        while sum(engine_load(url)) > 0:
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        rss_end = rss_mb(proc.pid)
        stopped_at = time.time()
    size = store_bytes(data)
    import duckdb

    con = duckdb.connect(str(data / "flexiroaster.duckdb"), read_only=True)
    try:
        left = con.execute(
            "SELECT count(*) FILTER (WHERE status NOT IN ('completed')),"
            " count(*) FROM flexiroaster.flexiroaster.executions"
        ).fetchall()[0]
        # Every trigger is in the audit log (which retention leaves alone: it is hash-chained);
        # a run started within the retention horizon before the end must still be stored.
        audit, missing_recent = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE e.id IS NULL AND epoch(a.created_at) > ?)"
            " FROM flexiroaster.flexiroaster.audit_log a LEFT JOIN"
            " flexiroaster.flexiroaster.executions e ON e.id = a.target_id"
            " WHERE a.action = 'run.start'",
            [stopped_at - horizon],
        ).fetchall()[0]
        audit_mb = con.execute(
            "SELECT sum(estimated_size) FROM duckdb_tables() WHERE table_name = 'audit_log'"
        ).fetchall()[0][0]
    finally:
        con.close()
    return {"runs": n, "errors": errors, "seconds": elapsed, "rate": n / elapsed,
            "rss_idle": rss_idle, "rss_peak": max(peak_rss, rss_end), "rss_end": rss_end,
            "store_mb": size / 2**20, "start_mb": start_bytes / 2**20, "stored": left[1], "not_completed": left[0],
            "audited": audit, "missing_recent": missing_recent, "audit_rows": audit_mb,
            "pruned": audit - left[1]}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--baseline", type=int, default=5_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--keep-seconds", type=float, default=60.0)
    p.add_argument("--prune-every", type=float, default=10.0)
    p.add_argument("--sample", type=float, default=5.0)
    p.add_argument("--max-mb", type=float, default=None)
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flexiroaster-soak-"))
    samples: list[dict] = []
    print(f"soak: {args.runs} runs, baseline {args.baseline}, {args.clients} clients, load"
          f" average {os.getloadavg()[0]:.1f}, temp {tmp}")  # fmt: skip
    try:
        base = phase("baseline", tmp / "baseline", args.baseline, {}, args, samples, 1e9)
        soak = phase("soak", tmp / "soak", args.runs, {
            "FLEXIROASTER_RETENTION_DAYS": repr(args.keep_seconds / 86400),
            "FLEXIROASTER_RETENTION_INTERVAL": str(args.prune_every)}, args, samples,
            args.keep_seconds)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    per_run = (base["store_mb"] - base["start_mb"]) / base["runs"]  # beyond the empty store
    # the size once the first runs could have been pruned (one horizon and one prune interval in)
    settle = args.keep_seconds + 2 * args.prune_every
    first = next((s["mb"] for s in samples if s["phase"] == "soak" and s["s"] >= settle), None)
    limit = args.max_mb or (4 * (first or soak["store_mb"]) + 16)
    soak_mb = [s["mb"] for s in samples if s["phase"] == "soak"]
    print()
    print(f"baseline (no retention): {base['runs']} runs in {base['seconds']:.1f} s ="
          f" {base['rate']:.1f} runs/s; store {base['store_mb']:.2f} MB ="
          f" {base['start_mb']:.2f} MB empty + {per_run * 1024:.2f} KB/run; RSS idle {base['rss_idle']:.0f} MB, end {base['rss_end']:.0f} MB")
    print(f"soak (retention {args.keep_seconds:.0f} s, prune every {args.prune_every:.0f} s):"
          f" {soak['runs']} runs in {soak['seconds']:.1f} s = {soak['rate']:.1f} runs/s"
          f" ({soak['rate'] / base['rate']:.2f}x baseline)")
    without = soak["start_mb"] + per_run * soak["runs"]
    print(f"  store: end {soak['store_mb']:.2f} MB, max sampled {max(soak_mb, default=0):.2f} MB"
          f" (without retention about {without:.1f} MB: ratio {soak['store_mb'] / without:.3f});"
          f" limit {limit:.1f} MB")
    print(f"  runs kept {soak['stored']}, pruned {soak['pruned']}; runs of the last"
          f" {args.keep_seconds:.0f} s missing: {soak['missing_recent']}; audit log"
          f" {soak['audit_rows']} rows (not pruned)")
    print(f"  RSS idle {soak['rss_idle']:.0f} MB, peak {soak['rss_peak']:.0f} MB, end"
          f" {soak['rss_end']:.0f} MB ({soak['rss_end'] / base['rss_end']:.2f}x baseline end)")
    bad = []
    for ph in (base, soak):
        if ph["errors"]:
            bad.append(f"{len(ph['errors'])} trigger error(s): {ph['errors'][:3]}")
        if ph["not_completed"]:
            bad.append(f"{ph['not_completed']} run(s) not completed")
    if soak["audited"] != soak["runs"] or base["audited"] != base["runs"]:
        bad.append("a trigger answered 202 has no audit entry")
    if soak["missing_recent"]:
        bad.append(f"{soak['missing_recent']} run(s) inside the retention horizon lost")
    if base["stored"] != base["runs"]:
        bad.append("baseline runs lost")
    if soak["store_mb"] > limit:
        bad.append(f"store {soak['store_mb']:.1f} MB over the bound {limit:.1f} MB")
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
