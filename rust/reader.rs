//! The consumer side of the queue: complete lines from a checkpoint across sealed and
//! open segments, and acknowledgement, which removes fully consumed sealed segments.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::counters::SharedCounters;
use crate::error::Result;
use crate::segment::{self, Checkpoint, Segment};

const READER_LOCK: &str = "reader.lock";

pub struct ReaderCore {
    dir: PathBuf,
    shared: SharedCounters,
    _reader_lock: File,
    _dir_lock: File,
}

/// A batch of lines (without newlines) and the checkpoint just after the last one.
pub struct Batch {
    data: Vec<u8>,
    lines: Vec<(usize, usize)>,
    checkpoint: Checkpoint,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(|&(s, e)| &self.data[s..e])
    }

    /// The checkpoint just after the last line.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn into_checkpoint(self) -> Checkpoint {
        self.checkpoint
    }
}

fn open_segment(dir: &Path, seg: &Segment) -> io::Result<Option<(File, bool)>> {
    // A segment listed as open may have been sealed (renamed) since the listing.
    let tries = if seg.sealed {
        vec![(segment::sealed_path(dir, &seg.stem), true)]
    } else {
        vec![
            (segment::open_path(dir, &seg.stem), false),
            (segment::sealed_path(dir, &seg.stem), true),
        ]
    };
    for (path, sealed) in tries {
        match File::open(&path) {
            Ok(f) => return Ok(Some((f, sealed))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

impl ReaderCore {
    /// Takes the directory's single reader lock (`WouldBlock` if another reader has it).
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let reader_lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(READER_LOCK))?;
        if !segment::try_lock_exclusive(&reader_lock)? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another process is already reading the queue at {}",
                    dir.display()
                ),
            )
            .into());
        }
        let (dir_lock, alone) = segment::dir_lock(dir)?;
        let shared = SharedCounters::open(dir)?;
        let me = Self {
            dir: dir.to_path_buf(),
            shared,
            _reader_lock: reader_lock,
            _dir_lock: dir_lock,
        };
        me.recover_dead()?;
        if alone {
            me.shared.reset(segment::count_pending(dir)?);
        }
        segment::hold_shared(&me._dir_lock)?;
        Ok(me)
    }

    fn recover_dead(&self) -> io::Result<Vec<Segment>> {
        let mut segs = segment::list(&self.dir)?;
        for seg in segs.iter_mut() {
            if segment::recover_if_dead(&self.dir, seg)? {
                seg.sealed = true;
                seg.path = segment::sealed_path(&self.dir, &seg.stem);
            }
        }
        Ok(segs)
    }

    pub fn acked(&self) -> io::Result<Checkpoint> {
        segment::read_ack(&self.dir)
    }

    pub fn pending(&self) -> u64 {
        self.shared.pending()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Up to `max_lines` complete lines (and about `max_bytes`) after `from`.
    pub fn read(&self, from: &Checkpoint, max_lines: usize, max_bytes: usize) -> io::Result<Batch> {
        let mut batch = Batch {
            data: Vec::new(),
            lines: Vec::new(),
            checkpoint: from.clone(),
        };
        for seg in self.recover_dead()? {
            if batch.lines.len() >= max_lines || batch.data.len() >= max_bytes {
                break;
            }
            let Some((file, sealed)) = open_segment(&self.dir, &seg)? else {
                continue;
            };
            let start = from.get(&seg.stem).copied().unwrap_or(0);
            let budget = max_bytes.saturating_sub(batch.data.len());
            let data = segment::read_lines_from(&file, start, sealed, budget)?;
            let mut offset = 0;
            for nl in memchr::memchr_iter(b'\n', &data) {
                if batch.lines.len() >= max_lines {
                    break;
                }
                let base = batch.data.len();
                batch.lines.push((base + offset, base + nl));
                offset = nl + 1;
            }
            if offset > 0 {
                batch.data.extend_from_slice(&data[..offset]);
                batch
                    .checkpoint
                    .insert(seg.stem.clone(), start + offset as u64);
            }
        }
        Ok(batch)
    }

    /// Stores `cp` as acknowledged, counts the newly covered lines off `pending` and
    /// deletes sealed segments it covers entirely. Returns the lines newly acknowledged.
    pub fn ack(&self, cp: &Checkpoint) -> io::Result<u64> {
        let mut acked = self.acked()?;
        let mut newly = 0;
        let mut done = Vec::new();
        let live: Vec<Segment> = segment::list(&self.dir)?;
        for seg in &live {
            let old = acked.get(&seg.stem).copied().unwrap_or(0);
            let new = cp.get(&seg.stem).copied().unwrap_or(0).max(old);
            let Some((file, sealed)) = open_segment(&self.dir, seg)? else {
                continue;
            };
            if new > old {
                newly += segment::count_lines(&file, old, new)?;
            }
            acked.insert(seg.stem.clone(), new);
            if sealed && new >= file.metadata()?.len() {
                done.push(seg.stem.clone());
            }
        }
        // Entries of segments that no longer exist would only grow the file. Those about
        // to be deleted stay one more round, so a crash before the deletion re-reads nothing.
        acked.retain(|stem, _| live.iter().any(|s| &s.stem == stem));
        segment::write_ack(&self.dir, &acked)?;
        self.shared.add_acked(newly);
        for stem in &done {
            fs::remove_file(segment::sealed_path(&self.dir, stem))?;
        }
        if !done.is_empty() {
            segment::fsync_dir(&self.dir)?;
        }
        Ok(newly)
    }
}
