"""`python` stages: call `module:function(inputs, params)` with upstream tables as polars frames."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import StageError
from .base import StageContext, StageResult

_import_lock = threading.Lock()


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
    result = fn(inputs, params)
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
