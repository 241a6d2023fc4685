//! The writer side of the queue: one preallocated, memory-mapped segment per handle,
//! appended with a memcpy (the bytes are in the page cache when it ends), group-committed
//! fdatasync for callers that ask for durability, sealing on size, age and close.
//!
//! Large appends (a batch of lines of at least `Config::pwrite_from` bytes, such as an
//! OTLP export request) go into the same segment at the same offset with `pwrite`
//! instead. Through the map, every fresh 4 KiB page costs the appending thread a page
//! fault (the kernel zero-fills the preallocated block, then marks the page writable), and
//! every background fdatasync write-protects the pages it writes back, which interrupts
//! the appending thread to flush its TLB. Small events share a page's fault among the
//! twenty or so that fill it, far cheaper than a system call each; a batch of many pages
//! goes faster by `pwrite` (1.3x the map's speed at 8 KiB, 3.4x at 220 KB: "Large appends
//! by pwrite" in docs/benchmarks.md). The page cache is the same for both, so the map and
//! the file hold the same bytes in the same order.
//! A `pwrite` writes the batch's first byte last: until all of it is in the file, the zero
//! still at its start hides it from readers and from recovery (data ends at the first
//! zero). A failed `pwrite` is recorded like a failed fdatasync, and the handle stops
//! writing to its segment (every later append fails) and leaves it to the next open's
//! recovery, which quarantines what was partly written.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use parking_lot::{Condvar, Mutex};

use crate::counters::{LocalCounters, SharedCounters};
use crate::error::{Error, IoFailure, Result};
use crate::ids::next_ulid;
use crate::segment::{self, FileBackend, OsFiles};

/// A queue handle's settings; `Config::new` checks them.
#[derive(Debug, Clone)]
pub struct Config {
    rotate_bytes: u64,
    rotate_secs: f64,
    max_pending: u64,
    fsync_interval: Duration,
    max_event_bytes: usize,
    checksums: bool,
    pwrite_from: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rotate_bytes: 16 * 1024 * 1024,
            rotate_secs: 60.0,
            max_pending: 100_000,
            fsync_interval: Duration::from_millis(50),
            max_event_bytes: 1024 * 1024,
            checksums: true,
            pwrite_from: PWRITE_FROM,
        }
    }
}

/// Appends of at least this many bytes are written with `pwrite` (see the module's doc);
/// chosen by `cargo bench --bench core -- append_path` (docs/benchmarks.md).
const PWRITE_FROM: usize = 8 * 1024;

/// A framing buffer grown past this is freed after use rather than kept for the next one.
const FRAME_KEEP: usize = 4 * 1024 * 1024;

impl Config {
    /// Rotation at `rotate_bytes` or `rotate_secs`, refusal past `max_pending` events,
    /// a background fdatasync every `fsync_interval`, events of at most `max_event_bytes`.
    pub fn new(
        rotate_bytes: u64,
        rotate_secs: f64,
        max_pending: u64,
        fsync_interval: Duration,
        max_event_bytes: usize,
    ) -> Result<Self> {
        if rotate_bytes == 0 || max_pending == 0 || fsync_interval.is_zero() || max_event_bytes == 0
        {
            return Err(Error::Invalid(
                "rotate_bytes, max_pending, fsync_interval_ms and max_event_bytes must be positive"
                    .into(),
            ));
        }
        if !(rotate_secs.is_finite() && rotate_secs > 0.0) {
            return Err(Error::Invalid(
                "rotate_secs must be a positive number".into(),
            ));
        }
        Ok(Self {
            rotate_bytes,
            rotate_secs,
            max_pending,
            fsync_interval,
            max_event_bytes,
            checksums: true,
            pwrite_from: PWRITE_FROM,
        })
    }

    /// Whether lines carry checksums (the default). Without, segments are written in the
    /// previous version's format: only for benchmarks that measure what checksums cost.
    pub fn with_checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Appends of at least `bytes` bytes go through `pwrite`, smaller ones through the map:
    /// only for benchmarks that compare the two.
    pub fn with_pwrite_from(mut self, bytes: usize) -> Self {
        self.pwrite_from = bytes;
        self
    }

