//! `activitybi._core`: the durable queue, ULIDs, the LRU cache and the transcript importer, as
//! Python sees them.
//! Each concept lives in its own private module as plain Rust; the `pub use` list below is
//! the crate's Rust API (for benchmarks and tests), and the rest of this file is the bindings.

mod counters;
mod error;
mod event;
mod facts;
mod ids;
mod lru;
mod otlp;
mod pyjson;
mod queue;
mod reader;
mod redact;
mod segment;
mod transcript;

pub use crate::error::{Error, IoFailure};
pub use crate::event::{encode_json_bytes, EventError};
pub use crate::facts::fact_id;
pub use crate::ids::{next_ulid, TsFormatter};
pub use crate::lru::{LruStats, TtlLru};
pub use crate::queue::{Config, QueueCore};
pub use crate::reader::{Batch, Line, ReaderCore};
pub use crate::redact::{luhn_valid, Action, Kind, LineInfo, Policy, Redactor as RedactorCore};
pub use crate::segment::{Checkpoint, CHECKSUM_MISMATCH};

use std::cell::RefCell;
use std::io::{Read as _, Seek as _};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};

use crate::counters::LocalCounters;
use crate::otlp::{Signal, Written};

create_exception!(
    activitybi._core,
    ActivitybiError,
    PyException,
    "Base class of the errors activitybi raises."
);
create_exception!(
    activitybi._core,
    MalformedBody,
    ActivitybiError,
    "An OTLP export request body that is not the message it should be; nothing was written."
);
create_exception!(
    activitybi._core,
    QueueFull,
    ActivitybiError,
    "The queue directory holds max_pending unacknowledged events; nothing was written."
);

/// `QueueIOError(ActivitybiError, OSError)`, made at import (a class with two bases).
static QUEUE_IO_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn queue_io_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let ty = QUEUE_IO_ERROR.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [
                py.get_type::<ActivitybiError>().into_any(),
                py.get_type::<PyOSError>().into_any(),
            ],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "activitybi._core")?;
        ns.set_item(
            "__doc__",
            "A queue write, fdatasync or seal failed, now or earlier on this handle \
             (then durable appends, flush and sealing refuse until the queue is reopened).",
        )?;
        let ty = py
            .get_type::<PyType>()
            .call1(("QueueIOError", bases, ns))?
            .cast_into::<PyType>()?;
        Ok(ty.unbind())
    })?;
    Ok(ty.bind(py))
}

fn queue_io_err(py: Python<'_>, errno: Option<i32>, msg: String) -> PyErr {
    let ty = match queue_io_error_type(py) {
        Ok(ty) => ty.clone(),
        Err(e) => return e,
    };
    match errno {
        Some(n) => PyErr::from_type(ty, (n, msg)),
        None => PyErr::from_type(ty, (msg,)),
    }
}

/// A queue error as Python sees it: `QueueFull`, `QueueIOError` (an `OSError`, with the
/// errno), `ActivitybiError`, or `ValueError` for what the caller got wrong.
fn queue_err(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Full { .. } => QueueFull::new_err(msg),
        Error::Closed | Error::Invalid(_) => PyValueError::new_err(msg),
        Error::Io(io) => queue_io_err(py, io.raw_os_error(), msg),
        Error::PreviousIo(why) => queue_io_err(py, why.raw_os_error().or(Some(libc::EIO)), msg),
        Error::BadState { .. } => ActivitybiError::new_err(msg),
    }
}

/// The reader's errors: its I/O errors stay the plain `OSError` subclasses
/// (`BlockingIOError` when another process reads the queue).
fn reader_err(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Io(io) => io.into(),
        other => queue_err(py, other),
    }
}

thread_local! {
    static SCRATCH: RefCell<(Vec<u8>, TsFormatter)> = RefCell::new((Vec::with_capacity(4096), TsFormatter::default()));
}

