//! Writes a follower forwards, sent to the leader several per call
//! (`nines.v1.Forward/Writes`): one gRPC call per forwarded put cost
//! about a third more CPU per write, on the follower and the leader, than
//! a put sent to the leader directly, which is what etcd clients that
//! spread their calls over every member pay for two thirds of their
//! writes. Up to [`MAX_SENDERS`] batches per leader are in flight; writes
//! that arrive meanwhile wait and go together in the next one, so a lone
//! write goes at once and a busy follower sends few, full calls. Each
//! write keeps its own session and token and gets its own answer; a
//! failed call fails each write in it as the unary call would have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nines_proto::v1 as pb;
use nines_types::{Node, Session};
use pb::forward_client::ForwardClient;
pub use pb::forwarded_write::Kind;
use prost::Message;
use tokio::sync::oneshot;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Response, Status};

use super::forward;
use crate::core::NodeCore;
use crate::gather;
use crate::metrics::Counters;

/// Writes in one call at most (the leader refuses more).
pub const MAX_WRITES: usize = 128;
/// Request bytes in one call at most; a write larger than
/// [`MAX_WRITE_BYTES`] is not batched at all.
const MAX_BATCH_BYTES: usize = 1 << 20;
pub const MAX_WRITE_BYTES: usize = 64 << 10;
/// Batches in flight to one leader at once. Two: one fills while the
/// other is answered; more made batches smaller with no gain.
const MAX_SENDERS: usize = 2;
/// Status metadata entries carried back per answer, at most.
pub const MAX_ANSWER_HEADERS: usize = 8;

struct Item {
    write: pb::ForwardedWrite,
    reply: oneshot::Sender<Result<pb::ForwardedAnswer, Status>>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    senders: usize,
}

/// The queues of writes waiting for a call, by leader address.
#[derive(Default)]
pub struct WriteBatcher {
    queues: Mutex<HashMap<String, Queue>>,
}

impl WriteBatcher {
    /// Sends `message` (an etcd write request of `kind`) to `leader` in the
    /// next batch and returns the leader's answer, as `forward::to_leader`
    /// does for one call: given up when another member becomes leader.
    pub async fn forward<Req: Message, Resp: Message + Default>(
        self: &Arc<Self>,
        core: &Arc<NodeCore>,
        leader: &Node,
        kind: Kind,
        message: &Req,
        session: Option<Session>,
    ) -> Result<Response<Resp>, Status> {
        let write = pb::ForwardedWrite {
            kind: kind as i32,
            request: message.encode_to_vec(),
            session: session.map(super::etcd::session::text).unwrap_or_default(),
            token: core.forwarding_token().unwrap_or_default(),
        };
        let answer = self.submit(core, leader, write);
        let answer = tokio::select! {
            answer = answer => answer,
            moved = forward::leader_moved_status(core, leader) => return Err(moved),
        };
        let answer = answer.map_err(|status| forward::failed(core, leader, status))?;
        if answer.code != Code::Ok as i32 {
            return Err(forward::failed(core, leader, status_of(answer)));
        }
        Resp::decode(answer.response.as_slice())
            .map(Response::new)
            .map_err(|e| Status::internal(format!("the leader's answer does not decode: {e}")))
    }

    async fn submit(
        self: &Arc<Self>,
        core: &Arc<NodeCore>,
        leader: &Node,
        write: pb::ForwardedWrite,
    ) -> Result<pb::ForwardedAnswer, Status> {
        let (reply, answer) = oneshot::channel();
        let addr = forward::client_addr(leader).to_string();
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues.entry(addr.clone()).or_default();
            queue.items.push(Item { write, reply });
            let start = queue.senders < MAX_SENDERS;
            if start {
                queue.senders += 1;
            }
            start
        };
        if start {
            // Its own task: a client that gives up must not cancel the
            // other writes of the batch.
            tokio::spawn(self.clone().send(core.clone(), leader.clone(), addr));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the forwarding task ended")))
    }

