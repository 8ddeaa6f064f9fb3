"""labeler.photos.fetching: ``auto`` detection by what decodes to an image, confinement to the photo
root under a symlink race, and files that are not regular files."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.photos.decoding import ImageError
from labeler.photos.fetching import (
    LoaderConfig,
    detect_kind,
    load_bytes,
    load_image,
    reference_of,
)
from labeler.photos.files import read_photo_file


def pattern(width: int = 8, height: int = 6) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 30 % 256, y * 40 % 256, (x + y) * 15 % 256], axis=-1).astype(np.uint8)


def png(arr: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pattern() if arr is None else arr).save(buf, "PNG")
    return buf.getvalue()


def error_of(fn: object) -> str:
    with pytest.raises(ImageError) as info:
        fn()  # type: ignore[operator]
    return str(info.value)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "rex.png").write_bytes(png())
    return photos


# --- content-addressed stores ----------------------------------------------------------------


def test_extensionless_content_addressed_path_is_read_as_a_path(root: Path) -> None:
    data = png()
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{digest[:2]}/{digest[2:4]}/{digest}"
    (root / relative).parent.mkdir(parents=True)
    (root / relative).write_bytes(data)
    (root / digest).write_bytes(data)  # a flat store: the bare hash as the file name
    config = LoaderConfig(photo_root=root)
    for value in (relative, digest, relative.encode(), digest.encode()):
        assert detect_kind(value, config) == "path", value
        out, kind = load_image(value, config)
        assert kind == "path"
        np.testing.assert_array_equal(out, pattern())
    assert reference_of(relative.encode(), "path") == relative


def test_content_addressed_path_without_the_file_says_so(root: Path) -> None:
    relative = "ab/cd/" + "e3" * 32
    assert error_of(lambda: load_image(relative, LoaderConfig())) == (
        "the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set"
    )
    assert error_of(lambda: load_image(relative, LoaderConfig(photo_root=root))) == (
        f"photo file {relative!r} does not exist under the photo root"
    )


# --- text encodings of a photo ---------------------------------------------------------------


def base64url_png() -> str:
    data = png(pattern(9, 7))
    text = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in text or "_" in text  # really differs from standard base64
    return text


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: base64url_png(), "base64"),
        (lambda: "\ufeff" + base64.b64encode(png(pattern(9, 7))).decode(), "base64"),
        (lambda: b"\xef\xbb\xbf" + base64.b64encode(png(pattern(9, 7))), "base64"),
        (lambda: png(pattern(9, 7)).hex(), "hex"),
        (lambda: png(pattern(9, 7)).hex().upper(), "hex"),
        (lambda: "\\x" + png(pattern(9, 7)).hex(), "hex"),  # PostgreSQL's bytea text output
        (lambda: ("0x" + png(pattern(9, 7)).hex()).encode(), "hex"),  # MySQL HEX() in a BLOB
    ],
    ids=["base64url", "bom-base64", "bom-base64-bytes", "hex", "hex-upper", "pg-hex", "0x-hex"],
)
def test_text_that_decodes_to_an_image_is_that_image(make: object, kind: str) -> None:
    value = make()  # type: ignore[operator]
    assert detect_kind(value) == kind
    out, found = load_image(value, LoaderConfig())
    assert found == kind
    np.testing.assert_array_equal(out, pattern(9, 7))


def test_hex_text_that_is_not_an_image_says_hexadecimal() -> None:
    value = hashlib.sha256(b"x").hexdigest()  # a hash: no file, no image
    message = error_of(lambda: load_image(value, LoaderConfig()))
    assert message.startswith("the column holds hexadecimal text that does not decode to an image")
    assert "no photo root" in message  # the other reading it could have had
    rooted = error_of(lambda: load_image(value, LoaderConfig(photo_root=Path("/nonexistent"))))
    assert "nor names a file under the photo root" in rooted


def test_text_that_is_nothing_recognisable_says_what_it_is() -> None:
    assert error_of(lambda: load_image("Rex", LoaderConfig())) == (
        "the column holds text ('Rex') that is not an image URL, base64 or hex, "
        "and no photo root (LABELER_PHOTO_ROOT) is set to read it as a file name"
    )


def test_bom_before_a_path_or_url_is_ignored(root: Path) -> None:
    config = LoaderConfig(photo_root=root)
    out, kind = load_image("\ufeffrex.png", config)
    assert kind == "path"
    np.testing.assert_array_equal(out, pattern())
    assert detect_kind("\ufeffhttp://photos.example.org/rex.jpg") == "url"
    assert reference_of("\ufeffrex.png", "path") == "rex.png"


# --- paths and URLs in a binary column -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"rex.png",
        b"  rex.png\n",
        b"\xef\xbb\xbfrex.png",
        b"\xff\xfe" + "rex.png".encode("utf-16-le"),
        b"\xfe\xff" + "rex.png".encode("utf-16-be"),
    ],
    ids=["plain", "whitespace", "utf8-bom", "utf16-le", "utf16-be"],
)
def test_path_in_a_binary_column(root: Path, value: bytes) -> None:
    config = LoaderConfig(photo_root=root)
    assert detect_kind(value, config) == "path"
    out, kind = load_image(value, config)
    assert kind == "path"
    np.testing.assert_array_equal(out, pattern())
    assert reference_of(value, kind) == "rex.png"


def test_path_in_a_binary_column_without_a_root_is_not_called_plain_text() -> None:
    value = b"dogs/2024/rex.jpg"
    assert detect_kind(value) == "path"
    assert error_of(lambda: load_image(value, LoaderConfig())) == (
        "the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set"
    )


def test_url_in_a_binary_column() -> None:
    value = b"https://photos.example.org/rex.jpg"
    assert detect_kind(value) == "url"
    message = error_of(lambda: load_image(value, LoaderConfig()))
    assert message.startswith("photo URL host 'photos.example.org' is not in the allow-list")
    assert reference_of(value, "url") == "https://photos.example.org/rex.jpg"


def test_text_in_a_binary_column_is_still_described() -> None:
    value = b"Rex, 3 years old, very good boy"
    assert detect_kind(value) == "bytes"
    assert error_of(lambda: load_image(value, LoaderConfig())) == (
        "not an image Pillow can read (it looks like plain text)"
    )


# --- the photo root under a race -------------------------------------------------------------


def test_symlinks_inside_the_root_keep_working(root: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "relative.png").symlink_to("../rex.png")
    (root / "sub" / "absolute.png").symlink_to(root / "rex.png")
    (root / "alias").symlink_to("sub")
    (root / "self").symlink_to(root)
    config = LoaderConfig(photo_root=root)
    for value in ("sub/relative.png", "sub/absolute.png", "alias/relative.png", "self/rex.png"):
        out, _ = load_image(value, config)
        np.testing.assert_array_equal(out, pattern(), err_msg=value)


def test_root_given_through_a_symlink(root: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked-root"
    linked.symlink_to(root)
    (root / "abs.png").symlink_to(linked / "rex.png")  # written with the configured path
    out, _ = load_image("abs.png", LoaderConfig(photo_root=linked))
    np.testing.assert_array_equal(out, pattern())


@pytest.mark.parametrize("moment", ["a", "x.png"])
def test_swap_between_check_and_open_is_caught(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """The swap happens exactly when the component ``moment`` is about to be opened."""
    inside, secret = pattern(), np.full((6, 8, 3), 7, np.uint8)
    (root / "a").mkdir()
    (root / "a" / "x.png").write_bytes(png(inside))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(png(secret))
    real_open = os.open
    swapped: list[str] = []

    def open_with_swap(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == moment and not swapped:
            os.rename(root / "a", root / "a.real")
            os.symlink(outside, root / "a")
            swapped.append(moment)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_with_swap)
    try:
        out, _ = load_image("a/x.png", LoaderConfig(photo_root=root))
    except ImageError as exc:
        assert "photo root" in str(exc), str(exc)  # refused: does not exist, or leads outside
    else:
        np.testing.assert_array_equal(out, inside)  # the directory that was checked
    assert swapped == [moment]


# --- files that are not regular files --------------------------------------------------------


def test_classify_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    assert (
        error_of(lambda: read_photo_file(fifo, 1000)) == "not a regular file (a FIFO (named pipe))"
    )


@pytest.mark.parametrize(
    ("path", "what"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_classify_refuses_a_device(path: str, what: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"no {path} here")
    assert error_of(lambda: read_photo_file(path, 1000)) == f"not a regular file ({what})"


def test_classify_reads_regular_files_within_the_limit(tmp_path: Path) -> None:
    photo = tmp_path / "rex.png"
    photo.write_bytes(png())
    assert read_photo_file(photo, 10_000) == png()
    assert error_of(lambda: read_photo_file(photo, 10)).startswith("photo file is ")
    assert error_of(lambda: read_photo_file(tmp_path, 10)) == "not a regular file (a directory)"
    assert error_of(lambda: read_photo_file(tmp_path / "missing.png", 10)) == (
        "cannot open: No such file or directory"
    )


def test_kind_path_still_works_with_a_root(root: Path) -> None:
    config = replace(LoaderConfig(photo_root=root), kind="path")
    data, kind = load_bytes("rex.png", config)
    assert kind == "path" and data == png()


def test_classify_command_refuses_a_fifo(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler.service.cli import main

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    photo = tmp_path / "rex.png"
    photo.write_bytes(png())
    code = main(["classify", "--model", str(tiny_artifact), str(fifo), str(photo)])
    out = capsys.readouterr().out
    assert code == 1  # one file refused, the other classified
    assert f"{fifo}: error: not a regular file (a FIFO (named pipe))" in out
    assert any(line.startswith(f"{photo}: ") and "%" in line for line in out.splitlines())
