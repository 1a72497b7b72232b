//! `nines txn`: runs a JSON txn spec (see `txn_spec`) from a file or stdin.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use nines_client::proto as pb;
use pb::response_op::Response;
use serde_json::{json, Value};

use super::kv::{delete_json, print_delete, print_put, print_range, put_json, range_json};
use crate::global::Context;
use crate::output::{header_json, write_json, Format};
use crate::txn_spec;

#[derive(Debug, Args)]
#[command(after_help = "\
Spec example:
  {\"compare\": [{\"key\": \"k\", \"target\": \"value\", \"op\": \"=\", \"value\": \"v\"}],
   \"success\": [{\"put\": {\"key\": \"k\", \"value\": \"v2\"}}],
   \"failure\": [{\"get\": {\"key\": \"k\"}}]}
targets: value, version, create, mod; ops: =, !=, >, <;
operations: put {key, value, prev_kv}, get {key, range_end, prefix, from_key, limit,
keys_only, count_only}, del {key, range_end, prefix, from_key, prev_kv}")]
pub struct TxnArgs {
    /// Read the spec from this file instead of stdin.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
}

impl TxnArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let text = match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading txn spec {}", path.display()))?,
            None => {
                let mut text = String::new();
                io::stdin()
                    .read_to_string(&mut text)
                    .context("reading txn spec from stdin")?;
                text
            }
        };
        let request = txn_spec::parse(&text)?;
        let resp = ctx.client.txn(request).await?;
        print_txn(&mut io::stdout().lock(), ctx.format, &resp)?;
        Ok(())
    }
}

fn txn_json(resp: &pb::TxnResponse) -> Value {
    let responses: Vec<Value> = resp
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Response::ResponsePut(r)) => json!({ "put": put_json(r) }),
            Some(Response::ResponseRange(r)) => json!({ "range": range_json(r) }),
            Some(Response::ResponseDeleteRange(r)) => json!({ "delete_range": delete_json(r) }),
            // A nested txn (etcd 3.5; nines refuses to run one).
            Some(Response::ResponseTxn(r)) => json!({ "txn": txn_json(r) }),
            None => Value::Null,
        })
        .collect();
    json!({
        "header": header_json(resp.header.as_ref()),
        "succeeded": resp.succeeded,
        "responses": responses,
    })
}

/// etcdctl's layout: SUCCESS or FAILURE, then each result after a blank line.
fn print_txn(out: &mut dyn Write, format: Format, resp: &pb::TxnResponse) -> io::Result<()> {
    if format == Format::Json {
        return write_json(out, &txn_json(resp));
    }
    writeln!(
        out,
        "{}",
        if resp.succeeded { "SUCCESS" } else { "FAILURE" }
    )?;
    for op in &resp.responses {
        writeln!(out)?;
        match &op.response {
            Some(Response::ResponsePut(r)) => print_put(out, format, r)?,
            Some(Response::ResponseRange(r)) => print_range(out, format, r, Default::default())?,
            Some(Response::ResponseDeleteRange(r)) => print_delete(out, format, r)?,
            Some(Response::ResponseTxn(r)) => print_txn(out, format, r)?,
            None => writeln!(out, "(empty response)")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::TxnResponse {
        let kv = pb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            lease: 0,
        };
        let op = |response| pb::ResponseOp {
            response: Some(response),
        };
        pb::TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                op(Response::ResponsePut(pb::PutResponse::default())),
                op(Response::ResponseRange(pb::RangeResponse {
                    kvs: vec![kv],
                    count: 1,
                    ..Default::default()
                })),
                op(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                    deleted: 3,
                    ..Default::default()
                })),
            ],
        }
    }

    #[test]
    fn simple_output_lists_each_result() {
        let mut out = Vec::new();
        print_txn(&mut out, Format::Simple, &sample()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SUCCESS\n\nOK\n\nk\nv\n\n3\n"
        );
    }

    #[test]
    fn json_output_tags_each_result() {
        let v = txn_json(&sample());
        assert_eq!(v["succeeded"], true);
        assert_eq!(v["responses"][1]["range"]["kvs"][0]["value"], "v");
        assert_eq!(v["responses"][2]["delete_range"]["deleted"], 3);
        assert!(v["responses"][0]["put"]["prev_kv"].is_null());
    }
}