    /// Sends what waits for `addr`, batch after batch, until nothing does.
    async fn send(self: Arc<Self>, core: Arc<NodeCore>, leader: Node, addr: String) {
        loop {
            let waiting = || {
                let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                queues.get(&addr).map_or(0, |q| q.items.len())
            };
            gather::while_arriving(waiting, gather::ROUNDS).await;
            let items = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let Some(queue) = queues.get_mut(&addr) else {
                    return;
                };
                let items = take_batch(&mut queue.items);
                if items.is_empty() {
                    queue.senders -= 1;
                    if queue.senders == 0 {
                        queues.remove(&addr);
                    }
                    return;
                }
                items
            };
            Counters::inc(&core.counters.forward_batches);
            let (writes, replies): (Vec<_>, Vec<_>) =
                items.into_iter().map(|i| (i.write, i.reply)).unzip();
            let request = pb::ForwardWritesRequest { writes };
            let answers = match forward::channel_to(&core, &leader) {
                Ok(channel) => ForwardClient::new(channel)
                    .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
                    .writes(forward::marked(&core, request, None))
                    .await
                    .map(|r| r.into_inner().answers),
                Err(e) => Err(Status::from(e)),
            };
            match answers {
                Ok(answers) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let status = Status::internal(format!(
                        "the leader answered {} of {} forwarded writes",
                        answers.len(),
                        replies.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
            }
        }
    }
}

/// The first writes of `items` that fit in one call (at least one).
fn take_batch(items: &mut Vec<Item>) -> Vec<Item> {
    let mut bytes = 0;
    let mut n = 0;
    for item in items.iter() {
        let size = item.write.encoded_len();
        if n == MAX_WRITES || (n > 0 && bytes + size > MAX_BATCH_BYTES) {
            break;
        }
        bytes += size;
        n += 1;
    }
    items.drain(..n).collect()
}

/// The refusal an answer carries, with its metadata (the leader hints).
fn status_of(answer: pb::ForwardedAnswer) -> Status {
    let mut status = Status::new(Code::from_i32(answer.code), answer.message);
    for h in answer.headers.into_iter().take(MAX_ANSWER_HEADERS) {
        let key = MetadataKey::from_bytes(h.key.as_bytes());
        let value = MetadataValue::try_from(h.value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            status.metadata_mut().insert(key, value);
        }
    }
    status
}

/// The answer for a write the leader handled: its response, or its refusal.
pub fn answer_of<Resp: Message>(result: Result<Response<Resp>, Status>) -> pb::ForwardedAnswer {
    match result {
        Ok(response) => pb::ForwardedAnswer {
            code: Code::Ok as i32,
            response: response.into_inner().encode_to_vec(),
            ..Default::default()
        },
        Err(status) => refusal(status),
    }
}

/// A refused write's answer, with the status metadata (ASCII entries only:
/// the leader hints).
pub fn refusal(status: Status) -> pb::ForwardedAnswer {
    pb::ForwardedAnswer {
        code: status.code() as i32,
        message: status.message().to_string(),
        response: Vec::new(),
        headers: status
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some(pb::AnswerHeader {
                    key: k.as_str().to_string(),
                    value: v.to_str().ok()?.to_string(),
                }),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .take(MAX_ANSWER_HEADERS)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: usize) -> Item {
        let (reply, _) = oneshot::channel();
        let write = pb::ForwardedWrite {
            kind: Kind::Put as i32,
            request: vec![0; bytes],
            ..Default::default()
        };
        Item { write, reply }
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_bytes_and_takes_at_least_one() {
        let mut items: Vec<Item> = (0..300).map(|_| item(10)).collect();
        assert_eq!(take_batch(&mut items).len(), MAX_WRITES);
        assert_eq!(items.len(), 300 - MAX_WRITES);
        let mut items: Vec<Item> = (0..40).map(|_| item(MAX_WRITE_BYTES)).collect();
        let first = take_batch(&mut items).len();
        assert!(
            first < 40 && first * MAX_WRITE_BYTES <= MAX_BATCH_BYTES,
            "{first}"
        );
        let mut big = vec![item(2 * MAX_BATCH_BYTES), item(1)];
        assert_eq!(
            take_batch(&mut big).len(),
            1,
            "an oversized write goes alone"
        );
        assert_eq!(take_batch(&mut Vec::new()).len(), 0);
    }

    #[test]
    fn a_refusal_keeps_its_code_message_and_hints() {
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert("x-nines-leader-id", MetadataValue::from_static("3"));
        let answer = answer_of::<pb::ForwardWritesResponse>(Err(status));
        let back = status_of(answer);
        assert_eq!(back.code(), Code::Unavailable);
        assert_eq!(back.message(), "not the leader");
        assert_eq!(back.metadata().get("x-nines-leader-id").unwrap(), "3");
        // Hostile headers are dropped, not trusted to parse.
        let answer = pb::ForwardedAnswer {
            code: 99,
            message: "odd".into(),
            response: Vec::new(),
            headers: vec![pb::AnswerHeader {
                key: "bad key\n".into(),
                value: "v".into(),
            }],
        };
        let back = status_of(answer);
        assert_eq!(back.code(), Code::Unknown);
        assert!(back.metadata().is_empty());
    }
}
