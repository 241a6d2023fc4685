//! Segment files on disk: naming, the line format, locks, sealing, and recovery of a dead
//! writer's file.
//!
//! A segment is `<STEM>.open` while a live writer holds an exclusive `flock` on it, and
//! `<STEM>.ndjson` once sealed (fdatasync, truncate to its data, atomic rename, directory
//! fsync). Open segments are preallocated and filled in order (small appends through a
//! memory map, large ones with `pwrite`: see the queue module), so their data ends at the
//! last newline before the first zero byte; JSON lines never contain a zero.
//!
//! # Line format
//!
//! The stem says which format a segment's lines have, so that a corrupted line can never
//! pass for a line of the other format:
//!
//! * `<ULID>-v2` (this version): every line is one JSON object whose first member is
//!   its checksum, then the event's own members, then a newline:
//!
//!   ```text
//!   {"_crc32c":"1f2e3d4c","activity_id":"01J…","ts":"…","activity":"…"}\n
//!   ```
//!
//!   The 8 lowercase hex digits are the CRC32C (Castagnoli) of the event's line as it
//!   was given and as the reader hands it back: `{` followed by everything after the
//!   checksum member's comma, without the newline (here `{"activity_id":"01J…",…}`).
//!   The line stays valid JSON (DuckDB's `read_json` or any JSON parser reads it; the
//!   extra member is ignored when columns are named), and the reader verifies the
//!   fixed 22-byte head exactly and the CRC over the rest, so a flipped byte anywhere in
//!   the line (head, digits, payload, or a newline that joins two lines) fails the check
//!   and the line goes to quarantine with the reason `checksum mismatch`.
//! * `<ULID>` (26 characters, written before checksums): plain NDJSON lines, read as
//!   they are, unverified.
//!
//! CRC32C because the `crc32c` crate computes it with the CPU's SSE4.2/ARMv8 instruction
//! (many GB/s: a few nanoseconds for a typical 200-byte event) and it detects every burst
//! error up to 32 bits, which covers any single flipped byte.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const OPEN_SUFFIX: &str = "open";
pub const SEALED_SUFFIX: &str = "ndjson";
pub const QUARANTINE_DIR: &str = "quarantine";
const ACK_FILE: &str = "ack.json";
const DIR_LOCK: &str = "queue.lock";

/// Consumed byte offset per segment stem.
pub type Checkpoint = BTreeMap<String, u64>;

/// The file operations that durability rests on, so that tests can make them fail.
pub(crate) trait FileBackend: Send + Sync {
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Writes all of `data` at offset `at` (an error may come after part of it was written).
    fn write_at(&self, file: &File, data: &[u8], at: u64) -> io::Result<()>;
}

/// The operating system's file operations.
pub(crate) struct OsFiles;

impl FileBackend for OsFiles {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn write_at(&self, file: &File, data: &[u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, data, at)
    }
}

/// The stem suffix of segments whose lines carry a checksum.
const CHECKSUMMED: &str = "-v2";
/// `{"_crc32c":"` then 8 hex digits then `",`: the head of a checksummed line.
const HEAD_START: &[u8; 12] = b"{\"_crc32c\":\"";
const HEAD_END: &[u8; 2] = b"\",";
const HEAD_LEN: usize = HEAD_START.len() + 8 + HEAD_END.len();
/// Bytes a line grows by on disk: the head, less the `{` it replaces.
pub(crate) const LINE_OVERHEAD: usize = HEAD_LEN - 1;
/// Why the reader refuses a line of a checksummed segment.
pub const CHECKSUM_MISMATCH: &str = "checksum mismatch";

/// Why the reader refuses bytes after the last newline of a sealed segment without checksums.
pub const NO_NEWLINE: &str = "damaged line: no newline at the end of a sealed segment";

/// The stem of a new segment.
pub(crate) fn new_stem(id: ulid::Ulid, checksums: bool) -> String {
    if checksums {
        format!("{id}{CHECKSUMMED}")
    } else {
        id.to_string()
    }
}

/// Whether a segment's lines carry checksums (see the module's doc).
pub(crate) fn is_checksummed(stem: &str) -> bool {
    stem.ends_with(CHECKSUMMED)
}

