//! Monotonic ULIDs and the millisecond UTC timestamps that go with them.

use std::time::SystemTime;

use parking_lot::Mutex;
use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

/// A new ULID, strictly increasing within this process even inside one millisecond.
pub fn next_ulid() -> Ulid {
    let mut guard = GENERATOR.lock();
    let gen = guard.get_or_insert_with(Generator::new);
    loop {
        match gen.generate() {
            Ok(id) => return id,
            // The random part overflowed inside one millisecond: wait for the next one.
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`, caching the
/// last value because consecutive events nearly always share the millisecond.
pub struct TsFormatter {
    last_ms: u64,
    text: [u8; 24],
}

impl Default for TsFormatter {
    fn default() -> Self {
        Self {
            last_ms: u64::MAX,
            text: [0; 24],
        }
    }
}

impl TsFormatter {
    pub fn format(&mut self, ms: u64) -> &str {
        if ms != self.last_ms {
            let dt = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
            let s = dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            self.text.copy_from_slice(&s.as_bytes()[..24]);
            self.last_ms = ms;
        }
        // The buffer only ever holds the ASCII produced above.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_increase_strictly() {
        let mut prev = next_ulid();
        for _ in 0..100_000 {
            let id = next_ulid();
            assert!(id > prev);
            prev = id;
        }
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let mut f = TsFormatter::default();
        assert_eq!(f.format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(f.format(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(f.format(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
