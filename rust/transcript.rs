//! Claude Code's session transcript lines to facts: the per-line work of
//! `activitybi import claude-code` (the Python side keeps the offsets, the files and the
//! progress; see `activitybi.capture.transcripts` for what a line means).
//!
//! Each line is parsed once, by serde_json, into borrowed structs that skip what the facts do
//! not need; the facts' lines are written here, in the exact bytes the Python builders'
//! dicts gave through `Queue.append_many` (same keys, order, numbers), and handed to the
//! [`Host`] to be redacted and appended.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate};
use indexmap::IndexMap;
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::facts::{fact_id, push_json_str};
use crate::redact::LineInfo;

/// Longest prompt text kept when content capture is on (characters), as `common.PROMPT_CAP`.
pub const PROMPT_CAP: usize = 65_536;
/// User-line text that Claude Code writes itself (slash commands and their output).
const COMMAND_PREFIXES: [&str; 4] = [
    "<command-",
    "<local-command-",
    "[Request interrupted",
    "Caveat:",
];
const SOURCE: &str = "transcript";
/// Appended to the queue in writes of about this many bytes.
const WRITE_BYTES: usize = 1 << 20;
/// How serde_json (with `arbitrary_precision`) hands a number to `deserialize_any`: a map of
/// this one key to the number's text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// What the importer needs from its caller: Python's reading of the rare timestamps and
/// values it does not read itself, and the queue.
pub trait Host {
    type Error;
    /// A timestamp that is not in Claude Code's own form, as `datetime.fromisoformat` reads
    /// it: UTC microseconds since the epoch (a naive time taken as UTC) and its `isoformat()`;
    /// None when it is not one.
    fn parse_time(&mut self, text: &str) -> Option<(i64, String)>;
    /// Python's `str()` of a JSON value that is a float, a list or an object.
    fn text_of(&mut self, json: &str) -> String;
    /// Finishes the line at `buf[start..]` as every append does (size cap, redaction).
    fn seal(&mut self, buf: &mut Vec<u8>, start: usize, info: &LineInfo)
        -> Result<(), Self::Error>;
    /// Appends `count` finished lines.
    fn write(&mut self, lines: &[u8], count: u64) -> Result<(), Self::Error>;
}

/// A tool call whose result has not been read yet (kept in the state between runs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    pub tool: Option<String>,
    /// The call line's timestamp: its own text when that is exact, else `isoformat()`.
    pub ts: Option<String>,
    pub session: Option<String>,
    pub agent: Option<String>,
    pub project: Option<String>,
}

/// What one transcript keeps between reads.
#[derive(Clone, Debug, Default)]
pub struct FileState {
    /// tool_use id → the call, until its result is read (in the order they were made).
    pub tools: IndexMap<String, ToolCall>,
    /// `prompt_digest` → times asked so far in this file.
    pub prompts: IndexMap<String, u64>,
}

/// New bytes of one transcript.
pub struct Chunk<'a> {
    /// Whole lines from `offset` on; a last line without its newline is left for later.
    pub data: &'a [u8],
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The session when a line names none (the file's stem).
    pub session: &'a str,
    /// The project when a line has no `cwd` (the folder under `projects/`).
    pub project: &'a str,
    /// The file is complete: a response at its end is written out.
    pub settled: bool,
    /// The session ended: open tool calls are written out as `no_result`.
    pub ended: bool,
}

/// A line that is not a JSON object, to quarantine.
pub struct Rejected<'a> {
    pub offset: u64,
    pub reason: String,
    pub raw: &'a [u8],
}

/// What a read did.
pub struct Outcome<'a> {
    /// Where the next read starts (the first line of a response held back, or the end of
    /// the last whole line).
    pub offset: u64,
    pub lines: u64,
    /// Bytes of whole lines read.
    pub bytes: u64,
    pub events: u64,
    pub rejected: Vec<Rejected<'a>>,
}

/// US dollars per million tokens, by model-name prefix.
pub struct Prices {
    /// Prefix → input, output, cache write 5m, cache write 1h, cache read.
    models: Vec<(String, [f64; 5])>,
    /// `feature_json.cost_source` of a cost computed here.
    cost_source: String,
    matches: HashMap<String, Option<usize>>,
}

impl Prices {
    pub fn new(models: Vec<(String, [f64; 5])>, cost_source: String) -> Self {
        Self {
            models,
            cost_source,
            matches: HashMap::new(),
        }
    }

    /// As `PriceTable.price`: the longest prefix of the name, a provider prefix ignored.
    fn price(&mut self, model: &str) -> Option<[f64; 5]> {
        if model.is_empty() {
            return None;
        }
        if !self.matches.contains_key(model) {
            let name = model.find("claude").map_or(model, |i| &model[i..]);
            let best = (self.models.iter().enumerate())
                .filter(|(_, (k, _))| name.starts_with(k.as_str()))
                .max_by_key(|(_, (k, _))| k.len())
                .map(|(i, _)| i);
            self.matches.insert(model.to_owned(), best);
        }
        self.matches[model].map(|i| self.models[i].1)
    }