/// The on-disk size of `lines` lines once framed, after checking that `bytes` holds
/// exactly that many lines, each a JSON object with a first member right after its `{`.
pub(crate) fn framed_len(bytes: &[u8], lines: u64) -> crate::error::Result<usize> {
    let mut start = 0;
    let mut n = 0u64;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..nl];
        if line.len() < 3 || line[0] != b'{' || line[1] == b'}' {
            return Err(crate::error::Error::Invalid(
                "the queue takes lines that are JSON objects with at least one member".into(),
            ));
        }
        n += 1;
        start = nl + 1;
    }
    if n != lines || start != bytes.len() {
        return Err(crate::error::Error::Invalid(format!(
            "expected {lines} newline-terminated lines"
        )));
    }
    Ok(bytes.len() + LINE_OVERHEAD * lines as usize)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the lines of `bytes` (checked by `framed_len`) into `out`, each with its
/// checksum head; returns the bytes written.
pub(crate) fn write_framed(out: &mut [u8], bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..nl];
        let crc = crc32c::crc32c(line);
        let rest = &bytes[start + 1..=nl]; // after the `{`, newline included
        let head = &mut out[at..at + HEAD_LEN];
        head[..12].copy_from_slice(HEAD_START);
        for (i, d) in head[12..20].iter_mut().enumerate() {
            *d = HEX[((crc >> (28 - 4 * i)) & 0xf) as usize];
        }
        head[20..].copy_from_slice(HEAD_END);
        at += HEAD_LEN;
        out[at..at + rest.len()].copy_from_slice(rest);
        at += rest.len();
        start = nl + 1;
    }
    at
}

/// Checks one line (without its newline) of a checksummed segment. On success the line's
/// payload is `line[LINE_OVERHEAD..]` once its first byte is set back to `{`: `Ok` returns
/// that offset; `Err` the reason to quarantine the line with.
pub(crate) fn verify_line(line: &[u8]) -> Result<usize, &'static str> {
    if line.len() < HEAD_LEN + 2 || !line.starts_with(HEAD_START) || &line[20..22] != HEAD_END {
        return Err(CHECKSUM_MISMATCH);
    }
    let mut want = 0u32;
    for &d in &line[12..20] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return Err(CHECKSUM_MISMATCH),
        };
        want = want << 4 | u32::from(v);
    }
    let got = crc32c::crc32c_append(crc32c::crc32c(b"{"), &line[HEAD_LEN..]);
    if got == want {
        Ok(LINE_OVERHEAD)
    } else {
        Err(CHECKSUM_MISMATCH)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) stem: String,
    pub(crate) path: PathBuf,
    pub(crate) sealed: bool,
}

/// Every segment in `dir`, ordered by stem (ULIDs sort by creation time).
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let sealed = match ext.to_str() {
            Some(SEALED_SUFFIX) => true,
            Some(OPEN_SUFFIX) => false,
            _ => continue,
        };
        out.push(Segment {
            stem: stem.to_string_lossy().into_owned(),
            path,
            sealed,
        });
    }
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(out)
}

pub fn open_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.{OPEN_SUFFIX}"))
}

pub fn sealed_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.{SEALED_SUFFIX}"))
}

fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on a valid descriptor owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    flock(file, libc::LOCK_EX)
}

/// Opens (creating) the directory's lock file. Every handle holds it shared; a handle
/// that gets it exclusively is alone and may recount `pending`.
pub fn dir_lock(dir: &Path) -> io::Result<(File, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(DIR_LOCK))?;
    let alone = flock(&file, libc::LOCK_EX)?;
    Ok((file, alone))
}

