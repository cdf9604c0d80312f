//! The XHA side of the heartbeat proxy: the statefile format xhad reads and
//! writes, the pool-initialisation and inspection tools, and a heartbeat
//! emulator that does exactly what xhad's statefile thread does and judges
//! each emulated host the way xhad would.

pub mod attach;
pub mod daemons;
pub mod demo;
pub mod emulator;
pub mod heartbeat;
pub mod nbd_client;
pub mod pool;
pub mod statefile;
pub mod status;
pub mod target;
pub mod timeouts;
