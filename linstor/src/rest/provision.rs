//! Provisioning the heartbeat volumes: resource group, volume group, resource
//! definition spawned from the group, replicas placed by LINSTOR.
//!
//! Idempotent: every object is fetched first; a missing one is created, an
//! existing one is compared with what was asked and reported as unchanged or
//! as differing (which property, found and wanted). Nothing is ever modified
//! or created twice; a `FAIL_EXISTS_*` reply (another run won a race) is
//! handled like "it was there when we looked".

use std::fmt;

use super::client::{encode, Client, LinstorError, Replies};
use super::retcode::{FAIL_EXISTS_RSC_DFN, FAIL_EXISTS_RSC_GRP, FAIL_EXISTS_VLM_GRP};
use super::types::{
    AutoPlaceRequest, AutoSelectFilter, Props, Resource, ResourceDefinition, ResourceGroup,
    ResourceGroupSpawn, VolumeGroup,
};

/// Resource group used when none is named.
pub const DEFAULT_RESOURCE_GROUP: &str = "xcp-ha-heartbeat";
/// XCP-ng's statefile volume name and size (`reference/xha-statefile.md` 2.2).
pub const STATEFILE_VOLUME: &str = "xcp-persistent-ha-statefile";
pub const STATEFILE_SIZE_BYTES: u64 = 4 * 1024 * 1024;
/// XCP-ng's redo-log volume name and size.
pub const REDO_LOG_VOLUME: &str = "xcp-persistent-redo-log";
pub const REDO_LOG_SIZE_BYTES: u64 = 256 * 1024 * 1024;
/// Three diskful replicas: an odd count gives DRBD quorum a majority without a
/// tie-breaker, and survives one host.
pub const DEFAULT_PLACE_COUNT: i32 = 3;
/// What XCP-ng's SM sets on the statefile volume: 60 s (unit 1/10 s, max 600).
pub const XCP_NG_AUTO_PROMOTE_TIMEOUT: u32 = 600;

pub const PROP_QUORUM: &str = "DrbdOptions/Resource/quorum";
pub const PROP_ON_NO_QUORUM: &str = "DrbdOptions/Resource/on-no-quorum";
pub const PROP_ON_NO_DATA: &str = "DrbdOptions/Resource/on-no-data-accessible";
pub const PROP_ON_SUSPENDED_PRIMARY_OUTDATED: &str =
    "DrbdOptions/Resource/on-suspended-primary-outdated";
pub const PROP_AUTO_PROMOTE: &str = "DrbdOptions/Resource/auto-promote";
pub const PROP_AUTO_PROMOTE_TIMEOUT: &str = "DrbdOptions/Resource/auto-promote-timeout";
pub const PROP_AUTO_QUORUM: &str = "DrbdOptions/auto-quorum";

/// How the http-disk-servers become DRBD Primary; decides `auto-promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionMode {
    /// `auto-promote no`: http-disk-server's `drbd` arbiter runs
    /// `drbdsetup primary` itself (drbd-reactor's promoter). An open on a
    /// Secondary fails at once with EROFS instead of promoting behind its back.
    Explicit,
    /// `auto-promote yes` with XCP-ng's `auto-promote-timeout`: the first
    /// opener becomes Primary, as the reference Python server expects.
    OpenToPromote { timeout_deciseconds: u32 },
}

/// Everything `provision` is asked to make true for one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatVolumeSpec {
    pub resource_group: String,
    pub volume: String,
    pub size_kib: i64,
    pub place_count: i32,
    pub storage_pool: Option<String>,
    pub promotion: PromotionMode,
}

impl HeartbeatVolumeSpec {
    pub fn new(volume: &str, size_bytes: u64) -> Self {
        Self {
            resource_group: DEFAULT_RESOURCE_GROUP.to_string(),
            volume: volume.to_string(),
            size_kib: size_bytes.div_ceil(1024) as i64,
            place_count: DEFAULT_PLACE_COUNT,
            storage_pool: None,
            promotion: PromotionMode::Explicit,
        }
    }

