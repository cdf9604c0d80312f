//! Request authentication between `nbd-http-server` and `http-disk-server`:
//! a shared pool key and an HMAC-SHA256 over every block request.
//!
//! # Header
//!
//! ```text
//! x-heartbeat-auth: v1 key=<key-id> ts=<unix-ms> nonce=<32 hex> sha256=<64 hex> mac=<64 hex>
//! ```
//!
//! `sha256` is the SHA-256 of the request body (of the empty string for
//! `HEAD` and `GET`). Carrying it in the header lets the server check the MAC
//! before it reads a single body byte, and check the body against the digest
//! once read, before anything is written (the scheme of AWS SigV4's
//! `x-amz-content-sha256`).
//!
//! # Canonical string
//!
//! The MAC is `HMAC-SHA256(secret, canonical)` with `canonical` the lines
//! (`\n`-joined, no trailing newline):
//!
//! ```text
//! heartbeat-auth-v1
//! <METHOD>            HEAD, GET, PUT
//! <path>              the request path, `/`
//! <range>             Range value for GET, Content-Range value for PUT, empty otherwise
//! <sha256 hex>        of the body
//! <ts>                decimal unix milliseconds
//! <nonce hex>
//! <key-id>
//! ```
//!
//! Header values are taken verbatim (HTTP strips surrounding whitespace), so
//! no normalisation is needed: a client signs exactly what it sends.
//!
//! # Replay
//!
//! A request is accepted only if its timestamp is within the window (±30 s by
//! default: the hosts of a pool run NTP, XCP-ng requires it for HA) and its
//! nonce was not seen before. Nonces are remembered until their timestamp
//! leaves the window, in a bounded cache ([`ReplayCache`]); when the cache is
//! full of live nonces a new request is refused rather than accepted with a
//! nonce that could not be remembered.
//!
//! # Keys
//!
//! The key file holds one key per line, `id:hex-secret` (at least 16 bytes,
//! 32 recommended), `#` comments and blank lines allowed; it must not be
//! readable by group or others. A client signs with the first key; a server
//! accepts any. Rotation: add the new key as the second line on every host,
//! restart; move it first everywhere, restart; remove the old one.

use std::collections::{BinaryHeap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Request header carrying the MAC.
pub const HEADER_AUTH: &str = "x-heartbeat-auth";
/// Version tag of the header and the canonical string.
pub const VERSION: &str = "v1";
/// Where both daemons look for the pool key when `--auth-key-file` is not given.
pub const DEFAULT_KEY_FILE: &str = "/etc/xha-heartbeat/pool.key";
/// Accepted clock difference between client and server, either way.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Nonces remembered at most: about 8700 authenticated requests per second
/// sustained over a 30 s window, some 15 MB when full. A heartbeat needs a
/// few per second.
pub const DEFAULT_REPLAY_CAPACITY: usize = 262_144;
/// Shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// SHA-256 of the empty string: the signed digest of every HEAD and GET.
const EMPTY_BODY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// SHA-256 of the empty body (HEAD, GET).
pub fn empty_body_sha256() -> [u8; 32] {
    EMPTY_BODY_SHA256
}

/// SHA-256 of a body.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    if body.is_empty() {
        return EMPTY_BODY_SHA256;
    }
    Sha256::digest(body).into()
}

