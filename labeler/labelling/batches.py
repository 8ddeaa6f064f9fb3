"""The per-batch stages of a pass, as functions: read the claimed rows (isolating rows the
source cannot read), decode and preprocess the photos, classify (isolating photos the model
fails on), and turn each answer into an :class:`~labeler.core.domain.Outcome`.

:mod:`labeler.labelling.passes` calls them in order; they hold no state and touch no database."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from labeler.core.domain import (
    Classified,
    ClassifierFailure,
    ClassifierResult,
    Outcome,
    PhotoStatus,
    Prediction,
    SourceRow,
)
from labeler.decide.audit import is_audit
from labeler.decide.decision import Thresholds, decide_with_audit
from labeler.decide.grouping import scores_json
from labeler.model.preprocessing import PreprocessingConfig, finish_batch, preprocess_image
from labeler.photos.decoding import Cancelled, ImageError
from labeler.photos.fetching import LoaderConfig, load_photo, reference_of
from labeler.store.engine import short_error
from labeler.store.seam import Refused

log = logging.getLogger("labeler.pass")

GONE_REASON = "the source row vanished or no longer matches the filter"


class Predicts(Protocol):
    def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]: ...


@dataclass
class PreparedBatch:
    token: str
    ids: list[str] = field(default_factory=list)  # rows that reached the classifier
    inputs: np.ndarray | None = None
    refs: dict[str, str | None] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)
    rows: dict[str, SourceRow] = field(default_factory=dict)  # the source rows as read
    fingerprints: dict[str, str] = field(default_factory=dict)  # of the bytes classified


def read_rows(
    fetch: Callable[[list[str]], dict[str, SourceRow]], ids: list[str]
) -> tuple[dict[str, SourceRow], dict[str, str]]:
    """The source rows, and the reasons of rows that cannot be read: a view that raises on
    one row is narrowed down (halving) to that row, and only it fails; a row the source
    refused to send (its image over the size limit) fails with the source row's error. An
    error of the source itself (SourceUnreadable) is no row's fault and is not narrowed: it
    stops the pass."""
    rows, bad = _read_narrowing(fetch, ids)
    for photo_id, row in rows.items():
        if row.error and photo_id not in bad:
            bad[photo_id] = row.error
    return rows, bad


def _read_narrowing(
    fetch: Callable[[list[str]], dict[str, SourceRow]], ids: list[str]
) -> tuple[dict[str, SourceRow], dict[str, str]]:
    try:
        return fetch(ids), {}
    except Refused as exc:
        if len(ids) == 1:
            return {}, {ids[0]: f"the source cannot read this row: {exc}"}
    half = len(ids) // 2
    rows_a, bad_a = _read_narrowing(fetch, ids[:half])
    rows_b, bad_b = _read_narrowing(fetch, ids[half:])
    return {**rows_a, **rows_b}, {**bad_a, **bad_b}


# (model input or None, photo reference, failure reason or None, fingerprint or None)
_Prepared = tuple["np.ndarray | None", "str | None", "str | None", "str | None"]


def prepare_batch(
    token: str,
    ids: Sequence[str],
    rows: dict[str, SourceRow],
    unreadable: dict[str, str],
    *,
    loader: LoaderConfig,
    preprocessing: PreprocessingConfig,
    cancel: Callable[[], bool],
    pool: Executor | None = None,
) -> PreparedBatch:
    """Fetch, decode and preprocess the claimed photos; a photo that cannot be used fails alone.

    With a ``pool``, photos are prepared on its threads (Pillow's decoders and resampling and
    network reads release the GIL, so they run side by side); results keep the claim order.
    When ``cancel`` turns true (shutting down) the batch ends where it is, to be released.
    """
    batch = PreparedBatch(token=token, rows=rows)
    todo: list[tuple[str, Any]] = []
    for photo_id in ids:
        if photo_id in unreadable:
            batch.failures.append(Outcome(photo_id, PhotoStatus.FAILED, error=unreadable[photo_id]))
        elif photo_id not in rows:
            batch.failures.append(Outcome(photo_id, PhotoStatus.GONE, error=GONE_REASON))
        else:
            todo.append((photo_id, rows[photo_id].image))

    def one(value: Any) -> _Prepared:
        return _prepare_one(value, loader, preprocessing, cancel)

    futures: list[Future[_Prepared]] = []
    images: list[np.ndarray] = []
    try:
        if pool is None or len(todo) < 2:
            results: Iterator[_Prepared] = (one(value) for _, value in todo)
        else:
            futures.extend(pool.submit(one, value) for _, value in todo)
            results = (future.result() for future in futures)
        for (photo_id, _), (image, ref, error, print_) in zip(todo, results, strict=False):
            if error is not None:
                batch.failures.append(
                    Outcome(photo_id, PhotoStatus.FAILED, error=error, photo_ref=ref)
                )
                continue
            assert image is not None
            images.append(image)
            batch.ids.append(photo_id)
            batch.refs[photo_id] = ref
            if print_ is not None:
                batch.fingerprints[photo_id] = print_
    except Cancelled:
        pass  # the rest of the batch stays claimed, to be released
    finally:
        for future in futures:
            future.cancel()  # those not started; started ones see `cancel` and stop
    if images:
        batch.inputs = finish_batch(np.stack(images), preprocessing)
    return batch


def _prepare_one(
    value: Any,
    loader: LoaderConfig,
    preprocessing: PreprocessingConfig,
    cancel: Callable[[], bool],
) -> _Prepared:
    """One photo to the model's input, or the reason it cannot be used. Raises Cancelled."""
    ref: str | None = None
    try:
        image, kind, print_ = load_photo(
            value, loader, target_size=preprocessing.image_size, cancel=cancel
        )
        ref = reference_of(value, kind)
        return preprocess_image(image, preprocessing), ref, None, print_
    except Cancelled:
        raise
    except ImageError as exc:
        return None, ref, str(exc), None
    except Exception as exc:  # one photo must never stop the batch
        return None, None, _photo_error(exc), None