thread_local! {
    /// The lines of one OTLP request, kept between requests up to 2 MiB (a fresh buffer
    /// of that size costs a page fault per page).
    static OTLP_LINES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn event_err(e: EventError) -> PyErr {
    match e {
        EventError::Invalid(m) => PyValueError::new_err(m),
        EventError::Unencodable(m) => PyTypeError::new_err(m),
    }
}

/// Appends one event's line to `buf`, returning its activity id.
/// With a redactor, the line is redacted in place before anything else sees it.
fn encode_event(
    ev: &Bound<'_, PyAny>,
    buf: &mut Vec<u8>,
    ts: &mut TsFormatter,
    max: usize,
    redactor: Option<&RedactorCore>,
) -> PyResult<String> {
    let start = buf.len();
    let mut info = LineInfo::default();
    let r = if let Ok(d) = ev.cast::<PyDict>() {
        pyjson::encode_dict(d, buf, ts, max, &mut info)
    } else if let Ok(b) = ev.cast::<PyBytes>() {
        event::encode_json_bytes_info(b.as_bytes(), buf, ts, max, &mut info)
    } else {
        let ty = ev
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        return Err(PyTypeError::new_err(format!(
            "an event is a dict or JSON bytes, not {ty}"
        )));
    };
    let id = r.map_err(event_err)?;
    if let Some(red) = redactor {
        red.redact_line(buf, start, &info);
    }
    Ok(id)
}

#[pyclass(frozen, module = "activitybi._core")]
struct Queue {
    core: Arc<QueueCore>,
    #[pyo3(get)]
    path: String,
    redactor: Option<Py<Redactor>>,
    red: Option<RedactorCore>,
}

impl Queue {
    /// Writes encoded lines: without releasing the GIL when they are small (a memcpy into
    /// the map), the segment has room and the lock is free, otherwise with it released.
    fn write(&self, py: Python<'_>, bytes: &[u8], lines: u64, durable: bool) -> PyResult<()> {
        let core = &self.core;
        if durable {
            // Refused before anything is written once durability cannot be promised.
            core.check_healthy().map_err(|e| queue_err(py, e))?;
        }
        let written = match core.try_append(bytes, lines) {
            Some(r) => r,
            None => py.detach(|| core.append(bytes, lines)),
        };
        let pos = written.map_err(|e| queue_err(py, e))?;
        if durable {
            py.detach(|| core.sync_to(pos))
                .map_err(|e| queue_err(py, e))?;
        }
        Ok(())
    }
}

#[pymethods]
impl Queue {
    #[new]
    #[pyo3(signature = (path, *, rotate_bytes=16*1024*1024, rotate_secs=60.0, max_pending=100_000, fsync_interval_ms=50, max_event_bytes=1024*1024, redactor=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        rotate_bytes: u64,
        rotate_secs: f64,
        max_pending: u64,
        fsync_interval_ms: u64,
        max_event_bytes: usize,
        redactor: Option<Bound<'_, Redactor>>,
    ) -> PyResult<Self> {
        let cfg = Config::new(
            rotate_bytes,
            rotate_secs,
            max_pending,
            Duration::from_millis(fsync_interval_ms),
            max_event_bytes,
        )
        .map_err(|e| queue_err(py, e))?;
        queue_io_error_type(py)?;
        let core = py
            .detach(|| QueueCore::open(&path, cfg))
            .map_err(|e| queue_err(py, e))?;
        Ok(Self {
            core,
            path: path.to_string_lossy().into_owned(),
            red: redactor.as_ref().map(|r| r.get().inner.clone()),
            redactor: redactor.map(Bound::unbind),
        })
    }

    /// The redactor every appended event passes, or None.
    #[getter]
    fn redactor(&self, py: Python<'_>) -> Option<Py<Redactor>> {
        self.redactor.as_ref().map(|r| r.clone_ref(py))
    }

    #[pyo3(signature = (event, *, durable=false))]
    fn append(&self, py: Python<'_>, event: &Bound<'_, PyAny>, durable: bool) -> PyResult<String> {
        SCRATCH.with_borrow_mut(|(buf, ts)| {
            buf.clear();
            let max = self.core.config().max_event_bytes();
            let id = encode_event(event, buf, ts, max, self.red.as_ref()).inspect_err(|_| {
                LocalCounters::add(&self.core.local.rejected, 1);
            })?;
            self.write(py, buf, 1, durable)?;
            Ok(id)
        })
    }

    #[pyo3(signature = (events, *, durable=false))]
    fn append_many(
        &self,
        py: Python<'_>,
        events: &Bound<'_, PyAny>,
        durable: bool,
    ) -> PyResult<Vec<String>> {
        let max = self.core.config().max_event_bytes();
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut ids = Vec::new();
        let encoded = SCRATCH.with_borrow_mut(|(_, ts)| -> PyResult<()> {
            for ev in events.try_iter()? {
                ids.push(encode_event(&ev?, &mut buf, ts, max, self.red.as_ref())?);
            }
            Ok(())
        });
        if let Err(e) = encoded {
            LocalCounters::add(&self.core.local.rejected, ids.len() as u64 + 1);
            return Err(e);
        }
        if !ids.is_empty() {
            self.write(py, &buf, ids.len() as u64, durable)?;
        }
        Ok(ids)
    }

    /// The facts of one OTLP export request (`signal` `logs` or `traces`, its protobuf
    /// body), mapped, encoded and redacted in Rust and written at once.
    #[pyo3(signature = (signal, body, customer, *, capture_content=false))]
    fn append_otlp(
        &self,
        py: Python<'_>,
        signal: &str,
        body: &[u8],
        customer: &str,
        capture_content: bool,
    ) -> PyResult<(u64, u64, String)> {
        let signal = match signal {
            "logs" => Signal::Logs,
            "traces" => Signal::Traces,
            other => {
                return Err(PyValueError::new_err(format!(
                    "signal is 'logs' or 'traces', not {other:?}"
                )))
            }
        };
        let max = self.core.config().max_event_bytes();
        let red = self.red.as_ref();
        let (mut appended, mut rejected) = (0u64, 0u64);
        let mut reasons: Vec<String> = Vec::new();
        OTLP_LINES.with_borrow_mut(|buf| {
            buf.clear();
            let written = {
                let mut on_line = |buf: &mut Vec<u8>, line: Written<'_>| {
                    if let Err(e) = event::check_size(buf.len() - line.start, max) {
                        buf.truncate(line.start);
                        rejected += 1;
                        if reasons.len() < 5 {
                            reasons.push(format!("{}: {e}", line.activity));
                        }
                        return;
                    }
                    appended += 1;
                    if let Some(r) = red {
                        let info = LineInfo {
                            activity: line.activity.to_owned(),
                            customer: Some(line.customer),
                            generated: line.generated,
                        };
                        r.redact_line(buf, line.start, &info);
                    }
                };
                py.detach(|| {
                    otlp::write_events(signal, body, customer, capture_content, buf, &mut on_line)
                })
            };
            let result = match written {
                Err(e) => Err(MalformedBody::new_err(e.0)),
                Ok(()) if appended > 0 => self.write(py, buf, appended, false),
                Ok(()) => Ok(()),
            };
            if buf.capacity() > 2 << 20 {
                *buf = Vec::new();
            }
            result
        })?;
        LocalCounters::add(&self.core.local.rejected, rejected);
        Ok((appended, rejected, reasons.join("; ")))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = &self.core.local;
        let d = PyDict::new(py);
        d.set_item("appended", LocalCounters::get(&l.appended))?;
        d.set_item("bytes", LocalCounters::get(&l.bytes))?;
        d.set_item("rotations", LocalCounters::get(&l.rotations))?;
        d.set_item("fsyncs", LocalCounters::get(&l.fsyncs))?;
        d.set_item("rejected", LocalCounters::get(&l.rejected))?;
        d.set_item("pending", self.core.pending())?;
        d.set_item("max_pending", self.core.config().max_pending())?;
        d.set_item("io_error", self.core.failure())?;
        d.set_item("redactions", redaction_counts(py, self.red.as_ref())?)?;
        Ok(d)
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.core.flush())
            .map_err(|e| queue_err(py, e))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.core.close())
            .map_err(|e| queue_err(py, e))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!("Queue({:?})", self.path)
    }
}