/// Downgrades (or takes) the shared hold on the directory lock.
pub fn hold_shared(file: &File) -> io::Result<()> {
    // SAFETY: as in `flock`; blocking is fine, exclusive holders only recount and leave.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves a file's blocks now, so that a full disk is an error here and never a SIGBUS
/// when a page of a map over it is first written.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate on a valid descriptor; it returns the error number.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True when `file` is still the inode at `path` (it was not sealed or removed meanwhile).
pub fn still_at(file: &File, path: &Path) -> io::Result<bool> {
    let a = file.metadata()?;
    match fs::metadata(path) {
        Ok(b) => Ok(a.dev() == b.dev() && a.ino() == b.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where an open segment's complete lines end: just after the last newline that comes
/// before the first zero byte.
pub fn complete_end(data: &[u8]) -> usize {
    let live = memchr::memchr(0, data).unwrap_or(data.len());
    memchr::memrchr(b'\n', &data[..live]).map_or(0, |i| i + 1)
}

/// Seals an open segment: fdatasync, cut to `len`, rename to `.ndjson`, fsync the
/// directory. An empty segment is removed instead.
pub(crate) fn seal(
    dir: &Path,
    stem: &str,
    file: &File,
    len: u64,
    files: &dyn FileBackend,
) -> io::Result<()> {
    let open = open_path(dir, stem);
    if len == 0 {
        fs::remove_file(&open)?;
    } else {
        file.set_len(len)?;
        files.sync_data(file)?;
        fs::rename(&open, sealed_path(dir, stem))?;
    }
    fsync_dir(dir)
}

/// Seals `seg` if its writer is gone (its lock is free), quarantining a torn last line.
/// Returns whether it did.
pub fn recover_if_dead(dir: &Path, seg: &Segment) -> io::Result<bool> {
    if seg.sealed {
        return Ok(false);
    }
    let mut file = match OpenOptions::new().read(true).write(true).open(&seg.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !try_lock_exclusive(&file)? || !still_at(&file, &seg.path)? {
        return Ok(false);
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let end = complete_end(&data);
    let last = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if last > end {
        quarantine(dir, &format!("{}.{}.torn", seg.stem, end), &data[end..last])?;
    }
    seal(dir, &seg.stem, &file, end as u64, &OsFiles)?;
    Ok(true)
}

/// Writes bytes that must never be uploaded to `quarantine/NAME`, durably.
pub fn quarantine(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir)?;
    let mut f = File::create(qdir.join(name))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fsync_dir(&qdir)
}

pub fn read_ack(dir: &Path) -> io::Result<Checkpoint> {
    match fs::read(dir.join(ACK_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{ACK_FILE}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the acknowledged checkpoint atomically and durably.
pub fn write_ack(dir: &Path, cp: &Checkpoint) -> io::Result<()> {
    let tmp = dir.join(format!("{ACK_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(cp).map_err(io::Error::other)?)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(ACK_FILE))?;
    fsync_dir(dir)
}

/// Reads `file` from `start` onto the end of `buf`, stopping at EOF, at `limit` bytes (or
/// the first whole line past it), or (for an open segment) at the first zero byte; keeps
/// only whole lines and returns how many bytes it added. (Reading in place, into room
/// reserved once, spares the batch a copy and its reallocations.)
pub fn read_lines_into(
    file: &File,
    start: u64,
    sealed: bool,
    limit: usize,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 256 * 1024;
    let base = buf.len();
    let left = file.metadata()?.len().saturating_sub(start);
    buf.reserve(usize::try_from(left).map_or(limit, |l| l.min(limit.saturating_add(CHUNK))));
    let mut pos = start;
    loop {
        let old = buf.len();
        let want = CHUNK.min(limit.saturating_sub(old - base).max(1));
        buf.resize(old + want, 0);
        let n = file.read_at(&mut buf[old..], pos)?;
        buf.truncate(old + n);
        pos += n as u64;
        let zero = if sealed {
            None
        } else {
            memchr::memchr(0, &buf[old..]).map(|i| old + i)
        };
        if let Some(z) = zero {
            buf.truncate(z);
            break;
        }
        // Past the limit, go on only until the buffer holds one whole line.
        if n == 0 || (buf.len() - base >= limit && memchr::memchr(b'\n', &buf[base..]).is_some()) {
            break;
        }
    }
    let end = memchr::memrchr(b'\n', &buf[base..]).map_or(0, |i| i + 1);
    buf.truncate(base + end);
    Ok(end)
}

/// Whether the file's last byte is a newline (an empty file counts as ending in one).
pub(crate) fn ends_with_newline(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

/// Lines (newlines) in `file` between two offsets.
pub fn count_lines(file: &File, from: u64, to: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (to.saturating_sub(from)) as usize];
    file.read_exact_at(&mut buf, from)?;
    Ok(memchr::memchr_iter(b'\n', &buf).count() as u64)
}

/// Events in the directory after the acknowledged checkpoint, sealed or open.
pub fn count_pending(dir: &Path) -> io::Result<u64> {
    let ack = read_ack(dir)?;
    let mut total = 0;
    for seg in list(dir)? {
        let file = match File::open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let start = ack.get(&seg.stem).copied().unwrap_or(0);
        let mut data = Vec::new();
        read_lines_into(&file, start, seg.sealed, usize::MAX, &mut data)?;
        total += memchr::memchr_iter(b'\n', &data).count() as u64;
    }
    Ok(total)
}
