//! Grouping a watcher's events into responses: whole revisions of about
//! [`POLL_BYTES`] each, a larger revision alone or in fragments.

use nines_proto::etcd::mvccpb;

use super::super::convert;
use super::POLL_BYTES;
use crate::watch::Event;

pub(super) struct Chunk {
    pub events: Vec<mvccpb::Event>,
    pub last_revision: i64,
    pub fragment: bool,
}

fn event(e: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: if e.deleted {
            mvccpb::event::EventType::Delete as i32
        } else {
            mvccpb::event::EventType::Put as i32
        },
        kv: Some(convert::kv(e.kv)),
        prev_kv: e.prev_kv.map(convert::kv),
    }
}

fn event_bytes(e: &Event) -> usize {
    let prev = e
        .prev_kv
        .as_ref()
        .map_or(0, |p| p.key.len() + p.value.len());
    e.kv.key.len() + e.kv.value.len() + prev + 64
}

/// Groups events into responses: whole revisions up to about
/// [`POLL_BYTES`] each; a revision larger than that alone, or in fragments
/// (all flagged but the last) when `fragment`. The flag says which chunk
/// is the last.
pub(super) fn chunks(events: Vec<Event>, fragment: bool) -> Vec<(bool, Chunk)> {
    // The common case, one response: no grouping.
    if events.iter().map(event_bytes).sum::<usize>() <= POLL_BYTES {
        let last_revision = events.last().map_or(0, |e| e.kv.mod_revision);
        let chunk = Chunk {
            events: events.into_iter().map(event).collect(),
            last_revision,
            fragment: false,
        };
        return vec![(true, chunk)];
    }
    // Group by revision first.
    let mut revisions: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match revisions.last_mut() {
            Some(group) if group[0].kv.mod_revision == e.kv.mod_revision => group.push(e),
            _ => revisions.push(vec![e]),
        }
    }
    let mut out: Vec<Chunk> = Vec::new();
    let mut current = Chunk {
        events: Vec::new(),
        last_revision: 0,
        fragment: false,
    };
    let mut bytes = 0;
    for group in revisions {
        let revision = group[0].kv.mod_revision;
        let size: usize = group.iter().map(event_bytes).sum();
        if bytes > 0 && bytes + size > POLL_BYTES {
            out.push(std::mem::replace(
                &mut current,
                Chunk {
                    events: Vec::new(),
                    last_revision: 0,
                    fragment: false,
                },
            ));
            bytes = 0;
        }
        if fragment && size > POLL_BYTES {
            // Its own responses: fragments of about POLL_BYTES.
            let mut piece = Vec::new();
            let mut piece_bytes = 0;
            for e in group {
                piece_bytes += event_bytes(&e);
                piece.push(event(e));
                if piece_bytes > POLL_BYTES {
                    out.push(Chunk {
                        events: std::mem::take(&mut piece),
                        last_revision: revision,
                        fragment: true,
                    });
                    piece_bytes = 0;
                }
            }
            match out.last_mut() {
                Some(last) if piece.is_empty() => last.fragment = false,
                _ => out.push(Chunk {
                    events: piece,
                    last_revision: revision,
                    fragment: false,
                }),
            }
            continue;
        }
        current.events.extend(group.into_iter().map(event));
        current.last_revision = revision;
        bytes += size;
    }
    if !current.events.is_empty() {
        out.push(current);
    }
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, c)| (i + 1 == n, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nines_types::KeyValue;

    fn put(rev: i64, key: &str, value_len: usize) -> Event {
        Event {
            deleted: false,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'x'; value_len],
                mod_revision: rev,
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    fn revisions(chunk: &Chunk) -> Vec<i64> {
        chunk
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn small_revisions_share_a_response_and_large_ones_split_only_with_fragment() {
        let small = vec![put(2, "a", 10), put(3, "b", 10), put(3, "c", 10)];
        let out = chunks(small, false);
        assert_eq!(out.len(), 1);
        assert!(out[0].0 && !out[0].1.fragment);
        assert_eq!(revisions(&out[0].1), vec![2, 3, 3]);

        // Revision 5 is larger than a response: whole without fragment...
        let big = || {
            let mut events = vec![put(4, "a", 10)];
            events.extend((0..3).map(|i| put(5, &format!("k{i}"), POLL_BYTES / 2)));
            events.push(put(6, "z", 10));
            events
        };
        let out = chunks(big(), false);
        let revs: Vec<Vec<i64>> = out.iter().map(|(_, c)| revisions(c)).collect();
        assert_eq!(revs, vec![vec![4], vec![5, 5, 5], vec![6]]);
        assert!(out.iter().all(|(_, c)| !c.fragment));
        assert_eq!(out.iter().filter(|(last, _)| *last).count(), 1);

        // ...in fragments with it: every piece of 5 but its last flagged,
        // and no revision is ever split otherwise.
        let out = chunks(big(), true);
        let flags: Vec<(Vec<i64>, bool)> = out
            .iter()
            .map(|(_, c)| (revisions(c), c.fragment))
            .collect();
        assert_eq!(flags.first(), Some(&(vec![4], false)));
        assert_eq!(flags.last(), Some(&(vec![6], false)));
        let fives: Vec<&(Vec<i64>, bool)> = flags.iter().filter(|(r, _)| r.contains(&5)).collect();
        assert!(fives.len() >= 2, "revision 5 split: {flags:?}");
        assert!(fives[..fives.len() - 1].iter().all(|(_, f)| *f));
        assert!(!fives[fives.len() - 1].1);
        let all: usize = fives.iter().map(|(r, _)| r.len()).sum();
        assert_eq!(all, 3);
    }
}
