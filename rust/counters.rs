//! Counters: this queue handle's own (appended, bytes, …) and the directory-wide
//! `pending` count that every process appending to or reading from the directory shares
//! through a small memory-mapped file of atomics.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::error::{Error, Result};

const STATE_FILE: &str = "queue.state";
pub(crate) const MAGIC: u64 = 0x6163_7462_6971_0001; // "actbiq" v1
const STATE_LEN: u64 = 4096;

/// Per-handle counters, read by `Queue.stats()`.
#[derive(Default)]
pub(crate) struct LocalCounters {
    pub(crate) appended: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) rotations: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

impl LocalCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// `appended - acked` over the whole directory, shared by all processes.
///
/// Writers reserve before writing and give back on failure; the reader adds what it
/// acknowledges. A process killed between reserving and writing leaves the count high, so a handle that finds
/// itself alone on the directory recounts from the files (`reset`).
pub(crate) struct SharedCounters {
    map: MmapMut,
}

impl SharedCounters {
    /// Opens (creating) `queue.state`; a file whose first word is neither zero (fresh) nor
    /// `MAGIC` is refused with `BadState`, never reinterpreted.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() < STATE_LEN {
            // Real blocks, not a sparse file: on a full disk, a clear error here rather
            // than a SIGBUS at the first write through the map.
            crate::segment::preallocate(&file, STATE_LEN)?;
        }
        // SAFETY: the file is ours, fixed-size, and only ever accessed through atomics.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let me = Self { map };
        // A fresh file is all zeros; stamping the magic is idempotent across racers.
        match me
            .slot(0)
            .compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(me),
            Err(MAGIC) => Ok(me),
            Err(found) => Err(Error::BadState { path, found }),
        }
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < 3);
        // SAFETY: the map is page-aligned and at least 24 bytes long; AtomicU64 has the
        // layout of u64, and all access to these words goes through atomics.
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const AtomicU64) }
    }

    fn appended(&self) -> &AtomicU64 {
        self.slot(1)
    }

    fn acked(&self) -> &AtomicU64 {
        self.slot(2)
    }

    pub fn pending(&self) -> u64 {
        let acked = self.acked().load(Ordering::Acquire);
        self.appended()
            .load(Ordering::Acquire)
            .saturating_sub(acked)
    }

    /// Counts `n` events in before they are written, unless that would pass `max`;
    /// `Err` carries the pending count that refused them.
    pub fn reserve(&self, n: u64, max: u64) -> Result<(), u64> {
        let acked = self.acked().load(Ordering::Acquire);
        let mut cur = self.appended().load(Ordering::Acquire);
        loop {
            let pending = cur.saturating_sub(acked);
            if pending + n > max {
                return Err(pending);
            }
            match self.appended().compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back a reservation whose events were not written.
    pub fn unreserve(&self, n: u64) {
        self.appended().fetch_sub(n, Ordering::AcqRel);
    }

    pub fn add_acked(&self, n: u64) {
        self.acked().fetch_add(n, Ordering::AcqRel);
    }

    /// Sets the count from a recount of the files; only safe while no other handle is open.
    pub fn reset(&self, pending: u64) {
        self.acked().store(0, Ordering::Release);
        self.appended().store(pending, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_is_checked_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(SharedCounters::open(dir.path()).unwrap());
        SharedCounters::open(dir.path()).unwrap(); // its own magic: fine
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(&0x6163_7462_6971_0002u64.to_ne_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = SharedCounters::open(dir.path()).err().unwrap();
        assert!(matches!(
            err,
            Error::BadState {
                found: 0x6163_7462_6971_0002,
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("not an activitybi queue state file"));
    }
}
