//! Exactly-once write sessions.
//!
//! The server remembers one (seq, response) per client id, so seqs of one id
//! must reach it in order. Concurrent writes therefore each borrow a "lane":
//! its own client id with its own sequence, returned to the pool afterwards.

use std::sync::Mutex;

use rand::Rng;
use tonic::metadata::{MetadataMap, MetadataValue};

/// The request metadata that carries a write's session through etcd's API
/// (its messages have no field for it): `<hex client id>/<seq>`. Clients
/// that leave it out get etcd's at-least-once retries.
pub const SESSION_HEADER: &str = "x-nines-session";

/// Sets the session of a write: `client_id` fixed per writer (non-zero),
/// `seq` one higher for each new write, the same for every retry of one.
pub fn attach(metadata: &mut MetadataMap, client_id: u64, seq: u64) {
    let text = format!("{client_id:x}/{seq}");
    // Hex digits, a slash and decimal digits are always valid metadata.
    if let Ok(value) = MetadataValue::try_from(text) {
        metadata.insert(SESSION_HEADER, value);
    }
}

/// `message` as a request carrying the session `(client_id, seq)`.
pub fn with_session<T>(message: T, client_id: u64, seq: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    attach(request.metadata_mut(), client_id, seq);
    request
}

pub struct Lane {
    pub client_id: u64,
    pub seq: u64,
}

#[derive(Default)]
pub struct Lanes {
    free: Mutex<Vec<Lane>>,
}

impl Lanes {
    /// Takes a lane and advances its sequence for a new write.
    pub fn acquire(&self) -> Lane {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut lane = reused.unwrap_or_else(|| Lane {
            client_id: rand::thread_rng().gen_range(1..u64::MAX),
            seq: 0,
        });
        lane.seq += 1;
        lane
    }

    /// A new lane (new client id, seq 1), never a pooled one.
    pub fn fresh(&self) -> Lane {
        Lane {
            client_id: rand::thread_rng().gen_range(1..u64::MAX),
            seq: 1,
        }
    }

    pub fn release(&self, lane: Lane) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_hex_client_and_decimal_seq() {
        let request = with_session((), 0xdead_beef, 42);
        assert_eq!(
            request.metadata().get(SESSION_HEADER).unwrap(),
            "deadbeef/42"
        );
    }

    #[test]
    fn lanes_advance_and_are_distinct_while_held() {
        let lanes = Lanes::default();
        let a = lanes.acquire();
        let b = lanes.acquire();
        assert_ne!(a.client_id, b.client_id);
        assert_eq!((a.seq, b.seq), (1, 1));
        let id = a.client_id;
        lanes.release(a);
        let again = lanes.acquire();
        assert_eq!((again.client_id, again.seq), (id, 2));
    }
}
