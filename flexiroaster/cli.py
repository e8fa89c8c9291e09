"""The `flexiroaster` command: validate, run, retry, runs, logs, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import FlexiError, SpecError

FAILS_ON_PURPOSE = "fails-on-purpose"
MARK = {
    "completed": "ok", "failed": "FAILED", "skipped": "skipped",
    "cancelled": "cancelled", "retrying": "retry", "running": "..",
}  # fmt: skip


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FlexiError(f"--param {pair!r}: expected NAME=VALUE")
        try:  # numbers and booleans as YAML reads them; everything else is text
            import yaml

            parsed = yaml.safe_load(value)
            out[key] = parsed if isinstance(parsed, (int, float, bool)) else value
        except Exception:
            out[key] = value
    return out


def _settings():
    from .settings import load_settings

    return load_settings()


def find_pipeline_file(ref: str, settings) -> Path:
    """A path, or a pipeline's name / file stem under the data dir's pipelines/."""
    path = Path(ref)
    if path.exists():
        return path
    from .spec import load_pipeline

    folder = settings.pipelines_dir
    candidates = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    for c in candidates:
        if c.stem == ref:
            return c
    for c in candidates:
        try:
            if load_pipeline(c).name == ref:
                return c
        except FlexiError:
            continue
    raise FlexiError(f"no pipeline file or sample named {ref!r} (looked in {folder})")


def _open(settings):
    from .engine import Engine
    from .store import Store

    store = Store(settings.store_file, flush_interval=settings.log_flush_interval)
    return store, Engine(store, settings)


def _printer(out):
    def listener(event: str, rec, srec) -> None:
        if srec is None:
            if event == "run_started":
                print(f"run {rec.id} of {rec.pipeline_id}: {rec.total_stages} stage(s)", file=out)
            return
        status = str(srec.status)
        if event == "stage_started":
            print(f"  .. {srec.stage_id} ({srec.stage_type})", file=out, flush=True)
            return
        rows = f"  {srec.rows_out} rows" if srec.rows_out is not None else ""
        took = f"  {srec.duration:.2f}s" if srec.duration is not None else ""
        line = f"  {MARK.get(status, status):>9} {srec.stage_id}{took}{rows}"
        if srec.error and status != "completed":
            line += f"\n            {srec.error.splitlines()[0][:300]}"
        print(line, file=out, flush=True)

    return listener


def _run_in_thread(fn, engine) -> Any:
    """Run `fn` on a thread so Ctrl-C here can cancel the run cleanly."""
    result: list = []
    error: list = []
    finished = threading.Event()

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the main thread
            error.append(exc)
        finally:
            finished.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    # Wait on an Event, not Thread.join: a join interrupted by Ctrl-C can leave the
    # thread looking finished while it still runs.
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("\ncancelling ...", file=sys.stderr)
        for rid in engine.active():
            engine.cancel(rid)
        finished.wait()
    thread.join()  # the thread's DuckDB cursor must be gone before the interpreter exits
    if error:
        raise error[0]
    return result[0]


def _summary(rec, out) -> None:
    took = f" in {rec.duration:.2f}s" if rec.duration is not None else ""
    print(
        f"run {rec.id} {rec.status}{took}"
        + (f": {rec.error}" if rec.error and rec.status != "completed" else ""),
        file=out,
    )


def cmd_validate(args) -> int:
    from .spec import load_pipeline

    settings = _settings()
    bad = 0
    for ref in args.files:
        try:
            p = load_pipeline(find_pipeline_file(ref, settings), _params(args.param))
            print(f"{ref}: ok ({p.name}, {len(p.stages)} stages)")
        except FlexiError as exc:
            bad += 1
            print(f"Error: {exc}", file=sys.stderr)
    return 1 if bad else 0


def cmd_run(args) -> int:
    from .spec import load_pipeline

    settings = _settings()
    params = _params(args.param)
    pipeline = load_pipeline(find_pipeline_file(args.pipeline, settings), params)
    store, engine = _open(settings)
    try:
        rec = _run_in_thread(
            lambda: engine.run(pipeline, params, listener=_printer(sys.stdout)), engine
        )
        _summary(rec, sys.stdout)
        return 0 if rec.status == "completed" else 1
    finally:
        engine.shutdown()
        store.close()


def cmd_retry(args) -> int:
    settings = _settings()
    store, engine = _open(settings)
    try:
        rec = _run_in_thread(
            lambda: engine.retry(args.run_id, listener=_printer(sys.stdout)), engine
        )
        _summary(rec, sys.stdout)
        return 0 if rec.status == "completed" else 1
    finally:
        engine.shutdown()
        store.close()


def cmd_runs(args) -> int:
    settings = _settings()
    from .store import Store

    store = Store(settings.store_file)
    try:
        runs, total = store.list_executions(
            pipeline_id=args.pipeline, status=args.status, limit=args.limit
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps([r.__dict__ for r in runs], default=str, indent=2))
        return 0
    print(f"{'id':16}  {'pipeline':28} {'status':9} {'stages':>7} {'seconds':>8}  started")
    for r in runs:
        took = f"{r.duration:.2f}" if r.duration is not None else "-"
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "-"
        print(
            f"{r.id:16}  {r.pipeline_id[:28]:28} {r.status!s:9} {r.stages_completed:>3}/{r.total_stages:<3} {took:>8}  {started}"
        )
    print(f"({len(runs)} of {total})")
    return 0


def cmd_logs(args) -> int:
    settings = _settings()
    from .store import Store

    store = Store(settings.store_file)
    try:
        store.get_execution(args.run_id)
        for rec in store.get_logs(args.run_id, limit=args.limit):
            stage = f" [{rec.stage_id}]" if rec.stage_id else ""
            print(f"{rec.timestamp:%H:%M:%S.%f}"[:-3] + f" {rec.level:5}{stage} {rec.message}")
    finally:
        store.close()
    return 0


def cmd_demo(args) -> int:
    """Run every sample pipeline; the ones tagged fails-on-purpose are meant to fail."""
    from .spec import load_pipeline

    settings = _settings()
    files = sorted(settings.pipelines_dir.glob("*.yaml"))
    if not files:
        raise FlexiError(f"no sample pipelines in {settings.pipelines_dir}")
    store, engine = _open(settings)
    unexpected = 0
    rows = []
    try:
        for f in files:
            pipeline = load_pipeline(f)
            print(f"\n== {f.name}")
            rec = _run_in_thread(
                lambda p=pipeline: engine.run(p, listener=_printer(sys.stdout)), engine
            )
            _summary(rec, sys.stdout)
            meant_to_fail = FAILS_ON_PURPOSE in pipeline.tags
            ok = (rec.status == "completed") != meant_to_fail
            unexpected += not ok
            rows.append((f.name, rec.status, "as intended" if ok else "UNEXPECTED"))
    finally:
        engine.shutdown()
        store.close()
    print("\nsample            status     outcome")
    for name, status, outcome in rows:
        print(f"{name:32} {status!s:10} {outcome}")
    print(f"\nstore: {settings.store_file}  (see `flexiroaster runs`, `flexiroaster logs RUN_ID`)")
    return 1 if unexpected else 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    """The runtime: store, engine and REST API in this process until SIGTERM or Ctrl-C."""
    import uvicorn

    from .api import create_app
    from .runtime import Runtime
    from .settings import load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    if not _is_loopback(settings.host) and settings.api_token is None:
        raise FlexiError(
            f"refusing to listen on {settings.host} without a token: set FLEXIROASTER_API_TOKEN,"
            " or bind 127.0.0.1"
        )
    runtime = Runtime(settings)
    if runtime.store.recovered:
        print(f"marked {len(runtime.store.recovered)} interrupted run(s) failed", file=sys.stderr)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime=runtime, close_runtime=True),
            host=settings.host,
            port=settings.port,
            log_level="warning",
        )
    )
    print(
        f"FlexiRoaster runtime (pid {os.getpid()}) on http://{settings.host}:{settings.port}"
        f"  API /api/v1, docs /docs; store {settings.store_file}",
        flush=True,
    )
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        runtime.close()
    if not server.started:
        raise FlexiError(
            f"could not listen on {settings.host}:{settings.port} (is the port in use?)"
        )
    print("runtime stopped", file=sys.stderr)
    return 0


def cmd_trigger(args) -> int:
    """Start a run through a running runtime's API; --wait follows it to the end."""
    from .client import Client

    url = args.url or os.environ.get("FLEXIROASTER_API_URL", "http://127.0.0.1:8000")
    with Client(url, os.environ.get("FLEXIROASTER_API_TOKEN")) as client:
        run = client.trigger(args.pipeline, _params(args.param))
        print(f"run {run['id']} of {run['pipeline_id']} {run['status']}", flush=True)
        if not args.wait:
            return 0
        run = client.wait(run["id"], timeout=args.timeout)
        for st in run["stages"]:
            rows = f"  {st['rows_out']} rows" if st["rows_out"] is not None else ""
            took = f"  {st['duration']:.2f}s" if st["duration"] is not None else ""
            print(f"  {MARK.get(st['status'], st['status']):>9} {st['stage_id']}{took}{rows}")
            if st["error"] and st["status"] != "completed":
                print(f"            {st['error'].splitlines()[0][:300]}")
        took = f" in {run['duration']:.2f}s" if run["duration"] is not None else ""
        print(
            f"run {run['id']} {run['status']}{took}"
            + (f": {run['error']}" if run["error"] and run["status"] != "completed" else "")
        )
        return 0 if run["status"] == "completed" else 1


