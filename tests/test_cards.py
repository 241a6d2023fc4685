"""Chart cards and their artifacts: the PNG itself, bad inputs, tickets that cannot be
drawn, local and S3 storage (against moto's S3 server in its own process), expiry, the
`artifacts` table, and `render_card` through a real `activitybi serve`."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from PIL import Image

from activitybi.query.artifacts import ArtifactStore, sync_to_warehouse
from activitybi.query.cards import CardError, card_for_ticket, render, render_card
from activitybi.query.tickets import TicketStore
from activitybi.warehouse.duckdb import DuckDBWarehouse
from tests.mcp_clients import free_port, stdio_session, text

PROVENANCE = {"template": "usage_by_day", "params_hash": "9f" * 32, "created_at": "2026-11-23T18:00:00.000"}


def result(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    columns = list(rows[0]) if rows else ["day", "events"]
    return {"columns": columns, "rows": rows, "total_rows": len(rows), "sampled": False, **extra}


DAYS = result([{"day": f"2026-11-{d:02d}", "events": d * 3, "sessions": d % 4} for d in range(1, 21)])


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(png):
        (length,) = struct.unpack(">I", png[i : i + 4])
        kind, data = png[i + 4 : i + 8], png[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", png[i + 8 + length : i + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        out.append((kind, data))
        i += 12 + length
    return out


def text_chunks(png: bytes) -> dict[str, str]:
    out = {}
    for kind, data in chunks(png):
        if kind == b"tEXt":
            key, value = data.split(b"\0", 1)
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, rest = data.split(b"\0", 1)
            out[key.decode()] = rest[2:].split(b"\0", 2)[2].decode()
    return out


def test_a_card_is_a_png_with_its_provenance() -> None:
    png = render_card(DAYS, title="Usage by day", **PROVENANCE)
    kinds = [k for k, _ in chunks(png)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height = struct.unpack(">II", chunks(png)[0][1][:8])
    assert (width, height) == (1000, 600)
    meta = text_chunks(png)
    assert meta["Title"] == "Usage by day"
    assert meta["activitybi:template"] == "usage_by_day"
    assert meta["activitybi:params_hash"] == "9f" * 32
    assert meta["activitybi:created_at"] == "2026-11-23T18:00:00.000"
    assert meta["activitybi:rows"] == "20"


def _pixels(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("L")


def _differs(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int]) -> int:
    pa, pb = a.crop(box).tobytes(), b.crop(box).tobytes()
    return sum(1 for x, y in zip(pa, pb, strict=True) if x != y)


def test_the_footer_shows_the_provenance_and_the_plot_the_data() -> None:
    base = render_card(DAYS, title="Usage by day", **PROVENANCE)
    other_hash = render_card(DAYS, title="Usage by day", **{**PROVENANCE, "params_hash": "ab" * 32})
    other_data = render_card(
        result([{**r, "events": r["events"] * (1 + (i % 3))} for i, r in enumerate(DAYS["rows"])]),
        title="Usage by day",
        **PROVENANCE,
    )
    a, b, c = _pixels(base), _pixels(other_hash), _pixels(other_data)
    footer, plot, title = (0, 560, 1000, 600), (60, 60, 1000, 530), (0, 0, 1000, 55)
    assert min(a.crop(footer).tobytes()) < 128  # there is dark text in the footer
    assert _differs(a, b, footer) > 50 and _differs(a, b, plot) == 0
    assert _differs(a, c, plot) > 500 and _differs(a, c, footer) == 0
    assert min(a.crop(title).tobytes()) < 128


def test_kinds_and_what_is_drawn() -> None:
    _, auto = render(DAYS, title="t", **PROVENANCE)
    assert auto["kind"] == "line" and auto["x"] == "day" and auto["y"] == ["events", "sessions"]
    _, bar = render(DAYS, title="t", kind="bar", **PROVENANCE)
    assert bar["kind"] == "bar" and bar["y"] == ["events"]
    models = result(
        [
            {"model": "sonnet", "exchanges": 3, "cost_usd": "0.25"},
            {"model": "haiku", "exchanges": 9, "cost_usd": 0.01},
        ]
    )
    _, drawn = render(models, title="t", y="cost_usd", **PROVENANCE)
    assert drawn["kind"] == "bar" and drawn["x"] == "model" and drawn["y"] == ["cost_usd"]
    many = result([{"tool": f"t{i}", "calls": i} for i in range(500)], sampled=True)
    many["total_rows"] = 9000
    png, drawn = render(many, title="t", **PROVENANCE)
    assert drawn["rows_drawn"] == 40 and "largest 40 of 500" in drawn["note"]
    assert text_chunks(png)["activitybi:sampled"] == "true"
    numbers = {"columns": ["events"], "rows": [[3], [5], [4]], "total_rows": 3}
    assert render(numbers, title="t", **PROVENANCE)[1]["x"] is None


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (result([]), "no rows"),
        ({"columns": ["a"], "rows": []}, "no rows"),
        (result([{"tool": "a", "note": "x"}, {"tool": "b", "note": None}]), "no plottable column"),
        (result([{"day": "2026-11-01", "who": "ana"}]), "no plottable column"),
        ({"columns": ["a"]}, "'rows'"),
    ],
)
def test_bad_results_are_clear_errors(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        render_card(bad, title="t", **PROVENANCE)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(CardError, match="kind must be one of"):
        render_card(DAYS, title="t", kind="pie", **PROVENANCE)


def test_ten_thousand_rows_render_well_under_a_second() -> None:
    start = dt.datetime(2026, 11, 1)
    rows = [
        {
            "ts": (start + dt.timedelta(minutes=i)).isoformat(),
            "events": (i * 7919) % 101,
            "cost_usd": ((i * 104729) % 1000) / 1000,
        }
        for i in range(10_000)
    ]
    big = result(rows)
    render_card(big, title="warm-up", **PROVENANCE)  # imports matplotlib
    best = {}
    for kind in ("line", "bar"):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            render_card(big, title="10,000 rows", kind=kind, **PROVENANCE)
            times.append(time.perf_counter() - t)
        best[kind] = min(times)
    assert max(best.values()) < 1.0, best


# ----------------------------------------------------------------------- tickets → cards


def _ticket(
    store: TicketStore,
    customer: str,
    status: str,
    rows: list[dict[str, Any]] | None,
    template: str = "usage_by_day",
) -> str:
    t = store.submit(customer, template, {"since": "2026-11-01"}, 65536)
    t.status = status
    if status == "failed":
        t.error = "stopped: over the 60 s statement timeout"
    if status in ("succeeded", "failed"):
        t.finished_at = "2026-11-23T18:00:00.000"
    store.save(t)
    if rows is not None:
        store.save_result(t.ticket_id, result(rows))
    return t.ticket_id


def test_card_for_a_ticket_is_drawn_and_stored(_home: Path) -> None:
    tickets = TicketStore(_home / "tickets")
    store = ArtifactStore(_home)
    tid = _ticket(tickets, "ana@x.io", "succeeded", DAYS["rows"])
    card = card_for_ticket(tickets, tid, "ana@x.io", store=store)
    assert card.png.startswith(b"\x89PNG") and card.artifact is not None
    assert card.info["ticket"] == tid and "url" not in card.info  # never a server path
    assert text_chunks(card.png)["Title"] == "Usage by day · since 2026-11-01"
    assert text_chunks(card.png)["activitybi:params_hash"] == tickets.get(tid).params_hash  # type: ignore[union-attr]
    assert store.read(card.artifact) == card.png
    assert [a.artifact_id for a in store.list("ana@x.io")] == [card.artifact.artifact_id]


@pytest.mark.parametrize(
    ("owner", "status", "rows", "needle"),
    [
        ("bo@y.io", "succeeded", DAYS["rows"], "no ticket"),  # another customer's: not disclosed
        ("ana@x.io", "queued", None, "has not started yet"),
        ("ana@x.io", "running", None, "still running"),
        ("ana@x.io", "failed", None, "it failed: stopped"),
        ("ana@x.io", "succeeded", [], "no rows"),
        ("ana@x.io", "succeeded", [{"activity": "x", "first": "y"}], "no plottable column"),
    ],
)
def test_tickets_that_cannot_be_drawn(
    _home: Path, owner: str, status: str, rows: list[dict[str, Any]] | None, needle: str
) -> None:
    tickets = TicketStore(_home / "tickets")
    tid = _ticket(tickets, owner, status, rows)
    with pytest.raises(CardError, match=needle):
        card_for_ticket(tickets, tid, "ana@x.io", store=ArtifactStore(_home))
    assert ArtifactStore(_home).list() == []


def test_an_unknown_ticket_is_a_clear_error(_home: Path) -> None:
    tickets = TicketStore(_home / "tickets")
    for bad in ("01M84TGYW3EJMVCCRGRQ60K43N", "../../etc/passwd"):
        with pytest.raises(CardError, match="no ticket"):
            card_for_ticket(tickets, bad, "ana@x.io")


# ----------------------------------------------------------------------- artifacts


def test_local_artifacts_expire_with_their_rows(_home: Path, tmp_path: Path) -> None:
    store = ArtifactStore(_home, ttl=dt.timedelta(hours=1))
    now = dt.datetime(2026, 11, 23, 12, 0)
    old = store.put("ana@x.io", b"\x89PNG old", now=now - dt.timedelta(hours=2))
    new = store.put("ana@x.io", b"\x89PNG new", now=now)
    forever = store.put("bo@y.io", b"<html>", "text/html", ttl=dt.timedelta(days=3650), now=now)
    path = Path(old.s3_url.removeprefix("file://"))
    assert path.read_bytes() == b"\x89PNG old" and path.is_relative_to(_home / "artifacts")
    assert "ana@x.io" not in old.s3_url  # a customer is never a path
    assert (old.size_bytes, old.content_type) == (8, "image/png")
    assert store.get(old.artifact_id, "bo@y.io") is None

    wh = DuckDBWarehouse(tmp_path / "wh.duckdb")
    wh.init()
    assert sync_to_warehouse(wh, _home, now=now) == (2, 0)  # `old` has expired already
    assert sync_to_warehouse(wh, _home, now=now) == (0, 0)  # idempotent
    rows = wh.execute(
        "SELECT artifact_id, customer_id, size_bytes, content_type, created_at, "
        "expires_at FROM artifacts ORDER BY created_at"
    ).rows
    assert rows == [
        (new.artifact_id, "ana@x.io", 8, "image/png", now, now + dt.timedelta(hours=1)),
        (forever.artifact_id, "bo@y.io", 6, "text/html", now, now + dt.timedelta(days=3650)),
    ]

    later = now + dt.timedelta(hours=1, seconds=1)
    gone = store.expire(later)
    assert sorted(a.artifact_id for a in gone) == sorted([old.artifact_id, new.artifact_id])
    assert not path.exists() and not Path(new.s3_url.removeprefix("file://")).exists()
    assert [a.artifact_id for a in ArtifactStore(_home).list()] == [forever.artifact_id]
    assert sync_to_warehouse(wh, _home, now=later) == (0, 1)
    left = wh.execute("SELECT artifact_id FROM artifacts").rows
    assert [r[0] for r in left] == [forever.artifact_id]
    wh.close()


def test_ttl_from_the_environment(_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIVITYBI_ARTIFACTS_TTL_DAYS", "0")
    assert ArtifactStore.from_env(_home).put("ana@x.io", b"x").expires_at is None
    monkeypatch.setenv("ACTIVITYBI_ARTIFACTS_TTL_DAYS", "2")
    a = ArtifactStore.from_env(_home).put("ana@x.io", b"x")
    assert a.expires_at is not None and a.expires_at - a.created_at == dt.timedelta(days=2)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """moto's S3 server in its own process on a free loopback port."""
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "moto.log").read_text()
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    aws = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_s3_artifacts_against_a_real_s3_endpoint(
    _home: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="cards")
    monkeypatch.setenv("ACTIVITYBI_ARTIFACTS_S3", "s3://cards/team/prod")
    store = ArtifactStore.from_env(_home)
    png = render_card(DAYS, title="Usage by day", **PROVENANCE)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    a = store.put("ana@x.io", png, now=now)
    short = store.put("ana@x.io", b"brief", "application/json", ttl=dt.timedelta(seconds=1), now=now)
    assert a.s3_url.startswith("s3://cards/team/prod/") and a.s3_url.endswith(".png")
    key = a.s3_url.removeprefix("s3://cards/")
    head = client.head_object(Bucket="cards", Key=key)
    assert head["ContentLength"] == len(png) == a.size_bytes
    assert head["ContentType"] == "image/png"
    assert store.read(a) == png
    assert {p.name for p in (_home / "artifacts").iterdir()} <= {"index.jsonl", "index.lock"}
    gone = store.expire(now + dt.timedelta(seconds=2))
    assert [g.artifact_id for g in gone] == [short.artifact_id]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="cards").get("Contents", [])]
    assert keys == [key]
    store.expire(now + dt.timedelta(days=31))
    assert client.list_objects_v2(Bucket="cards").get("KeyCount") == 0
    assert store.list() == []


