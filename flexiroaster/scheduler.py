"""Schedules: cron, interval, webhook and event triggers, kept in the store, fired by APScheduler.

Fire times are computed here, not by APScheduler's own triggers, because a cron schedule in a
local timezone has to fire once on both daylight-saving days: the cron is evaluated on the local
wall clock, an ambiguous time (autumn) counts once, at its first occurrence, and a time that does
not exist (spring) fires at the end of the gap. APScheduler (in UTC) then waits for each computed
time with a one-shot job and calls `_fire`, which starts the run and arms the next time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .errors import Conflict, FlexiError, NotFound, Unauthorized
from .records import ExecutionRecord, now
from .store import StoreUnavailable

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

Scalar = str | int | float | bool | None


class ScheduleType(StrEnum):
    CRON = "cron"
    INTERVAL = "interval"
    WEBHOOK = "webhook"
    EVENT = "event"


class Catchup(StrEnum):
    """What a timed schedule does with the fire times it missed while the runtime was down."""

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class Overlap(StrEnum):
    """What a fire does while the pipeline still has a run going."""

    SKIP = "skip"
    QUEUE = "queue"


TIMED = (ScheduleType.CRON, ScheduleType.INTERVAL)
EVENT_STATUSES = ("completed", "failed", "cancelled", "any")


class ScheduleError(FlexiError):
    status = 422
    code = "invalid_schedule"


# --- expressions ------------------------------------------------------------------------------

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 604800),
}
_PART = re.compile(r"\s*(-?\d+(?:\.\d+)?)?\s*([a-z]+)\s*")


def parse_interval(text: str) -> timedelta:
    """ "every 2 hours", "30 minutes", "every minute", "30m", "2h", "1h30m" -> a timedelta."""
    t = re.sub(r"^\s*every\s+", "", text.strip().lower())
    t = re.sub(r"\s+and\s+|,", " ", t)
    total, pos = 0.0, 0
    while pos < len(t):
        m = _PART.match(t, pos)
        if not m or m.end() == pos or m.group(2) not in _UNITS:
            raise ValueError(
                f"{text!r} is not an interval; write e.g. 'every 2 hours', '30 minutes', '30m', '2h'"
            )
        if m.group(1) is None and pos:  # a bare unit only alone: "every hour"
            raise ValueError(f"{text!r}: a number is missing before {m.group(2)!r}")
        total += float(m.group(1) or 1) * _UNITS[m.group(2)]
        pos = m.end()
    if not t:
        raise ValueError("the interval is empty; write e.g. 'every 2 hours' or '30m'")
    if total <= 0:
        raise ValueError(f"{text!r}: an interval must be longer than 0")
    if total < 1:
        raise ValueError(f"{text!r}: the shortest interval is 1 second")
    return timedelta(seconds=total)


_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _cron_weekdays(text: str) -> str:
    """A cron weekday field (0 or 7 = Sunday, names allowed, ranges, steps) as APScheduler day
    names: its own numbers start at Monday, so '1-5' would silently mean Tuesday to Saturday."""

    def day(v: str) -> int:
        v = v.strip().lower()
        if v[:3] in _DAYS and len(v) >= 3:
            return _DAYS.index(v[:3])
        if not v.isdigit() or int(v) > 7:
            raise ValueError(f"weekday {v!r}: use 0-7 (0 and 7 are Sunday) or sun..sat")
        return int(v) % 7 if int(v) != 7 else 7

    picked: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"weekday step {step_text!r} is not a positive number")
        if rng in ("*", "?"):
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = day(a), day(b)
            if hi < lo:
                raise ValueError(f"weekday range {rng!r} runs backwards")
        else:
            lo = hi = day(rng)
            if step:
                hi = 6
        picked.update(d % 7 for d in range(lo, hi + 1, step or 1))
    return ",".join(_DAYS[d] for d in sorted(picked))


@lru_cache(maxsize=4096)
def _cron(expr: str) -> tuple[Any, ...]:
    """The cron expression as APScheduler triggers over a naive wall clock (UTC stands in).

    Classic cron semantics: weekday numbers count from Sunday (0 or 7), and when both the
    day of month and the weekday are restricted, a day matching either one fires (so two
    triggers, the earlier next time wins)."""
    from apscheduler.triggers.cron import CronTrigger

    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(
            f"{expr!r} is not a cron expression: it needs five fields, minute hour day month"
            " weekday, e.g. '0 6 * * 1-5'"
        )
    minute, hour, dom, month, dow = parts
    try:
        days = _cron_weekdays(dow)

        def trig(day: str, weekdays: str) -> Any:
            return CronTrigger(
                minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays, timezone=UTC
            )

        if dom not in ("*", "?") and dow not in ("*", "?"):
            return (trig(dom, "*"), trig("*", days))
        return (trig(dom, days),)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def parse_event(text: str) -> tuple[str, str]:
    """ "pipeline-a" or "pipeline-a:failed" -> (upstream pipeline id, status it must end with)."""
    upstream, _, status = text.strip().partition(":")
    status = status.strip().lower() or "completed"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", upstream.strip()):
        raise ValueError(
            f"{text!r}: write the upstream pipeline's id, optionally with the status its run must"
            " end with, e.g. 'etl-data-pipeline' or 'etl-data-pipeline:failed'"
        )
    if status not in EVENT_STATUSES:
        raise ValueError(f"{text!r}: the status must be one of {', '.join(EVENT_STATUSES)}")
    return upstream.strip(), status


def _wall_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a naive local wall time: an ambiguous time is its first occurrence;
    a time in a daylight-saving gap is the end of the gap (the first valid instant after it)."""
    first = wall.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # before the gap
    hi = first.astimezone(UTC)  # after it
    if lo > hi:
        lo, hi = hi, lo
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def next_fire(
    kind: ScheduleType, expression: str, timezone: str, anchor: datetime, after: datetime
) -> datetime | None:
    """The first fire time strictly after `after` (UTC), or None for untimed schedules."""
    if kind == ScheduleType.INTERVAL:
        step = parse_interval(expression)
        if after < anchor:
            return anchor
        k = math.floor((after - anchor) / step) + 1
        return anchor + k * step
    if kind != ScheduleType.CRON:
        return None
    tz, triggers = _zone(timezone), _cron(expression)
    wall = after.astimezone(tz).replace(tzinfo=None)
    for _ in range(10_000):  # each step is a distinct wall time; bounded for safety
        start = (wall + timedelta(microseconds=1)).replace(tzinfo=UTC)
        cands = [c for t in triggers if (c := t.get_next_fire_time(None, start)) is not None]
        if not cands:
            return None
        cand = min(cands)
        wall = cand.replace(tzinfo=None)
        at = _wall_instant(wall, tz)
        if at > after:
            return at
    return None


