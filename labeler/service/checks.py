"""``labeler check``: small named checks, each returning what it found or raising why not.

:func:`run_checks` runs them in order and yields one :class:`CheckResult` per check; the CLI
prints them (redacted) as they come. A check that needs the model reuses the one the "model"
check loaded, through :class:`CheckContext`. Every write a check tries happens inside a
transaction that is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from labeler.config.settings import Settings
from labeler.core.textsafe import error_line
from labeler.model.artifact import load_artifact
from labeler.service.app import (
    check_filter_matches,
    check_photo_root,
    load_classifier,
    thresholds_in_force,
)
from labeler.shelter.breedmap import breed_table_problems, load_breed_map
from labeler.shelter.source import reflect_source
from labeler.shelter.target import reflect_target
from labeler.store import migrate, runs, shelter_sql
from labeler.store.check_sql import check_source_rows, check_target
from labeler.store.engine import make_engine, session_factory, short_error


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass
class CheckContext:
    settings: Settings
    engine: Any
    loaded: list[Any] = field(default_factory=list)  # the classifier, once "model" ran


def database(ctx: CheckContext) -> str:
    with session_factory(ctx.engine)() as session:
        runs.ping(session)
    return ctx.settings.safe_database_url()


def migrations(ctx: CheckContext) -> str:
    current, head = migrate.current_revision(ctx.engine), migrate.head_revision(ctx.engine)
    if current != head:
        raise RuntimeError(
            f"schema is at {current or 'nothing'}, code expects {head}: run `labeler db upgrade`"
        )
    return f"at head ({head})"


def photo_source(ctx: CheckContext) -> str:
    src = _source(ctx)
    return f"{src.table.fullname}({src.id_column}, {src.image_column})"


def source_filter(ctx: CheckContext) -> str:
    return check_filter_matches(ctx.engine, _source(ctx))


def breed_map(ctx: CheckContext) -> str:
    """The map loads and agrees with the shelter's own breed table (LABELER_BREED_TABLE)."""

    settings = ctx.settings
    if settings.breed_map is None:
        return "not set (no write-back to the shelter's records)"
    bmap = load_breed_map(settings.breed_map)
    with Session(ctx.engine) as session:
        problems = breed_table_problems(session, settings, bmap)
    if problems:
        raise RuntimeError(
            f"{len(problems)} mapped labels do not match table {settings.breed_table}: "
            + "; ".join(problems[:5])
            + ("; ..." if len(problems) > 5 else "")
        )
    against = (
        f"matches table {settings.breed_table}"
        if settings.breed_table
        else "not compared with a breed table (LABELER_BREED_TABLE is not set)"
    )
    return f"{len(bmap.mapped_labels)} labels mapped to {', '.join(bmap.columns)}; {against}"


def photo_root(ctx: CheckContext) -> str:
    return check_photo_root(ctx.settings)


def model(ctx: CheckContext) -> str:
    ctx.loaded.append(load_classifier(ctx.settings))
    return str(ctx.loaded[0].artifact.describe())


def inference_runtime(ctx: CheckContext) -> str:
    if not ctx.loaded:
        raise RuntimeError("no model loaded")
    return str(ctx.loaded[0].runtime.description)


def decision_threshold(ctx: CheckContext) -> str:
    return threshold_line(threshold_in_force(ctx.settings, ctx.engine))


def source_rows(ctx: CheckContext) -> str:
    """The filter selects rows, and not only by letter case."""

    src = _source(ctx)
    with session_factory(ctx.engine)() as session:
        return check_source_rows(session, src)


def write_back(ctx: CheckContext) -> str:
    """The breed map fits the target and one write-back runs, inside a transaction that is
    rolled back."""

    with ctx.engine.connect() as conn:
        src = reflect_source(conn, ctx.settings)
        target = reflect_target(conn, ctx.settings)
    per_photo = ""
    if src.writeback_breed_column:
        per_photo = _source_write_back(src, ctx.engine)
    if target is None:
        return per_photo or "not configured (LABELER_TARGET_TABLE is not set)"
    with ctx.engine.connect() as conn:
        transaction = conn.begin()
        try:
            return check_target(Session(bind=conn), src, target)
        finally:
            transaction.rollback()


def _source_write_back(src: Any, engine: Any) -> str:
    """The per-photo write-back (LABELER_WRITEBACK_BREED_COLUMN) runs on one source row, inside
    a transaction that is rolled back: a view that cannot be updated or a missing grant shows
    here, not as a failure of every row."""

    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            tried = shelter_sql.try_source_write_back(Session(bind=conn), src)
        except Exception as exc:
            raise RuntimeError(
                f"LABELER_WRITEBACK_BREED_COLUMN={src.writeback_breed_column!r}: the write-back "
                f"into {src.table.name} fails: {short_error(exc)}"
            ) from exc
        finally:
            transaction.rollback()
    if tried is None:
        return "per-photo write-back configured (no source row to try it on)"
    return f"per-photo write-back into {src.table.name} works (tried on id {tried}, rolled back)"


def _source(ctx: CheckContext) -> Any:
    with ctx.engine.connect() as conn:
        return reflect_source(conn, ctx.settings)


Check = Callable[[CheckContext], str]
# In the order they run; a check whose setting is unset is left out (see run_checks).
CHECKS: tuple[tuple[str, Check], ...] = (
    ("database reachable", database),
    ("migrations", migrations),
    ("photo source", photo_source),
    ("source filter", source_filter),
    ("breed map", breed_map),
    ("photo root", photo_root),
    ("model", model),
    ("inference runtime", inference_runtime),
    ("decision threshold", decision_threshold),
    ("source rows", source_rows),
    ("write-back", write_back),
)


def run_checks(settings: Settings) -> Iterator[CheckResult]:
    """Every check, in order, each as it finishes; none stops the others."""

    ctx = CheckContext(settings, make_engine(settings))
    try:
        for name, check in CHECKS:
            if check is source_filter and not settings.source_filter_column:
                continue
            try:
                yield CheckResult(name, True, check(ctx))
            except Exception as exc:
                yield CheckResult(name, False, error_line(exc))
    finally:
        ctx.engine.dispose()


# --- the threshold in force, shared with `labeler status` ----------------------------------


def threshold_in_force(settings: Settings, engine: Any, session: Any = None) -> dict[str, Any]:
    artifact = load_artifact(settings.model_dir)  # metadata only, no network
    if session is None:
        with session_factory(engine)() as own:
            t = thresholds_in_force(settings, own, artifact)
    else:
        t = thresholds_in_force(settings, session, artifact)
    return {
        "model_version": artifact.version,
        "review_threshold": t.review_threshold,
        "review_margin": t.review_margin,
        "source": t.source,
        "audit_share": t.audit_share,
    }


def threshold_line(t: dict[str, Any]) -> str:
    audits = f"{t['audit_share']:.1%} of confident results" if t["audit_share"] else "off"
    return (
        f"review below {t['review_threshold']:.4f} ({t['source']}), margin "
        f"{t['review_margin']:.2f}, model {t['model_version']}; audits {audits}"
    )
