//! Deterministic ids of captured facts, byte-identical to Python's
//! `activitybi.capture.facts._id`: ids already stored depend on every byte hashed.

use std::ops::Range;

use blake2b_simd::many::{hash_many, HashManyJob};
use blake2b_simd::Params;

/// Bytes of an id's digest (blake2b-128), written as twice as many hex digits.
const ID_BYTES: usize = 16;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// The two hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 15]];
        b += 1;
    }
    pairs
};

/// The blake2b parameters of a digest of `bytes` bytes.
pub(crate) fn blake2b(bytes: usize) -> Params {
    let mut params = Params::new();
    params.hash_length(bytes);
    params
}

/// The activity_id of one fact: `<kind>:<32 hex>`, the blake2b-128 of the JSON array
/// `[customer, kind, key]` as orjson writes it (no spaces, strings escaped as in
/// [`push_json_str`]).
pub fn fact_id(customer: &str, kind: &str, key: &str) -> String {
    let mut array = Vec::new();
    push_id_head(&mut array, customer);
    push_id_tail(&mut array, kind, key);
    let mut id = String::with_capacity(kind.len() + 1 + 2 * ID_BYTES);
    id.push_str(kind);
    id.push(':');
    push_hex(&mut id, blake2b(ID_BYTES).hash(&array).as_bytes());
    id
}

/// The JSON array an id is the digest of, to its customer: `["<customer>",`.
fn push_id_head(out: &mut Vec<u8>, customer: &str) {
    out.push(b'[');
    push_json_str(out, customer);
    out.push(b',');
}

/// The rest of the array: `"<kind>","<key>"]`.
fn push_id_tail(out: &mut Vec<u8>, kind: &str, key: &str) {
    push_json_str(out, kind);
    out.push(b',');
    push_json_str(out, key);
    out.push(b']');
}

/// The ids of many facts of one customer, written into their lines at the end:
/// blake2b_simd hashes several short inputs at once with SIMD, in about half the time of one
/// after the other.
pub(crate) struct FactIdBatch {
    /// `["<customer>",`: how every id's JSON array starts.
    head: Vec<u8>,
    /// Every id's JSON array, one after the other.
    inputs: Vec<u8>,
    /// Where each id's hex digits go in the lines, and its array in `inputs`.
    ids: Vec<(usize, Range<usize>)>,
}

impl FactIdBatch {
    pub(crate) fn new(customer: &str) -> Self {
        let mut head = Vec::new();
        push_id_head(&mut head, customer);
        Self {
            head,
            inputs: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Appends `<kind>:` and room for the id's hex digits to `out`, which [`Self::fill`]
    /// writes once every line is made.
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, kind: &str, key: &str) {
        out.extend_from_slice(kind.as_bytes());
        out.push(b':');
        let start = self.inputs.len();
        self.inputs.extend_from_slice(&self.head);
        push_id_tail(&mut self.inputs, kind, key);
        self.ids.push((out.len(), start..self.inputs.len()));
        out.resize(out.len() + 2 * ID_BYTES, b'0');
    }

    /// Writes every id pushed since the last `fill` into `out`, the buffer `push` was given.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        let params = blake2b(ID_BYTES);
        let mut jobs: Vec<HashManyJob<'_>> = self
            .ids
            .iter()
            .map(|(_, input)| HashManyJob::new(&params, &self.inputs[input.clone()]))
            .collect();
        hash_many(jobs.iter_mut());
        for ((at, _), job) in self.ids.iter().zip(&jobs) {
            let hex = &mut out[*at..at + 2 * ID_BYTES];
            for (pair, &b) in hex.chunks_exact_mut(2).zip(job.to_hash().as_bytes()) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
            }
        }
        self.inputs.clear();
        self.ids.clear();
    }
}

/// Lower-case hex of `bytes` (Python's `bytes.hex()`).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// `s` as a JSON string the way both orjson and serde_json write it: `"` and `\` escaped,
/// `\b \t \n \f \r` by name, other control characters as `\u00xx` (lower-case hex), and
/// everything else (DEL and non-ASCII included) as it is.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const ESCAPED: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            table[b] = true;
            b += 1;
        }
        table[b'"' as usize] = true;
        table[b'\\' as usize] = true;
        table
    };
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(at) = next_escaped(&bytes[from..], &ESCAPED) {
        let i = from + at;
        out.extend_from_slice(&bytes[from..i]);
        let b = bytes[i];
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(short);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// Where the first byte of `bytes` that `escaped` marks is: eight bytes at a time (a byte
/// below 0x20, `"` or `\`, found with the byte tests of "Bit Twiddling Hacks", whose
/// lowest marked byte is exact), then the rest one at a time.
fn next_escaped(bytes: &[u8], escaped: &[bool; 256]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    /// High bit of each byte of `w` below `n` (n <= 128); the lowest one marked is exact.
    fn below(w: u64, n: u8) -> u64 {
        w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
    }
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| escaped[usize::from(b)])
        .map(|at| i + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids Python gives: `hashlib.blake2b(orjson.dumps([customer, kind, key]), digest_size=16)`.
    #[test]
    fn python_ids() {
        let cases = [
            (
                "c",
                "called_model",
                "req_1",
                "00468e979a5e93265a58cbfb102e1665",
            ),
            (
                "ana ✓ \"q\" \\ \u{1}\u{2028}",
                "called_tool",
                "key \u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f} é 😀 </>",
                "16ee5cf0d3214625044568caae2c17de",
            ),
            (
                "ana@example.com",
                "called_model",
                "req_1",
                "8c860e29bdaa7830d4cb4768593ed312",
            ),
            (
                "é\"\\\n\x01",
                "otel_x",
                "k\u{2028}",
                "b670c3ac912e896bae638a59883e94dd",
            ),
            (
                "",
                "asked_question",
                "s:abc:0",
                "4c82789e607ecbab59d9e7a140d6a7e5",
            ),
        ];
        for (customer, kind, key, hex) in cases {
            assert_eq!(fact_id(customer, kind, key), format!("{kind}:{hex}"));
        }
    }

    #[test]
    fn a_batch_gives_the_ids_one_at_a_time_gives() {
        let customer = "ana \"é\"";
        let mut batch = FactIdBatch::new(customer);
        let mut lines = Vec::new();
        let mut want = Vec::new();
        for i in 0..37 {
            let (kind, key) = (["called_model", "otel_x"][i % 2], format!("k{i}\n"));
            batch.push(&mut lines, kind, &key);
            lines.push(b' ');
            want.extend_from_slice(fact_id(customer, kind, &key).as_bytes());
            want.push(b' ');
        }
        batch.fill(&mut lines);
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn the_escape_scan_finds_every_byte_to_escape_wherever_it_is() {
        let mut table = [false; 256];
        for (b, escaped) in table.iter_mut().enumerate() {
            *escaped = b < 0x20 || b == usize::from(b'"') || b == usize::from(b'\\');
        }
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[(at + 5) % 20] = 0xc3; // a high byte near it is not one to escape
                bytes[at] = b;
                let want = (0..20).find(|&i| table[usize::from(bytes[i])]);
                assert_eq!(next_escaped(&bytes, &table), want, "byte {b:#x} at {at}");
            }
        }
    }

    #[test]
    fn strings_escape_like_orjson() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"\\\n\r\t\x08\x0c\x01\x1f\x7f\u{2028}é/");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\u{2028}é/\""
        );
    }
}
