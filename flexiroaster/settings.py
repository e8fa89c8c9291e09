"""Settings read once from FLEXIROASTER_* environment variables, then `.env`, then defaults."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import FlexiError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEXIROASTER_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("data"), description="Sample data, relative paths and the store live here"
    )
    store_path: Path | None = Field(
        None, description="DuckDB store file; default DATA_DIR/flexiroaster.duckdb"
    )
    max_workers: int = Field(
        default_factory=lambda: min(8, (os.cpu_count() or 2) * 2),
        ge=1,
        le=256,
        description="Stages that may run at once across all runs",
    )
    default_timeout: float | None = Field(
        None, gt=0, description="Seconds, for stages without a timeout"
    )
    log_flush_interval: float = Field(
        0.2, gt=0, le=10, description="Seconds between batched log writes"
    )
    host: str = Field(
        "127.0.0.1", description="Address the runtime binds (loopback unless a token is set)"
    )
    port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        None,
        description="When set, mutating endpoints and /query need `Authorization: Bearer <token>`",
    )
    query_max_rows: int = Field(10_000, ge=1, le=1_000_000, description="Row cap of POST /query")
    query_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds before POST /query is interrupted"
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body the API accepts"
    )
    alert_webhooks: list[str] = Field(
        default_factory=list,
        description="URLs every new alert is POSTed to (JSON), besides each rule's own webhooks",
    )
    alert_secret: SecretStr | None = Field(
        None,
        description="Key of the alert webhooks' HMAC-SHA256 signature; default: a key file"
        " DATA_DIR/alert-webhook.key created (mode 0600) on first use",
    )
    alert_retry_delay: float = Field(
        2.0, gt=0, le=600, description="Seconds before the first retry of a failed alert webhook"
    )
    alert_retries: int = Field(
        5, ge=0, le=20, description="Retries of a failed alert webhook (the delay doubles each time)"
    )
    alert_check_interval: float = Field(
        30.0, gt=0, le=3600, description="Seconds between checks for missed scheduled runs"
    )
    insights_interval: float = Field(
        5.0, ge=0, le=3600,
        description="Least seconds between insight recomputations after runs finish",
    )
    airflow_secret: SecretStr | None = Field(
        None,
        description="Shared secret of the Airflow endpoints (X-Airflow-Secret, or the key of an"
        " X-Airflow-Signature HMAC); without it they refuse every call",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key that encrypts stored secrets; default: a key file"
        " DATA_DIR/secret.key created (mode 0600) on first start",
    )
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose files input/output stages and /query may read and write;"
        " default: DATA_DIR",
    )
    allow_any_path: bool = Field(
        False, description="Let stages and /query use files outside the data roots"
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="Finished runs older than this many days are deleted with their stage rows,"
        " log lines and callbacks (resolved alerts too); unset keeps everything",
    )
    retention_interval: float = Field(
        600.0, gt=0, le=86400, description="Seconds between prunes (the first one at start)"
    )
    warehouse_dir: Path | None = Field(
        None,
        description="Where Airflow-run stages exchange Parquet files; default DATA_DIR/warehouse",
    )

    @property
    def store_file(self) -> Path:
        return self.store_path or self.data_dir / "flexiroaster.duckdb"

    @property
    def warehouse(self) -> Path:
        return self.warehouse_dir or self.data_dir / "warehouse"

    @property
    def path_roots(self) -> tuple[Path, ...] | None:
        """The data roots, resolved (symlinks and `..`), or None when any path is allowed."""
        if self.allow_any_path:
            return None
        return tuple(Path(r).expanduser().resolve() for r in self.data_roots or [self.data_dir])

    @property
    def pipelines_dir(self) -> Path:
        return self.data_dir / "pipelines"


def load_settings(**overrides) -> Settings:
    """Settings, with an invalid value reported by its variable name and value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = "FLEXIROASTER_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{key}={err.get('input')!r}: {err['msg']}")
        raise FlexiError("invalid settings", details=lines) from None
