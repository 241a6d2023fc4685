"""Claude Code's session transcripts (`~/.claude/projects/<project>/<session>.jsonl`) to facts.

Claude Code deletes transcripts after 30 days, so an importer run now and then is the only
long-term record. It reads each file from where it stopped (a byte offset per file in
`Home.transcript_state`), one line at a time, and appends the facts before it saves the new
offsets: a process killed in between reads the same lines again next time, and the facts'
deterministic ids make that harmless (the loader keeps one row per id).

What a line means (docs/claude-code-capture.md in the shared reference):
- `assistant` lines with `usage` are model calls. One response is often written as several
  lines with the same `message.id` and `requestId`, the first ones with partial counts, so
  the lines of one response are merged and the one with the largest token total is kept.
  A response at the end of a file still being written is held back (its lines are read
  again next time) until another line follows it, the file has been quiet for
  `SETTLE_S`, or the session has ended.
- `tool_use` blocks are tool calls; each is written when its `tool_result` arrives (in a
  later line, possibly a later run: unfinished calls are kept in the state).
- `user` lines whose content is a string or text blocks (not tool results, not `isMeta`,
  not a subagent's, not command output) are prompts.
Lines of other types are skipped; a line that is not a JSON object is quarantined with its
reason; a last line without its newline yet is left for the next read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from activitybi import config
from activitybi.capture import facts
from activitybi.capture.common import (
    PROMPT_CAP,
    atomic_write,
    mcp_server,
    prompt_digest,
    prompt_id,
    quarantine,
)
from activitybi.capture.prices import PriceTable

SETTLE_S = 30.0
"""A file untouched this long is complete: its last response is written out."""
BATCH = 5000
"""Events appended (and offsets saved) together."""
COMMAND_PREFIXES = ("<command-", "<local-command-", "[Request interrupted", "Caveat:")
"""User-line text that Claude Code writes itself (slash commands and their output)."""


def default_projects_dir() -> Path:
    return config.claude_dir() / "projects"


def customer() -> str:
    """The configured customer (`ACTIVITYBI_CUSTOMER`), else this machine's user."""
    return config.settings().customer or getpass.getuser()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _when(value: object) -> tuple[dt.datetime, str]:
    """A line's time (now if it has none) and the same in the queue's form. Claude Code
    writes `2026-11-02T10:00:00.000Z`, which is the queue's form already: such a string is
    only validated (by the parse), not formatted again."""
    if isinstance(value, str):
        try:
            ts = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if len(value) == 24 and value[4:17:3] == "--T::" and value[19::4] == ".Z":
                return ts, value
            return ts, facts.iso_ts(ts)
    ts = now()
    return ts, facts.iso_ts(ts)


@dataclass
class FileState:
    """How far one transcript was read, and what is still open in it."""

    offset: int = 0
    inode: int = 0
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    """tool_use id → the call's details, until its result is read."""
    prompts: dict[str, int] = field(default_factory=dict)
    """`prompt_digest` → times asked so far in this file."""


@dataclass
class Stats:
    files: int = 0
    lines: int = 0
    events: int = 0
    quarantined: int = 0
    bytes: int = 0


@dataclass(slots=True)
class _Response:
    """The best line so far of one model response (its lines repeat its ids); the event is
    built once, when the response is complete."""

    key: str
    start: int
    total: int
    usage: dict[str, Any]
    message: dict[str, Any]
    session: str
    stamp: str
    agent: str | None
    project: str


