"""Operator-facing pieces that need neither a database nor a model: retry policy, log format,
exit codes, signals, the version, command-line arguments."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from labeler.config.logging_setup import setup_logging
from labeler.core.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from labeler.service import cli
from labeler.service.shutdown import STOP_SIGNALS, StopOnSignals
from labeler.store import engine as db
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() installs its own log handler on the root logger; put pytest's back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved


def _operational(message: str = "connection refused") -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message))


def test_retry_policy_doubles_and_caps() -> None:
    policy = db.RetryPolicy(retries=5, backoff_seconds=2.0, max_delay_seconds=60.0)
    assert [policy.delay(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert db.RetryPolicy(backoff_seconds=300, max_delay_seconds=3600).delay(10**6) == 3600


def test_with_retries_retries_only_transient_errors() -> None:
    stop = threading.Event()
    stop.set()  # makes every wait return at once; the retries still happen
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _operational()
        return "done"

    assert db.with_retries(flaky, db.RetryPolicy(retries=2), stop, "testing") == "done"
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(OperationalError):
        db.with_retries(flaky, db.RetryPolicy(retries=1), stop, "testing")
    assert len(calls) == 2

    def broken() -> None:
        calls.append(1)
        raise ProgrammingError("SELECT x", {}, Exception("no such column"))

    calls.clear()
    with pytest.raises(ProgrammingError):
        db.with_retries(broken, db.RetryPolicy(retries=5), stop, "testing")
    assert len(calls) == 1, "a permanent error is not retried"


def test_short_error_is_the_first_line_of_the_driver_message() -> None:
    exc = _operational("server closed the connection\nDETAIL: more\nHINT: even more")
    assert db.short_error(exc) == "server closed the connection"
    assert db.short_error(RuntimeError("x" * 1000)) == "x" * 300
    assert db.is_transient(exc) and not db.is_transient(RuntimeError("x"))


def test_the_pass_and_the_scheduler_share_the_retry_helpers() -> None:
    from labeler.labelling import passes as labelling
    from labeler.service import scheduler

    for module in (labelling, scheduler):
        for name in ("is_transient", "with_retries", "utc_now", "RetryPolicy", "short_error"):
            if hasattr(module, name):
                assert getattr(module, name) is getattr(db, name), f"{module.__name__}.{name}"
    assert not hasattr(labelling, "PassAborted") and not hasattr(db, "backend_name")


def _log_lines(fmt: str, secrets: list[str], emit) -> str:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", secrets, fmt, stream=stream)
        emit(logging.getLogger("labeler.pass"))
    finally:
        root.handlers[:], root.level = saved
    return stream.getvalue()


def test_json_logs_carry_structured_fields_and_stay_redacted() -> None:
    def emit(log: logging.Logger) -> None:
        log.info("run %d done", 7, extra={"run_id": 7, "labelled": 30, "failed": 2})
        log.warning("photo failed", extra={"photo_id": "a-17", "reason": "pw=hunter-22"})
        try:
            raise ValueError("connect with hunter-22")
        except ValueError:
            log.exception("boom", extra={"run_id": 7})

    out = _log_lines("json", ["hunter-22"], emit)
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert records[0]["message"] == "run 7 done"
    assert (records[0]["run_id"], records[0]["labelled"], records[0]["failed"]) == (7, 30, 2)
    assert records[0]["logger"] == "labeler.pass" and records[0]["time"].endswith("+00:00")
    assert records[1]["photo_id"] == "a-17" and records[1]["reason"] == "pw=***"
    assert "ValueError: connect with ***" in records[2]["exception"]
    assert "hunter-22" not in out


def test_text_logs_are_the_default_format() -> None:
    out = _log_lines("text", [], lambda log: log.info("hello", extra={"run_id": 3}))
    assert out.rstrip().endswith("INFO labeler.pass: hello")
    assert not out.startswith("{")


def test_stop_signals_set_the_event_and_choose_the_exit_code() -> None:
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= set(STOP_SIGNALS)
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, expected in (
        (signal.SIGINT, EXIT_INTERRUPTED),
        (signal.SIGTERM, EXIT_OK),
        (signal.SIGHUP, EXIT_OK),
    ):
        stopped = threading.Event()
        with StopOnSignals(on_stop=stopped.set) as signals:
            os.kill(os.getpid(), sig)  # handled in this (main) thread before kill returns
            assert signals.stop.is_set() and stopped.is_set()
        assert signals.received == sig and signals.exit_code() == expected
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before, "handlers restored"


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from importlib.metadata import version

    pyproject = (REPO / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)
    assert match, "pyproject.toml declares the version"
    declared = match.group(1)
    assert version("labeler") == declared
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"labeler {declared}"
    assert (REPO / "labeler" / "py.typed").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run-once", "--max-rows", "0"],
        ["run-once", "--max-rows", "-3"],
        ["run-once", "--max-rows", "many"],
        ["status", "--runs", "0"],
        ["classify", "--top", "0", "x.jpg"],
    ],
)
def test_arguments_that_would_misbehave_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == EXIT_CONFIG
    option = next(a for a in argv if a.startswith("--"))
    assert f"argument {option}" in capsys.readouterr().err


def test_exit_codes_in_the_readme_match_the_code() -> None:
    import re

    readme = (REPO / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| ([^|]+) \|", readme, re.MULTILINE))
    assert {int(k) for k in table} == {EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED}
    assert "Ctrl-C" in table[str(EXIT_INTERRUPTED)]


def test_a_missing_photo_root_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.config.settings import ConfigError, load_settings
    from labeler.service.app import check_photo_root

    missing = tmp_path / "not-mounted"
    monkeypatch.setenv("LABELER_PHOTO_ROOT", str(missing))
    with pytest.raises(ConfigError, match=r"LABELER_PHOTO_ROOT=.* does not exist"):
        check_photo_root(load_settings())
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    monkeypatch.setenv("LABELER_PHOTO_ROOT", str(a_file))
    with pytest.raises(ConfigError, match="is not a folder"):
        check_photo_root(load_settings())
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o000)
        monkeypatch.setenv("LABELER_PHOTO_ROOT", str(locked))
        try:
            with pytest.raises(ConfigError, match="not readable"):
                check_photo_root(load_settings())
        finally:
            locked.chmod(0o755)
    monkeypatch.setenv("LABELER_PHOTO_ROOT", str(tmp_path))
    assert "readable" in check_photo_root(load_settings())

    # run-once refuses before loading the model: exit 2, the variable named
    monkeypatch.setenv("LABELER_PHOTO_ROOT", str(missing))
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tmp_path / "no-model"))
    assert cli.main(["run-once"]) == EXIT_CONFIG
    assert "LABELER_PHOTO_ROOT" in capsys.readouterr().err


@pytest.mark.parametrize("failing", ["ruff", "mypy", "lint-imports", None])
def test_the_ci_command_fails_on_lint_and_type_errors(tmp_path: Path, failing: str | None) -> None:
    """.ci/run -> scripts/test.sh, with every tool replaced by a stub that logs its call."""
    import shutil
    import subprocess

    (tmp_path / ".ci").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(REPO / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    calls = tmp_path / "calls.log"
    for script in ("setup.sh", "start-databases.sh"):
        (tmp_path / "scripts" / script).write_text(f"echo {script} >> {calls}\n")
    for tool in ("ruff", "mypy", "lint-imports", "python"):
        stub = tmp_path / ".venv" / "bin" / tool
        status = 1 if tool == failing else 0
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit {status}\n')
        stub.chmod(0o755)
    ci = tmp_path / ".ci" / "run"
    result = subprocess.run(["bash", str(ci)], capture_output=True, timeout=60)
    log = calls.read_text().splitlines()
    if failing:
        assert result.returncode != 0
        assert not any(line.startswith("python -m pytest") for line in log), log
    else:
        assert result.returncode == 0, result.stderr
        assert log == [
            "setup.sh",
            "ruff check .",
            "mypy ",
            "lint-imports ",
            "start-databases.sh",
            "python -m pytest -q -p no:cacheprovider",
        ]
