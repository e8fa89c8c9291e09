"""Alert channels: a new alert sent through a stored smtp or webhook connection, as a message
whose subject and text are the rule's templates over the alert (`{{ alert.title }}` ...), plus
the SMTP session every mail of the runtime goes through (notify stages, connection tests)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from .errors import TemplateError
from .template import PLACEHOLDER, render_text

if TYPE_CHECKING:
    import httpx

    from .connections import Connection

PREFIX = "connection:"  # an outbox "url" that names a channel instead of a webhook URL
SUBJECT = "[FlexiRoaster] {{ alert.severity }}: {{ alert.title }}"
BODY = """{{ alert.message }}

Pipeline: {{ alert.pipeline_id }}
Alert: {{ alert.id }} ({{ alert.kind }}, rule {{ alert.rule_id }}), {{ alert.status }} since {{ alert.created_at }}
Runs: {{ alert.evidence }}"""
FIELDS = (
    "id", "rule_id", "pipeline_id", "kind", "severity", "status", "title", "message",
    "evidence", "created_at",
)  # fmt: skip


class ChannelError(Exception):
    """A delivery that failed; `final` when retrying cannot mend it."""

    def __init__(self, message: str, final: bool = False, status_code: int | None = None):
        super().__init__(message)
        self.final = final
        self.status_code = status_code


def check_template(text: str | None) -> str | None:
    """What is wrong with a message template (an unknown placeholder), or None."""
    for m in PLACEHOLDER.finditer(text or ""):
        head, _, rest = m.group(1).partition(".")
        if head != "alert" or rest not in FIELDS or m.group(2):
            known = ", ".join(f"alert.{f}" for f in FIELDS)
            return f"unknown placeholder {{{{ {m.group(0)[2:-2].strip()} }}}} (known: {known})"
    return None


def render(alert: dict[str, Any], subject: str | None, body: str | None) -> tuple[str, str]:
    """The message of an alert (its webhook payload) by a rule's templates."""
    scope = {"alert": {f: alert.get(f, "") for f in FIELDS}}
    scope["alert"]["evidence"] = ", ".join(alert.get("evidence") or []) or "none"
    try:
        return render_text(subject or SUBJECT, scope), render_text(body or BODY, scope)
    except TemplateError as exc:  # templates are checked when saved; an old one may be stale
        return render_text(SUBJECT, scope), f"{render_text(BODY, scope)}\n({exc})"


@contextmanager
def smtp_session(
    host: str,
    port: int,
    timeout: float,
    *,
    tls: str | None = None,
    login: tuple[str, str] | None = None,
    opened: Callable[[smtplib.SMTP], Any] | None = None,
) -> Iterator[smtplib.SMTP]:
    """An SMTP connection: SMTPS (`tls` "ssl") or STARTTLS ("starttls") with the default
    certificate checks, logged in when `login` is given; closed on leaving. `opened` is called
    with it as soon as it is connected (e.g. to close it from a canceller)."""
    context = ssl.create_default_context()
    if tls == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    if opened is not None:
        opened(smtp)
    with smtp:
        if tls == "starttls":
            smtp.starttls(context=context)
        if login is not None:
            smtp.login(*login)
        yield smtp


def smtp_settings(conn: Connection) -> dict[str, Any]:
    """smtp_session's arguments from an smtp connection."""
    c = conn.config
    tls = "ssl" if c.get("ssl") else "starttls" if c.get("starttls") else None
    login = None
    if c.get("username"):
        login = (str(c["username"]), conn.secrets.get("password") or "")
    return {
        "host": str(c["host"]),
        "port": int(c.get("port") or (465 if tls == "ssl" else 25)),
        "timeout": float(c.get("timeout") or 10),
        "tls": tls,
        "login": login,
    }


def deliver(
    conn: Connection, subject: str, text: str, recipients: list[str], http: httpx.Client
) -> int | None:
    """Send one alert message through a channel; returns the HTTP status of a webhook. Raises
    ChannelError with the channel's name, never its URL or password."""
    import httpx

    name = f"{conn.type} channel {conn.name}"
    scrub = conn.masker()
    if str(conn.type) == "webhook":
        url = conn.secrets.get("url")
        if not url:
            raise ChannelError(f"{name} has no `url` secret", final=True)
        try:
            resp = http.post(url, json={"text": f"*{subject}*\n{text}"})
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise ChannelError(f"{name}: its `url` secret is not an http(s) URL", final=True) from None
        except httpx.HTTPError as exc:
            raise ChannelError(scrub(f"{name}: {exc.__class__.__name__}: {exc}")) from None
        if not 200 <= resp.status_code < 300:
            said = scrub(resp.text[:200].strip())
            raise ChannelError(
                f"{name} answered HTTP {resp.status_code}" + (f": {said}" if said else ""),
                final=400 <= resp.status_code < 500 and resp.status_code != 429,
                status_code=resp.status_code,
            )
        return resp.status_code
    if str(conn.type) == "smtp":
        if not recipients:
            raise ChannelError(f"{name}: the rule names no `recipients`", final=True)
        msg = EmailMessage()
        msg["Subject"], msg["To"] = subject, ", ".join(recipients)
        msg["From"] = conn.config.get("sender") or "flexiroaster@localhost"
        msg.set_content(text)
        try:
            with smtp_session(**smtp_settings(conn)) as smtp:
                refused = smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelError(f"{name}: login refused ({exc.smtp_code})", final=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelError(scrub(f"{name}: {exc}")) from None
        if refused:
            raise ChannelError(f"{name} refused {', '.join(refused)}", final=True)
        return None
    raise ChannelError(f"connection {conn.name} is of type {conn.type}, not smtp or webhook", True)

