//! The OTLP messages the receiver reads, as views of the request body: every string and
//! nested message is a slice of the body, and nothing is built per record or attribute.
//!
//! prost's wire-format functions (`decode_varint`, `skip_field`) read the
//! fields; what is here is which fields of opentelemetry-proto's messages are read, and
//! protobuf's rules for reading them: fields in any order, unknown fields skipped, the last
//! value of a scalar field winning, and a singular message field given twice merged (which
//! for a serialized message is the same as reading its parts one after the other: a
//! [`Msg`] keeps every part). A field of a known number with the wrong wire type, a length
//! past the end and a nesting deeper than prost allows are malformed, as with prost.

use prost::encoding::{decode_varint, skip_field, DecodeContext, WireType};

use super::Malformed;

/// How deep values may nest (prost's recursion limit).
const MAX_DEPTH: u32 = 100;

/// One field's value, by wire type.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// A 32-bit value or a group: never read here.
    Skipped,
}

/// The fields of one serialized message, in order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// A varint; one byte (every tag read here, most lengths) without a call.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, Bad> {
        match self.buf.first() {
            Some(&b) if b < 0x80 => {
                self.buf = &self.buf[1..];
                Ok(u64::from(b))
            }
            _ => decode_varint(&mut self.buf).map_err(|_| Bad("invalid varint")),
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, Bad> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = (key >> 3) as u32;
        if key > u64::from(u32::MAX) || tag == 0 {
            return Err(Bad("invalid key"));
        }
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let Some((bytes, rest)) = self.buf.split_first_chunk::<8>() else {
                    return Err(UNDERFLOW);
                };
                self.buf = rest;
                Field::Fixed64(u64::from_le_bytes(*bytes))
            }
            2 => {
                let len = self.varint()?;
                if len > self.buf.len() as u64 {
                    return Err(UNDERFLOW);
                }
                let (bytes, rest) = self.buf.split_at(len as usize);
                self.buf = rest;
                Field::Bytes(bytes)
            }
            wire => {
                let wire_type = WireType::try_from(wire).map_err(|_| Bad("invalid wire type"))?;
                skip_field(wire_type, tag, &mut self.buf, DecodeContext::default())
                    .map_err(|_| Bad("invalid group"))?;
                Field::Skipped
            }
        };
        Ok(Some((tag, field)))
    }
}

