"""labeler_run: a pass's record, its counters and errors, runs left behind by a killed
pass, and the health ping. Functions take a session and never commit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    func,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from labeler.core.domain import RunStatus
from labeler.core.textsafe import storable
from labeler.store.schema import (
    photo,
    run,
)


def start_run(
    session: Session, *, command: str, worker: str, model_version: str, now: datetime
) -> int:
    result = session.execute(
        run.insert().values(
            command=command, worker=worker, model_version=model_version, started_at=now
        )
    )
    key = result.inserted_primary_key  # type: ignore[attr-defined]
    assert key is not None
    return int(key[0])


def add_run_counts(
    session: Session, run_id: int, *, discovered: int = 0, released: int = 0
) -> None:
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(discovered=run.c.discovered + discovered, released=run.c.released + released)
    )


def add_run_error(session: Session, run_id: int, message: str) -> None:
    """Note a problem on the run while it goes on (kept when the run finishes)."""
    before = session.scalar(select(run.c.errors).where(run.c.id == run_id))
    text = "\n".join(t for t in (before, message) if t)
    session.execute(update(run).where(run.c.id == run_id).values(errors=storable(text, 4000)))


def finish_run(
    session: Session, run_id: int, *, status: str, now: datetime, errors: str | None
) -> dict[str, Any]:
    noted = session.scalar(select(run.c.errors).where(run.c.id == run_id))  # add_run_error
    if noted == ABANDONED_NOTE:  # a slow pass taken for dead: its own end replaces the note
        noted = None
    text = "\n".join(t for t in (noted, errors) if t)
    session.execute(
        update(run)
        .where(run.c.id == run_id)
        .values(status=status, finished_at=now, errors=storable(text, 4000) if text else None)
    )
    return dict(session.execute(select(run).where(run.c.id == run_id)).mappings().one())


def recent_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    rows = session.execute(select(run).order_by(run.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


ABANDONED = RunStatus.ABANDONED.value


ABANDONED_NOTE = (
    "abandoned: the pass stopped without recording its end (killed, or the machine went "
    "down); the counts are what it had saved"
)


def abandon_dead_runs(session: Session, *, now: datetime, claim_ttl: timedelta) -> list[int]:
    """Mark ``running`` runs whose process is gone as ``abandoned``; return their ids.

    A live pass always holds claims (``<host>:<pid>:<token>``; ``<host>:<pid>`` starts the
    run's ``worker``, which may go on with a space and the runtime) that it renews batch by
    batch, or has saved a result within one claim TTL. So a run is taken for dead when none of
    its worker's claims is still valid and neither its start nor its last saved result is more
    recent than ``now - claim_ttl``. Its counts stay as saved batch by batch; ``finished_at``
    becomes its last sign of life. Should a very slow live pass be caught by mistake, its own
    ``finish_run`` later overwrites the status, so nothing is lost.
    """
    horizon = now - claim_ttl
    candidates = session.execute(
        select(run.c.id, run.c.worker, run.c.started_at).where(
            run.c.status == RunStatus.RUNNING.value, run.c.started_at < horizon
        )
    ).all()
    abandoned: list[int] = []
    for run_id, worker, started_at in candidates:
        claim_prefix = str(worker).split(" ", 1)[0] + ":"
        live_claims = session.scalar(
            select(func.count()).where(
                photo.c.claimed_by.startswith(claim_prefix, autoescape=True),
                photo.c.claim_expires_at >= now,
            )
        )
        if live_claims:
            continue
        last_saved = session.scalar(
            select(func.max(photo.c.updated_at)).where(photo.c.run_id == run_id)
        )
        last_seen = max(started_at, last_saved) if last_saved is not None else started_at
        if last_seen >= horizon:
            continue
        result = session.execute(
            update(run)
            .where(run.c.id == run_id, run.c.status == RunStatus.RUNNING.value)
            .values(status=ABANDONED, finished_at=last_seen, errors=ABANDONED_NOTE)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            abandoned.append(int(run_id))
    return abandoned


def ping(session: Session) -> None:
    """The cheapest statement that proves the database answers."""
    session.execute(select(literal(1)))
