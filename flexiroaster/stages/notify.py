"""`notify` stages: send a webhook message (Slack-compatible JSON) or an email over SMTP, to a
stored smtp or webhook connection or to a `url` / `smtp_host` given in the stage itself.

`subject` and `body` are filled by the engine before the stage runs. Placeholders available:
`{{ pipeline }}`, `{{ run_id }}`, `{{ run_date }}` (YYYY-MM-DD the run stands for), `{{ run_ts }}`
(its ISO timestamp), `{{ data_dir }}`, the pipeline's `variables`, the run's parameters,
`{{ vars.NAME }}` (stored variables) and `{{ secrets.NAME }}` (stored secrets: sent as they are
to the recipients, masked only in what the run records)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from ..channels import smtp_session, smtp_settings
from ..connections import mask_values
from ..errors import StageError
from ..secrets import Masker
from .base import StageContext, StageResult

if TYPE_CHECKING:
    from ..connections import Connection

WEBHOOK_TIMEOUT = 10.0
WEBHOOK_RETRIES = 4


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg.connection is not None:
        conn = ctx.connection(cfg.connection)
        if str(conn.type) == "webhook":
            return _webhook_connection(ctx, conn)
        if str(conn.type) == "smtp":
            return _email_connection(ctx, conn)
        raise StageError(
            f"connection {conn.name!r} is of type {conn.type}; a notify stage needs an smtp or"
            " webhook connection"
        )
    if cfg.channel == "webhook":
        return _post(ctx, cfg.url, f"webhook {cfg.url}", secrets=())
    return _email(
        ctx,
        f"SMTP {cfg.smtp_host}:{cfg.smtp_port}",
        dict(host=cfg.smtp_host, port=cfg.smtp_port, timeout=10),
        sender=cfg.sender,
    )


def _text(cfg: Any) -> str:
    return f"*{cfg.subject}*\n{cfg.body}".strip()


# --- webhook --------------------------------------------------------------------------------


def _webhook_connection(ctx: StageContext, conn: Connection) -> StageResult:
    name = f"webhook {conn.name}"  # never the URL: it is the connection's secret
    fmt = conn.config.get("format") or "slack"
    if fmt != "slack":
        raise StageError(f"{name}: unknown format {fmt!r} (known: slack)")
    url = conn.secrets.get("url")
    if not url:
        raise StageError(f"{name} has no `url` secret")
    if not url.startswith(("http://", "https://")):
        raise StageError(f"{name}: its `url` secret is not an http(s) URL")
    result = _post(ctx, url, name, secrets=mask_values(conn.secrets, conn.config))
    result.metrics["connection"] = conn.name
    return result


def _post(ctx: StageContext, url: str, name: str, secrets: Any) -> StageResult:
    """POST the message as {"text": ...}, retrying 429 / 5xx / connection errors."""
    import httpx

    from ..connectors.retry import Sender

    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        raise StageError(f"{name}: not a valid URL") from None
    with httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as http:
        sender = Sender(ctx, http, max_retries=WEBHOOK_RETRIES, secrets=[url, *secrets])
        resp = sender.send("POST", target, f"POST {name}", json={"text": _text(ctx.config)})
        if not 200 <= resp.status_code < 300:
            tries = f" after {sender.requests} attempt(s)" if sender.retries else ""
            raise StageError(f"{name} answered {sender.describe(resp)}{tries}")
    ctx.log(f"{name}: message sent ({resp.status_code})")
    metrics = {"status_code": resp.status_code, "retries": sender.retries}
    return StageResult(None, None, metrics)


# --- email ----------------------------------------------------------------------------------


def _email_connection(ctx: StageContext, conn: Connection) -> StageResult:
    c = conn.config
    name = f"smtp connection {conn.name!r}"
    if not c.get("host"):
        raise StageError(f"{name} has no `host`")
    if c.get("ssl") and c.get("starttls"):
        raise StageError(f"{name}: `ssl` and `starttls` exclude each other; set one")
    if c.get("username") and conn.secrets.get("password") is None:
        raise StageError(f"{name} has `username` but no `password` secret")
    session = smtp_settings(conn)
    server = {k: session[k] for k in ("host", "port", "timeout")}
    result = _email(
        ctx,
        f"{name} ({server['host']}:{server['port']})",
        server,
        sender=c.get("sender") or ctx.config.sender,
        tls=session["tls"],
        login=session["login"],
        secrets=mask_values(conn.secrets, conn.config),
    )
    result.metrics["connection"] = conn.name
    return result


def _email(
    ctx: StageContext,
    name: str,
    server: dict[str, Any],
    *,
    sender: str,
    tls: str | None = None,
    login: tuple[str, str] | None = None,
    secrets: Any = (),
) -> StageResult:
    cfg = ctx.config
    if not cfg.to:
        raise StageError(f"an email notification through {name} needs `to` (the recipients)")
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = cfg.subject, sender, ", ".join(cfg.to)
    msg.set_content(cfg.body)

    scrub = Masker(list(secrets))
    try:
        with smtp_session(
            **server, tls=tls, login=login, opened=lambda smtp: ctx.on_kill(smtp.close)
        ) as smtp:  # a timeout or cancel closes the connection
            ctx.check_cancelled()
            refused = smtp.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        who = login[0] if login else ""
        why = exc.smtp_error.decode(errors="replace") if exc.smtp_error else ""
        raise StageError(
            scrub(f"{name}: login as {who!r} refused ({exc.smtp_code} {why})")
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        ctx.check_cancelled()
        raise StageError(scrub(f"{name}: {exc}")) from None
    sent = len(cfg.to) - len(refused)
    if refused:
        ctx.log(f"{name} refused {len(refused)} recipient(s): {', '.join(refused)}", "WARN")
    ctx.log(f"email sent through {name} to {sent} recipient(s)")
    return StageResult(None, None, {"recipients": sent})
