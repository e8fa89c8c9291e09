"""`python` stages: call `module:function(inputs, params)` with upstream tables as polars frames;
what the function prints goes to its run's log (masked like every log line), line by line."""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import StageError
from .base import StageContext, StageResult

_import_lock = threading.Lock()
_local = threading.local()  # .sink: the log of the python stage this thread runs


class _ThreadOutput(io.TextIOBase):
    """sys.stdout / sys.stderr once a python stage has run: a stage thread's writes become lines
    of its run's log (stderr as WARN); every other thread writes to the stream it replaced."""

    def __init__(self, real: Any, level: str):
        self.real, self.level = real, level

    def write(self, text: str) -> int:
        sink = getattr(_local, "sink", None)
        if sink is None:
            return self.real.write(text)
        pending = sink.setdefault(self.level, [])
        pending.append(text)
        if "\n" in text:
            *lines, rest = "".join(pending).split("\n")
            pending[:] = [rest] if rest else []
            for line in lines:
                sink["log"](line, self.level)
        return len(text)

    def flush(self) -> None:
        if getattr(_local, "sink", None) is None:
            self.real.flush()

    def writable(self) -> bool:
        return True


def _capture() -> None:
    """Put _ThreadOutput in front of sys.stdout and sys.stderr (again, if something replaced
    it since)."""
    with _import_lock:
        if not isinstance(sys.stdout, _ThreadOutput):
            sys.stdout = _ThreadOutput(sys.stdout, "INFO")
        if not isinstance(sys.stderr, _ThreadOutput):
            sys.stderr = _ThreadOutput(sys.stderr, "WARN")


def load_callable(ref: str, base: Path) -> Any:
    target, _, name = ref.rpartition(":")
    with _import_lock:
        if target.endswith(".py"):
            path = Path(target)
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise StageError(f"callable {ref!r}: no file {path}")
            mod_name = f"flexiroaster_user_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            try:
                module = importlib.import_module(target)
            except ImportError as exc:
                raise StageError(f"callable {ref!r}: cannot import {target!r}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise StageError(f"callable {ref!r}: {target} has no function {name!r}")
    return fn


def run(ctx: StageContext) -> StageResult:
    import polars as pl

    fn = load_callable(ctx.config.callable, ctx.data_dir)
    inputs = {dep: ctx.cursor.sql(f"SELECT * FROM {rel}").pl() for dep, rel in ctx.inputs.items()}
    params = {**ctx.config.params, "run_id": ctx.run_id}
    _capture()
    _local.sink = sink = {"log": ctx.log}
    try:
        result = fn(inputs, params)
    finally:
        _local.sink = None
        for level in ("INFO", "WARN"):
            rest = "".join(sink.get(level, []))
            if rest:
                ctx.log(rest, level)
    ctx.check_cancelled()
    if result is None:
        return StageResult(None, None)
    if not isinstance(result, pl.DataFrame):
        try:
            result = pl.DataFrame(result)
        except Exception:
            raise StageError(
                f"{ctx.config.callable} returned {type(result).__name__}; return a polars DataFrame or None"
            ) from None
    ctx.create_from_frame(result)
    return StageResult(ctx.output_name, result.height)