# --- models -----------------------------------------------------------------------------------


class ScheduleIn(BaseModel):
    """A schedule as written by a person (API body, CLI, or a pipeline's `schedule:`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$", max_length=100)
    pipeline_id: str = Field(min_length=1, max_length=200)
    type: ScheduleType
    expression: str = Field(
        "",
        max_length=500,
        validate_default=True,
        description="cron: '0 6 * * 1-5'; interval: 'every 2 hours', '30m'; webhook: the"
        " path under /api/v1/hooks/; event: 'upstream-pipeline[:completed|failed|cancelled|any]'",
    )
    timezone: str = Field("UTC", description="IANA name; cron times are local to it")
    params: dict[str, Scalar] = Field(default_factory=dict)
    enabled: bool = True
    catchup: Catchup = Catchup.SKIP
    catchup_cap: int = Field(10, ge=1, le=1000, description="Most missed runs `all` starts")
    overlap: Overlap | None = Field(
        None,
        description="skip (the default for cron and interval) or queue (the default for"
        " webhook and event schedules: every call and every upstream run gets its run)",
    )
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=200,
        description="webhook only: the caller's secret (one is generated when left out)",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        _zone(v)
        return v

    @field_validator("expression")
    @classmethod
    def _expression(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        v = v.strip()
        if kind == ScheduleType.CRON:
            _cron(" ".join(v.split()))
            return " ".join(v.split())
        if kind == ScheduleType.INTERVAL:
            parse_interval(v)
        elif kind == ScheduleType.WEBHOOK:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
                raise ValueError(
                    f"{v!r} is not a webhook path: letters, digits, '.', '_' and '-', e.g."
                    " 'orders-arrived'"
                )
        elif kind == ScheduleType.EVENT:
            parse_event(v)
        return v

    @model_validator(mode="after")
    def _default_overlap(self) -> ScheduleIn:
        if self.overlap is None:
            self.overlap = Overlap.SKIP if self.type in TIMED else Overlap.QUEUE
        return self

    @model_validator(mode="after")
    def _secret_only_for_webhooks(self) -> ScheduleIn:
        if self.secret is not None and self.type != ScheduleType.WEBHOOK:
            raise ValueError("secret: only webhook schedules have a secret")
        return self


def schedule_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Schedule:
    """A stored schedule and its run-time state."""

    id: str
    name: str
    pipeline_id: str
    type: ScheduleType
    expression: str
    timezone: str
    params: dict[str, Any]
    enabled: bool
    catchup: Catchup
    catchup_cap: int
    overlap: Overlap
    secret_hash: str | None
    source: str  # "api" or "yaml"
    created_at: datetime
    updated_at: datetime  # when the definition last changed: intervals count from here
    last_run_id: str | None = None
    last_fired_at: datetime | None = None
    next_run_at: datetime | None = None
    last_error: str | None = None
    stats: dict[str, int] = field(default_factory=dict, compare=False)

    def row(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        for k in ("type", "catchup", "overlap"):
            out[k] = str(out[k])
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Schedule:
        row = dict(row)
        row["type"] = ScheduleType(row["type"])
        row["catchup"] = Catchup(row["catchup"])
        row["overlap"] = Overlap(row["overlap"])
        return cls(**row)

    def next_after(self, after: datetime) -> datetime | None:
        return next_fire(self.type, self.expression, self.timezone, self.updated_at, after)

    def fires_between(
        self, start: datetime, end: datetime, keep: int
    ) -> tuple[list[datetime], int]:
        """The last `keep` fire times t with start <= t <= end, and how many there were."""
        if self.type == ScheduleType.INTERVAL:
            step = parse_interval(self.expression)
            first = start if start >= self.updated_at else self.updated_at
            if first > end:
                return [], 0
            # start is itself a fire time when it came from next_run_at
            count = math.floor((end - first) / step) + 1
            last = first + (count - 1) * step
            return [last - i * step for i in reversed(range(min(keep, count)))], count
        kept: deque[datetime] = deque(maxlen=keep)
        count, t = 0, start
        while t is not None and t <= end and count < 100_000:
            kept.append(t)
            count += 1
            t = self.next_after(t)
        return list(kept), count

    @property
    def upstream(self) -> tuple[str, str] | None:
        return parse_event(self.expression) if self.type == ScheduleType.EVENT else None


# --- the scheduler ----------------------------------------------------------------------------


class Scheduler:
    """Keeps the stored schedules in step with APScheduler jobs and starts their runs."""

    def __init__(self, runtime: Runtime, clock: Callable[[], datetime] = now):
        from apscheduler.schedulers.background import BackgroundScheduler

        self.rt = runtime
        self.store = runtime.store
        self.clock = clock
        self._aps = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._lock = threading.RLock()
        self._all: dict[str, Schedule] = {
            r["id"]: Schedule.from_row(r) for r in self.store.list_schedules()
        }
        self.running = False
        self.load_seconds: float | None = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Catch up what was missed while the runtime was down, arm every timed schedule, go."""
        t0 = time.perf_counter()
        at = self.clock()
        with self._lock:
            for s in self._all.values():
                if s.enabled and s.type in TIMED:
                    self._catch_up(s, at)
                    self._arm(s, at)
            self._save_states(list(self._all.values()))
        self._aps.start()
        self.rt.engine.on_finish.append(self._on_run_finished)
        self.running = True
        self.load_seconds = time.perf_counter() - t0
        log.info("scheduler: %d schedule(s) loaded in %.3f s", len(self._all), self.load_seconds)

    def shutdown(self) -> None:
        if self.running:
            self.running = False
            self._aps.shutdown(wait=False)
            if self._on_run_finished in self.rt.engine.on_finish:
                self.rt.engine.on_finish.remove(self._on_run_finished)

    def status(self) -> dict[str, Any]:
        with self._lock:
            enabled = sum(1 for s in self._all.values() if s.enabled)
            nexts = [s.next_run_at for s in self._all.values() if s.next_run_at]
        return {
            # "off": not started (a runtime that only runs pipelines); "error": started, then died
            "status": ("ok" if self._aps.running else "error") if self.running else "off",
            "schedules": len(self._all),
            "enabled": enabled,
            "next_run_at": min(nexts).isoformat() if nexts else None,
        }

    # --- reading --------------------------------------------------------------------------------

    def schedules(self, pipeline_id: str | None = None) -> list[Schedule]:
        with self._lock:
            found = [replace(s) for s in self._all.values()]
        return [s for s in found if pipeline_id is None or s.pipeline_id == pipeline_id]

    def get(self, sid: str) -> Schedule:
        with self._lock:
            s = self._all.get(sid)
            if s is None:
                raise NotFound(f"no schedule {sid!r}")
            return replace(s)

    def preview(self, body: ScheduleIn | Schedule, n: int = 10) -> list[datetime]:
        """The next `n` fire times from now (for a paused schedule: as if it were resumed)."""
        if body.type not in TIMED:
            return []
        anchor = body.updated_at if isinstance(body, Schedule) else self.clock()
        out: list[datetime] = []
        t = self.clock()
        while len(out) < n:
            nxt = next_fire(body.type, body.expression, body.timezone, anchor, t)
            if nxt is None:
                break
            out.append(nxt)
            t = nxt
        return out

    # --- changing -------------------------------------------------------------------------------

    def create(self, body: ScheduleIn, *, source: str = "api") -> tuple[Schedule, str | None]:
        """Store and arm a new schedule; returns it and, for a webhook, its secret (shown once)."""
        sid = schedule_id(body.name)
        with self._lock:
            if sid in self._all:
                raise Conflict(f"schedule {sid!r} exists; PUT /api/v1/schedules/{sid} changes it")
            self._check(body, sid)
            secret = None
            if body.type == ScheduleType.WEBHOOK:
                secret = body.secret or secrets.token_urlsafe(24)
            at = self.clock()
            s = Schedule(
                id=sid, name=body.name, pipeline_id=body.pipeline_id, type=body.type,
                expression=body.expression, timezone=body.timezone, params=dict(body.params),
                enabled=body.enabled, catchup=body.catchup, catchup_cap=body.catchup_cap,
                overlap=body.overlap, secret_hash=_hash(secret) if secret else None,
                source=source, created_at=at, updated_at=at,
            )  # fmt: skip
            self._arm(s, at)
            self.store.save_schedule(s.row())
            self._all[sid] = s
            self._audit("schedule.create", s)
            return replace(s), secret

    def update(self, sid: str, body: ScheduleIn, *, source: str | None = None) -> Schedule:
        """Replace a schedule's definition (its id, history and, unless given, secret stay)."""
        with self._lock:
            old = self._all.get(sid)
            if old is None:
                raise NotFound(f"no schedule {sid!r}")
            self._check(body, sid)
            secret_hash = old.secret_hash
            if body.type == ScheduleType.WEBHOOK and body.secret:
                secret_hash = _hash(body.secret)
            elif body.type != ScheduleType.WEBHOOK:
                secret_hash = None
            elif secret_hash is None:
                raise ScheduleError(
                    "secret: a schedule that becomes a webhook needs a secret (at least 16"
                    " characters)"
                )
            at = self.clock()
            s = replace(
                old, name=body.name, pipeline_id=body.pipeline_id, type=body.type,
                expression=body.expression, timezone=body.timezone, params=dict(body.params),
                enabled=body.enabled, catchup=body.catchup, catchup_cap=body.catchup_cap,
                overlap=body.overlap, secret_hash=secret_hash, updated_at=at,
                source=source or old.source, last_error=None,
            )  # fmt: skip
            self._arm(s, at)
            self.store.save_schedule(s.row())
            self._all[sid] = s
            self._audit("schedule.update", s, {"before": _definition(old)})
            return replace(s)

    def delete(self, sid: str) -> None:
        with self._lock:
            if sid not in self._all:
                raise NotFound(f"no schedule {sid!r}")
            self._disarm(sid)
            self.store.delete_schedule(sid)
            self._audit("schedule.delete", self._all.pop(sid))

    def pause(self, sid: str, actor: str | None = None, detail: dict | None = None) -> Schedule:
        """Disable a schedule; `actor` and `detail` say who and why in the audit log."""
        with self._lock:
            s = self._live(sid)
            s.enabled, s.next_run_at = False, None
            self._disarm(sid)
            self.store.set_schedule_state(sid, enabled=False, next_run_at=None)
            self._audit("schedule.pause", s, detail, actor)
            return replace(s)

    def resume(self, sid: str) -> Schedule:
        """Enable again; the next time is computed from now (what was missed is not caught up)."""
        with self._lock:
            s = self._live(sid)
            s.enabled = True
            self._arm(s, self.clock())
            self.store.set_schedule_state(sid, enabled=True, next_run_at=s.next_run_at)
            self._audit("schedule.resume", s)
            return replace(s)

    def run_now(self, sid: str, params: dict[str, Any] | None = None) -> ExecutionRecord:
        """Start a run now, whatever the overlap policy; the next scheduled time stays."""
        with self._lock:
            s = self._live(sid)
        rec = self._start_run(
            s, f"schedule:{s.id}", None, params, check_overlap=False, raise_errors=True
        )
        assert rec is not None  # no overlap check, and errors raise
        self._audit("schedule.run_now", s, {"run_id": rec.id})
        return rec

    def fire_webhook(self, path: str, secret: str, params: dict[str, Any]) -> ExecutionRecord:
        """A call to /hooks/{path}: checks the schedule's secret and starts one run."""
        with self._lock:
            s = next(
                (
                    x
                    for x in self._all.values()
                    if x.type == ScheduleType.WEBHOOK and x.expression == path
                ),
                None,
            )
        if s is None:
            raise NotFound(f"no webhook {path!r}")
        if not (s.secret_hash and hmac.compare_digest(_hash(secret), s.secret_hash)):
            raise Unauthorized(
                f"wrong or missing secret for webhook {path!r} (send it in X-Webhook-Secret)"
            )
        if not s.enabled:
            raise Conflict(f"webhook {path!r} belongs to paused schedule {s.id!r}")
        rec = self._start_run(s, f"webhook:{s.id}", None, params, raise_errors=True)
        if rec is None:
            raise Conflict(
                f"pipeline {s.pipeline_id!r} has a run going and schedule {s.id!r} skips"
                " overlapping runs (overlap: skip)"
            )
        return rec

    def check_yaml(
        self, pipeline_id: str, name: str, spec: dict[str, Any] | str | None
    ) -> ScheduleIn | None:
        """Validate a pipeline's `schedule:` before the pipeline is saved (SpecError if bad)."""
        if spec is None:
            return None
        from pydantic import ValidationError

        from .errors import SpecError

        try:
            body = yaml_schedule(pipeline_id, name, spec)
        except ValidationError as exc:
            details = [
                f"schedule.{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}"
                for e in exc.errors()
            ]
            raise SpecError(f"pipeline {name}: invalid schedule", details=details) from None
        except ScheduleError as exc:
            raise SpecError(f"pipeline {name}: {exc.message}") from None
        sid = f"{pipeline_id}-schedule"
        with self._lock:
            existing = self._all.get(sid)
            if existing is not None and existing.source != "yaml":
                raise Conflict(
                    f"schedule {sid!r} exists and was not made from this pipeline's YAML; rename"
                    " or delete it first"
                )
            try:
                self._check(body, sid, pipeline_known=True)
            except ScheduleError as exc:
                raise SpecError(f"pipeline {name}: schedule.{exc.message}") from None
        return body

    def sync_pipeline(self, pipeline_id: str, name: str, spec: dict[str, Any] | str | None) -> None:
        """Keep the schedule a pipeline's YAML declares (`schedule:`) in step with that YAML."""
        sid = f"{pipeline_id}-schedule"
        with self._lock:
            existing = self._all.get(sid)
            body = self.check_yaml(pipeline_id, name, spec)
            if body is None:
                if existing is not None and existing.source == "yaml":
                    self.delete(sid)
                return
            if existing is None:
                self.create(body, source="yaml")
            else:
                current = ScheduleIn(
                    name=existing.name, pipeline_id=existing.pipeline_id, type=existing.type,
                    expression=existing.expression, timezone=existing.timezone,
                    params=existing.params, enabled=existing.enabled, catchup=existing.catchup,
                    catchup_cap=existing.catchup_cap, overlap=existing.overlap,
                )  # fmt: skip
                if current != body:
                    self.update(sid, body, source="yaml")

    def forget_pipeline(self, pipeline_id: str) -> list[str]:
        """Delete the schedules of a deleted pipeline, and event schedules it fed."""
        with self._lock:
            gone = [
                s.id
                for s in self._all.values()
                if s.pipeline_id == pipeline_id or (s.upstream and s.upstream[0] == pipeline_id)
            ]
            for sid in gone:
                self.delete(sid)
        return gone

    # --- internals ------------------------------------------------------------------------------

    def _audit(
        self, action: str, s: Schedule, extra: dict[str, Any] | None = None, actor: str | None = None
    ) -> None:
        self.store.audit(
            actor or ("yaml" if s.source == "yaml" else "api"), action, "schedule", s.id,
            {**_definition(s), **(extra or {})},
        )  # fmt: skip

    def _live(self, sid: str) -> Schedule:
        s = self._all.get(sid)
        if s is None:
            raise NotFound(f"no schedule {sid!r}")
        return s

    def _check(self, body: ScheduleIn, sid: str, *, pipeline_known: bool = False) -> None:
        """Checks that need the store: the pipeline exists, paths are unique, no event loops."""
        if not pipeline_known and not self.store.has_pipeline(body.pipeline_id):
            raise ScheduleError(f"pipeline_id: no pipeline {body.pipeline_id!r}")
        if body.type == ScheduleType.WEBHOOK:
            for other in self._all.values():
                if (
                    other.id != sid
                    and other.type == ScheduleType.WEBHOOK
                    and other.expression == body.expression
                ):
                    raise Conflict(
                        f"expression: webhook path {body.expression!r} is taken by schedule"
                        f" {other.id!r}"
                    )
        if body.type == ScheduleType.EVENT:
            upstream, _status = parse_event(body.expression)
            graph: dict[str, set[str]] = {}
            for other in self._all.values():
                if other.id != sid and other.upstream:
                    graph.setdefault(other.pipeline_id, set()).add(other.upstream[0])
            graph.setdefault(body.pipeline_id, set()).add(upstream)
            try:
                TopologicalSorter(graph).prepare()
            except CycleError as exc:
                loop = " -> ".join(reversed(exc.args[1]))
                raise ScheduleError(
                    f"expression: this event schedule would start a loop of runs: {loop}"
                ) from None

    def _arm(self, s: Schedule, after: datetime) -> None:
        """Compute the next fire time after `after` and (re)place its job."""
        s.next_run_at = s.next_after(after) if s.enabled and s.type in TIMED else None
        if s.next_run_at is None:
            self._disarm(s.id)
            return
        from apscheduler.triggers.date import DateTrigger

        self._aps.add_job(
            self._fire,
            DateTrigger(run_date=s.next_run_at, timezone=UTC),
            args=[s.id, s.next_run_at],
            id=s.id,
            replace_existing=True,
        )

    def _disarm(self, sid: str) -> None:
        from apscheduler.jobstores.base import JobLookupError

        try:
            self._aps.remove_job(sid)
        except JobLookupError:
            pass

    def _fire(self, sid: str, due: datetime) -> None:
        """APScheduler's job: start the run this fire time stands for, arm the next one. The run
        is started outside the lock, so schedules due at the same instant share one commit."""
        with self._lock:
            s = self._all.get(sid)
            if s is None or not s.enabled or s.next_run_at != due:
                return  # changed or paused since this job was armed
        self._start_run(s, f"schedule:{s.id}", due, None, save=False)
        with self._lock:
            if self._all.get(sid) is s and s.enabled and s.next_run_at == due:
                self._arm(s, max(due, self.clock()))  # a stall folds the missed times into this one
            try:
                self._save_states([s])  # with the run it started (last_run_id, last_fired_at)
            except StoreUnavailable as exc:  # armed in memory; stored with the next fire
                log.warning("schedule %s: its state is not stored: %s", s.id, exc)

    def _catch_up(self, s: Schedule, at: datetime) -> None:
        """At start: the fire times between the stored next time and now, by the catchup policy."""
        if s.next_run_at is None or s.next_run_at > at:
            return
        missed, count = s.fires_between(s.next_run_at, at, s.catchup_cap)
        if s.catchup == Catchup.SKIP or not missed:
            log.info("schedule %s: %d missed fire time(s) skipped (catchup: skip)", s.id, count)
            return
        starts = missed[-1:] if s.catchup == Catchup.LATEST else missed
        log.info(
            "schedule %s: %d missed fire time(s); starting %d (catchup: %s)",
            s.id, count, len(starts), s.catchup,
        )  # fmt: skip
        busy = s.overlap == Overlap.SKIP and bool(self.rt.active_runs(s.pipeline_id))
        for due in starts:  # one catch-up batch: overlap is judged against runs before it
            self._start_run(s, f"schedule:{s.id}", due, None, check_overlap=busy)

    def _start_run(
        self,
        s: Schedule,
        trigger: str,
        scheduled_for: datetime | None,
        params: dict[str, Any] | None,
        *,
        check_overlap: bool = True,
        raise_errors: bool = False,
        save: bool = True,
    ) -> ExecutionRecord | None:
        if check_overlap and s.overlap == Overlap.SKIP and self.rt.active_runs(s.pipeline_id):
            log.info("schedule %s: %s still has a run going; fire skipped", s.id, s.pipeline_id)
            s.stats["skipped"] = s.stats.get("skipped", 0) + 1
            return None
        try:
            rec = self.rt.trigger(
                s.pipeline_id,
                {**s.params, **(params or {})},
                trigger=trigger,
                scheduled_for=scheduled_for,
            )
        except FlexiError as exc:
            log.warning("schedule %s could not start %s: %s", s.id, s.pipeline_id, exc)
            s.last_error = str(exc)
            try:
                self.store.set_schedule_state(s.id, last_error=s.last_error)
            except StoreUnavailable:
                pass  # the store cannot write (the error above says so); memory has it
            if raise_errors:
                raise
            return None
        s.last_run_id, s.last_fired_at, s.last_error = rec.id, self.clock(), None
        if save:  # else the caller saves it with the schedule's next fire time
            self.store.set_schedule_state(
                s.id, last_run_id=rec.id, last_fired_at=s.last_fired_at, last_error=None
            )
        return rec

    def _save_states(self, schedules: list[Schedule]) -> None:
        self.store.set_schedule_states(
            [
                {"id": s.id, "next_run_at": s.next_run_at, "last_run_id": s.last_run_id,
                 "last_fired_at": s.last_fired_at, "last_error": s.last_error}
                for s in schedules
            ]
        )  # fmt: skip

    def _on_run_finished(self, rec: ExecutionRecord) -> None:
        """Event schedules: a finished run of an upstream pipeline starts their pipeline."""
        with self._lock:
            hits = [
                s
                for s in self._all.values()
                if s.enabled
                and s.upstream
                and s.upstream[0] == rec.pipeline_id
                and (s.upstream[1] == "any" or s.upstream[1] == str(rec.status))
            ]
        for s in hits:
            upstream = {
                "upstream_run_id": rec.id,
                "upstream_pipeline": rec.pipeline_id,
                "upstream_status": str(rec.status),
            }
            with self._lock:
                self._start_run(s, f"event:{rec.id}", None, upstream)


