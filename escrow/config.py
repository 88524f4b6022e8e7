"""Settings come from ``ESCROW_*`` environment variables; every business number is a setting with a default."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESCROW_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: start the embedded PostgreSQL.",
    )
    data_dir: Path = Field(
        default=Path(".escrow/pgdata"),
        description="Data directory of the embedded PostgreSQL (used only when database_url is unset).",
    )
    host: str = Field(default="127.0.0.1", description="Address `escrow serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `escrow serve` listens on.")
    workers: int = Field(default=1, ge=1, description="Worker processes for `escrow serve`.")
    db_pool_size: int = Field(default=10, ge=1, description="Connections kept open per worker process.")
    db_max_overflow: int = Field(default=10, ge=0, description="Extra connections a worker may open under load.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest accepted request body.")
    idempotency_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a stored Idempotency-Key response is replayed."
    )
    seal_interval_seconds: float = Field(
        default=60, ge=0, description="How often the service seals new journal entries into the hash chain (0: never)."
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field(default="auto", description="`json`, `console`, or `auto` (console on a terminal).")
    business_timezone: str = Field(default="Asia/Shanghai", description="Time zone of business dates.")

    @field_validator("database_url")
    @classmethod
    def _validate_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must be a PostgreSQL URL: postgresql://user:password@host:port/database")
        return value

    @field_validator("log_format")
    @classmethod
    def _validate_log_format(cls, value: str) -> str:
        if value not in {"auto", "json", "console"}:
            raise ValueError("must be one of auto, json, console")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
