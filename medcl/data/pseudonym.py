"""Pseudonymous keys: HMAC-SHA256 of an identifier with a per-site secret.

The secret is read from ``MEDCL_SITE_SECRET`` (hex or text), else from the file named by
``MEDCL_SITE_SECRET_FILE`` (default ``~/.medcl/site_secret``), which is created with 32
random bytes and mode 0600 on first use. The secret is never logged or written elsewhere:
without it a key cannot be linked back to a patient, and with it the same patient always
gets the same key, so that later scans join the same subject.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_CHARS = 16


def _secret_file() -> Path:
    return Path(os.environ.get("MEDCL_SITE_SECRET_FILE", Path.home() / ".medcl" / "site_secret"))


def site_secret() -> bytes:
    """The site secret, created on first use."""
    env = os.environ.get("MEDCL_SITE_SECRET")
    if env:
        return env.encode()
    path = _secret_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonym(identifier: str, kind: str, secret: bytes | None = None) -> str:
    """A stable key such as ``sub-3f9a…`` for ``identifier``; ``kind`` separates namespaces."""
    if not identifier:
        raise ValueError("cannot pseudonymise an empty identifier")
    secret = site_secret() if secret is None else secret
    digest = hmac.new(secret, f"{kind}\x00{identifier}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:KEY_CHARS]}"