    /// DRBD options set on the resource group (drbd-reactor's advice: a
    /// dedicated group, so later changes to LINSTOR's default group never
    /// reach the heartbeat volumes).
    pub fn drbd_props(&self) -> Props {
        let mut p = Props::new();
        // Safety rests on DRBD quorum: a partition without a majority can
        // neither promote nor keep writing; I/O fails instead of hanging, so
        // XHA sees an error within its budget (not a frozen request).
        p.insert(PROP_QUORUM.into(), "majority".into());
        p.insert(PROP_ON_NO_QUORUM.into(), "io-error".into());
        p.insert(PROP_ON_NO_DATA.into(), "io-error".into());
        // LINSTOR's auto-quorum lets the controller rewrite `quorum` and
        // `on-no-quorum` on the resource definition whenever the replica count
        // changes (it turns quorum off below three voters and applies its own
        // policy). The heartbeat's at-most-one-Primary guarantee must not
        // depend on that bookkeeping, so quorum is set explicitly above and
        // auto-quorum is disabled. The automatic tie-breaker still works: it
        // keys on quorum being enabled on the resource, which it is.
        p.insert(PROP_AUTO_QUORUM.into(), "disabled".into());
        match self.promotion {
            PromotionMode::Explicit => {
                p.insert(PROP_AUTO_PROMOTE.into(), "no".into());
                // Part of LINBIT's HA set; only acts with suspend-io, harmless
                // with io-error, and what drbd-reactor's config check expects.
                p.insert(
                    PROP_ON_SUSPENDED_PRIMARY_OUTDATED.into(),
                    "force-secondary".into(),
                );
            }
            PromotionMode::OpenToPromote {
                timeout_deciseconds,
            } => {
                p.insert(PROP_AUTO_PROMOTE.into(), "yes".into());
                p.insert(
                    PROP_AUTO_PROMOTE_TIMEOUT.into(),
                    timeout_deciseconds.to_string(),
                );
            }
        }
        p
    }

    fn select_filter(&self) -> AutoSelectFilter {
        AutoSelectFilter {
            place_count: Some(self.place_count),
            storage_pool: self.storage_pool.clone(),
            ..AutoSelectFilter::default()
        }
    }

    /// Body of `POST /v1/resource-groups`.
    pub fn resource_group_body(&self) -> ResourceGroup {
        ResourceGroup {
            name: self.resource_group.clone(),
            description: Some(
                "XHA heartbeat volumes (statefile, redo log) served over HTTP/NBD".into(),
            ),
            props: self.drbd_props(),
            select_filter: Some(self.select_filter()),
            ..ResourceGroup::default()
        }
    }

    /// Body of `POST /v1/resource-groups/{rg}/volume-groups`.
    pub fn volume_group_body(&self) -> VolumeGroup {
        VolumeGroup {
            volume_number: Some(0),
            ..VolumeGroup::default()
        }
    }

    /// Body of `POST /v1/resource-groups/{rg}/spawn`: definitions only, so
    /// placement is a separate, repeatable step (a failed placement is retried
    /// by the next run instead of leaving an orphan definition behind).
    pub fn spawn_body(&self) -> ResourceGroupSpawn {
        ResourceGroupSpawn {
            resource_definition_name: self.volume.clone(),
            volume_sizes: vec![self.size_kib],
            definitions_only: Some(true),
            ..ResourceGroupSpawn::default()
        }
    }

    /// Body of `POST /v1/resource-definitions/{rd}/autoplace`.
    pub fn autoplace_body(&self) -> AutoPlaceRequest {
        AutoPlaceRequest {
            select_filter: self.select_filter(),
            diskless_on_remaining: Some(false),
            layer_list: None,
        }
    }
}

/// One property (or attribute) that differs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub found: Option<String>,
    pub wanted: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Some(found) => write!(f, "{} is `{}`, wanted `{}`", self.what, found, self.wanted),
            None => write!(f, "{} is not set, wanted `{}`", self.what, self.wanted),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    Differs(Vec<Difference>),
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub object: String,
    pub outcome: Outcome,
    /// LINSTOR's warnings and infos for this step.
    pub notes: Vec<String>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Created => write!(f, "{}: created", self.object)?,
            Outcome::Unchanged => write!(f, "{}: unchanged", self.object)?,
            Outcome::Differs(d) => {
                write!(f, "{}: exists but differs (left as is)", self.object)?;
                for d in d {
                    write!(f, "\n  - {d}")?;
                }
            }
        }
        for n in &self.notes {
            write!(f, "\n  {}", n.replace('\n', "\n  "))?;
        }
        Ok(())
    }
}

/// The replicas of the volume after provisioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub diskless: bool,
    pub tie_breaker: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    pub steps: Vec<Step>,
    pub replicas: Vec<Replica>,
}

impl ProvisionReport {
    pub fn has_differences(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Differs(_)))
    }

    pub fn created_anything(&self) -> bool {
        self.steps.iter().any(|s| s.outcome == Outcome::Created)
    }
}

