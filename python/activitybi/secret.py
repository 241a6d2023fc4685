"""The machine's secret key and the keyed hash built on it.

One key, `$ACTIVITYBI_HOME/secret.key`, serves every keyed hash the tool writes (erased
customers in audit rows, redacted values): the same value always gives the same token, so
joins still work, and without the key a token cannot be turned back into its value. The
key is created on first use with mode 0600 and is never logged or sent to a warehouse.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from activitybi import config

KEY_BYTES = 32


def key(home: Path | None = None) -> bytes:
    """The key, created (0600, durably, by exactly one process) when it does not exist."""
    path = config.Home(home or config.home()).secret_key
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and never overwrites: the first process names the key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def keyed_hash(value: str, home: Path | None = None) -> str:
    """HMAC-SHA256 of `value` under the machine's key, as `hmac:<hex>`."""
    return "hmac:" + hmac.new(key(home), value.encode(), hashlib.sha256).hexdigest()