/// Why a body is malformed, small enough to be returned in registers on the hot path;
/// [`Malformed`] says it to the client.
#[derive(Clone, Copy, Debug)]
pub struct Bad(&'static str);

impl From<Bad> for Malformed {
    fn from(bad: Bad) -> Self {
        Malformed(format!("failed to decode Protobuf message: {}", bad.0))
    }
}

const UNDERFLOW: Bad = Bad("buffer underflow");

/// Calls `each` with every field of `part`. `each` returns `false` for a field whose number
/// it knows with another wire type, which makes the message malformed (`wrong`).
#[inline(always)]
fn fields<'a, E: From<Bad>>(
    part: &'a [u8],
    wrong: &'static str,
    mut each: impl FnMut(u32, Field<'a>) -> Result<bool, E>,
) -> Result<(), E> {
    let mut fields = Fields::new(part);
    while let Some((tag, field)) = fields.next()? {
        if !each(tag, field)? {
            return Err(Bad(wrong).into());
        }
    }
    Ok(())
}

/// A list or map value: its serialized message, in one part or more (given again, it
/// merges). One part, as senders write them, is a slice; more are boxed, which keeps every
/// value small.
#[derive(Clone)]
pub enum Msg<'a> {
    One(&'a [u8]),
    Parts(Box<[&'a [u8]]>),
}

impl<'a> Msg<'a> {
    fn merged(self, part: &'a [u8]) -> Self {
        let mut parts = match self {
            Msg::One(first) => vec![first],
            Msg::Parts(parts) => parts.into_vec(),
        };
        parts.push(part);
        Msg::Parts(parts.into_boxed_slice())
    }

    /// `ArrayValue.values`: each item's value (None for an empty `AnyValue`).
    pub fn items(&self) -> Result<Vec<Option<Value<'a>>>, Malformed> {
        let mut out = Vec::new();
        self.repeated(|b| {
            out.push(any_value(b, 0)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// `KeyValueList.values`.
    pub fn entries(&self) -> Result<Vec<KeyValue<'a>>, Malformed> {
        let mut out = Vec::new();
        self.repeated(|b| push_key_value(&mut out, b, 0))?;
        Ok(out)
    }

    /// Whether a list or map has an item (Python's truth of the list or dict).
    pub fn has_items(&self) -> bool {
        let mut any = false;
        let _ = self.repeated(|_| {
            any = true;
            Ok(())
        });
        any
    }

    /// Calls `each` with every part of the repeated field 1 (`ArrayValue.values`,
    /// `KeyValueList.values`); the message was checked when it was read.
    fn repeated(&self, mut each: impl FnMut(&'a [u8]) -> Result<(), Bad>) -> Result<(), Bad> {
        let parts = match self {
            Msg::One(part) => std::slice::from_ref(part),
            Msg::Parts(parts) => &parts[..],
        };
        for part in parts {
            fields(part, "invalid wire type in a list", |tag, f| {
                match (tag, f) {
                    (1, Field::Bytes(b)) => each(b).map(|()| true),
                    (1, _) => Ok(false),
                    _ => Ok(true),
                }
            })?;
        }
        Ok(())
    }
}

/// `AnyValue.value`: which of its oneof fields was given last, with its value.
#[derive(Clone)]
pub enum Value<'a> {
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Msg<'a>),
    KvList(Msg<'a>),
    Bytes(&'a [u8]),
}

/// A `KeyValue`: its key's bytes (UTF-8 is checked when read) and value (None when absent
/// or empty).
#[derive(Clone)]
pub struct KeyValue<'a> {
    pub key: &'a [u8],
    pub value: Option<Value<'a>>,
}

/// Reads an `AnyValue` into `value`, merging as protobuf does: a later oneof field
/// replaces an earlier one, except that a list or map given again is extended.
#[inline(always)]
fn merge_any_value<'a>(
    value: &mut Option<Value<'a>>,
    part: &'a [u8],
    depth: u32,
) -> Result<(), Bad> {
    fields(part, "invalid wire type in an AnyValue", |tag, f| {
        *value = Some(match (tag, f) {
            (1, Field::Bytes(b)) => Value::Str(b),
            (2, Field::Varint(n)) => Value::Bool(n != 0),
            (3, Field::Varint(n)) => Value::Int(n as i64),
            (4, Field::Fixed64(n)) => Value::Double(f64::from_bits(n)),
            (5, Field::Bytes(b)) => {
                check_list(b, false, depth + 1)?;
                match value.take() {
                    Some(Value::Array(m)) => Value::Array(m.merged(b)),
                    _ => Value::Array(Msg::One(b)),
                }
            }
            (6, Field::Bytes(b)) => {
                check_list(b, true, depth + 1)?;
                match value.take() {
                    Some(Value::KvList(m)) => Value::KvList(m.merged(b)),
                    _ => Value::KvList(Msg::One(b)),
                }
            }
            (7, Field::Bytes(b)) => Value::Bytes(b),
            (1..=7, _) => return Ok(false),
            _ => return Ok(true),
        });
        Ok(true)
    })
}

fn any_value(part: &[u8], depth: u32) -> Result<Option<Value<'_>>, Bad> {
    let mut value = None;
    merge_any_value(&mut value, part, depth)?;
    Ok(value)
}

/// Checks an `ArrayValue` (`kv` false) or a `KeyValueList` and everything in it, as
/// prost's decoding of the whole request would.
fn check_list(part: &[u8], kv: bool, depth: u32) -> Result<(), Bad> {
    if depth > MAX_DEPTH {
        return Err(Bad("recursion limit reached"));
    }
    fields(part, "invalid wire type in a list", |tag, f| {
        match (tag, f) {
            (1, Field::Bytes(b)) if kv => key_value(b, depth).map(|_| true),
            (1, Field::Bytes(b)) => any_value(b, depth).map(|_| true),
            (1, _) => Ok(false),
            _ => Ok(true),
        }
    })
}

fn key_value(part: &[u8], depth: u32) -> Result<KeyValue<'_>, Bad> {
    let mut out = Vec::with_capacity(1);
    push_key_value(&mut out, part, depth)?;
    Ok(out.swap_remove(0))
}

/// Reads a `KeyValue` onto the end of `out`, in place (moving a read value into the vector
/// cost more than reading it).
#[inline(always)]
fn push_key_value<'a>(out: &mut Vec<KeyValue<'a>>, part: &'a [u8], depth: u32) -> Result<(), Bad> {
    if let Some(kv) = plain_key_value(part) {
        out.push(kv);
        return Ok(());
    }
    out.push(KeyValue {
        key: &[],
        value: None,
    });
    read_key_value(out.last_mut().expect("just pushed"), part, depth)
}

/// A `KeyValue` as protobuf reads it, in any form.
fn read_key_value<'a>(kv: &mut KeyValue<'a>, part: &'a [u8], depth: u32) -> Result<(), Bad> {
    fields(part, "invalid wire type in a KeyValue", |tag, f| {
        match (tag, f) {
            (1, Field::Bytes(b)) => kv.key = b,
            (2, Field::Bytes(b)) => merge_any_value(&mut kv.value, b, depth)?,
            (1 | 2, _) => return Ok(false),
            _ => {}
        }
        Ok(true)
    })
}

/// The `KeyValue` exporters write (a key, then a string or integer value, each with a
/// one-byte length and nothing after), read without the general loop; None for any other.
#[inline(always)]
fn plain_key_value(part: &[u8]) -> Option<KeyValue<'_>> {
    let [0x0a, key_len, rest @ ..] = part else {
        return None;
    };
    let (key, rest) = rest.split_at_checked(usize::from(*key_len))?;
    let [0x12, value_len, value @ ..] = rest else {
        return None;
    };
    if *key_len >= 0x80 || *value_len >= 0x80 || usize::from(*value_len) != value.len() {
        return None;
    }
    let value = match value {
        [0x0a, len, s @ ..] if usize::from(*len) == s.len() && *len < 0x80 => Value::Str(s),
        [0x18, n] if *n < 0x80 => Value::Int(i64::from(*n)),
        [0x18, lo, hi] if *lo >= 0x80 && *hi < 0x80 => {
            Value::Int(i64::from(lo & 0x7f) | i64::from(*hi) << 7)
        }
        _ => return None,
    };
    Some(KeyValue {
        key,
        value: Some(value),
    })
}