fn outcome(diffs: Vec<Difference>) -> Outcome {
    if diffs.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Differs(diffs)
    }
}

fn compare_props(scope: &str, found: &Props, wanted: &Props, diffs: &mut Vec<Difference>) {
    for (key, value) in wanted {
        match found.get(key) {
            Some(v) if v == value => {}
            other => diffs.push(Difference {
                what: format!("{scope} property {key}"),
                found: other.cloned(),
                wanted: value.clone(),
            }),
        }
    }
}

/// Fetch the resource group `name`, if it exists.
pub fn get_resource_group(
    client: &Client,
    name: &str,
) -> Result<Option<ResourceGroup>, LinstorError> {
    let list: Vec<ResourceGroup> = client.get(&format!(
        "/v1/resource-groups?resource_groups={}",
        encode(name)
    ))?;
    Ok(list.into_iter().find(|g| g.name.eq_ignore_ascii_case(name)))
}

/// Fetch the resource definition `name` with its volume definitions.
pub fn get_resource_definition(
    client: &Client,
    name: &str,
) -> Result<Option<ResourceDefinition>, LinstorError> {
    let list: Vec<ResourceDefinition> = client.get(&format!(
        "/v1/resource-definitions?resource_definitions={}&with_volume_definitions=true",
        encode(name)
    ))?;
    Ok(list.into_iter().find(|d| d.name.eq_ignore_ascii_case(name)))
}

/// Fetch the resources (replicas) of `name`, volumes included.
pub fn get_resources(client: &Client, name: &str) -> Result<Vec<Resource>, LinstorError> {
    let list: Vec<Resource> =
        client.get(&format!("/v1/view/resources?resources={}", encode(name)))?;
    Ok(list
        .into_iter()
        .filter(|r| r.name.eq_ignore_ascii_case(name))
        .collect())
}

fn compare_resource_group(spec: &HeartbeatVolumeSpec, found: &ResourceGroup) -> Vec<Difference> {
    let mut diffs = Vec::new();
    compare_props(
        "resource group",
        &found.props,
        &spec.drbd_props(),
        &mut diffs,
    );
    let filter = found.select_filter.clone().unwrap_or_default();
    if filter.place_count != Some(spec.place_count) {
        diffs.push(Difference {
            what: "resource group select_filter.place_count".into(),
            found: filter.place_count.map(|c| c.to_string()),
            wanted: spec.place_count.to_string(),
        });
    }
    if let Some(pool) = &spec.storage_pool {
        // LINSTOR answers a created `storage_pool` as `storage_pool_list`.
        let matches = filter.storage_pool.as_deref() == Some(pool.as_str())
            || filter.storage_pool_list.as_deref() == Some(std::slice::from_ref(pool));
        if !matches {
            let found = filter
                .storage_pool
                .clone()
                .or_else(|| filter.storage_pool_list.as_ref().map(|l| l.join(",")));
            diffs.push(Difference {
                what: "resource group select_filter.storage_pool".into(),
                found,
                wanted: pool.clone(),
            });
        }
    }
    diffs
}

fn compare_resource_definition(
    spec: &HeartbeatVolumeSpec,
    found: &ResourceDefinition,
) -> Vec<Difference> {
    let mut diffs = Vec::new();
    let group = found.resource_group_name.clone();
    if !group
        .as_deref()
        .is_some_and(|g| g.eq_ignore_ascii_case(&spec.resource_group))
    {
        diffs.push(Difference {
            what: "resource definition resource_group_name (the group's DRBD options do not apply)"
                .into(),
            found: group,
            wanted: spec.resource_group.clone(),
        });
    }
    match found
        .volume_definitions
        .iter()
        .find(|v| v.volume_number.unwrap_or(0) == 0)
    {
        Some(vd) if vd.size_kib == spec.size_kib => {}
        Some(vd) => diffs.push(Difference {
            what: "volume definition 0 size_kib".into(),
            found: Some(vd.size_kib.to_string()),
            wanted: spec.size_kib.to_string(),
        }),
        None => diffs.push(Difference {
            what: "volume definition 0".into(),
            found: None,
            wanted: format!("{} KiB", spec.size_kib),
        }),
    }
    // Properties on the definition override the group's: only report those
    // that contradict what the group carries.
    for (key, value) in spec.drbd_props() {
        if let Some(v) = found.props.get(&key) {
            if *v != value {
                diffs.push(Difference {
                    what: format!("resource definition property {key} (overrides the group)"),
                    found: Some(v.clone()),
                    wanted: value,
                });
            }
        }
    }
    diffs
}

