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

/// A batch of lines (without newlines), in queue order, and the checkpoint just after
/// the last one.
pub struct Batch {
    data: Vec<u8>,
    lines: Vec<Entry>,
    checkpoint: Checkpoint,
}

/// One line of a batch: `data[start..end]`, and why it failed its check if it did.
struct Entry {
    start: usize,
    end: usize,
    rejected: Option<&'static str>,
}

/// A line as the reader hands it out.
pub enum Line<'a> {
    /// A verified line (its checksum removed), or a line of a segment written before
    /// checksums: the event's JSON object.
    Event(&'a [u8]),
    /// A line that failed its check, exactly as it is on disk, and the reason.
    Rejected(&'static str, &'a [u8]),
}

impl Batch {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.lines.iter().map(|e| {
            let bytes = &self.data[e.start..e.end];
            match e.rejected {
                None => Line::Event(bytes),
                Some(why) => Line::Rejected(why, bytes),
            }
        })
    }

    /// The bytes `write_events` writes: every `Line::Event`, a newline between two.
    pub fn events_len(&self) -> usize {
        let (bytes, count) = self
            .lines
            .iter()
            .filter(|e| e.rejected.is_none())
            .fold((0, 0), |(b, n), e| (b + e.end - e.start, n + 1));
        bytes + count.max(1) - 1
    }

    /// Writes the `Line::Event`s joined by newlines into `out` (`events_len` long), one copy
    /// for the whole batch; returns where each ends in it (the offset of its newline).
    pub fn write_events(&self, out: &mut [u8]) -> Vec<i64> {
        let mut ends = Vec::with_capacity(self.lines.len());
        let mut at = 0;
        for e in self.lines.iter().filter(|e| e.rejected.is_none()) {
            if !ends.is_empty() {
                out[at] = b'\n';
                at += 1;
            }
            out[at..at + e.end - e.start].copy_from_slice(&self.data[e.start..e.end]);
            at += e.end - e.start;
            ends.push(at as i64);
        }
        debug_assert_eq!(at, out.len());
        ends
    }

    /// The checkpoint just after the last line.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn into_checkpoint(self) -> Checkpoint {
        self.checkpoint
    }
}

