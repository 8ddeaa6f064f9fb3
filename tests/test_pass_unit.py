"""Unit tests of the labelling pass against the in-memory store: no database, no Keras.

Each test runs a whole pass over a few tiny PNGs and checks what the store holds afterwards."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from labeler.core.domain import PhotoStatus, Prediction, RunStatus
from labeler.decide.decision import AUDIT_REASON, Thresholds
from labeler.labelling.passes import LabellingPass, PassConfig
from labeler.model.preprocessing import PreprocessingConfig
from labeler.photos.fetching import LoaderConfig
from tests.fake_store import FakeStore, transient

POISON = 13  # a red value the fake classifier cannot take


def png(red: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (red, 0, 0)).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class FakeArtifact:
    preprocessing: PreprocessingConfig = field(
        default_factory=lambda: PreprocessingConfig(image_size=(4, 4))
    )


@dataclass
class FakeClassifier:
    """Confidence = red / 255; a batch holding the POISON red fails, and so does that photo."""

    version: str = "fake-1"
    runtime_name: str = "fake"
    artifact: FakeArtifact = field(default_factory=FakeArtifact)
    batches: int = 0
    on_predict: threading.Event | None = None  # set (once) when the first batch arrives

    def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]:
        self.batches += 1
        reds = [round(float(image[..., 0].mean())) for image in batch]
        if POISON in reds:
            raise ValueError("NaN in the logits")
        return [Prediction((("beagle", r / 255), ("pug", 1 - r / 255))[:k]) for r in reds]


def make_pass(
    store: FakeStore,
    classifier: FakeClassifier | None = None,
    stop: threading.Event | None = None,
    **config: object,
) -> LabellingPass:
    # One batch prepared ahead: the release counts below are written for exactly one.
    settings: dict[str, object] = {
        "batch_size": 2,
        "prefetch_batches": 1,
        "loader": LoaderConfig(kind="bytes"),
    }
    settings.update(config)
    return LabellingPass(
        store,
        classifier or FakeClassifier(),
        PassConfig(**settings),  # type: ignore[arg-type]
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        stop=stop,
    )


def store_with(**reds: int) -> FakeStore:
    store = FakeStore()
    for photo_id, red in reds.items():
        store.add(photo_id, png(red))
    return store


def test_confident_photos_are_labelled_and_unsure_ones_go_to_review() -> None:
    store = store_with(a=250, b=240, c=60)
    summary = make_pass(store).run()
    assert [store.status_of(p) for p in "abc"] == ["labelled", "labelled", "needs_review"]
    assert store.photos["a"].breed == "beagle"
    assert store.photos["c"].review_reason  # a review reason, not an error
    assert store.photos["c"].attempts == 0
    run = store.runs[summary.run_id]
    assert (run.status, run.labelled, run.needs_review, run.failed) == ("finished", 2, 1, 0)
    assert summary.status == RunStatus.FINISHED
    assert (summary.labelled, summary.needs_review) == (2, 1)
    assert store.claimed() == []


def test_audit_share_sends_confident_results_to_staff() -> None:
    store = store_with(a=250)
    make_pass(store, thresholds=Thresholds(audit_share=1.0)).run()
    assert store.status_of("a") == "needs_review"
    assert store.photos["a"].audit is True
    assert store.photos["a"].review_reason == AUDIT_REASON


def test_a_broken_photo_fails_alone() -> None:
    store = store_with(a=250, c=250)
    store.add("b", b"not an image at all")
    summary = make_pass(store).run()
    assert [store.status_of(p) for p in "abc"] == ["labelled", "failed", "labelled"]
    assert store.photos["b"].attempts == 1
    assert store.photos["b"].last_error
    assert summary.failed == 1
    assert len(summary.errors) == 1


def test_a_vanished_row_is_gone_not_failed() -> None:
    store = store_with(a=250)
    store.add("b", png(250), in_source=False)
    summary = make_pass(store).run()
    assert store.status_of("b") == "gone"
    assert store.photos["b"].attempts == 0
    assert (summary.gone, summary.failed) == (1, 0)


def test_an_unreadable_row_is_narrowed_down_and_fails_alone() -> None:
    store = store_with(a=250, b=250, d=250)
    store.add("c", png(250), unreadable=True)
    make_pass(store, batch_size=4).run()
    assert [store.status_of(p) for p in "abcd"] == ["labelled", "labelled", "failed", "labelled"]
    assert store.photos["c"].last_error == (
        "the source cannot read this row: division by zero in the source view"
    )


def test_the_classifier_failing_on_one_photo_fails_only_that_photo() -> None:
    store = store_with(a=250, b=POISON)
    classifier = FakeClassifier()
    make_pass(store, classifier).run()
    assert store.status_of("a") == "labelled"
    assert store.status_of("b") == "failed"
    error = store.photos["b"].last_error
    assert error == "classifier error: ValueError: NaN in the logits"
    assert classifier.batches == 3  # the batch, then photo by photo


def test_transient_database_errors_are_retried() -> None:
    store = store_with(a=250, b=250, c=250)
    store.faults = {"claim": [transient()], "save_outcomes": [None, transient()]}
    summary = make_pass(store).run()
    assert [store.status_of(p) for p in "abc"] == ["labelled"] * 3
    assert summary.status == "finished"
    assert store.calls.count("save_outcomes") == 3  # two batches, one retried
    assert store.claimed() == []


def test_retries_run_out_then_the_pass_fails_and_releases_its_claims() -> None:
    store = store_with(a=250, b=250, c=250, d=250)
    store.faults = {"save_outcomes": [transient(), transient(), transient()]}
    with pytest.raises(Exception, match="server closed the connection"):
        make_pass(store).run()
    run = store.runs[1]
    assert run.status == "failed"
    assert run.errors is not None and run.errors.startswith("pass stopped: OperationalError")
    assert store.claimed() == []  # the batch being saved and the one prepared ahead
    assert all(p.status == "pending" for p in store.photos.values())


def test_a_permanent_error_fails_the_pass_at_once() -> None:
    store = store_with(a=250, b=250)
    store.faults = {"save_outcomes": [RuntimeError("disk full")]}
    with pytest.raises(RuntimeError, match="disk full"):
        make_pass(store).run()
    assert store.calls.count("save_outcomes") == 1  # not retried
    assert store.runs[1].status == "failed"
    assert store.runs[1].errors == "pass stopped: RuntimeError: disk full"
    assert store.claimed() == []


def test_a_failed_preparation_releases_its_batch_and_fails_the_pass() -> None:
    store = store_with(a=250, b=250, c=250, d=250)
    store.faults = {"fetch_rows": [None, RuntimeError("source table dropped")]}
    with pytest.raises(RuntimeError, match="source table dropped"):
        make_pass(store).run()
    # The first batch was classified and saved; the second one's claims went back.
    assert [store.status_of(p) for p in "abcd"] == ["labelled", "labelled", "pending", "pending"]
    assert store.claimed() == []
    assert store.runs[1].released == 2
    assert store.runs[1].status == "failed"


def test_stop_finishes_the_current_batch_and_releases_the_prepared_one() -> None:
    store = store_with(a=250, b=250, c=250, d=250, e=250, f=250)
    stop = threading.Event()
    second_claim = threading.Event()
    store.on_claim = lambda ids: second_claim.set() if "c" in ids else None

    class StopsWhileClassifying(FakeClassifier):
        def predict(self, batch: np.ndarray, k: int = 3) -> list[Prediction]:
            # The next batch is claimed while this one is classified; SIGTERM comes now.
            assert second_claim.wait(timeout=30)
            stop.set()
            return super().predict(batch, k)

    summary = make_pass(store, StopsWhileClassifying(), stop=stop).run()
    assert [store.status_of(p) for p in "ab"] == ["labelled", "labelled"]
    assert all(store.status_of(p) == "pending" for p in "cdef")
    assert store.claimed() == []
    assert summary.status == "interrupted"
    assert store.runs[summary.run_id].status == "interrupted"
    assert store.runs[summary.run_id].released == 2
    assert summary.released == 2
    assert "claim" not in store.calls[store.calls.index("release") :]  # nothing claimed after


def test_an_animal_the_target_refuses_fails_alone() -> None:
    store = FakeStore(grouped=True, refuse={"rex": "value too long for type character(10)"})
    for photo_id, animal in (("a", "rex"), ("b", "rex"), ("c", "fido"), ("d", "bella")):
        store.add(photo_id, png(250 if animal != "bella" else 60), group_id=animal)
    summary = make_pass(store, batch_size=3).run()
    assert store.animals == {"rex": "failed", "fido": "labelled", "bella": "needs_review"}
    assert store.animal_errors["rex"] == (
        "deciding an animal failed: value too long for type character(10)"
    )
    assert summary.status == "finished"
    assert summary.animals == {"failed": 1, "labelled": 1, "needs_review": 1}
    assert summary.errors == [f"animal: {store.animal_errors['rex']}"]
    assert store.calls.count("settle_group") == 3  # each animal once, as its photos were done
    assert store.claimed() == []


@pytest.mark.parametrize("database_wide", [False, True])
def test_a_locked_record_waits_for_the_next_pass(database_wide: bool) -> None:
    store = FakeStore(grouped=True, locked={"rex": database_wide})
    for photo_id, animal in (("a", "rex"), ("b", "rex"), ("c", "fido"), ("d", "bella")):
        store.add(photo_id, png(250 if animal != "bella" else 60), group_id=animal)
    summary = make_pass(store, batch_size=3).run()
    assert summary.status == "finished"
    # Tried once in the pass (not after every batch), no failure, no attempt: still pending.
    assert store.calls.count("settle_group") == 3
    assert store.animals == {"rex": "pending", "fido": "labelled", "bella": "needs_review"}
    assert "fail_group" not in store.calls
    assert summary.animals == {
        "locked (tried again next pass)": 1,
        "labelled": 1,
        "needs_review": 1,
    }
    assert summary.errors == ["animal: deciding an animal: locked"]


def test_a_missing_grant_is_said_once_per_pass() -> None:
    store = FakeStore(grouped=True, denied={"rex", "fido"})
    for photo_id, animal in (("a", "rex"), ("b", "fido"), ("c", "bella"), ("d", "bella")):
        store.add(photo_id, png(250 if animal != "bella" else 60), group_id=animal)
    summary = make_pass(store, batch_size=1).run()
    assert summary.status == "finished"
    assert summary.animals == {"write denied": 2, "needs_review": 1}
    assert len(summary.errors) == 1 and "may not update the target" in summary.errors[0]
    assert store.calls.count("settle_group") == 3, "a denied animal is not retried per batch"
    assert "fail_group" not in store.calls


def test_max_rows_limits_the_pass() -> None:
    store = store_with(a=250, b=250, c=250, d=250, e=250)
    summary = make_pass(store, max_rows=3).run()
    assert summary.labelled == 3
    assert sorted(p for p, row in store.photos.items() if row.status == "labelled") == list("abc")
    assert store.claimed() == []


def test_statuses_are_the_stored_strings() -> None:
    assert PhotoStatus.NEEDS_REVIEW == "needs_review"
    assert f"{RunStatus.INTERRUPTED}" == "interrupted"
    from labeler.store import schema

    assert tuple(s.value for s in PhotoStatus) == schema.STATUSES