def _free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def cmd_up(args) -> int:
    """The runtime and the app together: `serve` and `streamlit run app.py` as child processes,
    both stopped on Ctrl-C or SIGTERM. The runtime seeds the sample pipelines on its first start."""
    import signal
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    from .settings import load_settings

    app = Path(__file__).resolve().parents[1] / "app.py"
    if not app.is_file():
        raise FlexiError(
            f"app.py is not next to the flexiroaster package ({app}); run from a checkout"
        )
    settings = load_settings(**({"port": args.port} if args.port else {}))
    host, port, ui_port = settings.host, settings.port, args.ui_port
    for what, p in (("runtime", port), ("app", ui_port)):
        if not _free(host, p):
            raise FlexiError(
                f"port {p} on {host} is taken, so the {what} cannot listen there; pick another"
                f" with --{'port' if what == 'runtime' else 'ui-port'}"
            )
    api = f"http://{host}:{port}"
    env = {**os.environ, "FLEXIROASTER_API_URL": api, "FLEXIROASTER_PORT": str(port)}
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def wait_for(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FlexiError(
                    f"the {what} exited with status {proc.returncode} while starting (see above)"
                )
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise FlexiError(f"the {what} did not answer at {url} within {timeout:.0f} s")

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C even when started in the background (a non-interactive shell ignores SIGINT there)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "flexiroaster", "serve", "--port", str(port)], env=env
            )
        )
        wait_for(f"{api}/api/v1/health", procs[0], "runtime")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
             "--server.address", host, "--server.port", str(ui_port),
             "--browser.gatherUsageStats", "false"],
            env=env, stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for(f"http://{host}:{ui_port}/_stcore/health", procs[1], "app")
        print(f"FlexiRoaster is up:\n  app      http://{host}:{ui_port}\n  runtime  {api}  (API docs {api}/docs)"
              "\nCtrl-C stops both.", flush=True)  # fmt: skip
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = next(p for p in procs if p.poll() is not None)
        raise FlexiError(
            f"{'the runtime' if dead is procs[0] else 'the app'} stopped (status {dead.returncode})"
        )
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        stop()


