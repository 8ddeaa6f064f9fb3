"""Adapting to a shelter's breeds: the pure rule on constructed numbers, and `labeler adapt`
on every database (evidence first, a new model version only with --apply)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine

from labeler.config.settings import Settings
from labeler.core.domain import Prediction
from labeler.decide.adapt import (
    MIN_DECISIONS,
    MIN_OUTSIDE,
    AdaptRefused,
    Decided,
    adapt,
    class_weights,
    drifted,
    held_out,
    look_alikes,
    reweight,
    reweighted,
)
from labeler.decide.decision import decide, resolve_thresholds
from labeler.model.artifact import (
    ArtifactError,
    load_artifact,
    load_feature_space,
    load_head_correction,
)
from labeler.model.classifier import Classifier, apply_class_weights
from labeler.model.features import FEATURE_SPACE_FILE, FeatureSpace, encode_record, file_sha256
from labeler.service.cli import main
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import LABELLED, NEEDS_REVIEW, REVIEWED, group, photo
from tests.helpers import create_photos, png_bytes, with_animals_in_a_shelter_record

LABELS = ["beagle", "pug", "whippet", "not_a_dog"]


def test_weights_follow_the_counts_smoothed_towards_uniform() -> None:
    weights = dict(zip(LABELS, class_weights({"beagle": 30}, LABELS, strength=30), strict=True))
    # beagle: (30 + 10) / 60 * 3 = 2; the two breeds never decided: (0 + 10) / 60 * 3 = 0.5.
    assert weights == pytest.approx({"beagle": 2.0, "pug": 0.5, "whippet": 0.5, "not_a_dog": 1})
    assert class_weights({}, LABELS) == [1.0, 1.0, 1.0, 1.0]  # no evidence: the model as it is
    with pytest.raises(ValueError, match="strength"):
        class_weights({}, LABELS, strength=0)


def test_reweight_is_bayes_rule_with_the_new_prior() -> None:
    candidates = (("pug", 0.5), ("beagle", 0.4))  # 0.1 left for the other labels
    got = reweight(candidates, {"pug": 0.5, "beagle": 2.0}, rest_weight=1.0)
    total = 0.25 + 0.8 + 0.1
    assert [label for label, _ in got] == ["beagle", "pug"]
    assert [p for _, p in got] == pytest.approx([0.8 / total, 0.25 / total])
    full = np.array([[0.5, 0.4, 0.1, 0.0]])
    served = apply_class_weights(full, (0.5, 2.0, 1.0, 1.0))
    assert served[0] == pytest.approx([0.25 / total, 0.8 / total, 0.1 / total, 0.0])


def shelter(
    n: int, *, beagle_share: float = 0.9, confidence: float = 0.75, seed: int = 0
) -> list[Decided]:
    """Staff decisions of a beagle-heavy shelter on a model that is calibrated for a world of
    as many pugs as beagles: it always says ``confidence`` for its first guess (under the
    0.9 threshold) and ``1 - confidence`` for the other, and is right that often there."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        truth = "beagle" if rng.random() < beagle_share else "pug"
        other = "pug" if truth == "beagle" else "beagle"
        first, second = (truth, other) if rng.random() < confidence else (other, truth)
        rows.append(Decided(f"photo-{i}", ((first, confidence), (second, 1 - confidence)), truth))
    return rows


def test_adapt_learns_the_shelters_breeds_and_shows_the_gain() -> None:
    result = adapt(shelter(400), LABELS, threshold=0.9, reject=frozenset({"not_a_dog"}))
    weights = dict(zip(LABELS, result.weights, strict=True))
    assert weights["beagle"] > 1 > weights["pug"] > weights["whippet"]
    assert result.after.n == result.before.n > 0
    assert result.after.top1_right > result.before.top1_right
    assert result.before.auto == 0 < result.after.auto  # 0.6 was under the threshold
    assert result.after.auto_right / result.after.auto >= 0.95
    assert "held out for evaluation" in result.evidence()


