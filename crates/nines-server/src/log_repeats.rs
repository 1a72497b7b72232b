//! Rate limiting for openraft's own warnings. openraft logs some errors
//! once per RPC: "timeout while confirming leadership for read request" for
//! every read barrier round while a follower is down (22,574 lines in
//! 180 s in one chaos run), replication errors once per heartbeat. Those
//! buried every other line. This layer lets each such line (per call site
//! and target node) through once per `SAY_EVERY` and counts the rest; the
//! watcher in `observe` reports the counts.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::observe::SAY_EVERY;

/// Distinct (call site, target) pairs tracked; beyond it lines pass
/// unlimited rather than grow the map.
const MAX_KEYS: usize = 256;
/// Longest sample of a suppressed message kept for the report.
const MAX_SAMPLE: usize = 240;

/// Only these targets are limited: nines' own repeated lines go through
/// `observe::say` where they are written.
const LIMITED_TARGET: &str = "openraft";

#[derive(Hash, PartialEq, Eq)]
struct Key {
    callsite: Identifier,
    /// The node an RPC error is about (openraft's `target` field).
    target: String,
}

struct Entry {
    last_said: Instant,
    suppressed: u64,
    sample: String,
}

static REPEATS: LazyLock<Mutex<HashMap<Key, Entry>>> = LazyLock::new(Mutex::default);

/// A `tracing` layer: add it to the subscriber
/// (`registry().with(RepeatLimit).with(fmt_layer)` or
/// `fmt().finish().with(RepeatLimit)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RepeatLimit;

#[derive(Default)]
struct Fields {
    target: String,
    message: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "target" => {
                let _ = write!(self.target, "{value:?}");
            }
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            _ => {
                if self.message.len() < MAX_SAMPLE {
                    let _ = write!(self.message, " {}={value:?}", field.name());
                }
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RepeatLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // In tracing, more verbose levels compare greater.
        if *meta.level() > Level::WARN || !is_limited(meta.target()) {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let key = Key {
            callsite: meta.callsite(),
            target: fields.target,
        };
        let now = Instant::now();
        let mut repeats = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
        let full = repeats.len() >= MAX_KEYS;
        match repeats.get_mut(&key) {
            Some(entry) if now.duration_since(entry.last_said) < SAY_EVERY => {
                entry.suppressed += 1;
                false
            }
            Some(entry) => {
                entry.last_said = now;
                true
            }
            None if full => true,
            None => {
                let mut sample = fields.message;
                truncate(&mut sample);
                repeats.insert(
                    key,
                    Entry {
                        last_said: now,
                        suppressed: 0,
                        sample,
                    },
                );
                true
            }
        }
    }
}

fn is_limited(target: &str) -> bool {
    target
        .strip_prefix(LIMITED_TARGET)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

fn truncate(s: &mut String) {
    if s.len() > MAX_SAMPLE {
        let mut end = MAX_SAMPLE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Takes the counts of lines held back since the last call: (sample
/// message, target node, count).
pub fn take_suppressed() -> Vec<(String, String, u64)> {
    let mut repeats = REPEATS.lock().unwrap_or_else(|e| e.into_inner());
    repeats
        .iter_mut()
        .filter(|(_, e)| e.suppressed > 0)
        .map(|(k, e)| {
            (
                e.sample.clone(),
                k.target.clone(),
                std::mem::take(&mut e.suppressed),
            )
        })
        .collect()
}

/// Logs, once per line kind, how many repeats were held back.
pub fn report_suppressed() {
    for (sample, target, count) in take_suppressed() {
        if target.is_empty() {
            tracing::info!(
                "openraft repeated {count} times in {SAY_EVERY:?} (suppressed): {sample}"
            );
        } else {
            tracing::info!(
                node = %target,
                "openraft repeated {count} times in {SAY_EVERY:?} (suppressed): {sample}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    struct Count(Arc<AtomicU64>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let _ = event;
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn openraft_repeats_pass_once_and_are_counted() {
        let seen = Arc::new(AtomicU64::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(seen.clone()))
            .with(RepeatLimit);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                tracing::error!(
                    target: "openraft::core",
                    target = 2,
                    "repeat-limit test line"
                );
            }
            // Another target node is another line: said once too.
            tracing::error!(target: "openraft::core", target = 3, "repeat-limit test line");
            // Info lines and other crates are never held back.
            for _ in 0..5 {
                tracing::info!(target: "openraft::core", "repeat-limit info line");
                tracing::warn!(target: "openraft_not_it", "repeat-limit other crate");
            }
        });
        assert_eq!(seen.load(Ordering::Relaxed), 2 + 5 + 5);
        let suppressed: Vec<_> = take_suppressed()
            .into_iter()
            .filter(|(sample, _, _)| sample.contains("repeat-limit test line"))
            .collect();
        assert_eq!(suppressed.len(), 1, "{suppressed:?}");
        assert_eq!(suppressed[0].1, "2");
        assert_eq!(suppressed[0].2, 99);
    }
}