def cmd_export_airflow(args) -> int:
    from . import airflow_export
    from .spec import load_pipeline

    settings = _settings()
    path = find_pipeline_file(args.pipeline, settings)
    pipeline = load_pipeline(path)
    written = airflow_export.write(
        pipeline,
        Path(path).read_text(encoding="utf-8"),
        args.mode,
        Path(args.output),
        api_url=args.url or os.environ.get("FLEXIROASTER_API_URL", "http://127.0.0.1:8000"),
        warehouse=Path(args.warehouse or settings.warehouse).resolve(),
        data_dir=Path(settings.data_dir).resolve(),
    )
    print(f"wrote {written} (DAG {airflow_export.dag_id(pipeline, args.mode)}, {args.mode} mode)")
    return 0


def _client():
    from .client import Client

    url = os.environ.get("FLEXIROASTER_API_URL", "http://127.0.0.1:8000")
    return Client(url, os.environ.get("FLEXIROASTER_API_TOKEN"))


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") + " UTC" if iso else "-"


def cmd_schedules(args) -> int:
    """The schedules of the running runtime, with their next and last runs."""
    with _client() as client:
        found = client.schedules(args.pipeline)["schedules"]
    if not found:
        print("no schedules")
        return 0
    print(f"{'id':28} {'pipeline':26} {'type':8} {'expression':20} {'next run':23} last run")
    for s in found:
        state = (
            s["next_run_at"] and _when(s["next_run_at"]) or ("paused" if not s["enabled"] else "-")
        )
        last = f"{s['last_run_id']} {s['last_run_status'] or ''}" if s["last_run_id"] else "-"
        expr = s["expression"] + (
            f" ({s['timezone']})" if s["type"] == "cron" and s["timezone"] != "UTC" else ""
        )
        print(f"{s['id']:28} {s['pipeline_id']:26} {s['type']:8} {expr:20} {state:23} {last}")
    return 0


