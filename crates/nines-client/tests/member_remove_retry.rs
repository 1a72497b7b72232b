//! A removal whose answer is lost: the retry hears etcd's "member not
//! found", and the client must report the removal it made, not a failure
//! (the chaos harness, told "failed", left the removed node running outside
//! the membership and the cluster on two voters).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nines_client::proto::cluster_server::{Cluster, ClusterServer};
use nines_client::proto::{self as pb};
use nines_client::{Client, ClientConfig};
use tonic::{Code, Request, Response, Status};

/// A cluster service whose first removal applies but answers UNAVAILABLE.
#[derive(Default)]
struct LosesFirstAnswer {
    members: Mutex<Vec<u64>>,
    removals: AtomicU32,
}

impl LosesFirstAnswer {
    fn list(&self) -> Vec<pb::Member> {
        let members = self.members.lock().unwrap();
        members
            .iter()
            .map(|&id| pb::Member {
                id,
                ..Default::default()
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for LosesFirstAnswer {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let first = self.removals.fetch_add(1, Ordering::SeqCst) == 0;
        {
            let mut members = self.members.lock().unwrap();
            let Some(at) = members.iter().position(|&m| m == id) else {
                return Err(Status::not_found("etcdserver: member not found"));
            };
            members.remove(at);
        }
        if first {
            return Err(Status::unavailable("the answer was lost"));
        }
        Ok(Response::new(pb::MemberRemoveResponse {
            header: None,
            members: self.list(),
        }))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: None,
            members: self.list(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_removal_whose_answer_was_lost_is_reported_done() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let service = LosesFirstAnswer {
        members: Mutex::new(vec![1, 2, 3]),
        ..Default::default()
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::new(service))
            .serve(addr),
    );
    let mut config = ClientConfig::new([addr.to_string()]);
    config.retry_deadline = Duration::from_secs(20);
    let client = Client::new(config).unwrap();
    // The server may take a moment to listen.
    let mut listed = Err(None);
    for _ in 0..100 {
        match client.member_list().await {
            Ok(list) => {
                listed = Ok(list);
                break;
            }
            Err(e) => listed = Err(Some(e)),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.expect("the fake server answers").members.len(), 3);

    let after = client
        .member_remove(2)
        .await
        .expect("removed, answer lost, retried");
    let ids: Vec<u64> = after.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 3]);

    // A member that was never there is still "not found".
    let err = client.member_remove(9).await.expect_err("never a member");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    server.abort();
}