    /// As `PriceTable.cost`: the same float operations in the same order.
    fn cost(&mut self, model: Option<&str>, tokens: [u64; 5]) -> Option<f64> {
        let p = self.price(model?)?;
        let t = tokens.map(|n| n as f64);
        let total = t[0] * p[0] + t[1] * p[1] + t[2] * p[2] + t[3] * p[3] + t[4] * p[4];
        Some(py_round(total / 1_000_000.0, 9))
    }
}

/// Reads transcript chunks into facts for one customer.
pub struct Importer {
    customer: String,
    /// Content capture: prompts keep their text.
    content: bool,
    prices: Prices,
}

impl Importer {
    pub fn new(customer: String, content: bool, prices: Prices) -> Self {
        Self {
            customer,
            content,
            prices,
        }
    }

    /// Reads the whole lines of `chunk`, appends their facts through `host`, and updates
    /// `state`; a failed append returns its error (the offset was not advanced).
    pub fn read<'a, H: Host>(
        &mut self,
        chunk: &Chunk<'a>,
        state: &mut FileState,
        host: &mut H,
    ) -> Result<Outcome<'a>, H::Error> {
        let mut read = Read {
            imp: self,
            chunk,
            state,
            out: Out {
                host,
                buf: Vec::with_capacity(WRITE_BYTES + 4096),
                lines: 0,
                events: 0,
            },
            rejected: Vec::new(),
        };
        let data = chunk.data;
        let mut pos = 0;
        let mut lines = 0;
        let mut pending: Option<Response<'a>> = None;
        while let Some(n) = memchr::memchr(b'\n', &data[pos..]) {
            let start = pos;
            pos += n + 1;
            lines += 1;
            let response = read.line(&data[start..pos], start)?;
            if let Some(p) = &pending {
                if response.as_ref().is_none_or(|r| r.key != p.key) {
                    read.model_event(pending.take().expect("pending"))?;
                }
            }
            if let Some(mut r) = response {
                match &pending {
                    None => {
                        r.start = start;
                        pending = Some(r);
                    }
                    Some(p) if r.total >= p.total => {
                        r.start = p.start;
                        pending = Some(r);
                    }
                    Some(_) => {}
                }
            }
        }
        let mut next = pending.as_ref().map_or(pos, |p| p.start);
        if let Some(p) = pending.filter(|_| chunk.settled) {
            read.model_event(p)?;
            next = pos;
        }
        if chunk.ended {
            for (id, call) in std::mem::take(&mut read.state.tools) {
                read.tool_event(&id, &call, None, "no_result", None)?;
            }
        }
        read.out.flush()?;
        Ok(Outcome {
            offset: chunk.offset + next as u64,
            lines,
            bytes: pos as u64,
            events: read.out.events,
            rejected: read.rejected,
        })
    }
}

/// The best line so far of one model response (its lines repeat its ids).
struct Response<'a> {
    key: Cow<'a, str>,
    start: usize,
    total: u128,
    /// input, output, cache creation, cache read, of which 1-hour cache writes.
    tokens: [u64; 5],
    model: Option<Cow<'a, str>>,
    message_id: Option<&'a RawValue>,
    session: Cow<'a, str>,
    stamp: Cow<'a, str>,
    agent: Option<Cow<'a, str>>,
    project: Cow<'a, str>,
}

/// A line's time: UTC microseconds, the queue's form, and what a tool call keeps of it.
struct When<'a> {
    micros: i64,
    stamp: Cow<'a, str>,
    kept: Cow<'a, str>,
}

struct Read<'r, 'a, H: Host> {
    imp: &'r mut Importer,
    chunk: &'r Chunk<'a>,
    state: &'r mut FileState,
    out: Out<'r, H>,
    rejected: Vec<Rejected<'a>>,
}