def cmd_secrets(args) -> int:
    """secrets set|list|delete: variables and secrets of the running runtime."""
    with _client() as client:
        if args.action == "set":
            if sys.stdin.isatty():  # a value never comes from argv (shell history, ps)
                import getpass

                value = getpass.getpass(f"value of {args.name}: ")
            else:
                value = sys.stdin.read().rstrip("\n")
            v = client.set_variable(
                args.name, value, secret=not args.plain, description=args.description
            )
            print(f"{'secret' if v['secret'] else 'variable'} {v['key']} set")
        elif args.action == "delete":
            client.delete_variable(args.name)
            print(f"{args.name} deleted")
        else:
            found = client.variables()["variables"]
            if not found:
                print("no variables or secrets")
            for v in found:
                shown = "***" if v["secret"] else v["value"]
                used = ", ".join(v["used_by"]) or "-"
                print(
                    f"{v['key']:28} {'secret' if v['secret'] else 'var':7} {shown:24} used by {used}"
                )
    return 0


def cmd_connections(args) -> int:
    """connections [list] | connections test NAME: the running runtime's connections."""
    with _client() as client:
        if args.action == "test":
            got = client.test_connection(args.name)
            print(f"{args.name}: {'ok' if got['ok'] else 'FAILED'} ({got['took_ms']:.0f} ms) {got['detail']}")
            return 0 if got["ok"] else 1
        found = client.connections()["connections"]
        if not found:
            print("no connections")
        for c in found:
            used = ", ".join(c["used_by"]) or "-"
            secrets = ", ".join(c["secrets_set"]) or "-"
            print(f"{c['name']:28} {c['type']:9} secrets: {secrets:16} used by {used}")
    return 0