    pub fn max_pending(&self) -> u64 {
        self.max_pending
    }

    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }
}

struct Active {
    stem: String,
    file: Arc<File>,
    map: MmapMut,
    len: usize,
    opened: Instant,
}

struct WriterState {
    active: Option<Active>,
    /// Bytes appended through this handle, all segments: the position durability waits on.
    written: u64,
    closed: bool,
    /// Where large appends are framed before their `pwrite`, kept for the next one.
    frame: Vec<u8>,
}

struct SyncState {
    /// Every byte this handle wrote before this position is on stable storage.
    synced: u64,
    in_progress: bool,
    /// Callers waiting for the running sync, and how many a sync is expected to serve:
    /// it grows with what syncs served and shrinks when a leader waits for it in vain.
    waiting: u32,
    gather_goal: u32,
}

/// `lines` events counted into the directory's `pending` total before they are written.
/// Dropped without `commit`, it gives them back, so every early return and error path
/// releases what it reserved.
struct Reservation<'q> {
    shared: &'q SharedCounters,
    lines: u64,
}

impl Reservation<'_> {
    /// The events are in a segment now: they stay counted until the reader acknowledges them.
    fn commit(mut self) {
        self.lines = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.lines > 0 {
            self.shared.unreserve(self.lines);
        }
    }
}

pub struct QueueCore {
    dir: PathBuf,
    cfg: Config,
    files: Arc<dyn FileBackend>,
    state: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    arrived_cv: Condvar,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    ticker: Mutex<Option<JoinHandle<()>>>,
    shared: SharedCounters,
    pub(crate) local: LocalCounters,
    /// The first fdatasync or seal that failed: from then on this handle refuses durable
    /// work (`Error::PreviousIo`) instead of trusting a retry.
    failure: OnceLock<Arc<IoFailure>>,
    /// Held shared while open; released by `close`.
    dir_lock: Mutex<Option<File>>,
}

impl QueueCore {
    /// Opens (creating) the directory, seals segments of dead writers, recounts `pending`
    /// when no other handle is open, and starts the fsync/age ticker.
    pub fn open(dir: &Path, cfg: Config) -> Result<Arc<Self>> {
        Self::open_with(dir, cfg, Arc::new(OsFiles))
    }

    /// `open` with the file operations that durability depends on supplied by `files`
    /// (tests inject failures through it).
    pub(crate) fn open_with(
        dir: &Path,
        cfg: Config,
        files: Arc<dyn FileBackend>,
    ) -> Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let (dir_lock, alone) = segment::dir_lock(dir)?;
        for seg in segment::list(dir)? {
            segment::recover_if_dead(dir, &seg)?;
        }
        let shared = SharedCounters::open(dir)?;
        if alone {
            shared.reset(segment::count_pending(dir)?);
        }
        segment::hold_shared(&dir_lock)?;
        let core = Arc::new(Self {
            dir: dir.to_path_buf(),
            cfg,
            files,
            state: Mutex::new(WriterState {
                active: None,
                written: 0,
                closed: false,
                frame: Vec::new(),
            }),
            sync: Mutex::new(SyncState {
                synced: 0,
                in_progress: false,
                waiting: 0,
                gather_goal: 1,
            }),
            arrived_cv: Condvar::new(),
            synced_cv: Condvar::new(),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            ticker: Mutex::new(None),
            shared,
            local: LocalCounters::default(),
            failure: OnceLock::new(),
            dir_lock: Mutex::new(Some(dir_lock)),
        });
        let weak = Arc::downgrade(&core);
        let period = core.tick_period();
        let handle = std::thread::Builder::new()
            .name("activitybi-queue".into())
            .spawn(move || ticker(weak, period))?;
        *core.ticker.lock() = Some(handle);
        Ok(core)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unacknowledged events in the whole directory, every process.
    pub fn pending(&self) -> u64 {
        self.shared.pending()
    }