def _definition(s: Schedule) -> dict[str, Any]:
    """What a person set on a schedule (for the audit log; never the secret)."""
    return {
        "pipeline_id": s.pipeline_id, "type": str(s.type), "expression": s.expression,
        "timezone": s.timezone, "enabled": s.enabled, "catchup": str(s.catchup),
        "overlap": str(s.overlap),
    }  # fmt: skip


def yaml_schedule(pipeline_id: str, name: str, spec: dict[str, Any] | str) -> ScheduleIn:
    """A pipeline's `schedule:` as a schedule: a string is a cron expression or an interval."""
    if isinstance(spec, str):
        try:
            parse_interval(spec)
            kind = ScheduleType.INTERVAL
        except ValueError:
            kind = ScheduleType.CRON
        spec = {"type": kind, "expression": spec}
    if not isinstance(spec, dict):
        raise ScheduleError("schedule: write a cron expression, an interval, or a mapping")
    if str(spec.get("type")) == ScheduleType.WEBHOOK:
        raise ScheduleError(
            "schedule.type: webhook schedules are made through the API (their secret is shown"
            " once there), not in pipeline YAML"
        )
    if "secret" in spec:
        raise ScheduleError("schedule.secret: secrets do not belong in pipeline YAML")
    return ScheduleIn(name=f"{name} schedule", pipeline_id=pipeline_id, **spec)
