"""`notify` stages: send a webhook message (Slack-compatible JSON) or an email over SMTP."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from ..errors import StageError
from .base import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    if cfg.channel == "webhook":
        import httpx

        try:
            resp = httpx.post(
                cfg.url, json={"text": f"*{cfg.subject}*\n{cfg.body}".strip()}, timeout=10
            )
        except httpx.HTTPError as exc:
            raise StageError(f"webhook {cfg.url} unreachable: {exc}") from None
        if resp.status_code >= 300:
            raise StageError(f"webhook {cfg.url} answered {resp.status_code}: {resp.text[:200]}")
        ctx.log(f"webhook message sent ({resp.status_code})")
        return StageResult(None, None, {"status_code": resp.status_code})
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = cfg.subject, cfg.sender, ", ".join(cfg.to)
    msg.set_content(cfg.body)
    try:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=10) as smtp:
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise StageError(f"SMTP {cfg.smtp_host}:{cfg.smtp_port}: {exc}") from None
    ctx.log(f"email sent to {len(cfg.to)} recipient(s)")
    return StageResult(None, None, {"recipients": len(cfg.to)})
