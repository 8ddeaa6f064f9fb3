"""The README's first command: `labeler demo`, an ASM3-like shelter on the embedded SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from labeler.config.settings import Settings
from labeler.demo import runner as demo
from labeler.demo import shelter as demo_shelter
from labeler.shelter.breedmap import load_breed_map
from labeler.store.schema import GONE, LABELLED, NEEDS_REVIEW, REVIEWED, group, photo
from tests.helpers import FULLFRAME, REPO


def _state(database: Path) -> dict[str, Any]:
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        state = {
            "animals": {a["id"]: a for a in demo_shelter.animals(conn)},
            "groups": {r.group_id: r for r in conn.execute(select(group))},
            "photos": {r.photo_id: r for r in conn.execute(select(photo))},
            "queue": {
                r.group_id
                for r in conn.execute(text("SELECT group_id FROM labeler_group_review_queue"))
            },
            "media": conn.execute(text("SELECT COUNT(*) FROM media")).scalar(),
        }
    engine.dispose()
    return state


def _check_the_story(state: dict[str, Any], out: str) -> None:
    animals, groups = state["animals"], state["groups"]
    dogs = {i for i, a in animals.items() if a["species"] == "Dog"}
    cats = set(animals) - dogs
    assert cats and len(dogs) >= 4
    # Several photos per animal, one answer per animal.
    assert max(g.photos_used for g in groups.values()) >= 2
    assert {int(g) for g in groups} < dogs, "cats are filtered out; the dog without photos too"
    assert all(p.status != GONE for p in state["photos"].values())
    assert all(a["breed_id"] == 261 for i, a in animals.items() if i in cats)

    breed_map = load_breed_map(demo_shelter.default_breed_map())
    # Goldie's breed was set by staff before the pass (a golden retriever among the photos
    # may well be labelled Golden Retriever by the model: the breed alone does not tell).
    staff = [i for i in dogs if animals[i]["name"] == "Goldie"]
    assert len(staff) == 1 and animals[staff[0]]["breed_id"] == demo_shelter.STAFF_BREED_ID
    assert animals[staff[0]]["breed_name"] == "Golden Retriever"
    assert groups[str(staff[0])].status == REVIEWED and groups[str(staff[0])].staff_values
    for animal_id in dogs - set(staff):
        record = animals[animal_id]
        answer = groups.get(str(animal_id))
        if answer is None:  # the dog without photos keeps intake's placeholder
            assert record["breed_id"] == demo_shelter.MIXED_BREED_ID
            continue
        assert answer.status in (LABELLED, NEEDS_REVIEW)
        if answer.status == LABELLED:
            # On the record, in ASM3's vocabulary, through the shipped map.
            assert breed_map.lookup(answer.breed) == {
                "BreedID": str(record["breed_id"]),
                "BreedName": record["breed_name"],
                "Breed2ID": str(record["breed2_id"]),
                "CrossBreed": str(record["cross_breed"]),
            }
            # A single breed, as ASM3 itself saves one.
            assert (record["breed2_id"], record["cross_breed"]) == (record["breed_id"], 0)
        else:
            assert (record["breed_id"], record["breed_name"]) == (442, "Mixed Breed")
            assert str(animal_id) in state["queue"] and answer.review_reason
    assert state["queue"] == {g for g, r in groups.items() if r.status == NEEDS_REVIEW}

    assert "The animal records (table animal" in out
    assert (
        f"Review queue per animal, view labeler_group_review_queue ({len(state['queue'])})" in out
    )
    assert "staff decision, left untouched" in out
    assert "was set to Golden Retriever by staff before the pass; it is untouched; labeler" in out
    assert "recorded it as a staff decision" in out
    assert "not a dog: filtered out" in out and "no photos: nothing to label" in out


def test_demo_with_the_default_model_and_sample_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LABELER_MODEL_DIR", raising=False)
    monkeypatch.setattr(demo, "SHARED_SAMPLE", FULLFRAME)
    assert demo.run_demo(tmp_path) == 0
    out = capsys.readouterr().out

    state = _state(tmp_path / "shelter.db")
    _check_the_story(state, out)
    breeds = [d for d in FULLFRAME.iterdir() if d.is_dir()]
    # One dog per breed folder (PER_BREED photos each), one with two breeds, and the staff dog.
    photos_per_breed = sum(min(demo.PER_BREED, len(list(d.iterdir()))) for d in breeds)
    assert len(state["photos"]) == photos_per_breed + 2 + 1
    default = REPO / Settings.model_fields["model_dir"].get_default(call_default_factory=True)
    version = json.loads((default / "metadata.json").read_text())["version"]
    assert f"version {version}" in out
    # What the labels are worth is said with the full-frame numbers of the shipped rule.
    assert "worth:    on full-frame photos never trained on, first guess right on" in out
    assert "of photos on its own" in out and "of them right (95% interval" in out
    # The default (trained) model is sure of some dogs: their breed lands on the record.
    written = [g for g in state["groups"].values() if g.status == LABELLED and g.written_values]
    assert written, "the default model labels some sample dogs on its own"
    assert "wrote " in out


def test_demo_without_a_model_or_photos_still_runs_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tmp_path / "no-such-model"))
    monkeypatch.setattr(demo, "SHARED_SAMPLE", tmp_path / "no-such-photos")
    assert demo.run_demo(tmp_path / "demo") == 0
    out = capsys.readouterr().out

    assert "using an UNTRAINED model" in out
    assert "12 generated pictures" in out and "these are not dogs" in out
    assert "no held-out measurements" in out
    _check_the_story(_state(tmp_path / "demo" / "shelter.db"), out)


def test_demo_keeps_its_database_with_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`labeler demo --keep` runs a second pass on the same shelter: nothing new to label."""
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tmp_path / "no-such-model"))
    monkeypatch.setattr(demo, "SHARED_SAMPLE", tmp_path / "no-such-photos")
    assert demo.run_demo(tmp_path / "demo") == 0
    first = _state(tmp_path / "demo" / "shelter.db")
    assert demo.run_demo(tmp_path / "demo", reset=False) == 0
    out = capsys.readouterr().out
    second = _state(tmp_path / "demo" / "shelter.db")
    assert second["media"] == first["media"], "the shelter is not seeded twice"
    assert second["animals"] == first["animals"]
    assert "0 new" in out.split("run 2 finished")[1].splitlines()[0]
