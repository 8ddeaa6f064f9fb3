"""The breed map: parsing, validation, lookups both ways, and the check against a breed table."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from labeler.config.settings import Settings
from labeler.demo import shelter as demo_shelter
from labeler.shelter.breedmap import (
    NOT_BREEDS,
    BreedMap,
    BreedMapError,
    breed_table_problems,
    check_against_breed_table,
    load_breed_map,
    model_labels,
)
from labeler.shelter.tables import breed_table_rows
from tests.helpers import REPO, breed_names

LABELS = ["beagle", "golden_retriever", "toy_poodle", "standard_poodle", "dingo"]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "map.csv"
    path.write_text(body, encoding="utf-8")
    return path


def test_loads_a_map_and_looks_up_both_ways(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# a comment\n\nlabel,BreedID,BreedName\n"
        "golden_retriever,96,Golden Retriever\n"
        "  # indented comment\n"
        'toy_poodle,163,"Poodle, toy"\n'
        "standard_poodle,163,Poodle\n",
    )
    bmap = load_breed_map(path, LABELS)

    assert bmap.columns == ("BreedID", "BreedName")
    assert bmap.lookup("golden_retriever") == {"BreedID": "96", "BreedName": "Golden Retriever"}
    assert bmap.lookup("toy_poodle") == {"BreedID": "163", "BreedName": "Poodle, toy"}
    assert bmap.lookup("beagle") is None  # known label, not mapped: goes to review
    assert bmap.lookup("no_such_label") is None
    # Reverse by the first column, compared as text, whatever type or case the row brings.
    assert bmap.label_for({"BreedID": 96, "BreedName": "anything"}) == "golden_retriever"
    assert bmap.label_for({"breedid": "96"}) == "golden_retriever"
    assert bmap.label_for({"BreedID": 96.0}) == "golden_retriever"
    assert bmap.label_for({"BreedID": 442}) is None
    assert bmap.label_for({"BreedName": "Golden Retriever"}) is None  # no first column
    # Two labels share Poodle: the first in the file wins, all are available.
    assert bmap.label_for({"BreedID": "163"}) == "toy_poodle"
    assert bmap.labels_for({"BreedID": 163}) == ("toy_poodle", "standard_poodle")
    assert bmap.mapped_labels == {"golden_retriever", "toy_poodle", "standard_poodle"}
    # The name staff read, from a record's values, whatever the case of its columns.
    assert bmap.name_in({"BreedID": 442, "BreedName": "Pit Bull Terrier"}) == "Pit Bull Terrier"
    assert bmap.name_in({"breedid": "442", "breedname": " Havanese "}) == "Havanese"
    assert bmap.name_in({"BreedID": 442, "BreedName": "  "}) is None
    assert bmap.name_in({"BreedID": 442, "BreedName": None}) is None
    assert bmap.name_in({"BreedID": 442}) is None


def test_matched_to_takes_the_target_spelling(tmp_path: Path) -> None:
    bmap = load_breed_map(_write(tmp_path, "label,BreedID,BreedName\nbeagle,19,Beagle\n"), LABELS)
    lowered = bmap.matched_to(["id", "breedid", "breedname", "animalname"])
    assert lowered.columns == ("breedid", "breedname")
    assert lowered.lookup("beagle") == {"breedid": "19", "breedname": "Beagle"}
    assert bmap.matched_to(["BreedID", "BreedName"]).columns == bmap.columns
    with pytest.raises(BreedMapError, match="'BreedName': no such column"):
        bmap.matched_to(["breedid"])
    with pytest.raises(BreedMapError, match="several columns match"):
        bmap.matched_to(["breedid", "BREEDID", "breedname"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "no header line"),
        ("# only a comment\n", "no header line"),
        ("breed,BreedID\nbeagle,19\n", "line 1: the header must start with 'label'"),
        ("label\nbeagle\n", "line 1: the header names no target column"),
        ("label,Breed ID\n", "line 1: column 'Breed ID' is not a plain SQL identifier"),
        ("label,BreedID;DROP\n", "is not a plain SQL identifier"),
        ("label,BreedID,breedid\n", "line 1: column 'breedid' appears twice"),
        ("label,BreedID\n#x\nbeagel,19\n", "line 3: unknown label 'beagel'.*did you mean 'beagle'"),
        ("label,BreedID\nbeagle,19\nbeagle,20\n", "line 3: label 'beagle' is mapped twice"),
        ("label,BreedID,BreedName\nbeagle,19\n", "line 2: 2 fields, the header has 3"),
        ("label,BreedID\nbeagle,19,Beagle\n", "line 2: 3 fields, the header has 2"),
        ("label,BreedID\nbeagle,\n", "line 2: empty BreedID for 'beagle'"),
        ("label,BreedID\ndingo,1\n", "line 2: 'dingo' is not a dog breed"),
        ('label,BreedName\nbeagle,"Bea\n', "line 2: not valid CSV"),
        (f"label,BreedName\nbeagle,{'x' * 300}\n", "longer than 255"),
    ],
)
def test_refuses_a_bad_map_naming_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(BreedMapError, match=message) as info:
        load_breed_map(path, LABELS)
    assert str(path) in str(info.value)


def test_refuses_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(BreedMapError, match="cannot be read"):
        load_breed_map(tmp_path / "nope.csv", LABELS)
    path = tmp_path / "binary.csv"
    path.write_bytes(b"label,BreedID\n\xff\xfe\x00")
    with pytest.raises(BreedMapError, match="not UTF-8"):
        load_breed_map(path, LABELS)


def test_the_packaged_labels_are_the_shared_breed_list() -> None:
    assert model_labels() == breed_names()
    assert set(model_labels()) >= NOT_BREEDS


def test_the_shipped_asm3_map() -> None:
    bmap = load_breed_map(demo_shelter.default_breed_map())  # validated against the 120 labels
    breeds = {i: (name, species) for i, name, species in demo_shelter.asm3_breeds()}
    assert bmap.columns == ("BreedID", "BreedName", "Breed2ID", "CrossBreed")
    # A single breed as ASM3 itself saves it: the second breed repeats the first, no cross.
    for label in bmap.mapped_labels:
        values = bmap.lookup(label)
        assert values is not None
        assert values["Breed2ID"] == values["BreedID"] and values["CrossBreed"] == "0", label
    unmapped = set(model_labels()) - bmap.mapped_labels
    assert unmapped == NOT_BREEDS | {"toy_terrier", "curly-coated_retriever", "Sussex_spaniel"}
    # Every unmapped label is listed in the file as a comment, so a reader sees the gap.
    comments = demo_shelter.default_breed_map().read_text().splitlines()
    for label in unmapped:
        assert any(line.startswith(f"# unmapped: {label}:") for line in comments), label
    for label in bmap.mapped_labels:
        values = bmap.lookup(label)
        assert values is not None
        name, species = breeds[int(values["BreedID"])]
        assert (values["BreedName"], species) == (name, 1), label
    assert bmap.lookup("golden_retriever") == {
        "BreedID": "96",
        "BreedName": "Golden Retriever",
        "Breed2ID": "96",
        "CrossBreed": "0",
    }
    assert bmap.lookup("German_shepherd") == {
        "BreedID": "92",
        "BreedName": "German Shepherd Dog",
        "Breed2ID": "92",
        "CrossBreed": "0",
    }
    assert (
        bmap.lookup("Pembroke")
        == bmap.lookup("Cardigan")
        == {
            "BreedID": "209",
            "BreedName": "Welsh Corgi",
            "Breed2ID": "209",
            "CrossBreed": "0",
        }
    )
    assert bmap.lookup("dingo") is None
    # The placeholder is never a label's answer.
    assert bmap.label_for({"BreedID": demo_shelter.MIXED_BREED_ID}) is None
    assert (
        check_against_breed_table(
            bmap,
            [(i, n) for i, (n, _) in breeds.items()],
            {"BreedID": "ID", "BreedName": "BreedName"},
        )
        == []
    )


def test_check_against_breed_table_reports_every_mismatch() -> None:
    bmap = BreedMap(
        ("BreedID", "BreedName"),
        {"beagle": ("19", "Beagle"), "golden_retriever": ("96", "Golden retriever")},
        "m.csv",
    )
    rows = [(19, "Beagle"), (97, "Golden Retriever")]
    assert check_against_breed_table(bmap, rows, {"BreedID": "ID", "BreedName": "BreedName"}) == [
        "golden_retriever: BreedID=96 is not in the breed table (ID)"
    ]
    rows = [(19, "Beagle"), (96, "Golden Retriever")]
    assert check_against_breed_table(bmap, rows, {"breedid": "id", "breedname": "breedname"}) == [
        "golden_retriever: breedname='Golden retriever' but the breed table's breedname for 96 "
        "is 'Golden Retriever'"
    ]
    # Only the id checked: the names are not compared.
    assert check_against_breed_table(bmap, rows, {"BreedID": "ID"}) == []
    with pytest.raises(BreedMapError, match="has no column 'Breed'"):
        check_against_breed_table(bmap, rows, {"Breed": "ID"})


def test_breed_table_check_on_each_server(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.begin() as conn:
        demo_shelter.create_schema(conn)
    dialect = "postgresql" if db_url.startswith("postgresql") else "other"
    cols = demo_shelter.target_columns(dialect)
    bad = _write(
        tmp_path,
        "label,BreedID,BreedName\nbeagle,19,Beagle\ngolden_retriever,96,Golden\n"
        "Chihuahua,9999,Chihuahua\n",
    )
    settings = Settings(
        database_url=db_url,  # type: ignore[arg-type]
        breed_table="breed",
        breed_table_columns={"BreedID": cols["key"], "BreedName": cols["breed_name"]},
        target_table="animal",
        target_key_column=cols["key"],
        source_group_column="animal_id",
        target_undecided={cols["breed_id"]: "442"},
        breed_map=bad,
    )
    with Session(engine) as session:
        rows = breed_table_rows(session, "breed", [cols["key"], cols["breed_name"]])
        assert (442, "Mixed Breed") in rows and len(rows) == len(demo_shelter.asm3_breeds())
        shipped = load_breed_map(demo_shelter.default_breed_map())
        assert breed_table_problems(session, settings, shipped) == []
        problems = breed_table_problems(session, settings, load_breed_map(bad))
        with pytest.raises(ValueError, match="not a plain SQL identifier"):
            breed_table_rows(session, "breed; DROP TABLE breed", ["ID"])
    engine.dispose()
    assert problems == [
        f"golden_retriever: BreedName='Golden' but the breed table's {cols['breed_name']} for 96 "
        "is 'Golden Retriever'",
        f"Chihuahua: BreedID=9999 is not in the breed table ({cols['key']})",
    ]


def test_the_wheel_ships_the_maps(tmp_path: Path) -> None:
    """The shipped map and the ASM3 breed list are package data: in the wheel, not only here.
    (--no-build-isolation: the dev extra installs hatchling, so no network is needed.)"""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("labeler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "labeler/data/breedmaps/asm3.csv",
        "labeler/data/asm3/breeds.csv",
        "labeler/data/labels/stanford-dogs.txt",
    } <= names


def test_labeler_check_compares_the_map_with_the_breed_table(
    db_url: str,
    tmp_path: Path,
    tiny_artifact: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from labeler.service.cli import main
    from tests.asm3_fixture import build_asm3

    shelter = build_asm3(db_url, tmp_path, per_breed=1)
    for key, value in shelter.settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABELER_MODEL_DIR", str(tiny_artifact))

    main(["check"])
    out = capsys.readouterr().out
    mapped = "114 labels mapped to BreedID, BreedName, Breed2ID, CrossBreed"
    assert f"ok    breed map: {mapped}; matches table breed" in out

    shipped = demo_shelter.default_breed_map().read_text()
    typo = tmp_path / "typo.csv"
    typo.write_text(
        shipped.replace("golden_retriever,96,Golden Retriever", "golden_retriever,96,Golden")
    )
    monkeypatch.setenv("LABELER_BREED_MAP", str(typo))
    assert main(["check"]) != 0
    out = capsys.readouterr().out
    assert (
        "FAIL  breed map: 1 mapped labels do not match table breed: golden_retriever: "
        "BreedName='Golden' but the breed table's"
    ) in out

    broken = tmp_path / "broken.csv"
    broken.write_text("label,BreedID\ngolden_retreiver,96\n")
    monkeypatch.setenv("LABELER_BREED_MAP", str(broken))
    assert main(["check"]) != 0
    out = capsys.readouterr().out
    assert f"FAIL  breed map: breed map {broken}, line 2: unknown label 'golden_retreiver'" in out
