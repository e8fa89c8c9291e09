"""`shell` stages: run a command, stream its output to the log, kill it on timeout or cancel."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque

from ..errors import StageError
from .base import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    env = {
        **os.environ,
        **cfg.env,
        "FLEXIROASTER_RUN_ID": ctx.run_id,
        "FLEXIROASTER_STAGE_ID": ctx.stage.id,
    }
    cwd = ctx.resolve_path(cfg.cwd) if cfg.cwd else ctx.data_dir
    ctx.check_cancelled()
    try:
        proc = subprocess.Popen(
            cfg.command,
            shell=isinstance(cfg.command, str),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
    except OSError as exc:
        raise StageError(f"cannot start {cfg.command!r}: {exc}") from None

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    ctx.on_kill(kill)
    tail: deque[str] = deque(maxlen=20)
    lines = 0
    with proc.stdout:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            lines += 1
            ctx.log(line)
    code = proc.wait()
    ctx.check_cancelled()
    if code != 0:
        last = "\n".join(tail)
        raise StageError(
            f"command exited with status {code}" + (f"; last output:\n{last}" if last else "")
        )
    return StageResult(None, None, {"exit_code": code, "output_lines": lines})
