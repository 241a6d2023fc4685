//! The OTLP receiver's logs and traces: an `ExportLogsServiceRequest` or
//! `ExportTraceServiceRequest` body (protobuf) becomes the queue lines of the facts it
//! reports, in the vocabulary of `activitybi.capture.facts` (the README's table):
//!
//! - log events by `event.name`: `user_prompt` → `asked_question`, `api_request` →
//!   `called_model`, `tool_result` → `called_tool`, any other → `otel_<name>` with all the
//!   record's attributes;
//! - spans with `gen_ai.operation.name` `chat`, `text_completion` or `generate_content` →
//!   `called_model`, `execute_tool` → `called_tool`; other spans are not recorded.
//!
//! Attribute values are read the way the Python receiver read them (this replaced it, and
//! ids already stored depend on every byte): a value is turned into the Python value
//! opentelemetry-proto gives (`bytes_value` as hex, a `kvlist_value` as a dict whose
//! repeated keys keep their first place and last value), then `_int`, `_float`, `_text`
//! (Python's `str()`, `repr` for containers) and `datetime.fromisoformat` as Python does.
//!
//! The messages are read by [`wire`], as views of the body, rather than decoded with the
//! `opentelemetry-proto` crate or prost's derive: that crate depends on the `opentelemetry`
//! and `opentelemetry_sdk` crates whatever its features, and both build every message,
//! attribute and value before the first is read, which cost more than all the rest of the
//! receiver. Strings are slices of the body, checked as UTF-8 when read.
//!
//! A request is written whole or not at all: its lines are made first, and handed to the
//! caller's checks (size, redaction) only once the whole body has been read.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc, Weekday};

use crate::facts::{blake2b, push_hex, push_json_str, FactIdBatch};

mod wire;

use wire::{KeyValue, Value};

/// Which export request a body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Traces,
}

/// A body that is not the request it should be (the receiver answers 400).
#[derive(Debug, PartialEq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line just written to the buffer, for the queue's checks.
pub struct Written<'a> {
    /// Where the line starts in the buffer (it ends with its newline at the buffer's end).
    pub start: usize,
    pub activity: &'a str,
    /// The customer's JSON string (quotes included), in the line.
    pub customer: Range<usize>,
    /// The line's first bytes, up to the end of its ts: the fact's id (a digest) and a time
    /// written here, where the redactor has nothing to find.
    pub generated: usize,
}

/// Where one made line is in the staging buffer.
struct Made {
    line: Range<usize>,
    /// The activity's name, in the staging buffer.
    activity: Range<usize>,
    /// The customer's JSON string, from the line's start.
    customer: Range<usize>,
    /// Where the id and ts end, from the line's start.
    generated: usize,
}