fn redaction_counts<'py>(
    py: Python<'py>,
    red: Option<&RedactorCore>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match red {
        Some(r) => {
            for (k, n) in r.counts() {
                d.set_item(k, n)?;
            }
        }
        None => {
            for k in Kind::ALL {
                d.set_item(k.name(), 0)?;
            }
        }
    }
    Ok(d)
}

/// A redaction policy with its key: give it to `Queue(..., redactor=...)`.
#[pyclass(frozen, module = "activitybi._core")]
struct Redactor {
    inner: RedactorCore,
}

#[pymethods]
impl Redactor {
    #[new]
    #[pyo3(signature = (policy, key, *, source="policy.toml"))]
    fn new(policy: &str, key: &[u8], source: &str) -> PyResult<Self> {
        let policy = Policy::parse(policy, source).map_err(PyValueError::new_err)?;
        let inner = RedactorCore::new(policy, key).map_err(PyValueError::new_err)?;
        Ok(Self { inner })
    }

    /// The event (JSON text of one object) as the queue would write it, redacted.
    fn redact(&self, event: &str) -> PyResult<String> {
        let mut v: serde_json::Value = serde_json::from_str(event)
            .map_err(|e| PyValueError::new_err(format!("not JSON: {e}")))?;
        if !v.is_object() {
            return Err(PyValueError::new_err("an event is a JSON object"));
        }
        self.inner.redact_event(&mut v);
        Ok(v.to_string())
    }

