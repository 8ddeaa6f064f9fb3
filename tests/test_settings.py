"""Settings: validated at start-up, with messages that name the variable to fix."""

from __future__ import annotations

import pytest

from labeler.config.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LABELER_SOURCE_TABLE", "photos; DROP TABLE animals", "not a plain SQL identifier"),
        ("LABELER_SOURCE_TABLE", 'photos"--', "not a plain SQL identifier"),
        ("LABELER_SOURCE_IMAGE_COLUMN", "image) OR 1=1 --", "not a plain SQL identifier"),
        ("LABELER_SOURCE_ID_COLUMN", "1id", "not a plain SQL identifier"),
        ("LABELER_WRITEBACK_BREED_COLUMN", "breed`", "not a plain SQL identifier"),
        ("LABELER_SOURCE_FILTER_COLUMN", "a.b", "not a plain SQL identifier"),
        ("LABELER_SOURCE_TABLE", "a.b.c", "not a plain SQL identifier"),
        ("LABELER_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("LABELER_REVIEW_THRESHOLD", "1.5", "less than or equal to 1"),
        ("LABELER_SCHEDULE_CRON", "every night", "not a 5-field cron expression"),
        ("LABELER_IMAGE_KIND", "pdf", "auto"),
        ("LABELER_DATABASE_URL", "not a url", "not a valid SQLAlchemy URL"),
        ("LABELER_URL_ALLOWED_HOSTS", "photos.example.org,bad host!", "not a host name"),
        # accepted before, then misbehaving
        ("LABELER_SCHEDULE_TIMEZONE", "Mars/Olympus_Mons", "not a known time zone"),
        ("LABELER_SCHEDULE_TIMEZONE", "UTC\n", "not a known time zone"),
        ("LABELER_SCHEDULE_TIMEZONE", "../../etc/passwd", "not a known time zone"),
        ("LABELER_CLAIM_TTL_SECONDS", "99999999999999999999", "less than or equal to 604800"),
        ("LABELER_MISFIRE_GRACE_SECONDS", "10000000000", "less than or equal to 604800"),
        ("LABELER_FAILED_PASS_RETRY_SECONDS", "10000000000", "less than or equal to 86400"),
        ("LABELER_SOURCE_TABLE", "animals\n", "not a plain SQL identifier"),
        ("LABELER_SOURCE_ID_COLUMN", "id\n", "not a plain SQL identifier"),
        ("LABELER_SOURCE_FILTER_COLUMN", "species\n", "not a plain SQL identifier"),
        ("LABELER_DATABASE_URL", "sqlite:///labeler.store.engine\n", "trailing newline"),
        ("LABELER_DATABASE_URL", " postgresql+psycopg://u@db/x", "starts or ends with a space"),
        ("LABELER_URL_ALLOWED_HOSTS", "photos.example.org:8443", "has a port"),
        ("LABELER_URL_ALLOWED_HOSTS", "[2001:db8::1]:443", "has a port"),
        ("LABELER_URL_ALLOWED_HOSTS", "https://photos.example.org", "is a URL"),
        ("LABELER_URL_ALLOWED_HOSTS", "[not-an-ip]", "not a host name"),
        ("LABELER_LOG_FORMAT", "xml", "text"),
        ("LABELER_MAX_IMAGE_BYTES", str(10**30), "less than or equal to 2147483648"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message and expected in message


def test_combinations_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", "dog")
    with pytest.raises(ConfigError, match="source_filter_column is not"):
        load_settings()
    monkeypatch.delenv("LABELER_SOURCE_FILTER_VALUES")
    # A filter column without values would label every species: refused, naming both.
    for empty in ("", " , "):
        monkeypatch.setenv("LABELER_SOURCE_FILTER_COLUMN", "species")
        monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", empty)
        with pytest.raises(ConfigError, match="LABELER_SOURCE_FILTER_VALUES") as info:
            load_settings()
        assert "source_filter_column is set" in str(info.value)
    monkeypatch.delenv("LABELER_SOURCE_FILTER_COLUMN")
    monkeypatch.delenv("LABELER_SOURCE_FILTER_VALUES")
    monkeypatch.setenv("LABELER_IMAGE_KIND", "path")
    with pytest.raises(ConfigError, match="needs photo_root"):
        load_settings()


def test_defaults_and_lists(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings()
    assert settings.url.get_backend_name() == "sqlite"
    assert settings.schedule_cron == "0 2 * * *" and settings.batch_size == 32
    monkeypatch.setenv("LABELER_SOURCE_TABLE", "shelter.animal_photos")
    monkeypatch.setenv("LABELER_SOURCE_FILTER_COLUMN", "species")
    monkeypatch.setenv("LABELER_SOURCE_FILTER_VALUES", "dog, Dog ,")
    monkeypatch.setenv("LABELER_URL_ALLOWED_HOSTS", "Photos.Example.org, cdn.example.org")
    settings = load_settings()
    assert settings.source_table == "shelter.animal_photos"
    assert settings.source_filter_values == ["dog", "Dog"]
    assert settings.url_allowed_hosts == ["photos.example.org", "cdn.example.org"]


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("LABELER_BATCH_SIZE=7\nLABELER_SOURCE_TABLE=pets\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert (settings.batch_size, settings.source_table) == (7, "pets")


def test_password_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELER_DATABASE_URL", "postgresql+psycopg://labeler:s3cret-pw@db/shelter")
    settings = load_settings()
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.model_dump())
    assert "s3cret-pw" not in settings.safe_database_url()
    monkeypatch.setenv("LABELER_BATCH_SIZE", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret-pw" not in str(info.value)


def test_log_records_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from labeler.config.redact import RedactingFilter, secrets_of

    monkeypatch.setenv("LABELER_DATABASE_URL", "mysql+pymysql://app:p%40ss-w0rd@db/shelter")
    secrets = secrets_of(load_settings())
    assert "p@ss-w0rd" in secrets and "p%40ss-w0rd" in secrets
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "failed for %s", ("p@ss-w0rd",), None
    )
    assert RedactingFilter(secrets).filter(record)
    assert record.getMessage() == "failed for ***"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("Photos.Example.org", "photos.example.org"),
        ("[::1]", "::1"),  # brackets are URL syntax; photo URLs are matched without them
        ("[2001:DB8::7]", "2001:db8::7"),
        ("::1", "::1"),
        ("192.0.2.10", "192.0.2.10"),
        ("photos.example.org.", "photos.example.org"),  # fully qualified: the same name
    ],
)
def test_allowed_hosts_are_normalised_to_how_urls_are_matched(
    monkeypatch: pytest.MonkeyPatch, entry: str, expected: str
) -> None:
    from urllib.parse import urlsplit

    monkeypatch.setenv("LABELER_URL_ALLOWED_HOSTS", entry)
    assert load_settings().url_allowed_hosts == [expected]
    # the form labeler.photos.urls compares against: urlsplit(url).hostname, lower-cased,
    # without the final dot of a fully qualified name
    host = entry.lower() if entry.startswith("[") else f"[{entry}]" if ":" in entry else entry
    assert (urlsplit(f"http://{host}:8080/a.jpg").hostname or "").lower().rstrip(".") == expected


def test_a_valid_time_zone_reaches_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from apscheduler.triggers.cron import CronTrigger

    monkeypatch.setenv("LABELER_SCHEDULE_TIMEZONE", "Europe/Paris")
    settings = load_settings()
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone=settings.schedule_timezone)
    assert str(trigger.timezone) == "Europe/Paris"