/// One pool key.
#[derive(Clone)]
pub struct PoolKey {
    pub id: String,
    /// HMAC state with the secret already absorbed: cloned per request,
    /// which saves hashing the padded key twice each time.
    keyed: HmacSha256,
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl PoolKey {
    pub fn new(id: &str, secret: &[u8]) -> Result<Self, String> {
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "key id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "key {id:?} has {} secret bytes; at least {MIN_SECRET_BYTES} are required (create one with `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        Ok(Self {
            id: id.to_owned(),
            keyed: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        })
    }

    fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the pool key file {path}: {source}; create it (see SECURITY.md) or pass --auth-key-file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pool key file {path} has mode {mode:04o}: group or others may read it; run `chmod 600 {path}` (and rotate the key if others could read it)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the pool key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("the pool key file {path}, line {line}: {detail}; expected `id:hex-secret`")]
    Syntax {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("the pool key file {path} holds no key; expected lines `id:hex-secret`")]
    Empty { path: PathBuf },
}

/// The keys of a key file: the first signs, all verify.
#[derive(Debug, Clone)]
pub struct PoolKeys {
    keys: Vec<PoolKey>,
}

impl PoolKeys {
    pub fn new(keys: Vec<PoolKey>) -> Option<Self> {
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// Read a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, path)
    }

    /// Parse key file text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut keys: Vec<PoolKey> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |detail: String| KeyFileError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                detail,
            };
            let (id, hex) = line
                .split_once(':')
                .ok_or_else(|| syntax("no `:` between id and secret".into()))?;
            let secret = decode_hex(hex.trim())
                .ok_or_else(|| syntax("the secret is not an even number of hex digits".into()))?;
            let key = PoolKey::new(id.trim(), &secret).map_err(syntax)?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(syntax(format!("key id {:?} appears twice", key.id)));
            }
            keys.push(key);
        }
        Self::new(keys).ok_or_else(|| KeyFileError::Empty {
            path: path.to_path_buf(),
        })
    }

    /// The key requests are signed with.
    pub fn signing_key(&self) -> &PoolKey {
        &self.keys[0]
    }

    pub fn find(&self, id: &str) -> Option<&PoolKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// The key file to use: the explicit one, else [`DEFAULT_KEY_FILE`] if it
/// exists, else none.
pub fn resolve_key_file(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = Path::new(DEFAULT_KEY_FILE);
            // `symlink_metadata` too: a dangling link is a broken install, not "no key".
            (default.exists() || default.symlink_metadata().is_ok()).then(|| default.to_path_buf())
        }
    }
}

/// What a request is, as far as the MAC is concerned.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Range (GET) or Content-Range (PUT) header value, else "".
    pub range: &'a str,
}

/// The canonical string's variable fields as they appear in it; the
/// signer puts the same hex digits in the header.
struct CanonicalFields {
    body_sha256: HexDigits<64>,
    nonce: HexDigits<32>,
    ts: itoa::Buffer,
}

impl CanonicalFields {
    fn new(body_sha256: &[u8; 32], nonce: u128) -> Self {
        Self {
            body_sha256: HexDigits::of(body_sha256),
            nonce: HexDigits::of(&nonce.to_be_bytes()),
            ts: itoa::Buffer::new(),
        }
    }
}

/// Hand the canonical string to `sink` piece by piece, so that the MAC can
/// be computed without building it (this runs for every request, on both
/// sides).
fn write_canonical(
    parts: &SignedParts<'_>,
    fields: &mut CanonicalFields,
    ts_ms: u64,
    key_id: &str,
    sink: &mut dyn FnMut(&[u8]),
) {
    let pieces: [&[u8]; 16] = [
        b"heartbeat-auth-",
        VERSION.as_bytes(),
        b"\n",
        parts.method.as_bytes(),
        b"\n",
        parts.path.as_bytes(),
        b"\n",
        parts.range.as_bytes(),
        b"\n",
        fields.body_sha256.as_str().as_bytes(),
        b"\n",
        fields.ts.format(ts_ms).as_bytes(),
        b"\n",
        fields.nonce.as_str().as_bytes(),
        b"\n",
        key_id.as_bytes(),
    ];
    for piece in pieces {
        sink(piece);
    }
}

/// The string the MAC is computed over.
pub fn canonical_string(
    parts: &SignedParts<'_>,
    body_sha256: &[u8; 32],
    ts_ms: u64,
    nonce: u128,
    key_id: &str,
) -> String {
    let mut out = Vec::with_capacity(192);
    let mut fields = CanonicalFields::new(body_sha256, nonce);
    write_canonical(parts, &mut fields, ts_ms, key_id, &mut |p| {
        out.extend_from_slice(p)
    });
    String::from_utf8(out).expect("header values are text")
}

fn compute_mac(
    key: &PoolKey,
    parts: &SignedParts<'_>,
    fields: &mut CanonicalFields,
    ts_ms: u64,
) -> HmacSha256 {
    let mut mac = key.mac();
    write_canonical(parts, fields, ts_ms, &key.id, &mut |p| mac.update(p));
    mac
}

/// The header value for a request, with the given time and nonce.
pub fn sign_with(
    key: &PoolKey,
    parts: &SignedParts<'_>,
    body: &[u8],
    ts_ms: u64,
    nonce: u128,
) -> String {
    let mut fields = CanonicalFields::new(&body_sha256(body), nonce);
    let mac = compute_mac(key, parts, &mut fields, ts_ms)
        .finalize()
        .into_bytes();
    let mut value = String::with_capacity(224);
    for piece in [
        VERSION,
        " key=",
        &key.id,
        " ts=",
        fields.ts.format(ts_ms),
        " nonce=",
        fields.nonce.as_str(),
        " sha256=",
        fields.body_sha256.as_str(),
        " mac=",
        HexDigits::<64>::of(&mac).as_str(),
    ] {
        value.push_str(piece);
    }
    value
}

/// The header value for a request sent now, with a fresh random nonce.
pub fn sign(key: &PoolKey, parts: &SignedParts<'_>, body: &[u8]) -> String {
    sign_with(key, parts, body, unix_ms_now(), rand::random::<u128>())
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A parsed `x-heartbeat-auth` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub key_id: String,
    pub ts_ms: u64,
    pub nonce: u128,
    pub body_sha256: [u8; 32],
    pub mac: [u8; 32],
}

impl AuthHeader {
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        let bad = |d: &str| AuthError::Malformed(d.to_owned());
        let mut tokens = value.split_ascii_whitespace();
        if tokens.next() != Some(VERSION) {
            return Err(bad("the header must start with `v1`"));
        }
        let (mut key, mut ts, mut nonce, mut sha, mut mac) = (None, None, None, None, None);
        for t in tokens {
            let (k, v) = t.split_once('=').ok_or_else(|| bad("a field lacks `=`"))?;
            let slot = match k {
                "key" => &mut key,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sha256" => &mut sha,
                "mac" => &mut mac,
                _ => return Err(bad("unknown field")),
            };
            if slot.replace(v).is_some() {
                return Err(bad("a field appears twice"));
            }
        }
        let key = key.ok_or_else(|| bad("no key="))?;
        let ts = ts
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| bad("ts= must be unix milliseconds"))?;
        let nonce = nonce
            .and_then(decode_hex_array::<16>)
            .map(u128::from_be_bytes)
            .ok_or_else(|| bad("nonce= must be 32 hex digits"))?;
        let hex32 = |v: Option<&str>, what: &str| {
            v.and_then(decode_hex_array::<32>)
                .ok_or_else(|| bad(&format!("{what}= must be 64 hex digits")))
        };
        Ok(Self {
            key_id: key.to_owned(),
            ts_ms: ts,
            nonce,
            body_sha256: hex32(sha, "sha256")?,
            mac: hex32(mac, "mac")?,
        })
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no x-heartbeat-auth header: this server requires the pool key (see SECURITY.md)")]
    Missing,
    #[error("malformed x-heartbeat-auth header: {0}")]
    Malformed(String),
    #[error("unknown key id {0:?}: the client's pool key file is not the server's (key rotation incomplete?)")]
    UnknownKey(String),
    #[error("timestamp is {skew_ms} ms away from this server's clock, more than the {window_ms} ms window (clocks out of sync? check NTP)")]
    Stale { skew_ms: i128, window_ms: u64 },
    #[error("MAC mismatch: wrong key, or the request was altered")]
    BadMac,
    #[error("nonce already used: replayed request")]
    Replayed,
    #[error("replay cache full ({0} live nonces): request refused, retry shortly")]
    ReplayCacheFull(usize),
    #[error("body does not match the signed SHA-256: altered in transit; nothing was written")]
    BodyDigest,
}

impl AuthError {
    /// Whether the client may retry the same request soon (not an attack
    /// signal, just load).
    pub fn is_overload(&self) -> bool {
        matches!(self, AuthError::ReplayCacheFull(_))
    }
}

/// Nonces seen and still inside the window, bounded.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashSet<u128>,
    /// Min-heap on expiry (stored negated through `Reverse`).
    expiries: BinaryHeap<std::cmp::Reverse<(u64, u128)>>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: HashSet::new(),
            expiries: BinaryHeap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Remember `nonce` until `expires_ms`. Refuses a nonce seen before,
    /// and any nonce when the cache is full of unexpired ones.
    pub fn insert(&mut self, nonce: u128, expires_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        while let Some(std::cmp::Reverse((exp, n))) = self.expiries.peek().copied() {
            if exp >= now_ms {
                break;
            }
            self.expiries.pop();
            self.seen.remove(&n);
        }
        if self.seen.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull(self.seen.len()));
        }
        self.seen.insert(nonce);
        self.expiries.push(std::cmp::Reverse((expires_ms, nonce)));
        Ok(())
    }
}

/// A request whose header checked out; the body is still to be checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: String,
    body_sha256: [u8; 32],
}

impl Verified {
    /// Compare the body read with the digest the MAC covers.
    pub fn check_body(&self, body: &[u8]) -> Result<(), AuthError> {
        if body_sha256(body) == self.body_sha256 {
            Ok(())
        } else {
            Err(AuthError::BodyDigest)
        }
    }
}

/// The server side: keys, window, replay cache.
#[derive(Debug)]
pub struct Verifier {
    keys: PoolKeys,
    window_ms: u64,
    replay: Mutex<ReplayCache>,
}

impl Verifier {
    pub fn new(keys: PoolKeys, window: Duration, replay_capacity: usize) -> Self {
        Self {
            keys,
            window_ms: window.as_millis() as u64,
            replay: Mutex::new(ReplayCache::new(replay_capacity)),
        }
    }

    pub fn keys(&self) -> &PoolKeys {
        &self.keys
    }

    /// Check a request head at `now_ms`. Order: parse, key, window, MAC
    /// (constant time), then the nonce: only a request with a valid MAC may
    /// occupy the replay cache. For requests without a body (`HEAD`, `GET`)
    /// the signed digest must be that of the empty body.
    pub fn check(
        &self,
        parts: &SignedParts<'_>,
        header: Option<&str>,
        now_ms: u64,
        has_body: bool,
    ) -> Result<Verified, AuthError> {
        let h = AuthHeader::parse(header.ok_or(AuthError::Missing)?)?;
        let key = self
            .keys
            .find(&h.key_id)
            .ok_or_else(|| AuthError::UnknownKey(h.key_id.clone()))?;
        let skew = h.ts_ms as i128 - now_ms as i128;
        if skew.unsigned_abs() > self.window_ms as u128 {
            return Err(AuthError::Stale {
                skew_ms: skew,
                window_ms: self.window_ms,
            });
        }
        let mut fields = CanonicalFields::new(&h.body_sha256, h.nonce);
        compute_mac(key, parts, &mut fields, h.ts_ms)
            .verify_slice(&h.mac)
            .map_err(|_| AuthError::BadMac)?;
        if !has_body && h.body_sha256 != empty_body_sha256() {
            return Err(AuthError::BodyDigest);
        }
        self.replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h.nonce, h.ts_ms.saturating_add(self.window_ms), now_ms)?;
        Ok(Verified {
            key_id: h.key_id,
            body_sha256: h.body_sha256,
        })
    }

    pub fn replay_cache_len(&self) -> usize {
        self.replay.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Lower-case hex; on the signing path of every request, so a table lookup
/// (the `hex` crate) rather than a formatter call per byte.
pub fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Bytes from hex digits (either case); None for an odd length or a non-hex
/// character.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// Exactly `N` bytes from `2N` hex digits (either case), without allocating.
fn decode_hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Lower-case hex digits of a fixed-size value, on the stack: the signing
/// path formats three of them per request.
struct HexDigits<const D: usize>([u8; D]);

impl<const D: usize> HexDigits<D> {
    fn of(bytes: &[u8]) -> Self {
        let mut digits = [0u8; D];
        hex::encode_to_slice(bytes, &mut digits).expect("D is twice the byte count");
        Self(digits)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> PoolKeys {
        PoolKeys::parse(
            "# pool key\nk2:00112233445566778899aabbccddeeff\n\nk1 : ffeeddccbbaa99887766554433221100ff\n",
            Path::new("test"),
        )
        .unwrap()
    }

    const PUT: SignedParts<'static> = SignedParts {
        method: "PUT",
        path: "/",
        range: "bytes 0-3/*",
    };

    #[test]
    fn parses_key_files() {
        let k = keys();
        assert_eq!(k.ids(), ["k2", "k1"]);
        assert_eq!(k.signing_key().id, "k2");
        let p = Path::new("f");
        assert!(matches!(
            PoolKeys::parse("", p),
            Err(KeyFileError::Empty { .. })
        ));
        assert!(PoolKeys::parse("k:0011", p).is_err(), "too short");
        assert!(PoolKeys::parse("k 00112233445566778899aabbccddeeff", p).is_err());
        assert!(PoolKeys::parse("k:0011223344556677889xaabbccddeeff", p).is_err());
        assert!(PoolKeys::parse("a b:00112233445566778899aabbccddeeff", p).is_err());
        assert!(PoolKeys::parse(
            "a:00112233445566778899aabbccddeeff\na:00112233445566778899aabbccddeeff",
            p
        )
        .is_err());
        assert!(!format!("{:?}", k).contains("0011"), "Debug hides secrets");
    }

    #[test]
    fn refuses_readable_key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.key");
        std::fs::write(&path, "k:00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PoolKeys::load(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Permissions { mode: 0o644, .. }));
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(PoolKeys::load(&path).unwrap().ids(), ["k"]);
    }

    #[test]
    fn sign_and_verify_round_trip_and_every_tamper_fails() {
        let v = Verifier::new(keys(), DEFAULT_WINDOW, 100);
        let now = 1_700_000_000_000;
        let h = sign_with(keys().signing_key(), &PUT, b"abcd", now, 7);
        assert!(h.starts_with(
            "v1 key=k2 ts=1700000000000 nonce=00000000000000000000000000000007 sha256="
        ));
        let ok = v.check(&PUT, Some(&h), now + 10, true).unwrap();
        ok.check_body(b"abcd").unwrap();
        assert_eq!(ok.check_body(b"abce"), Err(AuthError::BodyDigest));
        // Replay of the very same header.
        assert_eq!(
            v.check(&PUT, Some(&h), now + 20, true).unwrap_err(),
            AuthError::Replayed
        );
        // Anything else changed.
        let h = |nonce| sign_with(keys().signing_key(), &PUT, b"abcd", now, nonce);
        let other = SignedParts {
            range: "bytes 4-7/*",
            ..PUT
        };
        assert_eq!(
            v.check(&other, Some(&h(8)), now, true).unwrap_err(),
            AuthError::BadMac
        );
        let get = SignedParts {
            method: "GET",
            ..PUT
        };
        assert_eq!(
            v.check(&get, Some(&h(9)), now, true).unwrap_err(),
            AuthError::BadMac
        );
        assert!(matches!(
            v.check(&PUT, Some(&h(10)), now + 31_000, true).unwrap_err(),
            AuthError::Stale { .. }
        ));
        assert!(matches!(
            v.check(&PUT, Some(&h(11)), now - 31_000, true).unwrap_err(),
            AuthError::Stale { .. }
        ));
        let wrong = PoolKey::new("k2", b"0123456789abcdef0123").unwrap();
        let forged = sign_with(&wrong, &PUT, b"abcd", now, 12);
        assert_eq!(
            v.check(&PUT, Some(&forged), now, true).unwrap_err(),
            AuthError::BadMac
        );
        let unknown = PoolKey::new("zz", b"0123456789abcdef0123").unwrap();
        let forged = sign_with(&unknown, &PUT, b"abcd", now, 13);
        assert!(matches!(
            v.check(&PUT, Some(&forged), now, true).unwrap_err(),
            AuthError::UnknownKey(_)
        ));
        assert_eq!(
            v.check(&PUT, None, now, true).unwrap_err(),
            AuthError::Missing
        );
        // The second key of the file verifies too (rotation).
        let k1 = keys().find("k1").unwrap().clone();
        v.check(
            &PUT,
            Some(&sign_with(&k1, &PUT, b"abcd", now, 14)),
            now,
            true,
        )
        .unwrap();
        // A GET must sign the empty body.
        let g = sign_with(keys().signing_key(), &get, b"x", now, 15);
        assert_eq!(
            v.check(&get, Some(&g), now, false).unwrap_err(),
            AuthError::BodyDigest
        );
        // Failed checks did not occupy the cache; the good ones did.
        assert_eq!(v.replay_cache_len(), 2);
    }

    #[test]
    fn header_and_mac_follow_the_documented_canonical_string() {
        // Computed here from the module documentation, independently of the
        // streaming code that signs real requests.
        let body_hex = hex::encode(Sha256::digest(b"abcd"));
        let canonical = format!(
            "heartbeat-auth-v1\nPUT\n/\nbytes 0-3/*\n{body_hex}\n1700000000000\n{:032x}\nk2",
            0xabcdef_u128
        );
        let secret = decode_hex("00112233445566778899aabbccddeeff").unwrap();
        let mut mac = HmacSha256::new_from_slice(&secret).unwrap();
        mac.update(canonical.as_bytes());
        let mac_hex = hex::encode(mac.finalize().into_bytes());
        let signed = sign_with(
            keys().signing_key(),
            &PUT,
            b"abcd",
            1_700_000_000_000,
            0xabcdef,
        );
        assert_eq!(
            signed,
            format!(
                "v1 key=k2 ts=1700000000000 nonce=00000000000000000000000000abcdef sha256={body_hex} mac={mac_hex}"
            )
        );
        assert_eq!(
            canonical_string(
                &PUT,
                &body_sha256(b"abcd"),
                1_700_000_000_000,
                0xabcdef,
                "k2"
            ),
            canonical
        );
        let parsed = AuthHeader::parse(&signed).unwrap();
        assert_eq!(parsed.nonce, 0xabcdef);
        assert_eq!(hex::encode(parsed.mac), mac_hex);
        assert_eq!(empty_body_sha256(), <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in [
            "",
            "v2 key=a ts=1 nonce=00000000000000000000000000000001 sha256=00 mac=00",
            "v1 key=a",
            "v1 key=a ts=x nonce=00000000000000000000000000000001",
            "v1 key=a key=b",
            "v1 foo=bar",
            // A sign is not a hex digit, though `from_str_radix` takes one.
            "v1 key=a ts=1 nonce=+0000000000000000000000000000001 sha256=00 mac=00",
        ] {
            assert!(
                matches!(AuthHeader::parse(h), Err(AuthError::Malformed(_))),
                "{h}"
            );
        }
    }

    #[test]
    fn replay_cache_is_bounded_and_refuses_when_full() {
        let mut c = ReplayCache::new(3);
        c.insert(1, 100, 0).unwrap();
        c.insert(2, 200, 0).unwrap();
        c.insert(3, 300, 0).unwrap();
        assert_eq!(c.insert(4, 400, 50), Err(AuthError::ReplayCacheFull(3)));
        assert_eq!(c.insert(2, 400, 50), Err(AuthError::Replayed));
        // Nonce 1 expires at 100: at 101 it is forgotten, making room.
        c.insert(4, 400, 101).unwrap();
        assert_eq!(c.len(), 3);
        // Re-using nonce 1 now is safe: its timestamp is outside the window.
        assert_eq!(c.insert(5, 500, 150), Err(AuthError::ReplayCacheFull(3)));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(encode_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode_hex("00abFF").unwrap(), vec![0, 0xab, 0xff]);
        assert!(decode_hex("0").is_none());
        assert!(decode_hex("zz").is_none());
    }
}
