//! Turning one event into one NDJSON line: the `activity_id` and `ts` an event lacks are
//! filled in, and the checks every event passes (a non-empty string `activity`, the size cap).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ids::{next_ulid, now_ms, TsFormatter};
use crate::redact::LineInfo;

#[derive(Debug, PartialEq)]
pub enum EventError {
    /// Not an event (no `activity`, a bad `activity_id`, too large): Python's ValueError.
    Invalid(String),
    /// A value JSON cannot carry: Python's TypeError.
    Unencodable(String),
}

/// Starts a line: `{` plus `"activity_id":"…","ts":"…",` for whichever of the two the event
/// lacks. Returns the activity id (the given one, or a new ULID).
impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventError::Invalid(m) | EventError::Unencodable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EventError {}

pub(crate) fn open_line(
    buf: &mut Vec<u8>,
    given_id: Option<&str>,
    has_ts: bool,
    ts: &mut TsFormatter,
) -> String {
    buf.push(b'{');
    let (id, ms) = match given_id {
        Some(id) => (id.to_owned(), None),
        None => {
            let u = next_ulid();
            let id = u.to_string();
            buf.extend_from_slice(b"\"activity_id\":\"");
            buf.extend_from_slice(id.as_bytes());
            buf.extend_from_slice(b"\",");
            (id, Some(u.timestamp_ms()))
        }
    };
    if !has_ts {
        buf.extend_from_slice(b"\"ts\":\"");
        buf.extend_from_slice(ts.format(ms.unwrap_or_else(now_ms)).as_bytes());
        buf.extend_from_slice(b"\",");
    }
    id
}

pub(crate) fn check_activity(activity: Option<&str>) -> Result<(), EventError> {
    match activity {
        Some(a) if !a.trim().is_empty() => Ok(()),
        _ => Err(EventError::Invalid(
            "event needs a non-empty string 'activity'".into(),
        )),
    }
}

pub(crate) fn check_id(id: Option<&str>) -> Result<(), EventError> {
    match id {
        Some(s) if s.trim().is_empty() || s.len() > 128 => Err(EventError::Invalid(
            "'activity_id' must be a non-empty string of at most 128 characters".into(),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_size(line_len: usize, max: usize) -> Result<(), EventError> {
    if line_len > max {
        return Err(EventError::Invalid(format!(
            "event is {line_len} bytes as JSON, over the {max}-byte cap"
        )));
    }
    Ok(())
}

/// The members of an event object that the queue looks at; parsing into it validates the
/// whole object and skips the rest without building it.
/// Each field is `None` when absent and `Some(None)` when given as JSON null.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    activity: Option<Option<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "present")]
    activity_id: Option<Option<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "present")]
    ts: Option<Option<&'a RawValue>>,
    #[serde(borrow, default)]
    customer: Option<&'a RawValue>,
}

fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Appends the line for an event given as JSON bytes (one object) to `buf`, newline
/// included; returns its activity id. `buf` is left as it was on error.
pub fn encode_json_bytes(
    raw: &[u8],
    buf: &mut Vec<u8>,
    ts: &mut TsFormatter,
    max_bytes: usize,
) -> Result<String, EventError> {
    encode_json_bytes_info(raw, buf, ts, max_bytes, &mut LineInfo::default())
}

/// [`encode_json_bytes`], also telling the redactor the line's activity and where its
/// top-level `customer` string lies.
pub(crate) fn encode_json_bytes_info(
    raw: &[u8],
    buf: &mut Vec<u8>,
    ts: &mut TsFormatter,
    max_bytes: usize,
    info: &mut LineInfo,
) -> Result<String, EventError> {
    let probe: Probe<'_> = serde_json::from_slice(raw).map_err(|e| {
        EventError::Invalid(format!("event bytes are not one JSON event object: {e}"))
    })?;
    let activity = probe.activity.flatten();
    check_activity(activity.as_deref())?;
    let given_id = match probe.activity_id {
        Some(None) => return Err(EventError::Invalid("'activity_id' must be a string".into())),
        Some(Some(id)) => Some(id),
        None => None,
    };
    check_id(given_id.as_deref())?;
    let start = buf.len();
    // The object's members after its `{` (serde_json accepted it, so it is `{…}`).
    let members = raw.trim_ascii()[1..].trim_ascii_start();
    let id = open_line(buf, given_id.as_deref(), probe.ts.is_some(), ts);
    info.generated = buf.len() - start;
    info.activity = activity.map(|a| a.into_owned()).unwrap_or_default();
    info.customer = probe.customer.and_then(|c| {
        // Offsets of the customer value in `raw`, then in the line (members are copied
        // byte for byte after the opening).
        let text = c.get().as_bytes();
        let at = (text.as_ptr() as usize).checked_sub(members.as_ptr() as usize)?;
        let in_line = buf.len() - start + at;
        (text.first() == Some(&b'"') && at + text.len() <= members.len())
            .then_some(in_line..in_line + text.len())
    });
    buf.extend(
        members
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    buf.push(b'\n');
    if let Err(e) = check_size(buf.len() - start, max_bytes) {
        buf.truncate(start);
        return Err(e);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(raw: &str) -> Result<(String, String), EventError> {
        let mut buf = Vec::new();
        let id = encode_json_bytes(
            raw.as_bytes(),
            &mut buf,
            &mut TsFormatter::default(),
            1 << 20,
        )?;
        Ok((id, String::from_utf8(buf).unwrap()))
    }

    #[test]
    fn fills_id_and_ts() {
        let (id, line) = encode("{\"activity\": \"x\",\n \"n\": 1}").unwrap();
        assert_eq!(id.len(), 26);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["activity_id"], id.as_str());
        assert_eq!(v["ts"].as_str().unwrap().len(), 24);
        assert_eq!(v["n"], 1);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn keeps_given_id_and_ts() {
        let raw = r#"{"activity":"x","activity_id":"abc","ts":"2020-01-01T00:00:00.000Z"}"#;
        let (id, line) = encode(raw).unwrap();
        assert_eq!(id, "abc");
        assert_eq!(line, format!("{raw}\n"));
    }

    #[test]
    fn refuses_bad_events() {
        assert!(matches!(encode("[1]"), Err(EventError::Invalid(_))));
        assert!(matches!(
            encode("{\"activity\":\"\"}"),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(
            encode("{\"activity\":3}"),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(encode("{\"a\":1}"), Err(EventError::Invalid(_))));
        assert!(matches!(
            encode("{\"activity\":\"x\"} trailing"),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(
            encode("{\"activity\":\"x\",\"activity_id\":null}"),
            Err(EventError::Invalid(_))
        ));
        assert!(matches!(
            encode("{\"activity\":null}"),
            Err(EventError::Invalid(_))
        ));
        let mut buf = b"kept".to_vec();
        let big = format!("{{\"activity\":\"x\",\"p\":\"{}\"}}", "y".repeat(100));
        let r = encode_json_bytes(big.as_bytes(), &mut buf, &mut TsFormatter::default(), 64);
        assert!(matches!(r, Err(EventError::Invalid(_))));
        assert_eq!(buf, b"kept");
    }
}
