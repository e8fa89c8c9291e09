"""Signed JSON webhooks with retries: the outbox of alert notifications (`alert_notifications`).

Each new alert is one POST per URL, on delivery threads (a slow receiver holds up no run);
a rule's channels (stored smtp / webhook connections, channels.py) are deliveries here too,
their "url" being `connection:<name>`, retried the same way:

    Content-Type: application/json
    X-FlexiRoaster-Event: alert.opened
    X-FlexiRoaster-Delivery: <notification id, the same on every retry of one delivery>
    X-FlexiRoaster-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

    {"event": "alert.opened", "alert": {id, rule_id, pipeline_id, kind, severity, status,
     title, message, evidence, created_at}, "sent_at": "<ISO 8601>"}

The HMAC key is FLEXIROASTER_ALERT_SECRET (its UTF-8 bytes) or, when that is unset, the text of
DATA_DIR/alert-webhook.key (64 hex digits, created with mode 0600 on first use; the key is the
digits as text, not the bytes they spell). The MAC is over the bytes of f"{t}." followed by the
raw request body, exactly as received. To verify:

    signature = request.headers["X-FlexiRoaster-Signature"]
    t, v1 = (part.split("=", 1)[1] for part in signature.split(","))
    mac = hmac.new(key, f"{t}.".encode() + raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(mac, v1) and abs(time.time() - int(t)) < 300  # refuse replays

and drop a delivery id already handled (a retry after a lost answer comes again). A non-2xx
answer or a connection error is retried after FLEXIROASTER_ALERT_RETRY_DELAY seconds, doubling,
up to FLEXIROASTER_ALERT_RETRIES times; redirects are not followed.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .channels import PREFIX, ChannelError
from .records import now

if TYPE_CHECKING:
    import httpx

    from .settings import Settings
    from .store import Store

log = logging.getLogger("flexiroaster.alerts")

EVENT = "alert.opened"
THREADS = 4


class Delivery(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Notification:
    id: str
    alert_id: str
    url: str
    status: Delivery
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Notification:
        return cls(**{**row, "status": Delivery(row["status"])})

    def row(self) -> dict[str, Any]:
        return {**self.__dict__, "status": str(self.status)}


def new_id() -> str:
    """Time-ordered, like run ids (alerts and their notifications)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


def sign(key: bytes, body: bytes, ts: int) -> str:
    """The X-FlexiRoaster-Signature value of `body` sent at unix time `ts`."""
    mac = hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def key_file(path: Path) -> bytes:
    """The key in `path`, made (32 random bytes as hex, mode 0600) if there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip().encode()
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    log.info("alert webhook signing key created in %s", path)
    return key.encode()


def _where(url: str) -> str:
    """scheme://host of a URL, for logs (a path or query may hold a receiver's token)."""
    if url.startswith(PREFIX):
        return url  # a channel's name (its URL, if any, is the connection's secret)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"