def test_adapt_refuses_with_too_little_evidence() -> None:
    with pytest.raises(AdaptRefused, match=f"at least {MIN_DECISIONS}"):
        adapt(shelter(MIN_DECISIONS - 1), LABELS, 0.7, frozenset())
    # Decisions that name no label of the model are no evidence.
    unknown = [Decided(f"x{i}", (("pug", 0.9),), "labradoodle") for i in range(100)]
    with pytest.raises(AdaptRefused):
        adapt(unknown, LABELS, 0.7, frozenset())


def test_adapt_refuses_when_held_out_decisions_get_worse() -> None:
    # The model is right 90% of the time and the shelter's counts mislead it: training
    # decisions all say pug, the held-out ones are beagles the model already gets right.
    rows = []
    for i in range(400):
        key = f"p{i}"
        if held_out(key):
            rows.append(Decided(key, (("beagle", 0.55), ("pug", 0.44)), "beagle"))
        else:
            rows.append(Decided(key, (("pug", 0.9), ("beagle", 0.05)), "pug"))
    with pytest.raises(AdaptRefused, match="worse"):
        adapt(rows, LABELS, 0.7, frozenset(), strength=1.0)


def test_a_model_adapted_before_is_not_adapted_twice() -> None:
    rows = shelter(400)
    first = adapt(rows, LABELS, 0.9, frozenset())
    # Predictions made with weights already applied: the weights learned replace them (the
    # evaluation divides them out) instead of being multiplied into them.
    again = adapt(rows, LABELS, 0.9, frozenset(), current_weights=first.weights)
    assert again.weights == pytest.approx(first.weights)
    assert again.after.top1_right <= first.after.top1_right


def test_a_label_staff_often_replace_with_a_breed_outside_the_model_is_a_look_alike() -> None:
    decisions: list[tuple[str, str | None]] = (
        [("American_Staffordshire_terrier", "Pit Bull Terrier")] * 9
        + [("American_Staffordshire_terrier", "Mixed Breed")] * 2
        + [("American_Staffordshire_terrier", None)] * 3
        + [("beagle", None)] * 97
        + [("beagle", "Harrier")] * 3  # 3 in 100: what a 95% promise allows
        + [("pug", "Mixed Breed")] * (MIN_OUTSIDE - 1)  # too few to say anything
    )
    (found,) = look_alikes(decisions)
    assert found.label == "American_Staffordshire_terrier"
    assert (found.decided, found.outside) == (14, 11)
    assert found.chosen == (("Pit Bull Terrier", 9), ("Mixed Breed", 2))
    assert "11 of the 14" in found.describe() and "'Pit Bull Terrier' 9" in found.describe()
    # Most affected first; nothing outside the model, nothing listed.
    many = decisions + [("whippet", "Lurcher")] * 5
    assert [f.label for f in look_alikes(many)] == ["whippet", "American_Staffordshire_terrier"]
    assert look_alikes([("beagle", None)] * 50) == []
    # Labels never auto-labelled anyway are not look-alikes of anything.
    assert look_alikes([("not_a_dog", "Cat")] * 10) == []
    assert look_alikes(decisions, never=frozenset({"American_Staffordshire_terrier"})) == []


def test_a_breed_outside_the_model_drifts_onto_the_label_the_adapted_prior_favours() -> None:
    """Foxhounds the model calls whippet today: where the adapted model would auto-label
    them beagle, beagle stands for a foxhound too, before any was answered beagle."""
    foxhound = ("whippet", ("beagle", 0.71), "English Foxhound")
    assert drifted([foxhound] * 3, threshold=0.6) == [("beagle", "English Foxhound")] * 3
    answers = [("whippet", "English Foxhound")] * 3 + [("beagle", None)] * 20
    moved = drifted([foxhound] * 4, threshold=0.6)
    assert "beagle" in [f.label for f in look_alikes([*answers, *moved])]
    assert "beagle" not in [f.label for f in look_alikes(answers)]
    # Not where the adapted model would still review it, keep today's answer, never
    # auto-labels the label anyway, or answers with no breed.
    assert drifted([foxhound], threshold=0.95) == []
    assert drifted([("whippet", ("whippet", 0.99), "English Foxhound")], 0.6) == []
    assert drifted([foxhound], 0.6, never=frozenset({"beagle"})) == []
    assert drifted([("whippet", ("not_a_dog", 0.99), "English Foxhound")], 0.6) == []