def test_an_s3_outage_keeps_the_artifact_listed_until_it_can_be_deleted(
    _home: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="cards")
    store = ArtifactStore(_home, s3_url="s3://cards")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    a = store.put("ana@x.io", b"x", ttl=dt.timedelta(seconds=1), now=now)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    broken = ArtifactStore(_home, s3_url="s3://cards")
    assert broken.expire(now + dt.timedelta(seconds=5)) == []
    assert [x.artifact_id for x in broken.list()] == [a.artifact_id]
    assert [x.artifact_id for x in store.expire(now + dt.timedelta(seconds=5))] == [a.artifact_id]


# ----------------------------------------------------------------------- through MCP


def test_render_card_over_stdio(_home: Path) -> None:
    """A real `activitybi serve`: log, query, draw; the card comes back as image content
    and is stored; bad tickets are errors naming the problem."""

    async def run() -> None:
        async with stdio_session(_home, "ana@x.io") as s, stdio_session(_home, "bo@y.io") as bo:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert "render_card" in tools, "paste the render_card tool into server.build()"
            assert tools["render_card"].input_schema["required"] == ["ticket"]
            for i in range(5):
                await s.call_tool(
                    "log_event", {"activity": "asked_question", "model": "sonnet", "cost_usd": 0.01 * (i + 1)}
                )
            deadline = time.monotonic() + 30
            ticket = None
            while time.monotonic() < deadline:  # until the owner has loaded them
                ticket = orjson.loads(text(await s.call_tool("submit_query", {"template": "cost_by_model"})))[
                    "ticket"
                ]
                while True:
                    status = orjson.loads(text(await s.call_tool("get_query_result", {"ticket": ticket})))
                    if status["status"] in ("succeeded", "failed"):
                        break
                    await anyio.sleep(0.05)
                if status.get("result", {}).get("rows"):
                    break
                await anyio.sleep(0.2)
            assert ticket is not None
            res = await s.call_tool("render_card", {"ticket": ticket})
            assert not res.is_error, text(res)
            kinds = [c.type for c in res.content]
            assert kinds == ["text", "image"]
            image = res.content[1]
            assert image.mime_type == "image/png"
            png = base64.b64decode(image.data)
            info = orjson.loads(res.content[0].text)
            assert info["ticket"] == ticket and info["size_bytes"] == len(png)
            assert text_chunks(png)["activitybi:template"] == "cost_by_model"
            stored = ArtifactStore(_home).get(info["artifact_id"], "ana@x.io")
            assert stored is not None and ArtifactStore(_home).read(stored) == png

            foreign = await bo.call_tool("render_card", {"ticket": ticket})
            assert foreign.is_error and "no ticket" in text(foreign)
            unknown = await s.call_tool("render_card", {"ticket": "01M84TGYW3EJMVCCRGRQ60K43N"})
            assert unknown.is_error and "no ticket" in text(unknown)
            bad_kind = await s.call_tool("render_card", {"ticket": ticket, "kind": "pie"})
            assert bad_kind.is_error and "kind" in text(bad_kind)
            empty = orjson.loads(text(await bo.call_tool("submit_query", {"template": "cost_by_model"})))[
                "ticket"
            ]
            res = await bo.call_tool("render_card", {"ticket": empty})
            assert res.is_error and ("has no result to draw" in text(res) or "no rows" in text(res))

    anyio.run(run)
    assert os.listdir(_home / "artifacts")