    /// The keyed token `hash` writes for `value` (`hmac:` and 32 hex digits).
    fn token(&self, value: &str) -> String {
        self.inner.token(value)
    }

    /// Redactions made so far, by kind.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        redaction_counts(py, Some(&self.inner))
    }

    fn __repr__(&self) -> String {
        "Redactor(...)".into()
    }
}

/// What `QueueReader.read_block` returns: the verified lines joined, where each ends (an
/// `array('q')`), the irregular ones among them, the rejected lines, the checkpoint.
type Block<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyAny>,
    Vec<usize>,
    Bound<'py, PyList>,
    Checkpoint,
);

#[pyclass(frozen, module = "activitybi._core")]
struct QueueReader {
    inner: Mutex<Option<ReaderCore>>,
    #[pyo3(get)]
    path: String,
}

impl QueueReader {
    /// Runs `f` on the reader with the GIL released (the lock is taken inside, so a
    /// thread waiting for it never holds the GIL).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ReaderCore) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        let out = py.detach(|| self.inner.lock().as_ref().map(f));
        match out {
            Some(r) => r.map_err(|e| reader_err(py, Error::Io(e))),
            None => Err(PyValueError::new_err("the reader is closed")),
        }
    }
}

impl QueueReader {
    fn batch(
        &self,
        py: Python<'_>,
        checkpoint: Option<Checkpoint>,
        max_lines: usize,
        max_bytes: usize,
    ) -> PyResult<Batch> {
        self.with(py, |r| {
            let from = match checkpoint {
                Some(cp) => cp,
                None => r.acked()?,
            };
            r.read(&from, max_lines.max(1), max_bytes.max(1))
        })
    }
}