    /// Why this handle refuses durable work, if an fdatasync, seal or write failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().map(|f| f.to_string())
    }

    /// `Err(PreviousIo)` once an fdatasync, seal or write of this handle failed.
    pub fn check_healthy(&self) -> Result<()> {
        match self.failure.get() {
            Some(f) => Err(Error::PreviousIo(f.clone())),
            None => Ok(()),
        }
    }

    /// Records `e` as this handle's sticky failure (the first one wins) and returns it.
    fn fail(&self, op: &'static str, e: io::Error) -> Error {
        let _ = self.failure.set(Arc::new(IoFailure::new(op, &e)));
        Error::Io(e)
    }

    fn tick_period(&self) -> Duration {
        let age = Duration::from_secs_f64((self.cfg.rotate_secs / 10.0).max(0.005));
        self.cfg
            .fsync_interval
            .min(age)
            .max(Duration::from_millis(1))
    }

    /// Counts `lines` into the directory's pending total, or refuses with `Full`.
    fn reserve(&self, lines: u64) -> Result<Reservation<'_>> {
        let max = self.cfg.max_pending;
        self.shared
            .reserve(lines, max)
            .map_err(|pending| Error::Full { pending, max })?;
        Ok(Reservation {
            shared: &self.shared,
            lines,
        })
    }

    fn framed_len(&self, bytes: &[u8], lines: u64) -> Result<usize> {
        let framed = segment::framed_len(bytes, lines)?;
        Ok(if self.cfg.checksums {
            framed
        } else {
            bytes.len()
        })
    }

    fn count_rejected<T>(&self, lines: u64, r: Result<T>) -> Result<T> {
        if r.is_err() {
            LocalCounters::add(&self.local.rejected, lines);
        }
        r
    }

    /// The fast path: appends without blocking, or `None` when the append is large (a
    /// `pwrite`), the lock is busy or the segment must rotate (file I/O), so the caller
    /// can release the GIL and call `append`.
    pub fn try_append(&self, bytes: &[u8], lines: u64) -> Option<Result<u64>> {
        if bytes.len() >= self.cfg.pwrite_from {
            return None;
        }
        let r = (|| {
            let framed = self.framed_len(bytes, lines)?;
            let res = self.reserve(lines)?;
            let Some(mut st) = self.state.try_lock() else {
                return Ok(None);
            };
            if st.closed {
                return Err(Error::Closed);
            }
            if needs_room(&st, framed) {
                return Ok(None);
            }
            self.write_in(&mut st, bytes, framed, lines, res).map(Some)
        })();
        self.count_rejected(lines, r).transpose()
    }

    /// Appends `lines` whole lines (JSON objects, each ending in a newline), each framed
    /// with its checksum; returns the position to pass to `sync_to` for durability.
    /// All or nothing: on error nothing was written (a failed `pwrite` leaves bytes that
    /// readers and recovery skip, see the module's doc) and `pending` is as it was.
    pub fn append(&self, bytes: &[u8], lines: u64) -> Result<u64> {
        let r = (|| {
            let framed = self.framed_len(bytes, lines)?;
            let res = self.reserve(lines)?;
            let mut st = self.state.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            if needs_room(&st, framed) {
                // After an I/O failure no segment is sealed, so none is started either.
                self.check_healthy()?;
                self.seal_active(&mut st)?;
                st.active = Some(self.new_segment(framed)?);
            }
            self.write_in(&mut st, bytes, framed, lines, res)
        })();
        self.count_rejected(lines, r)
    }

    /// Writes the lines at the end of the open segment, which has room for them: small
    /// appends by a memcpy into the map, large ones by `pwrite` (see the module's doc).
    fn write_in(
        &self,
        st: &mut WriterState,
        bytes: &[u8],
        framed: usize,
        lines: u64,
        res: Reservation<'_>,
    ) -> Result<u64> {
        let WriterState {
            active: Some(a),
            frame,
            ..
        } = st
        else {
            unreachable!("room was checked")
        };
        let n = if bytes.len() >= self.cfg.pwrite_from {
            let data = if self.cfg.checksums {
                if frame.len() < framed {
                    frame.resize(framed, 0);
                }
                segment::write_framed(&mut frame[..framed], bytes);
                &frame[..framed]
            } else {
                bytes
            };
            let written = write_first_byte_last(&*self.files, &a.file, data, a.len as u64);
            if frame.len() > FRAME_KEEP {
                *frame = Vec::new();
            }
            if let Err(e) = written {
                // Bytes of it may be in the file: nothing more goes into this segment.
                st.active = None;
                return Err(self.fail("write to the open segment", e));
            }
            framed
        } else if self.cfg.checksums {
            segment::write_framed(&mut a.map[a.len..], bytes)
        } else {
            a.map[a.len..a.len + bytes.len()].copy_from_slice(bytes);
            bytes.len()
        };
        a.len += n;
        st.written += n as u64;
        res.commit();
        LocalCounters::add(&self.local.appended, lines);
        LocalCounters::add(&self.local.bytes, n as u64);
        Ok(st.written)
    }

    fn new_segment(&self, need: usize) -> io::Result<Active> {
        let cap = (self.cfg.rotate_bytes as usize).max(need);
        loop {
            let stem = segment::new_stem(next_ulid(), self.cfg.checksums);
            let path = segment::open_path(&self.dir, &stem);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            // A recovering process may have taken the file between create and lock.
            if !segment::try_lock_exclusive(&file)? || !segment::still_at(&file, &path)? {
                continue;
            }
            if let Err(e) = preallocate_fitting(&file, cap as u64, need as u64) {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            segment::fsync_dir(&self.dir)?;
            // SAFETY: the file is locked by this handle, which alone writes it, and its
            // length stays fixed until the map is dropped in `seal_active`.
            let map = unsafe { MmapMut::map_mut(&file)? };
            return Ok(Active {
                stem,
                file: Arc::new(file),
                map,
                len: 0,
                opened: Instant::now(),
            });
        }
    }

    /// Seals the open segment. Refused (the segment stays open) once an I/O failure is
    /// recorded; a failure here is recorded.
    fn seal_active(&self, st: &mut WriterState) -> Result<()> {
        if st.active.is_none() {
            return Ok(());
        }
        self.check_healthy()?;
        let Some(Active {
            stem,
            file,
            map,
            len,
            ..
        }) = st.active.take()
        else {
            return Ok(());
        };
        drop(map);
        segment::seal(&self.dir, &stem, &file, len as u64, &*self.files)
            .map_err(|e| self.fail("sealing segment", e))?;
        if len > 0 {
            LocalCounters::add(&self.local.rotations, 1);
            LocalCounters::add(&self.local.fsyncs, 1);
        }
        let mut s = self.sync.lock();
        s.synced = s.synced.max(st.written);
        self.synced_cv.notify_all();
        Ok(())
    }

    /// Returns once an fdatasync covers position `pos`. Concurrent callers share one
    /// fdatasync: whoever finds none running leads the next one. Before it starts, the
    /// leader waits (at most `GATHER`) for as many callers as syncs have lately served,
    /// so that callers appending in a loop ride the same sync instead of the one after.
    /// After a failed fdatasync or seal it refuses (`PreviousIo`) until the queue is reopened.
    pub fn sync_to(&self, pos: u64) -> Result<()> {
        const GATHER: Duration = Duration::from_micros(200);
        let mut s = self.sync.lock();
        loop {
            self.check_healthy()?;
            if s.synced >= pos {
                return Ok(());
            }
            if s.in_progress {
                s.waiting += 1;
                self.arrived_cv.notify_one();
                self.synced_cv.wait(&mut s);
                s.waiting -= 1;
                continue;
            }
            s.in_progress = true;
            let until = Instant::now() + GATHER;
            while s.waiting + 1 < s.gather_goal {
                if self.arrived_cv.wait_until(&mut s, until).timed_out() {
                    s.gather_goal = s.waiting + 1; // fewer callers now: stop waiting for them
                    break;
                }
            }
            drop(s);
            let (target, file) = {
                let st = self.state.lock();
                (st.written, st.active.as_ref().map(|a| a.file.clone()))
            };
            let result = match file {
                Some(f) => self
                    .files
                    .sync_data(&f)
                    .map(|_| LocalCounters::add(&self.local.fsyncs, 1))
                    .map_err(|e| self.fail("fdatasync of the open segment", e)),
                None => Ok(()), // everything written was sealed, which synced it
            };
            s = self.sync.lock();
            s.in_progress = false;
            s.gather_goal = s.gather_goal.max(s.waiting + 1);
            if result.is_ok() {
                s.synced = s.synced.max(target);
            }
            self.synced_cv.notify_all();
            result?;
        }
    }

    pub fn flush(&self) -> Result<()> {
        let written = self.state.lock().written;
        self.sync_to(written)
    }

    /// Seals the open segment and stops the ticker. Idempotent. After an I/O failure the
    /// segment is left open (and unlocked) for the next open to recover, and this errs.
    pub fn close(&self) -> Result<()> {
        let sealed = {
            let mut st = self.state.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            let r = self.check_healthy().and_then(|_| self.seal_active(&mut st));
            st.active.take();
            r
        };
        self.dir_lock.lock().take();
        *self.stop.lock() = true;
        self.stop_cv.notify_all();
        if let Some(h) = self.ticker.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        sealed
    }

    /// Seals an aged segment and syncs what the last period wrote.
    fn tick(&self) -> Result<()> {
        let target = {
            let mut st = self.state.lock();
            let aged = st.active.as_ref().is_some_and(|a| {
                a.len > 0 && a.opened.elapsed().as_secs_f64() >= self.cfg.rotate_secs
            });
            if aged {
                self.seal_active(&mut st)?;
            }
            st.written
        };
        self.sync_to(target)
    }

    /// The name of the segment this handle writes, if one is open.
    pub fn active_segment(&self) -> Option<String> {
        self.state.lock().active.as_ref().map(|a| a.stem.clone())
    }
}

