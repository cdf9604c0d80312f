//! Parser for `drbdsetup events2` lines.
//!
//! One line in, one [`Line`] out. The parser knows nothing about resources or
//! history: merging plain `change` lines into state is the model's job
//! (`model.rs`).
//!
//! Accepted shapes (all seen in `fixtures/drbd/`):
//! - plain: `change resource name:r0 role:Primary` (only the changed keys);
//! - `--full`: every line is a complete snapshot of its object;
//! - `--diff`: `role:Secondary->Primary`; the new value is kept;
//! - `--timestamps`: an ISO-8601 prefix before the event word;
//! - `exists -`: end of the initial state dump.
//!
//! Unknown event words (`call`, `response`, `rename`, anything newer) and unknown
//! objects are classified as [`Line::Ignored`], never an error: a newer
//! drbd-utils must not take the election down. DRBD 8.4 with drbd-utils 9.22
//! emits far fewer keys (no `may_promote`, `quorum`, `client`...), so every
//! typed accessor returns an `Option`.

use std::collections::BTreeMap;
use std::fmt;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Part of the initial state dump.
    Exists,
    Create,
    Change,
    Destroy,
}

/// Which DRBD object a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Resource,
    Device,
    Connection,
    PeerDevice,
    Path,
    Helper,
}

/// Why a line carries nothing for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Empty or whitespace-only line.
    Blank,
    /// `call`, `response`, `rename` or an event word this parser does not know.
    EventWord(String),
    /// A known event word about an object this parser does not know.
    Object(String),
}

/// One parsed line of `drbdsetup events2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Event(Event),
    /// `exists -`: the initial state dump is complete.
    EndOfInitialState,
    Ignored(Ignored),
}

/// One event: kind, object and its `key:value` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `--timestamps` prefix, verbatim, when present.
    pub timestamp: Option<String>,
    pub kind: EventKind,
    pub object: ObjectKind,
    /// Every `key:value` token, unknown keys included. In `--diff` mode the
    /// value is the new one. A token without ':' is kept with an empty value.
    pub fields: BTreeMap<String, String>,
}

/// Resource role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Secondary,
    Unknown,
}

/// Local or peer disk state (`drbd_strings.c` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskState {
    Diskless,
    Attaching,
    Detaching,
    Failed,
    Negotiating,
    Inconsistent,
    Outdated,
    DUnknown,
    Consistent,
    UpToDate,
}

/// Connection state of one peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    StandAlone,
    Disconnecting,
    Unconnected,
    Timeout,
    BrokenPipe,
    NetworkFailure,
    ProtocolError,
    TearDown,
    Connecting,
    Connected,
    /// A state word this parser does not know (newer DRBD).
    Other,
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s {
            "Primary" => Role::Primary,
            "Secondary" => Role::Secondary,
            _ => Role::Unknown,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
            Role::Unknown => "Unknown",
        })
    }
}

impl DiskState {
    /// Unknown words map to `DUnknown`: the promoter treats it like Diskless.
    pub fn parse(s: &str) -> DiskState {
        match s {
            "Diskless" => DiskState::Diskless,
            "Attaching" => DiskState::Attaching,
            "Detaching" => DiskState::Detaching,
            "Failed" => DiskState::Failed,
            "Negotiating" => DiskState::Negotiating,
            "Inconsistent" => DiskState::Inconsistent,
            "Outdated" => DiskState::Outdated,
            "Consistent" => DiskState::Consistent,
            "UpToDate" => DiskState::UpToDate,
            _ => DiskState::DUnknown,
        }
    }
}

impl fmt::Display for DiskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl ConnectionState {
    pub fn parse(s: &str) -> ConnectionState {
        match s {
            "StandAlone" => ConnectionState::StandAlone,
            "Disconnecting" => ConnectionState::Disconnecting,
            "Unconnected" => ConnectionState::Unconnected,
            "Timeout" => ConnectionState::Timeout,
            "BrokenPipe" => ConnectionState::BrokenPipe,
            "NetworkFailure" => ConnectionState::NetworkFailure,
            "ProtocolError" => ConnectionState::ProtocolError,
            "TearDown" => ConnectionState::TearDown,
            "Connecting" => ConnectionState::Connecting,
            "Connected" => ConnectionState::Connected,
            _ => ConnectionState::Other,
        }
    }
}

/// DRBD booleans: `no`/`false` are false, anything else is true (so
/// `suspended:user` or `suspended:quorum` count as suspended).
pub fn parse_bool(s: &str) -> bool {
    !matches!(s, "no" | "false")
}

