//! A least-recently-used map with an optional time-to-live per entry, behind one lock.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LruStats {
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
}

impl LruStats {
    pub fn hits(&self) -> u64 {
        self.hits
    }
    pub fn misses(&self) -> u64 {
        self.misses
    }
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
    pub fn expirations(&self) -> u64 {
        self.expirations
    }
}

struct Inner<K: Hash + Eq, V> {
    map: lru::LruCache<K, (V, Option<Instant>)>,
    stats: LruStats,
}

pub struct TtlLru<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    ttl: Option<Duration>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlLru<K, V> {
    pub fn new(capacity: NonZeroUsize, ttl: Option<Duration>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: lru::LruCache::new(capacity),
                stats: LruStats::default(),
            }),
            ttl,
            capacity: capacity.get(),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let mut g = self.inner.lock();
        let now = Instant::now();
        let state = match g.map.get(key) {
            None => None,
            Some((_, Some(exp))) if *exp <= now => Some(None),
            Some((v, _)) => Some(Some(v.clone())),
        };
        match state {
            Some(Some(v)) => {
                g.stats.hits += 1;
                Some(v)
            }
            Some(None) => {
                g.map.pop(key);
                g.stats.expirations += 1;
                g.stats.misses += 1;
                None
            }
            None => {
                g.stats.misses += 1;
                None
            }
        }
    }

    /// Inserts or replaces; returns the value evicted to make room, if any, so the caller
    /// can drop it where that is safe.
    pub fn put(&self, key: K, value: V) -> Option<V> {
        let expires = self.ttl.map(|t| Instant::now() + t);
        let mut g = self.inner.lock();
        let evicted = match g.map.push(key, (value, expires)) {
            Some((old_key, (old, _))) if !g.map.contains(&old_key) => Some(old),
            Some((_, (old, _))) => return Some(old), // same key replaced, not an eviction
            None => None,
        };
        if evicted.is_some() {
            g.stats.evictions += 1;
        }
        evicted
    }

    pub fn delete(&self, key: &K) -> Option<V> {
        self.inner.lock().map.pop(key).map(|(v, _)| v)
    }

    /// Present and not expired (does not count as a hit or touch recency).
    pub fn contains(&self, key: &K) -> bool {
        let g = self.inner.lock();
        matches!(g.map.peek(key), Some((_, exp)) if exp.is_none_or(|e| e > Instant::now()))
    }

    pub fn clear(&self) -> Vec<V> {
        let mut g = self.inner.lock();
        let mut out = Vec::with_capacity(g.map.len());
        while let Some((_, (v, _))) = g.map.pop_lru() {
            out.push(v);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> LruStats {
        self.inner.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn evicts_least_recent() {
        let c = TtlLru::new(cap(2), None);
        c.put("a", 1);
        c.put("b", 2);
        assert_eq!(c.get(&"a"), Some(1));
        assert_eq!(c.put("c", 3), Some(2));
        assert_eq!(c.get(&"b"), None);
        assert_eq!(
            c.stats(),
            LruStats {
                hits: 1,
                misses: 1,
                evictions: 1,
                expirations: 0
            }
        );
    }

    #[test]
    fn replacing_is_not_evicting() {
        let c = TtlLru::new(cap(2), None);
        c.put("a", 1);
        assert_eq!(c.put("a", 2), Some(1));
        assert_eq!(c.stats().evictions, 0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn entries_expire() {
        let c = TtlLru::new(cap(2), Some(Duration::from_millis(20)));
        c.put("a", 1);
        assert!(c.contains(&"a"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!c.contains(&"a"));
        assert_eq!(c.get(&"a"), None);
        assert_eq!(c.stats().expirations, 1);
        assert_eq!(c.len(), 0);
    }
}
