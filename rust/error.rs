//! The queue's one error type. The bindings map it to Python exceptions (`QueueFull`,
//! `QueueIOError`, `ActivitybiError`); Rust callers match on it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
pub enum Error {
    /// `pending` (unacknowledged events in the whole directory) would pass `max_pending`;
    /// nothing was written.
    Full { pending: u64, max: u64 },
    /// The handle was closed.
    Closed,
    /// An operation failed now; what it wrote (if anything) was not acknowledged.
    Io(io::Error),
    /// An earlier fdatasync or seal of this handle failed. On Linux a retried fdatasync
    /// can report success for pages whose writeback already failed, so this handle no
    /// longer promises durability: durable appends, `flush` and sealing refuse until the
    /// queue is reopened (recovery then reseals what the file really holds).
    PreviousIo(Arc<IoFailure>),
    /// `queue.state` is not this version's counter file.
    BadState { path: PathBuf, found: u64 },
    /// A setting out of range, or lines that are not JSON objects.
    Invalid(String),
}

/// The first I/O failure that made a queue handle refuse durable work.
#[derive(Debug)]
pub struct IoFailure {
    op: &'static str,
    error: io::Error,
}

impl IoFailure {
    pub(crate) fn new(op: &'static str, error: &io::Error) -> Self {
        Self {
            op,
            error: io::Error::new(error.kind(), error.to_string()),
        }
    }

    pub fn raw_os_error(&self) -> Option<i32> {
        self.error.raw_os_error()
    }
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.op, self.error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Full { pending, max } => write!(
                f,
                "queue full: {pending} events are pending (max_pending={max}); \
                 nothing was written, retry once the uploader has caught up"
            ),
            Error::Closed => f.write_str("the queue is closed"),
            Error::Io(e) => write!(f, "queue I/O error: {e}"),
            Error::PreviousIo(why) => write!(
                f,
                "an earlier {why}; this queue handle no longer promises durability \
                 (reopen the queue to recover)"
            ),
            Error::BadState { path, found } => write!(
                f,
                "{} is not an activitybi queue state file of this version \
                 (magic {found:#018x}, expected {:#018x})",
                path.display(),
                crate::counters::MAGIC
            ),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::PreviousIo(why) => Some(&why.error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