/// Called once with each resource's attributes, before its records.
pub type OnResource = fn(&[KeyValue<'_>]) -> Result<(), Malformed>;

/// Calls `each` with every part of the repeated message field `tag` of `part`.
fn each_part<'a>(
    part: &'a [u8],
    wrong: &'static str,
    tag: u32,
    mut each: impl FnMut(&'a [u8]) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    fields(part, wrong, |t, f| match f {
        Field::Bytes(b) if t == tag => each(b).map(|()| true),
        _ => Ok(t != tag),
    })
}

/// A `ResourceLogs` or `ResourceSpans`: its resource's attributes (field 1, merged when
/// given again) to `on_resource`, then each part of its scope field (2) and of that
/// scope's record field (`record_tag`) to `each`.
fn resource_records<'a>(
    part: &'a [u8],
    record_tag: u32,
    on_resource: OnResource,
    mut each: impl FnMut(&[KeyValue<'a>], &'a [u8]) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let mut attrs = Vec::new();
    let resource = |tag, f| -> Result<bool, Bad> {
        match (tag, f) {
            (1, Field::Bytes(resource)) => {
                fields(
                    resource,
                    "invalid wire type in a Resource",
                    |tag, f| match (tag, f) {
                        (1, Field::Bytes(b)) => {
                            push_key_value(&mut attrs, b, 0)?;
                            Ok(true)
                        }
                        (1, _) => Ok(false),
                        _ => Ok(true),
                    },
                )?;
                Ok(true)
            }
            (2, Field::Bytes(_)) => Ok(true),
            (1 | 2, _) => Ok(false),
            _ => Ok(true),
        }
    };
    fields(part, "invalid wire type in a resource's records", resource)?;
    on_resource(&attrs)?;
    each_part(
        part,
        "invalid wire type in a resource's records",
        2,
        |scope| {
            each_part(
                scope,
                "invalid wire type in a scope's records",
                record_tag,
                |record| each(&attrs, record),
            )
        },
    )
}