#[pymethods]
impl QueueReader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let core = py
            .detach(|| ReaderCore::open(&path))
            .map_err(|e| reader_err(py, e))?;
        Ok(Self {
            inner: Mutex::new(Some(core)),
            path: path.to_string_lossy().into_owned(),
        })
    }

    fn acked(&self, py: Python<'_>) -> PyResult<Checkpoint> {
        self.with(py, |r| r.acked())
    }

    #[pyo3(signature = (checkpoint=None, *, max_lines=10_000, max_bytes=8*1024*1024))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        checkpoint: Option<Checkpoint>,
        max_lines: usize,
        max_bytes: usize,
    ) -> PyResult<(Bound<'py, PyList>, Checkpoint)> {
        let batch = self.batch(py, checkpoint, max_lines, max_bytes)?;
        let lines = PyList::empty(py);
        for line in batch.lines() {
            match line {
                Line::Event(b) => lines.append(PyBytes::new(py, b))?,
                Line::Rejected(why, b) => {
                    return Err(ActivitybiError::new_err(format!(
                        "a queue line failed its check ({why}): read the queue with \
                         read_block, which returns such lines apart; the line: {}",
                        String::from_utf8_lossy(&b[..b.len().min(200)])
                    )))
                }
            }
        }
        Ok((lines, batch.into_checkpoint()))
    }

    /// The batch as one buffer: the verified lines joined by newlines (copied once, without
    /// the GIL), where each ends in it (an `array('q')`), which are irregular (see
    /// `reader::irregular_lines`), the lines that failed their check apart, the checkpoint.
    #[pyo3(signature = (checkpoint=None, *, max_lines=10_000, max_bytes=8*1024*1024))]
    fn read_block<'py>(
        &self,
        py: Python<'py>,
        checkpoint: Option<Checkpoint>,
        max_lines: usize,
        max_bytes: usize,
    ) -> PyResult<Block<'py>> {
        let batch = self.batch(py, checkpoint, max_lines, max_bytes)?;
        let (mut ends, mut irregular) = (Vec::new(), Vec::new());
        let block = PyBytes::new_with(py, batch.events_len(), |out| {
            (ends, irregular) = py.detach(|| {
                let ends = batch.write_events(out);
                let irregular = reader::irregular_lines(out, &ends);
                (ends, irregular)
            });
            Ok(())
        })?;
        let raw: Vec<u8> = ends.iter().flat_map(|e| e.to_ne_bytes()).collect();
        let ends = py
            .import(intern!(py, "array"))?
            .getattr(intern!(py, "array"))?
            .call1((intern!(py, "q"), PyBytes::new(py, &raw)))?;
        let rejected = PyList::empty(py);
        for line in batch.lines() {
            if let Line::Rejected(why, b) = line {
                rejected.append((why, PyBytes::new(py, b)))?;
            }
        }
        Ok((block, ends, irregular, rejected, batch.into_checkpoint()))
    }

    fn ack(&self, py: Python<'_>, checkpoint: Checkpoint) -> PyResult<u64> {
        self.with(py, |r| r.ack(&checkpoint))
    }

    fn pending(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| Ok(r.pending()))
    }

    fn close(&self) {
        self.inner.lock().take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.close();
    }

    fn __repr__(&self) -> String {
        format!("QueueReader({:?})", self.path)
    }
}

/// The per-line work of `activitybi import claude-code` (`transcript.rs`), appending to one
/// queue for one customer.
#[pyclass(frozen, module = "activitybi._core")]
struct TranscriptImporter {
    queue: Py<Queue>,
    /// The importer, and the buffer files are read into (kept: a fresh one per file costs
    /// page faults).
    inner: Mutex<(transcript::Importer, Vec<u8>)>,
}

/// What a transcript read needs from Python: the rare timestamps and values it reads as
/// Python does, and the queue's append (size cap, redaction, write).
struct PyHost<'py, 'q> {
    py: Python<'py>,
    queue: &'q Queue,
}

impl transcript::Host for PyHost<'_, '_> {
    type Error = PyErr;

    fn parse_time(&mut self, text: &str) -> Option<(i64, String)> {
        let py = self.py;
        let read = || -> PyResult<Option<(i64, String)>> {
            let datetime = py.import(intern!(py, "datetime"))?.getattr("datetime")?;
            let Ok(ts) = datetime.call_method1("fromisoformat", (text,)) else {
                return Ok(None);
            };
            let field = |name: &str| -> PyResult<i64> { ts.getattr(name)?.extract() };
            let date = chrono::NaiveDate::from_ymd_opt(
                field("year")? as i32,
                field("month")? as u32,
                field("day")? as u32,
            );
            let time = date.and_then(|d| {
                d.and_hms_micro_opt(
                    field("hour").ok()? as u32,
                    field("minute").ok()? as u32,
                    field("second").ok()? as u32,
                    field("microsecond").ok()? as u32,
                )
            });
            let Some(time) = time else { return Ok(None) };
            let offset = ts.call_method0("utcoffset")?;
            let offset_us = if offset.is_none() {
                0
            } else {
                let part = |name: &str| -> PyResult<i64> { offset.getattr(name)?.extract() };
                (part("days")? * 86_400 + part("seconds")?) * 1_000_000 + part("microseconds")?
            };
            let iso: String = ts.call_method0("isoformat")?.extract()?;
            Ok(Some((time.and_utc().timestamp_micros() - offset_us, iso)))
        };
        read().ok().flatten()
    }