/// The lines of `block` (each ending at its `ends` entry) that are empty or hold a carriage
/// return or an escaped NUL (`\u0000`): those a JSON-lines reader may not read as one line
/// with the same text, which the uploader leaves to Python. Found in one pass of the block.
pub fn irregular_lines(block: &[u8], ends: &[i64]) -> Vec<usize> {
    let line_of = |at: usize| ends.partition_point(|&e| (e as usize) < at);
    let mut found: Vec<usize> = memchr::memchr_iter(b'\r', block)
        .chain(memchr::memmem::find_iter(block, br"\u0000"))
        .map(line_of)
        .collect();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        if end as usize == start {
            found.push(i);
        }
        start = end as usize + 1;
    }
    found.sort_unstable();
    found.dedup();
    found
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

    /// Up to `max_lines` complete lines (and about `max_bytes`) after `from`; the lines of
    /// checksummed segments are verified (see `segment`), and those that fail come back as
    /// `Line::Rejected` in their place.
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
            let base = batch.data.len();
            let read = segment::read_lines_into(&file, start, sealed, budget, &mut batch.data)?;
            let data = &mut batch.data[base..];
            let checked = segment::is_checksummed(&seg.stem);
            let first = batch.lines.len();
            let mut offset = 0;
            for nl in memchr::memchr_iter(b'\n', data) {
                if batch.lines.len() >= max_lines {
                    break;
                }
                let (mut s, e) = (offset, nl);
                let mut rejected = None;
                if checked {
                    match segment::verify_line(&data[s..e]) {
                        Ok(skip) => s += skip,
                        Err(why) => rejected = Some(why),
                    }
                }
                batch.lines.push(Entry {
                    start: base + s,
                    end: base + e,
                    rejected,
                });
                offset = nl + 1;
            }
            if checked {
                // Verified lines start one byte before their payload: make it the `{`.
                for e in &batch.lines[first..] {
                    if e.rejected.is_none() {
                        data[e.start - base] = b'{';
                    }
                }
            }
            let mut end = start + offset as u64;
            batch.data.truncate(base + offset);
            // A sealed segment ends with a newline (sealing cuts it there): bytes after the
            // last one are a damaged line, handed out as rejected so that it is not stuck.
            if sealed
                && batch.lines.len() < max_lines
                && offset == read
                && !segment::ends_with_newline(&file)?
            {
                let len = file.metadata()?.len();
                if len > end && len - end <= max_bytes.max(4 << 20) as u64 {
                    let mut tail = vec![0; (len - end) as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut tail, end)?;
                    if memchr::memchr(b'\n', &tail).is_none() {
                        let base = batch.data.len();
                        batch.data.extend_from_slice(&tail);
                        batch.lines.push(Entry {
                            start: base,
                            end: batch.data.len(),
                            rejected: Some(if checked {
                                segment::CHECKSUM_MISMATCH
                            } else {
                                segment::NO_NEWLINE
                            }),
                        });
                        end = len;
                    }
                }
            }
            if end > start {
                batch.checkpoint.insert(seg.stem.clone(), end);
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
                // A damaged last line without its newline (see `read`) is a line too.
                if sealed && new == file.metadata()?.len() && !segment::ends_with_newline(&file)? {
                    newly += 1;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Config, QueueCore};

    type Rejects = Vec<(&'static str, Vec<u8>)>;

    fn events(r: &ReaderCore) -> (Vec<Vec<u8>>, Rejects) {
        let batch = r.read(&r.acked().unwrap(), 10_000, 1 << 20).unwrap();
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for line in batch.lines() {
            match line {
                Line::Event(b) => good.push(b.to_vec()),
                Line::Rejected(why, b) => bad.push((why, b.to_vec())),
            }
        }
        (good, bad)
    }

    fn write(dir: &Path, lines: &[String]) {
        let q = QueueCore::open(dir, Config::default()).unwrap();
        for l in lines {
            q.append(format!("{l}\n").as_bytes(), 1).unwrap();
        }
        q.close().unwrap();
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"{{"activity":"a","i":{i},"s":"é\tx"}}"#))
            .collect()
    }

    /// Flips one bit inside the second line of the directory's first segment (its checksum
    /// then fails); returns the segment and its bytes as now on disk.
    fn flip_a_byte_of_the_second_line(dir: &Path) -> (segment::Segment, Vec<u8>) {
        let seg = segment::list(dir).unwrap().remove(0);
        let mut data = fs::read(&seg.path).unwrap();
        let second = memchr::memchr(b'\n', &data).unwrap() + 30;
        data[second] ^= 1;
        fs::write(&seg.path, &data).unwrap();
        (seg, data)
    }

    /// The events of a batch as one buffer are its `Line::Event`s joined by newlines,
    /// rejected lines left out, and each ends where `write_events` says.
    #[test]
    fn events_are_written_joined() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &lines(4));
        flip_a_byte_of_the_second_line(dir.path());
        let r = ReaderCore::open(dir.path()).unwrap();
        for max_lines in [1, 2, 4] {
            let batch = r.read(&Checkpoint::new(), max_lines, 1 << 20).unwrap();
            let events: Vec<&[u8]> = batch
                .lines()
                .filter_map(|l| match l {
                    Line::Event(b) => Some(b),
                    Line::Rejected(..) => None,
                })
                .collect();
            let mut out = vec![0; batch.events_len()];
            let ends = batch.write_events(&mut out);
            assert_eq!(out, events.join(&b'\n'));
            let mut start = 0;
            for (end, event) in ends.iter().zip(&events) {
                assert_eq!(&out[start..*end as usize], *event);
                start = *end as usize + 1;
            }
            assert_eq!(ends.len(), events.len());
        }
    }

    #[test]
    fn irregular_lines_are_found() {
        let lines: [&[u8]; 7] = [
            b"{}",
            b"",
            br#"{"a":"\u0000"}"#,
            b"{\r}",
            b"{}",
            br#"{"b":"\\u0001"}"#,
            b"",
        ];
        let block = lines.join(&b'\n');
        let mut ends = Vec::new();
        let mut at = 0;
        for l in lines {
            at += l.len();
            ends.push(at as i64);
            at += 1;
        }
        assert_eq!(irregular_lines(&block, &ends), [1, 2, 3, 6]);
        assert_eq!(irregular_lines(b"", &[]), Vec::<usize>::new());
    }

    #[test]
    fn checksummed_lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &lines(3));
        let seg = &segment::list(dir.path()).unwrap()[0];
        assert!(seg.sealed && seg.stem.ends_with("-v2"));
        let raw = fs::read(&seg.path).unwrap();
        let first = raw.split(|&b| b == b'\n').next().unwrap();
        let crc = crc32c::crc32c(lines(1)[0].as_bytes());
        assert_eq!(
            first,
            format!(r#"{{"_crc32c":"{crc:08x}","activity":"a","i":0,"s":"é\tx"}}"#).as_bytes()
        );
        let r = ReaderCore::open(dir.path()).unwrap();
        let (good, bad) = events(&r);
        let want: Vec<Vec<u8>> = lines(3).into_iter().map(String::into_bytes).collect();
        assert_eq!(good, want);
        assert!(bad.is_empty());
    }

    /// Every single-byte change anywhere in a sealed segment (head, digits, payload,
    /// newline) sends the lines it touches to `Rejected`, never to `Event` altered.
    #[test]
    fn any_flipped_byte_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &lines(2));
        let seg = segment::list(dir.path()).unwrap().remove(0);
        let clean = fs::read(&seg.path).unwrap();
        let want: Vec<Vec<u8>> = lines(2).into_iter().map(String::into_bytes).collect();
        let r = ReaderCore::open(dir.path()).unwrap();
        for at in 0..clean.len() {
            for flip in [0x01u8, 0x20, 0x80, 0xff] {
                let mut data = clean.clone();
                data[at] ^= flip;
                fs::write(&seg.path, &data).unwrap();
                let (good, bad) = events(&r);
                assert!(
                    good.iter().all(|g| want.contains(g)),
                    "byte {at} ^ {flip:#x} loaded an altered line"
                );
                assert!(!bad.is_empty(), "byte {at} ^ {flip:#x} went unnoticed");
                assert!(bad
                    .iter()
                    .all(|(why, _)| *why == segment::CHECKSUM_MISMATCH));
            }
        }
    }

    #[test]
    fn segments_without_checksums_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let stem = "01J00000000000000000000000";
        fs::write(
            segment::sealed_path(dir.path(), stem),
            b"{\"activity\":\"old\"}\n{\"activity\":\"older\"}\n",
        )
        .unwrap();
        write(dir.path(), &lines(1));
        let r = ReaderCore::open(dir.path()).unwrap();
        let (good, bad) = events(&r);
        assert_eq!(
            good,
            vec![
                b"{\"activity\":\"old\"}".to_vec(),
                b"{\"activity\":\"older\"}".to_vec(),
                lines(1)[0].clone().into_bytes()
            ]
        );
        assert!(bad.is_empty());
        assert_eq!(r.pending(), 3);
    }

    #[test]
    fn rejected_lines_advance_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &lines(3));
        let (seg, data) = flip_a_byte_of_the_second_line(dir.path());
        let r = ReaderCore::open(dir.path()).unwrap();
        let batch = r.read(&Checkpoint::new(), 10, 1 << 20).unwrap();
        let kinds: Vec<bool> = batch.lines().map(|l| matches!(l, Line::Event(_))).collect();
        assert_eq!(kinds, [true, false, true]);
        assert_eq!(batch.checkpoint()[&seg.stem], data.len() as u64);
        assert_eq!(r.ack(batch.checkpoint()).unwrap(), 3);
        assert_eq!(r.pending(), 0);
    }

    /// A writer killed mid-line leaves a torn checksummed line in its open segment:
    /// recovery cuts it off to quarantine and the complete lines still verify.
    #[test]
    fn torn_checksummed_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &lines(2));
        let seg = segment::list(dir.path()).unwrap().remove(0);
        let mut data = fs::read(&seg.path).unwrap();
        let whole = data.len();
        let torn = data[..30].to_vec(); // the start of a third line
        data.extend_from_slice(&torn);
        data.resize(8192, 0);
        fs::remove_file(&seg.path).unwrap();
        fs::write(segment::open_path(dir.path(), &seg.stem), &data).unwrap();
        let r = ReaderCore::open(dir.path()).unwrap();
        let (good, bad) = events(&r);
        let want: Vec<Vec<u8>> = lines(2).into_iter().map(String::into_bytes).collect();
        assert_eq!(good, want);
        assert!(bad.is_empty());
        assert_eq!(fs::read(&seg.path).unwrap().len(), whole);
        let q = dir.path().join(segment::QUARANTINE_DIR);
        let cut = fs::read(q.join(format!("{}.{whole}.torn", seg.stem))).unwrap();
        assert_eq!(cut, torn);
    }
}
