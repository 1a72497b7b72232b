//! Raft payloads use nines' one bounded bincode configuration: every node
//! of a cluster runs the same types, and no peer can make us allocate more
//! than a small multiple of what it sent.

pub use nines_types::codec::{decode, encode, CodecError};
