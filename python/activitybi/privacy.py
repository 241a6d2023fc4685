"""Redaction before enqueue: the policy, the key, and the one way to open a queue that
customer events go into.

Every process that appends customer events opens its queue with `open_queue`: the Rust
queue then runs each event through the policy before its line is written, so what the
detectors find (secrets, card numbers, e-mail addresses, IP addresses) never reaches a
segment, the warehouse or a log. The policy is `ACTIVITYBI_POLICY`, else
`$ACTIVITYBI_HOME/policy.toml` when it exists, else the default (below). The key of the
keyed hashes is the machine's (`activitybi.secret`). Its schema:

```toml
version = 1                      # optional

[default]                        # an action per kind, or per group of kinds
secret = "mask"                  # every secret detector (aws_key, openai_key, jwt, ...)
card = "mask"
email = "hash"
ip = "mask"                      # ipv4 and ipv6
# jwt = "drop"                   # a single kind overrides its group

[[rule]]                         # first matching rule wins; the whole value at the path
activity = "captured_*"          # name or glob (default "*")
path = "feature_json.prompt"     # dotted members; "*" one member, "**" any number
action = "drop"                  # keep | mask | hash | drop
```

Actions: `keep` leaves the value (a `keep` rule also skips the detectors below its path),
`mask` writes `[REDACTED:<kind>]` (`[REDACTED:rule]` for a rule), `hash` writes
`hmac:<32 hex>` (HMAC-SHA256 under the machine's key, the prefix of
`secret.keyed_hash(value)`; e-mail addresses are lowercased first), `drop` removes the
member (or the array element). The top-level `customer` is never changed (isolation
depends on it; a rule may not name it, nor `activity`, `activity_id` or `ts`).

The default: secrets and card numbers masked everywhere, e-mail addresses hashed (joins
still work), IP addresses masked, everything else kept. `Queue(path)` without a redactor
writes events as given: only for tests and benchmarks that need that.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from activitybi import config, secret
from activitybi._core import Queue, Redactor

DEFAULT_SOURCE = "the default policy"

_lock = threading.Lock()
_cache: dict[tuple[Path, str, int], Redactor] = {}


class PolicyError(ValueError):
    """The configured policy file is missing or cannot be used (the message names the
    file, the line and the key)."""


def policy_path(home: Path | None = None) -> Path | None:
    """The policy file in force, or None for the default policy."""
    explicit = config.settings().policy
    if explicit:
        return Path(explicit).expanduser()
    path = config.Home(home or config.home()).policy
    return path if path.exists() else None


def read_policy(path: Path | None) -> tuple[str, str]:
    """The policy's text and the name its errors use."""
    if path is None:
        return "", DEFAULT_SOURCE
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise PolicyError(f"{path}: the redaction policy file does not exist (ACTIVITYBI_POLICY)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the redaction policy: {e}") from None


def build(text: str, source: str, key: bytes) -> Redactor:
    try:
        return Redactor(text, key, source=source)
    except ValueError as e:
        raise PolicyError(str(e)) from None


def redactor(home: Path | None = None) -> Redactor:
    """The redactor of this home's policy and key, one per process (made again when the
    policy file changes), so that its counts add up across the queues of the process."""
    root = home or config.home()
    path = policy_path(root)
    mtime = path.stat().st_mtime_ns if path is not None and path.exists() else 0
    ident = (root, str(path or ""), mtime)
    with _lock:
        found = _cache.get(ident)
        if found is None:
            text, source = read_policy(path)
            found = _cache[ident] = build(text, source, secret.key(root))
        return found


def redact_text(text: str, home: Path | None = None) -> str:
    """`text` with what the detectors find redacted as the policy says (the default policy
    when the configured one cannot be used: a broken policy never lets a secret through),
    for what is kept outside the queue: input a capture path quarantines."""
    try:
        red = redactor(home)
    except PolicyError:
        red = build("", DEFAULT_SOURCE, secret.key(home))
    event = orjson.dumps({"activity": "quarantined_input", "feature_json": {"raw": text}}).decode()
    kept = orjson.loads(red.redact(event)).get("feature_json", {}).get("raw")
    return kept if isinstance(kept, str) else "[REDACTED:rule]"


def open_queue(path: str | Path, *, home: Path | None = None, **options: Any) -> Queue:
    """`Queue(path, **options)` with the configured redactor: every path that appends
    customer events opens its queue here."""
    return Queue(str(path), redactor=redactor(home), **options)