class Importer:
    """Reads transcripts incrementally into the queue; one instance per run."""

    def __init__(
        self,
        queue: Any,
        *,
        customer: str,
        prices: PriceTable,
        home: config.Home | None = None,
        content: bool = False,
        settle_s: float = SETTLE_S,
        batch: int = BATCH,
    ) -> None:
        self.queue = queue
        self.customer = customer
        self.prices = prices
        self.home = home or config.Home.current()
        self.content = content
        self.settle_s = settle_s
        self.batch = batch
        self.stats = Stats()
        self._buffer: list[dict[str, Any]] = []
        self._cost_source = prices.cost_source
        self._files = self._load_state()
        self._dirty = False

    # --- state --------------------------------------------------------------------------

    def _load_state(self) -> dict[str, FileState]:
        try:
            raw = orjson.loads(self.home.transcript_state.read_bytes())
        except FileNotFoundError:
            return {}
        return {path: FileState(**st) for path, st in raw.get("files", {}).items()}

    def commit(self) -> None:
        """Appends the buffered facts, then saves the offsets that produced them."""
        if self._buffer:
            self.queue.append_many(self._buffer)
            self.stats.events += len(self._buffer)
            self._buffer = []
        if not self._dirty:
            return  # --follow looks every second: no write when nothing was read
        files = {path: vars(st) for path, st in self._files.items()}
        atomic_write(self.home.transcript_state, orjson.dumps({"version": 1, "files": files}))
        self._dirty = False

    def pending_bytes(self, paths: Iterable[Path]) -> int:
        """Bytes not read yet in these files (for a progress bar)."""
        total = 0
        for path in paths:
            st = self._files.get(str(path.absolute()))
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                total += size - (st.offset if st and st.offset <= size else 0)
        return total

    # --- reading ------------------------------------------------------------------------

    def run(
        self, paths: Iterable[Path], *, final: bool = False, advance: Callable[[int], None] | None = None
    ) -> Stats:
        """Reads what is new in each file and commits; `final` means the sessions ended."""
        for path in paths:
            self.import_file(path, final=final, advance=advance)
        self.commit()
        return self.stats

    def import_file(
        self, path: Path, *, final: bool = False, advance: Callable[[int], None] | None = None
    ) -> None:
        key = str(path.absolute())
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        st = self._files.get(key)
        if st is None or st.inode != stat.st_ino or stat.st_size < st.offset:  # new or replaced
            st = self._files[key] = FileState(inode=stat.st_ino)
        if stat.st_size == st.offset and not (final and st.tools):
            return
        self.stats.files += 1
        self._dirty = True
        settled = final or time.time() - stat.st_mtime >= self.settle_s
        project = _project(path)
        with open(path, "rb") as f:
            f.seek(st.offset)
            self._read(f, path, st, project, settled, advance)
        if final:
            for tool_id, call in list(st.tools.items()):
                self._tool_event(tool_id, call, None, "no_result")
                del st.tools[tool_id]
        if len(self._buffer) >= self.batch:
            self.commit()

    def _read(
        self,
        lines: Iterator[bytes],
        path: Path,
        st: FileState,
        project: str,
        settled: bool,
        advance: Callable[[int], None] | None,
    ) -> None:
        pos = first = st.offset
        pending: _Response | None = None
        count = 0
        for raw in lines:
            if not raw.endswith(b"\n"):
                break  # torn: Claude Code is still writing it
            start, pos = pos, pos + len(raw)
            count += 1
            if advance is not None:
                advance(len(raw))
            response = self._line(raw, path, start, st, project)
            if pending is not None and (response is None or response.key != pending.key):
                self._buffer.append(self._model_event(pending))
                pending = None
            if response is not None:
                if pending is None:
                    response.start = start
                    pending = response
                elif response.total >= pending.total:
                    response.start = pending.start
                    pending = response
            st.offset = pending.start if pending is not None else pos
            if len(self._buffer) >= self.batch:
                self.commit()
        self.stats.lines += count  # counted here, not per line: this loop is the hot path
        self.stats.bytes += pos - first
        if pending is not None and settled:
            self._buffer.append(self._model_event(pending))
            st.offset = pos

    def _line(self, raw: bytes, path: Path, start: int, st: FileState, project: str) -> _Response | None:
        """Handles one complete line; returns it when it is (part of) a model response."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            self._quarantine(path, start, f"not JSON: {e}", raw)
            return None
        if not isinstance(obj, dict):
            self._quarantine(path, start, f"not a JSON object but {type(obj).__name__}", raw)
            return None
        kind = obj.get("type")
        message = obj.get("message")
        if kind not in ("assistant", "user") or not isinstance(message, dict):
            return None  # summary, system, file-history-snapshot and types we do not know
        sid = obj.get("sessionId")
        session = sid if isinstance(sid, str) and sid else path.stem
        when = obj.get("timestamp")
        ts, stamp = _when(when)
        agent = _agent(obj)
        cwd = obj.get("cwd")
        project = cwd if isinstance(cwd, str) and cwd else project
        content = message.get("content")
        if kind == "user":
            self._user(obj, content, session, ts, stamp, st, project)
            return None
        if isinstance(content, list):
            for block in content:
                if not isinstance(block, dict) or block.get("type") != "tool_use":
                    continue
                tool_id, name = block.get("id"), block.get("name")
                if isinstance(tool_id, str):
                    st.tools[tool_id] = {
                        "tool": name if isinstance(name, str) else None,
                        # the line's own text when it is exact, and the parse gives it back
                        "ts": stamp if stamp == when else ts.isoformat(),
                        "session": session,
                        "agent": agent,
                        "project": project,
                    }
        return self._response(obj, message, session, stamp, agent, project)

    def _response(
        self,
        obj: dict[str, Any],
        message: dict[str, Any],
        session: str,
        stamp: str,
        agent: str | None,
        project: str,
    ) -> _Response | None:
        usage = message.get("usage")
        model = message.get("model")
        if not isinstance(usage, dict) or obj.get("isApiErrorMessage") or model == "<synthetic>":
            return None
        key = obj.get("requestId")
        if not isinstance(key, str) or not key:
            key = message.get("id")
            if not isinstance(key, str) or not key:
                return None
        get = usage.get
        total = (
            _int(get("input_tokens"))
            + _int(get("output_tokens"))
            + _int(get("cache_creation_input_tokens"))
            + _int(get("cache_read_input_tokens"))
        )
        return _Response(key, 0, total, usage, message, session, stamp, agent, project)

    def _model_event(self, r: _Response) -> dict[str, Any]:
        usage = r.usage
        get = usage.get
        n_in, n_out = _int(get("input_tokens")), _int(get("output_tokens"))
        n_write, n_read = _int(get("cache_creation_input_tokens")), _int(get("cache_read_input_tokens"))
        split = usage.get("cache_creation")
        w1h = _int(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
        model = r.message.get("model")
        model_name = model if isinstance(model, str) else None
        cost = self.prices.cost(model_name, n_in, n_out, max(n_write - w1h, 0), w1h, n_read)
        return facts.called_model(
            customer=self.customer,
            source="transcript",
            ts=r.stamp,
            request_id=r.key,
            session_id=r.session,
            model=model_name,
            input_tokens=n_in,
            output_tokens=n_out,
            cache_creation_input_tokens=n_write,
            cache_read_input_tokens=n_read,
            cost_usd=cost,
            agent=r.agent,
            cost_source=self._cost_source if cost is not None else None,
            message_id=r.message.get("id"),
            project=r.project,
        )

    def _user(
        self,
        obj: dict[str, Any],
        content: object,
        session: str,
        ts: dt.datetime,
        stamp: str,
        st: FileState,
        project: str,
    ) -> None:
        texts: list[str] = []
        results = False
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "tool_result" and isinstance(block.get("tool_use_id"), str):
                    self._tool_result(block, ts, st)
                    results = True
                elif block.get("type") == "text" and isinstance(block.get("text"), str):
                    texts.append(block["text"])
        if not texts or results or obj.get("isMeta") or obj.get("isSidechain") or "toolUseResult" in obj:
            return
        text = texts[0] if len(texts) == 1 else "\n".join(texts)
        stripped = text.lstrip()
        if not stripped or stripped.startswith(COMMAND_PREFIXES):
            return
        digest = prompt_digest(session, text)
        occurrence = st.prompts.get(digest, 0)
        st.prompts[digest] = occurrence + 1
        self._buffer.append(
            facts.asked_question(
                customer=self.customer,
                source="transcript",
                ts=stamp,
                prompt_id=prompt_id(session, text, occurrence),
                session_id=session,
                prompt_length=len(text),
                prompt=text[:PROMPT_CAP] if self.content else None,
                project=project,
            )
        )

    def _tool_result(self, block: dict[str, Any], ts: dt.datetime, st: FileState) -> None:
        call = st.tools.pop(block["tool_use_id"], None)
        if call is None:
            return  # a result whose call we never saw (the file was cut), or read twice
        error = None
        if block.get("is_error"):
            error = _text(block.get("content"))[:300] or "error"
        self._tool_event(block["tool_use_id"], call, ts, "error" if error else "ok", error)

    def _tool_event(
        self,
        tool_id: str,
        call: dict[str, Any],
        end: dt.datetime | None,
        outcome: str,
        error: str | None = None,
    ) -> None:
        start, stamp = _when(call.get("ts"))
        latency = round((end - start).total_seconds() * 1000, 3) if end is not None else None
        self._buffer.append(
            facts.called_tool(
                customer=self.customer,
                source="transcript",
                ts=stamp,
                tool_use_id=tool_id,
                session_id=call.get("session"),
                tool=call.get("tool"),
                outcome=outcome,
                latency_ms=latency if latency is None or latency >= 0 else None,
                mcp_server=mcp_server(call.get("tool")),
                error=error,
                agent=call.get("agent"),
                project=call.get("project"),
            )
        )

    def _quarantine(self, path: Path, offset: int, reason: str, raw: bytes) -> None:
        self.stats.quarantined += 1
        quarantine(self.home.capture_quarantine, "transcript", reason, raw, path=str(path), offset=offset)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(content: object) -> str:
    """A tool result's text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text")) for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _agent(obj: dict[str, Any]) -> str | None:
    """A subagent's lines are marked `isSidechain`; newer versions also name the agent."""
    if not obj.get("isSidechain"):
        return None
    agent = obj.get("agentId")
    return agent if isinstance(agent, str) and agent else "subagent"


def _project(path: Path) -> str:
    """The project folder (`<cwd with non-alphanumerics as ->`): the directory just under
    `projects/`, for a subagent's file under `<project>/<session>/subagents/` too."""
    for parent in path.parents:
        if parent.parent.name == "projects":
            return parent.name
    return path.parent.name


def transcripts(projects: Path) -> list[Path]:
    """Every session file under `projects`, subagents' files included, in a stable order."""
    return sorted(projects.rglob("*.jsonl")) if projects.is_dir() else []


def session_files(transcript: Path) -> list[Path]:
    """A session's transcript and its subagents' (`<session>/subagents/*.jsonl`)."""
    sub = transcript.with_suffix("") / "subagents"
    return [transcript, *sorted(sub.glob("*.jsonl"))] if sub.is_dir() else [transcript]