    fn text_of(&mut self, json: &str) -> String {
        let py = self.py;
        let text = || -> PyResult<String> {
            let value = py.import("orjson")?.call_method1("loads", (json,))?;
            Ok(value.str()?.to_string())
        };
        text().unwrap_or_else(|_| json.to_owned())
    }

    fn seal(&mut self, buf: &mut Vec<u8>, start: usize, info: &LineInfo) -> PyResult<()> {
        let max = self.queue.core.config().max_event_bytes();
        if let Err(e) = event::check_size(buf.len() - start, max) {
            LocalCounters::add(&self.queue.core.local.rejected, 1);
            buf.truncate(start);
            return Err(event_err(e));
        }
        if let Some(red) = &self.queue.red {
            red.redact_line(buf, start, info);
        }
        Ok(())
    }

    fn write(&mut self, lines: &[u8], count: u64) -> PyResult<()> {
        self.queue.write(self.py, lines, count, false)
    }
}

fn opt_str(d: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<String>> {
    let v = d.get_item(key).ok();
    Ok(v.and_then(|v| v.extract::<String>().ok()))
}

#[pymethods]
impl TranscriptImporter {
    #[new]
    #[pyo3(signature = (queue, *, customer, content, prices, cost_source))]
    fn new(
        queue: Py<Queue>,
        customer: String,
        content: bool,
        prices: Vec<(String, [f64; 5])>,
        cost_source: String,
    ) -> Self {
        let prices = transcript::Prices::new(prices, cost_source);
        Self {
            queue,
            inner: Mutex::new((
                transcript::Importer::new(customer, content, prices),
                Vec::new(),
            )),
        }
    }

    #[pyo3(signature = (path, *, offset, session, project, tools, prompts, settled, ended))]
    #[allow(clippy::too_many_arguments)]
    fn read<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        offset: u64,
        session: &str,
        project: &str,
        tools: &Bound<'py, PyDict>,
        prompts: &Bound<'py, PyDict>,
        settled: bool,
        ended: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut state = transcript::FileState::default();
        for (id, call) in tools.iter() {
            let call = transcript::ToolCall {
                tool: opt_str(&call, "tool")?,
                ts: opt_str(&call, "ts")?,
                session: opt_str(&call, "session")?,
                agent: opt_str(&call, "agent")?,
                project: opt_str(&call, "project")?,
            };
            state.tools.insert(id.extract()?, call);
        }
        for (digest, n) in prompts.iter() {
            state.prompts.insert(digest.extract()?, n.extract()?);
        }
        // Not `lock`: appends release the GIL, and a thread waiting here holding it would
        // never let them take it back.
        let Some(mut inner) = self.inner.try_lock() else {
            return Err(PyValueError::new_err(
                "the TranscriptImporter is reading in another thread",
            ));
        };
        let (importer, data) = &mut *inner;
        data.clear();
        let mut file = std::fs::File::open(&path)?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        file.read_to_end(data)?;
        let chunk = transcript::Chunk {
            data,
            offset,
            session,
            project,
            settled,
            ended,
        };
        let queue = self.queue.get();
        let mut host = PyHost { py, queue };
        let done = importer.read(&chunk, &mut state, &mut host)?;
        let out = PyDict::new(py);
        out.set_item("offset", done.offset)?;
        out.set_item("lines", done.lines)?;
        out.set_item("bytes", done.bytes)?;
        out.set_item("events", done.events)?;
        let rejected = PyList::empty(py);
        for r in done.rejected {
            rejected.append((r.offset, r.reason, PyBytes::new(py, r.raw)))?;
        }
        out.set_item("rejected", rejected)?;
        let tools = PyDict::new(py);
        for (id, call) in state.tools {
            let d = PyDict::new(py);
            d.set_item("tool", call.tool)?;
            d.set_item("ts", call.ts)?;
            d.set_item("session", call.session)?;
            d.set_item("agent", call.agent)?;
            d.set_item("project", call.project)?;
            tools.set_item(id, d)?;
        }
        out.set_item("tools", tools)?;
        let prompts = PyDict::new(py);
        for (digest, n) in state.prompts {
            prompts.set_item(digest, n)?;
        }
        out.set_item("prompts", prompts)?;
        Ok(out)
    }

    fn __repr__(&self) -> String {
        "TranscriptImporter(...)".into()
    }
}

