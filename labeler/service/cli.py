"""The `labeler` command: parses arguments, loads the settings, calls the modules that do the
work and prints their results. Status and `check` reports are formatted here; no SQL, no
labelling logic. Each command imports the modules it needs inside its own function, so that
``labeler --help`` and ``labeler health`` start without loading the model runtimes, the
database layer or numpy; the modules it calls import at the top."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from labeler import __version__
from labeler.config.logging_setup import setup_logging
from labeler.config.redact import redact, secrets_of
from labeler.config.settings import ConfigError, Settings, load_settings
from labeler.core.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from labeler.core.textsafe import error_line
from labeler.model.artifact import ArtifactError
from labeler.shelter.source import SourceError

log = logging.getLogger("labeler")


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# --- commands ---------------------------------------------------------------------------------


def cmd_run_once(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.service.app import Service
    from labeler.service.shutdown import StopOnSignals

    if args.max_rows is not None:
        settings = settings.model_copy(update={"max_rows_per_pass": args.max_rows})
    service = Service.build(settings)
    log.info("using %s", service.classifier.artifact.describe())
    with StopOnSignals(what="finishing the current batch, then exiting") as signals:
        summary = service.run_pass(command="run-once", stop=signals.stop)
    print(summary.line())
    return signals.exit_code()


def cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.service.app import Service
    from labeler.service.scheduler import PassScheduler

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
    return scheduler.run()


def cmd_relabel(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.store import results
    from labeler.store.engine import make_engine, session_factory, utc_now

    other_version = args.other_model_version
    if args.not_current_model:
        from labeler.model.artifact import load_artifact

        other_version = load_artifact(settings.model_dir).version
    ids = tuple(i.strip() for chunk in args.ids or [] for i in chunk.split(",") if i.strip())
    selection = results.RelabelSelection(
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
        count = results.relabel(session, selection, utc_now())
    print(f"{count} photos marked for relabelling (rows reviewed by staff are never touched)")
    if args.run and count:
        return cmd_run_once(settings, argparse.Namespace(max_rows=None))
    return EXIT_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.store import claims, reports, runs
    from labeler.store.engine import make_engine, session_factory, utc_now

    engine = make_engine(settings)
    with session_factory(engine)() as session:
        counts = reports.status_counts(session)
        report = {
            "database": settings.safe_database_url(),
            "model_dir": str(settings.model_dir),
            "counts": counts,
            "total": sum(counts.values()),
            "review_queue": reports.review_queue_size(session),
            "review_detail": reports.review_breakdown(session),
            "claimed_now": claims.claimed_count(session, utc_now()),
            "recent_runs": runs.recent_runs(session, args.runs),
            "animals": reports.group_status_counts(session),  # one row per animal
            **(reports.waiting_animals(session) if settings.source_group_column else {}),
            **_trust_status(settings, session),
        }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    print(f"database: {report['database']}")
    print(f"photos:   {report['total']}")
    for status, n in counts.items():
        print(f"  {status:<13}{n:>8}")
    print(
        f"review queue: {_queue_line(report['review_queue'], report['review_detail'])}   "
        f"claimed right now: {report['claimed_now']}"
    )
    if report["animals"]:
        print("animals:  " + ", ".join(f"{n} {s}" for s, n in sorted(report["animals"].items())))
    for key, what in (
        ("writes_waiting", "animals whose answer waits to be written"),
        ("refused_reviews", "reviewed breeds labeler could not use (still in the queue)"),
    ):
        waiting = report.get(key) or {}
        if waiting.get("count"):
            print(f"  {what}: {waiting['count']}, e.g. {str(waiting['example'])[:200]}")
    _print_trust_status(report)
    print("recent runs:")
    recent: list[dict[str, Any]] = report["recent_runs"]
    if not recent:
        print("  (none yet)")
    for r in recent:
        end = r["finished_at"].strftime("%H:%M:%S") if r["finished_at"] else "-"
        print(
            f"  #{r['id']:<4} {r['started_at']:%Y-%m-%d %H:%M:%S}..{end} {r['status']:<11} "
            f"{r['command']:<9} labelled {r['labelled']}, review {r['needs_review']}, "
            f"failed {r['failed']}, new {r['discovered']}  model {r['model_version']}"
        )
        for line in str(r["errors"] or "").splitlines()[:5]:  # e.g. ids too long
            print(f"        {line[:300]}")
    return EXIT_OK


def _queue_line(total: int, detail: dict[str, int]) -> str:
    """The queue's size, with what it is made of and the animals in review it leaves out, so
    the animal counts printed below add up."""
    parts = []
    if detail["animals"]:
        kinds = [
            f"{n} {what}"
            for n, what in (
                (detail["audits"], "audits"),
                (detail["refused"], "with a reviewed breed labeler refused"),
            )
            if n
        ]
        parts.append(f"{detail['animals']} animals" + (f" ({', '.join(kinds)})" if kinds else ""))
    if detail["photos"]:
        parts.append(f"{detail['photos']} photos without an animal")
    line = f"{total}" + (f": {' + '.join(parts)}" if parts else "")
    if detail["reviewed_waiting"]:
        line += (
            f"; not in it: {detail['reviewed_waiting']} animals in review that staff gave a "
            "reviewed_breed, written at the next pass"
        )
    return line


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.service.checks import run_checks

    secrets = secrets_of(settings)
    ok = True
    for result in run_checks(settings):
        ok = ok and result.ok
        mark = "ok   " if result.ok else "FAIL "
        print(redact(f"{mark} {result.name}: {result.detail}", secrets))
    return EXIT_OK if ok else EXIT_FAILED


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    """The container health check: cheap enough for every few minutes (no model load)."""
    from labeler.service.app import health

    try:
        print(health(settings))
    except Exception as exc:
        from labeler.store.engine import short_error

        print(redact(f"unhealthy: {short_error(exc)}", secrets_of(settings)))
        return EXIT_FAILED
    return EXIT_OK


def cmd_classify(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.photos.decoding import ImageError, decode_image
    from labeler.photos.files import read_photo_file
    from labeler.service.app import load_classifier, loader_config

    classifier = load_classifier(settings, args.model)
    print(f"# {classifier.artifact.describe()}; runtime {classifier.runtime.description}")
    loader = loader_config(settings)
    status = EXIT_OK
    for name in args.photos:
        try:
            # Regular files only: a FIFO or a device would hang or read without end.
            data = read_photo_file(name, loader.max_bytes)
            image = decode_image(data, loader.decode_limits)
        except (OSError, ImageError) as exc:
            print(f"{name}: error: {exc}")
            status = EXIT_FAILED
            continue
        prediction = classifier.classify_images([image], k=args.top)[0]
        ranked = ", ".join(f"{label} {p:.1%}" for label, p in prediction.candidates)
        print(f"{name}: {ranked}")
    return status


def cmd_reset_source(settings: Settings, args: argparse.Namespace) -> int:
    """Shelter fit: after LABELER_SOURCE_TABLE / _ID_COLUMN changed on purpose."""
    from labeler.shelter.source import reflect_source
    from labeler.store import discovery
    from labeler.store.engine import make_engine, session_factory

    engine = make_engine(settings)
    with engine.connect() as conn:
        name = reflect_source(conn, settings).name
    with session_factory(engine).begin() as session:
        other = discovery.other_source(session, name)
        if other is None:
            print(f"nothing to reset: every photo row was read from {name}")
            return EXIT_OK
        if not args.yes:
            print(
                f"labeler_photo holds rows read from {other}; the settings name {name}. "
                "Run again with --yes to forget those rows (per-animal results, written "
                "values and staff decisions in labeler_group stay).",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        count = discovery.reset_source(session, name)
    print(f"{count} photo rows of the previous source forgotten; the next pass reads {name}")
    return EXIT_OK


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.store import migrate
    from labeler.store.engine import make_engine

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
    from labeler.demo.runner import run_demo

    return run_demo(Path(args.dir), photos=args.photos, reset=not args.keep)


# --- thresholds in force, measured precision, calibration -------------------------------------


def _trust_status(settings: Settings, session: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from labeler.decide.thresholds import group_version_counts, version_quality
    from labeler.service.checks import threshold_in_force
    from labeler.store import evidence

    try:
        threshold: dict[str, Any] = threshold_in_force(settings, None, session)
    except ArtifactError as exc:
        threshold = {"error": str(exc)}
    quality = [version_quality(c) for c in evidence.quality_counts(session)]
    animals = [version_quality(c) for c in group_version_counts(_group_verdicts(settings, session))]
    return {
        "threshold": threshold,
        "quality": [
            asdict(q) | {"precision_at_most": q.precision_at_most, "summary": q.lines()}
            for q in quality
        ],
        "animal_quality": [
            asdict(q)
            | {
                "precision_at_most": q.precision_at_most,
                "summary": [line.replace(" rows", " animals") for line in q.lines()],
            }
            for q in animals
        ],
    }


def _breed_lookup(settings: Settings) -> Any:
    """The breed map's label -> values, to compare breeds staff set in their own screens with
    the model's answer; None without a usable map."""
    from labeler.shelter.breedmap import BreedMapError, load_breed_map

    if settings.breed_map is None:
        return None
    try:
        return load_breed_map(settings.breed_map).lookup
    except (BreedMapError, OSError):
        return None  # `check` reports a broken map; reviewed breeds still count


