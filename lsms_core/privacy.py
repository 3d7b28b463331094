"""Pseudonymous keys: patient and study identifiers never leave the DICOM header.

A key is ``HMAC-SHA256(secret, identifier)``, truncated. The secret is this user's, kept
outside every dataset (``~/.config/lsms-napari/secret``, or ``LSMS_NAPARI_SECRET``), so a
shared dataset cannot be reversed by hashing guessed patient IDs, while the same patient
always gets the same key on this machine (which keeps per-patient splits stable).

Identifiers themselves reach a dataset only on explicit request: ``dicom_identifiers`` reads
them for ``AnnotationDataset.add(..., identifiers=..., include_identifiers=True)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "LSMS_NAPARI_SECRET"
# What ``dicom_identifiers`` reads (DICOM keywords), stored only with ``include_identifiers``.
IDENTIFIER_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                     "InstitutionName", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def secret_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "lsms-napari" / "secret"


def user_secret() -> bytes:
    """This user's secret, created (32 random bytes, mode 0600) on first use."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    path = secret_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


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