impl<'a, H: Host> Read<'_, 'a, H> {
    fn reject(&mut self, start: usize, reason: String, raw: &'a [u8]) {
        self.rejected.push(Rejected {
            offset: self.chunk.offset + start as u64,
            reason,
            raw,
        });
    }

    /// Handles one whole line; returns it when it is (part of) a model response.
    fn line(&mut self, raw: &'a [u8], start: usize) -> Result<Option<Response<'a>>, H::Error> {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                self.reject(start, format!("not JSON: {e}"), raw);
                return Ok(None);
            }
        };
        let line = match serde_json::from_str::<Top<'a>>(text) {
            Ok(Top::Line(line)) => line,
            Ok(Top::Not(kind)) => {
                self.reject(start, format!("not a JSON object but {kind}"), raw);
                return Ok(None);
            }
            Err(e) => {
                self.reject(start, format!("not JSON: {e}"), raw);
                return Ok(None);
            }
        };
        let Some(message) = line.message.0 else {
            return Ok(None);
        };
        let user = match line.kind.0.as_deref() {
            Some("user") => true,
            Some("assistant") => false,
            _ => return Ok(None), // summary, system, file-history-snapshot, types we do not know
        };
        let session = nonempty(line.session_id.0).unwrap_or(Cow::Borrowed(self.chunk.session));
        let when = when(line.timestamp.0, self.out.host);
        let agent = line
            .is_sidechain
            .0
            .then(|| nonempty(line.agent_id.0).unwrap_or(Cow::Borrowed("subagent")));
        let project = nonempty(line.cwd.0).unwrap_or(Cow::Borrowed(self.chunk.project));
        if user {
            let skip = line.is_meta.0 || line.is_sidechain.0 || line.tool_use_result.is_some();
            self.user(message.content, skip, &session, &when, &project)?;
            return Ok(None);
        }
        if let Content::Blocks(blocks) = &message.content {
            for block in blocks
                .iter()
                .filter(|b| b.kind.0.as_deref() == Some("tool_use"))
            {
                // An empty id could not make a fact id.
                if let Some(id) = block.id.0.as_deref().filter(|id| !id.is_empty()) {
                    let call = ToolCall {
                        tool: block.name.0.as_deref().map(str::to_owned),
                        ts: Some(when.kept.clone().into_owned()),
                        session: Some(session.clone().into_owned()),
                        agent: agent.as_deref().map(str::to_owned),
                        project: Some(project.clone().into_owned()),
                    };
                    self.state.tools.insert(id.to_owned(), call);
                }
            }
        }
        let Some(usage) = message.usage.0 else {
            return Ok(None);
        };
        if line.api_error.0 || message.model.0.as_deref() == Some("<synthetic>") {
            return Ok(None);
        }
        let key = match nonempty(line.request_id.0) {
            Some(k) => k,
            None => match nonempty(message.id.and_then(json_str)) {
                Some(k) => k,
                None => return Ok(None),
            },
        };
        let t = [
            usage.input_tokens.0,
            usage.output_tokens.0,
            usage.cache_creation_input_tokens.0,
            usage.cache_read_input_tokens.0,
            usage
                .cache_creation
                .0
                .map_or(0, |s| s.ephemeral_1h_input_tokens.0),
        ];
        Ok(Some(Response {
            key,
            start: 0,
            total: t[..4].iter().map(|&n| u128::from(n)).sum(),
            tokens: t,
            model: message.model.0,
            message_id: message.id,
            session,
            stamp: when.stamp,
            agent,
            project,
        }))
    }

    fn user(
        &mut self,
        content: Content<'a>,
        skip: bool,
        session: &str,
        when: &When<'_>,
        project: &str,
    ) -> Result<(), H::Error> {
        let mut texts: Vec<Cow<'a, str>> = Vec::new();
        let mut results = false;
        match content {
            Content::Text(t) => texts.push(t),
            Content::Blocks(blocks) => {
                for block in blocks {
                    match (block.kind.0.as_deref(), block.tool_use_id.0.as_deref()) {
                        (Some("tool_result"), Some(id)) => {
                            self.tool_result(id, &block, when.micros)?;
                            results = true;
                        }
                        (Some("text"), _) => texts.extend(block.text.0),
                        _ => {}
                    }
                }
            }
            Content::Other => {}
        }
        if texts.is_empty() || results || skip {
            return Ok(());
        }
        let text = if texts.len() == 1 {
            texts.swap_remove(0)
        } else {
            Cow::Owned(texts.join("\n"))
        };
        let stripped = text.trim_start_matches(py_space);
        if stripped.is_empty() || COMMAND_PREFIXES.iter().any(|p| stripped.starts_with(p)) {
            return Ok(());
        }
        let trimmed = stripped.trim_end_matches(py_space);
        let digest = hex(&sha256(&[session, "\0", trimmed])[..12]);
        let occurrence = self.state.prompts.get(&digest).copied().unwrap_or(0);
        self.state.prompts.insert(digest, occurrence + 1);
        let prompt_id = format!("{session}:{}:{occurrence}", hex(&sha256(&[trimmed])[..16]));
        let content = self.imp.content;
        self.out.event(
            &self.imp.customer,
            "asked_question",
            &prompt_id,
            &when.stamp,
            Some(session),
            |f| {
                f.int("prompt_length", text.chars().count() as u64);
                if content {
                    let end = text
                        .char_indices()
                        .nth(PROMPT_CAP)
                        .map_or(text.len(), |(i, _)| i);
                    f.str("prompt", &text[..end]);
                }
                f.str("project", project);
            },
        )
    }

    fn tool_result(&mut self, id: &str, block: &Block<'a>, end: i64) -> Result<(), H::Error> {
        let Some(call) = self.state.tools.shift_remove(id) else {
            return Ok(()); // a result whose call we never saw (the file was cut), or read twice
        };
        let error = if block.is_error.0 {
            let text = result_text(block.content, self.out.host);
            let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
            Some(if cut == 0 {
                "error".to_owned()
            } else {
                text[..cut].to_owned()
            })
        } else {
            None
        };
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.tool_event(id, &call, Some(end), outcome, error.as_deref())
    }

    fn tool_event(
        &mut self,
        id: &str,
        call: &ToolCall,
        end: Option<i64>,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), H::Error> {
        let start = when(call.ts.as_deref().map(Cow::Borrowed), self.out.host);
        let latency = end
            .map(|end| py_round((end - start.micros) as f64 / 1e6 * 1000.0, 3))
            .filter(|l| *l >= 0.0);
        let tool = call.tool.as_deref();
        let server = tool
            .and_then(|t| t.strip_prefix("mcp__"))
            .map(|rest| rest.split("__").next().unwrap_or_default())
            .filter(|s| !s.is_empty());
        self.out.event(
            &self.imp.customer,
            "called_tool",
            id,
            &start.stamp,
            call.session.as_deref(),
            |f| {
                f.opt_str("tool", tool);
                if let Some(l) = latency {
                    f.float("latency_ms", l);
                }
                f.str("outcome", outcome);
                f.opt_str("mcp_server", server);
                f.str("tool_use_id", id);
                f.opt_str("error", error);
                f.opt_str("agent", call.agent.as_deref());
                f.opt_str("project", call.project.as_deref());
            },
        )
    }

    fn model_event(&mut self, r: Response<'a>) -> Result<(), H::Error> {
        let [n_in, n_out, n_write, n_read, w1h] = r.tokens;
        let model = r.model.as_deref();
        let cost = (self.imp.prices).cost(
            model,
            [n_in, n_out, n_write.saturating_sub(w1h), w1h, n_read],
        );
        let cost_source = &self.imp.prices.cost_source;
        self.out.event(
            &self.imp.customer,
            "called_model",
            &r.key,
            &r.stamp,
            Some(&r.session),
            |f| {
                f.opt_str("model", model);
                f.int("input_tokens", n_in);
                f.int("output_tokens", n_out);
                f.int("cache_creation_input_tokens", n_write);
                f.int("cache_read_input_tokens", n_read);
                if let Some(c) = cost {
                    f.float("cost_usd", c);
                }
                f.str("request_id", &r.key);
                f.opt_str("agent", r.agent.as_deref());
                if cost.is_some() {
                    f.str("cost_source", cost_source);
                }
                match r.message_id.map(|id| (id, json_str(id))) {
                    Some((_, Some(id))) => f.str("message_id", &id),
                    Some((id, None)) => {
                        f.key("message_id");
                        write_py_json(f.buf, id);
                    }
                    None => {}
                }
                f.str("project", &r.project);
            },
        )
    }
}

