//! Redaction before enqueue: every string value of every event passes the detectors below,
//! and a policy decides what happens to what they find (and to whole values, per activity
//! and path): `keep`, `mask` (`[REDACTED:<kind>]`), `hash` (`hmac:<32 hex>`, a keyed
//! HMAC-SHA256, so equal values give equal tokens and joins still work) or `drop`.
//!
//! Cost. A line is first scanned as bytes by a prefilter that is a superset of every
//! detector ([`may_match`]): one pass that looks for the literal prefixes the secret formats
//! start with (plus `@`, `::`, `://`, `password`/`pwd`, and the JSON escapes `\u` and `\/`
//! that could hide them) and for the shapes without a literal (13+ digits for a card, four
//! dotted groups for IPv4, six colons for a full IPv6). An Aho-Corasick automaton of the
//! same literals (case-insensitive) cost 420 ns on a typical 220-byte line, this pass a
//! fraction of it. Inside a flagged string a `RegexSet` of all detectors picks the ones
//! whose regex then runs. The top-level `customer` value is skipped
//! (it is always kept: isolation depends on it). Only a line the prefilter flags (or whose
//! activity has a rule that changes values) is parsed and walked; a walk that changes
//! nothing leaves the line byte for byte as it was.
//!
//! Where each detector's pattern comes from (each written here from the provider's
//! documented token format; gitleaks' rules were read as a check of the facts):
//! * `aws_key`: AWS IAM "Understanding unique ID prefixes": access key ids start `AKIA`
//!   (long-term) or `ASIA` (temporary), also `ABIA`/`ACCA`/`A3T…`, then 16 of `[A-Z0-9]`.
//! * `anthropic_key`: Anthropic console keys, `sk-ant-api03-…` / `sk-ant-admin01-…`.
//! * `openai_key`: OpenAI keys, `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…` and the legacy
//!   `sk-` + 48 alphanumerics (any `sk-` + 32 or more alphanumerics, which also covers the
//!   OpenAI-compatible providers that copied the format).
//! * `github_token`: GitHub "About authentication to GitHub / token formats" (2021):
//!   `ghp_ gho_ ghu_ ghs_ ghr_` + 36 base62, and fine-grained `github_pat_…`.
//! * `gitlab_token`: GitLab "Token prefixes" table: `glpat- gldt- glrt- glptt- gloas- glcbt-
//!   glimt- glsoat- glft- glagent- glffct- glsa-` + 20 or more `[A-Za-z0-9_-]`.
//! * `slack_token`: Slack "Token types": `xoxb- xoxp- xoxa- xoxr- xoxs- xoxe- xoxo-`,
//!   app-level `xapp-<n>-…`, and incoming webhooks `https://hooks.slack.com/services/…`.
//! * `google_api_key`: Google Cloud API keys, `AIza` + 35 of `[0-9A-Za-z_-]`.
//! * `stripe_key`: Stripe "API keys": secret `sk_live_`/`sk_test_`, restricted
//!   `rk_live_`/`rk_test_`, webhook signing secrets `whsec_` (publishable `pk_` are public).
//! * `private_key`: RFC 7468 PEM armor, `-----BEGIN … PRIVATE KEY-----` to its `END` line
//!   (or to the end of the value when the block was cut).
//! * `jwt`: RFC 7519 compact JWS: three base64url parts, header and payload JSON objects,
//!   so both start with `eyJ` (`{"`).
//! * `password`: RFC 3986 userinfo `scheme://user:password@host` (the password is masked,
//!   the rest kept) and `password=`/`pwd=`/`passwd:` key-value pairs (ADO.NET, libpq,
//!   JDBC connection strings, query strings).
//! * `card`: ISO/IEC 7812 card numbers: 13 to 19 digits (single spaces or dashes allowed
//!   between them), first digit 2–6 (the payment networks' major industry identifiers), and
//!   a valid Luhn check digit.
//! * `email`: the practical form of RFC 5322 addresses (the WHATWG "valid e-mail address"
//!   shape, ASCII): `local@label(.label)*.tld`. Hashed ones are lowercased first, so the
//!   same address in any case gives the same token.
//! * `ipv4`: four dotted decimal octets, each ≤ 255 (checked by `Ipv4Addr`'s parser).
//! * `ipv6`: RFC 4291/5952 text forms (checked by `Ipv6Addr`'s parser).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// What happens to a value (or to what a detector found in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Mask,
    Hash,
    Drop,
}

/// What was redacted: one detector each, and `rule` for a value a `[[rule]]` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    AwsKey,
    AnthropicKey,
    OpenaiKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    GoogleApiKey,
    StripeKey,
    PrivateKey,
    Jwt,
    Password,
    Card,
    Email,
    Ipv4,
    Ipv6,
    Rule,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::AwsKey,
        Kind::AnthropicKey,
        Kind::OpenaiKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::GoogleApiKey,
        Kind::StripeKey,
        Kind::PrivateKey,
        Kind::Jwt,
        Kind::Password,
        Kind::Card,
        Kind::Email,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::Rule,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::AwsKey => "aws_key",
            Kind::AnthropicKey => "anthropic_key",
            Kind::OpenaiKey => "openai_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::GoogleApiKey => "google_api_key",
            Kind::StripeKey => "stripe_key",
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::Password => "password",
            Kind::Card => "card",
            Kind::Email => "email",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Rule => "rule",
        }
    }

    /// The group a `[default]` key may name instead of each kind.
    pub fn class(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Email => "email",
            Kind::Ipv4 | Kind::Ipv6 => "ip",
            Kind::Rule => "rule",
            _ => "secret",
        }
    }

    /// The default policy: secrets and cards masked, e-mail addresses hashed, IPs masked.
    fn default_action(self) -> Action {
        match self {
            Kind::Email => Action::Hash,
            _ => Action::Mask,
        }
    }
}

