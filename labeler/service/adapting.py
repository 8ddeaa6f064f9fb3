"""``labeler adapt``: the shelter's breed frequencies from staff decisions and, for a model
that keeps a record of each photo (``labeler.model.features``), its head refitted on the
decided photos' records (``labeler.decide.refit``), as a new model version written beside the
current one, only with ``--apply``.

The evidence (decisions held out, the model as it is against the adapted one) is printed
first; nothing changes without ``--apply``, and an adapted model is a new artifact directory
with its own version, so ``relabel --not-current-model`` and ``calibrate`` treat it as the new
model it is. The current artifact is never modified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from labeler.config.settings import Settings
from labeler.core.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from labeler.decide.adapt import (
    Adaptation,
    AdaptRefused,
    Decided,
    adapt,
    drifted,
    look_alikes,
    reweighted,
)
from labeler.decide.refit import RecordDecision, Refit, best_guesses, record_fits, refit
from labeler.model.artifact import (
    METADATA_FILE,
    Artifact,
    ArtifactError,
    load_artifact,
    load_feature_space,
    load_head_correction,
)
from labeler.model.features import (
    HEAD_CORRECTION_FILE,
    FeatureSpace,
    HeadCorrection,
    PhotoRecord,
    decode_record,
    file_sha256,
)
from labeler.service.app import thresholds_in_force
from labeler.shelter.breedmap import BreedMap, load_breed_map
from labeler.shelter.target import parse_values, same_value_text
from labeler.store import evidence
from labeler.store.engine import make_engine, session_factory
from labeler.store.staff import reviewed_label


def cmd_adapt(settings: Settings, args: argparse.Namespace) -> int:
    artifact = load_artifact(settings.model_dir)
    breed_map = None if settings.breed_map is None else load_breed_map(settings.breed_map)
    label_of_values = None if breed_map is None else breed_map.label_for
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        in_force = thresholds_in_force(settings, session, artifact)
        rows = evidence.staff_decided_photos(session)
        animals = evidence.group_decided_rows(session)
    space = load_feature_space(artifact)
    current_correction = None if space is None else load_head_correction(artifact, space)
    decided, earlier, records = [], [], []
    # One photo of each animal staff set to a breed outside the model.
    outside: dict[str, _OutsidePhoto] = {}
    index_of = {label: i for i, label in enumerate(artifact.labels)}
    for row in rows:
        label = _staff_label(row, label_of_values)
        candidates = tuple(
            (str(row[b]), float(row[c]))
            for b, c in (
                ("breed", "confidence"),
                ("breed_2", "confidence_2"),
                ("breed_3", "confidence_3"),
            )
            if row[b] is not None and row[c] is not None
        )
        if label is None:
            name = _photo_outside_breed(row, breed_map, settings.target_undecided)
            if name is not None:
                outside.setdefault(
                    str(row["group_id"]),
                    _OutsidePhoto(
                        str(row["model_version"]),
                        candidates,
                        decode_record(row.get("features")),
                        name,
                    ),
                )
            continue
        record = decode_record(row.get("features"))
        if record is not None and label in index_of:
            records.append(RecordDecision(str(row["photo_id"]), record, index_of[label]))
        if row["model_version"] == artifact.version:
            decided.append(Decided(str(row["photo_id"]), candidates, label))
        else:
            earlier.append(label)
    answers = list(
        _answers_and_outside_breeds(animals, artifact, breed_map, settings.target_undecided)
    )
    found_look_alikes = look_alikes(answers, never=artifact.reject_labels)

    # Judged as the adapted model will serve them: look-alike labels are never auto-labelled.
    never_auto = artifact.reject_labels | {found.label for found in found_look_alikes}
    result: Adaptation | None
    try:
        result = adapt(
            decided,
            artifact.labels,
            in_force.review_threshold,
            never_auto,
            strength=args.strength,
            current_weights=artifact.class_weights,
            earlier=earlier,
        )
    except AdaptRefused as exc:
        if not found_look_alikes:
            print(f"adapt: not adapting model {artifact.version}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        # A look-alike only ever sends more photos to review, so it needs no more evidence
        # than its own: the breeds' frequencies and the head wait for theirs.
        print(
            f"adapt: the breed frequencies of model {artifact.version} stay as they are: {exc}; "
            "the adapted model only sends the look-alikes to review",
            file=sys.stderr,
        )
        result = None
    head = None
    if result is not None and not args.no_refit:
        head = _refit(
            artifact,
            space,
            current_correction,
            records,
            result.weights,
            in_force.review_threshold,
            args.strength,
            never_auto,
        )
    # Where the adapted model would take the breeds outside the model: their next look-alike
    # is one before the first animal is answered with it. It only adds review, so what was
    # judged above stands.
    guesses = _adapted_guesses(
        outside,
        artifact,
        space,
        artifact.class_weights if result is None else result.weights,
        current_correction if head is None else head.correction,
    )
    moved = drifted(guesses, in_force.review_threshold, never_auto)
    if moved:
        found_look_alikes = look_alikes([*answers, *moved], never=artifact.reject_labels)
    for found in found_look_alikes:
        print(
            f"look-alike: {found.describe()}; too often for its answers to be trusted here: "
            "the adapted model sends its photos to review (or leave it unmapped in the breed "
            "map, LABELER_BREED_MAP)"
        )
    print(f"model {artifact.version}")
    if result is not None:
        print(result.evidence())
    if head is not None:
        print(head.evidence())
    if not args.apply:
        print("not applied: run again with --apply --output DIR to write the adapted model")
        return EXIT_OK
    if args.output is None:
        print("adapt: --apply needs --output DIR, the new model's folder", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.output).resolve()
    if out == artifact.path.resolve() or (out.exists() and any(out.iterdir())):
        print(f"adapt: {out} must be a new or empty folder", file=sys.stderr)
        return EXIT_CONFIG
    weights = artifact.class_weights if result is None else result.weights
    weights_text = json.dumps(None if weights is None else [round(w, 6) for w in weights])
    look_alike_values = {found.label: found.chosen_instead() for found in found_look_alikes}
    fingerprint = hashlib.sha256(f"{artifact.version}:{weights_text}".encode())
    fingerprint.update(json.dumps(look_alike_values, sort_keys=True).encode())
    correction = None if head is None else head.correction
    if correction is not None:
        fingerprint.update(correction.weights.astype("float32").tobytes())
    digest = fingerprint.hexdigest()[:10]
    base_version = _base_version(artifact)
    scratch = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(artifact.path, scratch)
    meta = json.loads((scratch / METADATA_FILE).read_text())
    meta["version"] = f"{base_version}-shelter-{digest}"
    output = meta.setdefault("output", {})
    if weights is not None:
        output["class_weights"] = json.loads(weights_text)
    # Found again from every decision each time: the new list replaces the old one.
    output.pop("look_alikes", None)
    if look_alike_values:
        output["look_alikes"] = look_alike_values
    if head is not None:
        # A new refit replaces the old correction; one judged worse than the prior is dropped.
        (scratch / HEAD_CORRECTION_FILE).unlink(missing_ok=True)
        output.pop("head_correction", None)
    if correction is not None:
        correction.save(scratch / HEAD_CORRECTION_FILE)
        output["head_correction"] = {
            "file": HEAD_CORRECTION_FILE,
            "sha256": file_sha256(scratch / HEAD_CORRECTION_FILE),
        }
    evidence_text = "\n".join(
        [
            *(["look-alike: " + found.describe() for found in found_look_alikes]),
            *([] if result is None else [result.evidence()]),
            *([] if head is None else [head.evidence()]),
        ]
    )
    meta["adapted"] = {
        "from_version": base_version,
        "decisions": 0 if result is None else sum(result.counts.values()),
        "counts": {} if result is None else result.counts,
        "strength": args.strength,
        "evidence": evidence_text,
        **({} if head is None else {"head_refit": {"decisions": head.decisions, "l2": head.l2}}),
    }
    (scratch / METADATA_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    try:
        load_artifact(scratch)
    except ArtifactError as exc:  # never leave a model that would not start
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"adapt: the adapted model does not load: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if out.exists():
        out.rmdir()
    os.replace(scratch, out)
    print(f"wrote {out} (version {meta['version']})")
    print(
        f"to use it: set LABELER_MODEL_DIR={out}, then `labeler relabel --not-current-model` "
        "re-labels what the previous version decided on its own, and `labeler calibrate` "
        "learns its threshold once staff have reviewed some of its answers"
    )
    return EXIT_OK


def _refit(
    artifact: Artifact,
    space: FeatureSpace | None,
    current_correction: HeadCorrection | None,
    records: list[RecordDecision],
    weights: list[float],
    threshold: float,
    strength: float,
    never_auto: frozenset[str],
) -> Refit | None:
    """The head refitted on the decided photos' records, when the model keeps records and
    enough of them are decided; None otherwise (the prior alone is adapted)."""
    if space is None:
        return None
    return refit(
        records,
        space,
        artifact.labels,
        artifact.temperature,
        threshold,
        never_auto,
        current_weights=artifact.class_weights,
        current_correction=current_correction,
        final_weights=weights,
        strength=strength,
    )


def _base_version(artifact: Artifact) -> str:
    """The version of the model as trained, which every shelter version of it extends."""
    return str(artifact.metadata.get("adapted", {}).get("from_version", artifact.version))


def _answers_and_outside_breeds(
    animals: list[dict[str, object]],
    artifact: Artifact,
    breed_map: BreedMap | None,
    undecided: dict[str, str],
) -> Iterator[tuple[str, str | None]]:
    """For each animal this model (or a shelter version of it) answered: its answer, and the
    breed staff set in the shelter's own UI when the breed map has no label for it (as the
    shelter names it), else None. Animals whose record staff set back to undecided (an undo,
    not a breed) are left out; so is every animal without a breed map to read them with."""
    if breed_map is None:
        return
    base = _base_version(artifact)
    for animal in animals:
        version = str(animal.get("model_version"))
        if version != base and not version.startswith(f"{base}-shelter-"):
            continue
        answer = str(animal["breed"])
        staff = animal.get("staff_values")
        if animal.get("reviewed_breed") or not isinstance(staff, str) or not staff:
            yield answer, None
            continue
        values = _staff_breed(staff, undecided)
        if values is None:
            continue
        if breed_map.label_for(values) is not None:
            yield answer, None
        elif (name := breed_map.name_in(values)) is not None:
            yield answer, name


@dataclass(frozen=True)
class _OutsidePhoto:
    """A photo of an animal staff set to a breed outside the model, as it was classified."""

    model_version: str
    candidates: tuple[tuple[str, float], ...]
    record: PhotoRecord | None
    breed: str


def _adapted_guesses(
    outside: dict[str, _OutsidePhoto],
    artifact: Artifact,
    space: FeatureSpace | None,
    weights: Sequence[float] | None,
    correction: HeadCorrection | None,
) -> Iterator[tuple[str, tuple[str, float], str]]:
    """For each animal in ``outside``: today's answer, the best guess of the model served with
    ``weights`` and ``correction``, and the breed staff chose. From the photo's record when it
    has one of this network (any version of it: the record is the network's own output), else
    from its stored top three when this version classified it (the class weights only)."""
    labels = artifact.labels
    current = artifact.class_weights or [1.0] * len(labels)
    relative = [w / c for w, c in zip(weights or [1.0] * len(labels), current, strict=True)]
    for photo in outside.values():
        if not photo.candidates:
            continue
        today = photo.candidates[0][0]
        record = photo.record
        if space is not None and record is not None and record_fits(record, space, len(labels)):
            (guess,) = best_guesses([record], labels, artifact.temperature, weights, correction)
            yield today, guess, photo.breed
        elif photo.model_version == artifact.version:
            yield today, reweighted(photo.candidates, labels, relative)[0], photo.breed


def _photo_outside_breed(
    row: dict[str, object], breed_map: BreedMap | None, undecided: dict[str, str]
) -> str | None:
    """The breed staff set in the shelter's own UI for this photo's animal when the breed
    map has no label for it (as the shelter names it); None for anything else."""
    values = _staff_breed(row.get("staff_values"), undecided)
    if breed_map is None or values is None or breed_map.label_for(values) is not None:
        return None
    return breed_map.name_in(values)


def _staff_breed(staff: object, undecided: dict[str, str]) -> dict[str, str] | None:
    """The values staff set on an animal's record, as labeler stored them; None for none, an
    unreadable one, or an undo (the record set back to the undecided values)."""
    values = parse_values(staff) if isinstance(staff, str) and staff else None
    return None if values is None or _holds(values, undecided) else values


def _holds(values: dict[str, str], wanted: dict[str, str]) -> bool:
    """The record's values hold every one of ``wanted`` (columns' case ignored, as PostgreSQL
    folds them; values compared as text or as numbers)."""
    lowered = {k.lower(): v for k, v in values.items()}
    return bool(wanted) and all(
        same_value_text(lowered.get(column.lower()), value) for column, value in wanted.items()
    )


def _staff_label(row: dict[str, object], label_of_values: object) -> str | None:
    """The model label staff chose: a reviewed breed on the photo or its animal, or the breed
    they set in their own UI mapped back through the breed map."""

    for key in ("reviewed_breed", "group_reviewed_breed"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return reviewed_label(value)
    staff = row.get("staff_values")
    if isinstance(staff, str) and staff and callable(label_of_values):
        try:
            values = json.loads(staff)
        except ValueError:
            return None
        label = label_of_values(values) if isinstance(values, dict) else None
        return label if isinstance(label, str) else None
    return None