/// Event lines on their way to the queue.
struct Out<'h, H: Host> {
    host: &'h mut H,
    buf: Vec<u8>,
    lines: u64,
    events: u64,
}

impl<H: Host> Out<'_, H> {
    /// Writes one fact's line as `facts._event` builds its dict: id, ts, activity, customer,
    /// the features (then `source` and `session_id`), `_source`, `_session_id`.
    fn event(
        &mut self,
        customer: &str,
        activity: &'static str,
        key: &str,
        ts: &str,
        session: Option<&str>,
        features: impl FnOnce(&mut Fields<'_>),
    ) -> Result<(), H::Error> {
        if key.is_empty() {
            return Ok(()); // no fact id without a key
        }
        let start = self.buf.len();
        let buf = &mut self.buf;
        buf.extend_from_slice(b"{\"activity_id\":");
        push_json_str(buf, &fact_id(customer, activity, key));
        buf.extend_from_slice(b",\"ts\":");
        push_json_str(buf, ts);
        let generated = buf.len() - start;
        buf.extend_from_slice(b",\"activity\":\"");
        buf.extend_from_slice(activity.as_bytes());
        buf.extend_from_slice(b"\",\"customer\":");
        let at = buf.len() - start;
        push_json_str(buf, customer);
        let customer_at = at..buf.len() - start;
        buf.extend_from_slice(b",\"feature_json\":{");
        let mut f = Fields { buf, first: true };
        features(&mut f);
        f.str("source", SOURCE);
        f.opt_str("session_id", session);
        buf.extend_from_slice(b"},\"_source\":\"transcript\"");
        if let Some(s) = session {
            buf.extend_from_slice(b",\"_session_id\":");
            push_json_str(buf, s);
        }
        buf.extend_from_slice(b"}\n");
        let info = LineInfo {
            activity: activity.to_owned(),
            customer: Some(customer_at),
            generated,
        };
        self.host.seal(&mut self.buf, start, &info)?;
        self.lines += 1;
        self.events += 1;
        if self.buf.len() >= WRITE_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), H::Error> {
        if self.lines > 0 {
            self.host.write(&self.buf, self.lines)?;
        }
        self.buf.clear();
        self.lines = 0;
        Ok(())
    }
}

/// The members of `feature_json`, `None`s left out as the builders leave them out.
struct Fields<'b> {
    buf: &'b mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        push_json_str(self.buf, k);
        self.buf.push(b':');
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_json_str(self.buf, v);
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    fn int(&mut self, k: &str, v: u64) {
        self.key(k);
        serde_json::to_writer(&mut *self.buf, &v).expect("an integer serializes");
    }

    /// A float as serde_json writes Python's floats in `append` (shortest round trip).
    fn float(&mut self, k: &str, v: f64) {
        self.key(k);
        serde_json::to_writer(&mut *self.buf, &v).expect("a finite float serializes");
    }
}

