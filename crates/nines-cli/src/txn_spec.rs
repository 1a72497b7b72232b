//! The JSON transaction spec read by `nines txn`:
//!
//! ```json
//! {"compare": [{"key": "k", "target": "value", "op": "=", "value": "v"}],
//!  "success": [{"put": {"key": "k", "value": "v2"}}],
//!  "failure": [{"get": {"key": "k"}}]}
//! ```
//!
//! Each element is checked on its own so errors can say where the problem is
//! (`success[1].put: missing field `value``) rather than a byte offset.

use anyhow::{anyhow, bail, Context as _, Result};
use nines_client::proto as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use serde::Deserialize;
use serde_json::Value;

use crate::keys::{key_range, KeySelector};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    compare: Vec<Value>,
    #[serde(default)]
    success: Vec<Value>,
    #[serde(default)]
    failure: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareSpec {
    key: String,
    target: String,
    op: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSpec {
    key: String,
    value: String,
    #[serde(default)]
    prev_kv: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSpec {
    key: String,
    range_end: Option<String>,
    #[serde(default)]
    prefix: bool,
    #[serde(default)]
    from_key: bool,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    keys_only: bool,
    #[serde(default)]
    count_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelSpec {
    key: String,
    range_end: Option<String>,
    #[serde(default)]
    prefix: bool,
    #[serde(default)]
    from_key: bool,
    #[serde(default)]
    prev_kv: bool,
}

/// Parses a txn spec into the request sent to the server.
pub fn parse(text: &str) -> Result<pb::TxnRequest> {
    if text.trim().is_empty() {
        bail!("txn spec is empty (expected a JSON object with compare/success/failure)");
    }
    let value: Value = serde_json::from_str(text).context("invalid txn spec")?;
    // serde would also accept an array as a struct; a spec is always an object.
    if !value.is_object() {
        bail!("invalid txn spec: expected a JSON object with compare/success/failure");
    }
    let spec: Spec = serde_json::from_value(value).context("invalid txn spec")?;
    let compare = spec
        .compare
        .iter()
        .enumerate()
        .map(|(i, c)| parse_compare(c).with_context(|| format!("compare[{i}]")))
        .collect::<Result<_>>()?;
    Ok(pb::TxnRequest {
        compare,
        success: parse_ops(&spec.success, "success")?,
        failure: parse_ops(&spec.failure, "failure")?,
    })
}

fn parse_compare(value: &Value) -> Result<pb::Compare> {
    let spec: CompareSpec = serde_json::from_value(value.clone())?;
    if spec.key.is_empty() {
        bail!("key is empty");
    }
    let result = match spec.op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        other => bail!("unknown op {other:?} (=, !=, >, <)"),
    };
    let (target, union) = match spec.target.as_str() {
        "value" => {
            let Value::String(s) = &spec.value else {
                bail!("a value compare needs a string value, got {}", spec.value);
            };
            (
                CompareTarget::Value,
                TargetUnion::Value(s.as_bytes().to_vec()),
            )
        }
        "version" => (
            CompareTarget::Version,
            TargetUnion::Version(integer(&spec)?),
        ),
        "create" | "create_revision" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(integer(&spec)?),
        ),
        "mod" | "mod_revision" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(integer(&spec)?),
        ),
        other => bail!("unknown target {other:?} (value, version, create, mod)"),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: spec.key.into_bytes(),
        target_union: Some(union),
        ..Default::default()
    })
}

fn integer(spec: &CompareSpec) -> Result<i64> {
    spec.value.as_i64().ok_or_else(|| {
        anyhow!(
            "a {} compare needs an integer value, got {}",
            spec.target,
            spec.value
        )
    })
}

fn parse_ops(ops: &[Value], branch: &str) -> Result<Vec<pb::RequestOp>> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_op(op, &format!("{branch}[{i}]")))
        .collect()
}

fn parse_op(value: &Value, at: &str) -> Result<pb::RequestOp> {
    let object = value
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| anyhow!("{at}: expected an object with exactly one of put, get, del"))?;
    let (kind, body) = object.iter().next().expect("length checked above");
    let at = format!("{at}.{kind}");
    let request = match kind.as_str() {
        "put" => {
            let put: PutSpec = serde_json::from_value(body.clone()).context(at.clone())?;
            non_empty(&put.key, false, &at)?;
            Request::RequestPut(pb::PutRequest {
                key: put.key.into_bytes(),
                value: put.value.into_bytes(),
                prev_kv: put.prev_kv,
                ..Default::default()
            })
        }
        "get" => {
            let get: GetSpec = serde_json::from_value(body.clone()).context(at.clone())?;
            non_empty(&get.key, get.prefix || get.from_key, &at)?;
            if get.limit < 0 {
                bail!("{at}: limit must not be negative");
            }
            let (key, range_end) = key_range(&KeySelector {
                key: get.key.as_bytes(),
                range_end: get.range_end.as_deref().map(str::as_bytes),
                prefix: get.prefix,
                from_key: get.from_key,
            })
            .context(at.clone())?;
            Request::RequestRange(pb::RangeRequest {
                key,
                range_end,
                limit: get.limit,
                keys_only: get.keys_only,
                count_only: get.count_only,
                serializable: false,
                revision: 0,
                ..Default::default()
            })
        }
        "del" | "delete" => {
            let del: DelSpec = serde_json::from_value(body.clone()).context(at.clone())?;
            non_empty(&del.key, del.prefix || del.from_key, &at)?;
            let (key, range_end) = key_range(&KeySelector {
                key: del.key.as_bytes(),
                range_end: del.range_end.as_deref().map(str::as_bytes),
                prefix: del.prefix,
                from_key: del.from_key,
            })
            .context(at.clone())?;
            Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: del.prev_kv,
            })
        }
        other => bail!("{at}: unknown operation {other:?} (put, get, del)"),
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// An empty key is only meaningful as "all keys" (with prefix or from_key).
fn non_empty(key: &str, ranged: bool, at: &str) -> Result<()> {
    if key.is_empty() && !ranged {
        bail!("{at}: key is empty");
    }
    Ok(())
}

#[cfg(test)]
#[path = "txn_spec_tests.rs"]
mod tests;