def test_reweighted_candidates_follow_the_new_prior() -> None:
    candidates = (("whippet", 0.6), ("beagle", 0.38))
    weights = [4.0 if label == "beagle" else 1.0 for label in LABELS]
    (best, p), _ = reweighted(candidates, LABELS, weights)
    # 0.38 * 4 against 0.6, and the 0.02 left over weighted by the other labels' mean (1).
    assert best == "beagle" and p == pytest.approx(1.52 / (1.52 + 0.6 + 0.02))


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def configured(db_url: str, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = make_engine(Settings(database_url=db_url))
    create_photos(engine, "bytes", [{"id": 1, "photo": png_bytes((1, 2, 3))}])
    migrate.upgrade(engine)
    engine.dispose()
    for key, value in {
        "DATABASE_URL": db_url,
        "SOURCE_TABLE": "animals",
        "SOURCE_IMAGE_COLUMN": "photo",
        "MODEL_DIR": str(tiny_artifact),
        "REVIEW_THRESHOLD": "0.9",
    }.items():
        monkeypatch.setenv(f"LABELER_{key}", value)
    return db_url


def insert_decisions(url: str, version: str, decisions: list[Decided]) -> None:
    now = datetime(2026, 12, 1)
    rows = []
    for d in decisions:
        (b1, c1), (b2, c2) = d.candidates
        rows.append(
            {
                "photo_id": d.key,
                "status": NEEDS_REVIEW,
                "breed": b1,
                "confidence": c1,
                "breed_2": b2,
                "confidence_2": c2,
                "model_version": version,
                "review_reason": "unsure",
                "reviewed_breed": d.staff_label,
                "discovered_at": now,
                "updated_at": now,
            }
        )
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(photo.insert(), rows)
    engine.dispose()


def test_adapt_prints_evidence_and_writes_a_new_version_only_with_apply(
    configured: str, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = load_artifact(tiny_artifact)
    assert "beagle" in artifact.labels and "pug" in artifact.labels
    insert_decisions(configured, artifact.version, shelter(300))
    out = tmp_path / "adapted"

    assert main(["adapt"]) == 0
    printed = capsys.readouterr().out
    assert "held out for evaluation" in printed and "not applied" in printed
    assert not out.exists()

    assert main(["adapt", "--apply", "--output", str(out)]) == 0
    adapted = load_artifact(out)
    assert adapted.version != artifact.version and adapted.version.startswith(artifact.version)
    assert adapted.class_weights is not None
    weights = dict(zip(adapted.labels, adapted.class_weights, strict=True))
    # Relative to all 120 breeds both are common here; beagles four times as much.
    assert weights["beagle"] > 3 * weights["pug"] > 3 * weights["whippet"]
    assert json.loads((out / "metadata.json").read_text())["adapted"]["decisions"] == 300
    # The original artifact is untouched, and the new one serves with its weights.
    assert load_artifact(tiny_artifact).class_weights is None
    image = np.full((16, 16, 3), 128, np.uint8)
    base = Classifier.load(tiny_artifact).predict_probabilities(
        np.stack([image]).astype(np.float32)
    )
    served = Classifier.load(out).predict_probabilities(np.stack([image]).astype(np.float32))
    assert served[0] == pytest.approx(apply_class_weights(base, adapted.class_weights)[0])

    # A second --apply into a folder that is not empty is refused.
    assert main(["adapt", "--apply", "--output", str(out)]) == 2


def test_adapt_names_a_label_staff_keep_replacing_with_a_breed_outside_the_model(
    configured: str,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Animals the model called pug that staff set, in their own screens, to a breed the
    breed map has no label for: adapt says so, and the adapted model sends pug to review.
    Each animal counts once, over every animal this model answered pug."""
    version = load_artifact(tiny_artifact).version
    insert_decisions(configured, version, shelter(300))
    now = datetime(2026, 12, 1)
    pit_bull = '{"BreedID": "99", "BreedName": "Pit Bull Terrier"}'
    animals: list[dict[str, object]] = []

    def animal(answer: str, staff: str | None, model_version: str = version) -> None:
        animals.append(
            {
                "group_id": f"dog-{len(animals)}",
                "status": LABELLED if staff is None else REVIEWED,
                "breed": answer,
                "confidence": 0.95,
                "model_version": model_version,
                "review_reason": None if staff is None else "staff set the breed",
                "discovered_at": now,
                "updated_at": now,
                "staff_values": staff,
            }
        )

    for _ in range(18):
        animal("pug", pit_bull)
    for _ in range(2):  # the column names as PostgreSQL folds them
        animal("pug", '{"breedid": "99", "breedname": "Pit Bull Terrier"}')
    for _ in range(20):  # auto-labelled and left as they were: pugs indeed
        animal("pug", None)
    for _ in range(10):  # an undo (the undecided values) is no breed
        animal("pug", '{"BreedID": "0", "BreedName": "Unknown"}')
    for _ in range(5):  # staff chose a label of the model
        animal("pug", '{"BreedID": "5", "BreedName": "Pug"}')
    for _ in range(10):  # another model's answers say nothing about this one
        animal("beagle", pit_bull, model_version="another-model-1")
    for _ in range(10):  # never auto-labelled anyway
        animal("not_a_dog", pit_bull)
    with_animals_in_a_shelter_record(configured, animals, monkeypatch, tmp_path)

    assert main(["adapt"]) == 0
    printed = capsys.readouterr().out
    (line,) = [x for x in printed.splitlines() if x.startswith("look-alike:")]
    assert "pug: for 20 of the 45 animals" in line and "'Pit Bull Terrier' 20" in line
    assert "sends its photos to review" in line and "unmapped in the breed map" in line
    assert "not applied" in printed  # nothing changed yet
    assert load_artifact(tiny_artifact).look_alikes == ()

    # Applied, the new version sends its pug answers to review, with what staff chose.
    out = tmp_path / "adapted"
    assert main(["adapt", "--apply", "--output", str(out)]) == 0
    adapted = load_artifact(out)
    ((label, chosen),) = adapted.look_alikes
    assert label == "pug" and "'Pit Bull Terrier' 20 times" in chosen
    assert "pug" in adapted.never_auto_labels and "beagle" not in adapted.never_auto_labels
    assert "always sent to review here, as look-alikes of other breeds: pug" in adapted.describe()
    rule = resolve_thresholds(adapted, 0.5, None)
    pug = decide(Prediction((("pug", 0.99), ("beagle", 0.01))), rule)
    assert pug.status == NEEDS_REVIEW and "Pit Bull Terrier" in (pug.reason or "")
    beagle = decide(Prediction((("beagle", 0.99), ("pug", 0.01))), rule)
    assert beagle.status == LABELLED
    # A look-alike that is no label of the model is refused at load.
    meta = json.loads((out / "metadata.json").read_text())
    meta["output"]["look_alikes"] = {"labradoodle": "x"}
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="look_alikes"):
        load_artifact(out)


def test_adapt_refuses_with_too_few_decisions(
    configured: str, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insert_decisions(configured, load_artifact(tiny_artifact).version, shelter(5))
    assert main(["adapt", "--apply", "--output", "/nonexistent/x"]) == 1
    assert "at least 30" in capsys.readouterr().err


def test_a_look_alike_is_applied_before_there_is_evidence_for_the_frequencies(
    configured: str,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first night of a shelter with pit bulls: too few decisions name a label of the
    model to learn its breeds, but staff keep replacing the model's pug with a breed it does
    not know. The adapted model only sends pug to review; everything else stays as it was."""
    version = load_artifact(tiny_artifact).version
    insert_decisions(configured, version, shelter(5))
    now = datetime(2026, 12, 1)
    animals = [
        {
            "group_id": f"dog-{k}",
            "status": REVIEWED if k < 6 else LABELLED,
            "breed": "pug",
            "confidence": 0.95,
            "model_version": version,
            "discovered_at": now,
            "updated_at": now,
            "staff_values": '{"BreedID": "99", "BreedName": "Pit Bull Terrier"}' if k < 6 else None,
        }
        for k in range(10)
    ]
    with_animals_in_a_shelter_record(configured, animals, monkeypatch, tmp_path)
    out = tmp_path / "adapted"

    assert main(["adapt", "--apply", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "breed frequencies of model" in captured.err and "at least 30" in captured.err
    assert "only sends the look-alikes to review" in captured.err
    adapted = load_artifact(out)
    assert [label for label, _ in adapted.look_alikes] == ["pug"]
    assert adapted.class_weights is None  # the frequencies were not learned
    assert adapted.version != version and adapted.version.startswith(version)
    meta = json.loads((out / "metadata.json").read_text())["adapted"]
    assert meta["decisions"] == 0 and meta["evidence"].startswith("look-alike: pug")

    # Without a look-alike, too little evidence is still a refusal.
    engine = create_engine(configured)
    with engine.begin() as conn:
        conn.execute(group.delete())
    engine.dispose()
    assert main(["adapt", "--apply", "--output", str(tmp_path / "again")]) == 1
    assert not (tmp_path / "again").exists()


def test_adapt_finds_the_look_alike_its_own_prior_would_create(
    configured: str,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A beagle shelter with foxhounds the model does not know: the model calls them whippet
    (beagle second), and staff set "Foxhound" in their own screens. The adapted prior makes
    beagle common enough to auto-label those foxhounds beagle, so beagle is a look-alike of
    the adapted model too, before any foxhound was answered beagle."""
    version = load_artifact(tiny_artifact).version
    insert_decisions(configured, version, shelter(300))
    now = datetime(2026, 12, 1)
    foxhound = '{"BreedID": "99", "BreedName": "Foxhound"}'
    animals = [
        {
            "group_id": f"dog-{k}",
            "status": REVIEWED if k < 6 else LABELLED,
            "breed": "whippet" if k < 6 else "beagle",
            "confidence": 0.6 if k < 6 else 0.97,
            "model_version": version,
            "discovered_at": now,
            "updated_at": now,
            "staff_values": foxhound if k < 6 else None,
        }
        for k in range(26)
    ]
    photos = [
        {
            "photo_id": f"foxhound-{k}",
            "group_id": f"dog-{k}",
            "status": NEEDS_REVIEW,
            "breed": "whippet",
            "confidence": 0.6,
            "breed_2": "beagle",
            "confidence_2": 0.39,
            "model_version": version,
            "review_reason": "unsure",
            "discovered_at": now,
            "updated_at": now,
        }
        for k in range(6)
    ]
    with_animals_in_a_shelter_record(configured, animals, monkeypatch, tmp_path)
    engine = create_engine(configured)
    with engine.begin() as conn:
        conn.execute(photo.insert(), photos)
    engine.dispose()

    out = tmp_path / "adapted"
    assert main(["adapt", "--no-refit", "--apply", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    found = [x.split(":")[1].strip() for x in printed.splitlines() if x.startswith("look-alike:")]
    assert found == ["whippet", "beagle"]
    assert sorted(label for label, _ in load_artifact(out).look_alikes) == ["beagle", "whippet"]


def test_adapt_refuses_when_auto_labels_would_fall_under_the_promise() -> None:
    # A weaker model: the shelter's prior lifts its beagles over the threshold at 0.9 x 0.55 /
    # (0.9 x 0.55 + 0.1 x 0.45) = 92% precision, under what the product promises.
    with pytest.raises(AdaptRefused, match="under 95%"):
        adapt(shelter(1000, confidence=0.55), LABELS, 0.9, frozenset())


def test_decisions_on_earlier_versions_count_for_the_frequencies_only() -> None:
    rows = shelter(60)
    with_earlier = adapt(rows, LABELS, 0.9, frozenset(), earlier=["whippet"] * 200)
    assert with_earlier.counts["whippet"] == 200
    assert with_earlier.before.n == adapt(rows, LABELS, 0.9, frozenset()).before.n
    # Only earlier decisions: nothing of this version's to judge the result by.
    with pytest.raises(AdaptRefused, match="this model version's own predictions"):
        adapt([], LABELS, 0.9, frozenset(), earlier=["beagle"] * 100)


def test_a_few_held_out_misses_are_not_proof_of_a_worse_model() -> None:
    # 14 of 15 right (93%): the interval reaches far above 95%, and 15 is too few to judge.
    from labeler.decide.adapt import Outcome, below_promise

    assert not below_promise(Outcome(n=60, top1_right=50, auto=15, auto_right=14))
    assert below_promise(Outcome(n=300, top1_right=250, auto=100, auto_right=90))
    assert below_promise(Outcome(n=15, top1_right=5, auto=15, auto_right=5))  # clearly under


@pytest.fixture
def featured_artifact(tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny artifact with a hand-made feature space: 4 projected dimensions, the identity
    projection, and two anchor records per breed of the shelter."""
    directory = tmp_path / "featured"
    shutil.copytree(tiny_artifact, directory)
    labels = load_artifact(directory).labels
    classes = len(labels)
    breeds = [labels.index(b) for b in ("beagle", "pug", "whippet")]
    anchor_labels = np.repeat(breeds, 2)
    space = FeatureSpace(
        space="00112233aabbccdd",
        mean=np.zeros(4),
        projection=np.eye(4),
        anchor_logp=np.full((len(anchor_labels), classes), np.log(1 / classes)),
        anchor_projected=np.stack([3.0 * np.eye(4)[breeds.index(b)] for b in anchor_labels]),
        anchor_labels=anchor_labels,
    )
    space.save(directory / FEATURE_SPACE_FILE)
    meta = json.loads((directory / "metadata.json").read_text())
    meta["features"] = {
        "file": FEATURE_SPACE_FILE,
        "sha256": file_sha256(directory / FEATURE_SPACE_FILE),
        "space": space.space,
    }
    (directory / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv("LABELER_MODEL_DIR", str(directory))
    return directory


def test_adapt_refits_the_head_on_stored_records_and_keeps_it_only_when_it_helps(
    configured: str, featured_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = load_artifact(featured_artifact)
    labels = artifact.labels
    classes = len(labels)
    decisions = shelter(300, beagle_share=0.6)
    insert_decisions(configured, artifact.version, decisions)
    # The network's own outputs say nothing (uniform); its features tell beagle from pug.
    rng = np.random.default_rng(3)
    engine = create_engine(configured)
    with engine.begin() as conn:
        for d in decisions:
            projected = 3.0 * np.eye(4)[("beagle", "pug").index(d.staff_label)]
            record = encode_record(
                "00112233aabbccdd",
                np.full(classes, np.log(1 / classes)),
                projected + rng.normal(0, 0.3, 4),
            )
            conn.execute(photo.update().where(photo.c.photo_id == d.key).values(features=record))
    engine.dispose()

    out = tmp_path / "refitted"
    assert main(["adapt", "--apply", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "head refitted on 300 decided photos" in printed and ": applied" in printed
    adapted = load_artifact(out)
    assert adapted.head_correction is not None
    space = load_feature_space(adapted)
    assert space is not None
    correction = load_head_correction(adapted, space)
    assert correction is not None and correction.weights.shape == (4, classes)
    # What it learned: the first feature direction means beagle, the second pug.
    beagle, pug = labels.index("beagle"), labels.index("pug")
    assert correction.weights[0, beagle] > correction.weights[0, pug]
    assert correction.weights[1, pug] > correction.weights[1, beagle]

    # --no-refit adapts the prior only, and drops nothing it was not asked to.
    prior_only = tmp_path / "prior-only"
    assert main(["adapt", "--no-refit", "--apply", "--output", str(prior_only)]) == 0
    assert "head refitted" not in capsys.readouterr().out
    assert load_artifact(prior_only).head_correction is None
