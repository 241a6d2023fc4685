"""Tier 2 of context memory: each customer's built context cached in Redis.

Redis is shared by every server process (and machine) that points at the same
``REDIS_URL``, so a context built once is a hit everywhere. It is an optimisation, never a
dependency: down, slow or never configured, every call returns at once (None / no-op),
nothing is raised to the caller, and ``stats()`` says it happened. Three things make
that true:

- tight socket timeouts (connect 20 ms, read 10 ms by default) and no client retries;
- a circuit breaker: after a failure Redis is skipped for 1 s, doubling up to 30 s while
  it keeps failing, then one call probes it again;
- ``redis`` is imported on first use (or by ``warm()`` in the background), not at
  import time: server start-up does not pay ~90 ms for it.

Values carry the version they were built from; a put never replaces a newer version
(checked inside Redis by a Lua script, so concurrent writers and late retries from a
paused connection cannot go back in time). Readers compare the version with their own.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

log = logging.getLogger(__name__)

REDIS_URL_ENV = "REDIS_URL"
KEY_PREFIX = "activitybi:ctx:"
VERSION_DIGITS = 39
"""Versions are stored zero-padded so that Lua compares them exactly as strings (Lua
numbers are doubles and would round anything above 2**53); 39 digits hold 2**128 - 1."""
MAX_VERSION = 2**128 - 1

# KEYS[1] = key; ARGV = padded version, payload, ttl in ms. Returns 1 if written, 0 if the
# stored version is newer. A value of another type or format is replaced, not kept forever.
_PUT_IF_NOT_OLDER = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and #cur == #ARGV[1] and cur > ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

T = TypeVar("T")


def redis_key(customer: str, prefix: str = KEY_PREFIX) -> str:
    """The key of a customer's context: a hash, so an email address never appears in Redis."""
    return prefix + hashlib.sha256(customer.encode()).hexdigest()


