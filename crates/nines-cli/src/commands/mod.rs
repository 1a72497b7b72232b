//! One module per command group; each args type has
//! `async fn run(self, ctx: &Context) -> anyhow::Result<()>`.

pub mod auth;
pub mod backup;
pub mod compaction;
pub mod elect;
pub mod endpoint;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod member;
pub mod role;
pub mod snapshot;
pub mod txn;
pub mod user;
pub mod watch;
