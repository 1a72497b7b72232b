//! Exactly-once writes through etcd's API: etcd's messages have no field
//! for it, so nines' client sends `x-nines-session: <client_id>/<seq>`
//! (hex client id, decimal sequence) as request metadata. Other etcd
//! clients leave it out and get etcd's at-least-once retries.

use nines_types::Session;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::ApiError;

pub const SESSION_HEADER: &str = "x-nines-session";

/// The session a request carries, if any; a malformed one is refused
/// rather than ignored (the client expects exactly-once).
pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<Session>, ApiError> {
    let Some(value) = metadata.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::InvalidRequest(format!(
            "{SESSION_HEADER} must be <hex client id>/<sequence>, got {:?}",
            value.to_str().unwrap_or("<not ascii>")
        ))
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (client, seq) = text.split_once('/').ok_or_else(bad)?;
    // Bounded by the digit counts: no wire-sized work.
    if client.is_empty() || client.len() > 16 || seq.is_empty() || seq.len() > 20 {
        return Err(bad());
    }
    let client_id = u64::from_str_radix(client, 16).map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if client_id == 0 || seq == 0 {
        return Err(bad());
    }
    Ok(Some(Session { client_id, seq }))
}

/// A session as `x-nines-session` carries it: `<hex client id>/<sequence>`.
pub fn text(s: Session) -> String {
    format!("{:x}/{}", s.client_id, s.seq)
}

/// Copies the session to a request forwarded to the leader.
pub fn forward(session: Option<Session>, metadata: &mut MetadataMap) {
    if let Some(s) = session {
        if let Ok(value) = MetadataValue::try_from(text(s)) {
            metadata.insert(SESSION_HEADER, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Session>, ApiError> {
        let mut m = MetadataMap::new();
        m.insert(SESSION_HEADER, text.parse().unwrap());
        from_metadata(&m)
    }

    #[test]
    fn sessions_round_trip_through_metadata() {
        assert_eq!(from_metadata(&MetadataMap::new()).unwrap(), None);
        let s = Session {
            client_id: 0xdead_beef,
            seq: 42,
        };
        assert_eq!(parse("deadbeef/42").unwrap(), Some(s));
        let mut m = MetadataMap::new();
        forward(Some(s), &mut m);
        assert_eq!(from_metadata(&m).unwrap(), Some(s));
    }

    #[test]
    fn malformed_sessions_are_refused() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "0/1",
            "1/0",
            "x/1",
            "1/-1",
            "1/1/1",
            "11111111111111111/1",
            "1/111111111111111111111",
        ] {
            assert!(
                matches!(parse(bad), Err(ApiError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }
}
