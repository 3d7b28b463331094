"""Pseudonymous keys: patient and study identifiers never leave the DICOM header.

A key is ``HMAC-SHA256(secret, identifier)``, truncated. The secret is this user's, kept
outside every dataset (``~/.config/lsms-napari/secret``, or ``LSMS_NAPARI_SECRET``), so a
shared dataset cannot be reversed by hashing guessed patient IDs, while the same patient
always gets the same key on this machine (which keeps per-patient splits stable).

Identifiers themselves reach a dataset only on explicit request: ``dicom_identifiers`` reads
them for ``AnnotationDataset.add(..., identifiers=..., include_identifiers=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import time
from pathlib import Path

SECRET_ENV = "LSMS_NAPARI_SECRET"
# What ``dicom_identifiers`` reads (DICOM keywords), stored only with ``include_identifiers``.
IDENTIFIER_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                     "InstitutionName", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


MIN_SECRET_BYTES = 16  # a shorter (or empty) secret could be guessed, and the keys then reversed
_SECRET_HEX_CHARS = 64  # what ``user_secret`` writes: 32 random bytes as hex
_YOUNG_SECONDS = 5.0  # a secret file this young may still be being written by another process


class SecretError(ValueError):
    """This user's secret is unusable (empty, too short, not a file); the message says what to do."""


def secret_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "lsms-napari" / "secret"


def user_secret() -> bytes:
    """This user's secret: ``LSMS_NAPARI_SECRET``, else the secret file, created (32 random bytes as
    hex, mode 0600) on first use.

    Several processes may create it at once: each writes a complete secret under a temporary name
    and links it into place only if no secret is there yet, so every one of them ends with the
    winner's secret. An existing file with fewer than MIN_SECRET_BYTES is refused (SecretError),
    never used and never replaced.
    """
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    path = secret_path()
    if not os.path.lexists(path):
        _create_secret(path)
    return _read_secret(path)


def _create_secret(path: Path) -> None:
    """Put a new secret at ``path`` unless one appears there first (then the other process won)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(_SECRET_HEX_CHARS // 2))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # atomic, and never replaces: the first complete secret wins
        except FileExistsError:
            pass  # another process linked its secret first: use that one
        except OSError:  # no hard links on this file system: write in place, exclusively
            _create_in_place(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _create_in_place(path: Path) -> None:
    """Fallback without hard links: create exclusively and write the secret in one call (readers of a
    file caught half-written wait for it, see ``_read_secret``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(_SECRET_HEX_CHARS // 2))
        handle.flush()
        os.fsync(handle.fileno())


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``; a short file that was just created is read again until it is complete."""
    deadline = time.monotonic() + 2 * _YOUNG_SECONDS
    while True:
        data, age = _read_regular(path)
        secret = data.strip()
        if len(secret) >= MIN_SECRET_BYTES and (age > _YOUNG_SECONDS or len(secret) >= _SECRET_HEX_CHARS
                                                or data.endswith(b"\n")):
            return secret
        if age > _YOUNG_SECONDS or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # another process (an older lsms-napari) is still writing it
    if len(secret) >= MIN_SECRET_BYTES:
        return secret
    raise SecretError(
        f"the pseudonymisation secret {path} holds {len(secret)} bytes; a secret needs at least "
        f"{MIN_SECRET_BYTES}, or the patient keys it makes can be computed by anyone: restore it from a "
        f"backup, or delete it and a new random one is made (patients then get new keys, which no longer "
        f"match datasets saved before), or set {SECRET_ENV}")


def _read_regular(path: Path) -> tuple[bytes, float]:
    """(bytes, age in seconds) of a regular file; SecretError for a FIFO, a folder or a device."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"the pseudonymisation secret {path} is not a regular file: delete it (a new secret "
                              f"is made) or set {SECRET_ENV}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(1 << 16)
    finally:
        os.close(fd)
    return data, time.time() - info.st_mtime


def pseudonymous_key(identifier: str, prefix: str = "p", secret: bytes | None = None) -> str:
    """``prefix-<16 hex>`` for an identifier (patient ID, study UID, SOP instance UID)."""
    digest = hmac.new(secret if secret is not None else user_secret(), identifier.encode(), hashlib.sha256)
    return f"{prefix}-{digest.hexdigest()[:16]}"


def dicom_identifiers(path: str | os.PathLike) -> dict[str, str]:
    """The identifiers of ``IDENTIFIER_FIELDS`` a DICOM file holds, as text (PatientName as ``Family^Given``).

    Only for users who opted in to keeping identifiers; empty for a file without them. The
    pixel data is not read.
    """
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    found = {}
    for keyword in IDENTIFIER_FIELDS:
        value = getattr(header, keyword, None)
        if value not in (None, ""):
            found[keyword] = str(value)
    return found
