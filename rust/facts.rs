//! The ids of facts: the same as Python's `activitybi.capture.facts.fact_id`, so a fact made
//! in Rust and the same fact made in Python are one row.

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

/// The activity_id of one fact: `<kind>:<32 hex>`, the blake2b-128 of the JSON array
/// `[customer, kind, key]` written as orjson writes it (no spaces, non-ASCII as is, control
/// characters as `\b \t \n \f \r` or `\u00xx`: serde_json's escaping is the same). The key
/// must not be empty (the Python side refuses that).
pub fn fact_id(customer: &str, kind: &str, key: &str) -> String {
    let json = serde_json::to_vec(&[customer, kind, key]).expect("strings serialize");
    let digest = Blake2b::<U16>::digest(&json);
    let mut id = String::with_capacity(kind.len() + 33);
    id.push_str(kind);
    id.push(':');
    for b in digest {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

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
}
