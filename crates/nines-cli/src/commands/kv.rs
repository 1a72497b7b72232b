//! put, get, del, and the printers of their responses (shared with txn).

use std::io::{self, Write};

use anyhow::Result;
use clap::Args;
use nines_client::proto as pb;
use serde_json::json;

use crate::global::Context;
use crate::keys::{key_range, KeySelector};
use crate::output::{header_json, kv_json, kv_table, write_json, write_kv_lines, Format, Table};

#[derive(Debug, Args)]
pub struct PutArgs {
    key: String,
    /// The value (values starting with '-' are accepted as is).
    #[arg(allow_hyphen_values = true)]
    value: String,
    /// Also print the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Attach the key to this lease (hex ID, as `lease grant` prints it).
    #[arg(long, value_parser = crate::commands::lease::parse_lease_id)]
    lease: Option<i64>,
}

impl PutArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let resp = ctx
            .client
            .put_request(pb::PutRequest {
                key: self.key.into_bytes(),
                value: self.value.into_bytes(),
                prev_kv: self.prev_kv,
                lease: self.lease.unwrap_or(0),
                ..Default::default()
            })
            .await?;
        print_put(&mut io::stdout().lock(), ctx.format, &resp)?;
        Ok(())
    }
}

/// Key-selection flags shared by get and del.
#[derive(Debug, Args)]
struct Selection {
    key: String,
    /// End of the range [KEY, RANGE_END).
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    range_end: Option<String>,
    /// Select every key starting with KEY.
    #[arg(long, conflicts_with = "from_key")]
    prefix: bool,
    /// Select every key >= KEY.
    #[arg(long)]
    from_key: bool,
}

impl Selection {
    fn range(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        key_range(&KeySelector {
            key: self.key.as_bytes(),
            range_end: self.range_end.as_deref().map(str::as_bytes),
            prefix: self.prefix,
            from_key: self.from_key,
        })
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    selection: Selection,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Keys without values.
    #[arg(long)]
    keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    count_only: bool,
    /// Read from any member without a quorum round (may be stale).
    #[arg(long)]
    serializable: bool,
    /// Read the store as it was at this revision (0: the current one).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Order of the result (etcdctl): ASCEND or DESCEND.
    #[arg(long, value_parser = ["ASCEND", "DESCEND"])]
    order: Option<String>,
    /// Sort by (etcdctl): CREATE, KEY, MODIFY, VALUE or VERSION.
    #[arg(long, value_parser = ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"])]
    sort_by: Option<String>,
    /// Only keys modified at or after this revision (0: no bound).
    #[arg(long, default_value_t = 0)]
    min_mod_revision: i64,
    /// Only keys modified at or before this revision (0: no bound).
    #[arg(long, default_value_t = 0)]
    max_mod_revision: i64,
    /// Only keys created at or after this revision (0: no bound).
    #[arg(long, default_value_t = 0)]
    min_create_revision: i64,
    /// Only keys created at or before this revision (0: no bound).
    #[arg(long, default_value_t = 0)]
    max_create_revision: i64,
}

/// etcdctl's --order and --sort-by, as the proto's enum values.
fn sort_of(order: Option<&str>, sort_by: Option<&str>) -> (i32, i32) {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let order = match order {
        Some("ASCEND") => O::Ascend,
        Some("DESCEND") => O::Descend,
        _ => O::None,
    };
    let target = match sort_by {
        Some("CREATE") => T::Create,
        Some("MODIFY") => T::Mod,
        Some("VALUE") => T::Value,
        Some("VERSION") => T::Version,
        _ => T::Key,
    };
    (order as i32, target as i32)
}

impl GetArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let (key, range_end) = self.selection.range()?;
        let (sort_order, sort_target) = sort_of(self.order.as_deref(), self.sort_by.as_deref());
        let resp = ctx
            .client
            .range(pb::RangeRequest {
                key,
                range_end,
                limit: self.limit.into(),
                keys_only: self.keys_only,
                count_only: self.count_only,
                serializable: self.serializable,
                revision: self.rev,
                sort_order,
                sort_target,
                min_mod_revision: self.min_mod_revision,
                max_mod_revision: self.max_mod_revision,
                min_create_revision: self.min_create_revision,
                max_create_revision: self.max_create_revision,
            })
            .await?;
        let shape = RangeShape {
            keys_only: self.keys_only,
            count_only: self.count_only,
        };
        print_range(&mut io::stdout().lock(), ctx.format, &resp, shape)?;
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct DelArgs {
    #[command(flatten)]
    selection: Selection,
    /// Also print the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
}

impl DelArgs {
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let (key, range_end) = self.selection.range()?;
        let resp = ctx
            .client
            .delete_range(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: self.prev_kv,
            })
            .await?;
        print_delete(&mut io::stdout().lock(), ctx.format, &resp)?;
        Ok(())
    }
}

pub fn put_json(resp: &pb::PutResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "prev_kv": resp.prev_kv.as_ref().map(kv_json),
    })
}

pub fn print_put(out: &mut dyn Write, format: Format, resp: &pb::PutResponse) -> io::Result<()> {
    match format {
        Format::Json => write_json(out, &put_json(resp)),
        Format::Simple => {
            writeln!(out, "OK")?;
            match &resp.prev_kv {
                Some(kv) => write_kv_lines(out, kv, false),
                None => Ok(()),
            }
        }
        Format::Table => {
            writeln!(out, "OK")?;
            match &resp.prev_kv {
                Some(kv) => kv_table(std::slice::from_ref(kv)).write(out),
                None => Ok(()),
            }
        }
    }
}

/// Which parts of a range response the user asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeShape {
    pub keys_only: bool,
    pub count_only: bool,
}

pub fn range_json(resp: &pb::RangeResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "kvs": resp.kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "count": resp.count,
        "more": resp.more,
    })
}

pub fn print_range(
    out: &mut dyn Write,
    format: Format,
    resp: &pb::RangeResponse,
    shape: RangeShape,
) -> io::Result<()> {
    match format {
        Format::Json => write_json(out, &range_json(resp)),
        // etcdctl prints nothing for --count-only in simple form; a count
        // nobody can see is useless, so print it.
        Format::Simple if shape.count_only => writeln!(out, "{}", resp.count),
        Format::Simple => {
            for kv in &resp.kvs {
                write_kv_lines(out, kv, shape.keys_only)?;
            }
            Ok(())
        }
        Format::Table if shape.count_only => {
            let mut table = Table::new(&["COUNT"]);
            table.row(vec![resp.count.to_string()]);
            table.write(out)
        }
        Format::Table => kv_table(&resp.kvs).write(out),
    }
}

pub fn delete_json(resp: &pb::DeleteRangeResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "deleted": resp.deleted,
        "prev_kvs": resp.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

pub fn print_delete(
    out: &mut dyn Write,
    format: Format,
    resp: &pb::DeleteRangeResponse,
) -> io::Result<()> {
    match format {
        Format::Json => write_json(out, &delete_json(resp)),
        Format::Simple => {
            writeln!(out, "{}", resp.deleted)?;
            for kv in &resp.prev_kvs {
                write_kv_lines(out, kv, false)?;
            }
            Ok(())
        }
        Format::Table => {
            writeln!(out, "{}", resp.deleted)?;
            if resp.prev_kvs.is_empty() {
                return Ok(());
            }
            kv_table(&resp.prev_kvs).write(out)
        }
    }
}
