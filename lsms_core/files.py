"""Files on disk, before any reader opens them: is this path a regular file, and its SHA-256."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from .pixels import ImageError


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the file's bytes, read 4 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def array_sha256(array) -> str:
    """SHA-256 (hex) of an array's pixels, shape and dtype: the one content hash of a slice or volume (the widget
    ties proposals to their pixels with it; a 3-D lesion's series key is made from it)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode() + str(array.dtype).encode()).hexdigest()


def check_regular_file(path: Path, wanted: str = "a file") -> None:
    """ImageError, naming the path, unless it is a regular file: says whether it is missing, a dangling
    symlink, a symlink loop, a folder (``wanted`` says what to give instead), a FIFO or a device."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path}: a symbolic link to a missing file ({os.readlink(path)})") from None
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{path}: a symbolic link loop (it leads back to itself through other links): point "
                             "it at the real file") from None
        raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, not {wanted}")
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
        raise ImageError(f"{path}: not a regular file but {what}; reading it could wait forever: give the image "
                         "file itself")