thread_local! {
    /// The lines of the request being read, and where each is.
    static MADE: std::cell::RefCell<(Vec<u8>, Vec<Made>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Appends the line of every fact `body` reports to `buf`, calling `on_line` after each
/// (which may take the line off again). When the body is malformed, nothing is written and
/// `on_line` is not called.
pub fn write_events(
    signal: Signal,
    body: &[u8],
    customer: &str,
    capture_content: bool,
    buf: &mut Vec<u8>,
    on_line: &mut dyn FnMut(&mut Vec<u8>, Written<'_>),
) -> Result<(), Malformed> {
    MADE.with_borrow_mut(|(lines, made)| {
        lines.clear();
        made.clear();
        let mut out = Out {
            buf: lines,
            made,
            customer_json: {
                let mut json = Vec::new();
                push_json_str(&mut json, customer);
                json
            },
            seconds: (u64::MAX, String::new()),
            ids: FactIdBatch::new(customer),
        };
        let result = match signal {
            Signal::Logs => out.logs(body, capture_content),
            Signal::Traces => out.spans(body),
        };
        if result.is_ok() {
            out.ids.fill(lines);
            for m in made.iter() {
                let start = buf.len();
                buf.extend_from_slice(&lines[m.line.clone()]);
                let activity = std::str::from_utf8(&lines[m.activity.clone()]).unwrap_or("");
                let (customer, generated) = (m.customer.clone(), m.generated);
                on_line(
                    buf,
                    Written {
                        start,
                        activity,
                        customer,
                        generated,
                    },
                );
            }
        }
        if lines.capacity() > 2 << 20 {
            *lines = Vec::new();
        }
        result
    })
}

fn malformed_value(e: std::str::Utf8Error) -> Malformed {
    Malformed(format!("malformed attribute value: {e}"))
}

// --- values as Python saw them ---------------------------------------------------------------

/// An attribute's value; `None` for Python's None (absent, or an empty AnyValue).
type V<'a> = Option<&'a Value<'a>>;

fn value_of<'a>(kv: &'a KeyValue<'a>) -> V<'a> {
    kv.value.as_ref()
}

/// The attribute `key`: the last one given (attributes were a map).
fn attr<'a>(attrs: &'a [KeyValue<'a>], key: &str) -> V<'a> {
    entry(attrs, key).and_then(value_of)
}

fn entry<'a>(attrs: &'a [KeyValue<'a>], key: &str) -> Option<&'a KeyValue<'a>> {
    attrs.iter().rev().find(|kv| kv.key == key.as_bytes())
}

fn utf8(b: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(b).map_err(malformed_value)
}

/// A dict's entries: each key at its first place with its last value.
fn dict<'a>(kvs: &'a [KeyValue<'a>]) -> Result<Vec<(&'a str, V<'a>)>, Malformed> {
    let mut out = Vec::with_capacity(kvs.len());
    for (i, kv) in kvs.iter().enumerate() {
        if kvs[..i].iter().any(|k| k.key == kv.key) {
            continue;
        }
        let last = kvs[i..]
            .iter()
            .rev()
            .find(|k| k.key == kv.key)
            .unwrap_or(kv);
        out.push((utf8(kv.key)?, value_of(last)));
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    push_hex(&mut s, b);
    s
}

/// The value when Python sees a `str` (a string, or bytes as hex).
fn py_str(v: V<'_>) -> Result<Option<Cow<'_, str>>, Malformed> {
    Ok(match v {
        Some(Value::Str(b)) => Some(Cow::Borrowed(utf8(b)?)),
        Some(Value::Bytes(b)) => Some(Cow::Owned(hex(b))),
        _ => None,
    })
}

fn truthy(v: V<'_>) -> bool {
    match v {
        None => false,
        Some(Value::Str(b) | Value::Bytes(b)) => !b.is_empty(),
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(i)) => *i != 0,
        Some(Value::Double(f)) => *f != 0.0,
        Some(Value::Array(list) | Value::KvList(list)) => list.has_items(),
    }
}

/// Python's `a or b` of two attribute values.
fn or<'a>(a: V<'a>, b: V<'a>) -> V<'a> {
    if truthy(a) {
        a
    } else {
        b
    }
}

/// `_text`: None for None or `""`, else `str(value)`.
fn text(v: V<'_>) -> Result<Option<Cow<'_, str>>, Malformed> {
    let s = match v {
        None => return Ok(None),
        Some(Value::Str(b)) => Cow::Borrowed(utf8(b)?),
        Some(other) => {
            let mut s = String::new();
            py_repr(&mut s, Some(other), true)?;
            Cow::Owned(s)
        }
    };
    Ok((!s.is_empty()).then_some(s))
}

/// An integer as `_int` made it (`int(float(value))` for text; big values as unsigned).
#[derive(Debug, PartialEq)]
enum Int {
    Signed(i64),
    Unsigned(u64),
}

fn int(v: V<'_>) -> Result<Option<Int>, Malformed> {
    let f = match v {
        Some(Value::Int(i)) => return Ok(Some(Int::Signed(*i))),
        Some(Value::Double(f)) => *f,
        Some(Value::Str(_) | Value::Bytes(_)) => match py_str(v)?.as_deref().and_then(py_float) {
            Some(f) => f,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let t = f.trunc();
    Ok(if !t.is_finite() {
        None
    } else if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&t) {
        Some(Int::Signed(t as i64))
    } else if (0.0..18_446_744_073_709_551_616.0).contains(&t) {
        Some(Int::Unsigned(t as u64))
    } else {
        None
    })
}

/// `_float`: `float(value)`; None for what is not a finite number.
fn float(v: V<'_>) -> Result<Option<f64>, Malformed> {
    let f = match v {
        Some(Value::Int(i)) => *i as f64,
        Some(Value::Double(f)) => *f,
        Some(Value::Str(_) | Value::Bytes(_)) => match py_str(v)?.as_deref().and_then(py_float) {
            Some(f) => f,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(f.is_finite().then_some(f))
}

/// Python's `float(text)`: surrounding white space, and `_` between digits, allowed.
fn py_float(s: &str) -> Option<f64> {
    let s = s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
    if s.contains('_') {
        let b = s.as_bytes();
        let ok = b.iter().enumerate().all(|(i, &c)| {
            c != b'_'
                || (i > 0
                    && b[i - 1].is_ascii_digit()
                    && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        });
        return if ok {
            s.replace('_', "").parse().ok()
        } else {
            None
        };
    }
    s.parse().ok()
}

/// The shortest digits of a finite `f` and its decimal exponent (`d.ddd × 10^exp`).
fn digits(f: f64) -> (bool, String, i32) {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    (
        f.is_sign_negative(),
        mantissa.replace('.', ""),
        exp.parse().unwrap_or(0),
    )
}

/// A finite float in fixed notation (`123.0`, `0.0001`), or scientific with `e_plus` and
/// `exp_width` (Python's repr: `1e+16`, `1e-05`; orjson: `1e+16`, `1e-6`).
fn write_float(out: &mut String, f: f64, fixed: bool, exp_width: usize) {
    let (negative, d, exp) = digits(f);
    if negative {
        out.push('-');
    }
    if fixed {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&d);
        } else {
            let point = exp as usize + 1;
            if d.len() <= point {
                out.push_str(&d);
                out.extend(std::iter::repeat_n('0', point - d.len()));
                out.push_str(".0");
            } else {
                out.push_str(&d[..point]);
                out.push('.');
                out.push_str(&d[point..]);
            }
        }
    } else {
        out.push_str(&d[..1]);
        if d.len() > 1 {
            out.push('.');
            out.push_str(&d[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{:0exp_width$}", exp.unsigned_abs());
    }
}

/// Python's `repr(float)`.
fn py_float_repr(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
    } else {
        let exp = digits(f).2;
        write_float(out, f, (-4..16).contains(&exp), 2);
    }
}

/// Python's `str(value)` (`top`) or `repr(value)` of the value opentelemetry-proto gives.
fn py_repr(out: &mut String, v: V<'_>, top: bool) -> Result<(), Malformed> {
    match v {
        None => out.push_str("None"),
        Some(Value::Str(b)) => {
            let s = utf8(b)?;
            if top {
                out.push_str(s);
            } else {
                py_repr_str(out, s);
            }
        }
        Some(Value::Bytes(b)) => {
            let s = hex(b);
            if top {
                out.push_str(&s);
            } else {
                py_repr_str(out, &s);
            }
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "True" } else { "False" }),
        Some(Value::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::Double(f)) => py_float_repr(out, *f),
        Some(Value::Array(a)) => {
            out.push('[');
            for (i, item) in a.items()?.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, item.as_ref(), false)?;
            }
            out.push(']');
        }
        Some(Value::KvList(l)) => {
            out.push('{');
            let entries = l.entries()?;
            for (i, (k, item)) in dict(&entries)?.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr_str(out, k);
                out.push_str(": ");
                py_repr(out, item, false)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Python's `repr(str)`. Which characters Python prints as they are follows its Unicode
/// tables; this keeps every character but controls, separators and the common format
/// characters (a list given where a text is expected is rare enough).
fn py_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            ' ' => out.push(' '),
            c if printable(c) => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
}

fn printable(c: char) -> bool {
    let n = c as u32;
    !(c.is_control()
        || c.is_whitespace()
        || n == 0xad
        || (0x600..=0x605).contains(&n)
        || (0x200b..=0x200f).contains(&n)
        || (0x202a..=0x202e).contains(&n)
        || (0x2060..=0x206f).contains(&n)
        || (0xd800..=0xf8ff).contains(&n)
        || n == 0xfeff
        || (0xfff9..=0xfffb).contains(&n)
        || n >= 0xf0000)
}

/// How floats are written in JSON: as the queue's encoder writes them (serde_json), or
/// as orjson does (in the key digests).
#[derive(Clone, Copy, PartialEq)]
enum Floats {
    Queue,
    Orjson,
}

/// The value as JSON (a non-finite float as `null`).
fn write_json(buf: &mut Vec<u8>, v: V<'_>, floats: Floats) -> Result<(), Malformed> {
    match v {
        None => buf.extend_from_slice(b"null"),
        Some(Value::Str(b)) => push_json_str(buf, utf8(b)?),
        Some(Value::Bytes(b)) => push_json_str(buf, &hex(b)),
        Some(Value::Bool(b)) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
        Some(Value::Int(i)) => push_int(buf, *i),
        Some(Value::Double(f)) => write_json_float(buf, *f, floats),
        Some(Value::Array(a)) => {
            buf.push(b'[');
            for (i, item) in a.items()?.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_json(buf, item.as_ref(), floats)?;
            }
            buf.push(b']');
        }
        Some(Value::KvList(l)) => write_json_dict(buf, &dict(&l.entries()?)?, floats)?,
    }
    Ok(())
}

fn write_json_dict(
    buf: &mut Vec<u8>,
    d: &[(&str, V<'_>)],
    floats: Floats,
) -> Result<(), Malformed> {
    buf.push(b'{');
    for (i, (k, item)) in d.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_json_str(buf, k);
        buf.push(b':');
        write_json(buf, *item, floats)?;
    }
    buf.push(b'}');
    Ok(())
}

fn write_json_float(buf: &mut Vec<u8>, f: f64, floats: Floats) {
    if !f.is_finite() {
        buf.extend_from_slice(b"null");
    } else if floats == Floats::Queue {
        if !push_thousandths(buf, f) {
            let _ = serde_json::to_writer(&mut *buf, &f);
        }
    } else {
        let mut s = String::new();
        let exp = digits(f).2;
        write_float(&mut s, f, (-5..16).contains(&exp), 1);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// `f` as serde_json writes it when it is a whole number of thousandths from 0 to 10^12
/// (latencies, costs): those digits, trailing zeros cut, without the float formatter.
/// Such a number has at most 15 significant digits, so they are its shortest form.
fn push_thousandths(buf: &mut Vec<u8>, f: f64) -> bool {
    let m = (f * 1000.0).round();
    if !((0.0..1e15).contains(&m) && m / 1000.0 == f && f.is_sign_positive()) {
        return false;
    }
    let m = m as u64;
    push_int(buf, m / 1000);
    buf.push(b'.');
    let fraction = m % 1000;
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let keep = digits.iter().rposition(|&d| d != 0).map_or(1, |i| i + 1);
    buf.extend(digits[..keep].iter().map(|&d| b'0' + d as u8));
    true
}

fn push_int(buf: &mut Vec<u8>, i: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

// --- time ------------------------------------------------------------------------------------

/// Python's `datetime.fromisoformat` (CPython 3.11's C parser: any one character between
/// date and time, basic and extended forms, week dates, fractions cut at microseconds,
/// `Z` or an offset), as a naive UTC time; None for what it refuses.
fn from_isoformat(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let sep = iso_separator(b, at)?;
    let date = iso_date(sep, at)?;
    let (mut hms, mut offset) = ([0u32; 4], None);
    if b.len() > sep {
        let lead = at(sep);
        let width = match lead {
            0..=0x7f => 1,
            _ if lead & 0xf0 == 0xe0 => 3,
            _ if lead & 0xf0 == 0xf0 => 4,
            _ => 2,
        };
        (hms, offset) = iso_time(b.get(sep + width..).unwrap_or_default())?;
    }
    if date.year() < 1 || date.year() > 9999 || hms[0] > 23 || hms[1] > 59 || hms[2] > 59 {
        return None;
    }
    let local = date.and_hms_micro_opt(hms[0], hms[1], hms[2], hms[3])?;
    let utc = match offset {
        None | Some(0) => local,
        Some(us) if us.abs() < 86_400_000_000 => {
            local.checked_sub_signed(TimeDelta::microseconds(us))?
        }
        Some(_) => return None,
    };
    (1..=9999).contains(&utc.year()).then_some(utc)
}

fn iso_digits(at: impl Fn(usize) -> u8, p: usize, n: usize) -> Option<(u32, usize)> {
    let mut v = 0;
    for i in 0..n {
        let c = at(p + i);
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some((v, p + n))
}

fn iso_separator(b: &[u8], at: impl Fn(usize) -> u8) -> Option<usize> {
    let len = b.len();
    if len == 7 {
        return Some(7);
    }
    if at(4) == b'-' {
        if at(5) != b'W' {
            return Some(10);
        }
        if len < 8 {
            return None;
        }
        if len > 8 && at(8) == b'-' {
            if len == 9 {
                return None;
            }
            return Some(if len > 10 && at(10).is_ascii_digit() {
                8
            } else {
                10
            });
        }
        return Some(8);
    }
    if at(4) == b'W' {
        let mut idx = 7;
        while idx < len && at(idx).is_ascii_digit() {
            idx += 1;
        }
        if idx < 9 {
            return Some(idx);
        }
        return Some(if idx % 2 == 0 { 7 } else { 8 });
    }
    Some(8)
}

fn iso_date(len: usize, at: impl Fn(usize) -> u8 + Copy) -> Option<NaiveDate> {
    let (year, mut p) = iso_digits(at, 0, 4)?;
    let separated = at(p) == b'-';
    if separated {
        p += 1;
    }
    if at(p) == b'W' {
        let (week, next) = iso_digits(at, p + 1, 2)?;
        p = next;
        let day = if p < len {
            if separated {
                if at(p) != b'-' {
                    return None;
                }
                p += 1;
            }
            iso_digits(at, p, 1)?.0
        } else {
            1
        };
        if !(1..=7).contains(&day) {
            return None;
        }
        let weekday = Weekday::try_from(u8::try_from(day - 1).ok()?).ok()?;
        return NaiveDate::from_isoywd_opt(year as i32, week, weekday);
    }
    let (month, next) = iso_digits(at, p, 2)?;
    p = next;
    if separated {
        if at(p) != b'-' {
            return None;
        }
        p += 1;
    }
    let (day, _) = iso_digits(at, p, 2)?;
    NaiveDate::from_ymd_opt(year as i32, month, day)
}

/// The time after the separator: `[h, m, s, µs]` and the offset in microseconds.
fn iso_time(t: &[u8]) -> Option<([u32; 4], Option<i64>)> {
    let at = |i: usize| t.get(i).copied().unwrap_or(0);
    let len = t.len();
    let mut tz = 0;
    loop {
        if matches!(at(tz), b'Z' | b'+' | b'-') {
            break;
        }
        tz += 1;
        if tz >= len {
            break;
        }
    }
    let (more, hms) = hh_mm_ss_ff(at, 0, tz)?;
    if tz >= len {
        return (!more).then_some((hms, None));
    }
    if at(tz) == b'Z' {
        return (at(tz + 1) == 0).then_some((hms, Some(0)));
    }
    let sign = if at(tz) == b'-' { -1 } else { 1 };
    let (more, off) = hh_mm_ss_ff(at, tz + 1, len)?;
    if more {
        return None;
    }
    let seconds = i64::from(off[0]) * 3600 + i64::from(off[1]) * 60 + i64::from(off[2]);
    Some((hms, Some(sign * (seconds * 1_000_000 + i64::from(off[3])))))
}

/// CPython's `parse_hh_mm_ss_ff`: the values, and whether anything follows them.
fn hh_mm_ss_ff(
    at: impl Fn(usize) -> u8 + Copy,
    start: usize,
    end: usize,
) -> Option<(bool, [u32; 4])> {
    let mut vals = [0u32; 4];
    let mut p = start;
    let mut separated = true;
    for (i, val) in vals.iter_mut().take(3).enumerate() {
        let (v, next) = iso_digits(at, p, 2)?;
        *val = v;
        let c = at(next);
        p = next + 1;
        if i == 0 {
            separated = c == b':';
        }
        if p >= end {
            return Some((c != 0, vals));
        } else if separated && c == b':' {
            continue;
        } else if c == b'.' || c == b',' {
            break;
        } else if !separated {
            p -= 1;
        } else {
            return None;
        }
    }
    let to_parse = (end - p).min(6);
    if to_parse == 0 {
        return None;
    }
    let (mut us, next) = iso_digits(at, p, to_parse)?;
    us *= 10u32.pow(6 - to_parse as u32);
    p = next;
    while at(p).is_ascii_digit() {
        p += 1;
    }
    vals[3] = us;
    Some((at(p) != 0, vals))
}

fn from_nanos(nanos: u64) -> NaiveDateTime {
    DateTime::from_timestamp_micros((nanos / 1000) as i64)
        .unwrap_or_default()
        .naive_utc()
}

/// `_ts`: the `event.timestamp` text when Python's datetime reads it, else the time in
/// nanoseconds (now when there is none).
fn ts_of(nanos: u64, stamp: Option<&str>) -> NaiveDateTime {
    if let Some(t) = stamp.and_then(from_isoformat) {
        return t;
    }
    if nanos == 0 {
        let now = Utc::now().naive_utc();
        return now
            .with_nanosecond(now.nanosecond() / 1000 * 1000)
            .unwrap_or(now);
    }
    from_nanos(nanos)
}

/// `facts.iso_ts`: the queue's timestamp form (milliseconds, cut).
fn iso_ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An event's `ts` text, kept inline: records are many, and each would allocate one.
struct Ts {
    bytes: [u8; Ts::CAP],
    len: usize,
}

impl Ts {
    /// Enough for any time `iso_ts` writes (`+262143-12-31T23:59:59.999Z` at the most).
    const CAP: usize = 32;

    fn new(text: &str) -> Self {
        let mut ts = Ts {
            bytes: [0; Ts::CAP],
            len: 0,
        };
        for &b in text.as_bytes() {
            ts.push(b);
        }
        ts
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }
}

impl std::ops::Deref for Ts {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("ASCII")
    }
}

/// `datetime.isoformat()`.
fn isoformat(t: NaiveDateTime) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let us = t.nanosecond() / 1000;
    if us != 0 {
        let _ = write!(s, ".{us:06}");
    }
    s
}

/// `otel_<name>`: what an unknown event is recorded as (a verb_noun-shaped name).
pub fn activity_name(event_name: &str) -> String {
    let mut words = String::with_capacity(event_name.len());
    for c in event_name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            words.push(c);
        } else if !words.ends_with('_') {
            words.push('_');
        }
    }
    let words = words.trim_matches('_');
    let words = &words[..words.len().min(80)];
    format!("otel_{}", if words.is_empty() { "event" } else { words })
}

// --- the events ------------------------------------------------------------------------------

const ASKED_QUESTION: &str = "asked_question";
const CALLED_MODEL: &str = "called_model";
const CALLED_TOOL: &str = "called_tool";
const MODEL_OPERATIONS: [&str; 3] = ["chat", "text_completion", "generate_content"];
const STATUS_CODE_ERROR: i32 = 2;

/// Writes feature_json members of its own (an unknown event's).
type Members<'a> = &'a dyn Fn(&mut Vec<u8>) -> Result<(), Malformed>;

/// A feature's value.
enum F<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<Int>),
    Float(Option<f64>),
}

struct Out<'a> {
    buf: &'a mut Vec<u8>,
    made: &'a mut Vec<Made>,
    /// The customer as a JSON string.
    customer_json: Vec<u8>,
    /// The last epoch second written by `ns_ts`, and its text.
    seconds: (u64, String),
    ids: FactIdBatch,
}

impl Out<'_> {
    /// `facts.ns_ts`.
    fn ns_ts(&mut self, nanos: u64) -> Ts {
        let seconds = nanos / 1_000_000_000;
        if self.seconds.0 != seconds {
            let t = from_nanos(seconds * 1_000_000_000);
            self.seconds = (seconds, t.format("%Y-%m-%dT%H:%M:%S").to_string());
        }
        let ms = nanos % 1_000_000_000 / 1_000_000;
        let mut out = Ts::new(&self.seconds.1);
        out.push(b'.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(b'0' + d as u8);
        }
        out.push(b'Z');
        out
    }

    /// `_stamp`.
    fn stamp(&mut self, nanos: u64, stamp: Option<&str>) -> Ts {
        if nanos == 0 || stamp.is_some() {
            Ts::new(&iso_ts(ts_of(nanos, stamp)))
        } else {
            self.ns_ts(nanos)
        }
    }

    /// Writes one event line (`facts._event`): features without their `None`s, then
    /// `source` and `session_id`.
    fn event(
        &mut self,
        activity: &str,
        key: &str,
        ts: &str,
        session: Option<&str>,
        features: &[(&str, F<'_>)],
        raw_features: Option<Members<'_>>,
    ) -> Result<(), Malformed> {
        let buf = &mut *self.buf;
        let start = buf.len();
        buf.extend_from_slice(b"{\"activity_id\":\"");
        self.ids.push(buf, activity, key);
        buf.push(b'"');
        // The ts and the activity (made here, `[a-z0-9_]`) need no escape; the customer's
        // JSON string was made once.
        debug_assert!(ts
            .bytes()
            .chain(activity.bytes())
            .all(|b| b > 0x20 && b != b'"' && b != b'\\'));
        buf.extend_from_slice(b",\"ts\":\"");
        buf.extend_from_slice(ts.as_bytes());
        let generated = buf.len() + 1 - start;
        buf.extend_from_slice(b"\",\"activity\":\"");
        let activity_at = buf.len();
        buf.extend_from_slice(activity.as_bytes());
        let activity = activity_at..buf.len();
        buf.extend_from_slice(b"\",\"customer\":");
        let customer_at = buf.len() - start;
        buf.extend_from_slice(&self.customer_json);
        let customer = customer_at..buf.len() - start;
        buf.extend_from_slice(b",\"feature_json\":{");
        if let Some(write) = raw_features {
            write(buf)?;
            buf.push(b',');
        }
        for (name, value) in features {
            match value {
                F::Text(Some(s)) => {
                    push_key(buf, name);
                    push_json_str(buf, s);
                }
                F::Int(Some(Int::Signed(i))) => {
                    push_key(buf, name);
                    push_int(buf, *i);
                }
                F::Int(Some(Int::Unsigned(u))) => {
                    push_key(buf, name);
                    push_int(buf, *u);
                }
                F::Float(Some(f)) => {
                    push_key(buf, name);
                    write_json_float(buf, *f, Floats::Queue);
                }
                _ => continue,
            }
            buf.push(b',');
        }
        buf.extend_from_slice(b"\"source\":\"otel\"");
        if let Some(s) = session {
            buf.extend_from_slice(b",\"session_id\":");
            push_json_str(buf, s);
        }
        buf.extend_from_slice(b"},\"_source\":\"otel\"");
        if let Some(s) = session {
            buf.extend_from_slice(b",\"_session_id\":");
            push_json_str(buf, s);
        }
        buf.extend_from_slice(b"}\n");
        self.made.push(Made {
            line: start..buf.len(),
            activity,
            customer,
            generated,
        });
        Ok(())
    }

    fn logs(&mut self, body: &[u8], capture_content: bool) -> Result<(), Malformed> {
        let mut record = wire::LogRecord::default();
        wire::each_log_record(body, &mut record, check_resource, |resource, record| {
            self.log(record, attr(resource, "session.id"), capture_content)
        })
    }

    fn log(
        &mut self,
        record: &wire::LogRecord<'_>,
        resource_session: V<'_>,
        capture_content: bool,
    ) -> Result<(), Malformed> {
        let attrs = &record.attributes[..];
        let named = attr(attrs, "event.name");
        let mut name: Cow<'_, str> = if truthy(named) {
            py_str(named)?.unwrap_or_default()
        } else {
            Cow::Borrowed(utf8(record.event_name)?)
        };
        if name.is_empty() {
            name = match py_str(record.body.as_ref())? {
                Some(body) if !body.is_empty() => body,
                _ => Cow::Borrowed("event"),
            };
        }
        let name = name.strip_prefix("claude_code.").unwrap_or(&name);
        let nanos = if record.time_unix_nano != 0 {
            record.time_unix_nano
        } else {
            record.observed_time_unix_nano
        };
        let when = py_str(attr(attrs, "event.timestamp"))?;
        let ts = self.stamp(nanos, when.as_deref());
        let session = match entry(attrs, "session.id") {
            Some(kv) => text(value_of(kv))?,
            None => text(resource_session)?,
        };
        let prompt_id = attr(attrs, "prompt.id");
        // The key of a record without its own: a digest of the record (orjson's JSON array
        // of the session, prompt id, sequence, name and time).
        let fallback = || -> Result<String, Malformed> {
            let mut array = vec![b'['];
            match &session {
                Some(s) => push_json_str(&mut array, s),
                None => array.extend_from_slice(b"null"),
            }
            array.push(b',');
            write_json(&mut array, prompt_id, Floats::Orjson)?;
            array.push(b',');
            write_json(&mut array, attr(attrs, "event.sequence"), Floats::Orjson)?;
            array.push(b',');
            push_json_str(&mut array, name);
            array.push(b',');
            push_json_str(&mut array, &isoformat(ts_of(nanos, when.as_deref())));
            array.push(b']');
            Ok(hex(blake2b(12).hash(&array).as_bytes()))
        };
        let session = session.as_deref();
        let t = |key: &str| text(attr(attrs, key)).map(F::Text);
        match name {
            "user_prompt" => {
                let key = match text(prompt_id)? {
                    Some(k) => k,
                    None => Cow::Owned(fallback()?),
                };
                let prompt = if capture_content {
                    t("prompt")?
                } else {
                    F::Text(None)
                };
                self.event(
                    ASKED_QUESTION,
                    &key,
                    &ts,
                    session,
                    &[
                        ("prompt_length", F::Int(int(attr(attrs, "prompt_length"))?)),
                        ("prompt", prompt),
                    ],
                    None,
                )
            }
            "api_request" => {
                let key = match text(attr(attrs, "request_id"))? {
                    Some(k) => k,
                    None => Cow::Owned(fallback()?),
                };
                let query_source = text(attr(attrs, "query_source"))?;
                let agent = (query_source.as_deref() == Some("subagent"))
                    .then_some(Cow::Borrowed("subagent"));
                self.event(
                    CALLED_MODEL,
                    &key,
                    &ts,
                    session,
                    &[
                        ("model", t("model")?),
                        ("input_tokens", F::Int(int(attr(attrs, "input_tokens"))?)),
                        ("output_tokens", F::Int(int(attr(attrs, "output_tokens"))?)),
                        (
                            "cache_creation_input_tokens",
                            F::Int(int(attr(attrs, "cache_creation_tokens"))?),
                        ),
                        (
                            "cache_read_input_tokens",
                            F::Int(int(attr(attrs, "cache_read_tokens"))?),
                        ),
                        ("cost_usd", F::Float(float(attr(attrs, "cost_usd"))?)),
                        ("request_id", F::Text(Some(Cow::Borrowed(&key)))),
                        ("agent", F::Text(agent)),
                        ("latency_ms", F::Float(float(attr(attrs, "duration_ms"))?)),
                        ("query_source", F::Text(query_source)),
                        ("speed", t("speed")?),
                        ("effort", t("effort")?),
                        ("prompt_id", F::Text(text(prompt_id)?)),
                    ],
                    None,
                )
            }
            "tool_result" => {
                let key = match text(attr(attrs, "tool_use_id"))? {
                    Some(k) => k,
                    None => Cow::Owned(fallback()?),
                };
                let tool = text(attr(attrs, "tool_name"))?;
                let success = attr(attrs, "success");
                let ok = matches!(success, Some(Value::Bool(true)))
                    || py_text_lower(success)?.as_deref() == Some("true");
                let outcome = if ok {
                    Cow::Borrowed("ok")
                } else {
                    text(attr(attrs, "error"))?.unwrap_or(Cow::Borrowed("error"))
                };
                let server = tool
                    .as_deref()
                    .filter(|t| t.starts_with("mcp__") && t.matches("__").count() >= 2)
                    .and_then(|t| t.split("__").nth(1))
                    .map(|s| Cow::Owned(s.to_owned()));
                self.event(
                    CALLED_TOOL,
                    &key,
                    &ts,
                    session,
                    &[
                        ("tool", F::Text(tool)),
                        ("latency_ms", F::Float(float(attr(attrs, "duration_ms"))?)),
                        ("outcome", F::Text(Some(outcome))),
                        ("mcp_server", F::Text(server)),
                        ("tool_use_id", F::Text(Some(Cow::Borrowed(&key)))),
                        ("decision_type", t("decision_type")?),
                        ("decision_source", t("decision_source")?),
                        (
                            "tool_result_size_bytes",
                            F::Int(int(attr(attrs, "tool_result_size_bytes"))?),
                        ),
                        ("prompt_id", F::Text(text(prompt_id)?)),
                    ],
                    None,
                )
            }
            _ => {
                let activity = activity_name(name);
                let key = fallback()?;
                let all = dict(attrs)?;
                self.event(
                    &activity,
                    &key,
                    &ts,
                    session,
                    &[],
                    Some(&|b| {
                        b.extend_from_slice(b"\"event_name\":");
                        push_json_str(b, name);
                        b.extend_from_slice(b",\"attributes\":");
                        write_json_dict(b, &all, Floats::Queue)
                    }),
                )
            }
        }
    }

    fn spans(&mut self, body: &[u8]) -> Result<(), Malformed> {
        let mut span = wire::Span::default();
        wire::each_span(body, &mut span, check_resource, |resource, span| {
            self.span(span, attr(resource, "session.id"))
        })
    }

    fn span(&mut self, span: &wire::Span<'_>, resource_session: V<'_>) -> Result<(), Malformed> {
        let attrs = &span.attributes[..];
        let operation = py_str(attr(attrs, "gen_ai.operation.name"))?;
        let Some(operation) = operation.as_deref() else {
            return Ok(());
        };
        let model = MODEL_OPERATIONS.contains(&operation);
        if !model && operation != "execute_tool" {
            return Ok(());
        }
        let start = span.start_time_unix_nano;
        let ts = self.stamp(start, None);
        let latency = latency_ms(span.end_time_unix_nano.saturating_sub(start));
        let session = text(or(
            or(
                attr(attrs, "gen_ai.conversation.id"),
                attr(attrs, "session.id"),
            ),
            resource_session,
        ))?;
        let agent = text(attr(attrs, "gen_ai.agent.name"))?;
        let t = |key: &str| text(attr(attrs, key)).map(F::Text);
        let span_key = || format!("{}:{}", hex(span.trace_id), hex(span.span_id));
        if model {
            let key = match text(attr(attrs, "gen_ai.response.id"))? {
                Some(k) => k,
                None => Cow::Owned(span_key()),
            };
            let cache_creation = or(
                attr(attrs, "gen_ai.usage.cache_creation.input_tokens"),
                attr(attrs, "gen_ai.usage.cache_creation_input_tokens"),
            );
            let cache_read = or(
                attr(attrs, "gen_ai.usage.cache_read.input_tokens"),
                attr(attrs, "gen_ai.usage.cache_read_input_tokens"),
            );
            return self.event(
                CALLED_MODEL,
                &key,
                &ts,
                session.as_deref(),
                &[
                    (
                        "model",
                        F::Text(text(or(
                            attr(attrs, "gen_ai.response.model"),
                            attr(attrs, "gen_ai.request.model"),
                        ))?),
                    ),
                    (
                        "input_tokens",
                        F::Int(int(attr(attrs, "gen_ai.usage.input_tokens"))?),
                    ),
                    (
                        "output_tokens",
                        F::Int(int(attr(attrs, "gen_ai.usage.output_tokens"))?),
                    ),
                    ("cache_creation_input_tokens", F::Int(int(cache_creation)?)),
                    ("cache_read_input_tokens", F::Int(int(cache_read)?)),
                    ("request_id", F::Text(Some(Cow::Borrowed(&key)))),
                    ("agent", F::Text(agent)),
                    ("latency_ms", F::Float(Some(latency))),
                    (
                        "provider",
                        F::Text(text(or(
                            attr(attrs, "gen_ai.provider.name"),
                            attr(attrs, "gen_ai.system"),
                        ))?),
                    ),
                ],
                None,
            );
        }
        let key = match text(attr(attrs, "gen_ai.tool.call.id"))? {
            Some(k) => k,
            None => Cow::Owned(span_key()),
        };
        let tool = match text(attr(attrs, "gen_ai.tool.name"))? {
            Some(t) => t,
            None => Cow::Borrowed(utf8(span.name)?),
        };
        let outcome = if let Some((STATUS_CODE_ERROR, message)) = span.status {
            match utf8(message)? {
                "" => text(attr(attrs, "error.type"))?.unwrap_or(Cow::Borrowed("error")),
                m => Cow::Borrowed(m),
            }
        } else {
            Cow::Borrowed("ok")
        };
        self.event(
            CALLED_TOOL,
            &key,
            &ts,
            session.as_deref(),
            &[
                ("tool", F::Text(Some(tool))),
                ("latency_ms", F::Float(Some(latency))),
                ("outcome", F::Text(Some(outcome))),
                ("tool_use_id", F::Text(Some(Cow::Borrowed(&key)))),
                ("agent", t("gen_ai.agent.name")?),
            ],
            None,
        )
    }
}

/// Python decoded every resource attribute: a malformed one refused the request.
fn check_resource(attrs: &[KeyValue<'_>]) -> Result<(), Malformed> {
    for kv in attrs {
        write_json(&mut Vec::new(), value_of(kv), Floats::Queue)?;
    }
    Ok(())
}

/// `str(value).lower()`.
fn py_text_lower(v: V<'_>) -> Result<Option<String>, Malformed> {
    let mut s = String::new();
    py_repr(&mut s, v, true)?;
    Ok(Some(s.to_lowercase()))
}

/// Python's `round(nanos / 1e6, 3)`: milliseconds to the microsecond. Away from a tie the
/// microseconds are `nanos / 1000` rounded (the float's error is far below a nanosecond);
/// at a tie Python rounds the float's exact value, which only the decimal expansion tells.
fn latency_ms(nanos: u64) -> f64 {
    let x = nanos as f64 / 1e6;
    if nanos % 1000 == 500 || nanos >= 1 << 53 {
        return format!("{x:.3}").parse().unwrap_or(x);
    }
    ((nanos + 500) / 1000) as f64 / 1000.0
}

/// A feature's name (one of this module's, which JSON writes as it is) and its colon.
fn push_key(buf: &mut Vec<u8>, name: &str) {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_events_are_named_verb_noun() {
        assert_eq!(activity_name("api_error"), "otel_api_error");
        assert_eq!(
            activity_name("MCP Server.Connection!"),
            "otel_mcp_server_connection"
        );
        assert_eq!(activity_name("***"), "otel_event");
        assert_eq!(
            activity_name(&"x".repeat(100)),
            format!("otel_{}", "x".repeat(80))
        );
    }

    #[test]
    fn floats_print_as_python_and_orjson_do() {
        let repr = |f: f64| {
            let mut s = String::new();
            py_float_repr(&mut s, f);
            s
        };
        for (f, want) in [
            (1.5, "1.5"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123.0, "123.0"),
            (-0.0, "-0.0"),
            (2.5e-5, "2.5e-05"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(repr(f), want);
        }
        let orjson = |f: f64| {
            let mut b = Vec::new();
            write_json_float(&mut b, f, Floats::Orjson);
            String::from_utf8(b).unwrap()
        };
        for (f, want) in [
            (1e-5, "0.00001"),
            (1e-6, "1e-6"),
            (1.234e-6, "1.234e-6"),
            (9.99e15, "9990000000000000.0"),
            (1.5e16, "1.5e+16"),
            (1e22, "1e+22"),
            (12345.678, "12345.678"),
            (f64::INFINITY, "null"),
        ] {
            assert_eq!(orjson(f), want);
        }
    }

    #[test]
    fn thousandths_are_written_as_serde_json_writes_them() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut values = vec![
            0.0,
            -0.0,
            0.001,
            0.1,
            0.5,
            1.0,
            5.0,
            2100.0,
            999_999_999_999.999,
        ];
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let m = rng % 10u64.pow(1 + (rng >> 60) as u32 % 15);
            values.push(m as f64 / 1000.0);
            values.push(f64::from_bits(rng >> 2)); // any float: mostly not thousandths
        }
        let mut fast = 0;
        for f in values.into_iter().filter(|f| f.is_finite()) {
            let mut got = Vec::new();
            write_json_float(&mut got, f, Floats::Queue);
            let want = serde_json::to_string(&f).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), want, "{f:e}");
            fast += usize::from(push_thousandths(&mut Vec::new(), f));
        }
        assert!(fast > 15_000, "{fast}");
    }

    #[test]
    fn python_float_text() {
        assert_eq!(py_float(" 1_000.5\n"), Some(1000.5));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("_1"), None);
        assert_eq!(py_float("1e3"), Some(1000.0));
        assert_eq!(py_float("abc"), None);
    }

    #[test]
    fn latency_rounds_as_python() {
        // round(n / 1e6, 3) in Python.
        assert_eq!(latency_ms(62_500), 0.062);
        assert_eq!(latency_ms(63_500), 0.064);
        assert_eq!(latency_ms(1_234_567_891), 1234.568);
        assert_eq!(latency_ms(5_000_000), 5.0);
        assert_eq!(latency_ms(0), 0.0);
        assert_eq!(latency_ms(2_675_500), 2.675);
    }

    #[test]
    fn isoformat_as_python_reads_it() {
        let read = |s: &str| from_isoformat(s).map(isoformat);
        assert_eq!(
            read("2026-01-01T10:30:45.1234567Z").as_deref(),
            Some("2026-01-01T10:30:45.123456")
        );
        assert_eq!(
            read("2026-01-01T10304512").as_deref(),
            Some("2026-01-01T10:30:45.120000")
        );
        assert_eq!(
            read("2026-W01-1T10").as_deref(),
            Some("2025-12-29T10:00:00")
        );
        assert_eq!(read("2026W011").as_deref(), Some("2025-12-29T00:00:00"));
        assert_eq!(
            read("2026-01-01T10:30+02:75").as_deref(),
            Some("2026-01-01T07:15:00")
        );
        assert_eq!(
            read("2026-01-01 10:00:00+0530").as_deref(),
            Some("2026-01-01T04:30:00")
        );
        assert_eq!(
            read("2026-01-01é10").as_deref(),
            Some("2026-01-01T10:00:00")
        );
        assert_eq!(read("2026-01-01T10:30:45."), None);
        assert_eq!(read("2026-02-30"), None);
        assert_eq!(read("yesterday"), None);
    }
}
