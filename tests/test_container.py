"""The image a shelter deploys (docker/Dockerfile), built and run by a real container engine.

The image is built once for the module. Each container runs as the image's own non-root user,
with a read-only root filesystem and the photo folder mounted read-only, on the host network
against the host's PostgreSQL and MariaDB (a fresh database each). Where no engine runs,
scripts/container-engine.sh installs Debian's (as root) and starts it, and stops it afterwards;
where no registry can be reached, scripts/make-base-image.sh makes the base from Debian's
packages. A missing engine is a failure, like a missing database server: only
LABELER_TEST_SKIP_UNAVAILABLE=1 on a developer's machine (never CI) turns it into a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from labeler.store import migrate
from labeler.store.schema import LABELLED, NEEDS_REVIEW, PENDING, photo, run
from tests.helpers import (
    ALLOW_SKIP,
    FULLFRAME,
    REPO,
    ServerUnavailable,
    create_photos,
    fresh_database,
    fullframe_photos,
    require,
)

pytestmark = pytest.mark.slow

ENGINE_SCRIPT = REPO / "scripts" / "container-engine.sh"
BASE_SCRIPT = REPO / "scripts" / "make-base-image.sh"
TAG = "labeler:container-test"
# The database password, passed only in LABELER_DATABASE_URL: it must show nowhere else.
SECRET = "Cont41ner-s3cret-pw"
BUILD_TIMEOUT = 1200
# `docker stop`'s grace period before SIGKILL (compose.yaml gives 5 minutes).
STOP_GRACE = 60


def _unavailable(message: str) -> None:
    if ALLOW_SKIP:
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def docker(*args: str, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def container_engine() -> Iterator[None]:
    """An engine that answers; started here (and stopped at the end) only if none did."""
    if shutil.which("bash") is None:
        _unavailable("bash is needed for scripts/container-engine.sh")
    already = subprocess.run(["bash", ENGINE_SCRIPT, "status"], capture_output=True).returncode
    started = subprocess.run(
        ["bash", ENGINE_SCRIPT, "start"], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        _unavailable(
            "no container engine for the image test (scripts/container-engine.sh start "
            f"exited {started.returncode}):\n{_tail(started.stderr)}"
        )
    try:
        yield
    finally:
        if already != 0:
            subprocess.run(["bash", ENGINE_SCRIPT, "stop"], capture_output=True, timeout=120)


@dataclass(frozen=True)
class Image:
    tag: str
    config: dict[str, Any]


def _image_id(tag: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


@pytest.fixture(scope="module")
def image(container_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    base = subprocess.run(
        ["bash", BASE_SCRIPT], capture_output=True, text=True, timeout=900, cwd=REPO
    )
    if base.returncode != 0 or not base.stdout.strip():
        pytest.fail(
            f"no base image (scripts/make-base-image.sh exited {base.returncode}):\n"
            f"{_tail(base.stderr)}",
            pytrace=False,
        )
    base_tag = base.stdout.strip().splitlines()[-1]
    # The builder stage is tagged too, so that the last run's stages can be removed by id
    # after this build: vfs keeps a full copy of every layer, and untagged leftovers of each
    # run would fill the disk. The dependency layer, shared with this build, stays cached.
    tags = {"": TAG, "builder": f"{TAG}-builder"}
    previous = {target: _image_id(tag) for target, tag in tags.items()}
    log = tmp_path_factory.mktemp("build") / "docker-build.log"
    started = time.monotonic()
    with log.open("w") as out:
        for target in ("builder", ""):
            command = [
                "docker", "build", "--network", "host", "--build-arg", f"BASE={base_tag}",
                "-f", "docker/Dockerfile", "-t", tags[target], ".",
            ]  # fmt: skip
            if target:
                command[2:2] = ["--target", target]
            built = subprocess.run(
                command,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=BUILD_TIMEOUT,
            )
            if built.returncode != 0:
                break
    seconds = time.monotonic() - started
    if built.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` (base {base_tag}) failed with exit {built.returncode} "
            f"after {seconds:.0f} s; the end of its output ({log}):\n"
            f"{_tail(log.read_text(), 60)}",
            pytrace=False,
        )
    for target, tag in tags.items():
        if previous[target] and previous[target] != _image_id(tag):
            docker("rmi", previous[target])
    inspected = json.loads(docker("image", "inspect", TAG).stdout)[0]
    yield Image(TAG, inspected["Config"])


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few sample photos, readable by the container's user (the mount keeps the modes)."""
    require(FULLFRAME)
    folder = tmp_path_factory.mktemp("photos")
    for source in fullframe_photos()[::10][:5]:
        target = folder / source.name
        shutil.copyfile(source, target)
        target.chmod(0o644)
    folder.chmod(0o755)
    return folder


