"""The typed HTTP client of the REST API, used by the CLI and the UI."""

from __future__ import annotations

import time
from typing import Any

import httpx

from .errors import Conflict, FlexiError, NotFound, SpecError

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("completed", "failed", "cancelled")


class ApiError(FlexiError):
    """An error answer of the API, with its status and code."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code = status, code


class RuntimeUnavailable(FlexiError):
    status = 503
    code = "runtime_unavailable"


_BY_STATUS = {404: NotFound, 409: Conflict, 422: SpecError}


class Client:
    """`Client(url, token)`; every method returns the JSON body or raises a FlexiError."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise RuntimeUnavailable(
                f"no FlexiRoaster runtime answers at {self.url} ({exc.__class__.__name__});"
                " start one with `flexiroaster serve`"
            ) from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                code, detail = body.get("error", "error"), body.get("detail", resp.text)
            except ValueError:
                code, detail = "error", resp.text
            cls = _BY_STATUS.get(resp.status_code)
            if cls is not None:
                raise cls(detail)
            raise ApiError(resp.status_code, code, detail)
        if resp.status_code == 204:
            return None
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.content

    # --- system ---
    def health(self) -> dict:
        """The runtime's health; a degraded runtime (503) answers with the same body, which is
        returned, not raised: it says which part is not ok."""
        try:
            resp = self.http.get("/health")
        except httpx.TransportError:
            return self._call("GET", "/health")  # raises RuntimeUnavailable with its message
        if resp.status_code in (200, 503):
            body = resp.json()
            if isinstance(body, dict) and "components" in body:
                return body
        return self._call("GET", "/health")  # anything else: the usual error mapping

    # --- pipelines ---
    def pipelines(self, limit: int = 100, offset: int = 0) -> dict:
        return self._call("GET", "/pipelines", params={"limit": limit, "offset": offset})

    def pipeline(self, pipeline_id: str) -> dict:
        return self._call("GET", f"/pipelines/{pipeline_id}")

    def create_pipeline(self, yaml_text: str) -> dict:
        return self._call(
            "POST", "/pipelines", content=yaml_text, headers={"content-type": "application/yaml"}
        )

    def update_pipeline(self, pipeline_id: str, yaml_text: str) -> dict:
        return self._call(
            "PUT",
            f"/pipelines/{pipeline_id}",
            content=yaml_text,
            headers={"content-type": "application/yaml"},
        )

    def delete_pipeline(self, pipeline_id: str) -> None:
        self._call("DELETE", f"/pipelines/{pipeline_id}")

    def validate_pipeline(self, yaml_text: str) -> dict:
        return self._call(
            "POST",
            "/pipelines/validate",
            content=yaml_text,
            headers={"content-type": "application/yaml"},
        )

    def versions(self, pipeline_id: str) -> dict:
        return self._call("GET", f"/pipelines/{pipeline_id}/versions")

    def timeline(self, hours: int = 48, bucket: str = "hour") -> dict:
        return self._call("GET", "/metrics/timeline", params={"hours": hours, "bucket": bucket})

    def preview_unsaved_schedule(self, n: int = 10, **fields: Any) -> dict:
        return self._call("POST", "/schedules/preview", params={"n": n}, json=fields)

    def audit(self, **filters: Any) -> dict:
        """target_type, target_id, action, limit, offset."""
        return self._call(
            "GET", "/audit", params={k: v for k, v in filters.items() if v is not None}
        )

    def settings(self) -> dict:
        return self._call("GET", "/settings")

    # --- logs and tables ---
    def search_logs(self, **filters: Any) -> dict:
        """level, pipeline_id, execution_id, since, until, q, after, before, limit."""
        return self._call(
            "GET", "/logs", params={k: v for k, v in filters.items() if v is not None}
        )

    def tables(self) -> dict:
        return self._call("GET", "/tables")

    # --- schedules ---
    def schedules(self, pipeline_id: str | None = None) -> dict:
        return self._call(
            "GET", "/schedules", params={"pipeline_id": pipeline_id} if pipeline_id else {}
        )

    def schedule(self, schedule_id: str) -> dict:
        return self._call("GET", f"/schedules/{schedule_id}")

    def create_schedule(self, **fields: Any) -> dict:
        """name, pipeline_id, type (cron|interval|webhook|event), expression, timezone, ..."""
        return self._call("POST", "/schedules", json=fields)

    def update_schedule(self, schedule_id: str, **fields: Any) -> dict:
        return self._call("PUT", f"/schedules/{schedule_id}", json=fields)

    def delete_schedule(self, schedule_id: str) -> None:
        self._call("DELETE", f"/schedules/{schedule_id}")

    def pause_schedule(self, schedule_id: str) -> dict:
        return self._call("POST", f"/schedules/{schedule_id}/pause")

    def resume_schedule(self, schedule_id: str) -> dict:
        return self._call("POST", f"/schedules/{schedule_id}/resume")

    def run_schedule_now(self, schedule_id: str) -> dict:
        return self._call("POST", f"/schedules/{schedule_id}/run-now")

    def preview_schedule(self, schedule_id: str, n: int = 10) -> dict:
        return self._call("GET", f"/schedules/{schedule_id}/preview", params={"n": n})

    def variables(self) -> dict:
        return self._call("GET", "/variables")

    def variable(self, key: str) -> dict:
        return self._call("GET", f"/variables/{key}")

    def set_variable(
        self, key: str, value: str, *, secret: bool = True, description: str | None = None
    ) -> dict:
        body = {"value": value, "secret": secret, "description": description}
        return self._call("PUT", f"/variables/{key}", json=body)

    def delete_variable(self, key: str) -> None:
        self._call("DELETE", f"/variables/{key}")

    # --- connections ---
    def connections(self) -> dict:
        return self._call("GET", "/connections")

    def connection(self, name: str) -> dict:
        return self._call("GET", f"/connections/{name}")

    def put_connection(
        self,
        name: str,
        type: str,
        config: dict[str, Any],
        secrets: dict[str, str | None] | None = None,
        description: str | None = None,
    ) -> dict:
        """Create or replace; a secret field left out of `secrets` keeps its stored value, one
        given as None is removed."""
        body = {"type": type, "config": config, "description": description}
        if secrets is not None:
            body["secrets"] = secrets
        return self._call("PUT", f"/connections/{name}", json=body)

    def delete_connection(self, name: str) -> None:
        self._call("DELETE", f"/connections/{name}")

    def test_connection(self, target: str | dict[str, Any]) -> dict:
        """Test a stored connection by name, or an unsaved one ({type, config, secrets}):
        {ok, detail, took_ms}."""
        if isinstance(target, str):
            return self._call("POST", f"/connections/{target}/test")
        return self._call("POST", "/connections/test", json=target)

    def call_webhook(self, path: str, secret: str, params: dict | None = None) -> dict:
        return self._call(
            "POST", f"/hooks/{path}", json=params or {}, headers={"X-Webhook-Secret": secret}
        )

    # --- alerts ---
    def alerts(self, **filters: Any) -> dict:
        """status (open, acknowledged, resolved, active), pipeline_id, severity, rule_id, limit,
        offset; newest first."""
        return self._call(
            "GET", "/alerts", params={k: v for k, v in filters.items() if v is not None}
        )

    def alert(self, alert_id: str) -> dict:
        """An alert with its webhook notifications' delivery state."""
        return self._call("GET", f"/alerts/{alert_id}")

    def acknowledge_alert(self, alert_id: str, by: str, note: str | None = None) -> dict:
        return self._call("POST", f"/alerts/{alert_id}/acknowledge", json={"by": by, "note": note})

    def resolve_alert(self, alert_id: str, by: str, note: str | None = None) -> dict:
        return self._call("POST", f"/alerts/{alert_id}/resolve", json={"by": by, "note": note})

    def alert_rules(self) -> dict:
        return self._call("GET", "/alert-rules")

    def create_alert_rule(self, body: dict) -> dict:
        """name, kind, pipeline_id, threshold, window_runs, severity, webhooks, enabled."""
        return self._call("POST", "/alert-rules", json=body)

    def update_alert_rule(self, rule_id: str, body: dict) -> dict:
        return self._call("PUT", f"/alert-rules/{rule_id}", json=body)

    def delete_alert_rule(self, rule_id: str) -> None:
        self._call("DELETE", f"/alert-rules/{rule_id}")

    # --- executions ---
    def trigger(self, pipeline_id: str, params: dict | None = None) -> dict:
        return self._call(
            "POST", "/executions", json={"pipeline_id": pipeline_id, "params": params or {}}
        )

    def executions(self, **filters: Any) -> dict:
        return self._call(
            "GET", "/executions", params={k: v for k, v in filters.items() if v is not None}
        )

    def execution(self, execution_id: str) -> dict:
        return self._call("GET", f"/executions/{execution_id}")

    def cancel(self, execution_id: str) -> dict:
        return self._call("POST", f"/executions/{execution_id}/cancel")

    def retry(self, execution_id: str) -> dict:
        return self._call("POST", f"/executions/{execution_id}/retry")

    def release(self, execution_id: str, by: str, reason: str | None = None) -> dict:
        """Start a run the risk gate held."""
        body = {"by": by} | ({"reason": reason} if reason else {})
        return self._call("POST", f"/executions/{execution_id}/release", json=body)

    def airflow_callbacks(self, execution_id: str) -> dict:
        """The task states Airflow reported for a run, oldest first."""
        return self._call("GET", f"/airflow/callbacks/{execution_id}")

    # --- insights and their review ---
    def insights(self, **filters: Any) -> dict:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/insights", params=params)

    def insight(self, insight_id: str) -> dict:
        return self._call("GET", f"/insights/{insight_id}")

    def decide_insight(
        self, insight_id: str, decision: str, by: str, reason: str | None = None, **more: Any
    ) -> dict:
        """`decision`: approve, reject, dismiss or snooze (snooze takes `hours` or `until`)."""
        body = {"by": by} | ({"reason": reason} if reason else {}) | more
        return self._call("POST", f"/insights/{insight_id}/{decision}", json=body)

    def recompute_insights(self) -> dict:
        return self._call("POST", "/insights/recompute")

    def insight_policy(self) -> dict:
        return self._call("GET", "/insights/policy")

    def set_insight_policy(self, by: str, pipeline_id: str | None = None, **fields: Any) -> dict:
        """The global policy, or `pipeline_id`'s override (fields left out follow the global)."""
        path = f"/insights/policy/{pipeline_id}" if pipeline_id else "/insights/policy"
        return self._call("PUT", path, json={"by": by, **fields})

    def delete_insight_policy(self, pipeline_id: str, by: str) -> dict:
        return self._call("DELETE", f"/insights/policy/{pipeline_id}", params={"by": by})

    def logs(
        self, execution_id: str, after: int = 0, limit: int = 1000, level: str | None = None
    ) -> dict:
        params = {"after": after, "limit": limit} | ({"level": level} if level else {})
        return self._call("GET", f"/executions/{execution_id}/logs", params=params)

    def wait(self, execution_id: str, timeout: float | None = None, interval: float = 0.25) -> dict:
        """Poll until the run ends; returns it with its stages."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.execution(execution_id)
            if run["status"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise FlexiError(f"run {execution_id} still {run['status']} after {timeout:g} s")
            time.sleep(interval)

    # --- metrics and query ---
    def system_metrics(self) -> dict:
        return self._call("GET", "/metrics/system")

    def pipeline_metrics(self, pipeline_id: str) -> dict:
        return self._call("GET", f"/metrics/pipelines/{pipeline_id}")

    def query(self, sql: str, limit: int | None = None, timeout: float | None = None) -> dict:
        body = (
            {"sql": sql}
            | ({"limit": limit} if limit else {})
            | ({"timeout": timeout} if timeout else {})
        )
        return self._call("POST", "/query", json=body)

    def query_arrow(self, sql: str, limit: int | None = None):
        """The result as a pyarrow Table (Arrow IPC on the wire)."""
        import pyarrow as pa

        body = {"sql": sql, "format": "arrow"} | ({"limit": limit} if limit else {})
        raw = self._call("POST", "/query", json=body)
        return pa.ipc.open_stream(raw).read_all()
