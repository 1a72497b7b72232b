//! Key selection shared by `get`, `del` and txn specs (etcd semantics).

use anyhow::{bail, Result};

/// How a command selects keys, before it becomes (key, range_end).
#[derive(Debug, Default, Clone)]
pub struct KeySelector<'a> {
    pub key: &'a [u8],
    pub range_end: Option<&'a [u8]>,
    pub prefix: bool,
    pub from_key: bool,
}

/// Returns the (key, range_end) pair the server expects: range_end empty for
/// one key, "\0" for "every key >= key", otherwise the exclusive end.
pub fn key_range(sel: &KeySelector) -> Result<(Vec<u8>, Vec<u8>)> {
    if sel.prefix && sel.from_key {
        bail!("prefix and from_key cannot be combined");
    }
    if sel.range_end.is_some() && (sel.prefix || sel.from_key) {
        bail!("range_end cannot be combined with prefix or from_key");
    }
    // etcdctl maps an empty key with --prefix/--from-key to "\0": every key.
    let key = if sel.key.is_empty() && (sel.prefix || sel.from_key) {
        vec![0]
    } else {
        sel.key.to_vec()
    };
    let range_end = if sel.prefix {
        if sel.key.is_empty() {
            vec![0]
        } else {
            nines_client::prefix_end(sel.key)
        }
    } else if sel.from_key {
        vec![0]
    } else {
        sel.range_end.unwrap_or_default().to_vec()
    };
    Ok((key, range_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(sel: KeySelector) -> (Vec<u8>, Vec<u8>) {
        key_range(&sel).unwrap()
    }

    #[test]
    fn selections() {
        let one = KeySelector {
            key: b"a",
            ..Default::default()
        };
        assert_eq!(range(one), (b"a".to_vec(), vec![]));
        let prefix = KeySelector {
            key: b"ab",
            prefix: true,
            ..Default::default()
        };
        assert_eq!(range(prefix), (b"ab".to_vec(), b"ac".to_vec()));
        let all = KeySelector {
            key: b"",
            prefix: true,
            ..Default::default()
        };
        assert_eq!(range(all), (vec![0], vec![0]));
        let from = KeySelector {
            key: b"m",
            from_key: true,
            ..Default::default()
        };
        assert_eq!(range(from), (b"m".to_vec(), vec![0]));
        let explicit = KeySelector {
            key: b"a",
            range_end: Some(b"c"),
            ..Default::default()
        };
        assert_eq!(range(explicit), (b"a".to_vec(), b"c".to_vec()));
    }

    #[test]
    fn conflicting_selections() {
        let both = KeySelector {
            key: b"a",
            prefix: true,
            from_key: true,
            ..Default::default()
        };
        assert!(key_range(&both).is_err());
        let end_and_prefix = KeySelector {
            key: b"a",
            range_end: Some(b"c"),
            prefix: true,
            ..Default::default()
        };
        assert!(key_range(&end_and_prefix).is_err());
    }
}
