//! State of one DRBD resource, built from `events2` lines.
//!
//! The model stores the raw fields of every object (resource, devices,
//! connections, peer devices) and derives a small [`ResourceView`]: what the
//! promoter needs. Each applied line yields the view before and after when the
//! view changed, so reacting code sees edges (`may_promote` rising, quorum lost)
//! rather than raw lines.
//!
//! `exists` and `create` lines are complete snapshots of their object. `change`
//! lines are complete with `events2 --full` ([`ChangeLines::Full`]) and carry
//! only the changed keys otherwise ([`ChangeLines::Plain`]), where they are
//! merged into what is known. After the `events2` child is respawned, call
//! [`ResourceModel::reset`]: the new child replays the whole state.

use std::collections::BTreeMap;

use crate::events2::{
    parse_bool, ConnectionState, DiskState, Event, EventKind, Line, ObjectKind, Role,
};

type Fields = BTreeMap<String, String>;

/// How `change` lines must be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeLines {
    /// `events2 --full`: every change line is a whole snapshot of its object.
    Full,
    /// Plain `events2`: change lines carry only the changed keys.
    Plain,
}

/// Model options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    pub change_lines: ChangeLines,
    /// DRBD 8.4 kernels (drbd-utils 9.22) report no `may_promote`. When set,
    /// a missing `may_promote` is derived from what is visible: not Primary,
    /// no peer Primary, no force-io-failures, no quorum loss, and UpToDate
    /// data reachable (local disk, or a Connected peer's disk) on every
    /// volume. Without DRBD 9 quorum this cannot stop a partitioned 8.4 pair
    /// from both promoting, so it is off by default; DRBD 9 always reports
    /// `may_promote` and then this flag has no effect.
    pub derive_may_promote: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            change_lines: ChangeLines::Full,
            derive_may_promote: false,
        }
    }
}

/// What the promoter needs to know about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceView {
    /// `exists -` seen since the last reset: the view is complete.
    pub initial_state_complete: bool,
    /// A resource line was seen and not destroyed.
    pub exists: bool,
    pub role: Role,
    /// Reported by drbdsetup, or derived (see [`ModelOptions::derive_may_promote`]).
    pub may_promote: bool,
    /// `false` when `may_promote` was derived rather than reported.
    pub may_promote_reported: bool,
    pub promotion_score: Option<u32>,
    pub force_io_failures: bool,
    pub suspended: bool,
    /// Every device has quorum. A device without a `quorum` key (DRBD 8.4)
    /// counts as having quorum.
    pub quorum: bool,
    /// The worst local disk state across volumes; `None` with no device known.
    pub local_disk: Option<DiskState>,
    /// Some connection reports the peer role Primary.
    pub peer_primary: bool,
    /// Minor of the lowest volume.
    pub minor: Option<u32>,
    /// Some local device is open.
    pub open: bool,
}

impl Default for ResourceView {
    fn default() -> Self {
        ResourceView {
            initial_state_complete: false,
            exists: false,
            role: Role::Unknown,
            may_promote: false,
            may_promote_reported: false,
            promotion_score: None,
            force_io_failures: false,
            suspended: false,
            quorum: true,
            local_disk: None,
            peer_primary: false,
            minor: None,
            open: false,
        }
    }
}

/// The view before and after one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewChange {
    pub old: ResourceView,
    pub new: ResourceView,
}

impl ViewChange {
    pub fn may_promote_rose(&self) -> bool {
        !self.old.may_promote && self.new.may_promote
    }
    pub fn quorum_lost(&self) -> bool {
        self.old.quorum && !self.new.quorum
    }
    pub fn quorum_regained(&self) -> bool {
        !self.old.quorum && self.new.quorum
    }
    pub fn role_changed(&self) -> bool {
        self.old.role != self.new.role
    }
    pub fn force_io_failures_set(&self) -> bool {
        !self.old.force_io_failures && self.new.force_io_failures
    }
    pub fn peer_primary_changed(&self) -> bool {
        self.old.peer_primary != self.new.peer_primary
    }
    pub fn local_disk_changed(&self) -> bool {
        self.old.local_disk != self.new.local_disk
    }
}