@contextmanager
def shelter_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database whose URL carries SECRET as its password."""
    try:
        with fresh_database(backend, tmp_path) as url:
            parsed = make_url(url)
            if backend == "postgresql":
                # The servers here trust local connections; the password still travels in
                # the URL, which is what must stay out of sight.
                yield parsed.set(password=SECRET).render_as_string(hide_password=False)
                return
            user = f"lbl_{uuid.uuid4().hex[:8]}"
            admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with admin.connect() as conn:
                conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'"))
                conn.execute(text(f"GRANT ALL ON `{parsed.database}`.* TO '{user}'@'%'"))
            try:
                yield parsed.set(username=user, password=SECRET).render_as_string(
                    hide_password=False
                )
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
                admin.dispose()
    except ServerUnavailable as exc:
        _unavailable(f"database server needed by the container test is unavailable: {exc}")


def seed(url: str, photos: Path, rows: int) -> None:
    names = sorted(p.name for p in photos.iterdir())
    engine = create_engine(url, poolclass=NullPool)
    create_photos(
        engine,
        "path",
        ({"id": i + 1, "photo": names[i % len(names)], "species": "dog"} for i in range(rows)),
    )
    engine.dispose()


def env_file(tmp_path: Path, url: str, **extra: str) -> Path:
    """The settings as a shelter passes them: an env file, not the command line."""
    settings = {
        "LABELER_DATABASE_URL": url,
        "LABELER_SOURCE_TABLE": "animals",
        "LABELER_SOURCE_IMAGE_COLUMN": "photo",
        "LABELER_IMAGE_KIND": "path",
        "LABELER_PHOTO_ROOT": "/photos",
        **extra,
    }
    path = tmp_path / f"labeler-{uuid.uuid4().hex[:6]}.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    path.chmod(0o600)
    return path


def run_args(image: Image, photos: Path, env: Path) -> list[str]:
    # No --user: the image's own USER is what a shelter gets. No --tmpfs: nothing is written.
    return [
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        f"{photos}:/photos:ro",
        "--env-file",
        str(env),
    ]


@contextmanager
def service_container(image: Image, photos: Path, env: Path) -> Iterator[str]:
    """A container of the image, idle, with the settings, mounts and user of a real one: the
    commands are `docker exec`ed in it, as the engine runs the HEALTHCHECK. One container for
    all of them, since creating one copies the whole image under vfs (seconds each)."""
    name = f"labeler-test-{uuid.uuid4().hex[:8]}"
    started = docker(
        "run", "-d", "--name", name, *run_args(image, photos, env),
        "--no-healthcheck", "--entrypoint", "sleep", image.tag, "infinity",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        docker("rm", "-f", name)


def in_container(name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return docker("exec", name, *command, timeout=300)


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(select(photo.c.status, func.count()).group_by(photo.c.status)).all()
        )
        by_status["claimed"] = conn.execute(
            select(func.count()).where(photo.c.claimed_by.is_not(None))
        ).scalar_one()
    engine.dispose()
    return by_status


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        assert SECRET not in output, f"the database password leaked:\n{_tail(output)}"


def test_image_runs_as_non_root_with_a_light_healthcheck(image: Image) -> None:
    user = image.config.get("User") or ""
    assert user and user.split(":")[0] not in ("0", "root"), f"image USER is {user!r}"
    assert image.config["Entrypoint"] == ["labeler"]
    assert image.config["Healthcheck"]["Test"] == ["CMD", "labeler", "health"]
    assert "schedule" in image.config["Cmd"]
    env = dict(item.split("=", 1) for item in image.config["Env"])
    assert not any(k.startswith("LABELER_DATABASE") for k in env), env
    history = docker("history", "--no-trunc", image.tag).stdout
    assert_no_secret(json.dumps(image.config), history)


def test_the_packaged_model_is_served_by_onnx_runtime_without_tensorflow(image: Image) -> None:
    probe = (
        "import importlib.util as u, shutil, sys;"
        "missing = [m for m in ('tensorflow', 'keras', 'tf2onnx') if u.find_spec(m)];"
        "tools = [t for t in ('gcc', 'cc', 'c++') if shutil.which(t)];"
        "print('unexpected:', missing, tools); sys.exit(1 if missing or tools else 0)"
    )
    result = docker("run", "--rm", "--read-only", "--entrypoint", "python3", image.tag, "-c", probe)
    assert result.returncode == 0, result.stdout + result.stderr
    # The packaged default model, no LABELER_MODEL_DIR: `classify` needs no database.
    sample = fullframe_photos()[0]
    result = docker(
        "run", "--rm", "--read-only", "--network", "none",
        "-v", f"{sample}:/photos/dog.jpg:ro",
        image.tag, "classify", "/photos/dog.jpg",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime onnxruntime" in result.stdout, result.stdout


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_upgrade_check_run_once_and_health_against_the_host_server(
    image: Image, photo_dir: Path, tmp_path: Path, backend: str
) -> None:
    rows = 12
    healthcheck = image.config["Healthcheck"]["Test"][1:]  # after "CMD"
    with (
        shelter_database(backend, tmp_path) as url,
        service_container(image, photo_dir, env_file(tmp_path, url)) as name,
    ):
        seed(url, photo_dir, rows)
        outputs = []

        def labeler(*args: str, code: int = 0) -> str:
            result = in_container(name, *args)
            outputs.append(output := result.stdout + result.stderr)
            assert result.returncode == code, f"{' '.join(args)}:\n{output}"
            return result.stdout

        assert in_container(name, "id", "-u").stdout.strip() == image.config["User"].split(":")[0]
        # Before the schema exists, the health check says what to do.
        assert "run `labeler db upgrade`" in labeler(*healthcheck, code=1)
        labeler("labeler", "db", "upgrade")
        assert "onnxruntime" in labeler("labeler", "check")
        labeler("labeler", "run-once")
        assert "with onnxruntime" in outputs[-1], outputs[-1]
        labeler("labeler", "status")
        assert labeler(*healthcheck).startswith("healthy:")

        done = counts(url)
        assert done.get(LABELLED, 0) + done.get(NEEDS_REVIEW, 0) == rows, done
        assert done["claimed"] == 0
        assert_no_secret(*outputs)


def test_docker_stop_finishes_the_batch_and_releases_claims(
    image: Image, photo_dir: Path, tmp_path: Path
) -> None:
    total = 4000
    name = f"labeler-test-{uuid.uuid4().hex[:8]}"
    with shelter_database("postgresql", tmp_path) as url:
        seed(url, photo_dir, total)
        env = env_file(tmp_path, url, LABELER_BATCH_SIZE="16")
        # The schema from the host: the container's `db upgrade` is the test above.
        engine = create_engine(url, poolclass=NullPool)
        migrate.upgrade(engine)
        engine.dispose()
        started = docker(
            "run", "-d", "--name", name, *run_args(image, photo_dir, env),
            # The image's own health check, only run more often than every 5 minutes.
            "--health-interval", "2s",
            image.tag, "schedule", "--now",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:

            def state() -> dict[str, Any]:
                out = docker("inspect", "--format", "{{json .State}}", name).stdout
                return json.loads(out) if out.strip() else {}

            def labelled() -> int:
                c = counts(url)
                return c.get(LABELLED, 0) + c.get(NEEDS_REVIEW, 0)

            def logs() -> str:
                result = docker("logs", name)
                return result.stdout + result.stderr

            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                current = state()
                assert current.get("Running"), f"the container exited:\n{_tail(logs())}"
                if current.get("Health", {}).get("Status") == "healthy" and labelled() >= 30:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"no healthy pass within 180 s:\n{_tail(logs())}")
            uid = in_container(name, "id", "-u").stdout.strip()
            assert uid == image.config["User"].split(":")[0], uid
            assert labelled() < total, "the pass ended before `docker stop`: seed more rows"

            stopping = time.monotonic()
            stopped = docker("stop", "-t", str(STOP_GRACE), name, timeout=STOP_GRACE + 60)
            took = time.monotonic() - stopping
            assert stopped.returncode == 0, stopped.stderr
            final = state()
            output = logs()
            inspect = docker("inspect", name).stdout
        finally:
            docker("rm", "-f", name)

        assert final["ExitCode"] == 0, f"exit {final['ExitCode']} (137: killed)\n{output}"
        assert took < STOP_GRACE, f"stopping took {took:.0f} s"
        assert "SIGTERM received" in output and "scheduler stopped" in output, output
        done = counts(url)
        assert done["claimed"] == 0, f"claims left after `docker stop`: {done}"
        assert labelled() + done.get(PENDING, 0) == total, done
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            runs = list(conn.execute(select(run)))
        engine.dispose()
        assert [r.status for r in runs] == ["interrupted"]
        assert runs[0].labelled + runs[0].needs_review == labelled()

        # The password shows only where it was passed: the one Env entry. Not in the health
        # check's recorded output, the command, the labels, nor in anything labeler logged.
        details = json.loads(inspect)[0]
        health_log = details["State"]["Health"]["Log"]
        assert any(e["Output"].startswith("healthy:") for e in health_log), health_log
        passed = f"LABELER_DATABASE_URL={url}"
        assert passed in details["Config"]["Env"]
        details["Config"]["Env"].remove(passed)
        assert_no_secret(json.dumps(details), output)


def test_compose_file_is_valid_for_the_compose_parser(container_engine: None) -> None:
    if docker("compose", "version").returncode == 0:
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.fail("neither `docker compose` nor docker-compose is installed", pytrace=False)
    result = subprocess.run(
        [*command, "-f", "docker/compose.yaml", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "labeler-check"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