/// A JSON value as Python's `append` would write it after orjson read it: strings and
/// numbers in their canonical form (an integer beyond 64 bits is a float to orjson).
fn write_py_json(buf: &mut Vec<u8>, raw: &RawValue) {
    fn write(buf: &mut Vec<u8>, v: &serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Number(n) => match py_number(n.as_str()) {
                PyNumber::Int(i) => buf.extend_from_slice(i.as_bytes()),
                PyNumber::Float(f) => serde_json::to_writer(&mut *buf, &f).expect("finite"),
            },
            Value::Array(items) => {
                buf.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    write(buf, item);
                }
                buf.push(b']');
            }
            Value::Object(map) => {
                buf.push(b'{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    push_json_str(buf, k);
                    buf.push(b':');
                    write(buf, item);
                }
                buf.push(b'}');
            }
            other => serde_json::to_writer(&mut *buf, other).expect("a JSON value serializes"),
        }
    }
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(v) => write(buf, &v),
        Err(_) => buf.extend_from_slice(b"null"), // it was parsed once already
    }
}

enum PyNumber {
    /// The integer's digits (`-0` is `0`).
    Int(String),
    Float(f64),
}

/// A JSON number as orjson reads it: an int when it is an integer within 64 bits, else a float.
fn py_number(text: &str) -> PyNumber {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(u) = text.parse::<u64>() {
            return PyNumber::Int(u.to_string());
        }
        if let Ok(i) = text.parse::<i64>() {
            return PyNumber::Int(i.to_string());
        }
    }
    PyNumber::Float(text.parse().unwrap_or(0.0))
}

/// Python's `round(x, digits)`: the correctly rounded decimal (ties to even), read back.
fn py_round(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// Python's `str.isspace`: Unicode whitespace and the four separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn sha256(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn nonempty(s: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    s.filter(|s| !s.is_empty())
}

/// The string a raw JSON value holds, if it is one.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text<'_>>(raw.get()).ok()?.0
}

/// `_when`: Claude Code's `2026-11-02T10:00:00.000Z` is the queue's form already (it is only
/// validated); other forms are read as `datetime.fromisoformat` reads them; no time, or
/// one that is not a time, is now.
fn when<'a, H: Host>(value: Option<Cow<'a, str>>, host: &mut H) -> When<'a> {
    if let Some(v) = value {
        if let Some(micros) = claude_time(&v) {
            return When {
                micros,
                stamp: v.clone(),
                kept: v,
            };
        }
        if let Some((micros, iso)) = host.parse_time(&v) {
            let stamp = stamp(micros);
            let kept = if stamp == v { v } else { Cow::Owned(iso) };
            return When {
                micros,
                stamp: Cow::Owned(stamp),
                kept,
            };
        }
    }
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let now = DateTime::from_timestamp_micros(micros).unwrap_or_default();
    let fraction = if micros % 1_000_000 != 0 { "%.6f" } else { "" };
    When {
        micros,
        stamp: Cow::Owned(stamp(micros)),
        kept: Cow::Owned(
            now.format(&format!("%Y-%m-%dT%H:%M:%S{fraction}+00:00"))
                .to_string(),
        ),
    }
}

