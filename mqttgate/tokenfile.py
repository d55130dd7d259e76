"""The API token kept in a file: read it, or create it once (mode 0600).

Used by embedded mode (``<data-dir>/api-token``) and by ``MQTTGATE_API_TOKEN_FILE``
(docker compose keeps it on the data volume), so a first start needs no
secret set by hand and later starts keep the same token.
"""

from __future__ import annotations

import contextlib
import os
import secrets


def load_or_create_token(path: str) -> tuple[str, bool]:
    """The persisted API token and whether it was created now (file mode 0600)."""
    try:
        with open(path, encoding="ascii") as handle:
            token = handle.read().strip()
        if token:
            return token, False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # an empty file from an interrupted start
    # O_EXCL: two processes starting at once cannot both write a token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token, True
