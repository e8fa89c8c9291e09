"""JSON HTTP APIs as stage sources and targets: paged GET into a table, batched POST out of one.
HTTP output cannot be transactional: batches a receiver accepted stay accepted when a later one
fails; each carries `Idempotency-Key: <run>-<stage>-<batch>` so a resent batch can be deduped."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..connections import mask_values
from ..errors import Cancelled, StageError
from ..stages.base import StageContext, StageResult
from .retry import Sender

if TYPE_CHECKING:
    import httpx

    from ..connections import Connection

AUTH_KINDS = ("none", "bearer", "header", "basic")


# --- the connection -------------------------------------------------------------------------


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def endpoint_url(conn: Connection, endpoint: str) -> httpx.URL:
    """`endpoint` under the connection's base_url; a full URL must be on the same scheme, host
    and port (the connection's credentials go with every request)."""
    import httpx

    where = f"http connection {conn.name!r}"
    try:
        base = httpx.URL(str(conn.config.get("base_url") or ""))
    except httpx.InvalidURL as exc:
        raise StageError(f"{where}: base_url is not a valid URL ({exc})") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise StageError(f"{where}: base_url must be an http(s) URL with a host")
    try:
        given = httpx.URL(endpoint)
        if given.scheme or given.host:  # absolute, or //host/path
            url = given
        else:
            root = str(base.copy_with(query=None, fragment=None))
            url = httpx.URL(root.rstrip("/") + "/" + endpoint.lstrip("/"))
            url = url.copy_merge_params(base.params) if base.params else url
    except httpx.InvalidURL as exc:
        raise StageError(f"{where}: endpoint {endpoint!r} is not a valid URL ({exc})") from None
    if _origin(url) != _origin(base):
        raise StageError(
            f"{where}: endpoint {endpoint!r} leaves the connection's host"
            f" {base.scheme}://{base.netloc.decode()}; give a path under base_url (the connection's"
            " credentials are only sent to its own host)"
        )
    return url


def client(conn: Connection) -> httpx.Client:
    """A client with the connection's headers, auth, timeout and TLS setting."""
    import httpx

    cfg, where = conn.config, f"http connection {conn.name!r}"
    headers = {"User-Agent": "flexiroaster", "Accept": "application/json"}
    headers.update({str(k): str(v) for k, v in (cfg.get("headers") or {}).items()})
    auth_kind = cfg.get("auth") or "none"
    auth = None
    if auth_kind not in AUTH_KINDS:
        raise StageError(f"{where}: unknown auth {auth_kind!r} (known: {', '.join(AUTH_KINDS)})")
    if auth_kind in ("bearer", "header"):
        token = conn.secrets.get("token")
        if not token:
            raise StageError(f"{where} uses {auth_kind} auth but has no `token` secret")
        if auth_kind == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers[str(cfg.get("auth_header") or "Authorization")] = token
    elif auth_kind == "basic":
        if not cfg.get("username") or "password" not in conn.secrets:
            raise StageError(
                f"{where} uses basic auth: it needs `username` and a `password` secret"
            )
        auth = httpx.BasicAuth(str(cfg["username"]), conn.secrets["password"])
    return httpx.Client(
        headers=headers,
        auth=auth,
        timeout=float(cfg.get("timeout") or 30),
        verify=bool(cfg.get("verify_tls", True)),
        follow_redirects=False,  # a redirect could carry the credentials elsewhere
    )


def _sender(ctx: StageContext, conn: Connection, http: httpx.Client) -> Sender:
    retries = conn.config.get("max_retries")
    return Sender(
        ctx,
        http,
        max_retries=4 if retries is None else retries,
        secrets=mask_values(conn.secrets, conn.config),
    )


def _failed(sender: Sender, resp: httpx.Response) -> str:
    """Why a final response is a failure, with a hint where there is one."""
    why = sender.describe(resp)
    if resp.status_code in (401, 403):
        why += " (check the connection's credentials)"
    elif 300 <= resp.status_code < 400:
        why += " (redirects are not followed: use the final address)"
    elif resp.status_code == 429 or resp.status_code >= 500:
        why += f" after {sender.max_retries + 1} attempt(s)"
    return why


# --- read -----------------------------------------------------------------------------------


def _at(doc: Any, path: str) -> tuple[bool, Any, str]:
    """(found, value, where it stopped) for a dotted path; list items by number (items.0)."""
    here: Any = doc
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(here, dict) and part in here:
            here = here[part]
        elif isinstance(here, list) and part.isdigit() and int(part) < len(here):
            here = here[int(part)]
        else:
            return False, here, ".".join(walked)
        walked.append(part)
    return True, here, path


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(list(value)[:10]) + (", ..." if len(value) > 10 else "")
        return f"an object (keys: {keys or 'none'})"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else f"a {type(value).__name__} ({str(value)[:40]!r})"


def _lists_in(doc: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted paths of the lists inside an object, for a hint."""
    if not isinstance(doc, dict) or depth == 0:
        return []
    found = []
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, list):
            found.append(path)
        else:
            found += _lists_in(value, path + ".", depth - 1)
    return found


def records_of(doc: Any, path: str | None, label: str) -> list[dict[str, Any]]:
    """The records of one response: the list at `path`, or the whole response."""
    if path:
        found, value, stop = _at(doc, path)
        if not found:
            at = f"`{stop}` is {_kind(value)}" if stop else f"the response is {_kind(value)}"
            raise StageError(f"{label}: records path `{path}` not found: {at}")
        if value is None:
            return []
        if not isinstance(value, list):
            raise StageError(f"{label}: records path `{path}` holds {_kind(value)}, not a list")
    else:
        value = doc
        if not isinstance(value, list):
            lists = _lists_in(value)
            hint = f" (lists in it: {', '.join(lists[:5])})" if lists else ""
            raise StageError(
                f"{label}: the response is {_kind(value)}, not a list: set `records` to the dotted"
                f" path of its list of records{hint}"
            )
    if all(isinstance(r, dict) for r in value):
        return value
    if not any(isinstance(r, dict) for r in value):
        return [{"value": r} for r in value]  # a list of plain values: one column
    bad = next(i for i, r in enumerate(value) if not isinstance(r, dict))
    raise StageError(
        f"{label}: records mix objects and other values (item {bad} is {_kind(value[bad])})"
    )


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """Query parameters as httpx takes them: scalars and lists as is, objects as JSON text."""
    return {
        k: v if v is None or isinstance(v, (str, int, float, bool, list)) else json.dumps(v)
        for k, v in params.items()
    }


def _get_json(sender: Sender, url: httpx.URL, params: dict, label: str, where: str) -> Any:
    resp = sender.send("GET", url, label, params=params)
    if not 200 <= resp.status_code < 300:
        raise StageError(f"{where}: {label} answered {_failed(sender, resp)}")
    try:
        return resp.json()
    except ValueError:
        kind = resp.headers.get("content-type", "no content type")
        start = sender.scrub(" ".join(resp.text.split())[:80])
        raise StageError(f"{where}: {label} did not answer JSON ({kind}): {start!r}") from None


def read(ctx: StageContext, conn: Connection, cfg: Any) -> StageResult:
    """GET every page of `cfg.endpoint` and store the records as the stage's table."""
    import polars as pl

    where = f"http connection {conn.name!r}"
    url = endpoint_url(conn, cfg.endpoint)
    pag = cfg.pagination
    records: list[dict[str, Any]] = []
    pages = 0
    with client(conn) as http:
        sender = _sender(ctx, conn, http)
        cursor: Any = None
        number = pag.start if pag else None
        seen: set[str] = set()
        while True:
            if pag and pages == pag.max_pages:
                raise StageError(
                    f"{where}: GET {url.path} stopped at pagination.max_pages = {pag.max_pages}"
                    f" ({pages} pages, {len(records)} records) and the API still had more; raise"
                    " max_pages if that is expected, else check the pagination settings"
                )
            params = _query(cfg.params)
            if pag and pag.type == "cursor" and cursor is not None:
                params[pag.param] = cursor
            elif pag and pag.type == "page":
                params[pag.param] = number
                if pag.size_param and pag.size:
                    params[pag.size_param] = pag.size
            pages += 1
            label = f"GET {url.path}" + (f" page {pages}" if pag else "")
            doc = _get_json(sender, url, params, label, where)
            got = records_of(doc, cfg.records, f"{where}: {label}")
            records += got
            if pag is None or not got:
                break
            if pag.type == "cursor":
                found, cursor, _ = _at(doc, pag.cursor_path)
                if not found or cursor is None or cursor == "":
                    break
                if str(cursor) in seen:
                    raise StageError(
                        f"{where}: {label} gave cursor {str(cursor)[:40]!r} again; stopping"
                        " rather than reading the same pages forever"
                    )
                seen.add(str(cursor))
            else:
                if pag.size and len(got) < pag.size:
                    break
                number += 1
    if records:
        try:
            frame = pl.DataFrame(records, infer_schema_length=None)
        except Exception as exc:
            raise StageError(f"{where}: the records do not form a table: {exc}") from None
        ctx.create_from_frame(frame)
    else:  # DuckDB tables need a column: an empty table says "no records" plainly
        ctx.create_relation("SELECT NULL::JSON AS record WHERE false", lazy=False)
        ctx.log(f"GET {url.path}: the API returned no records", "WARN")
    retried = f", {sender.retries} retried" if sender.retries else ""
    ctx.log(
        f"read {len(records)} record(s) from {where} {url.path} in {pages} page(s)"
        f" ({sender.requests} request(s){retried})"
    )
    metrics = {
        "connection": conn.name,
        "pages": pages,
        "requests": sender.requests,
        "retries": sender.retries,
    }
    return StageResult(ctx.output_name, len(records), metrics)


# --- write ----------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, UUID):
        return str(value)
    return str(value)


def _batches(reader: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of an Arrow reader in lists of exactly `size` (the last one shorter)."""
    carry: list[dict[str, Any]] = []
    for batch in reader:
        carry += batch.to_pylist(maps_as_pydicts="lossy")
        while len(carry) >= size:
            yield carry[:size]
            carry = carry[size:]
    if carry:
        yield carry


def _batch_failed(where: str, label: str, first: int, last: int, done: str, why: str) -> StageError:
    return StageError(
        f"{where}: {label} (rows {first}..{last}) failed: {why}. {done} were sent before it and"
        " stay sent: HTTP output is not transactional (a retry of this stage resends them with"
        " the same Idempotency-Key, so the receiver can drop them)"
    )


def write(ctx: StageContext, conn: Connection, cfg: Any, source: str) -> StageResult:
    """POST the source's rows as JSON arrays of `cfg.batch_size` rows to `cfg.endpoint`."""
    where = f"http connection {conn.name!r}"
    url = endpoint_url(conn, cfg.endpoint)
    reader = ctx.cursor.sql(f"SELECT * FROM {source}").to_arrow_reader(cfg.batch_size)
    sent = batches = 0
    with client(conn) as http:
        sender = _sender(ctx, conn, http)
        for rows in _batches(reader, cfg.batch_size):
            number, first, last = batches + 1, sent + 1, sent + len(rows)
            label = f"POST {url.path} batch {number}"
            done = f"{sent} row(s) in {batches} batch(es)"
            try:
                body = json.dumps(rows, default=_json_value, allow_nan=False).encode()
            except ValueError:
                why = "it holds NaN or infinity, which JSON cannot carry"
                raise _batch_failed(where, label, first, last, done, why) from None
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": f"{ctx.run_id}-{ctx.stage.id}-{number}",
            }
            try:
                resp = sender.send("POST", url, label, content=body, headers=headers)
            except Cancelled:
                raise
            except StageError as exc:
                raise _batch_failed(where, label, first, last, done, exc.message) from None
            if not 200 <= resp.status_code < 300:
                why = f"answered {_failed(sender, resp)}"
                raise _batch_failed(where, label, first, last, done, why)
            sent, batches = last, number
    retried = f", {sender.retries} retried" if sender.retries else ""
    ctx.log(
        f"sent {sent} row(s) to {where} {url.path} in {batches} batch(es)"
        f" of up to {cfg.batch_size}{retried}"
    )
    return StageResult(
        None,
        sent,
        {"connection": conn.name, "batches": batches, "rows": sent, "retries": sender.retries},
    )