/// `facts.iso_ts`: UTC, milliseconds (truncated), `Z`.
fn stamp(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` with a valid date and time, as UTC microseconds.
fn claude_time(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = num(0..4).filter(|&y| y >= 1)?;
    let date = NaiveDate::from_ymd_opt(year as i32, num(5..7)?, num(8..10)?)?;
    let time = date.and_hms_milli_opt(num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?)?;
    Some(time.and_utc().timestamp_micros())
}

/// `_text` of a tool result's content: a string, or its text blocks' `str(text)` joined.
fn result_text<H: Host>(content: Option<&RawValue>, host: &mut H) -> String {
    let Some(raw) = content else {
        return String::new();
    };
    if let Some(s) = json_str(raw) {
        return s.into_owned();
    }
    let Ok(Seq(blocks)) = serde_json::from_str::<Seq<TextBlock<'_>>>(raw.get()) else {
        return String::new();
    };
    let texts: Vec<String> = blocks
        .iter()
        .filter(|b| b.kind.0.as_deref() == Some("text"))
        .map(|b| py_str(b.text, host))
        .collect();
    texts.join("\n")
}

/// Python's `str()` of a JSON value orjson read (`None` when absent).
fn py_str<H: Host>(value: Option<&RawValue>, host: &mut H) -> String {
    let Some(raw) = value else {
        return "None".to_owned();
    };
    if let Some(s) = json_str(raw) {
        return s.into_owned();
    }
    match raw.get() {
        "true" => "True".to_owned(),
        "false" => "False".to_owned(),
        "null" => "None".to_owned(),
        text => match py_number(text) {
            PyNumber::Int(digits) => digits,
            PyNumber::Float(_) => host.text_of(text),
        },
    }
}

// --- what is read of a line ---------------------------------------------------------------

/// A line: its object, or the Python type name of what it is instead.
#[allow(clippy::large_enum_variant)] // one at a time, on the stack: no box per line
enum Top<'a> {
    Line(Line<'a>),
    Not(&'static str),
}

/// The members of a line the importer reads (every other one is skipped, not built). Each
/// field takes any JSON value, one of another type counting as absent, as the Python
/// importer's `isinstance` checks did; so do the structs below.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    message: Obj<Message<'a>>,
    #[serde(rename = "sessionId", default, borrow)]
    session_id: Text<'a>,
    #[serde(default, borrow)]
    timestamp: Text<'a>,
    #[serde(rename = "isSidechain", default)]
    is_sidechain: Truthy,
    #[serde(rename = "agentId", default, borrow)]
    agent_id: Text<'a>,
    #[serde(default, borrow)]
    cwd: Text<'a>,
    #[serde(rename = "requestId", default, borrow)]
    request_id: Text<'a>,
    #[serde(rename = "isApiErrorMessage", default)]
    api_error: Truthy,
    #[serde(rename = "isMeta", default)]
    is_meta: Truthy,
    #[serde(rename = "toolUseResult", default, deserialize_with = "present")]
    tool_use_result: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Content<'a>,
    #[serde(default)]
    usage: Obj<Usage>,
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    id: Text<'a>,
    #[serde(default, borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    tool_use_id: Text<'a>,
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default)]
    is_error: Truthy,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextBlock<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    cache_creation_input_tokens: Count,
    #[serde(default)]
    cache_read_input_tokens: Count,
    #[serde(default)]
    cache_creation: Obj<CacheSplit>,
}

#[derive(Deserialize)]
struct CacheSplit {
    #[serde(default)]
    ephemeral_1h_input_tokens: Count,
}

/// `key in obj`: present, even as null.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IgnoredAny>, D::Error> {
    IgnoredAny::deserialize(d).map(Some)
}

/// A string, or None for any other value.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

/// Python's truthiness of a value (false when absent).
#[derive(Default)]
struct Truthy(bool);

/// `_int`: a positive integer (within 64 bits: orjson reads larger ones as floats), else 0.
#[derive(Default)]
struct Count(u64);

/// An object read as `T`, or None for any other value.
struct Obj<T>(Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// A string, a list of objects (other items skipped), or something else.
#[derive(Default)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
    #[default]
    Other,
}

/// The objects of a list (other items skipped).
struct Seq<T>(Vec<T>);

/// Skips a list's items; says whether there were any.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<bool, A::Error> {
    let mut any = false;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        any = true;
    }
    Ok(any)
}

/// Skips an object's members.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// What a map given to `deserialize_any` is: an object (with its first key, already read),
/// an empty object, or a number (its text).
enum MapKind<'de> {
    Object(Cow<'de, str>),
    Empty,
    Number(String),
}

fn map_kind<'de, A: MapAccess<'de>>(map: &mut A) -> Result<MapKind<'de>, A::Error> {
    let Some(Text(Some(key))) = map.next_key::<Text<'de>>()? else {
        return Ok(MapKind::Empty);
    };
    if key == NUMBER_TOKEN {
        let Text(n) = map.next_value::<Text<'de>>()?;
        return Ok(MapKind::Number(n.unwrap_or_default().into_owned()));
    }
    Ok(MapKind::Object(key))
}

/// `map` with its first key read already, for a derived struct to read from the start.
struct Resumed<'de, A> {
    first: Option<Cow<'de, str>>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Resumed<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.first.take() {
            Some(Cow::Borrowed(k)) => seed
                .deserialize(BorrowedStrDeserializer::<A::Error>::new(k))
                .map(Some),
            Some(Cow::Owned(k)) => seed
                .deserialize(StringDeserializer::<A::Error>::new(k))
                .map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.map.next_value_seed(seed)
    }
}

fn read_object<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    first: Option<Cow<'de, str>>,
    map: A,
) -> Result<T, A::Error> {
    T::deserialize(de::value::MapAccessDeserializer::new(Resumed {
        first,
        map,
    }))
}

/// The scalar cases of a visitor that skips them: each gives `$other`.
macro_rules! skip_scalars {
    ($other:expr) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

struct TextVisitor<'de>(PhantomData<&'de ()>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(PhantomData))
    }
}

impl<'de> Visitor<'de> for TextVisitor<'de> {
    type Value = Text<'de>;
    skip_scalars!(Text(None));
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(Text(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Text(None))
    }
}

struct TruthyVisitor<'de>(PhantomData<&'de ()>);

impl<'de> Deserialize<'de> for Truthy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TruthyVisitor(PhantomData))
    }
}

impl<'de> Visitor<'de> for TruthyVisitor<'de> {
    type Value = Truthy;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Truthy, E> {
        Ok(Truthy(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Truthy, E> {
        Ok(Truthy(v != 0))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Truthy, E> {
        Ok(Truthy(v != 0))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Truthy, E> {
        Ok(Truthy(v != 0.0))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Truthy, E> {
        Ok(Truthy(!v.is_empty()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Truthy, E> {
        Ok(Truthy(false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Truthy, A::Error> {
        drain_seq(seq).map(Truthy)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Truthy, A::Error> {
        Ok(Truthy(match map_kind(&mut map)? {
            MapKind::Number(n) => n.parse::<f64>().is_ok_and(|f| f != 0.0),
            MapKind::Empty => false,
            MapKind::Object(_) => {
                map.next_value::<IgnoredAny>()?;
                drain_map(map)?;
                true
            }
        }))
    }
}

struct CountVisitor<'de>(PhantomData<&'de ()>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor(PhantomData))
    }
}

impl<'de> Visitor<'de> for CountVisitor<'de> {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Count, E> {
        Ok(Count(0)) // serde_json gives the positive ones as u64
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count(v))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count(0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
        drain_seq(seq)?;
        Ok(Count(0))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        Ok(Count(match map_kind(&mut map)? {
            MapKind::Number(n) => match py_number(&n) {
                PyNumber::Int(digits) => digits.parse().unwrap_or(0), // negatives are 0
                PyNumber::Float(_) => 0,
            },
            MapKind::Empty => 0,
            MapKind::Object(_) => {
                map.next_value::<IgnoredAny>()?;
                drain_map(map)?;
                0
            }
        }))
    }
}

struct ObjVisitor<'de, T>(PhantomData<(&'de (), T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjVisitor(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<'de, T> {
    type Value = Obj<T>;
    skip_scalars!(Obj(None));
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Obj<T>, E> {
        Ok(Obj(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Obj<T>, A::Error> {
        drain_seq(seq)?;
        Ok(Obj(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Obj<T>, A::Error> {
        match map_kind(&mut map)? {
            MapKind::Number(_) => Ok(Obj(None)),
            MapKind::Empty => read_object(None, map).map(|t| Obj(Some(t))),
            MapKind::Object(first) => read_object(Some(first), map).map(|t| Obj(Some(t))),
        }
    }
}

struct SeqVisitor<'de, T>(PhantomData<(&'de (), T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SeqVisitor(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<'de, T> {
    type Value = Seq<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
            items.extend(item);
        }
        Ok(Seq(items))
    }
}

struct ContentVisitor<'de>(PhantomData<&'de ()>);

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ContentVisitor(PhantomData))
    }
}

impl<'de> Visitor<'de> for ContentVisitor<'de> {
    type Value = Content<'de>;
    skip_scalars!(Content::Other);
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Content::Other)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Borrowed(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SeqVisitor(PhantomData)
            .visit_seq(seq)
            .map(|Seq(b)| Content::Blocks(b))
    }
}

struct TopVisitor<'de>(PhantomData<&'de ()>);

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor(PhantomData))
    }
}

impl<'de> Visitor<'de> for TopVisitor<'de> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Not("bool"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Not("int"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Not("int"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Not("float"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Not("str"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top<'de>, E> {
        Ok(Top::Not("NoneType"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        drain_seq(seq)?;
        Ok(Top::Not("list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        match map_kind(&mut map)? {
            MapKind::Number(n) => Ok(Top::Not(match py_number(&n) {
                PyNumber::Int(_) => "int",
                PyNumber::Float(_) => "float",
            })),
            MapKind::Empty => read_object(None, map).map(Top::Line),
            MapKind::Object(first) => read_object(Some(first), map).map(Top::Line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that reads no other timestamp form and keeps what is appended.
    #[derive(Default)]
    struct Keep {
        lines: Vec<u8>,
        appends: usize,
    }

    impl Host for Keep {
        type Error = String;
        fn parse_time(&mut self, _: &str) -> Option<(i64, String)> {
            None
        }
        fn text_of(&mut self, json: &str) -> String {
            format!("<{json}>")
        }
        fn seal(&mut self, buf: &mut Vec<u8>, start: usize, _: &LineInfo) -> Result<(), String> {
            match buf[start..].len() > 1500 {
                true => Err("too big".into()),
                false => Ok(()),
            }
        }
        fn write(&mut self, lines: &[u8], _: u64) -> Result<(), String> {
            self.lines.extend_from_slice(lines);
            self.appends += 1;
            Ok(())
        }
    }

    fn importer() -> Importer {
        let rates = vec![("claude-sonnet-4".to_owned(), [3.0, 15.0, 3.75, 6.0, 0.3])];
        Importer::new(
            "c".into(),
            false,
            Prices::new(rates, "price_table:x".into()),
        )
    }

    fn read<'a>(
        data: &'a str,
        settled: bool,
        state: &mut FileState,
    ) -> (Outcome<'a>, Vec<serde_json::Value>) {
        let chunk = Chunk {
            data: data.as_bytes(),
            offset: 100,
            session: "stem",
            project: "proj",
            settled,
            ended: false,
        };
        let mut host = Keep::default();
        let out = importer().read(&chunk, state, &mut host).unwrap();
        let events = (host.lines.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (out, events)
    }

    const A1: &str = r#"{"type":"assistant","requestId":"r","timestamp":"2026-11-02T10:00:00.000Z","message":{"id":"m","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"t","name":"Read"}],"usage":{"input_tokens":1,"output_tokens":2}}}"#;
    const A2: &str = r#"{"type":"assistant","requestId":"r","timestamp":"2026-11-02T10:00:00.000Z","message":{"id":"m","model":"claude-sonnet-4-5","usage":{"input_tokens":1,"output_tokens":200,"cache_read_input_tokens":1e3}}}"#;

    #[test]
    fn a_response_waits_until_settled_or_followed() {
        let mut state = FileState::default();
        let data = format!("{A1}\n{A2}\n{{\"type\":");
        let (out, events) = read(&data, false, &mut state);
        assert_eq!((out.offset, out.lines, events.len()), (100, 2, 0));
        assert_eq!(out.bytes as usize, A1.len() + A2.len() + 2);
        assert_eq!(
            state.tools["t"].ts.as_deref(),
            Some("2026-11-02T10:00:00.000Z")
        );
        let (out, events) = read(&data, true, &mut state);
        assert_eq!(out.offset as usize, 100 + A1.len() + A2.len() + 2);
        let f = &events[0]["feature_json"];
        assert_eq!(
            (
                f["output_tokens"].as_u64(),
                f["cache_read_input_tokens"].as_u64()
            ),
            (Some(200), Some(0))
        );
        assert_eq!(f["cost_usd"].as_f64(), Some(0.003003));
        assert_eq!(events[0]["_session_id"], "stem");
    }

    #[test]
    fn bad_lines_are_returned_with_their_offset() {
        let mut state = FileState::default();
        let (out, events) = read(
            "[1]\n{\"a\":\nnull\n{\"type\":\"user\"}\n",
            true,
            &mut state,
        );
        let got: Vec<(u64, &str)> = out
            .rejected
            .iter()
            .map(|r| (r.offset, r.reason.as_str()))
            .collect();
        assert_eq!(got[0], (100, "not a JSON object but list"));
        assert_eq!(got[1].0, 104);
        assert!(got[1].1.starts_with("not JSON: "));
        assert_eq!(got[2], (110, "not a JSON object but NoneType"));
        assert_eq!((got.len(), events.len(), out.lines), (3, 0, 4));
    }

    #[test]
    fn a_refused_line_stops_the_read() {
        let mut state = FileState::default();
        let big = format!(
            "{{\"type\":\"user\",\"timestamp\":\"2026-11-02T10:00:00.000Z\",\"message\":{{\"content\":\"{}\"}}}}\n",
            "x".repeat(2000)
        );
        let chunk = Chunk {
            data: big.as_bytes(),
            offset: 0,
            session: "s",
            project: "p",
            settled: true,
            ended: false,
        };
        let mut host = Keep::default();
        let prices = Prices::new(Vec::new(), String::new());
        let r = Importer::new("c".into(), true, prices).read(&chunk, &mut state, &mut host);
        assert_eq!(r.err().as_deref(), Some("too big"));
        assert!(host.lines.is_empty());
    }

    #[test]
    fn python_rounding_and_whitespace() {
        assert_eq!(py_round(0.0009765625, 9), 0.000976562); // a tie: to even
        assert_eq!(py_round(2.5, 0), 2.0);
        assert_eq!(py_round(-0.0001, 3).to_bits(), (-0.0f64).to_bits());
        assert!(py_space('\u{1c}') && py_space('\u{3000}') && !py_space('\u{200b}'));
    }

    #[test]
    fn claude_time_is_strict() {
        assert_eq!(claude_time("1970-01-01T00:00:01.002Z"), Some(1_002_000));
        for bad in [
            "2026-02-30T10:00:00.000Z",
            "2026-11-02T24:00:00.000Z",
            "0000-01-01T00:00:00.000Z",
            "2026-11-02T10:00:00.00xZ",
            "2026-11-02T10:00:00.000+",
        ] {
            assert_eq!(claude_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_as_python_sees_them() {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(default)]
            t: Vec<Truthy>,
            #[serde(default)]
            n: Vec<Count>,
            #[serde(default, borrow)]
            s: Vec<Text<'a>>,
        }
        let p: Probe<'_> = serde_json::from_str(
            r#"{"t":[0,-0,0.0,"",[],{},null,false,1,-1,0.5,"x",[0],{"a":0},true,1e999999,18446744073709551616],
                "n":[5,-5,5.0,"5",true,null,18446744073709551615,18446744073709551616,[1],{"a":1}],
                "s":["a","\u00e9",1,null,["x"],{"x":"y"}]}"#,
        )
        .unwrap();
        let t: Vec<bool> = p.t.iter().map(|t| t.0).collect();
        let mut want = vec![false; 8];
        want.extend([true; 9]);
        assert_eq!(t, want);
        let n: Vec<u64> = p.n.iter().map(|n| n.0).collect();
        assert_eq!(n, [5, 0, 0, 0, 0, 0, u64::MAX, 0, 0, 0]);
        let s: Vec<Option<&str>> = p.s.iter().map(|s| s.0.as_deref()).collect();
        assert_eq!(s, [Some("a"), Some("é"), None, None, None, None]);
    }
}