def _said(resp: httpx.Response) -> str:
    """The start of an error answer's body (at most 200 characters, never all of a big one)."""
    head = b""
    for chunk in resp.iter_bytes():
        head += chunk
        if len(head) >= 200:
            break
    text = head[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


class Outbox:
    """Queues deliveries by due time and makes them on THREADS daemon threads."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        channel: Callable[[str, dict[str, Any], httpx.Client], int | None] | None = None,
    ):
        self.store = store
        self.settings = settings
        # Sends through a stored connection: url "connection:<name>" (channels.py); raises
        # channels.ChannelError.
        self.channel = channel
        self._key: bytes | None = None
        self._key_lock = threading.Lock()  # the key file is made once, by one thread
        self._due: list[tuple[float, int, Notification, dict[str, Any]]] = []  # a heap
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def key(self) -> bytes:
        with self._key_lock:
            if self._key is None:
                secret = self.settings.alert_secret
                self._key = (
                    secret.get_secret_value().encode()
                    if secret is not None
                    else key_file(self.settings.data_dir / "alert-webhook.key")
                )
            return self._key

    def start(self, resume: list[tuple[Notification, dict[str, Any]]]) -> None:
        """Start delivering, beginning with `resume` (pending ones from an earlier runtime)."""
        for n, payload in resume:
            self._queue(n, payload, 0.0)
        for i in range(THREADS):
            t = threading.Thread(target=self._loop, name=f"alert-webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float) -> None:
        """Stop; a delivery in flight may finish, the rest stay pending in the store."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def pending(self) -> list[Notification]:
        rows = self.store.rows("alert_notifications", "status = 'pending'", order="created_at, id")
        return [Notification.from_row(r) for r in rows]

    def of(self, alert_id: str) -> list[Notification]:
        rows = self.store.rows(
            "alert_notifications", "alert_id = ?", [alert_id], order="created_at, id"
        )
        return [Notification.from_row(r) for r in rows]

    def send(self, alert_id: str, payload: dict[str, Any], urls: list[str]) -> None:
        """Record one pending notification per URL and queue it to go now."""
        at = now()
        made = [
            Notification(new_id(), alert_id, u, Delivery.PENDING, 0, None, None, at) for u in urls
        ]
        self.store.put_rows("alert_notifications", [n.row() for n in made])
        for n in made:
            self._queue(n, payload, 0.0)

    def _queue(self, n: Notification, payload: dict[str, Any], delay: float) -> None:
        with self._cv:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), n, payload))
            self._cv.notify()

    def _loop(self) -> None:
        import httpx

        # One client per thread; redirects are not followed (a receiver that moved says so).
        timeout = httpx.Timeout(10.0, connect=5.0)
        with httpx.Client(timeout=timeout, follow_redirects=False) as http:
            while True:
                with self._cv:
                    while not self._stop.is_set() and (
                        not self._due or self._due[0][0] > time.monotonic()
                    ):
                        self._cv.wait(self._due[0][0] - time.monotonic() if self._due else None)
                    if self._stop.is_set():
                        return
                    _, _, n, payload = heapq.heappop(self._due)
                try:
                    self._attempt(http, n, payload)
                except Exception:  # e.g. the store closed under a delivery at shutdown
                    if not self._stop.is_set():
                        log.exception("alert notification %s: delivery failed", n.id)

    def _attempt(self, http: httpx.Client, n: Notification, payload: dict[str, Any]) -> None:
        if n.url.startswith(PREFIX):
            code, error, final = self._via_channel(http, n, payload)
        else:
            code, error, final = self._post(http, n, payload)
        self._record(n, payload, code, error, final)

    def _via_channel(
        self, http: httpx.Client, n: Notification, payload: dict[str, Any]
    ) -> tuple[int | None, str | None, bool]:
        if self.channel is None:
            return None, "no channel sender in this runtime", True
        try:
            return self.channel(n.url.removeprefix(PREFIX), payload, http), None, False
        except ChannelError as exc:
            return exc.status_code, str(exc), exc.final

    def _post(
        self, http: httpx.Client, n: Notification, payload: dict[str, Any]
    ) -> tuple[int | None, str | None, bool]:
        """The signed JSON POST of an alert to a webhook URL."""
        import httpx

        body = json.dumps({"event": EVENT, "alert": payload, "sent_at": now().isoformat()}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-FlexiRoaster-Event": EVENT,
            "X-FlexiRoaster-Delivery": n.id,
            "X-FlexiRoaster-Signature": sign(self.key(), body, int(time.time())),
        }
        code, error, final = None, None, False
        try:
            with http.stream("POST", n.url, content=body, headers=headers) as resp:
                code = resp.status_code
                if not 200 <= code < 300:
                    error = f"HTTP {code}{_said(resp)}"
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            error, final = f"{exc.__class__.__name__}: {exc}", True  # no retry mends the URL
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        return code, error, final

    def _record(
        self,
        n: Notification,
        payload: dict[str, Any],
        code: int | None,
        error: str | None,
        final: bool,
    ) -> None:
        """Store how an attempt went; queue the next one after the doubling delay."""
        attempts = n.attempts + 1
        if error is None:
            status = Delivery.DELIVERED
        elif final or attempts > self.settings.alert_retries:
            status = Delivery.FAILED
        else:
            status = Delivery.PENDING
        done = replace(
            n, status=status, attempts=attempts, last_status_code=code, last_error=error,
            delivered_at=now() if status == Delivery.DELIVERED else None,
        )  # fmt: skip
        if self._stop.is_set():
            return  # the store may be closing; the row stays as it was (pending)
        self.store.put_rows("alert_notifications", [done.row()])
        where = _where(n.url)
        if status == Delivery.DELIVERED:
            log.info("alert %s: notified %s (attempt %d)", n.alert_id, where, attempts)
        elif status == Delivery.FAILED:
            log.warning(
                "alert %s: gave up notifying %s after %d attempt(s): %s",
                n.alert_id, where, attempts, error,
            )  # fmt: skip
        else:
            delay = self.settings.alert_retry_delay * 2 ** (attempts - 1)
            log.warning(
                "alert %s: notifying %s failed (%s); retry in %.1f s",
                n.alert_id, where, error, delay,
            )  # fmt: skip
            self._queue(done, payload, delay)