def test_the_largest_claim_ttl_still_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from labeler.store.engine import utc_now

    monkeypatch.setenv("LABELER_CLAIM_TTL_SECONDS", "604800")
    ttl = timedelta(seconds=load_settings().claim_ttl_seconds)
    now = utc_now()
    assert now - ttl < now < now + ttl  # neither direction overflows


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://labeler:p@ss-w0rd@db.example.org/shelter", "ss-w0rd"),
        ("mysql+pymysql://app@corp:s3cret-pw@db/shelter", "s3cret-pw"),
    ],
)
def test_an_ambiguous_url_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, url: str, secret: str
) -> None:
    monkeypatch.setenv("LABELER_DATABASE_URL", url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "LABELER_DATABASE_URL" in message and "ambiguous" in message and "%40" in message
    assert secret not in message and "example.org" not in message and "corp" not in message


def test_unusual_but_unambiguous_urls_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (
        "postgresql+psycopg://labeler:p%40ss@db/shelter",  # an encoded '@'
        "postgresql+psycopg://labeler:pa/ss@db/shelter",  # SQLAlchemy takes '/' in a password
        "sqlite:////srv/user@host/labeler.store.engine",  # a file path may hold '@'
        "sqlite:////srv/my photos/labeler.store.engine",
    ):
        monkeypatch.setenv("LABELER_DATABASE_URL", url)
        assert load_settings().url is not None


def test_query_parameter_credentials_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from labeler.config.redact import RedactingFilter, secrets_of

    monkeypatch.setenv(
        "LABELER_DATABASE_URL",
        "postgresql+psycopg://labeler@db/shelter?password=qu3ry-Pw&sslmode=require"
        "&sslpassword=k3y-Pass&sslkey=/etc/labeler/client.key",
    )
    settings = load_settings()
    shown = settings.safe_database_url()
    for secret in ("qu3ry-Pw", "k3y-Pass", "client.key"):
        assert secret not in shown
    assert "sslmode=require" in shown and "password=***" in shown
    secrets = secrets_of(settings)
    assert "qu3ry-Pw" in secrets and "k3y-Pass" in secrets
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "connect failed: %s", ("password=qu3ry-Pw",), None
    )
    record.detail = "k3y-Pass in a structured field"
    try:
        raise RuntimeError("traceback mentions qu3ry-Pw")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter(secrets).filter(record)
    text = record.getMessage() + record.detail + (record.exc_text or "")
    assert "qu3ry-Pw" not in text and "k3y-Pass" not in text
    assert "traceback mentions ***" in (record.exc_text or "")


