//! Deterministic ids of captured facts, byte-identical to Python's
//! `activitybi.capture.facts._id`: ids already stored depend on every byte hashed.

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

/// The activity_id of one fact: `<kind>:<32 hex>`, the blake2b-128 of the JSON array
/// `[customer, kind, key]` as orjson writes it (no spaces, strings escaped as in
/// [`push_json_str`]).
pub fn fact_id(customer: &str, kind: &str, key: &str) -> String {
    let mut id = Vec::with_capacity(kind.len() + 33);
    FactIds::new(customer, kind).push(&mut id, key, &mut Vec::new());
    String::from_utf8(id).expect("ASCII and the kind")
}

/// [`fact_id`] for many keys of one customer and kind: the hash of the array's head
/// (`["customer","kind",`) is made once and copied for each key.
pub(crate) struct FactIds<'a> {
    kind: &'a str,
    head: Blake2b<U16>,
}

impl<'a> FactIds<'a> {
    pub(crate) fn new(customer: &str, kind: &'a str) -> Self {
        let mut head = Vec::with_capacity(customer.len() + kind.len() + 8);
        head.push(b'[');
        push_json_str(&mut head, customer);
        head.push(b',');
        push_json_str(&mut head, kind);
        head.push(b',');
        Self {
            kind,
            head: Blake2b::<U16>::new_with_prefix(&head),
        }
    }

    /// Appends the id of `key` to `out`; `scratch` is working space.
    pub(crate) fn push(&self, out: &mut Vec<u8>, key: &str, scratch: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        scratch.clear();
        push_json_str(scratch, key);
        scratch.push(b']');
        let mut hasher = self.head.clone();
        hasher.update(&scratch[..]);
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b':');
        for b in hasher.finalize() {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
    }
}

/// Lower-case hex of `bytes` (Python's `bytes.hex()`).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// `s` as a JSON string the way both orjson and serde_json write it: `"` and `\` escaped,
/// `\b \t \n \f \r` by name, other control characters as `\u00xx` (lower-case hex), and
/// everything else (DEL and non-ASCII included) as it is.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
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
    while let Some(at) = bytes[from..].iter().position(|&b| ESCAPED[usize::from(b)]) {
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
    fn strings_escape_like_orjson() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"\\\n\r\t\x08\x0c\x01\x1f\x7f\u{2028}é/");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\u{2028}é/\""
        );
    }
}
