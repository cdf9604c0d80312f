//! LINSTOR REST API v1 client for the heartbeat volumes.
//!
//! - [`types`]: serde types for the subset of the official OpenAPI spec used;
//! - [`retcode`]: `ret_code` masks (error, warning, info) and codes;
//! - [`client`]: blocking HTTP calls, replies decoded, errors with LINSTOR's text;
//! - [`provision`]: the resource group with the DRBD options, its volume group,
//!   the volume spawned from it and its replicas, idempotently;
//! - [`urls`]: the hosts holding replicas and the `--urls` list built from them;
//! - [`cli`]: `provision` and `urls` as a command-line entry.

pub mod cli;
pub mod client;
pub mod provision;
pub mod retcode;
pub mod types;
pub mod urls;

pub use client::{Client, LinstorError};
pub use provision::{provision, HeartbeatVolumeSpec, PromotionMode, ProvisionReport};
pub use urls::{replica_hosts, url_list, HostSelection, ReplicaHost};
