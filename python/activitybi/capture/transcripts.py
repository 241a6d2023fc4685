"""Claude Code's session transcripts (`~/.claude/projects/<project>/<session>.jsonl`) to facts.

Claude Code deletes transcripts after 30 days, so an importer run now and then is the only
long-term record. It reads each file from where it stopped (a byte offset per file in
`Home.transcript_state`) and appends the facts before it saves the new offsets: a process
killed in between reads the same lines again next time, and the facts' deterministic ids make
that harmless (the loader keeps one row per id). The lines are read, and their facts built
and appended, in the Rust core (`rust/transcript.rs`): in Python that cost five times the
parse alone (docs/benchmarks.md).

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
import getpass
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from activitybi import _core, config
from activitybi.capture.common import atomic_write, quarantine
from activitybi.capture.prices import PriceTable

SETTLE_S = 30.0
"""A file untouched this long is complete: its last response is written out."""
BATCH = 5000
"""Events appended between two saves of the offsets."""


def default_projects_dir() -> Path:
    return config.claude_dir() / "projects"


def customer() -> str:
    """The configured customer (`ACTIVITYBI_CUSTOMER`), else this machine's user."""
    return config.settings().customer or getpass.getuser()


@dataclass
class FileState:
    """How far one transcript was read, and what is still open in it."""

    offset: int = 0
    inode: int = 0
    tools: dict[str, dict[str, str | None]] = field(default_factory=dict)
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


class Importer:
    """Reads transcripts incrementally into the queue; one instance per run. The lines are
    read, and their facts built and appended, by the Rust core (`_core.TranscriptImporter`);
    this keeps the files, the offsets and the quarantine."""

    def __init__(
        self,
        queue: _core.Queue,
        *,
        customer: str,
        prices: PriceTable,
        home: config.Home | None = None,
        content: bool = False,
        settle_s: float = SETTLE_S,
        batch: int = BATCH,
    ) -> None:
        self.home = home or config.Home.current()
        self.settle_s = settle_s
        self.batch = batch
        self.stats = Stats()
        self._core = _core.TranscriptImporter(
            queue, customer=customer, content=content, prices=prices.rates(), cost_source=prices.cost_source
        )
        self._files = self._load_state()
        self._dirty = False
        self._unsaved = 0
        """Events appended since the offsets were last saved."""

    # --- state --------------------------------------------------------------------------

    def _load_state(self) -> dict[str, FileState]:
        try:
            raw = orjson.loads(self.home.transcript_state.read_bytes())
        except FileNotFoundError:
            return {}
        return {path: FileState(**st) for path, st in raw.get("files", {}).items()}

    def commit(self) -> None:
        """Saves the offsets (the facts they stand for are appended already)."""
        self._unsaved = 0
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
        done = self._core.read(
            path,
            offset=st.offset,
            session=path.stem,
            project=_project(path),
            tools=st.tools,
            prompts=st.prompts,
            settled=final or time.time() - stat.st_mtime >= self.settle_s,
            ended=final,
        )
        st.offset, st.tools, st.prompts = done["offset"], done["tools"], done["prompts"]
        self.stats.lines += done["lines"]
        self.stats.bytes += done["bytes"]
        self.stats.events += done["events"]
        for offset, reason, raw in done["rejected"]:
            self.stats.quarantined += 1
            quarantine(self.home.capture_quarantine, "transcript", reason, raw, path=str(path), offset=offset)
        if advance is not None:
            advance(done["bytes"])
        self._unsaved += done["events"]
        if self._unsaved >= self.batch:
            self.commit()


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