def _group_verdicts(settings: Settings, session: Any) -> list[Any]:
    from labeler.store.staff import group_verdicts

    return group_verdicts(session, _breed_lookup(settings))


def _print_trust_status(report: dict[str, Any]) -> None:
    from labeler.service.checks import threshold_line

    threshold = report["threshold"]
    if "error" in threshold:
        print(f"decision: unknown ({threshold['error']})")
    else:
        print(f"decision: {threshold_line(threshold)}")
    for quality in report["quality"]:
        for line in quality["summary"]:
            print(line)
    for quality in report.get("animal_quality", []):
        for line in quality["summary"]:
            print("per animal: " + line.strip() if not line.startswith(" ") else line)


def _cmd_adapt(settings: Settings, args: argparse.Namespace) -> int:
    from labeler.service.adapting import cmd_adapt

    return cmd_adapt(settings, args)


def cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from labeler.decide.decision import CalibratedThreshold
    from labeler.decide.thresholds import CalibrationRefused, calibrate, decided_row
    from labeler.model.artifact import load_artifact
    from labeler.service.app import thresholds_in_force
    from labeler.store import evidence
    from labeler.store.engine import make_engine, session_factory, utc_now
    from labeler.store.staff import animal_decided_rows

    artifact = load_artifact(settings.model_dir)
    version = args.model_version or artifact.version
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        in_force = thresholds_in_force(settings, session, artifact)
        # One answer per animal: the threshold decides animals, and staff decide animals (on
        # labeler's side or in their own screens), so animals are the evidence.
        if settings.source_group_column:
            rows = animal_decided_rows(session, _breed_lookup(settings), version)
        else:
            rows = evidence.decided_rows(session, version)
        stored = evidence.calibrated_threshold(session, version)
    current = in_force.review_threshold if version == artifact.version else None
    if current is None and stored is not None:
        current = stored.review_threshold
    never_auto = artifact.never_auto_labels
    usable_rows = [r for r in (decided_row(**row, reject_labels=never_auto) for row in rows) if r]
    try:
        result = calibrate(
            usable_rows,
            args.target_precision,
            margin=in_force.review_margin,
            current_threshold=current,
        )
    except CalibrationRefused as exc:
        print(f"calibrate: no threshold for model {version}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"model {version}"
        + (" (one answer per animal: animals)" if settings.source_group_column else "")
    )
    print(result.evidence(current))
    if settings.review_threshold is not None:
        print(
            "note: LABELER_REVIEW_THRESHOLD is set and wins over any calibrated threshold; "
            "unset it for a calibrated one to take effect"
        )
    if not args.apply:
        print("not applied: run again with --apply to store this threshold for the model version")
        return EXIT_OK
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = None
    value = CalibratedThreshold(
        model_version=version,
        review_threshold=result.threshold,
        review_margin=result.margin,
        target_precision=result.target_precision,
        rows_used=result.rows_used,
        created_at=utc_now(),
        precision_lower=result.point.precision.low,
    )
    with session_factory(engine).begin() as session:
        evidence.store_calibrated_threshold(
            session,
            value,
            coverage=result.point.coverage,
            evidence=result.evidence(current),
            created_by=user,
        )
    print(f"applied: passes with model {version} now review below {result.threshold:.4f}")
    return EXIT_OK


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be between 0 and 1, like 0.95")
    return number


