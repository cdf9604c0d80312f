//! Serde types for the subset of the LINSTOR REST API v1 this crate uses.
//!
//! Field names follow `components/schemas` of the official OpenAPI spec
//! (`linstor-rest-v1-openapi.yaml`). Response types never deny unknown fields
//! (the API only grows); request types skip absent fields so every body
//! carries only what the caller chose to send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Properties`: a string-to-string map.
pub type Props = BTreeMap<String, String>;

/// `ApiCallRc`: one entry of every reply to a modifying call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCallRc {
    /// Masked return code (signed 64-bit in JSON); see [`super::retcode`].
    pub ret_code: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_report_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub obj_refs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `AutoSelectFilter`: where the autoplacer may put replicas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoSelectFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_place_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_pool_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_pool_diskless_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_stack: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_list: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskless_on_remaining: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskless_type: Option<String>,
}

/// `ResourceGroup`: request body of `resourceGroupCreate` and item of `resourceGroupList`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: Props,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_filter: Option<AutoSelectFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_slots: Option<i32>,
}

/// `VolumeGroup`: request body of `volumeGroupCreate` and item of `volumeGroupList`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_number: Option<i32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: Props,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// `ResourceGroupSpawn`: request body of `resourceGroupSpawn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceGroupSpawn {
    pub resource_definition_name: String,
    /// Sizes in KiB, one per volume group.
    pub volume_sizes: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_filter: Option<AutoSelectFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definitions_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_slots: Option<i32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_definition_props: Props,
}

/// `AutoPlaceRequest`: request body of `resourceAutoplace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoPlaceRequest {
    pub select_filter: AutoSelectFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskless_on_remaining: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_list: Option<Vec<String>>,
}

/// `VolumeDefinition`: item of a resource definition's `volume_definitions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDefinition {
    #[serde(default)]
    pub volume_number: Option<i32>,
    pub size_kib: i64,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `ResourceDefinition`: item of `resourceDefinitionList`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDefinition {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub resource_group_name: Option<String>,
    #[serde(default)]
    pub volume_definitions: Vec<VolumeDefinition>,
}

/// `DrbdResource`: the DRBD layer of a resource, as far as it is used here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrbdResource {
    #[serde(default)]
    pub node_id: Option<i32>,
    #[serde(default)]
    pub peer_slots: Option<i32>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub promotion_score: Option<i32>,
    #[serde(default)]
    pub may_promote: Option<bool>,
}

/// `ResourceLayer`: only the DRBD part is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLayer {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub drbd: Option<DrbdResource>,
}

/// `ResourceState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    #[serde(default)]
    pub in_use: Option<bool>,
}

/// `Volume` of a `ResourceWithVolumes`, the fields read here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    #[serde(default)]
    pub volume_number: Option<i32>,
    #[serde(default)]
    pub storage_pool_name: Option<String>,
    #[serde(default)]
    pub device_path: Option<String>,
    #[serde(default)]
    pub usable_size_kib: Option<i64>,
    #[serde(default)]
    pub flags: Vec<String>,
}

/// `ResourceWithVolumes` (`viewResources`); also decodes a plain `Resource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub layer_object: Option<ResourceLayer>,
    #[serde(default)]
    pub state: Option<ResourceState>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub create_timestamp: Option<i64>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

/// Resource flags that mean "no local data" (`DISKLESS`, `DRBD_DISKLESS`).
const DISKLESS_FLAGS: [&str; 2] = ["DISKLESS", "DRBD_DISKLESS"];

impl Resource {
    /// Whether LINSTOR added this replica only as a quorum tie-breaker.
    pub fn is_tie_breaker(&self) -> bool {
        self.flags.iter().any(|f| f == "TIE_BREAKER")
    }

    /// Whether the replica has no local data.
    pub fn is_diskless(&self) -> bool {
        self.flags
            .iter()
            .any(|f| DISKLESS_FLAGS.contains(&f.as_str()))
    }
}

/// `NetInterface`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub satellite_port: Option<i64>,
    #[serde(default)]
    pub satellite_encryption_type: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `Node`, the fields read here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub net_interfaces: Vec<NetInterface>,
    #[serde(default)]
    pub connection_status: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}
