//! Leases as the state machine keeps them: which leases are granted, with
//! their TTL and last checkpointed remaining TTL, and which keys each one
//! holds. Time is not here: only the leader counts TTLs down (in the
//! server), and it expires a lease by proposing its revoke, so every
//! replica deletes the same keys at the same revision.
//!
//! Engine records, written in the batch of the apply that changes them:
//! - `l` + id (u64 BE) → `LeaseRecord`
//! - `a` + id (u64 BE) + key → empty: the key is attached to the lease
//!
//! The in-memory table is loaded from them when a store opens (start,
//! snapshot install, restore), so it always matches the engine. An apply
//! that fails midway leaves it ahead of the engine, but a failed apply
//! stops the node (a storage error is fatal) and the reopen reloads it.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::StateError;
use crate::overlay::Overlay;
use crate::store::{decode, encode};

pub(crate) const LEASE_PREFIX: u8 = b'l';
pub(crate) const ATTACH_PREFIX: u8 = b'a';

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    ttl: i64,
    remaining: i64,
}

/// A granted lease as the applied state knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub ttl: i64,
    /// The remaining TTL the leader last checkpointed, in seconds; 0 if it
    /// never did (a new leader then counts down from `ttl`).
    pub remaining: i64,
}

#[derive(Debug, Default)]
struct Lease {
    ttl: i64,
    remaining: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// Granted leases and their keys.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The lease of every key that has one.
    key_lease: HashMap<Vec<u8>, i64>,
}

fn lease_key(id: i64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(9);
    raw.push(LEASE_PREFIX);
    raw.extend_from_slice(&(id as u64).to_be_bytes());
    raw
}

fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(9 + key.len());
    raw.push(ATTACH_PREFIX);
    raw.extend_from_slice(&(id as u64).to_be_bytes());
    raw.extend_from_slice(key);
    raw
}

/// The id after a record's prefix byte.
fn parse_id(raw: &[u8]) -> Result<(i64, &[u8]), StateError> {
    let bad = || StateError::CorruptState(format!("bad lease record key {raw:02x?}"));
    let id = raw.get(1..9).ok_or_else(bad)?;
    // Stored as the id's two's-complement bits: etcd grants negative ids
    // too, and only 0 (no lease) is never one.
    let id = u64::from_be_bytes(id.try_into().map_err(|_| bad())?) as i64;
    if id == 0 {
        return Err(bad());
    }
    Ok((id, &raw[9..]))
}

impl LeaseTable {
    /// Reads every lease and attachment record of `engine`.
    pub fn load<E: Engine>(engine: &E) -> Result<Self, StateError> {
        let mut table = LeaseTable::default();
        for item in engine.scan(&[LEASE_PREFIX], Some(&[LEASE_PREFIX + 1])) {
            let (raw_key, raw) = item?;
            let (id, rest) = parse_id(raw_key.as_ref())?;
            if !rest.is_empty() {
                return Err(StateError::CorruptState(format!(
                    "lease record {id} has a key {} bytes too long",
                    rest.len()
                )));
            }
            let record: LeaseRecord = decode(raw.as_ref())?;
            table.leases.insert(
                id,
                Lease {
                    ttl: record.ttl,
                    remaining: record.remaining,
                    keys: BTreeSet::new(),
                },
            );
        }
        for item in engine.scan(&[ATTACH_PREFIX], Some(&[ATTACH_PREFIX + 1])) {
            let (raw_key, _) = item?;
            let (id, key) = parse_id(raw_key.as_ref())?;
            let lease = table.leases.get_mut(&id).ok_or_else(|| {
                StateError::CorruptState(format!(
                    "key {:?} is attached to lease {id}, which is not granted",
                    String::from_utf8_lossy(key)
                ))
            })?;
            lease.keys.insert(key.to_vec());
            if let Some(other) = table.key_lease.insert(key.to_vec(), id) {
                return Err(StateError::CorruptState(format!(
                    "key {:?} is attached to leases {other} and {id}",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        Ok(table)
    }

    pub fn get(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo {
            id,
            ttl: l.ttl,
            remaining: l.remaining,
        })
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Every granted lease, by id.
    pub fn list(&self) -> Vec<LeaseInfo> {
        self.leases
            .iter()
            .map(|(&id, l)| LeaseInfo {
                id,
                ttl: l.ttl,
                remaining: l.remaining,
            })
            .collect()
    }

    /// The keys attached to lease `id`, in key order.
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The lease `key` is attached to; 0 for none.
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.key_lease.get(key).copied().unwrap_or(0)
    }

    /// Grants lease `id`; false if it is granted already.
    pub fn grant<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        id: i64,
        ttl: i64,
    ) -> Result<bool, StateError> {
        if self.leases.contains_key(&id) {
            return Ok(false);
        }
        let record = LeaseRecord { ttl, remaining: 0 };
        overlay.put(lease_key(id), encode(&record)?);
        self.leases.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
            },
        );
        Ok(true)
    }

    /// Forgets lease `id` and its attachments; returns the keys it held
    /// (for the caller to delete), or None if it was not granted.
    pub fn revoke<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        id: i64,
    ) -> Option<Vec<Vec<u8>>> {
        let lease = self.leases.remove(&id)?;
        overlay.remove(lease_key(id));
        for key in &lease.keys {
            overlay.remove(attach_key(id, key));
            self.key_lease.remove(key);
        }
        Some(lease.keys.into_iter().collect())
    }

    /// Records the leader's remaining TTL of lease `id`, if it is granted;
    /// 0 or less clears it (a keepalive renewed the lease: a new leader
    /// starts it from its full TTL).
    pub fn checkpoint<E: Engine>(
        &mut self,
        overlay: &mut Overlay<'_, E>,
        id: i64,
        remaining: i64,
    ) -> Result<(), StateError> {
        let Some(lease) = self.leases.get_mut(&id) else {
            return Ok(());
        };
        // Never above the TTL: a bad checkpoint must not extend a lease.
        let remaining = if remaining <= 0 {
            0
        } else {
            remaining.min(lease.ttl).max(1)
        };
        if lease.remaining != remaining {
            lease.remaining = remaining;
            let record = LeaseRecord {
                ttl: lease.ttl,
                remaining,
            };
            overlay.put(lease_key(id), encode(&record)?);
        }
        Ok(())
    }

    /// Attaches `key` to `lease` (0: to none), detaching it from the lease
    /// it had. The caller checked that `lease` is granted.
    pub fn attach<E: Engine>(&mut self, overlay: &mut Overlay<'_, E>, key: &[u8], lease: i64) {
        let old = self.lease_of(key);
        if old == lease {
            return;
        }
        self.detach(overlay, key);
        if let Some(held) = self.leases.get_mut(&lease) {
            held.keys.insert(key.to_vec());
            self.key_lease.insert(key.to_vec(), lease);
            overlay.put(attach_key(lease, key), Vec::new());
        }
    }

    /// Detaches a deleted key from its lease, if it has one.
    pub fn detach<E: Engine>(&mut self, overlay: &mut Overlay<'_, E>, key: &[u8]) {
        let Some(old) = self.key_lease.remove(key) else {
            return;
        };
        if let Some(held) = self.leases.get_mut(&old) {
            held.keys.remove(key);
        }
        overlay.remove(attach_key(old, key));
    }
}