struct Detector {
    kind: Kind,
    re: Regex,
    /// The capture group that is redacted (0: the whole match).
    group: usize,
    valid: fn(&str) -> bool,
}

fn any(_: &str) -> bool {
    true
}

/// The Luhn (mod 10) check of a card number's digits (separators ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

fn card_valid(s: &str) -> bool {
    matches!(s.as_bytes().first(), Some(b'2'..=b'6')) && luhn_valid(s)
}

fn ipv4_valid(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

fn ipv6_valid(s: &str) -> bool {
    let s = s.split('%').next().unwrap_or(s);
    s.matches(':').count() >= 2 && s.parse::<Ipv6Addr>().is_ok()
}

const B: &str = r"(?-u:\b)";

/// The detectors, in priority order: where two findings overlap, the earlier kind wins.
static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    let d = |kind, pat: String, group, valid| Detector {
        kind,
        re: Regex::new(&pat).expect("detector pattern"),
        group,
        valid,
    };
    vec![
        d(
            Kind::PrivateKey,
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)".into(),
            0,
            any,
        ),
        d(
            Kind::AwsKey,
            format!("{B}(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{{16}}{B}"),
            0,
            any,
        ),
        d(
            Kind::AnthropicKey,
            format!("{B}sk-ant-[a-z]{{2,10}}[0-9]{{2}}-[A-Za-z0-9_\\-]{{20,}}"),
            0,
            any,
        ),
        d(
            Kind::OpenaiKey,
            format!("{B}sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\\-]{{20,}}|[A-Za-z0-9]{{32,}})"),
            0,
            any,
        ),
        d(
            Kind::GithubToken,
            format!("{B}(?:gh[pousr]_[A-Za-z0-9]{{36,255}}|github_pat_[A-Za-z0-9_]{{22,255}})"),
            0,
            any,
        ),
        d(
            Kind::GitlabToken,
            format!("{B}gl(?:pat|dt|rt|ptt|oas|cbt|imt|soat|ft|agent|ffct|sa)-[A-Za-z0-9_\\-]{{20,}}"),
            0,
            any,
        ),
        d(
            Kind::SlackToken,
            format!(
                "{B}(?:xox[abposre]-[A-Za-z0-9\\-]{{10,}}|xapp-[0-9]+-[A-Za-z0-9\\-]{{10,}})|https://hooks\\.slack\\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\\-]+"
            ),
            0,
            any,
        ),
        d(
            Kind::GoogleApiKey,
            format!("{B}AIza[0-9A-Za-z_\\-]{{35}}"),
            0,
            any,
        ),
        d(
            Kind::StripeKey,
            format!("{B}(?:(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{{10,}}|whsec_[0-9A-Za-z]{{20,}})"),
            0,
            any,
        ),
        d(
            Kind::Jwt,
            format!("{B}eyJ[A-Za-z0-9_\\-]{{4,}}\\.eyJ[A-Za-z0-9_\\-]{{4,}}\\.[A-Za-z0-9_\\-]*"),
            0,
            any,
        ),
        d(
            Kind::Password,
            r#"[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@"]+:([^\s/?#@"]+)@"#.into(),
            1,
            any,
        ),
        d(
            Kind::Password,
            format!(r#"(?i){B}(?:password|passwd|passphrase|pwd)["']?\s*[=:]\s*["']?([^\s;,&"']+)"#),
            1,
            any,
        ),
        d(
            Kind::Card,
            format!("{B}[0-9](?:[ \\-]?[0-9]){{12,18}}{B}"),
            0,
            card_valid,
        ),
        d(
            Kind::Email,
            r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,63}".into(),
            0,
            any,
        ),
        d(
            Kind::Ipv4,
            format!("{B}(?:[0-9]{{1,3}}\\.){{3}}[0-9]{{1,3}}{B}"),
            0,
            ipv4_valid,
        ),
        d(
            Kind::Ipv6,
            r"(?:[0-9A-Fa-f]{1,4}|:)?:[0-9A-Fa-f:.]{1,43}(?:%[0-9A-Za-z]+)?".into(),
            0,
            ipv6_valid,
        ),
    ]
});

static DETECTOR_SET: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(DETECTORS.iter().map(|d| d.re.as_str())).expect("detector set"));

fn at(b: &[u8], i: usize, lit: &[u8]) -> bool {
    b.len() >= i + lit.len() && &b[i..i + lit.len()] == lit
}

fn before(b: &[u8], i: usize, lit: &[u8]) -> bool {
    i >= lit.len() && &b[i - lit.len()..i] == lit
}

/// At a `_`: the end of `sk_ rk_ whsec_ gh?_ github_`.
fn underscore_trigger(b: &[u8], i: usize) -> bool {
    before(b, i, b"sk")
        || before(b, i, b"rk")
        || before(b, i, b"whsec")
        || before(b, i, b"github")
        || (i >= 3 && &b[i - 3..i - 1] == b"gh")
}

