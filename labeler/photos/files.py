"""Photo files: paths under the photo root, opened without ever leaving it, and files named on
the command line.

Only regular files are read, at most ``max_bytes``, and the type is checked on a handle that
cannot block or trigger a device, so a FIFO or a device is refused instead of hanging. Every
failure is an :class:`ImageError` whose message is the row's recorded reason.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

from labeler.photos.decoding import ImageError, sniff

_MAX_SYMLINKS = 40  # as Linux: more link expansions than this in one path is a loop
_PATH_PROBE_CHARS = 4096  # longer text is never tried as a file name


def _refuse_text(text: str) -> None:
    """A path or URL column that holds a whole document (an error page, JSON) says so."""
    what = None
    if text.startswith("<"):
        what = sniff(text.encode("utf-8", "replace"))
    elif text.startswith(("{", "[")):
        try:
            json.loads(text)
            what = "it looks like JSON text"
        except ValueError:
            pass
    elif "\n" in text:
        what = "it holds several lines of text"
    if what:
        raise ImageError(f"expected a photo path but the column holds text ({what})")


def read_path(text: str, photo_root: Path | None, max_bytes: int) -> bytes:
    """The photo file ``text`` names under ``photo_root``, at most ``max_bytes``."""
    _refuse_text(text)
    if photo_root is None:
        if not re.search(r"[/\\.]", text):  # no folder, no extension: say what it is
            raise ImageError(
                f"the column holds text ({text[:40]!r}) that is not an image URL, base64 or hex, "
                "and no photo root (LABELER_PHOTO_ROOT) is set to read it as a file name"
            )
        raise ImageError("the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set")
    if "\x00" in text:
        raise ImageError("photo path contains a NUL byte")
    if Path(text).is_absolute():
        raise ImageError("photo path is absolute; paths must be relative to the photo root")
    fd = open_under_root(photo_root, text)
    try:
        return _read_regular(fd, max_bytes, repr(text[:200]))
    finally:
        os.close(fd)


def exists_under(text: str, photo_root: Path) -> bool:
    """Whether ``text`` names a regular file under ``photo_root``: how auto detection tells a
    file name from other text, so a refusal only means no."""
    if len(text) > _PATH_PROBE_CHARS or "\x00" in text or "\n" in text or Path(text).is_absolute():
        return False
    try:
        os.close(open_under_root(photo_root, text))
    except ImageError:
        return False
    return True


_O_PATH = getattr(os, "O_PATH", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# O_PATH opens without side effects (a device, a FIFO); elsewhere O_NONBLOCK keeps a FIFO
# from blocking the open.
_WALK_FLAGS = (_O_PATH or (os.O_RDONLY | _O_NONBLOCK)) | _O_NOFOLLOW | _O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC


def _path_hint(text: str) -> str:
    """What a path that was never going to be found under the root looks like."""
    if text.lower().startswith("file:"):
        return " (a file: URL; store the path relative to LABELER_PHOTO_ROOT)"
    if re.match(r"[A-Za-z]:[\\/]", text) or "\\" in text:
        return " (a Windows path; store it relative to LABELER_PHOTO_ROOT, with / between folders)"
    return ""


def open_under_root(root: Path, relative: str) -> int:
    """Open the regular file ``relative`` names under ``root``; return a read-only fd.

    Each component is opened relative to the directory already opened, without following
    links; a symlink is read and expanded here, and may lead anywhere inside the root (an
    absolute target must start with the root) but never out of it. Because every step works on
    opened directories, swapping a checked directory for a link cannot redirect the open.
    """
    shown = repr(relative[:200])
    roots = {os.path.normpath(os.path.abspath(root)), os.path.realpath(root)}
    try:
        root_fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"the photo root cannot be opened: {exc.strerror}") from exc
    dirs = [root_fd]
    pending = list(reversed(relative.split("/")))
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(dirs) == 1:
                    raise ImageError("photo path leads outside the photo root")
                os.close(dirs.pop())
                continue
            more = any(part not in ("", ".") for part in pending)
            target = _link_target(name, dirs[-1])
            if target is not None:
                links += 1
                if links > _MAX_SYMLINKS:
                    raise ImageError(f"photo path {shown} cannot be resolved (symlink loop)")
                if target.startswith("/"):
                    target = _inside(target, roots)
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                pending.extend(reversed(target.split("/")))
                continue
            fd = os.open(name, _WALK_FLAGS, dir_fd=dirs[-1])
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode) and more:
                dirs.append(fd)
                continue
            os.close(fd)
            if more:  # a file used as a folder
                raise ImageError(f"photo file {shown} does not exist under the photo root")
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"photo path {shown} is not a regular file")
            read_fd = os.open(name, _READ_FLAGS, dir_fd=dirs[-1])
            opened = os.fstat(read_fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                os.close(read_fd)
                raise ImageError(f"photo file {shown} changed while it was being opened")
            return read_fd
        raise ImageError(f"photo path {shown} is not a regular file")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageError(
            f"photo file {shown} does not exist under the photo root{_path_hint(relative)}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component became a link after it was checked
            raise ImageError(f"photo file {shown} changed while it was being opened") from exc
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    finally:
        for fd in dirs:
            os.close(fd)


def _link_target(name: str, dir_fd: int) -> str | None:
    """The target of ``name`` in ``dir_fd`` if it is a symlink, else None."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return None  # not a link (or missing: the open says so)
        raise


def _inside(target: str, roots: set[str]) -> str:
    """An absolute link target as a path relative to the photo root, if it is inside."""
    for root in roots:
        if target == root or target.startswith(root.rstrip("/") + "/"):
            return target[len(root) :]
    raise ImageError("photo path leads outside the photo root")


def _read_regular(fd: int, max_bytes: int, shown: str) -> bytes:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"photo path {shown} is not a regular file")
        if info.st_size > max_bytes:
            raise ImageError(f"photo file is {info.st_size} bytes, over the {max_bytes} byte limit")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise ImageError(f"photo file is over the {max_bytes} byte limit")
    return data


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_photo_file(path: str | Path, max_bytes: int) -> bytes:
    """Read a photo file named on the command line: regular files only, at most ``max_bytes``.

    The type is checked on a handle that cannot block or trigger a device before reading, so
    a FIFO or a device is refused instead of hanging or reading without end.
    """
    try:
        probe = os.open(path, (_O_PATH or (os.O_RDONLY | _O_NONBLOCK)) | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}") from exc
    try:
        info = os.fstat(probe)
    finally:
        os.close(probe)
    for test, what in _FILE_TYPES:
        if test(info.st_mode):
            raise ImageError(f"not a regular file ({what})")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}") from exc
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise ImageError("the file changed while it was being opened")
        return _read_regular(fd, max_bytes, repr(str(path)[:200]))
    finally:
        os.close(fd)