/// Create (or check) the group, its volume group, the definition and its
/// replicas, in that order. Stops at the first LINSTOR error.
pub fn provision(
    client: &Client,
    spec: &HeartbeatVolumeSpec,
) -> Result<ProvisionReport, LinstorError> {
    let mut steps = Vec::new();
    let rg = &spec.resource_group;

    // 1. resource group
    let object = format!("resource group {rg}");
    let step = match get_resource_group(client, rg)? {
        Some(found) => Step {
            object,
            outcome: outcome(compare_resource_group(spec, &found)),
            notes: vec![],
        },
        None => {
            let replies = client.post("/v1/resource-groups", &spec.resource_group_body())?;
            created_or_existing(replies, FAIL_EXISTS_RSC_GRP, &object, || {
                let found = get_resource_group(client, rg)?;
                Ok(found.map(|f| compare_resource_group(spec, &f)))
            })?
        }
    };
    steps.push(step);

    // 2. volume group 0
    let object = format!("volume group {rg}/0");
    let vg_path = format!("/v1/resource-groups/{}/volume-groups", encode(rg));
    let vgs: Vec<VolumeGroup> = client.get(&vg_path)?;
    let step = if vgs.iter().any(|v| v.volume_number.unwrap_or(0) == 0) {
        Step {
            object,
            outcome: Outcome::Unchanged,
            notes: vec![],
        }
    } else {
        let replies = client.post(&vg_path, &spec.volume_group_body())?;
        created_or_existing(replies, FAIL_EXISTS_VLM_GRP, &object, || Ok(Some(vec![])))?
    };
    steps.push(step);

    // 3. resource definition spawned from the group
    let vol = &spec.volume;
    let object = format!("resource definition {vol} ({} KiB)", spec.size_kib);
    let step = match get_resource_definition(client, vol)? {
        Some(found) => Step {
            object,
            outcome: outcome(compare_resource_definition(spec, &found)),
            notes: vec![],
        },
        None => {
            let replies = client.post(
                &format!("/v1/resource-groups/{}/spawn", encode(rg)),
                &spec.spawn_body(),
            )?;
            created_or_existing(replies, FAIL_EXISTS_RSC_DFN, &object, || {
                let found = get_resource_definition(client, vol)?;
                Ok(found.map(|f| compare_resource_definition(spec, &f)))
            })?
        }
    };
    steps.push(step);

    // 4. replicas: autoplace only while fewer diskful replicas than asked.
    let object = format!("replicas of {vol} ({} diskful)", spec.place_count);
    let mut resources = get_resources(client, vol)?;
    let diskful = resources.iter().filter(|r| !r.is_diskless()).count();
    let step = if diskful >= spec.place_count as usize {
        Step {
            object,
            outcome: Outcome::Unchanged,
            notes: vec![],
        }
    } else {
        let replies = client
            .post(
                &format!("/v1/resource-definitions/{}/autoplace", encode(vol)),
                &spec.autoplace_body(),
            )?
            .into_result(&format!(
                "placing {} diskful replicas of {vol} (storage pool {})",
                spec.place_count,
                spec.storage_pool
                    .as_deref()
                    .unwrap_or("from the resource group")
            ))?;
        resources = get_resources(client, vol)?;
        Step {
            object,
            outcome: Outcome::Created,
            notes: replies.notes(),
        }
    };
    steps.push(step);

    let mut replicas: Vec<Replica> = resources
        .iter()
        .map(|r| Replica {
            node: r.node_name.clone(),
            diskless: r.is_diskless(),
            tie_breaker: r.is_tie_breaker(),
        })
        .collect();
    replicas.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(ProvisionReport { steps, replicas })
}

/// A create call's replies: success → Created; `exists_code` → re-fetch and
/// compare (`refetch` returns the differences, `None` if still not found);
/// any other error → `Err` with LINSTOR's text.
fn created_or_existing(
    replies: Replies,
    exists_code: u64,
    object: &str,
    refetch: impl FnOnce() -> Result<Option<Vec<Difference>>, LinstorError>,
) -> Result<Step, LinstorError> {
    if replies.has_error_code(exists_code) {
        if let Some(diffs) = refetch()? {
            return Ok(Step {
                object: object.to_string(),
                outcome: outcome(diffs),
                notes: vec![],
            });
        }
    }
    let replies = replies.into_result(&format!("creating {object}"))?;
    Ok(Step {
        object: object.to_string(),
        outcome: Outcome::Created,
        notes: replies.notes(),
    })
}