#[pyclass(frozen, module = "activitybi._core")]
struct LruCache {
    cache: TtlLru<String, Arc<Py<PyAny>>>,
}

#[pymethods]
impl LruCache {
    #[new]
    #[pyo3(signature = (capacity, ttl_seconds=None))]
    fn new(capacity: usize, ttl_seconds: Option<f64>) -> PyResult<Self> {
        let cap = NonZeroUsize::new(capacity)
            .ok_or_else(|| PyValueError::new_err("capacity must be positive"))?;
        let ttl = match ttl_seconds {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(_) => {
                return Err(PyValueError::new_err(
                    "ttl_seconds must be a positive number or None",
                ))
            }
        };
        Ok(Self {
            cache: TtlLru::new(cap, ttl),
        })
    }

    #[pyo3(signature = (key, default=None))]
    fn get(&self, py: Python<'_>, key: &str, default: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        match self.cache.get(&key.to_owned()) {
            Some(v) => Some(v.clone_ref(py)),
            None => default,
        }
    }

    fn put(&self, key: String, value: Py<PyAny>) {
        self.cache.put(key, Arc::new(value));
    }

    fn delete(&self, key: &str) -> bool {
        self.cache.delete(&key.to_owned()).is_some()
    }

    fn clear(&self) {
        self.cache.clear();
    }

    fn __len__(&self) -> usize {
        self.cache.len()
    }

    fn __contains__(&self, key: &str) -> bool {
        self.cache.contains(&key.to_owned())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.cache.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits())?;
        d.set_item("misses", s.misses())?;
        d.set_item("evictions", s.evictions())?;
        d.set_item("expirations", s.expirations())?;
        d.set_item("size", self.cache.len())?;
        d.set_item("capacity", self.cache.capacity())?;
        Ok(d)
    }
}

/// A new ULID, monotonic within this process.
#[pyfunction]
fn ulid() -> String {
    next_ulid().to_string()
}

/// The activity_id of one fact keyed by one source key (`facts::fact_id`): the one
/// implementation, for the Rust capture paths and Python's builders alike.
#[pyfunction]
#[pyo3(name = "fact_id")]
fn py_fact_id(customer: &str, kind: &str, key: &str) -> PyResult<String> {
    if key.is_empty() {
        return Err(PyValueError::new_err(format!(
            "a {kind} fact needs a non-empty source key"
        )));
    }
    Ok(fact_id(customer, kind, key))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let py = m.py();
    let checkpoint = py.get_type::<PyDict>().call_method1(
        "__class_getitem__",
        ((py.get_type::<PyString>(), py.get_type::<PyInt>()),),
    )?;
    m.add("Checkpoint", checkpoint)?;
    m.add("ActivitybiError", m.py().get_type::<ActivitybiError>())?;
    m.add("QueueFull", m.py().get_type::<QueueFull>())?;
    m.add("MalformedBody", m.py().get_type::<MalformedBody>())?;
    m.add("QueueIOError", queue_io_error_type(m.py())?)?;
    m.add_class::<Queue>()?;
    m.add_class::<QueueReader>()?;
    m.add_class::<LruCache>()?;
    m.add_class::<Redactor>()?;
    m.add_class::<TranscriptImporter>()?;
    m.add(
        "REDACTION_KINDS",
        PyTuple::new(py, Kind::ALL.iter().map(|k| k.name()))?,
    )?;
    m.add_function(wrap_pyfunction!(self::ulid, m)?)?;
    m.add_function(wrap_pyfunction!(py_fact_id, m)?)?;
    Ok(())
}