# --- parsing ----------------------------------------------------------------------------------


def _date(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2026-11-01") from exc


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeler",
        description="Label dog breeds in an animal-protection association's photo database. "
        "Configuration comes from LABELER_* environment variables or .env (see README).",
    )
    parser.add_argument("--version", action="version", version=f"labeler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run-once", help="label every pending photo now, then exit")
    p.add_argument(
        "--max-rows", type=_positive_int, metavar="N", help="stop after N photos (N >= 1)"
    )
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
    p.add_argument("--runs", type=_positive_int, default=5, help="how many recent runs to list")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "check", help="database, migrations, source, photo root and model; exit 1 if any fails"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "calibrate",
        help="learn the review threshold from staff reviews and audits (stored only with --apply)",
    )
    p.add_argument("--target-precision", type=_fraction, default=0.95, metavar="P")
    p.add_argument(
        "--model-version", metavar="VERSION", help="default: the configured model's version"
    )
    p.add_argument("--apply", action="store_true", help="store the threshold for the version")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "adapt",
        help="learn the shelter's breed frequencies from staff decisions, refit the head "
        "on decided photos' records, and send labels that stand for a breed outside the model "
        "(look-alikes) to review; a new model version only with --apply",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=20.0,
        metavar="N",
        help="pseudo-decisions spread over all breeds (smoothing towards uniform)",
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="learn the breed frequencies only; keep the head as it is",
    )
    p.add_argument("--apply", action="store_true", help="write the adapted model to --output")
    p.add_argument("--output", type=Path, metavar="DIR", help="the new model's folder")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser(
        "health", help="container health check: database reachable, schema at head; no model"
    )
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("classify", help="top breeds for photo files")
    p.add_argument("photos", nargs="+", metavar="PHOTO")
    p.add_argument("--top", type=_positive_int, default=3)
    p.add_argument("--model", type=Path, help="artifact directory (default LABELER_MODEL_DIR)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "reset-source",
        help="forget the photo rows read from a previous LABELER_SOURCE_TABLE",
    )
    p.add_argument("--yes", action="store_true", help="really delete them")
    p.set_defaults(func=cmd_reset_source)

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_tensorflow()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"labeler: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    secrets = secrets_of(settings)
    setup_logging(settings.log_level, secrets, settings.log_format)
    try:
        return int(args.func(settings, args))
    except (ConfigError, ArtifactError, SourceError) as exc:
        print(f"labeler: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C before (or after) the stop handlers were in place
        return EXIT_INTERRUPTED
    except Exception as exc:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            message = f"database error: {error_line(exc)}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        print(f"labeler: {redact(message, secrets)}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
