"""Settings come from ``ESCROW_*`` environment variables; every business number is a setting with a default."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
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
    secret_key: SecretStr | None = Field(
        default=None,
        description=(
            "Service secret (at least 32 characters) from which the keys for encrypting bank account numbers and "
            "signing secrets and for hashing phone numbers are derived. Unset: read from, or created once in, "
            "ESCROW_SECRET_KEY_FILE. Keep it with the database backups: without it they can't be read."
        ),
    )
    secret_key_file: Path = Field(
        default=Path(".escrow/secret.key"), description="Where the generated secret key lives when none is set."
    )
    auth_failure_limit: int = Field(
        default=10, ge=1, description="Failed authentications from one address before it is refused (429)."
    )
    auth_failure_window_seconds: int = Field(default=300, ge=1, description="Window in which failures are counted.")
    auth_block_seconds: int = Field(default=300, ge=1, description="How long an address is refused after the limit.")
    consumer_code_ttl_seconds: int = Field(default=600, ge=30, description="Lifetime of a consumer sign-in code.")
    consumer_code_attempts: int = Field(default=5, ge=1, description="Wrong tries before a sign-in code is burnt.")
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


def load_secret_key(settings: Settings) -> bytes:
    """The configured secret, or the one kept in ``secret_key_file`` (created with 32 random bytes if missing)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.secret_key_file
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip().encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