impl Drop for QueueCore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Writes `data` at `at`, where the file holds zeros, with its first byte last: until the
/// whole of it is in the file, the zero at `at` ends the segment's data there.
fn write_first_byte_last(
    files: &dyn FileBackend,
    file: &File,
    data: &[u8],
    at: u64,
) -> io::Result<()> {
    let Some((first, rest)) = data.split_first() else {
        return Ok(());
    };
    files.write_at(file, rest, at + 1)?;
    files.write_at(file, std::slice::from_ref(first), at)
}

fn needs_room(st: &WriterState, len: usize) -> bool {
    st.active.as_ref().is_none_or(|a| a.len + len > a.map.len())
}

/// Preallocates `cap` bytes, or on a nearly full disk as much as fits (halving, down to
/// what the event needs), so that small events still go in while there is room for them.
fn preallocate_fitting(file: &File, cap: u64, need: u64) -> io::Result<()> {
    let mut len = cap;
    loop {
        match segment::preallocate(file, len) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && len / 2 >= need.max(64 * 1024) => {
                len /= 2;
            }
            other => return other,
        }
    }
}

fn ticker(weak: Weak<QueueCore>, period: Duration) {
    loop {
        let Some(core) = weak.upgrade() else { return };
        {
            let mut stop = core.stop.lock();
            if !*stop {
                core.stop_cv.wait_for(&mut stop, period);
            }
            if *stop {
                return;
            }
        }
        // A failed fdatasync or seal is recorded (`failure`) where it happens: from then
        // on durable appends, `flush`, sealing and `stats()` report it. Nothing to do here.
        let _ = core.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> Vec<u8> {
        format!("{{\"activity\":\"a\",\"i\":{i}}}\n").into_bytes()
    }

    #[test]
    fn rotates_by_size_and_seals_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            rotate_bytes: 1024,
            ..Config::default()
        };
        let q = QueueCore::open(dir.path(), cfg).unwrap();
        for i in 0..200 {
            q.append(&line(i), 1).unwrap();
        }
        q.close().unwrap();
        let segs = segment::list(dir.path()).unwrap();
        assert!(segs.len() > 3);
        assert!(segs.iter().all(|s| s.sealed));
        let total: usize = segs
            .iter()
            .map(|s| {
                fs::read(&s.path)
                    .unwrap()
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            })
            .sum();
        assert_eq!(total, 200);
    }

    #[test]
    fn refuses_past_max_pending() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            max_pending: 3,
            ..Config::default()
        };
        let q = QueueCore::open(dir.path(), cfg).unwrap();
        let held: Vec<_> = (0..3).map(|_| q.reserve(1).unwrap()).collect();
        assert!(matches!(
            q.reserve(1),
            Err(Error::Full { pending: 3, max: 3 })
        ));
        assert!(matches!(
            q.append(&line(0), 1),
            Err(Error::Full { pending: 3, max: 3 })
        ));
        // The guard gives reservations back when dropped; a refused append kept nothing.
        drop(held);
        assert_eq!(q.pending(), 0);
        for i in 0..3 {
            q.append(&line(i), 1).unwrap();
        }
        assert_eq!(q.pending(), 3);
        assert!(matches!(q.append(&line(4), 1), Err(Error::Full { .. })));
        assert_eq!(q.pending(), 3);
        assert_eq!(LocalCounters::get(&q.local.rejected), 2);
    }

    #[test]
    fn failed_append_gives_its_reservation_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = QueueCore::open(dir.path(), Config::default()).unwrap();
        assert!(matches!(q.append(b"not json\n", 1), Err(Error::Invalid(_))));
        assert!(matches!(q.append(&line(1), 2), Err(Error::Invalid(_))));
        q.close().unwrap();
        assert!(matches!(q.append(&line(1), 1), Err(Error::Closed)));
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn durable_append_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let q = QueueCore::open(dir.path(), Config::default()).unwrap();
        let pos = q.append(&line(1), 1).unwrap();
        q.sync_to(pos).unwrap();
        assert!(LocalCounters::get(&q.local.fsyncs) >= 1);
    }

    #[test]
    fn torn_tail_is_quarantined_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let stem = "01J00000000000000000000000";
        let mut data = b"{\"activity\":\"a\"}\n{\"activ".to_vec();
        data.resize(4096, 0);
        fs::write(segment::open_path(dir.path(), stem), &data).unwrap();
        let q = QueueCore::open(dir.path(), Config::default()).unwrap();
        assert_eq!(
            fs::read(segment::sealed_path(dir.path(), stem)).unwrap(),
            b"{\"activity\":\"a\"}\n"
        );
        let torn = fs::read(
            dir.path()
                .join("quarantine")
                .join(format!("{stem}.17.torn")),
        )
        .unwrap();
        assert_eq!(torn, b"{\"activ");
        assert_eq!(q.pending(), 1);
    }

    /// Files whose fdatasync fails while `failing` is set, as a disk's writeback error does,
    /// and whose writes put half their bytes in the file and fail while `failing_writes` is.
    #[derive(Default)]
    struct FlakyDisk {
        failing: std::sync::atomic::AtomicBool,
        failing_writes: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicU32,
    }

    impl FileBackend for FlakyDisk {
        fn sync_data(&self, file: &File) -> io::Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.failing.load(SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            file.sync_data()
        }

        fn write_at(&self, file: &File, data: &[u8], at: u64) -> io::Result<()> {
            if self
                .failing_writes
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                OsFiles.write_at(file, &data[..data.len() / 2], at)?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            OsFiles.write_at(file, data, at)
        }
    }

    fn flaky_queue(dir: &Path, cfg: Config) -> (Arc<QueueCore>, Arc<FlakyDisk>) {
        let disk = Arc::new(FlakyDisk::default());
        let q = QueueCore::open_with(dir, cfg, disk.clone()).unwrap();
        (q, disk)
    }

    fn set(flag: &std::sync::atomic::AtomicBool, v: bool) {
        flag.store(v, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn failed_fdatasync_is_sticky_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            fsync_interval: Duration::from_secs(3600),
            rotate_bytes: 4096,
            ..Config::default()
        };
        let (q, disk) = flaky_queue(dir.path(), cfg.clone());
        let pos = q.append(&line(1), 1).unwrap();
        set(&disk.failing, true);
        assert!(matches!(q.sync_to(pos), Err(Error::Io(e)) if e.raw_os_error() == Some(libc::EIO)));
        // The disk recovers, and a retried fdatasync would report success: it must not be
        // trusted, so everything that promises durability keeps refusing.
        set(&disk.failing, false);
        let calls = disk.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(q.sync_to(pos), Err(Error::PreviousIo(_))));
        assert!(matches!(q.flush(), Err(Error::PreviousIo(_))));
        let later = q.append(&line(2), 1).unwrap(); // into the page cache: still fine
        assert!(matches!(q.sync_to(later), Err(Error::PreviousIo(_))));
        let why = q.failure().unwrap();
        assert!(
            why.contains("fdatasync") && why.contains("os error 5"),
            "{why}"
        );
        // Sealing refuses too: rotation (the next segment needs room) and close.
        let big = format!("{{\"activity\":\"a\",\"p\":\"{}\"}}\n", "x".repeat(5000));
        assert!(matches!(
            q.append(big.as_bytes(), 1),
            Err(Error::PreviousIo(_))
        ));
        let err = q.close().unwrap_err();
        assert!(err.to_string().contains("reopen the queue"), "{err}");
        assert_eq!(disk.calls.load(std::sync::atomic::Ordering::SeqCst), calls);
        assert!(segment::list(dir.path()).unwrap().iter().all(|s| !s.sealed));
        drop(q);
        // Reopened: the dead handle's segment is recovered (resealed from what the file
        // holds), the new handle is healthy, and both lines are there.
        let (q, _) = flaky_queue(dir.path(), cfg);
        assert_eq!(q.failure(), None);
        q.flush().unwrap();
        assert_eq!(q.pending(), 2);
        let segs = segment::list(dir.path()).unwrap();
        assert!(segs.len() == 1 && segs[0].sealed);
    }

    #[test]
    fn failed_seal_is_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            fsync_interval: Duration::from_secs(3600),
            rotate_bytes: 4096,
            ..Config::default()
        };
        let (q, disk) = flaky_queue(dir.path(), cfg);
        q.append(&line(1), 1).unwrap();
        set(&disk.failing, true);
        let big = format!("{{\"activity\":\"a\",\"p\":\"{}\"}}\n", "x".repeat(5000));
        assert!(matches!(q.append(big.as_bytes(), 1), Err(Error::Io(_))));
        set(&disk.failing, false);
        assert!(q.failure().unwrap().starts_with("sealing segment failed"));
        assert!(matches!(
            q.append(big.as_bytes(), 1),
            Err(Error::PreviousIo(_))
        ));
        assert!(matches!(q.flush(), Err(Error::PreviousIo(_))));
        assert!(q.close().is_err());
        assert_eq!(q.pending(), 1);
    }

    #[test]
    fn background_fdatasync_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            fsync_interval: Duration::from_millis(5),
            ..Config::default()
        };
        let (q, disk) = flaky_queue(dir.path(), cfg);
        set(&disk.failing, true);
        let pos = q.append(&line(1), 1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.failure().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        set(&disk.failing, false);
        assert!(q.failure().is_some(), "the ticker's failure was dropped");
        assert!(matches!(q.sync_to(pos), Err(Error::PreviousIo(_))));
    }

    /// `n` lines of 90 to 240 bytes, numbered from `from`, as one batch.
    fn batch(from: usize, n: usize) -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| {
                format!(
                    "{{\"activity\":\"a\",\"i\":{i},\"p\":\"{}\"}}\n",
                    "y".repeat(60 + i % 150)
                )
                .into_bytes()
            })
            .collect()
    }

    fn read_back(dir: &Path) -> Vec<Vec<u8>> {
        use crate::reader::{Line, ReaderCore};
        let r = ReaderCore::open(dir).unwrap();
        let b = r.read(&r.acked().unwrap(), 1_000_000, 1 << 30).unwrap();
        b.lines()
            .map(|l| match l {
                Line::Event(e) => e.to_vec(),
                Line::Rejected(why, raw) => panic!("{why}: {}", String::from_utf8_lossy(raw)),
            })
            .collect()
    }

    #[test]
    fn small_and_large_appends_read_back_in_order() {
        for checksums in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = Config {
                rotate_bytes: 512 * 1024,
                ..Config::default()
            }
            .with_checksums(checksums);
            let q = QueueCore::open(dir.path(), cfg).unwrap();
            let mut want = Vec::new();
            let mut i = 0;
            for round in 0..40 {
                // Lines into the map, through the fast path when it takes them.
                for _ in 0..round % 7 {
                    let l = batch(i, 1);
                    match q.try_append(&l, 1) {
                        Some(r) => r.unwrap(),
                        None => q.append(&l, 1).unwrap(),
                    };
                    want.push(l);
                    i += 1;
                }
                // A batch large enough for pwrite, which the fast path leaves to `append`.
                let n = 150 + round * 13;
                let b = batch(i, n);
                assert!(b.len() >= PWRITE_FROM);
                assert!(q.try_append(&b, n as u64).is_none());
                q.append(&b, n as u64).unwrap();
                want.extend(b.split_inclusive(|&c| c == b'\n').map(<[u8]>::to_vec));
                i += n;
            }
            let want: Vec<Vec<u8>> = want
                .iter()
                .map(|l| l.strip_suffix(b"\n").unwrap().to_vec())
                .collect();
            // While the segment is open (the reader stops at its first zero), then sealed.
            assert_eq!(read_back(dir.path()), want);
            q.close().unwrap();
            let segs = segment::list(dir.path()).unwrap();
            assert!(segs.len() > 3 && segs.iter().all(|s| s.sealed));
            assert_eq!(read_back(dir.path()), want);
            assert_eq!(q.pending(), want.len() as u64);
        }
    }

    #[test]
    fn failed_pwrite_passes_nothing_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            fsync_interval: Duration::from_secs(3600),
            ..Config::default()
        };
        let (q, disk) = flaky_queue(dir.path(), cfg.clone());
        let small = batch(0, 3);
        q.append(&small, 3).unwrap();
        let big = batch(3, 200);
        q.append(&big, 200).unwrap();
        set(&disk.failing_writes, true);
        let torn = batch(203, 300);
        assert!(
            matches!(q.append(&torn, 300), Err(Error::Io(e)) if e.raw_os_error() == Some(libc::ENOSPC))
        );
        set(&disk.failing_writes, false);
        assert!(q
            .failure()
            .unwrap()
            .starts_with("write to the open segment failed"));
        assert_eq!(q.pending(), 203);
        assert_eq!(LocalCounters::get(&q.local.rejected), 300);
        assert_eq!(LocalCounters::get(&q.local.appended), 203);
        // Half of the batch is in the file, after a zero: readers do not see it.
        let before: Vec<Vec<u8>> = [&small[..], &big[..]]
            .concat()
            .split_inclusive(|&c| c == b'\n')
            .map(|l| l[..l.len() - 1].to_vec())
            .collect();
        assert_eq!(read_back(dir.path()), before);
        // The handle takes nothing more, small or large, until reopened.
        assert!(matches!(q.append(&line(9), 1), Err(Error::PreviousIo(_))));
        assert!(q.try_append(&line(9), 1).is_none());
        assert!(matches!(q.append(&big, 200), Err(Error::PreviousIo(_))));
        assert!(matches!(q.flush(), Err(Error::PreviousIo(_))));
        assert!(q.close().is_err());
        assert_eq!(q.pending(), 203);
        drop(q);
        // Reopened: recovery seals what was written and quarantines the half batch.
        let (q, _) = flaky_queue(dir.path(), cfg);
        assert_eq!(q.pending(), 203);
        let segs = segment::list(dir.path()).unwrap();
        assert!(segs.len() == 1 && segs[0].sealed);
        assert_eq!(read_back(dir.path()), before);
        let quarantined: Vec<_> = fs::read_dir(dir.path().join(segment::QUARANTINE_DIR))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(quarantined.len(), 1);
        assert!(quarantined[0].len() > 10_000 && quarantined[0].len() < torn.len());
        q.append(&torn, 300).unwrap();
        assert_eq!(q.pending(), 503);
    }
}