/// Rank of a disk state for promotion: lower is better. Also used to pick the
/// worst local volume.
pub fn disk_rank(disk: Option<DiskState>) -> u8 {
    match disk {
        Some(DiskState::UpToDate) => 0,
        Some(DiskState::Consistent) => 1,
        Some(DiskState::Outdated) => 2,
        Some(DiskState::Inconsistent) => 3,
        _ => 4,
    }
}

/// Raw state of one resource.
#[derive(Debug, Clone)]
pub struct ResourceModel {
    name: String,
    options: ModelOptions,
    initial_state_complete: bool,
    resource: Option<Fields>,
    devices: BTreeMap<u32, Fields>,
    /// Keyed by peer-node-id (or conn-name when 8.4-era tools omit it).
    connections: BTreeMap<String, Fields>,
    peer_devices: BTreeMap<(String, u32), Fields>,
}

impl ResourceModel {
    pub fn new(name: impl Into<String>, options: ModelOptions) -> Self {
        ResourceModel {
            name: name.into(),
            options,
            initial_state_complete: false,
            resource: None,
            devices: BTreeMap::new(),
            connections: BTreeMap::new(),
            peer_devices: BTreeMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forget everything: the `events2` child was respawned and will replay.
    pub fn reset(&mut self) {
        *self = ResourceModel::new(std::mem::take(&mut self.name), self.options);
    }

    /// Apply one line; return the view change when the view changed. Lines
    /// about other resources and ignorable lines change nothing.
    pub fn apply(&mut self, line: &Line) -> Option<ViewChange> {
        let old = self.view();
        match line {
            Line::EndOfInitialState => self.initial_state_complete = true,
            Line::Event(event) if event.name() == Some(self.name.as_str()) => {
                self.apply_event(event)
            }
            Line::Event(_) | Line::Ignored(_) => return None,
        }
        let new = self.view();
        (old != new).then_some(ViewChange { old, new })
    }

    fn apply_event(&mut self, event: &Event) {
        let merge =
            event.kind == EventKind::Change && self.options.change_lines == ChangeLines::Plain;
        let destroy = event.kind == EventKind::Destroy;
        match event.object {
            ObjectKind::Resource => {
                if destroy {
                    let name = std::mem::take(&mut self.name);
                    let complete = self.initial_state_complete;
                    *self = ResourceModel::new(name, self.options);
                    self.initial_state_complete = complete;
                } else {
                    upsert_one(&mut self.resource, event, merge);
                }
            }
            ObjectKind::Device => {
                let volume = event.volume().unwrap_or(0);
                upsert(&mut self.devices, volume, event, merge, destroy);
            }
            ObjectKind::Connection => {
                let key = connection_key(event);
                if destroy {
                    self.peer_devices.retain(|(conn, _), _| *conn != key);
                }
                upsert(&mut self.connections, key, event, merge, destroy);
            }
            ObjectKind::PeerDevice => {
                let key = (connection_key(event), event.volume().unwrap_or(0));
                upsert(&mut self.peer_devices, key, event, merge, destroy);
            }
            // Paths and helpers do not affect the election.
            ObjectKind::Path | ObjectKind::Helper => {}
        }
    }

    /// The current view.
    pub fn view(&self) -> ResourceView {
        let mut view = ResourceView {
            initial_state_complete: self.initial_state_complete,
            ..ResourceView::default()
        };
        let Some(resource) = &self.resource else {
            return view;
        };
        let get = |key: &str| resource.get(key).map(String::as_str);
        view.exists = true;
        view.role = get("role").map(Role::parse).unwrap_or(Role::Unknown);
        view.promotion_score = get("promotion_score").and_then(|v| v.parse().ok());
        view.force_io_failures = get("force-io-failures").is_some_and(parse_bool);
        view.suspended = get("suspended").is_some_and(parse_bool);
        view.quorum = self
            .devices
            .values()
            .all(|d| d.get("quorum").map(|q| parse_bool(q)) != Some(false));
        view.local_disk = self
            .devices
            .values()
            .map(|d| d.get("disk").map(|s| DiskState::parse(s)))
            .max_by_key(|disk| disk_rank(*disk))
            .flatten();
        view.peer_primary = self
            .connections
            .values()
            .any(|c| c.get("role").map(|r| Role::parse(r)) == Some(Role::Primary));
        view.minor = self
            .devices
            .values()
            .next()
            .and_then(|d| d.get("minor"))
            .and_then(|m| m.parse().ok());
        view.open = self
            .devices
            .values()
            .any(|d| d.get("open").is_some_and(|o| parse_bool(o)));
        match get("may_promote") {
            Some(v) => {
                view.may_promote = parse_bool(v);
                view.may_promote_reported = true;
            }
            None if self.options.derive_may_promote => {
                view.may_promote = self.derive_may_promote(&view)
            }
            None => {}
        }
        view
    }

    fn derive_may_promote(&self, view: &ResourceView) -> bool {
        let data_reachable = |volume: u32, device: &Fields| {
            if device.get("disk").map(|d| DiskState::parse(d)) == Some(DiskState::UpToDate) {
                return true;
            }
            self.peer_devices.iter().any(|((conn, vol), pd)| {
                *vol == volume
                    && pd.get("peer-disk").map(|d| DiskState::parse(d)) == Some(DiskState::UpToDate)
                    && self
                        .connections
                        .get(conn)
                        .and_then(|c| c.get("connection"))
                        .map(|c| ConnectionState::parse(c))
                        == Some(ConnectionState::Connected)
            })
        };
        view.role != Role::Primary
            && !view.peer_primary
            && !view.force_io_failures
            && view.quorum
            && !self.devices.is_empty()
            && self
                .devices
                .iter()
                .all(|(vol, dev)| data_reachable(*vol, dev))
    }
}

fn connection_key(event: &Event) -> String {
    match (event.peer_node_id(), event.conn_name()) {
        (Some(id), _) => id.to_string(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => String::new(),
    }
}

fn upsert_one(slot: &mut Option<Fields>, event: &Event, merge: bool) {
    match slot {
        Some(fields) if merge => fields.extend(event.fields.clone()),
        _ => *slot = Some(event.fields.clone()),
    }
}

fn upsert<K: Ord>(
    map: &mut BTreeMap<K, Fields>,
    key: K,
    event: &Event,
    merge: bool,
    destroy: bool,
) {
    if destroy {
        map.remove(&key);
        return;
    }
    match map.get_mut(&key) {
        Some(fields) if merge => fields.extend(event.fields.clone()),
        _ => {
            map.insert(key, event.fields.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events2::parse_line;
    use crate::events2::tests::fixture;

    fn feed(model: &mut ResourceModel, text: &str) -> Vec<ViewChange> {
        text.lines()
            .filter_map(|l| model.apply(&parse_line(l)))
            .collect()
    }

    fn plain() -> ModelOptions {
        ModelOptions {
            change_lines: ChangeLines::Plain,
            ..ModelOptions::default()
        }
    }

    #[test]
    fn three_node_dump_builds_expected_view() {
        let mut model = ResourceModel::new("drbd1", ModelOptions::default());
        feed(&mut model, &fixture("events2-v9-3node-now.txt"));
        let view = model.view();
        assert!(view.initial_state_complete);
        // The dump has no resource line: the device is known, the resource is not.
        assert!(!view.exists);
        assert_eq!(model.devices.len(), 1);
        assert_eq!(model.connections.len(), 1);
        assert_eq!(model.peer_devices.len(), 1);
        assert_eq!(
            model.connections["1"].get("role").map(String::as_str),
            Some("Secondary")
        );
        // Add the resource line the real dump would have started with.
        model.apply(&parse_line("exists resource name:drbd1 role:Primary suspended:no force-io-failures:no may_promote:no promotion_score:10102"));
        let view = model.view();
        assert_eq!(view.role, Role::Primary);
        assert!(!view.peer_primary);
        assert!(view.quorum);
        assert_eq!(view.local_disk, Some(DiskState::UpToDate));
        assert_eq!(view.minor, Some(1));
    }

    #[test]
    fn plain_stream_edges() {
        let mut model = ResourceModel::new("some-resource", plain());
        let changes = feed(&mut model, &fixture("events2-v9-plain.txt"));
        // may_promote rose once (line 7) and fell once.
        assert_eq!(changes.iter().filter(|c| c.may_promote_rose()).count(), 1);
        // Peer became Primary, then local role Primary, then quorum lost.
        assert!(changes
            .iter()
            .any(|c| c.peer_primary_changed() && c.new.peer_primary));
        assert!(changes
            .iter()
            .any(|c| c.role_changed() && c.new.role == Role::Primary));
        assert!(changes.iter().any(|c| c.quorum_lost()));
        assert!(changes
            .iter()
            .any(|c| c.old.local_disk == Some(DiskState::Diskless)
                && c.new.local_disk == Some(DiskState::UpToDate)));
        // The stream ends with destroy + a fresh exists line.
        let view = model.view();
        assert!(view.exists);
        assert_eq!(view.role, Role::Secondary);
        assert!(model.devices.is_empty());
    }

    #[test]
    fn plain_change_merges_keys() {
        let mut model = ResourceModel::new("r", plain());
        model.apply(&parse_line(
            "exists resource name:r role:Secondary force-io-failures:no may_promote:no",
        ));
        model.apply(&parse_line("change resource name:r may_promote:yes"));
        let view = model.view();
        assert_eq!(view.role, Role::Secondary);
        assert!(view.may_promote);
    }

    #[test]
    fn full_change_replaces_snapshot() {
        let mut model = ResourceModel::new("r", ModelOptions::default());
        model.apply(&parse_line(
            "exists resource name:r role:Secondary force-io-failures:yes may_promote:no",
        ));
        model.apply(&parse_line(
            "change resource name:r role:Secondary may_promote:no",
        ));
        assert!(!model.view().force_io_failures);
    }

    #[test]
    fn full_stream_from_fixture() {
        let mut model = ResourceModel::new("some-resource", ModelOptions::default());
        feed(&mut model, &fixture("events2-v9-full.txt"));
        let view = model.view();
        assert!(view.may_promote && view.may_promote_reported);
        assert_eq!(view.promotion_score, Some(10101));
        assert_eq!(view.local_disk, Some(DiskState::UpToDate));
        assert!(!view.peer_primary);
        assert!(!view.initial_state_complete);
    }

    #[test]
    fn v84_failover_stream_shows_promotion() {
        let mut model = ResourceModel::new("r0", ModelOptions::default());
        feed(&mut model, &fixture("events2-v84-secondary-now.txt"));
        let before = model.view();
        assert_eq!(before.role, Role::Secondary);
        assert!(before.peer_primary);
        assert!(
            before.quorum,
            "8.4 reports no quorum key: treated as quorate"
        );
        assert!(!before.may_promote_reported);
        let changes = feed(&mut model, &fixture("events2-v84-failover-stream.txt"));
        assert_eq!(changes.len(), 2);
        assert!(changes[0].peer_primary_changed() && !changes[0].new.peer_primary);
        assert!(changes[1].role_changed() && changes[1].new.role == Role::Primary);
    }

    #[test]
    fn v84_primary_dump() {
        let mut model = ResourceModel::new("r0", ModelOptions::default());
        feed(&mut model, &fixture("events2-v84-primary-now.txt"));
        let view = model.view();
        assert_eq!(view.role, Role::Primary);
        assert!(!view.peer_primary);
        assert_eq!(view.minor, Some(0));
    }

    #[test]
    fn derived_may_promote_on_v84() {
        let options = ModelOptions {
            derive_may_promote: true,
            ..ModelOptions::default()
        };
        let mut model = ResourceModel::new("r0", options);
        feed(&mut model, &fixture("events2-v84-secondary-now.txt"));
        assert!(!model.view().may_promote, "peer is Primary");
        let changes = feed(&mut model, &fixture("events2-v84-failover-stream.txt"));
        assert!(
            changes[0].may_promote_rose(),
            "peer stepped down, local UpToDate"
        );
        assert!(!changes[1].new.may_promote, "now Primary ourselves");
        // Without the option a missing may_promote stays false.
        let mut strict = ResourceModel::new("r0", ModelOptions::default());
        feed(&mut strict, &fixture("events2-v84-secondary-now.txt"));
        let changes = feed(&mut strict, &fixture("events2-v84-failover-stream.txt"));
        assert!(!changes.iter().any(|c| c.may_promote_rose()));
    }

    #[test]
    fn derived_may_promote_needs_reachable_data() {
        let options = ModelOptions {
            derive_may_promote: true,
            ..ModelOptions::default()
        };
        let mut model = ResourceModel::new("r0", options);
        for line in [
            "exists resource name:r0 role:Secondary suspended:no",
            "exists connection name:r0 peer-node-id:0 conn-name:peer connection:Connecting role:Unknown",
            "exists device name:r0 volume:0 minor:0 disk:Diskless",
            "exists peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 replication:Off peer-disk:UpToDate",
            "exists -",
        ] {
            model.apply(&parse_line(line));
        }
        assert!(
            !model.view().may_promote,
            "peer disk stale while not connected"
        );
        model.apply(&parse_line("change connection name:r0 peer-node-id:0 conn-name:peer connection:Connected role:Secondary"));
        assert!(model.view().may_promote);
    }

    #[test]
    fn other_resources_and_ignored_lines_change_nothing() {
        let mut model = ResourceModel::new("r0", ModelOptions::default());
        assert!(model
            .apply(&parse_line("exists resource name:r1 role:Primary"))
            .is_none());
        assert!(model
            .apply(&parse_line("call helper name:r0 helper:x"))
            .is_none());
        assert!(!model.view().exists);
    }

    #[test]
    fn destroy_connection_drops_peer_devices_and_peer_role() {
        let mut model = ResourceModel::new("r", ModelOptions::default());
        model.apply(&parse_line("exists resource name:r role:Secondary"));
        model.apply(&parse_line(
            "exists connection name:r peer-node-id:1 conn-name:p connection:Connected role:Primary",
        ));
        model.apply(&parse_line(
            "exists peer-device name:r peer-node-id:1 conn-name:p volume:0 peer-disk:UpToDate",
        ));
        assert!(model.view().peer_primary);
        let change = model
            .apply(&parse_line(
                "destroy connection name:r peer-node-id:1 conn-name:p",
            ))
            .unwrap();
        assert!(change.peer_primary_changed());
        assert!(model.peer_devices.is_empty());
    }

    #[test]
    fn reset_forgets_state() {
        let mut model = ResourceModel::new("r0", ModelOptions::default());
        feed(&mut model, &fixture("events2-v84-primary-now.txt"));
        model.reset();
        assert_eq!(model.view(), ResourceView::default());
        assert_eq!(model.name(), "r0");
    }

    #[test]
    fn worst_volume_decides_local_disk() {
        let mut model = ResourceModel::new("r", ModelOptions::default());
        model.apply(&parse_line("exists resource name:r role:Secondary"));
        model.apply(&parse_line(
            "exists device name:r volume:0 minor:5 disk:UpToDate quorum:yes",
        ));
        model.apply(&parse_line(
            "exists device name:r volume:1 minor:6 disk:Outdated quorum:no",
        ));
        let view = model.view();
        assert_eq!(view.local_disk, Some(DiskState::Outdated));
        assert!(!view.quorum);
        assert_eq!(view.minor, Some(5));
    }
}
