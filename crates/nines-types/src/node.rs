use std::fmt;

use serde::{Deserialize, Serialize};

/// A cluster member as Raft knows it: where peers reach its Raft service and
/// where clients reach its API. A follower returns the leader's `Node` so the
/// caller can forward to the API address directly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub raft_addr: String,
    pub api_addr: String,
}

impl Node {
    pub fn new(raft_addr: impl Into<String>, api_addr: impl Into<String>) -> Self {
        Self {
            raft_addr: raft_addr.into(),
            api_addr: api_addr.into(),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}
