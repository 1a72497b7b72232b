//! Output formats: simple (etcdctl-like lines), json, and bordered tables.

use std::fmt::Write as _;
use std::io::{self, Write};

use nines_client::proto as pb;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

/// Renders bytes for JSON and tables: UTF-8 as is, anything else as
/// `hex:<lowercase hex>` so binary keys survive a round trip through text.
pub fn render_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(4 + 2 * bytes.len());
            s.push_str("hex:");
            for b in bytes {
                let _ = write!(s, "{b:02x}");
            }
            s
        }
    }
}

pub fn header_json(header: Option<&pb::ResponseHeader>) -> Value {
    match header {
        Some(h) => json!({
            "cluster_id": h.cluster_id,
            "member_id": h.member_id,
            "raft_term": h.raft_term,
            "revision": h.revision,
        }),
        None => Value::Null,
    }
}

pub fn kv_json(kv: &pb::KeyValue) -> Value {
    json!({
        "key": render_bytes(&kv.key),
        "value": render_bytes(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

/// The address in the first of etcd's URLs (nines serves one of each).
fn addr_of(urls: &[String]) -> &str {
    urls.first().map_or("", |u| {
        u.strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .unwrap_or(u)
    })
}

/// Where a member serves Raft traffic.
pub fn peer_addr(m: &pb::Member) -> &str {
    addr_of(&m.peer_ur_ls)
}

/// Where a member serves clients; empty until it started.
pub fn client_addr(m: &pb::Member) -> &str {
    addr_of(&m.client_ur_ls)
}

pub fn member_json(m: &pb::Member) -> Value {
    json!({
        "id": m.id,
        "raft_addr": peer_addr(m),
        "api_addr": client_addr(m),
        "is_learner": m.is_learner,
    })
}

pub fn members_json(header: Option<&pb::ResponseHeader>, members: &[pb::Member]) -> Value {
    json!({
        "header": header_json(header),
        "members": members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

pub fn write_json(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Simple output of a key-value: the raw key line, then the raw value line,
/// as etcdctl prints them (so values can be piped byte for byte).
pub fn write_kv_lines(out: &mut dyn Write, kv: &pb::KeyValue, keys_only: bool) -> io::Result<()> {
    out.write_all(&kv.key)?;
    out.write_all(b"\n")?;
    if !keys_only {
        out.write_all(&kv.value)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn kv_table(kvs: &[pb::KeyValue]) -> Table {
    let mut table = Table::new(&["KEY", "VALUE", "CREATE", "MOD", "VERSION"]);
    for kv in kvs {
        table.row(vec![
            render_bytes(&kv.key),
            render_bytes(&kv.value),
            kv.create_revision.to_string(),
            kv.mod_revision.to_string(),
            kv.version.to_string(),
        ]);
    }
    table
}

pub fn member_table(members: &[pb::Member]) -> Table {
    let mut table = Table::new(&["ID", "STATUS", "PEER ADDR", "CLIENT ADDR"]);
    for m in sorted_members(members) {
        table.row(vec![
            m.id.to_string(),
            member_status(m).into(),
            peer_addr(m).to_string(),
            client_addr(m).to_string(),
        ]);
    }
    table
}

pub fn sorted_members(members: &[pb::Member]) -> Vec<&pb::Member> {
    let mut sorted: Vec<_> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    sorted
}

pub fn member_status(m: &pb::Member) -> &'static str {
    if m.is_learner {
        "learner"
    } else {
        "voter"
    }
}

/// A bordered text table in the style of etcdctl's `-w table`.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        // Control characters (a newline in a value) would break the grid.
        self.rows.push(
            cells
                .into_iter()
                .map(|c| c.escape_debug().to_string())
                .collect(),
        );
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let rule: String = widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(w + 2)))
            .chain(["+\n".to_string()])
            .collect();
        let line = |cells: &[String]| -> String {
            let mut s = String::new();
            for (w, cell) in widths.iter().zip(cells) {
                let pad = w - cell.chars().count();
                let _ = write!(s, "| {cell}{} ", " ".repeat(pad));
            }
            s.push_str("|\n");
            s
        };
        let mut s = rule.clone();
        s.push_str(&line(&self.headers));
        s.push_str(&rule);
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s.push_str(&rule);
        s
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self.render().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_renders_as_text_and_binary_as_hex() {
        assert_eq!(render_bytes(b"hello/world"), "hello/world");
        assert_eq!(render_bytes("héllo".as_bytes()), "héllo");
        assert_eq!(render_bytes(b""), "");
        assert_eq!(render_bytes(&[0xff, 0x00, 0x1a]), "hex:ff001a");
        assert_eq!(render_bytes(b"ab\xc3"), "hex:6162c3");
    }

    #[test]
    fn kv_json_fields() {
        let kv = pb::KeyValue {
            key: b"k".to_vec(),
            value: vec![0xfe],
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv),
            json!({"key": "k", "value": "hex:fe", "create_revision": 2, "mod_revision": 3, "version": 2})
        );
    }

    #[test]
    fn table_layout() {
        let mut t = Table::new(&["KEY", "VALUE"]);
        t.row(vec!["a".into(), "line1\nline2".into()]);
        t.row(vec!["héllo".into(), "".into()]);
        assert_eq!(
            t.render(),
            "+-------+--------------+\n\
             | KEY   | VALUE        |\n\
             +-------+--------------+\n\
             | a     | line1\\nline2 |\n\
             | héllo |              |\n\
             +-------+--------------+\n"
        );
    }
}
