//! Exactly-once write sessions.
//!
//! The server remembers one (seq, response) per client id, so seqs of one id
//! must reach it in order. Concurrent writes therefore each borrow a "lane":
//! its own client id with its own sequence, returned to the pool afterwards.

use std::sync::Mutex;

use rand::Rng;

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
