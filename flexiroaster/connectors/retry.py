"""HTTP requests with retries for stages: 429, 5xx and connection errors are retried with the
server's Retry-After or exponential backoff with jitter, waits obey the run's cancel and the
stage's kill, and nothing secret (query strings, headers, stored secret values) is logged."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, StageError

if TYPE_CHECKING:
    import httpx

    from ..stages.base import StageContext

BASE_DELAY = 0.5  # first backoff, doubled each retry
MAX_DELAY = 60.0  # cap for backoff and for a server's Retry-After


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta seconds or an HTTP date), capped; None if
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_DELAY)


def backoff(retry: int) -> float:
    """Delay before retry number `retry` (1-based): 0.5 s doubled each time, plus up to half
    again of random jitter so clients that failed together do not retry together."""
    delay = BASE_DELAY * 2 ** (retry - 1)
    return min(delay + random.uniform(0, delay / 2), MAX_DELAY)


class Sender:
    """Sends one stage's requests through one client, counting requests and retries.

    The client is closed when the engine kills the stage (timeout or cancel), and a wait
    between attempts ends at once then."""

    def __init__(
        self,
        ctx: StageContext,
        client: httpx.Client,
        *,
        max_retries: int,
        secrets: Iterable[str] = (),
    ):
        self.ctx = ctx
        self.client = client
        self.max_retries = max(0, int(max_retries))
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.requests = 0
        self.retries = 0
        self._stopped = threading.Event()
        ctx.on_kill(self._stop)

    def _stop(self) -> None:
        self._stopped.set()
        self.client.close()

    def scrub(self, text: str) -> str:
        """`text` without any of the connection's secret values."""
        for value in self.secrets:
            text = text.replace(value, "***")
        return text

    def check(self) -> None:
        """Raise if the run was cancelled or the stage was stopped."""
        if self.ctx.cancel.is_set():
            raise Cancelled("the run was cancelled")
        if self._stopped.is_set():
            raise StageError("the stage was stopped (timeout) during an HTTP request")

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            # ctx.cancel is the run's; the kill (a timeout) sets _stopped: look at both.
            if self.ctx.cancel.wait(min(left, 0.1)) or self._stopped.is_set():
                break
        self.check()

    def send(self, method: str, url: Any, label: str, **kwargs: Any) -> httpx.Response:
        """The response of the last attempt (success, a non-retryable status, or a retryable
        one once the retries are spent). Connection errors left after the retries raise.

        `label` names the request in log lines and errors ("GET /items page 3"): never the
        query string or headers, which may carry secrets."""
        import httpx

        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            self.check()
            self.requests += 1
            try:
                resp = self.client.request(method, url, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                self.check()  # a client closed by a kill fails its request: say why
                why = self.scrub(
                    f"{type(exc).__name__} ({exc})" if str(exc) else type(exc).__name__
                )
                if attempt == attempts:
                    raise StageError(f"{label}: {why} after {attempts} attempt(s)") from None
                delay = backoff(attempt)
            except RuntimeError:  # "the client has been closed"
                self.check()
                raise
            else:
                if not retryable(resp.status_code) or attempt == attempts:
                    return resp
                why = str(resp.status_code)
                asked = retry_after(resp.headers.get("Retry-After"))
                delay = backoff(attempt) if asked is None else asked
                resp.close()
            self.retries += 1
            self.ctx.log(
                f"{label}: {why}, retry in {delay:.1f} s (attempt {attempt + 1} of {attempts})",
                "WARN",
            )
            self._wait(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def describe(self, resp: httpx.Response, limit: int = 200) -> str:
        """ "503 Service Unavailable: <start of the body>" for an error message."""
        text = f"{resp.status_code} {resp.reason_phrase}".strip()
        try:
            body = " ".join(resp.text.split())[:limit]
        except Exception:  # an undecodable body
            body = ""
        return self.scrub(f"{text}: {body}" if body else text)
