"""prepare_batch on a decode pool: same inputs, same order, same failures as one thread, and a
stop request ends the batch without failing the photos not yet prepared."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from labeler.core.domain import PhotoStatus, SourceRow
from labeler.labelling.batches import prepare_batch
from labeler.model.preprocessing import PreprocessingConfig
from labeler.photos.fetching import LoaderConfig

CONFIG = PreprocessingConfig(image_size=(16, 16))
LOADER = LoaderConfig(kind="bytes")


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def rows_with_failures() -> tuple[list[str], dict[str, SourceRow], dict[str, str]]:
    ids = [f"p{i:02d}" for i in range(12)]
    rows = {i: SourceRow(image=jpeg(n)) for n, i in enumerate(ids)}
    rows["p03"] = SourceRow(image=b"<html>not a photo</html>")
    rows["p07"] = SourceRow(image=jpeg(7)[:40])  # truncated
    del rows["p09"]  # vanished from the source
    return ids, rows, {"p05": "the source cannot read this row: boom"}


def prepare(pool: ThreadPoolExecutor | None, cancel=lambda: False):  # type: ignore[no-untyped-def]
    ids, rows, unreadable = rows_with_failures()
    return prepare_batch(
        "t", ids, rows, unreadable, loader=LOADER, preprocessing=CONFIG, cancel=cancel, pool=pool
    )


def test_a_pool_prepares_what_one_thread_prepares_in_claim_order() -> None:
    alone = prepare(None)
    with ThreadPoolExecutor(max_workers=3) as pool:
        pooled = prepare(pool)
    assert pooled.ids == alone.ids == ["p00", "p01", "p02", "p04", "p06", "p08", "p10", "p11"]
    assert alone.inputs is not None and pooled.inputs is not None
    np.testing.assert_array_equal(pooled.inputs, alone.inputs)
    failed = {o.photo_id: o.status for o in pooled.failures}
    assert failed == {
        "p03": PhotoStatus.FAILED,
        "p05": PhotoStatus.FAILED,
        "p07": PhotoStatus.FAILED,
        "p09": PhotoStatus.GONE,
    }
    assert [o.error for o in pooled.failures] == [o.error for o in alone.failures]
    assert "HTML" in next(o.error for o in pooled.failures if o.photo_id == "p03")


@pytest.mark.parametrize("threads", [None, 2])
def test_a_stop_request_ends_the_batch_without_failing_the_rest(threads: int | None) -> None:
    seen = 0
    lock = threading.Lock()

    def cancel() -> bool:  # true once a few photos have started decoding
        nonlocal seen
        with lock:
            seen += 1
            return seen > 6

    pool = ThreadPoolExecutor(max_workers=threads) if threads else None
    try:
        batch = prepare(pool, cancel)
    finally:
        if pool:
            pool.shutdown()
    prepared = set(batch.ids)
    failed = {o.photo_id for o in batch.failures if o.status == PhotoStatus.FAILED}
    assert len(prepared) < 8  # stopped before the end
    # Only photos at fault failed; none was failed for being cut short by the stop.
    assert failed <= {"p03", "p05", "p07"}