/// At a `-`: the end of `sk- xox?- xapp- gl…-`, or the start of `-----BEGIN`.
fn dash_trigger(b: &[u8], i: usize) -> bool {
    before(b, i, b"sk")
        || (i >= 4 && &b[i - 4..i - 1] == b"xox")
        || before(b, i, b"xapp")
        || (3..=8).any(|k| i >= k && &b[i - k..i - k + 2] == b"gl")
        || at(b, i, b"-----BEGIN")
}

/// At an `A`: `AKIA ASIA ABIA ACCA A3T AIza`.
fn a_trigger(b: &[u8], i: usize) -> bool {
    at(b, i + 1, b"KIA")
        || at(b, i + 1, b"SIA")
        || at(b, i + 1, b"BIA")
        || at(b, i + 1, b"CCA")
        || at(b, i + 1, b"3T")
        || at(b, i + 1, b"Iza")
}

/// At a `p`/`P`: `password passwd passphrase pwd`, in any case.
fn p_trigger(b: &[u8], i: usize) -> bool {
    let lower = |j: usize| b.get(i + j).map(u8::to_ascii_lowercase);
    match lower(1) {
        Some(b'w') => lower(2) == Some(b'd'),
        Some(b'a') => lower(2) == Some(b's') && lower(3) == Some(b's'),
        _ => false,
    }
}

fn hexish(c: Option<&u8>) -> bool {
    matches!(c, Some(c) if c.is_ascii_hexdigit() || *c == b'.')
}

const DIGIT: u8 = 1;
const DOT: u8 = 2;
const ANCHOR: u8 = 4;

/// Each byte's class for [`may_match`]: a digit, a dot, or an anchor (a byte that some
/// literal trigger contains at a known place).
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = DIGIT;
        c += 1;
    }
    t[b'.' as usize] = DOT;
    let anchors = b"@\\_-AJ:pP";
    let mut i = 0;
    while i < anchors.len() {
        t[anchors[i] as usize] = ANCHOR;
        i += 1;
    }
    t
};

/// Whether `bytes` may hold something a detector finds: never false when one would (each
/// detector's match either holds one of the literal triggers checked here, or has one of
/// the shapes counted here, or is written with a JSON escape `\u`/`\/` that triggers too).
/// One pass with a class table (digits and dots counted without a branch; the rare
/// anchor bytes checked where they are); only a line with 13+ digits, 3+ dots or 6+ colons
/// between hex digits gets the byte-by-byte shape scan.
pub fn may_match(b: &[u8]) -> bool {
    let (mut digits, mut dots, mut inner_colons) = (0u32, 0u32, 0u32);
    for (i, &c) in b.iter().enumerate() {
        let t = CLASSES[c as usize];
        digits += u32::from(t & DIGIT);
        dots += u32::from(t >> 1 & 1);
        if t & ANCHOR != 0 {
            let hit = match c {
                b'@' => true,
                b'\\' => matches!(b.get(i + 1), Some(b'u' | b'/')),
                b'_' => underscore_trigger(b, i),
                b'-' => dash_trigger(b, i),
                b'A' => a_trigger(b, i),
                b'J' => before(b, i, b"ey"),
                b':' => {
                    if i > 0 && hexish(b.get(i - 1)) && hexish(b.get(i + 1)) {
                        inner_colons += 1;
                    }
                    at(b, i + 1, b":") || at(b, i + 1, b"//")
                }
                _ => p_trigger(b, i),
            };
            if hit {
                return true;
            }
        }
    }
    (digits >= 13 || (dots >= 3 && digits >= 4) || inner_colons >= 6) && shape_scan(b)
}

/// Whether a byte may be part of a shape: a digit, `.`, `:`, ` `, `-` or a hex letter.
/// Any other byte ends every shape [`shape_in_run`] looks for.
static SHAPE_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] =
            matches!(c as u8, b'0'..=b'9' | b'.' | b':' | b' ' | b'-' | b'a'..=b'f' | b'A'..=b'F');
        c += 1;
    }
    t
};

/// The fewest bytes a shape takes (`::::::`, six colons).
const SHORTEST_SHAPE: usize = 6;

/// Card-like digit runs, dotted quads and full IPv6 forms. Only runs of bytes that may be
/// part of one, and long enough, are read byte by byte: they are found 64 bytes at a time
/// from a bit per byte, without a branch per byte (JSON text changes class every few bytes,
/// and a branch mispredicted at each change cost more than the rest).
fn shape_scan(bytes: &[u8]) -> bool {
    let in_run = |run: &[u8]| run.len() >= SHORTEST_SHAPE && shape_in_run(run);
    let mut open = None; // where the run reaching into this chunk began
    for (c, chunk) in bytes.chunks(64).enumerate() {
        let (base, n) = (c * 64, chunk.len());
        let mut m = 0u64; // bit i: chunk[i] may be part of a shape
        for (i, &b) in chunk.iter().enumerate() {
            m |= u64::from(SHAPE_BYTES[usize::from(b)]) << i;
        }
        let mut at = 0;
        while at < n {
            match open {
                None => {
                    let ones = m >> at;
                    if ones == 0 {
                        break;
                    }
                    at += ones.trailing_zeros() as usize;
                    open = Some(base + at);
                }
                Some(start) => {
                    // Bits past the chunk's end are zero in m: the run ends there at the latest.
                    let end = at + ((!m >> at).trailing_zeros() as usize).min(n - at);
                    if end == n {
                        break; // it may go on in the next chunk
                    }
                    if in_run(&bytes[start..base + end]) {
                        return true;
                    }
                    open = None;
                    at = end;
                }
            }
        }
    }
    open.is_some_and(|start| in_run(&bytes[start..]))
}

