//! etcd's `Auth` service: auth is not there yet (the TLS/auth issue), so
//! `AuthStatus` says disabled, which is what etcd clients check before
//! authenticating; the rest answers UNIMPLEMENTED.

use std::sync::Arc;

use nines_proto::etcd::etcdserverpb as epb;
use tonic::{Response, Status};

use super::convert;
use crate::core::NodeCore;

pub struct EtcdAuth {
    pub core: Arc<NodeCore>,
}

#[tonic::async_trait]
impl epb::auth_server::Auth for EtcdAuth {
    async fn auth_status(
        &self,
        _request: tonic::Request<epb::AuthStatusRequest>,
    ) -> Result<Response<epb::AuthStatusResponse>, Status> {
        let header = convert::header(self.core.header(self.core.reader.revision()));
        Ok(Response::new(epb::AuthStatusResponse {
            header: Some(header),
            enabled: false,
            auth_revision: 0,
        }))
    }
}