def cmd_schedule(args) -> int:
    """schedule add|pause|resume|run-now|delete|preview."""
    with _client() as client:
        if args.action == "add":
            s = client.create_schedule(
                name=args.name, pipeline_id=args.pipeline, type=args.type,
                expression=args.expression, timezone=args.timezone, catchup=args.catchup,
                overlap=args.overlap, params=_params(args.param),
            )  # fmt: skip
            print(f"schedule {s['id']} created; next run {_when(s['next_run_at'])}")
            if s.get("secret"):
                print(f"webhook POST {s['hook_path']} with header X-Webhook-Secret: {s['secret']}")
                print("(the secret is shown only now)")
            return 0
        if args.action == "preview":
            for t in client.preview_schedule(args.id, args.n)["local_times"]:
                print(t)
            return 0
        if args.action == "delete":
            client.delete_schedule(args.id)
            print(f"schedule {args.id} deleted")
            return 0
        if args.action == "run-now":
            run = client.run_schedule_now(args.id)
            print(f"run {run['id']} of {run['pipeline_id']} {run['status']}")
            return 0
        s = (
            client.pause_schedule(args.id)
            if args.action == "pause"
            else client.resume_schedule(args.id)
        )
        print(
            f"schedule {s['id']} {'paused' if not s['enabled'] else 'resumed; next run ' + _when(s['next_run_at'])}"
        )
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexiroaster", description="Pipelines on DuckDB and polars."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check pipeline files")
    p.add_argument("files", nargs="+")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("run", help="run a pipeline file or sample by name")
    p.add_argument("pipeline")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("retry", help="re-run a failed run from its failed stages")
    p.add_argument("run_id")
    p.set_defaults(fn=cmd_retry)
    p = sub.add_parser("runs", help="recent runs")
    p.add_argument("--pipeline")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_runs)
    p = sub.add_parser("logs", help="the log of a run")
    p.add_argument("run_id")
    p.add_argument("--limit", type=int, default=10_000)
    p.set_defaults(fn=cmd_logs)
    p = sub.add_parser("demo", help="run every sample pipeline")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("serve", help="run the runtime: store, engine and REST API")
    p.add_argument("--host", help="default 127.0.0.1 (FLEXIROASTER_HOST)")
    p.add_argument("--port", type=int, help="default 8000 (FLEXIROASTER_PORT)")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("trigger", help="start a run through a running runtime's API")
    p.add_argument("pipeline", help="pipeline id")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--wait", action="store_true", help="follow the run to its end; exit 0 only if it completed"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    p.add_argument(
        "--url", help="runtime URL (FLEXIROASTER_API_URL, default http://127.0.0.1:8000)"
    )
    p.set_defaults(fn=cmd_trigger)
    p = sub.add_parser(
        "export-airflow", help="write a pipeline as an Airflow 3 DAG file (trigger or stages mode)"
    )
    p.add_argument("pipeline", help="a pipeline file, or a sample's name")
    p.add_argument("--mode", choices=["trigger", "stages"], default="trigger")
    p.add_argument("-o", "--output", required=True, help="folder for the DAG file")
    p.add_argument("--url", help="the runtime's URL the DAG calls (default FLEXIROASTER_API_URL)")
    p.add_argument("--warehouse", help="shared folder for the stages' Parquet files (stages mode)")
    p.set_defaults(fn=cmd_export_airflow)
    p = sub.add_parser("up", help="start the runtime and the app together (Ctrl-C stops both)")
    p.add_argument("--port", type=int, help="runtime port (default 8000, FLEXIROASTER_PORT)")
    p.add_argument("--ui-port", type=int, default=8501, help="app port (default 8501)")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("schedules", help="list the running runtime's schedules")
    p.add_argument("--pipeline", help="only this pipeline's")
    p.set_defaults(fn=cmd_schedules)
    p = sub.add_parser("schedule", help="add, pause, resume, run or delete a schedule")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("add", help="create a schedule")
    a.add_argument("name")
    a.add_argument("--pipeline", required=True, help="pipeline id")
    a.add_argument("--type", choices=["cron", "interval", "webhook", "event"], required=True)
    a.add_argument(
        "--expression", "-e", required=True,
        help="'0 6 * * 1-5', 'every 2 hours', a webhook path, or 'upstream-pipeline[:status]'",
    )  # fmt: skip
    a.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Berlin")
    a.add_argument("--catchup", choices=["skip", "latest", "all"], default="skip")
    a.add_argument("--overlap", choices=["skip", "queue"], default="skip")
    a.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE")
    for action in ("pause", "resume", "run-now", "delete", "preview"):
        a = acts.add_parser(action)
        a.add_argument("id", help="schedule id")
        if action == "preview":
            a.add_argument("-n", type=int, default=10, help="how many fire times")
    p.set_defaults(fn=cmd_schedule)
    p = sub.add_parser("secrets", help="set, list or delete variables and secrets")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("set", help="create or replace; the value is read from stdin or a prompt")
    a.add_argument("name", help="e.g. API_TOKEN (capitals, digits, _)")
    a.add_argument("--plain", action="store_true", help="a plain variable ({{ vars.NAME }})")
    a.add_argument("--description", "-d")
    acts.add_parser("list", help="names, kinds and the pipelines using them (never a secret)")
    a = acts.add_parser("delete", help="delete (refused while a pipeline uses it)")
    a.add_argument("name")
    p.set_defaults(fn=cmd_secrets)
    p = sub.add_parser("connections", help="list or test stored connections")
    acts = p.add_subparsers(dest="action")
    acts.add_parser("list", help="names, types, which secrets are set, the pipelines using them")
    a = acts.add_parser("test", help="reach a connection once (exit 1 when it cannot)")
    a.add_argument("name")
    p.set_defaults(fn=cmd_connections, action="list")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SpecError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except FlexiError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not bad input: short message, traceback on request
        if os.environ.get("FLEXIROASTER_DEBUG"):
            raise
        print(
            f"Error: internal error {type(exc).__name__}: {exc} (FLEXIROASTER_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
