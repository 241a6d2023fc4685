"""Rendered artifacts (chart cards): stored files with an owner, a size and an expiry.

Bytes go under `$ACTIVITYBI_HOME/artifacts/` by default, or to S3 when
`ACTIVITYBI_ARTIFACTS_S3=s3://bucket/prefix` is set (boto3, imported only then; the
standard AWS variables apply, `AWS_ENDPOINT_URL` included). Any server process may store
an artifact, but only the warehouse owner may write DuckDB, so each artifact's row is
appended to a local index (`artifacts/index.jsonl`) that the owner loads into the
`artifacts` table with `sync_to_warehouse`. `expire` deletes expired bytes and rows.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from activitybi import config, ulid
from activitybi.memory.journal import customer_key

S3_ENV = "ACTIVITYBI_ARTIFACTS_S3"
TTL_ENV = "ACTIVITYBI_ARTIFACTS_TTL_DAYS"
DEFAULT_TTL = dt.timedelta(days=30)
_SUFFIX = {"image/png": ".png", "image/svg+xml": ".svg", "text/html": ".html", "application/json": ".json"}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One row of the `artifacts` table (PRD §7). Times are UTC without a zone."""

    artifact_id: str
    customer_id: str
    s3_url: str
    size_bytes: int
    content_type: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat(timespec="milliseconds")
        out["expires_at"] = self.expires_at.isoformat(timespec="milliseconds") if self.expires_at else None
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Artifact:
        return cls(
            artifact_id=d["artifact_id"],
            customer_id=d["customer_id"],
            s3_url=d["s3_url"],
            size_bytes=int(d["size_bytes"]),
            content_type=d.get("content_type"),
            created_at=dt.datetime.fromisoformat(d["created_at"]),
            expires_at=dt.datetime.fromisoformat(d["expires_at"]) if d.get("expires_at") else None,
        )

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{S3_ENV} must look like s3://bucket/prefix, not {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def s3_client() -> Any:
    """A boto3 S3 client from the standard AWS settings (region defaults to us-east-1)."""
    from activitybi import extras

    boto3 = extras.require("boto3", "s3", "artifacts on S3")

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
    )


class ArtifactStore:
    """Stores bytes for a customer and keeps the index of what is stored."""

    def __init__(
        self, home: Path | None = None, *, s3_url: str | None = None, ttl: dt.timedelta | None = DEFAULT_TTL
    ) -> None:
        self.root = config.Home(home or config.home()).artifacts
        self.index_path = self.root / "index.jsonl"
        self.s3_url = s3_url
        self.bucket, self.prefix = _split_s3(s3_url) if s3_url else ("", "")
        self.ttl = ttl
        self._s3: Any = None

    @classmethod
    def from_env(cls, home: Path | None = None) -> ArtifactStore:
        """Local by default; S3 when `ACTIVITYBI_ARTIFACTS_S3` is set; expiry after
        `ACTIVITYBI_ARTIFACTS_TTL_DAYS` (30; 0 keeps them forever)."""
        settings = config.settings()
        days = settings.artifact_ttl_days
        return cls(home, s3_url=settings.artifacts_s3, ttl=dt.timedelta(days=days) if days > 0 else None)

    @property
    def client(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client()
        return self._s3

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises index appends against `expire`'s rewrite, across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows: appends are still atomic
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put(
        self,
        customer: str,
        data: bytes,
        content_type: str = "image/png",
        *,
        ttl: dt.timedelta | None = None,
        now: dt.datetime | None = None,
    ) -> Artifact:
        """Stores `data` and records it; returns its row."""
        artifact_id = ulid()
        created = now or _utcnow()
        life = ttl if ttl is not None else self.ttl
        name = f"{customer_key(customer)}/{artifact_id}{_SUFFIX.get(content_type, '.bin')}"
        if self.s3_url:
            key = f"{self.prefix}/{name}" if self.prefix else name
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata={"artifact-id": artifact_id},
            )
            url = f"s3://{self.bucket}/{key}"
        else:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            url = path.resolve().as_uri()
        artifact = Artifact(
            artifact_id,
            customer,
            url,
            len(data),
            content_type,
            created,
            created + life if life is not None else None,
        )
        line = orjson.dumps(artifact.to_json()) + b"\n"
        with self._locked():
            fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return artifact

    def read(self, artifact: Artifact) -> bytes:
        """The stored bytes (from the file or the S3 object)."""
        parsed = urlparse(artifact.s3_url)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).read_bytes()
        body = self.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        return bytes(body.read())

    def list(self, customer: str | None = None) -> builtins.list[Artifact]:
        """Recorded artifacts (expired ones included until `expire` runs), oldest first."""
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                a = Artifact.from_json(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, ValueError):
                continue  # a line torn by a crash: its bytes, if any, are orphaned
            if customer is None or a.customer_id == customer:
                out.append(a)
        return out

    def get(self, artifact_id: str, customer: str) -> Artifact | None:
        """The customer's artifact, or None (also when it is another customer's)."""
        return next((a for a in self.list(customer) if a.artifact_id == artifact_id), None)

    def _delete(self, artifact: Artifact) -> None:
        parsed = urlparse(artifact.s3_url)
        if parsed.scheme == "file":
            with contextlib.suppress(FileNotFoundError):
                Path(unquote(parsed.path)).unlink()
        elif parsed.scheme == "s3":
            self.client.delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))

    def expire(self, now: dt.datetime | None = None) -> builtins.list[Artifact]:
        """Deletes the artifacts whose expiry has passed (bytes first, then their index
        lines); returns them. An artifact whose bytes cannot be deleted stays listed."""
        now = now or _utcnow()
        with self._locked():
            everything = self.list()
            gone: list[Artifact] = []
            keep: list[Artifact] = []
            for a in everything:
                if a.expired(now):
                    try:
                        self._delete(a)
                    except Exception:
                        keep.append(a)  # tried again next time
                        continue
                    gone.append(a)
                else:
                    keep.append(a)
            if gone:
                tmp = self.index_path.with_name(f".index.{os.getpid()}.tmp")
                tmp.write_bytes(b"".join(orjson.dumps(a.to_json()) + b"\n" for a in keep))
                os.replace(tmp, self.index_path)
        return gone


def sync_to_warehouse(
    warehouse: Any, home: Path | None = None, *, now: dt.datetime | None = None
) -> tuple[int, int]:
    """Loads the index into the `artifacts` table and drops expired rows; for the
    warehouse owner (the only process that may write DuckDB). Idempotent. Returns
    (rows added, rows removed)."""
    now = now or _utcnow()
    store = ArtifactStore(home)
    present = {r[0] for r in warehouse.execute("SELECT artifact_id FROM artifacts").rows}
    added = 0
    for a in store.list():
        if a.artifact_id in present or a.expired(now):
            continue
        warehouse.execute(
            "INSERT INTO artifacts (artifact_id, customer_id, s3_url, size_bytes, content_type, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                a.artifact_id,
                a.customer_id,
                a.s3_url,
                a.size_bytes,
                a.content_type,
                a.created_at,
                a.expires_at,
            ],
        )
        added += 1
    old = "FROM artifacts WHERE expires_at IS NOT NULL AND expires_at <= ?"
    expired = warehouse.execute(f"SELECT count(*) {old}", [now]).rows
    removed = int(expired[0][0]) if expired else 0
    if removed:
        warehouse.execute(f"DELETE {old}", [now])
    return added, removed