/// Parse one line. Never fails: what is not understood is [`Line::Ignored`].
pub fn parse_line(line: &str) -> Line {
    let mut words = line.split_whitespace().peekable();
    let mut timestamp = None;
    // A `--timestamps` prefix starts with a digit; event words never do.
    if let Some(first) = words.peek() {
        if first.starts_with(|c: char| c.is_ascii_digit()) {
            timestamp = words.next().map(str::to_owned);
        }
    }
    let Some(kind_word) = words.next() else {
        return Line::Ignored(Ignored::Blank);
    };
    let kind = match kind_word {
        "exists" => EventKind::Exists,
        "create" => EventKind::Create,
        "change" => EventKind::Change,
        "destroy" => EventKind::Destroy,
        other => return Line::Ignored(Ignored::EventWord(other.to_owned())),
    };
    let object_word = words.next().unwrap_or("");
    let object = match object_word {
        "-" if kind == EventKind::Exists => return Line::EndOfInitialState,
        "resource" => ObjectKind::Resource,
        "device" => ObjectKind::Device,
        "connection" => ObjectKind::Connection,
        "peer-device" => ObjectKind::PeerDevice,
        "path" => ObjectKind::Path,
        "helper" => ObjectKind::Helper,
        other => return Line::Ignored(Ignored::Object(other.to_owned())),
    };
    let fields = words
        .map(|token| {
            let (key, value) = token.split_once(':').unwrap_or((token, ""));
            (key.to_owned(), diff_new_value(value).to_owned())
        })
        .collect();
    Line::Event(Event {
        timestamp,
        kind,
        object,
        fields,
    })
}

/// `--diff` prints `old->new`; keep the new value. Plain values never contain
/// `->` (addresses are `ipv4:1.2.3.4:7789`, names are DRBD identifiers).
fn diff_new_value(value: &str) -> &str {
    match value.split_once("->") {
        Some((_, new)) => new,
        None => value,
    }
}

