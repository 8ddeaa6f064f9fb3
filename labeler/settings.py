"""All configuration, read once at start-up from ``LABELER_*`` variables and ``.env``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

ImageKind = Literal["auto", "path", "url", "bytes", "base64"]

# Plain SQL identifiers only (optionally schema-qualified for the source): configuration names
# tables and columns, and those are the only things not passed as bound parameters.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(Exception):
    """The configuration is invalid; the message says which setting and why."""


def _identifier(value: str | None, what: str, *, qualified: bool = False) -> str | None:
    if value is None or value == "":
        return None
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(IDENTIFIER.match(p) for p in parts):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier (letters, digits and _; "
            "not starting with a digit; at most 63 characters"
            + ("; optionally schema.name" if qualified else "")
            + ")"
        )
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LABELER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- database ---------------------------------------------------------------------------
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///labeler.db"),
        description="SQLAlchemy URL of the association's database.",
    )
    db_connect_retries: int = Field(default=5, ge=0, le=100)
    db_retry_backoff_seconds: float = Field(default=2.0, gt=0, le=300)

    # --- the photo source -------------------------------------------------------------------
    source_table: str = "photos"
    source_id_column: str = "id"
    source_image_column: str = "image"
    image_kind: ImageKind = "auto"
    photo_root: Path | None = None
    source_filter_column: str | None = None
    source_filter_values: Annotated[list[str], NoDecode] = Field(default_factory=list)
    writeback_breed_column: str | None = None
    writeback_confidence_column: str | None = None

    # --- photos from URLs -------------------------------------------------------------------
    url_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)

    # --- the model and the decision ---------------------------------------------------------
    model_dir: Path = Path("models/baseline-cnn")
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    review_margin: float | None = Field(default=None, ge=0.0, le=1.0)

    # --- a pass -----------------------------------------------------------------------------
    batch_size: int = Field(default=32, ge=1, le=4096)
    max_attempts: int = Field(default=3, ge=1, le=100)
    claim_ttl_seconds: int = Field(default=900, ge=1)
    max_rows_per_pass: int | None = Field(default=None, ge=1)

    # --- the scheduler ----------------------------------------------------------------------
    schedule_cron: str = "0 2 * * *"
    schedule_timezone: str = "UTC"
    misfire_grace_seconds: int = Field(default=6 * 3600, ge=1)
    failed_pass_retry_seconds: int = Field(default=300, ge=1)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("source_table")
    @classmethod
    def _check_table(cls, v: str) -> str:
        result = _identifier(v, "source_table", qualified=True)
        if result is None:
            raise ValueError("source_table must not be empty")
        return result

    @field_validator("source_id_column", "source_image_column")
    @classmethod
    def _check_required_column(cls, v: str, info: object) -> str:
        name = getattr(info, "field_name", "column")
        result = _identifier(v, name)
        if result is None:
            raise ValueError(f"{name} must not be empty")
        return result

    @field_validator(
        "source_filter_column", "writeback_breed_column", "writeback_confidence_column"
    )
    @classmethod
    def _check_optional_column(cls, v: str | None, info: object) -> str | None:
        return _identifier(v, getattr(info, "field_name", "column"))

    @field_validator("source_filter_values", "url_allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        # Environment variables carry lists as "a,b,c".
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("url_allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        hosts = [h.strip().lower() for h in v if h.strip()]
        for host in hosts:
            if not re.match(r"^[a-z0-9.\-\[\]:]+$", host):
                raise ValueError(f"url_allowed_hosts entry {host!r} is not a host name")
        return hosts

    @field_validator("schedule_cron")
    @classmethod
    def _check_cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v)
        except ValueError as exc:
            raise ValueError(
                f"schedule_cron {v!r} is not a 5-field cron expression: {exc}"
            ) from exc
        return v

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: SecretStr) -> SecretStr:
        try:
            make_url(v.get_secret_value())
        except Exception as exc:  # SQLAlchemy raises ArgumentError; the text may echo the URL
            raise ValueError("database_url is not a valid SQLAlchemy URL") from exc
        return v

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.source_filter_values and not self.source_filter_column:
            raise ValueError("source_filter_values is set but source_filter_column is not")
        if self.image_kind == "path" and self.photo_root is None:
            raise ValueError("image_kind=path needs photo_root (the folder photo paths are under)")
        return self

    # --- derived ----------------------------------------------------------------------------
    @property
    def url(self) -> URL:
        return make_url(self.database_url.get_secret_value())

    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and status output."""
        return self.url.render_as_string(hide_password=True)


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings, turning pydantic's report into one readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"LABELER_{where.upper()}" if err["loc"] else "settings"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {env}: {message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
