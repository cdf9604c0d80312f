//! DRBD and LINSTOR integration.
//!
//! DRBD, in the shape of drbd-reactor: parse, model, react, each apart.
//! - [`events2`]: `drbdsetup events2` lines into typed events;
//! - [`model`]: per-resource state from those events and what changed;
//! - [`status`]: `drbdsetup status --json` for startup checks;
//! - [`drbdsetup`]: running `drbdsetup` with timeouts and exit-code classes;
//! - [`promoter`]: the election as a sans-I/O state machine.

pub mod drbdsetup;
pub mod events2;
pub mod model;
pub mod promoter;
pub mod rest;
pub mod status;
