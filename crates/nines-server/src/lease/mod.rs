//! Leases on a member: the applied state (nines-state) knows which leases
//! are granted and their keys; the leader alone counts TTLs down
//! (`lessor.rs`), renews them on keepalives and expires them by proposing
//! their revoke (`run.rs`), checkpointing remaining TTLs so that a new
//! leader carries the countdowns on.
//!
//! Bounds, with the defaults (checkpoints every 5 s, ticks of 100 ms, an
//! extension of 1 s for clients to find a new leader):
//! - a lease whose keepalive was acknowledged at time t is not revoked
//!   before t + TTL: only a leader confirmed by a quorum revokes; the leader
//!   that acknowledged counts from t; and before acknowledging it clears
//!   the lease's recorded remaining TTL, so a new leader starts it from
//!   its full TTL, or from a checkpoint taken after t (`Lessor::order`);
//! - an abandoned lease is revoked within TTL + 100 ms + a commit while
//!   one leader lasts; across leader changes, each change can add up to
//!   min(TTL, checkpoint interval) + the extension + the election.

mod lessor;
#[cfg(test)]
mod lessor_tests;
mod ops;
pub mod run;

pub use lessor::{Lessor, Order, Renewal};
pub use ops::{LeaseTtl, TimeToLive, MIN_TTL};

/// Added to every countdown a new leader starts (see the module doc).
pub const EXTEND: std::time::Duration = std::time::Duration::from_secs(1);
