"""With `LABELER_IMAGE_KIND=auto` and a photo root, a value shaped like a path that is not
there gets a path's reason, never base64's or Pillow's."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from labeler.photos.decoding import ImageError
from labeler.photos.fetching import LoaderConfig, detect_kind, load_image
from tests.helpers import png_bytes


def _reason(value: str, config: LoaderConfig) -> str:
    with pytest.raises(ImageError) as failed:
        load_image(value, config)
    return str(failed.value)


def test_a_long_relative_path_is_a_missing_file_not_broken_base64(tmp_path: Path) -> None:
    config = LoaderConfig(photo_root=tmp_path)
    long_path = "/".join(["kennel", "a" * 80] * 50) + "/rex.jpg"
    assert len(long_path) > 4000
    assert detect_kind(long_path, config) == "path"
    reason = _reason(long_path, config)
    assert "does not exist under the photo root" in reason and "base64" not in reason


def test_an_overlong_name_of_letters_is_a_file_name_too_long(tmp_path: Path) -> None:
    config = LoaderConfig(photo_root=tmp_path)
    name = "Rex" * 200
    assert detect_kind(name, config) == "path"
    reason = _reason(name, config)
    assert "too long" in reason.lower() and "pillow" not in reason.lower()


def test_base64_photos_and_corrupt_base64_keep_their_kind(tmp_path: Path) -> None:
    config = LoaderConfig(photo_root=tmp_path)
    photo = base64.b64encode(png_bytes((10, 200, 30))).decode("ascii")
    assert detect_kind(photo, config) == "base64"
    corrupt = base64.b64encode(bytes(range(256)) * 4).decode("ascii")
    assert detect_kind(corrupt, config) == "base64"
    assert detect_kind("ab" * 40, config) == "hex"


def test_without_a_photo_root_nothing_changes() -> None:
    assert detect_kind("Rex" * 200, LoaderConfig()) == "base64"