/// Card-like digit runs, dotted quads and full IPv6 forms in `bytes`, byte by byte.
fn shape_in_run(bytes: &[u8]) -> bool {
    let mut digits = 0u32; // digits of a card-like run (single ' ' or '-' between digits)
    let mut sep = false;
    let mut groups = 0u32; // dotted digit groups (IPv4)
    let mut in_group = false;
    let mut colons = 0u32; // colons in a run of hex digits, ':' and '.' (IPv6)
    for &c in bytes {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                sep = false;
                if digits >= 13 {
                    return true;
                }
                if !in_group {
                    groups += 1;
                    in_group = true;
                    if groups >= 4 {
                        return true;
                    }
                }
            }
            b'.' => {
                if !in_group {
                    groups = 0;
                }
                in_group = false;
                digits = 0;
                sep = false;
            }
            b':' => {
                colons += 1;
                if colons >= 6 {
                    return true;
                }
                digits = 0;
                sep = false;
                groups = 0;
                in_group = false;
            }
            b' ' | b'-' => {
                if sep {
                    digits = 0;
                }
                sep = true;
                groups = 0;
                in_group = false;
                colons = 0;
            }
            b'a'..=b'f' | b'A'..=b'F' => {
                digits = 0;
                sep = false;
                groups = 0;
                in_group = false;
            }
            _ => {
                digits = 0;
                sep = false;
                groups = 0;
                in_group = false;
                colons = 0;
            }
        }
    }
    false
}

/// A `[[rule]]`: for events whose activity matches, the value at a path gets an action.
#[derive(Debug, Clone)]
struct Rule {
    activity: String,
    path: Vec<String>,
    action: Action,
}

/// A parsed and checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    actions: [Action; 16],
    rules: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            actions: Kind::ALL.map(Kind::default_action),
            rules: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    version: Option<toml::Spanned<i64>>,
    #[serde(default)]
    default: BTreeMap<toml::Spanned<String>, Action>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    activity: Option<String>,
    path: toml::Spanned<String>,
    action: Action,
}

/// Top-level members no policy may change: `customer` (isolation depends on it) and what
/// the queue itself relies on.
const PROTECTED: &[&str] = &["customer", "activity", "activity_id", "ts"];

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// Parses a policy file's text; an error names the file, the line and the key.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| format!("{source}: {}", e.to_string().trim_end()))?;
        let mut policy = Policy::default();
        if let Some(v) = &file.version {
            if *v.get_ref() != 1 {
                return Err(format!(
                    "{source} line {}: version must be 1, not {}",
                    line_of(text, v.span().start),
                    v.get_ref()
                ));
            }
        }
        // Groups first, then single kinds, so that a kind overrides its group.
        let mut kinds: Vec<(Kind, Action)> = Vec::new();
        for (key, action) in &file.default {
            let name = key.get_ref().as_str();
            let matched: Vec<Kind> = Kind::ALL
                .iter()
                .copied()
                .filter(|k| *k != Kind::Rule && k.class() == name)
                .collect();
            if !matched.is_empty() {
                for k in matched {
                    policy.actions[k as usize] = *action;
                }
            } else if let Some(k) = Kind::ALL
                .iter()
                .copied()
                .find(|k| *k != Kind::Rule && k.name() == name)
            {
                kinds.push((k, *action));
            } else {
                let known: Vec<&str> = ["secret", "card", "email", "ip"]
                    .into_iter()
                    .chain(
                        Kind::ALL[..15]
                            .iter()
                            .map(|k| k.name())
                            .filter(|n| *n != "card" && *n != "email"),
                    )
                    .collect();
                return Err(format!(
                    "{source} line {}: [default] has no kind '{name}' (known: {})",
                    line_of(text, key.span().start),
                    known.join(", ")
                ));
            }
        }
        for (k, a) in kinds {
            policy.actions[k as usize] = a;
        }
        for r in file.rule {
            let line = line_of(text, r.path.span().start);
            let raw = r.path.get_ref();
            let path: Vec<String> = raw.split('.').map(str::to_owned).collect();
            if raw.is_empty() || path.iter().any(|s| s.is_empty()) {
                return Err(format!(
                    "{source} line {line}: [[rule]] path '{raw}' must be dotted member names, like feature_json.prompt"
                ));
            }
            if path.len() == 1 && PROTECTED.contains(&path[0].as_str())
                || path[0] == "*"
                || path[0] == "**"
            {
                return Err(format!(
                    "{source} line {line}: [[rule]] path '{raw}' may not change '{}': the top-level customer, activity, activity_id and ts are always kept (isolation and the queue depend on them)",
                    path[0]
                ));
            }
            let activity = r.activity.unwrap_or_else(|| "*".into());
            if activity.trim().is_empty() {
                return Err(format!(
                    "{source} line {line}: [[rule]] activity must be a name or a glob like 'captured_*'"
                ));
            }
            policy.rules.push(Rule {
                activity,
                path,
                action: r.action,
            });
        }
        Ok(policy)
    }

    pub fn action(&self, kind: Kind) -> Action {
        self.actions[kind as usize]
    }

    /// Whether some rule that changes values applies to events of `activity`.
    fn rules_for(&self, activity: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.action != Action::Keep && glob(&r.activity, activity))
    }

    fn rule_at(&self, activity: &str, path: &[String]) -> Option<Action> {
        self.rules
            .iter()
            .find(|r| glob(&r.activity, activity) && path_matches(&r.path, path))
            .map(|r| r.action)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Dotted path patterns: `*` is one member (of any name), `**` any number of members.
fn path_matches(pat: &[String], path: &[String]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| path_matches(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, tail)) => (p == "*" || glob(p, s)) && path_matches(rest, tail),
            None => false,
        },
    }
}