def test_runtime_objects_take_their_defaults_from_settings() -> None:
    from labeler.config.settings import Settings, setting_default
    from labeler.labelling.passes import PassConfig
    from labeler.photos.fetching import LoaderConfig
    from labeler.store.engine import RetryPolicy

    def default(name: str) -> object:
        return Settings.model_fields[name].default

    run, loader, retry = PassConfig(), LoaderConfig(), RetryPolicy()
    assert (run.batch_size, run.max_attempts, run.max_rows, run.prefetch_batches) == (
        default("batch_size"),
        default("max_attempts"),
        default("max_rows_per_pass"),
        default("prefetch_batches"),
    )
    assert run.claim_ttl.total_seconds() == default("claim_ttl_seconds")
    assert run.group_disagreement == default("group_disagreement")
    assert (retry.retries, retry.backoff_seconds) == (run.db_retries, run.db_backoff_seconds)
    assert (retry.retries, retry.backoff_seconds) == (
        default("db_connect_retries"),
        default("db_retry_backoff_seconds"),
    )
    assert (loader.url_timeout, loader.max_bytes) == (
        default("url_timeout_seconds"),
        default("max_image_bytes"),
    )
    decode = loader.decode_limits
    assert (decode.max_pixels, decode.max_jpeg_scans, decode.decode_seconds) == (
        default("max_image_pixels"),
        default("max_jpeg_scans"),
        default("decode_seconds"),
    )
    assert run.decode_threads == default("decode_threads")
    with pytest.raises(KeyError, match="breed_table_columns has no plain default"):
        setting_default("breed_table_columns")


@pytest.mark.parametrize("prefetch", [1, 2, 6])
def test_the_connection_pool_holds_every_thread_of_a_pass(prefetch: int) -> None:
    """The main thread saves while each batch ahead claims and reads on its own thread: a
    pool smaller than that would make a pass wait for connections, then fail."""
    from labeler.config.settings import Settings
    from labeler.store.engine import make_engine

    engine = make_engine(  # connects lazily: no server needed
        Settings(database_url="postgresql+psycopg://u@127.0.0.1/x", prefetch_batches=prefetch)
    )
    assert engine.pool.size() >= prefetch + 1  # type: ignore[attr-defined]
