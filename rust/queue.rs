//! The writer side of the queue: one preallocated, memory-mapped segment per handle,
//! appended with a memcpy (the bytes are in the page cache when it ends), group-committed
//! fdatasync for callers that ask for durability, sealing on size, age and close.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use parking_lot::{Condvar, Mutex};

use crate::counters::{LocalCounters, SharedCounters};
use crate::ids::next_ulid;
use crate::segment;

#[derive(Debug, Clone)]
pub struct Config {
    pub rotate_bytes: u64,
    pub rotate_secs: f64,
    pub max_pending: u64,
    pub fsync_interval: Duration,
    pub max_event_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rotate_bytes: 16 * 1024 * 1024,
            rotate_secs: 60.0,
            max_pending: 100_000,
            fsync_interval: Duration::from_millis(50),
            max_event_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug)]
pub enum AppendError {
    Full { pending: u64, max: u64 },
    Closed,
    Io(io::Error),
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        AppendError::Io(e)
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

pub struct QueueCore {
    pub dir: PathBuf,
    cfg: Config,
    state: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    arrived_cv: Condvar,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    ticker: Mutex<Option<JoinHandle<()>>>,
    pub shared: SharedCounters,
    pub local: LocalCounters,
    /// Held shared while open; released by `close`.
    dir_lock: Mutex<Option<File>>,
}

impl QueueCore {
    /// Opens (creating) the directory, seals segments of dead writers, recounts `pending`
    /// when no other handle is open, and starts the fsync/age ticker.
    pub fn open(dir: &Path, cfg: Config) -> io::Result<Arc<Self>> {
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
            state: Mutex::new(WriterState {
                active: None,
                written: 0,
                closed: false,
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

    fn tick_period(&self) -> Duration {
        let age = Duration::from_secs_f64((self.cfg.rotate_secs / 10.0).max(0.005));
        self.cfg
            .fsync_interval
            .min(age)
            .max(Duration::from_millis(1))
    }

    /// Counts `lines` into the directory's pending total, or refuses with `Full`.
    pub fn reserve(&self, lines: u64) -> Result<(), AppendError> {
        let max = self.cfg.max_pending;
        self.shared
            .reserve(lines, max)
            .map_err(|pending| AppendError::Full { pending, max })
    }

    pub fn unreserve(&self, lines: u64) {
        self.shared.unreserve(lines);
    }

    /// The fast path: appends without blocking, or `None` when the lock is busy or the
    /// segment must rotate (file I/O), so the caller can release the GIL and call `append`.
    pub fn try_append(&self, bytes: &[u8], lines: u64) -> Option<Result<u64, AppendError>> {
        let mut st = self.state.try_lock()?;
        if st.closed {
            return Some(Err(AppendError::Closed));
        }
        if needs_room(&st, bytes.len()) {
            return None;
        }
        Some(Ok(self.copy_in(&mut st, bytes, lines)))
    }

    /// Appends whole lines (each ending in a newline); returns the position to pass to
    /// `sync_to` for durability.
    pub fn append(&self, bytes: &[u8], lines: u64) -> Result<u64, AppendError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(AppendError::Closed);
        }
        if needs_room(&st, bytes.len()) {
            self.seal_active(&mut st)?;
            st.active = Some(self.new_segment(bytes.len())?);
        }
        Ok(self.copy_in(&mut st, bytes, lines))
    }

    fn copy_in(&self, st: &mut WriterState, bytes: &[u8], lines: u64) -> u64 {
        let Some(a) = st.active.as_mut() else {
            unreachable!("room was checked")
        };
        a.map[a.len..a.len + bytes.len()].copy_from_slice(bytes);
        a.len += bytes.len();
        st.written += bytes.len() as u64;
        LocalCounters::add(&self.local.appended, lines);
        LocalCounters::add(&self.local.bytes, bytes.len() as u64);
        st.written
    }

    fn new_segment(&self, need: usize) -> io::Result<Active> {
        let cap = (self.cfg.rotate_bytes as usize).max(need);
        loop {
            let stem = next_ulid().to_string();
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

    fn seal_active(&self, st: &mut WriterState) -> io::Result<()> {
        let Some(a) = st.active.take() else {
            return Ok(());
        };
        let Active {
            stem,
            file,
            map,
            len,
            ..
        } = a;
        drop(map);
        segment::seal(&self.dir, &stem, &file, len as u64)?;
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
    pub fn sync_to(&self, pos: u64) -> io::Result<()> {
        const GATHER: Duration = Duration::from_micros(200);
        let mut s = self.sync.lock();
        loop {
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
                Some(f) => f
                    .sync_data()
                    .map(|_| LocalCounters::add(&self.local.fsyncs, 1)),
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

    pub fn flush(&self) -> io::Result<()> {
        let written = self.state.lock().written;
        self.sync_to(written)
    }

    /// Seals the open segment and stops the ticker. Idempotent.
    pub fn close(&self) -> io::Result<()> {
        let sealed = {
            let mut st = self.state.lock();
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            self.seal_active(&mut st)
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
    fn tick(&self) -> io::Result<()> {
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
        // An error here (a full disk, say) surfaces to the next append or flush.
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
            let l = line(i);
            q.reserve(1).unwrap();
            q.append(&l, 1).unwrap();
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
        for _ in 0..3 {
            q.reserve(1).unwrap();
        }
        assert!(matches!(
            q.reserve(1),
            Err(AppendError::Full { pending: 3, max: 3 })
        ));
    }

    #[test]
    fn durable_append_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let q = QueueCore::open(dir.path(), Config::default()).unwrap();
        q.reserve(1).unwrap();
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
        assert_eq!(q.shared.pending(), 1);
    }
}
