"""The `labeler` command. It only wires settings, engine, model and the pass together."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from labeler.artifact import ArtifactError
from labeler.redact import RedactingFilter, redact, secrets_of
from labeler.settings import ConfigError, Settings, load_settings
from labeler.source import SourceError

log = logging.getLogger("labeler")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def setup_logging(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler.executors", "apscheduler.scheduler", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# --- commands --------------------------------------------------------------------------------


def cmd_run_once(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.app import Service

    if args.max_rows:
        settings = settings.model_copy(update={"max_rows_per_pass": args.max_rows})
    service = Service.build(settings)
    log.info("using %s", service.classifier.artifact.describe())
    stop = threading.Event()
    _stop_on_signals(stop)
    summary = service.run_pass(command="run-once", stop=stop)
    print(summary.line())
    return EXIT_OK


def cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.app import Service
    from labeler.scheduler import PassScheduler

    service = Service.build(settings)
    log.info("using %s", service.classifier.artifact.describe())
    scheduler = PassScheduler(
        lambda stop: service.run_pass(command="schedule", stop=stop),
        probe=service.probe,
        cron=settings.schedule_cron,
        timezone=settings.schedule_timezone,
        misfire_grace_seconds=settings.misfire_grace_seconds,
        run_at_start=args.now,
        retry_seconds=settings.failed_pass_retry_seconds,
    )
    scheduler.run()
    return EXIT_OK


def cmd_relabel(settings: Settings, args: argparse.Namespace) -> int:
    from labeler import repository as repo
    from labeler.db import make_engine, session_factory
    from labeler.labelling import utc_now

    other_version = args.other_model_version
    if args.not_current_model:
        from labeler.artifact import load_artifact

        other_version = load_artifact(settings.model_dir).version
    ids = tuple(i.strip() for chunk in args.ids or [] for i in chunk.split(",") if i.strip())
    selection = repo.RelabelSelection(
        other_model_version=other_version,
        photo_ids=ids,
        failed=args.failed,
        labelled_before=args.before,
        everything=args.all,
    )
    if selection.is_empty():
        print(
            "relabel: say which rows: --not-current-model, --other-model-version V, --ids, "
            "--failed, --before DATE or --all",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    engine = make_engine(settings)
    with session_factory(engine).begin() as session:
        count = repo.relabel(session, selection, utc_now())
    print(f"{count} photos marked for relabelling (rows reviewed by staff are never touched)")
    if args.run and count:
        return cmd_run_once(settings, argparse.Namespace(max_rows=None))
    return EXIT_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from labeler import repository as repo
    from labeler.db import make_engine, session_factory
    from labeler.labelling import utc_now

    engine = make_engine(settings)
    with session_factory(engine)() as session:
        counts = repo.status_counts(session)
        report = {
            "database": settings.safe_database_url(),
            "model_dir": str(settings.model_dir),
            "counts": counts,
            "total": sum(counts.values()),
            "review_queue": repo.review_queue_size(session),
            "claimed_now": repo.claimed_count(session, utc_now()),
            "recent_runs": repo.recent_runs(session, args.runs),
        }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    print(f"database: {report['database']}")
    print(f"photos:   {report['total']}")
    for status, n in counts.items():
        print(f"  {status:<13}{n:>8}")
    print(f"review queue: {report['review_queue']}   claimed right now: {report['claimed_now']}")
    print("recent runs:")
    runs: list[dict[str, Any]] = report["recent_runs"]  # type: ignore[assignment]
    if not runs:
        print("  (none yet)")
    for r in runs:
        end = r["finished_at"].strftime("%H:%M:%S") if r["finished_at"] else "-"
        print(
            f"  #{r['id']:<4} {r['started_at']:%Y-%m-%d %H:%M:%S}..{end} {r['status']:<11} "
            f"{r['command']:<9} labelled {r['labelled']}, review {r['needs_review']}, "
            f"failed {r['failed']}, new {r['discovered']}  model {r['model_version']}"
        )
    return EXIT_OK


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import text

    from labeler import migrate
    from labeler.classifier import Classifier
    from labeler.db import make_engine
    from labeler.source import reflect_source

    ok = True

    def step(name: str, fn: Callable[[], str]) -> None:
        nonlocal ok
        try:
            detail = fn()
            print(f"ok    {name}: {detail}")
        except Exception as exc:
            ok = False
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            print(f"FAIL  {name}: {reason[0] if reason else type(exc).__name__}")

    engine = make_engine(settings)

    def database() -> str:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return settings.safe_database_url()

    def migrations() -> str:
        current, head = migrate.current_revision(engine), migrate.head_revision(engine)
        if current != head:
            raise RuntimeError(
                f"schema is at {current or 'nothing'}, code expects {head}: "
                "run `labeler db upgrade`"
            )
        return f"at head ({head})"

    def source() -> str:
        with engine.connect() as conn:
            src = reflect_source(conn, settings)
        return f"{src.table.fullname}({src.id_column}, {src.image_column})"

    def model() -> str:
        return Classifier.load(settings.model_dir).artifact.describe()

    step("database reachable", database)
    step("migrations", migrations)
    step("photo source", source)
    step("model", model)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_classify(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.app import loader_config
    from labeler.classifier import Classifier
    from labeler.images import ImageError, decode_image

    classifier = Classifier.load(args.model or settings.model_dir)
    print(f"# {classifier.artifact.describe()}")
    loader = loader_config(settings)
    status = EXIT_OK
    for name in args.photos:
        path = Path(name)
        try:
            if path.stat().st_size > loader.max_bytes:
                raise ImageError(f"file is over the {loader.max_bytes} byte limit")
            image = decode_image(path.read_bytes(), loader.max_pixels)
        except (OSError, ImageError) as exc:
            print(f"{name}: error: {exc}")
            status = EXIT_FAILED
            continue
        prediction = classifier.classify_images([image], k=args.top)[0]
        ranked = ", ".join(f"{label} {p:.1%}" for label, p in prediction.candidates)
        print(f"{name}: {ranked}")
    return status


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from labeler import migrate
    from labeler.db import make_engine

    engine = make_engine(settings)
    if args.action == "upgrade":
        migrate.upgrade(engine, args.revision or "head")
        print(f"database schema at {migrate.current_revision(engine)}")
    elif args.action == "downgrade":
        migrate.downgrade(engine, args.revision or "base")
        print(f"database schema at {migrate.current_revision(engine) or 'nothing'}")
    elif args.action == "current":
        print(migrate.current_revision(engine) or "nothing (run `labeler db upgrade`)")
    elif args.action == "check":
        migrate.check(engine)
        print("schema matches the code")
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.demo import run_demo

    return run_demo(Path(args.dir), photos=args.photos, reset=not args.keep)


# --- parsing ---------------------------------------------------------------------------------


def _date(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-11-01") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeler",
        description="Label dog breeds in an animal-protection association's photo database. "
        "Configuration comes from LABELER_* environment variables or .env (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run-once", help="label every pending photo now, then exit")
    p.add_argument("--max-rows", type=int, help="stop after this many photos")
    p.set_defaults(func=cmd_run_once)

    p = sub.add_parser("schedule", help="run passes on LABELER_SCHEDULE_CRON until stopped")
    p.add_argument("--now", action="store_true", help="also run a pass right away")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("relabel", help="send chosen rows back to pending (never reviewed rows)")
    p.add_argument(
        "--not-current-model",
        action="store_true",
        help="rows labelled by any model version other than the configured one",
    )
    p.add_argument(
        "--other-model-version",
        metavar="VERSION",
        help="rows labelled by any model version other than VERSION",
    )
    p.add_argument("--ids", action="append", metavar="ID[,ID...]", help="these photo ids")
    p.add_argument("--failed", action="store_true", help="rows that failed")
    p.add_argument("--before", type=_date, metavar="DATE", help="rows labelled before DATE")
    p.add_argument("--all", action="store_true", help="every row without a staff decision")
    p.add_argument("--run", action="store_true", help="run a pass right after")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("status", help="counts per status, review queue, recent runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=int, default=5, help="how many recent runs to list")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", help="database, migrations, source and model; exit 1 if any fails")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("classify", help="top breeds for photo files")
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--model", type=Path, help="artifact directory (default LABELER_MODEL_DIR)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("db", help="database schema: upgrade, downgrade, current, check")
    p.add_argument("action", choices=("upgrade", "downgrade", "current", "check"))
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("demo", help="build a sample shelter database, label it, show the result")
    p.add_argument("--dir", default="demo", help="where the demo database goes (default demo/)")
    p.add_argument(
        "--photos",
        type=Path,
        help="folder of sample photos (default: ../shared "
        "sample if present, else generated pictures)",
    )
    p.add_argument("--keep", action="store_true", help="keep an existing demo database")
    p.set_defaults(func=cmd_demo)
    return parser


def _stop_on_signals(stop: threading.Event) -> None:
    import signal

    def handler(signum: int, _frame: Any) -> None:
        log.info(
            "%s received: finishing the current batch, then exiting", signal.Signals(signum).name
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_tensorflow()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"labeler: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = secrets_of(settings)
    setup_logging(settings.log_level, secrets)
    try:
        return int(args.func(settings, args))
    except (ConfigError, ArtifactError, SourceError) as exc:
        print(f"labeler: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            reason = str(exc.orig).strip().splitlines()
            message = f"database error: {reason[0] if reason else type(exc.orig).__name__}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        print(f"labeler: {redact(message, secrets)}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
