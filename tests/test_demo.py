"""The README's first command: `labeler demo` on the embedded SQLite default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from labeler import demo
from labeler.schema import FAILED, LABELLED, NEEDS_REVIEW, photo
from tests.helpers import FULLFRAME, REPO


def _outcomes(database: Path) -> dict[int, tuple[str, str | None]]:
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        rows = {int(r.photo_id): (r.status, r.breed) for r in conn.execute(select(photo))}
        cat = conn.execute(text("SELECT breed FROM animals WHERE species = 'cat'")).scalar()
    engine.dispose()
    assert cat is None, "the cat is filtered out and must not get a breed"
    return rows


def test_demo_with_the_committed_model_and_sample_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LABELER_MODEL_DIR", raising=False)
    monkeypatch.setattr(demo, "SHARED_SAMPLE", FULLFRAME)
    assert demo.run_demo(tmp_path) == 0
    out = capsys.readouterr().out

    rows = _outcomes(tmp_path / "shelter.db")
    expected = sum(min(demo.PER_BREED, len(list(d.iterdir()))) for d in FULLFRAME.iterdir())
    assert len(rows) == expected + 1  # + the dog whose photo is lost
    assert rows.pop(901) == (FAILED, None)
    assert all(status in (LABELLED, NEEDS_REVIEW) and breed for status, breed in rows.values())
    version = json.loads((REPO / "models" / "baseline-cnn" / "metadata.json").read_text())
    assert f"version {version['version']}" in out
    assert "worth:    first guess right on" in out
    assert "does not exist under the photo root" in out


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
    rows = _outcomes(tmp_path / "demo" / "shelter.db")
    assert rows.pop(901)[0] == FAILED
    assert len(rows) == 12
    assert all(status in (LABELLED, NEEDS_REVIEW) for status, _ in rows.values())
