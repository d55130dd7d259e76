"""The API token kept in a file: read it, or create it once (mode 0600).

Used by embedded mode (``<data-dir>/api-token``) and by ``MQTTGATE_API_TOKEN_FILE``
(docker compose keeps it on the data volume), so a first start needs no
secret set by hand and later starts keep the same token.

Two processes may start at once on one file (replicas sharing a volume, a
restart overlapping the old process). The token is written whole to a
private temporary file first and then published under ``path`` with
``link``, which fails if ``path`` exists: a reader never sees a half-written
file, exactly one token is published, and the loser reads the winner's.
(Creating ``path`` itself with O_EXCL and writing it afterwards let a second
process find it still empty, take it for an interrupted start, delete it and
publish its own token: both then ran with different tokens, or one failed.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile

#: ``link`` errors meaning the file system has no hard links (some network
#: and FUSE file systems): the token is then created in place with O_EXCL.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _read(path: str) -> str | None:
    """The token in ``path``; None if the file is missing or empty."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except FileNotFoundError:
        return None


def load_or_create_token(path: str) -> tuple[str, bool]:
    """The persisted API token and whether it was created now (file mode 0600)."""
    token = _read(path)
    if token is not None:
        return token, False
    token = secrets.token_urlsafe(32)
    fd, temp = tempfile.mkstemp(prefix=".api-token-", dir=os.path.dirname(os.path.abspath(path)))  # 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            existing = _read(path)
            if existing is not None:
                return existing, False  # another process published first
            # An empty file: an older version's interrupted start, or `touch`.
            os.replace(temp, path)
        except OSError as error:
            if error.errno not in _NO_LINKS:
                raise
            _create_in_place(path, token)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return token, True


def _create_in_place(path: str, token: str) -> None:
    # O_EXCL: two processes starting at once cannot both write a token (a
    # loser fails, and the operator sees the error, instead of running with a
    # token that is not in the file).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