/// A `LogRecord`'s fields that are read.
#[derive(Default)]
pub struct LogRecord<'a> {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub body: Option<Value<'a>>,
    pub event_name: &'a [u8],
    pub attributes: Vec<KeyValue<'a>>,
}

/// A `Span`'s fields that are read.
#[derive(Default)]
pub struct Span<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub name: &'a [u8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KeyValue<'a>>,
    /// `Status.code` and `Status.message`, when a status was given.
    pub status: Option<(i32, &'a [u8])>,
}

/// Calls `each` with every record of an `ExportLogsServiceRequest`, with its resource's
/// attributes (given to `on_resource` first). `record` is reused from one record to the next.
pub fn each_log_record<'a>(
    body: &'a [u8],
    record: &mut LogRecord<'a>,
    on_resource: OnResource,
    mut each: impl FnMut(&[KeyValue<'a>], &LogRecord<'a>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    each_part(body, "invalid wire type in a request", 1, |resource_logs| {
        resource_records(resource_logs, 2, on_resource, |resource, part| {
            let r = &mut *record;
            r.attributes.clear();
            (r.time_unix_nano, r.observed_time_unix_nano) = (0, 0);
            r.body = None;
            r.event_name = &[];
            fields(
                part,
                "invalid wire type in a LogRecord",
                |tag, f| -> Result<_, Bad> {
                    match (tag, f) {
                        (1, Field::Fixed64(n)) => r.time_unix_nano = n,
                        (11, Field::Fixed64(n)) => r.observed_time_unix_nano = n,
                        (5, Field::Bytes(b)) => merge_any_value(&mut r.body, b, 0)?,
                        (6, Field::Bytes(b)) => push_key_value(&mut r.attributes, b, 0)?,
                        (12, Field::Bytes(b)) => r.event_name = b,
                        (1 | 5 | 6 | 11 | 12, _) => return Ok(false),
                        _ => {}
                    }
                    Ok(true)
                },
            )?;
            each(resource, r)
        })
    })
}

/// Calls `each` with every span of an `ExportTraceServiceRequest`, with its resource's
/// attributes (given to `on_resource` first). `span` is reused from one span to the next.
pub fn each_span<'a>(
    body: &'a [u8],
    span: &mut Span<'a>,
    on_resource: OnResource,
    mut each: impl FnMut(&[KeyValue<'a>], &Span<'a>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    each_part(
        body,
        "invalid wire type in a request",
        1,
        |resource_spans| {
            resource_records(resource_spans, 2, on_resource, |resource, part| {
                let s = &mut *span;
                s.attributes.clear();
                (s.trace_id, s.span_id, s.name) = (&[], &[], &[]);
                (s.start_time_unix_nano, s.end_time_unix_nano) = (0, 0);
                s.status = None;
                fields(
                    part,
                    "invalid wire type in a Span",
                    |tag, f| -> Result<_, Bad> {
                        match (tag, f) {
                            (1, Field::Bytes(b)) => s.trace_id = b,
                            (2, Field::Bytes(b)) => s.span_id = b,
                            (5, Field::Bytes(b)) => s.name = b,
                            (7, Field::Fixed64(n)) => s.start_time_unix_nano = n,
                            (8, Field::Fixed64(n)) => s.end_time_unix_nano = n,
                            (9, Field::Bytes(b)) => push_key_value(&mut s.attributes, b, 0)?,
                            (15, Field::Bytes(b)) => s.status = Some(status(b, s.status)?),
                            (1 | 2 | 5 | 7 | 8 | 9 | 15, _) => return Ok(false),
                            _ => {}
                        }
                        Ok(true)
                    },
                )?;
                each(resource, s)
            })
        },
    )
}

/// A `Status` part merged into what earlier parts gave.
fn status<'a>(part: &'a [u8], before: Option<(i32, &'a [u8])>) -> Result<(i32, &'a [u8]), Bad> {
    let (mut code, mut message) = before.unwrap_or((0, &[]));
    fields(part, "invalid wire type in a Status", |tag, f| {
        match (tag, f) {
            (2, Field::Bytes(b)) => message = b,
            (3, Field::Varint(n)) => code = n as i32,
            (2 | 3, _) => return Ok(false),
            _ => {}
        }
        Ok(true)
    })?;
    Ok((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::encode_varint;

    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag << 3 | 2);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn show(kv: &KeyValue<'_>) -> String {
        let value = match &kv.value {
            None => "none".to_string(),
            Some(Value::Str(s)) => format!("str {}", String::from_utf8_lossy(s)),
            Some(Value::Int(i)) => format!("int {i}"),
            Some(_) => "other".to_string(),
        };
        format!("{}: {value}", String::from_utf8_lossy(kv.key))
    }

    fn varint_field(out: &mut Vec<u8>, tag: u8, n: u64) {
        out.push(tag << 3);
        encode_varint(n, out);
    }

    fn kv(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field(&mut out, 1, key);
        field(&mut out, 2, value);
        out
    }

    fn string_value(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field(&mut out, 1, s);
        out
    }

    /// An `ExportTraceServiceRequest` of one resource (in `resource_parts`) and `spans`.
    fn trace_request(resource_parts: &[Vec<u8>], spans: &[Vec<u8>]) -> Vec<u8> {
        let mut scope = Vec::new();
        for span in spans {
            field(&mut scope, 2, span);
        }
        let mut resource_spans = Vec::new();
        field(&mut resource_spans, 2, &scope);
        for part in resource_parts {
            field(&mut resource_spans, 1, part); // after the scopes: order does not matter
        }
        let mut body = Vec::new();
        field(&mut body, 1, &resource_spans);
        body
    }

    fn read_spans(body: &[u8]) -> Result<Vec<String>, Malformed> {
        let mut out = Vec::new();
        let mut span = Span::default();
        let on_resource: OnResource = |attrs| {
            assert!(attrs.len() <= 2);
            Ok(())
        };
        each_span(body, &mut span, on_resource, |resource, s| {
            let attrs: Vec<String> = s.attributes.iter().map(show_deep).collect();
            let resource: Vec<String> = resource.iter().map(show_deep).collect();
            let (code, message) = s.status.unwrap_or_default();
            out.push(format!(
                "{} {code} {} {} {} / {}",
                String::from_utf8_lossy(s.trace_id),
                String::from_utf8_lossy(message),
                s.start_time_unix_nano,
                attrs.join(", "),
                resource.join(", ")
            ));
            Ok(())
        })?;
        Ok(out)
    }

    fn show_deep(kv: &KeyValue<'_>) -> String {
        match &kv.value {
            Some(Value::Array(list)) => {
                let items = list.items().unwrap();
                let shown: Vec<String> = items
                    .into_iter()
                    .map(|v| show(&KeyValue { key: b"", value: v }))
                    .collect();
                format!(
                    "{}: array [{}]",
                    String::from_utf8_lossy(kv.key),
                    shown.join(" ")
                )
            }
            _ => show(kv),
        }
    }

    /// Fields in any order, unknown fields of every wire type skipped, the last scalar
    /// winning and a message given twice merged, as protobuf reads them.
    #[test]
    fn protobuf_rules_for_repeated_and_unknown_fields() {
        let mut status_a = Vec::new();
        field(&mut status_a, 2, b"first");
        varint_field(&mut status_a, 3, 2);
        let mut status_b = Vec::new();
        field(&mut status_b, 2, b"second");
        let mut list_a = Vec::new();
        field(&mut list_a, 1, &string_value(b"x"));
        let mut list_b = Vec::new();
        field(&mut list_b, 1, &string_value(b"y"));
        let (mut array_a, mut array_b) = (Vec::new(), Vec::new());
        field(&mut array_a, 5, &list_a);
        field(&mut array_b, 5, &list_b);
        let mut twice = Vec::new(); // a value given twice: a string, then an integer
        field(&mut twice, 1, b"k");
        field(&mut twice, 2, &string_value(b"s"));
        field(&mut twice, 2, &[0x18, 7]);
        let mut span = Vec::new();
        field(&mut span, 1, b"old");
        field(&mut span, 15, &status_a);
        span.extend_from_slice(&[0x39, 1, 0, 0, 0, 0, 0, 0, 0]); // start_time_unix_nano (7) = 1
        span.extend_from_slice(&[0xa5, 0x06, 9, 9, 9, 9]); // field 100, fixed32: skipped
        span.extend_from_slice(&[0xa3, 0x06, 0x08, 1, 0xa4, 0x06]); // field 100, a group: skipped
        field(&mut span, 9, &kv(b"list", &array_a));
        field(&mut span, 9, &twice);
        field(&mut span, 15, &status_b);
        field(&mut span, 1, b"new");
        // The list attribute's value, given again, extends it.
        let mut again = Vec::new();
        field(&mut again, 1, b"list2");
        field(&mut again, 2, &array_a);
        field(&mut again, 2, &array_b);
        field(&mut span, 9, &again);
        let resource_a = {
            let mut r = Vec::new();
            field(&mut r, 1, &kv(b"service.name", &string_value(b"a")));
            r
        };
        let resource_b = {
            let mut r = Vec::new();
            field(&mut r, 1, &kv(b"session.id", &string_value(b"s1")));
            r
        };
        let got = read_spans(&trace_request(&[resource_a, resource_b], &[span])).unwrap();
        assert_eq!(
            got,
            [
                "new 2 second 1 list: array [: str x], k: int 7, list2: array [: str x : str y] \
              / service.name: str a, session.id: str s1"
            ]
        );
    }

    /// What prost refused is refused: a length past the end, a known field with another
    /// wire type, tag 0, an end of group never opened, values nested past prost's limit.
    #[test]
    fn malformed_bodies_are_refused() {
        let good = trace_request(&[], &[b"\x0a\x01a".to_vec()]);
        assert_eq!(read_spans(&good).unwrap().len(), 1);
        let mut nested = string_value(b"deep");
        for _ in 0..120 {
            let mut list = Vec::new();
            field(&mut list, 1, &nested);
            nested = Vec::new();
            field(&mut nested, 5, &list);
        }
        let too_deep = {
            let mut span = Vec::new();
            field(&mut span, 9, &kv(b"k", &nested));
            span
        };
        for (why, body) in [
            ("truncated", good[..good.len() - 1].to_vec()),
            (
                "start time as a varint",
                trace_request(&[], &[vec![0x38, 1]]),
            ),
            (
                "attributes as a varint",
                trace_request(&[], &[vec![0x48, 1]]),
            ),
            ("tag 0", trace_request(&[], &[vec![0x00, 1]])),
            (
                "end of a group never opened",
                trace_request(&[], &[vec![0x0c]]),
            ),
            ("nested past the limit", trace_request(&[], &[too_deep])),
        ] {
            assert!(read_spans(&body).is_err(), "{why}");
        }
    }

    /// The shortcut for the usual `KeyValue` reads what protobuf's rules read, and leaves
    /// every other form (long lengths, big or negative integers, extra fields) to them.
    #[test]
    fn plain_key_values_read_as_the_general_reader_reads_them() {
        let mut values: Vec<Vec<u8>> = Vec::new();
        for len in [0, 1, 126, 127, 128, 300] {
            let mut v = Vec::new();
            field(&mut v, 1, &vec![b's'; len]);
            values.push(v);
        }
        for n in [0i64, 1, 127, 128, 16_383, 16_384, -1] {
            let mut v = vec![0x18];
            encode_varint(n as u64, &mut v);
            values.push(v);
        }
        let mut two = Vec::new();
        field(&mut two, 1, b"a");
        field(&mut two, 7, b"b");
        values.push(two);
        let (mut plain, mut general) = (0, 0);
        for key_len in [0, 3, 127, 128, 200] {
            for value in &values {
                let mut part = Vec::new();
                field(&mut part, 1, &vec![b'k'; key_len]);
                field(&mut part, 2, value);
                let mut want = KeyValue {
                    key: &[],
                    value: None,
                };
                read_key_value(&mut want, &part, 0).unwrap();
                let mut got = Vec::new();
                push_key_value(&mut got, &part, 0).unwrap();
                assert_eq!(show(&got[0]), show(&want), "{part:?}");
                if plain_key_value(&part).is_some() {
                    plain += 1;
                } else {
                    general += 1;
                }
            }
        }
        assert!(
            plain > 10 && general > 10,
            "{plain} plain, {general} general"
        );
    }
}