struct Inner {
    policy: Policy,
    mac: Hmac<Sha256>,
    counts: [AtomicU64; 16],
}

/// A policy with its key and its counters; cheap to clone (shared).
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

/// What the encoder knows about a line it wrote: its activity and where the top-level
/// `customer` string value lies (offsets in the line, quotes included).
#[derive(Default, Debug)]
pub struct LineInfo {
    pub activity: String,
    pub customer: Option<Range<usize>>,
    /// The line's first bytes that were generated rather than given (`{`, and the
    /// `activity_id` and `ts` the queue filled in or a capture path wrote: a digest and a
    /// formatted time): nothing to find there.
    pub generated: usize,
}

enum Outcome {
    Same,
    Changed,
    Drop,
}

impl Redactor {
    pub fn new(policy: Policy, key: &[u8]) -> Result<Self, String> {
        if key.len() < 16 {
            return Err("the redaction key must be at least 16 bytes".into());
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
        LazyLock::force(&DETECTOR_SET);
        Ok(Self {
            inner: Arc::new(Inner {
                policy,
                mac,
                counts: Default::default(),
            }),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Redactions made so far, by kind (every kind, zeros included).
    pub fn counts(&self) -> [(&'static str, u64); 16] {
        Kind::ALL.map(|k| {
            (
                k.name(),
                self.inner.counts[k as usize].load(Ordering::Relaxed),
            )
        })
    }

    fn count(&self, kind: Kind) {
        self.inner.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `hmac:` and the first 128 bits of HMAC-SHA256(key, value), in hex: the prefix of
    /// `activitybi.secret.keyed_hash(value)`.
    pub fn token(&self, value: &str) -> String {
        let mut mac = self.inner.mac.clone();
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(5 + 32);
        s.push_str("hmac:");
        for b in &out[..16] {
            s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        s
    }

    /// Whether the line needs the walk: a rule for its activity, or the prefilter flags it
    /// outside the top-level `customer` value.
    pub fn needs_walk(&self, line: &[u8], info: &LineInfo) -> bool {
        if !self.inner.policy.rules.is_empty() && self.inner.policy.rules_for(&info.activity) {
            return true;
        }
        let skip = info.generated.min(line.len());
        match &info.customer {
            Some(r) if r.end <= line.len() && r.start >= skip => {
                may_match(&line[skip..r.start]) || may_match(&line[r.end..])
            }
            _ => may_match(&line[skip..]),
        }
    }

    /// Redacts the line at `buf[start..]` (one JSON object and its newline) in place.
    pub fn redact_line(&self, buf: &mut Vec<u8>, start: usize, info: &LineInfo) {
        let line = &buf[start..];
        if !self.needs_walk(line, info) {
            return;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return; // the encoder wrote it: unreachable in practice
        };
        if self.redact_event(&mut v) {
            buf.truncate(start);
            serde_json::to_writer(&mut *buf, &v).expect("a JSON value serializes");
            buf.push(b'\n');
        }
    }

    /// Redacts one event object; returns whether anything changed.
    pub fn redact_event(&self, event: &mut Value) -> bool {
        let Value::Object(obj) = event else {
            return false;
        };
        let activity = obj
            .get("activity")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut path = Vec::with_capacity(4);
        let mut changed = false;
        self.walk_object(obj, &activity, &mut path, &mut changed, true);
        changed
    }

    fn walk_object(
        &self,
        obj: &mut Map<String, Value>,
        activity: &str,
        path: &mut Vec<String>,
        changed: &mut bool,
        top: bool,
    ) {
        let mut dropped: Vec<String> = Vec::new();
        let track = !self.inner.policy.rules.is_empty(); // paths matter to rules only
        for (k, v) in obj.iter_mut() {
            if top && k == "customer" {
                continue;
            }
            if track {
                path.push(k.clone());
            }
            match self.walk(v, activity, path) {
                Outcome::Same => {}
                Outcome::Changed => *changed = true,
                Outcome::Drop => {
                    *changed = true;
                    dropped.push(k.clone());
                }
            }
            if track {
                path.pop();
            }
        }
        if !dropped.is_empty() {
            obj.retain(|k, _| !dropped.contains(k));
        }
        // Member names are text too: `{"bob@example.org": 3}` gets the same treatment.
        let mut renames: Vec<(String, Option<String>)> = Vec::new();
        for k in obj.keys() {
            let mut name = k.clone();
            match self.redact_string(&mut name) {
                Outcome::Same => {}
                Outcome::Changed => renames.push((k.clone(), Some(name))),
                Outcome::Drop => renames.push((k.clone(), None)),
            }
        }
        if !renames.is_empty() {
            *changed = true;
            for (k, v) in std::mem::take(obj) {
                match renames.iter().find(|(old, _)| *old == k) {
                    None => {
                        obj.insert(k, v);
                    }
                    Some((_, Some(name))) => {
                        // Two names masked alike stay two members.
                        let mut unique = name.clone();
                        let mut n = 1;
                        while obj.contains_key(&unique) {
                            n += 1;
                            unique = format!("{name}#{n}");
                        }
                        obj.insert(unique, v);
                    }
                    Some((_, None)) => {}
                }
            }
        }
    }

    fn walk(&self, v: &mut Value, activity: &str, path: &mut Vec<String>) -> Outcome {
        let policy = &self.inner.policy;
        if !policy.rules.is_empty() {
            if let Some(action) = policy.rule_at(activity, path) {
                return self.apply_rule(v, action);
            }
        }
        match v {
            Value::String(s) => self.redact_string(s),
            Value::Object(o) => {
                let mut changed = false;
                self.walk_object(o, activity, path, &mut changed, false);
                if changed {
                    Outcome::Changed
                } else {
                    Outcome::Same
                }
            }
            Value::Array(a) => {
                let mut changed = false;
                let mut keep = Vec::with_capacity(a.len());
                for item in a.iter_mut() {
                    match self.walk(item, activity, path) {
                        Outcome::Same => keep.push(true),
                        Outcome::Changed => {
                            changed = true;
                            keep.push(true);
                        }
                        Outcome::Drop => {
                            changed = true;
                            keep.push(false);
                        }
                    }
                }
                if keep.iter().any(|k| !k) {
                    let mut it = keep.into_iter();
                    a.retain(|_| it.next().unwrap_or(true));
                }
                if changed {
                    Outcome::Changed
                } else {
                    Outcome::Same
                }
            }
            _ => Outcome::Same,
        }
    }

    fn apply_rule(&self, v: &mut Value, action: Action) -> Outcome {
        match action {
            Action::Keep => Outcome::Same,
            Action::Drop => {
                self.count(Kind::Rule);
                Outcome::Drop
            }
            Action::Mask => {
                self.count(Kind::Rule);
                *v = Value::String("[REDACTED:rule]".into());
                Outcome::Changed
            }
            Action::Hash => {
                self.count(Kind::Rule);
                let text = match &mut *v {
                    Value::String(s) => std::mem::take(s),
                    other => other.to_string(),
                };
                *v = Value::String(self.token(&text));
                Outcome::Changed
            }
        }
    }

    /// The findings in `s`: (range, kind), sorted, not overlapping.
    pub fn find(&self, s: &str) -> Vec<(Range<usize>, Kind)> {
        if !may_match(s.as_bytes()) {
            return Vec::new();
        }
        find_all(s)
    }
}

/// The detectors' findings in `s` without the prefilter: (range, kind), sorted, not
/// overlapping (where two overlap, the one that starts first, then the earlier detector).
fn find_all(s: &str) -> Vec<(Range<usize>, Kind)> {
    {
        let mut found: Vec<(Range<usize>, usize)> = Vec::new();
        for i in DETECTOR_SET.matches(s).iter() {
            let d = &DETECTORS[i];
            for c in d.re.captures_iter(s) {
                if let Some(m) = c.get(d.group) {
                    if !m.is_empty() && (d.valid)(m.as_str()) {
                        found.push((m.range(), i));
                    }
                }
            }
        }
        found.sort_by_key(|(r, i)| (r.start, *i));
        let mut out: Vec<(Range<usize>, Kind)> = Vec::with_capacity(found.len());
        let mut end = 0;
        for (r, i) in found {
            if r.start >= end || out.is_empty() {
                end = r.end;
                out.push((r, DETECTORS[i].kind));
            }
        }
        out
    }
}

impl Redactor {
    fn redact_string(&self, s: &mut String) -> Outcome {
        let found = self.find(s);
        if found.is_empty() {
            return Outcome::Same;
        }
        let policy = &self.inner.policy;
        if let Some((_, k)) = found
            .iter()
            .find(|(_, k)| policy.action(*k) == Action::Drop)
        {
            self.count(*k);
            return Outcome::Drop;
        }
        let mut out = String::with_capacity(s.len() + 16);
        let mut last = 0;
        let mut changed = false;
        for (r, k) in found {
            let text = &s[r.clone()];
            match policy.action(k) {
                Action::Keep | Action::Drop => continue,
                Action::Mask => {
                    out.push_str(&s[last..r.start]);
                    out.push_str("[REDACTED:");
                    out.push_str(k.name());
                    out.push(']');
                }
                Action::Hash => {
                    out.push_str(&s[last..r.start]);
                    let token = if k == Kind::Email {
                        self.token(&text.to_ascii_lowercase())
                    } else {
                        self.token(text)
                    };
                    out.push_str(&token);
                }
            }
            self.count(k);
            changed = true;
            last = r.end;
        }
        if !changed {
            return Outcome::Same;
        }
        out.push_str(&s[last..]);
        *s = out;
        Outcome::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading only the runs that may hold a shape finds what reading every byte finds.
    #[test]
    fn shapes_are_found_in_runs_as_in_the_whole_text() {
        let alphabet = b"0123456789.:- aFgZ\"x";
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut found = 0;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 200) as usize;
            let mut r = rng;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    r = r.rotate_left(7) ^ 0x5bd1_e995;
                    // Mostly digits, so that every shape and every run length occurs.
                    alphabet[if r & 3 != 0 { r >> 2 & 7 } else { r >> 2 } as usize % alphabet.len()]
                })
                .collect();
            let want = shape_in_run(&bytes);
            assert_eq!(
                shape_scan(&bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            found += usize::from(want);
        }
        assert!((10_000..90_000).contains(&found), "{found}");
    }

    fn redactor(policy: &str) -> Redactor {
        Redactor::new(Policy::parse(policy, "policy.toml").unwrap(), &[7u8; 32]).unwrap()
    }

    fn kinds(s: &str) -> Vec<&'static str> {
        redactor("")
            .find(s)
            .into_iter()
            .map(|(_, k)| k.name())
            .collect()
    }

    fn only(s: &str, kind: &str) {
        assert_eq!(kinds(s), vec![kind], "{s}");
        assert!(may_match(s.as_bytes()), "prefilter misses {s}");
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("5555555555554444"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("411111111111")); // too short
        assert!(!luhn_valid("41111111111111111111")); // too long
    }

    #[test]
    fn cards() {
        only("pay with 4111111111111111 now", "card");
        only("4111-1111-1111-1111", "card");
        only("5555 5555 5555 4444", "card");
        only("378282246310005", "card");
        assert!(kinds("4111111111111112").is_empty()); // Luhn fails
        assert!(kinds("1732912345678").is_empty()); // an epoch in ms
        assert!(kinds("order 12345").is_empty());
    }

    #[test]
    fn secrets() {
        only("key AKIAIOSFODNN7EXAMPLE here", "aws_key");
        only("ASIAY34FZKBOKMUTVV7A", "aws_key");
        only(
            &format!("sk-ant-api03-{}AA", "a1B2c3D4e5".repeat(9)),
            "anthropic_key",
        );
        only(&format!("sk-proj-{}", "Ab3_-x".repeat(8)), "openai_key");
        only(&format!("sk-{}", "aB3dE6gH9j".repeat(5)), "openai_key");
        only(&format!("ghp_{}", "aB3dE6gH9j".repeat(4)), "github_token");
        only(
            &format!("github_pat_{}", "aB3dE6gH9j_".repeat(4)),
            "github_token",
        );
        only("glpat-xYz12345678901234567", "gitlab_token");
        only(
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
            "slack_token",
        );
        only(
            "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
            "slack_token",
        );
        only("AIzaSyA1234567890abcdefghijklmnopqrstuv", "google_api_key");
        only(
            &format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc"),
            "stripe_key",
        );
        only("rk_test_51H8abcdefghijkl", "stripe_key");
        only(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "private_key",
        );
        only(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA",
            "private_key",
        );
        only(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "jwt",
        );
        only("postgres://app:hunter2@db.internal:5432/x", "password");
        only("Server=x;User Id=sa;Password=Tr0ub4dor;", "password");
        assert!(kinds("a task-list and a desk_lamp").is_empty());
        assert!(kinds("sk-short").is_empty());
    }

    #[test]
    fn password_masks_only_the_password() {
        let r = redactor("");
        let mut v =
            serde_json::json!({"activity": "x", "u": "postgres://app:hunter2@db.internal/x"});
        assert!(r.redact_event(&mut v));
        assert_eq!(v["u"], "postgres://app:[REDACTED:password]@db.internal/x");
    }

    #[test]
    fn personal_data() {
        only("mail ana.maria+x@example.co.uk please", "email");
        only("from 192.168.10.200 to", "ipv4");
        only("2001:db8::8a2e:370:7334", "ipv6");
        only("fe80::1", "ipv6");
        only("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ipv6");
        assert!(kinds("999.1.1.1").is_empty());
        assert!(kinds("at 21:50:41.000Z").is_empty());
        assert!(kinds("2026-11-29T21:50:41.123Z").is_empty());
        assert!(kinds("mac 00:1a:2b:3c:4d:5e").is_empty());
    }

    #[test]
    fn default_policy_and_customer() {
        let r = redactor("");
        let mut v = serde_json::json!({
            "activity": "x", "customer": "ana@example.com",
            "feature_json": {"to": "Bob@Example.com", "cc": ["bob@example.com"], "card": "4111111111111111", "n": 1}
        });
        assert!(r.redact_event(&mut v));
        assert_eq!(v["customer"], "ana@example.com");
        let t = v["feature_json"]["to"].as_str().unwrap();
        assert!(t.starts_with("hmac:") && t.len() == 37);
        assert_eq!(v["feature_json"]["cc"][0], t);
        assert_eq!(v["feature_json"]["card"], "[REDACTED:card]");
        assert_eq!(v["feature_json"]["n"], 1);
        let counts: BTreeMap<_, _> = r.counts().into_iter().collect();
        assert_eq!(counts["email"], 2);
        assert_eq!(counts["card"], 1);
    }

    #[test]
    fn member_names_are_redacted_too() {
        let r = redactor("");
        let mut v = serde_json::json!({"activity": "x", "customer": "c", "feature_json": {"per": {"bob@example.org": 3, "AKIAIOSFODNN7EXAMPLE": 1, "n": 2}}});
        assert!(r.redact_event(&mut v));
        let per = v["feature_json"]["per"].as_object().unwrap();
        assert!(per.contains_key("[REDACTED:aws_key]") && per.contains_key("n"));
        assert!(per.keys().any(|k| k.starts_with("hmac:")));
        assert!(!v.to_string().contains("bob@") && !v.to_string().contains("AKIA"));
    }

    #[test]
    fn rules_and_overrides() {
        let r = redactor(
            "[default]\nip = \"keep\"\nipv6 = \"drop\"\n\n[[rule]]\nactivity = \"captured_*\"\npath = \"feature_json.prompt\"\naction = \"drop\"\n\n[[rule]]\npath = \"feature_json.debug.**\"\naction = \"keep\"\n",
        );
        let mut v = serde_json::json!({"activity": "captured_prompt", "feature_json": {"prompt": "hi", "ip": "10.0.0.1", "v6": "::1", "debug": {"k": "AKIAIOSFODNN7EXAMPLE"}}});
        assert!(r.redact_event(&mut v));
        assert_eq!(
            v,
            serde_json::json!({"activity": "captured_prompt", "feature_json": {"ip": "10.0.0.1", "debug": {"k": "AKIAIOSFODNN7EXAMPLE"}}})
        );
    }

    #[test]
    fn policy_errors_name_line_and_key() {
        let e =
            Policy::parse("[default]\nemail = \"hash\"\nphone = \"mask\"\n", "p.toml").unwrap_err();
        assert!(e.contains("p.toml line 3") && e.contains("phone"), "{e}");
        let e = Policy::parse("[default]\nemail = \"scramble\"\n", "p.toml").unwrap_err();
        assert!(e.contains("line 2") && e.contains("scramble"), "{e}");
        let e = Policy::parse(
            "[[rule]]\npath = \"customer\"\naction = \"hash\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(e.contains("line 2") && e.contains("customer"), "{e}");
        let e = Policy::parse(
            "[[rule]]\npath = \"a.b\"\naction = \"drop\"\ncolour = 1\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn lines_left_alone_when_clean() {
        let r = redactor("");
        let line = b"{\"activity_id\":\"01KB2Z3Y4X5W6V7T8S9R0QPNMK\",\"ts\":\"2026-11-29T21:50:41.123Z\",\"activity\":\"called_tool\",\"customer\":\"ana@example.com\",\"feature_json\":{\"tool\":\"get_context\",\"latency_ms\":0.08,\"n\":199999}}\n";
        let c = std::str::from_utf8(line).unwrap().find("\"ana@").unwrap();
        let info = LineInfo {
            activity: "called_tool".into(),
            customer: Some(c..c + 17),
            generated: 0,
        };
        assert!(!r.needs_walk(line, &info));
        assert!(r.needs_walk(line, &LineInfo::default()));
    }

    /// The prefilter never says no where a detector finds something: random strings made
    /// of pieces of every format, separators and JSON escapes.
    #[test]
    fn prefilter_is_a_superset_of_the_detectors() {
        let pieces = [
            "AKIA",
            "IOSFODNN7EXAMPLE",
            "sk-",
            "ant-api03-",
            "proj-",
            "ghp_",
            "glpat-",
            "xoxb-",
            "AIza",
            "sk_live_",
            "-----BEGIN PRIVATE KEY-----",
            "eyJ",
            "://",
            "u:p@h",
            "password=",
            "pwd:",
            "4111",
            "1111",
            " ",
            "-",
            ".",
            ":",
            "::",
            "@",
            "example.com",
            "10",
            "255",
            "0",
            "db8",
            "fe80",
            "a",
            "Z",
            "_",
            "\\u0040",
            "\\/",
            "\"",
            "é",
            "x9Qw8Er7Ty6Ui5Op4As3Df2",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut found = 0;
        for _ in 0..50_000 {
            let len = 1 + next(12);
            let s: String = (0..len).map(|_| pieces[next(pieces.len())]).collect();
            if !find_all(&s).is_empty() {
                found += 1;
                assert!(may_match(s.as_bytes()), "the prefilter misses {s:?}");
            }
        }
        assert!(found > 1000, "{found}");
    }

    #[test]
    fn tokens_are_stable_and_keyed() {
        let a = redactor("");
        assert_eq!(a.token("x"), a.token("x"));
        let b = Redactor::new(Policy::default(), &[8u8; 32]).unwrap();
        assert_ne!(a.token("x"), b.token("x"));
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    /// A manual measurement: `cargo test --release --lib time_prefilter -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_prefilter() {
        let r = Redactor::new(Policy::default(), &[7u8; 32]).unwrap();
        let raw = br#"{"activity":"called_tool","customer":"ana@example.com","feature_json":{"tool":"get_context","latency_ms":0.08,"outcome":"ok","n":12345},"_session_id":"s-42"}"#;
        let mut buf = Vec::new();
        let mut info = LineInfo::default();
        crate::event::encode_json_bytes_info(
            raw,
            &mut buf,
            &mut crate::ids::TsFormatter::default(),
            1 << 20,
            &mut info,
        )
        .unwrap();
        println!("{:?} {}", info, String::from_utf8_lossy(&buf));
        println!("needs_walk {}", r.needs_walk(&buf, &info));
        let t = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..1_000_000 {
            n += r.needs_walk(std::hint::black_box(&buf), &info) as u32;
        }
        println!("needs_walk {:?}/call {n}", t.elapsed() / 1_000_000);
        let t = std::time::Instant::now();
        let mut sum = 0u64;
        for _ in 0..1_000_000 {
            for &c in std::hint::black_box(&buf[..]) {
                sum += (c == b'@') as u64;
            }
        }
        println!("count loop {:?}/call {sum}", t.elapsed() / 1_000_000);
        let t = std::time::Instant::now();
        for _ in 0..1_000_000 {
            n += may_match(std::hint::black_box(&buf[..100])) as u32;
        }
        println!("may_match first 100 {:?}/call {n}", t.elapsed() / 1_000_000);
    }
}