def _photo_error(exc: Exception) -> str:
    if isinstance(exc, MemoryError):
        return "photo is too large to process in memory"
    return f"cannot process photo: {type(exc).__name__}: {exc}"


def classify(classifier: Predicts, inputs: np.ndarray, k: int = 3) -> list[ClassifierResult]:
    """Predict a batch; if the model fails on it, isolate the photos it fails on."""
    try:
        return [Classified(p) for p in classifier.predict(inputs, k=k)]
    except Exception as exc:
        log.warning("classifier failed on a batch (%s); retrying photo by photo", short_error(exc))
    results: list[ClassifierResult] = []
    for i in range(inputs.shape[0]):
        try:
            results.append(Classified(classifier.predict(inputs[i : i + 1], k=k)[0]))
        except Exception as exc:
            reason = f"classifier error: {type(exc).__name__}: {short_error(exc)}"
            results.append(ClassifierFailure(reason))
    return results


def outcome_of(
    photo_id: str,
    result: ClassifierResult,
    ref: str | None,
    thresholds: Thresholds,
    model_version: str,
) -> Outcome:
    """The decision for one classified photo (an audit share of confident ones go to staff)."""
    if isinstance(result, ClassifierFailure):
        return Outcome(photo_id, PhotoStatus.FAILED, error=result.reason, photo_ref=ref)
    audit = is_audit(photo_id, model_version, thresholds.audit_share)
    decision = decide_with_audit(result.prediction, thresholds, audit)
    return Outcome(
        photo_id, decision.status, result.prediction, decision.reason, ref, decision.audit
    )


def with_group(outcome: Outcome, row: SourceRow | None) -> Outcome:
    """Shelter fit: the outcome with its animal, reviewer context and score vector."""
    scores = None
    if outcome.prediction is not None:
        scores = scores_json(outcome.prediction)
        # The stored top-3 stays what it always was; the longer list is only for combining.
        top = replace(outcome.prediction, candidates=outcome.prediction.candidates[:3])
        outcome = replace(outcome, prediction=top)
    if row is None:
        return replace(outcome, scores=scores)
    return replace(outcome, group_id=row.group_id, context=row.context, scores=scores)


def with_content(outcome: Outcome, batch: PreparedBatch) -> Outcome:
    """The outcome with what its photo was known by when read: the fingerprint of the bytes
    classified and the source's change marker (kept on failures too, so a photo replaced
    after failing is tried again)."""
    row = batch.rows.get(outcome.photo_id)
    return replace(
        outcome,
        fingerprint=batch.fingerprints.get(outcome.photo_id),
        change_marker=row.change_marker if row is not None else None,
    )
