//! Python values to JSON, written by serde_json straight from the Python objects (no
//! intermediate tree): the dict path of `Queue.append`.

use std::cell::Cell;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::ser::{Error, SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use crate::event::{check_activity, check_id, check_size, open_line, EventError};
use crate::ids::TsFormatter;
use crate::redact::LineInfo;

const MAX_DEPTH: u32 = 64;

struct PyValue<'a, 'py> {
    obj: &'a Bound<'py, PyAny>,
    depth: &'a Cell<u32>,
}

impl Serialize for PyValue<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let obj = self.obj;
        if let Ok(v) = obj.cast::<PyString>() {
            return s.serialize_str(v.to_str().map_err(S::Error::custom)?);
        }
        if obj.is_none() {
            return s.serialize_unit();
        }
        if let Ok(v) = obj.cast::<PyBool>() {
            return s.serialize_bool(v.is_true());
        }
        if obj.cast::<PyInt>().is_ok() {
            if let Ok(v) = obj.extract::<i64>() {
                return s.serialize_i64(v);
            }
            if let Ok(v) = obj.extract::<u64>() {
                return s.serialize_u64(v);
            }
            return Err(S::Error::custom("an integer outside the 64-bit range"));
        }
        if let Ok(v) = obj.cast::<PyFloat>() {
            let f = v.value();
            if !f.is_finite() {
                return Err(S::Error::custom(format!("the float {f}")));
            }
            return s.serialize_f64(f);
        }
        let depth = self.depth.get() + 1;
        if depth > MAX_DEPTH {
            return Err(S::Error::custom(format!(
                "values nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth.set(depth);
        let out = if let Ok(d) = obj.cast::<PyDict>() {
            let mut map = s.serialize_map(Some(d.len()))?;
            for (k, v) in d.iter() {
                map.serialize_entry(
                    key_str::<S::Error>(&k)?,
                    &PyValue {
                        obj: &v,
                        depth: self.depth,
                    },
                )?;
            }
            map.end()
        } else if let Ok(l) = obj.cast::<PyList>() {
            let mut seq = s.serialize_seq(Some(l.len()))?;
            for v in l.iter() {
                seq.serialize_element(&PyValue {
                    obj: &v,
                    depth: self.depth,
                })?;
            }
            seq.end()
        } else if let Ok(t) = obj.cast::<PyTuple>() {
            let mut seq = s.serialize_seq(Some(t.len()))?;
            for v in t.iter() {
                seq.serialize_element(&PyValue {
                    obj: &v,
                    depth: self.depth,
                })?;
            }
            seq.end()
        } else {
            let ty = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            Err(S::Error::custom(format!("a value of type {ty}")))
        };
        self.depth.set(depth - 1);
        out
    }
}

fn key_str<'a, E: Error>(k: &'a Bound<'_, PyAny>) -> Result<&'a str, E> {
    match k.cast::<PyString>() {
        Ok(s) => s.to_str().map_err(E::custom),
        Err(_) => Err(E::custom("a dict key that is not a string")),
    }
}

fn unencodable(e: serde_json::Error) -> EventError {
    EventError::Unencodable(format!("event holds {e}, which JSON cannot carry"))
}

fn optional_str<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> Result<Option<String>, EventError> {
    match d.get_item(key).ok().flatten() {
        None => Ok(None),
        Some(v) => match v.cast::<PyString>() {
            Ok(s) => s
                .to_str()
                .map(|s| Some(s.to_owned()))
                .map_err(|e| EventError::Invalid(e.to_string())),
            Err(_) => Err(EventError::Invalid(format!("'{key}' must be a string"))),
        },
    }
}

/// Appends the line for a dict event to `buf`, newline included; returns its activity id.
/// `buf` is left as it was on error.
pub fn encode_dict(
    d: &Bound<'_, PyDict>,
    buf: &mut Vec<u8>,
    ts: &mut TsFormatter,
    max_bytes: usize,
    info: &mut LineInfo,
) -> Result<String, EventError> {
    let py = d.py();
    let activity = optional_str(d, intern!(py, "activity"))?;
    check_activity(activity.as_deref())?;
    info.activity = activity.unwrap_or_default();
    info.customer = None;
    let given_id = optional_str(d, intern!(py, "activity_id"))?;
    check_id(given_id.as_deref())?;
    let has_ts = d.contains(intern!(py, "ts")).unwrap_or(false);
    let start = buf.len();
    let id = open_line(buf, given_id.as_deref(), has_ts, ts);
    info.generated = buf.len() - start;
    let depth = Cell::new(1);
    let mut first = true;
    let result = (|| {
        for (k, v) in d.iter() {
            if !first {
                buf.push(b',');
            }
            first = false;
            let key = key_str(&k).map_err(unencodable)?;
            serde_json::to_writer(&mut *buf, key).map_err(unencodable)?;
            buf.push(b':');
            let value_start = buf.len() - start;
            serde_json::to_writer(
                &mut *buf,
                &PyValue {
                    obj: &v,
                    depth: &depth,
                },
            )
            .map_err(unencodable)?;
            if key == "customer" && v.is_instance_of::<PyString>() {
                info.customer = Some(value_start..buf.len() - start);
            }
        }
        buf.push(b'}');
        buf.push(b'\n');
        check_size(buf.len() - start, max_bytes)
    })();
    match result {
        Ok(()) => Ok(id),
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}