class RedisTier:
    """A version-guarded, fail-fast Redis cache of context JSON, safe to share across threads."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float = 3600.0,
        connect_timeout: float = 0.020,
        timeout: float = 0.010,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.url = url
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.prefix = prefix
        self._redis: Redis | None = None
        self._put_script: Script | None = None
        self._response_error: type[Exception] = Exception  # redis.ResponseError once built
        self._broken: str | None = None  # the client cannot be built at all (no package, bad URL)
        self._build_lock = threading.Lock()
        self._lock = threading.Lock()  # breaker state and counters
        self._open_until = 0.0  # monotonic time; 0 = breaker closed
        self._backoff = backoff_initial
        self._probing = False
        self._counts = dict.fromkeys(
            ("hits", "misses", "errors", "skipped", "writes", "stale_writes", "deletes", "trips"),
            0,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> RedisTier | None:
        """A tier for ``$REDIS_URL``, or None when it is unset (or not a Redis URL)."""
        from activitybi import config

        url = config.settings().redis_url
        if not url:
            return None
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            log.warning("%s is not a redis://, rediss:// or unix:// URL: no Redis", REDIS_URL_ENV)
            return None
        return cls(url, **kwargs)

    # -- the cache -----------------------------------------------------------------------

    def key(self, customer: str) -> str:
        return redis_key(customer, self.prefix)

    def get(self, customer: str) -> tuple[int, bytes] | None:
        """(version, context JSON) when Redis has it; None on a miss or any trouble."""
        key = self.key(customer)
        got = self.call(lambda r: r.hmget(key, ["v", "p"]))
        if got is None:
            return None
        version, payload = got
        if version is None or payload is None:
            self._count("misses")
            return None
        try:
            v = int(version)
        except ValueError:
            self._count("misses")
            return None
        self._count("hits")
        return v, payload if isinstance(payload, bytes) else payload.encode()

    def put(self, customer: str, version: int, payload: bytes) -> bool:
        """Stores the context unless Redis holds a newer version; True if it was written."""
        if not 0 <= version <= MAX_VERSION:
            raise ValueError(f"version must be in [0, 2**128), not {version}")
        key = self.key(customer)
        args: list[bytes | str | int] = [str(version).zfill(VERSION_DIGITS), payload, self.ttl_ms]

        def run(r: Redis) -> int:
            script = self._put_script
            if script is None:
                script = self._put_script = r.register_script(_PUT_IF_NOT_OLDER)
            return int(script(keys=[key], args=args))

        written = self.call(run)
        if written is None:
            return False
        self._count("writes" if written else "stale_writes")
        return bool(written)

    def delete(self, customer: str) -> None:
        """Forgets a customer's context (best effort, like everything here)."""
        key = self.key(customer)
        if self.call(lambda r: r.delete(key)) is not None:
            self._count("deletes")

    def stats(self) -> dict[str, int]:
        """Counters since start, plus ``open`` (1 while the breaker skips Redis)."""
        with self._lock:
            out = dict(self._counts)
            out["open"] = int(self._open_until != 0.0 or self._broken is not None)
        return out

    def warm(self, background: bool = True) -> None:
        """Imports redis and connects off the request path (start-up calls this)."""

        def run() -> None:
            self.call(lambda r: r.ping())

        if background:
            threading.Thread(target=run, name="activitybi-redis-warm", daemon=True).start()
        else:
            run()

    def close(self) -> None:
        client = self._redis
        if client is not None:
            try:
                client.close()
            except Exception:  # closing is best effort; nothing here may raise
                log.debug("closing the Redis client failed", exc_info=True)

    # -- breaker -------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _allow(self) -> bool:
        """True if this call may use Redis: breaker closed, or the one probe after a pause."""
        with self._lock:
            if self._open_until == 0.0:
                return True
            if not self._probing and time.monotonic() >= self._open_until:
                self._probing = True
                return True
            self._counts["skipped"] += 1
            return False

    def _succeeded(self) -> None:
        with self._lock:
            if self._open_until != 0.0:
                log.info("Redis is back; using it again")
            self._open_until = 0.0
            self._backoff = self.backoff_initial
            self._probing = False

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            self._counts["errors"] += 1
            probe, self._probing = self._probing, False
            now = time.monotonic()
            if not probe and now < self._open_until:
                return  # another call already opened the breaker
            if self._open_until == 0.0:
                log.warning("Redis failed (%s); skipping it for %.1f s", error, self._backoff)
            self._open_until = now + self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            self._counts["trips"] += 1

    def call(self, fn: Callable[[Redis], T]) -> T | None:
        """Runs ``fn`` against Redis unless the breaker says no; None on any failure (other
        users of the same Redis, such as the shared rate limits, go through it too)."""
        if not self._allow():
            return None
        client = self._client()
        if client is None:
            with self._lock:
                self._probing = False
                self._counts["skipped"] += 1
            return None
        try:
            result = fn(client)
        except self._response_error as e:
            # Redis answered (a wrong type, a script error): it is up, the breaker stays shut.
            self._count("errors")
            self._succeeded()
            log.warning("Redis refused a command: %s", e)
            return None
        except Exception as e:  # refused, timed out, reset...: never the caller's problem
            self._failed(e)
            return None
        self._succeeded()
        return result

    def _client(self) -> Redis | None:
        """The client, built on first use; None while another thread builds it, or if it
        cannot be built."""
        client = self._redis
        if client is not None or self._broken is not None:
            return client
        if not self._build_lock.acquire(blocking=False):
            return None
        try:
            if self._redis is None and self._broken is None:
                try:
                    self._redis = self._build()
                except Exception as e:
                    self._broken = f"{type(e).__name__}: {e}"
                    log.warning("Redis is off: cannot use %s (%s)", REDIS_URL_ENV, self._broken)
            return self._redis
        finally:
            self._build_lock.release()

    def _build(self) -> Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.exceptions import ResponseError
        from redis.retry import Retry

        self._response_error = ResponseError

        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),  # redis-py >= 6 retries 3 times by default
            "health_check_interval": 0,
        }
        # No CLIENT SETINFO round trips on each new connection.
        if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
            kwargs["driver_info"] = None
        else:
            kwargs["lib_name"] = None
            kwargs["lib_version"] = None
        return redis.Redis.from_url(self.url, **kwargs)


def from_env(**kwargs: Any) -> RedisTier | None:
    """``RedisTier.from_env``: None unless ``$REDIS_URL`` is set."""
    return RedisTier.from_env(**kwargs)
