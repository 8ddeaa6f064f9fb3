"""All configuration, read once at start-up from ``LABELER_*`` variables and ``.env``."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from labeler.config.redact import safe_url
from labeler.core import limits
from labeler.core.identifiers import IDENTIFIER
from labeler.core.paths import default_model_dir

ImageKind = Literal["auto", "path", "url", "bytes", "base64"]

# Upper bounds that keep datetime arithmetic (now + ttl, now + delay) from overflowing and
# catch a value typed in the wrong unit; a week is far beyond any sensible setting.
ONE_WEEK_SECONDS = 7 * 24 * 3600


class ConfigError(Exception):
    """The configuration is invalid; the message says which setting and why."""


def _identifier(value: str | None, what: str, *, qualified: bool = False) -> str | None:
    if value is None or value == "":
        return None
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier (letters, digits and _; "
            "not starting with a digit; at most 63 characters"
            + ("; optionally schema.name" if qualified else "")
            + ")"
        )
    return value


def _allowed_host(entry: str) -> str:
    """One allow-list entry, in the form photo URLs are matched in (``urlsplit().hostname``:
    lower case, IPv6 without brackets, no port)."""
    host = entry.strip().lower()
    if "://" in host or "/" in host:
        raise ValueError(
            f"url_allowed_hosts entry {entry!r} is a URL; list host names only (photos.example.org)"
        )
    bracketed = re.fullmatch(r"\[([0-9a-f:.]+)\](:\d*)?", host)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    else:
        port = None
        if host.count(":") == 1:  # one colon: host:port (an IPv6 address has several)
            host, port = host.split(":")[0], ":"
    if port:
        raise ValueError(
            f"url_allowed_hosts entry {entry!r} has a port; list the host only "
            "(every port of an allowed host is allowed)"
        )
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"url_allowed_hosts entry {entry!r} is not a host name or IP address"
            ) from None
        return host
    if not re.fullmatch(r"[a-z0-9]([a-z0-9\-.]*[a-z0-9])?\.?", host):
        raise ValueError(f"url_allowed_hosts entry {entry!r} is not a host name")
    return host.rstrip(".")  # "photos.example.org." is the same name, written fully qualified


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LABELER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- database ---------------------------------------------------------------------------------
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///labeler.store.engine"),
        description="SQLAlchemy URL of the association's database.",
    )
    db_connect_retries: int = Field(default=5, ge=0, le=100)
    db_retry_backoff_seconds: float = Field(default=2.0, gt=0, le=300)

    # --- the photo source -------------------------------------------------------------------------
    source_table: str = "photos"
    source_id_column: str = "id"
    source_image_column: str = "image"
    image_kind: ImageKind = "auto"
    photo_root: Path | None = None
    source_filter_column: str | None = None
    source_filter_values: Annotated[list[str], NoDecode] = Field(default_factory=list)
    writeback_breed_column: str | None = None
    writeback_confidence_column: str | None = None

    # --- photos from URLs -------------------------------------------------------------------------
    url_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_timeout_seconds: float = Field(default=limits.URL_TIMEOUT_SECONDS, gt=0, le=300)
    # upper bounds keep reads and buffers within index-sized integers (2 GiB, 2 Gpx).
    max_image_bytes: int = Field(default=limits.MAX_IMAGE_BYTES, gt=0, le=2**31)
    max_image_pixels: int = Field(default=limits.MAX_IMAGE_PIXELS, gt=0, le=2**31)
    # Work bounds of one decode (labeler.photos.decoding): a JPEG with more scans is refused unread
    # (photos have about 10; each scan is a pass over the whole image), and a decode that
    # runs past the time budget is stopped and fails its row.
    max_jpeg_scans: int = Field(default=limits.MAX_JPEG_SCANS, ge=1, le=10_000)
    decode_seconds: float = Field(default=limits.DECODE_SECONDS, gt=0, le=3600)

    # --- the model and the decision ---------------------------------------------------------------
    # model: the packaged default model, found wherever labeler is installed (labeler/_models).
    model_dir: Path = Field(default_factory=default_model_dir)
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    review_margin: float | None = Field(default=None, ge=0.0, le=1.0)

    # --- audit sampling (labeler.decide.audit) ----------------------------------------------------
    # Share of confident results sent to staff as audits, to measure precision; 0 disables.
    audit_share: float = Field(default=0.02, ge=0.0, le=1.0)

    # --- one answer per animal, written to the shelter's own record -------------------------------
    # The source column whose value groups photos of one animal; unset = one answer per photo.
    source_group_column: str | None = None
    # Source columns copied (as text) into the review views, e.g. AnimalName,ShelterCode.
    context_columns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A source column that changes when a photo is replaced under the same id (ASM3:
    # media.Date or LastChangedDate): a labelled photo whose value differs from the one read
    # when it was classified is labelled again. Unset: a replaced photo keeps its label.
    source_change_column: str | None = None
    # Write-back target: a table (or updatable view) whose key column matches the group value.
    target_table: str | None = None
    target_key_column: str | None = None
    # CSV `label,<col>,<col>...`: our label -> the values for those target columns.
    breed_map: Path | None = None
    # `Col=value,...`: the target values meaning "no breed yet"; a withdrawal writes them back.
    target_undecided: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # `Col=value,...`: columns set on every write to the target, as the shelter's own software
    # sets them on a save (who changed it, when, the optimistic-lock version). `now` is the
    # database's current timestamp, `increment` adds 1; any other value is written as given.
    target_stamp: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # How long a write waits for a target record another session holds locked (staff have the
    # animal open in a long transaction); then the animal is left for the next pass.
    target_lock_timeout_seconds: int = Field(default=10, ge=1, le=3600)
    # A photo disagrees with its animal's answer when its own best breed beats the animal's
    # breed by more than this (in that photo's probabilities): the animal goes to review.
    group_disagreement: float = Field(default=0.5, ge=0.0, le=1.0)

    # --- the breed map checked against the shelter's breed table (labeler.shelter.breedmap) -------
    # The shelter's breed lookup table, e.g. `breed` in ASM3; `labeler check` compares the map
    # with it (every mapped id exists, the names match). Unset = no such check.
    breed_table: str | None = None
    # `MapColumn=TableColumn,...`: where each map column's value sits in the breed table; the
    # first pair is the key, e.g. `BreedID=ID,BreedName=BreedName`.
    breed_table_columns: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

    # --- a pass -----------------------------------------------------------------------------------
    batch_size: int = Field(default=32, ge=1, le=4096)
    max_attempts: int = Field(default=3, ge=1, le=100)
    claim_ttl_seconds: int = Field(default=900, ge=1, le=ONE_WEEK_SECONDS)
    max_rows_per_pass: int | None = Field(default=None, ge=1)

    # --- inference runtime and threads (labeler.model.runtime) ------------------------------------
    # auto: ONNX Runtime when installed and its outputs match Keras, else Keras; keras; onnx
    # (like auto, but falling back to Keras is a warning).
    runtime: Literal["auto", "keras", "onnx"] = "auto"
    # Where a model converted to ONNX is cached (keyed by artifact version and file hash);
    # unset: $XDG_CACHE_HOME/labeler/onnx or ~/.cache/labeler/onnx.
    runtime_cache_dir: Path | None = None
    # Intra-op threads of the runtime; 0 = one per core.
    inference_threads: int = Field(default=0, ge=0, le=256)
    # Batches prepared ahead of the one being classified. Defaults measured on 2 cores
    # (`benchmarks/throughput.py --sweep`): 2 runtime threads beat 1 (144 vs 104 photos/s on
    # 320 px photos), prefetch 2 is as fast or a little faster than 1, batch 32 beats 16.
    prefetch_batches: int = Field(default=2, ge=1, le=16)
    # Threads that fetch, decode and preprocess the photos of the batch being prepared;
    # 0 = one per core (at most 8). They run beside inference (Pillow releases the GIL while
    # decoding).
    # Measured on 2 cores (`throughput.py --sweep`, 2026-11-25): 1 / 2 / 3 decode threads gave
    # 29 / 47 / 46 photos/s on 12 MP JPEGs and 154 / 177 / 162 on 320 px photos.
    decode_threads: int = Field(default=0, ge=0, le=64)

    # --- the scheduler ----------------------------------------------------------------------------
    schedule_cron: str = "0 2 * * *"
    schedule_timezone: str = "UTC"
    misfire_grace_seconds: int = Field(default=6 * 3600, ge=1, le=ONE_WEEK_SECONDS)
    failed_pass_retry_seconds: int = Field(default=300, ge=1, le=24 * 3600)

    # --- logging ----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: one human-readable line per event; json: one JSON object per line, with the
    # structured fields (run_id, counts, photo_id) as keys, for a log collector.
    log_format: Literal["text", "json"] = "text"

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
        "source_filter_column",
        "writeback_breed_column",
        "writeback_confidence_column",
        "source_group_column",
        "target_key_column",
        "source_change_column",
    )
    @classmethod
    def _check_optional_column(cls, v: str | None, info: object) -> str | None:
        return _identifier(v, getattr(info, "field_name", "column"))

    @field_validator("target_table", "breed_table")
    @classmethod
    def _check_optional_table(cls, v: str | None, info: object) -> str | None:
        return _identifier(v, getattr(info, "field_name", "table"), qualified=True)

    @field_validator("source_filter_values", "url_allowed_hosts", "context_columns", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        # Environment variables carry lists as "a,b,c".
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("url_allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        return [_allowed_host(h) for h in v if h.strip()]

    @field_validator("schedule_timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"schedule_timezone {v!r} is not a known time zone "
                "(an IANA name such as UTC or Europe/Paris)"
            ) from exc
        return v

    @field_validator("schedule_cron")
    @classmethod
    def _check_cron(cls, v: str) -> str:
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
        # Never put the value (or a part of it) in these messages: it holds the password.
        raw = v.get_secret_value()
        if raw != raw.strip() or not raw.isprintable():
            raise ValueError(
                "database_url starts or ends with a space, or contains a newline or control "
                "character (a trailing newline?); percent-encode it if it belongs in the URL"
            )
        try:
            url = make_url(raw)
        except Exception as exc:  # SQLAlchemy raises ArgumentError; the text may echo the URL
            raise ValueError("database_url is not a valid SQLAlchemy URL") from exc
        if url.get_backend_name() != "sqlite":
            # An unencoded '@' in the user name or password moves the split between the
            # credentials and the host: the rest of the password would become the host name
            # and appear in every connection error.
            authority = raw.partition("://")[2].partition("?")[0]
            if authority.count("@") > 1 or "@" in (url.host or ""):
                raise ValueError(
                    "database_url is ambiguous: it has more than one '@' before the host; "
                    "percent-encode '@' in the user name or password as %40"
                )
        return v

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.source_filter_values and not self.source_filter_column:
            raise ValueError("source_filter_values is set but source_filter_column is not")
        if self.source_filter_column and not self.source_filter_values:
            # An empty filter would silently label every row (cats too).
            raise ValueError(
                "source_filter_column is set but source_filter_values is empty: "
                "list the values to label (LABELER_SOURCE_FILTER_VALUES)"
            )
        if self.image_kind == "path" and self.photo_root is None:
            raise ValueError("image_kind=path needs photo_root (the folder photo paths are under)")
        return self

    # --- validators of the per-animal settings ----------------------------------------------------
    @field_validator("context_columns")
    @classmethod
    def _check_context(cls, v: list[str]) -> list[str]:
        if len(v) > 10:
            raise ValueError("context_columns names more than 10 columns")
        return [str(_identifier(c, "context_columns entry")) for c in v]

    @field_validator("target_undecided", "target_stamp", mode="before")
    @classmethod
    def _parse_column_values(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str):
            return v
        example = {
            "target_undecided": "BreedID=412,BreedName=Mixed Breed",
            "target_stamp": "LastChangedBy=labeler,LastChangedDate=now",
        }[str(info.field_name)]
        values: dict[str, str] = {}
        for part in v.split(","):
            if not part.strip():
                continue
            column, sep, value = part.partition("=")
            if not sep:
                raise ValueError(
                    f"{info.field_name} entry {part.strip()!r} is not Column=value (e.g. {example})"
                )
            values[column.strip()] = value.strip()
        return values

    @field_validator("target_undecided", "target_stamp")
    @classmethod
    def _check_column_values(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for column, value in v.items():
            _identifier(column, f"{info.field_name} column")
            if info.field_name == "target_stamp" and not value:
                raise ValueError(
                    f"target_stamp column {column!r} has no value (Column=value; `now` for the "
                    "database's current time, `increment` to add 1)"
                )
        if info.field_name == "target_stamp":
            lowered = [c.lower() for c in v]
            twice = sorted({c for c in v if lowered.count(c.lower()) > 1})
            if twice:
                raise ValueError(f"target_stamp names column {twice[0]!r} twice")
        return v

    @model_validator(mode="after")
    def _check_shelter_fit(self) -> Settings:
        if self.target_table:
            missing = [
                f"LABELER_{name.upper()}"
                for name, value in (
                    ("source_group_column", self.source_group_column),
                    ("target_key_column", self.target_key_column),
                    ("breed_map", self.breed_map),
                    ("target_undecided", self.target_undecided),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"target_table is set, so {', '.join(missing)} must be set too")
        elif self.target_key_column or self.breed_map or self.target_undecided:
            raise ValueError("target_key_column, breed_map and target_undecided need target_table")
        elif self.target_stamp:
            raise ValueError("target_stamp needs target_table")
        if self.context_columns and not self.source_group_column:
            raise ValueError("context_columns needs source_group_column")
        return self

    # --- validators of the breed table ----------------------------------------------------------
    @field_validator("breed_table_columns", mode="before")
    @classmethod
    def _parse_breed_table_columns(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        pairs: dict[str, str] = {}
        for part in v.split(","):
            if not part.strip():
                continue
            map_column, sep, table_column = part.partition("=")
            if not sep:
                raise ValueError(
                    f"breed_table_columns entry {part.strip()!r} is not MapColumn=TableColumn "
                    "(e.g. BreedID=ID,BreedName=BreedName)"
                )
            pairs[map_column.strip()] = table_column.strip()
        return pairs

    @model_validator(mode="after")
    def _check_breed_table_columns(self) -> Settings:
        for map_column, table_column in self.breed_table_columns.items():
            _identifier(map_column, "breed_table_columns map column")
            _identifier(table_column, "breed_table_columns table column")
        if self.breed_table and not self.breed_table_columns:
            raise ValueError("breed_table is set, so LABELER_BREED_TABLE_COLUMNS must be set too")
        if self.breed_table_columns and not self.breed_table:
            raise ValueError("breed_table_columns needs breed_table")
        if self.breed_table and not self.breed_map:
            raise ValueError("breed_table is set, so LABELER_BREED_MAP must be set too")
        return self

    # --- derived ----------------------------------------------------------------------------------
    @property
    def url(self) -> URL:
        return make_url(self.database_url.get_secret_value())

    def safe_database_url(self) -> str:
        """The database URL with the password and credential parameters masked."""
        return safe_url(self.url)


def setting_default(name: str) -> Any:
    """The default of one setting, for runtime objects that need it without a Settings.

    Defaults are written once, on ``Settings``; ``PassConfig``, ``LoaderConfig`` and
    ``RetryPolicy`` read theirs from here so a changed default cannot drift between them.
    """
    default = Settings.model_fields[name].default
    if default is PydanticUndefined:
        raise KeyError(f"setting {name} has no plain default")
    return default


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
