//! `drbdsetup status <res> --json`: one-shot state at startup.
//!
//! Used to answer two questions before `events2` has delivered anything: is
//! this host already Primary (adopt it), and is some peer Primary (stay
//! standby). The JSON has no `may_promote`; that comes from `events2` only.
//!
//! Tolerant: unknown fields are ignored, missing ones default (older
//! drbd-utils omit `suspended-*`, `tls`, `paths`, `open`, `quorum`), and the
//! peer-device list is spelled `peer_devices` (underscore) unlike every other
//! key.

use serde::Deserialize;

use crate::events2::{ConnectionState, DiskState, Role};

/// One resource of the top-level array.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ResourceStatus {
    pub name: String,
    #[serde(default)]
    pub node_id: Option<u32>,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub suspended: bool,
    #[serde(default)]
    pub force_io_failures: bool,
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
    #[serde(default)]
    pub connections: Vec<ConnectionStatus>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct DeviceStatus {
    pub volume: u32,
    #[serde(default)]
    pub minor: Option<u32>,
    #[serde(default)]
    pub disk_state: String,
    #[serde(default)]
    pub client: bool,
    #[serde(default)]
    pub open: bool,
    /// Absent on old tools: treated as quorate, like `events2` does.
    #[serde(default = "yes")]
    pub quorum: bool,
    /// KiB.
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectionStatus {
    #[serde(default)]
    pub peer_node_id: Option<u32>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub connection_state: String,
    #[serde(default)]
    pub peer_role: String,
    #[serde(default, alias = "peer_devices")]
    pub peer_devices: Vec<PeerDeviceStatus>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct PeerDeviceStatus {
    pub volume: u32,
    #[serde(default)]
    pub replication_state: String,
    #[serde(default)]
    pub peer_disk_state: String,
    #[serde(default)]
    pub peer_client: bool,
    /// A string (`"no"`, `"user"`...), not a bool.
    #[serde(default)]
    pub resync_suspended: Option<String>,
}

fn yes() -> bool {
    true
}

/// Parse the whole `status --json` output (a JSON array).
pub fn parse_status(json: &str) -> Result<Vec<ResourceStatus>, serde_json::Error> {
    serde_json::from_str(json)
}

impl ResourceStatus {
    pub fn role(&self) -> Role {
        Role::parse(&self.role)
    }

    pub fn is_local_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    /// Some peer connection reports the peer as Primary.
    pub fn peer_primary(&self) -> Option<&ConnectionStatus> {
        self.connections
            .iter()
            .find(|c| Role::parse(&c.peer_role) == Role::Primary)
    }

    pub fn quorum(&self) -> bool {
        self.devices.iter().all(|d| d.quorum)
    }
}

impl DeviceStatus {
    pub fn disk(&self) -> DiskState {
        DiskState::parse(&self.disk_state)
    }
}

impl ConnectionStatus {
    pub fn state(&self) -> ConnectionState {
        ConnectionState::parse(&self.connection_state)
    }
    pub fn peer_role(&self) -> Role {
        Role::parse(&self.peer_role)
    }
}

/// What the promoter needs at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupRole {
    /// This host is Primary: adopt it (open and serve at once).
    LocalPrimary,
    /// A peer is Primary: stay standby.
    PeerPrimary,
    /// Nobody visible is Primary: wait for `may_promote`.
    NoPrimary,
    /// The resource is not in the output (not configured here).
    Unknown,
}

/// Classify the status of `resource` for startup.
pub fn startup_role(statuses: &[ResourceStatus], resource: &str) -> StartupRole {
    match statuses.iter().find(|s| s.name == resource) {
        None => StartupRole::Unknown,
        Some(s) if s.is_local_primary() => StartupRole::LocalPrimary,
        Some(s) if s.peer_primary().is_some() => StartupRole::PeerPrimary,
        Some(_) => StartupRole::NoPrimary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events2::tests::fixture;

    #[test]
    fn fixture_with_peer_primary() {
        let statuses = parse_status(&fixture("status-v9.json")).unwrap();
        assert_eq!(statuses.len(), 1);
        let s = &statuses[0];
        assert_eq!(s.name, "1-single-0");
        assert_eq!(s.node_id, Some(2));
        assert_eq!(s.role(), Role::Secondary);
        assert!(!s.is_local_primary());
        assert!(s.quorum());
        assert_eq!(s.devices[0].disk(), DiskState::UpToDate);
        assert_eq!(s.devices[0].minor, Some(2));
        assert_eq!(s.devices[0].size, Some(409600));
        let peer = s.peer_primary().expect("peer primary");
        assert_eq!(peer.peer_node_id, Some(1));
        assert_eq!(peer.state(), ConnectionState::Connected);
        assert_eq!(peer.peer_devices.len(), 1);
        assert_eq!(peer.peer_devices[0].resync_suspended.as_deref(), Some("no"));
        assert_eq!(
            startup_role(&statuses, "1-single-0"),
            StartupRole::PeerPrimary
        );
        assert_eq!(startup_role(&statuses, "other"), StartupRole::Unknown);
    }

    #[test]
    fn local_primary_minimal_old_tools() {
        let json = r#"[{"name":"r0","role":"Primary","devices":[{"volume":0,"disk-state":"UpToDate"}],
            "connections":[{"name":"peer","connection-state":"Connected ","peer-role":"Secondary",
            "tls":false,"paths":[{"this_host":{"address":"10.0.0.1","port":7000,"family":"ipv4"}}]}]}]"#;
        let statuses = parse_status(json).unwrap();
        assert!(statuses[0].quorum());
        assert_eq!(startup_role(&statuses, "r0"), StartupRole::LocalPrimary);
    }

    #[test]
    fn nobody_primary_and_empty_array() {
        let json =
            r#"[{"name":"r0","role":"Secondary","connections":[{"peer-role":"Secondary"}]}]"#;
        assert_eq!(
            startup_role(&parse_status(json).unwrap(), "r0"),
            StartupRole::NoPrimary
        );
        // Unknown resource: drbdsetup prints an empty array (and exits 10).
        assert_eq!(
            startup_role(&parse_status("[\n]\n").unwrap(), "r0"),
            StartupRole::Unknown
        );
        assert!(parse_status("not json").is_err());
    }
}