impl Event {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).map(parse_bool)
    }

    fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// Resource name (`name:`), present on every object line.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }

    /// Resource `role:`, or connection `role:` (the peer's role).
    pub fn role(&self) -> Option<Role> {
        self.get("role").map(Role::parse)
    }

    pub fn may_promote(&self) -> Option<bool> {
        self.get_bool("may_promote")
    }

    pub fn promotion_score(&self) -> Option<u32> {
        self.get_u32("promotion_score")
    }

    pub fn force_io_failures(&self) -> Option<bool> {
        self.get_bool("force-io-failures")
    }

    pub fn suspended(&self) -> Option<bool> {
        self.get_bool("suspended")
    }

    pub fn volume(&self) -> Option<u32> {
        self.get_u32("volume")
    }

    pub fn minor(&self) -> Option<u32> {
        self.get_u32("minor")
    }

    /// Device `disk:`.
    pub fn disk(&self) -> Option<DiskState> {
        self.get("disk").map(DiskState::parse)
    }

    pub fn quorum(&self) -> Option<bool> {
        self.get_bool("quorum")
    }

    /// Device `client:` (intentionally diskless).
    pub fn client(&self) -> Option<bool> {
        self.get_bool("client")
    }

    pub fn open(&self) -> Option<bool> {
        self.get_bool("open")
    }

    pub fn peer_node_id(&self) -> Option<u32> {
        self.get_u32("peer-node-id")
    }

    pub fn conn_name(&self) -> Option<&str> {
        self.get("conn-name")
    }

    /// Connection `connection:`.
    pub fn connection(&self) -> Option<ConnectionState> {
        self.get("connection").map(ConnectionState::parse)
    }

    /// Peer-device `peer-disk:`.
    pub fn peer_disk(&self) -> Option<DiskState> {
        self.get("peer-disk").map(DiskState::parse)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../../shared/fixtures/drbd/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn event(line: &str) -> Event {
        match parse_line(line) {
            Line::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn resource_line_typed_accessors() {
        let e = event("create resource name:some-resource role:Secondary suspended:no force-io-failures:no may_promote:no promotion_score:0");
        assert_eq!(e.kind, EventKind::Create);
        assert_eq!(e.object, ObjectKind::Resource);
        assert_eq!(e.name(), Some("some-resource"));
        assert_eq!(e.role(), Some(Role::Secondary));
        assert_eq!(e.suspended(), Some(false));
        assert_eq!(e.force_io_failures(), Some(false));
        assert_eq!(e.may_promote(), Some(false));
        assert_eq!(e.promotion_score(), Some(0));
        assert_eq!(e.timestamp, None);
    }

    #[test]
    fn device_line_typed_accessors() {
        let e = event("change device name:some-resource volume:0 minor:1000 backing_dev:/dev/sda disk:UpToDate client:no open:yes quorum:no");
        assert_eq!(e.object, ObjectKind::Device);
        assert_eq!(e.volume(), Some(0));
        assert_eq!(e.minor(), Some(1000));
        assert_eq!(e.disk(), Some(DiskState::UpToDate));
        assert_eq!(e.client(), Some(false));
        assert_eq!(e.open(), Some(true));
        assert_eq!(e.quorum(), Some(false));
        assert_eq!(e.get("backing_dev"), Some("/dev/sda"));
    }

    #[test]
    fn connection_line_peer_role() {
        let e = event("change connection name:r0 peer-node-id:1 conn-name:some-peer connection:Connected role:Primary");
        assert_eq!(e.object, ObjectKind::Connection);
        assert_eq!(e.peer_node_id(), Some(1));
        assert_eq!(e.conn_name(), Some("some-peer"));
        assert_eq!(e.connection(), Some(ConnectionState::Connected));
        assert_eq!(e.role(), Some(Role::Primary));
    }

    #[test]
    fn values_split_on_first_colon() {
        let e = event("create path name:r peer-node-id:1 conn-name:p local:ipv4:1.2.3.4:7789 peer:ipv6:[fe80::1]:7790 established:no");
        assert_eq!(e.object, ObjectKind::Path);
        assert_eq!(e.get("local"), Some("ipv4:1.2.3.4:7789"));
        assert_eq!(e.get("peer"), Some("ipv6:[fe80::1]:7790"));
    }

    #[test]
    fn unknown_key_is_kept_and_harmless() {
        let e = event("exists resource name:r0 role:Primary xxx:bla frobnicate");
        assert_eq!(e.get("xxx"), Some("bla"));
        assert_eq!(e.get("frobnicate"), Some(""));
        assert_eq!(e.role(), Some(Role::Primary));
    }

    #[test]
    fn odd_event_words_are_ignorable() {
        for (line, word) in [
            (
                "call helper name:r0 volume:0 helper:before-resync-target",
                "call",
            ),
            ("response helper name:r0 helper:x status:1", "response"),
            ("rename resource name:a new_name:b", "rename"),
            ("teleport resource name:r0", "teleport"),
        ] {
            assert_eq!(
                parse_line(line),
                Line::Ignored(Ignored::EventWord(word.into())),
                "{line}"
            );
        }
        assert_eq!(
            parse_line("change gizmo name:r0"),
            Line::Ignored(Ignored::Object("gizmo".into()))
        );
        assert_eq!(parse_line("   "), Line::Ignored(Ignored::Blank));
        assert_eq!(parse_line(""), Line::Ignored(Ignored::Blank));
    }

    #[test]
    fn end_of_initial_state() {
        assert_eq!(parse_line("exists -"), Line::EndOfInitialState);
        assert_eq!(parse_line("exists -\n"), Line::EndOfInitialState);
    }

    #[test]
    fn diff_takes_new_value() {
        let e = event(&fixture("events2-v9-diff.txt"));
        assert_eq!(e.role(), Some(Role::Primary));
        assert_eq!(e.may_promote(), Some(false));
        assert_eq!(e.promotion_score(), Some(10102));
    }

    #[test]
    fn timestamp_prefix() {
        let e = event(&fixture("events2-v9-timestamps.txt"));
        assert_eq!(
            e.timestamp.as_deref(),
            Some("2017-03-27T08:28:17.072611-07:00")
        );
        assert_eq!(e.kind, EventKind::Exists);
        assert_eq!(e.name(), Some("test0"));
        assert_eq!(e.role(), Some(Role::Primary));
    }

    #[test]
    fn booleans_follow_drbd_rules() {
        assert!(!parse_bool("no"));
        assert!(!parse_bool("false"));
        assert!(parse_bool("yes"));
        assert!(parse_bool("user"));
        assert!(parse_bool("quorum,no-data"));
    }

    #[test]
    fn unknown_states_map_to_safe_defaults() {
        let e = event("change device name:r volume:0 disk:Frobbed");
        assert_eq!(e.disk(), Some(DiskState::DUnknown));
        let e = event("change connection name:r role:Leader connection:Dancing");
        assert_eq!(e.role(), Some(Role::Unknown));
        assert_eq!(e.connection(), Some(ConnectionState::Other));
    }

    #[test]
    fn every_fixture_line_parses_or_is_ignorable() {
        let files = [
            "events2-v84-failover-stream.txt",
            "events2-v84-primary-now.txt",
            "events2-v84-secondary-now.txt",
            "events2-v9-3node-now.txt",
            "events2-v9-diff.txt",
            "events2-v9-full.txt",
            "events2-v9-plain.txt",
            "events2-v9-timestamps.txt",
        ];
        for file in files {
            for line in fixture(file).lines() {
                match parse_line(line) {
                    Line::Event(e) => {
                        assert!(e.name().is_some(), "{file}: no name in {line}");
                    }
                    Line::EndOfInitialState => assert_eq!(line.trim(), "exists -"),
                    Line::Ignored(Ignored::EventWord(w)) => {
                        assert!(w == "call" || w == "response", "{file}: {line}")
                    }
                    Line::Ignored(other) => panic!("{file}: unexpected {other:?} for {line}"),
                }
            }
        }
    }

    #[test]
    fn v84_lines_lack_v9_keys() {
        let text = fixture("events2-v84-primary-now.txt");
        let first = event(text.lines().next().unwrap());
        assert_eq!(first.role(), Some(Role::Primary));
        assert_eq!(first.may_promote(), None);
        assert_eq!(first.force_io_failures(), None);
        let device = event(text.lines().nth(2).unwrap());
        assert_eq!(device.disk(), Some(DiskState::UpToDate));
        assert_eq!(device.quorum(), None);
        assert_eq!(device.client(), None);
    }
}
