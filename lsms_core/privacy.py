"""Pseudonymous keys: patient and study identifiers never leave the DICOM header.

A key is ``HMAC-SHA256(secret, identifier)``, truncated. The secret is this user's, kept
outside every dataset (``~/.config/lsms-napari/secret``, or ``LSMS_NAPARI_SECRET``), so a
shared dataset cannot be reversed by hashing guessed patient IDs, while the same patient
always gets the same key on this machine (which keeps per-patient splits stable).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "LSMS_NAPARI_SECRET"


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
