"""Settings come from ``ESCROW_*`` environment variables; every business number is a setting with a default."""

from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator
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
    shutdown_timeout_seconds: int = Field(
        default=20,
        ge=1,
        description="On SIGTERM or Ctrl-C, how long `escrow serve` waits for requests in flight (and slow clients) "
        "before cancelling them and stopping.",
    )
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
    consumer_codes_per_phone_per_hour: int = Field(
        default=5, ge=1, description="Sign-in codes one phone may be sent per hour (then 429 with Retry-After)."
    )
    consumer_codes_per_address_per_hour: int = Field(
        default=20, ge=1, description="Sign-in codes one client address may ask for per hour (then 429)."
    )
    # --- text messages (escrow.sms) ---
    sms_gateway_url: str | None = Field(
        default=None,
        description="SMS gateway send endpoint (HttpGatewaySmsSender). Unset: messages go to the development sink "
        "(table sms_sink, read with `escrow sms outbox`), which is for development only.",
    )
    sms_gateway_key_id: str | None = Field(default=None, description="Our key id at the SMS gateway.")
    sms_gateway_secret: SecretStr | None = Field(
        default=None, description="Secret for the HMAC-SHA256 signature of requests to the SMS gateway."
    )
    sms_gateway_timeout_seconds: float = Field(default=10, gt=0, description="Timeout of one request to the gateway.")
    sms_max_attempts: int = Field(default=8, ge=1, description="Attempts to send a text message before it is dead.")
    sms_retry_base_seconds: float = Field(
        default=5, gt=0, description="Wait after a first failed attempt; doubles with each further one (capped at 1 h)."
    )
    sms_lease_seconds: int = Field(
        default=60, ge=1, description="How long a claimed message is left to its sender before another may retry it."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where consumers reach the service: the links in notices point to {public_url}/app/cards/<id>.",
    )
    card_expiry_notice_days: int = Field(
        default=30, ge=1, description="A card's holder is told this many days before the card's validity ends."
    )
    # --- cards: domain.md §5; amounts in fen, ratios in basis points (1 bp = 0.01 %) ---
    custody_ratio_bp_by_rating: dict[str, int] = Field(
        default={"A": 4000, "B": 6000, "C": 10000, "D": 10000},
        description="Custody ratio by credit rating for merchants the regulator moved to the ratio model (JSON).",
    )
    custody_full_first_days: int = Field(
        default=365, ge=0, description="Merchants younger than this (days since opened_on) stay at 100 % custody."
    )
    training_max_price: int = Field(default=500_000, ge=1, description="Training plans: highest price (fen).")
    training_max_sessions: int = Field(default=60, ge=1, description="Training plans: most sessions.")
    training_max_days: int = Field(default=90, ge=1, description="Training plans: longest validity or period (days).")
    fitness_period_max_price: int = Field(default=500_000, ge=1, description="Gym memberships: highest price (fen).")
    fitness_period_max_days: int = Field(default=730, ge=1, description="Gym memberships: longest period (days).")
    fitness_sessions_max_price: int = Field(
        default=2_000_000, ge=1, description="Gym session plans: highest price (fen)."
    )
    fitness_max_sessions: int = Field(default=60, ge=1, description="Gym session plans: most sessions.")
    fitness_consumer_max_total: int = Field(
        default=2_000_000, ge=1, description="Gyms: most one consumer may prepay one merchant in all (fen)."
    )
    stored_value_max_face: int = Field(
        default=500_000, ge=1, description="Named stored-value cards of any merchant: highest face value (fen)."
    )
    complaint_answer_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 365,
        description="Hours a merchant has to answer a consumer's complaint; unanswered past it, it is overdue.",
    )
    confirmation_window_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        description="A recorded service the consumer doesn't answer confirms itself after this.",
    )
    presence_code_failures_per_hour: int = Field(
        default=10,
        ge=1,
        description="Wrong presence codes a card takes in an hour; past that it takes none until the hour has passed "
        "(the consumer can still confirm on the phone). Bounds a merchant guessing a code.",
    )
    presence_code_step_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="A card's presence code (shown at the counter) changes every this many seconds; the code of "
        "the step before is still accepted.",
    )
    presence_code_digits: int = Field(default=6, ge=6, le=8, description="Digits of a presence code.")
    cooling_off_days: int = Field(
        default=7, ge=0, description="Full refund of the price within this many days of payment if nothing was used."
    )
    refund_due_days_cooling_off: int = Field(default=5, ge=1, description="Days to pay a cooling-off refund.")
    refund_due_days: int = Field(default=15, ge=1, description="Days to pay any other refund after approval.")
    expiry_action: str = Field(
        default="refund", description="A card past its validity with a balance is `refund`ed or `extend`ed."
    )
    expiry_extension_days: int = Field(default=90, ge=1, description="Days an expiring card is extended by.")
    payout_hour: int | None = Field(
        default=18,
        ge=0,
        le=23,
        description="Hour of the business day (business time zone) after which the daily payout run is made "
        "(empty: on demand only, POST /v1/payout-runs).",
    )
    closure_notice_days: int = Field(
        default=30, ge=0, description="An announced closure takes effect at least this many days later."
    )
    fund_cap_per_consumer: int = Field(
        default=500_000,
        ge=0,
        description="First compensation: the most the fund pays one consumer in one closure (fen).",
    )
    closure_batch_size: int = Field(
        default=1000, ge=1, le=20_000, description="Settlement items executed per transaction."
    )
    # --- reconciliation: domain.md §6 ---
    statement_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest statement a bank may send over the API (JSON or camt.053), refused before parsing; "
        "larger files go through `escrow reconcile FILE`.",
    )
    statement_file_max_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        ge=1024,
        description="Largest camt.053 or JSON file `escrow reconcile FILE` imports (streamed), refused before parsing.",
    )
    reconciliation_tolerance_days: int = Field(
        default=2,
        ge=0,
        le=31,
        description="Matching by amount, direction and value date: the most days a statement line's value date "
        "may be from the ledger movement's business date.",
    )
    reconciliation_in_transit_days: int = Field(
        default=2,
        ge=0,
        le=31,
        description="A ledger movement the bank's statements don't show is in transit until the latest statement is "
        "this many days past the movement's business date; then it is a break.",
    )
    # --- early warnings (escrow/risk, issue #14 §1) ---
    warning_sales_surge_factor: float = Field(
        default=3.0,
        gt=0,
        description="Sales surge: the last 7 days' sales above this multiple of the weekly average "
        "of the 90 days before.",
    )
    warning_sales_surge_floor: int = Field(
        default=5_000_000, ge=0, description="Sales surge: and the last 7 days' sales above this amount (fen)."
    )
    warning_deep_discount_percent: float = Field(
        default=50,
        gt=0,
        le=100,
        description="Deep discount: a plan's price per unit below this percentage of its list "
        "price per unit (face value for stored-value plans).",
    )
    warning_service_collapse_percent: float = Field(
        default=40,
        gt=0,
        le=100,
        description="Service collapse: services per active card in the last 14 days below "
        "this percentage of the previous 60 days' rate.",
    )
    warning_service_silence_days: int = Field(
        default=7,
        ge=1,
        description="Service collapse: no service at all for this many days while active cards hold value.",
    )
    warning_exposure_percent: float = Field(
        default=20,
        gt=0,
        description="Unprotected exposure: unprotected value outstanding above this percentage of the "
        "last 12 months' released value.",
    )
    warning_exposure_amount: int = Field(
        default=100_000_000, ge=0, description="Unprotected exposure: or above this amount (fen)."
    )
    warning_refund_rate: float = Field(
        default=5,
        gt=0,
        description="Refund requests per 100 active cards over 30 days above which a warning is raised.",
    )
    warning_dispute_rate: float = Field(
        default=5,
        gt=0,
        description="Disputed services per 100 active cards over 30 days above which a warning is raised.",
    )
    warning_presence_percent: float = Field(
        default=50,
        ge=0,
        le=100,
        description="Presence: share (%) of the last 30 days' confirmed services confirmed "
        "without the consumer's presence code above which a warning is raised (merchants using presence codes).",
    )
    warning_break_days: int = Field(
        default=5, ge=1, description="Money trail: reconciliation breaks open longer than this many days."
    )
    warning_alert_multiple: float = Field(
        default=2,
        ge=1,
        description="A figure at this multiple of its threshold (or beyond) raises an alert rather "
        "than an attention warning.",
    )
    # --- credit grades and the white list (escrow/credit, issue #14 §2; README "Credit grades and the white list")
    credit_weights: dict[str, int] = Field(
        default={
            "warnings_open_alert": 15,
            "warnings_open_attention": 5,
            "warnings_past_alert": 4,
            "warnings_past_attention": 1,
            "complaints_upheld": 6,
            "complaints_partly_upheld": 3,
            "complaints_answered_late": 2,
            "refunds_overdue_unpaid": 15,
            "refunds_paid_late": 4,
            "breaks_open": 8,
            "penalties_major": 40,
            "penalties_minor": 10,
            "age_years": 2,
        },
        description="Credit grade: points per unit of each factor (JSON). Every factor but age_years takes its "
        "points off the base score; age_years adds its points per full year in business (up to "
        "credit_age_years_counted). All weights are at least 0, so more of a bad factor never improves a grade.",
    )
    credit_grade_cutoffs: dict[str, int] = Field(
        default={"A": 90, "B": 75, "C": 60},
        description="Credit grade: the least score (0 to 100) of grades A, B and C (JSON); below C's: D.",
    )
    credit_base_score: int = Field(default=100, ge=0, le=100, description="Credit grade: score before any factor.")
    credit_age_years_counted: int = Field(
        default=5, ge=0, description="Credit grade: most years in business that add to the score."
    )
    credit_lookback_days: int = Field(
        default=365,
        ge=1,
        description="Credit grade: window of past (resolved) warnings, complaints and refunds paid late.",
    )
    credit_penalty_lookback_days: int = Field(
        default=3 * 365, ge=1, description="Credit grade: window of the regulator's penalties (by decision date)."
    )
    credit_break_days: int = Field(
        default=5, ge=0, description="Credit grade: reconciliation breaks count once open longer than this many days."
    )
    white_list_years: int = Field(
        default=3, ge=1, description="White list: the years over which no condition may have broken."
    )
    white_list_repair_days: int = Field(
        default=365,
        ge=0,
        description="White list: days after the last break of a condition (grade below A included) before a "
        "merchant may re-enter (credit repair).",
    )
    white_list_money_complaint_categories: list[str] = Field(
        default=["refund_refused", "closure"],
        description="White list: complaint categories about money; one upheld or partly upheld in the window "
        "keeps a merchant off (JSON).",
    )
    jobs_interval_seconds: float = Field(
        default=60, ge=0, description="How often the service runs its background jobs (0: never; see run-jobs)."
    )
    jobs_batch_size: int = Field(default=500, ge=1, description="Items a background job handles per transaction.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field(default="auto", description="`json`, `console`, or `auto` (console on a terminal).")
    business_timezone: str = Field(default="Asia/Shanghai", description="Time zone of business dates.")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """An optional setting given empty (``ESCROW_PAYOUT_HOUR=``) is unset (None), as documented: it is not
        parsed as a value, and not replaced by the default either."""
        blank = isinstance(value, str) and not value.strip() and info.field_name is not None
        if blank and type(None) in get_args(cls.model_fields[info.field_name].annotation):  # type: ignore[index]
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _validate_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must be a PostgreSQL URL: postgresql://user:password@host:port/database")
        return value

    @field_validator("expiry_action")
    @classmethod
    def _validate_expiry_action(cls, value: str) -> str:
        if value not in {"refund", "extend"}:
            raise ValueError("must be refund or extend")
        return value

    @field_validator("custody_ratio_bp_by_rating")
    @classmethod
    def _validate_ratios(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != {"A", "B", "C", "D"} or not all(0 < v <= 10000 for v in value.values()):
            raise ValueError("needs ratios for A, B, C and D, each between 1 and 10000 basis points")
        return value

    @field_validator("credit_weights")
    @classmethod
    def _validate_credit_weights(cls, value: dict[str, int]) -> dict[str, int]:
        from escrow.credit.scoring import FACTORS

        if set(value) != set(FACTORS) or any(v < 0 for v in value.values()):
            raise ValueError(f"needs a weight of at least 0 for each of {', '.join(FACTORS)}")
        return value

    @field_validator("credit_grade_cutoffs")
    @classmethod
    def _validate_cutoffs(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != {"A", "B", "C"} or not 100 >= value["A"] >= value["B"] >= value["C"] >= 0:
            raise ValueError("needs least scores for A, B and C with 100 >= A >= B >= C >= 0")
        return value

    @field_validator("white_list_money_complaint_categories")
    @classmethod
    def _validate_money_categories(cls, value: list[str]) -> list[str]:
        from escrow.models.complaint import COMPLAINT_CATEGORIES

        if not set(value) <= set(COMPLAINT_CATEGORIES):
            raise ValueError(f"categories must be among {', '.join(COMPLAINT_CATEGORIES)}")
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
