"""Settings: validated at start-up, with messages that name the variable to fix."""

from __future__ import annotations

import pytest

from labeler.settings import ConfigError, load_settings


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

    from labeler.redact import RedactingFilter, secrets_of

    monkeypatch.setenv("LABELER_DATABASE_URL", "mysql+pymysql://app:p%40ss-w0rd@db/shelter")
    secrets = secrets_of(load_settings())
    assert "p@ss-w0rd" in secrets and "p%40ss-w0rd" in secrets
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "failed for %s", ("p@ss-w0rd",), None
    )
    assert RedactingFilter(secrets).filter(record)
    assert record.getMessage() == "failed for ***"
