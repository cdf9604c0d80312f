//! DRBD and LINSTOR integration.
