//! The same scripted etcdctl (Debian's 3.4) session against a real 3-node
//! etcd (Debian's etcd-server) and a 3-node nines, in one run: every
//! command's stdout, stderr and exit status must be equal once member and
//! cluster ids, raft terms, timestamps and client ids are masked. Revisions
//! are compared, so both start empty and the session is fixed.
//!
//! etcdctl 3.4's stderr includes the client's retry log line for a failed
//! call, which names the gRPC status code: codes are compared too.
//!
//! Not compared (etcd 3.4 and nines differ on purpose): `--count-only` does
//! not exist in etcdctl 3.4; leases and watches land with their own issues.

use std::time::{Duration, Instant};

use nines_tests::etcd::EtcdCluster;
use nines_tests::etcdctl::ctl;
use nines_tests::{Cluster, ClusterOptions};

/// One etcdctl call: its arguments and what it reads on stdin.
struct Step(&'static [&'static str], &'static str);

const NO_INPUT: &str = "";

/// Every kind of KV call etcdctl makes, in both output formats, and the
/// errors a client matches on. Revision 1 is the empty store.
const SESSION: &[Step] = &[
    Step(&["get", "a", "-w", "json"], NO_INPUT),
    // etcd accepts compacting a store never compacted to 0.
    Step(&["compaction", "0"], NO_INPUT),
    Step(&["put", "a", "1"], NO_INPUT),
    Step(&["put", "b", "2"], NO_INPUT),
    Step(&["put", "c", "3"], NO_INPUT),
    Step(&["put", "a", "10", "-w", "json"], NO_INPUT),
    Step(&["put", "foo/x", "x1"], NO_INPUT),
    Step(&["put", "foo/y", "y1"], NO_INPUT),
    Step(&["put", "foo/z", "z1"], NO_INPUT),
    Step(&["put", "a", "11", "--prev-kv"], NO_INPUT),
    Step(&["put", "a", "12", "--prev-kv", "-w", "json"], NO_INPUT),
    Step(&["put", "new", "n", "--prev-kv", "-w", "json"], NO_INPUT),
    Step(&["get", "a"], NO_INPUT),
    Step(&["get", "a", "-w", "json"], NO_INPUT),
    Step(&["get", "a", "-w", "fields"], NO_INPUT),
    Step(&["get", "a", "c"], NO_INPUT),
    Step(&["get", "c", "a"], NO_INPUT),
    Step(&["get", "a", "--rev=1", "-w", "json"], NO_INPUT),
    Step(&["get", "foo", "--prefix"], NO_INPUT),
    Step(&["get", "foo", "--prefix", "-w", "json"], NO_INPUT),
    Step(&["get", "foo", "--prefix", "--keys-only"], NO_INPUT),
    Step(&["get", "foo", "--prefix", "--limit=2", "-w", "json"], NO_INPUT),
    // A negative limit is no limit.
    Step(&["get", "foo", "--prefix", "--limit=-1"], NO_INPUT),
    Step(&["get", "foo", "--prefix", "--limit=2", "-w", "fields"], NO_INPUT),
    Step(&["get", "", "--prefix", "--keys-only"], NO_INPUT),
    Step(&["get", "b", "--from-key"], NO_INPUT),
    Step(&["get", "b", "--from-key", "--limit=2", "--keys-only"], NO_INPUT),
    Step(&["get", "", "--from-key", "--print-value-only"], NO_INPUT),
    Step(
        &["get", "foo", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"],
        NO_INPUT,
    ),
    Step(
        &[
            "get",
            "",
            "--from-key",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "--keys-only",
        ],
        NO_INPUT,
    ),
    Step(
        &["get", "", "--from-key", "--sort-by=CREATE", "-w", "json"],
        NO_INPUT,
    ),
    Step(
        &["get", "", "--from-key", "--sort-by=VALUE", "--order=DESCEND"],
        NO_INPUT,
    ),
    Step(
        &["get", "", "--from-key", "--sort-by=KEY", "--order=DESCEND"],
        NO_INPUT,
    ),
    Step(
        &[
            "get",
            "",
            "--from-key",
            "--sort-by=MODIFY",
            "--limit=3",
            "-w",
            "json",
        ],
        NO_INPUT,
    ),
    Step(&["get", "a", "--rev=2"], NO_INPUT),
    Step(&["get", "a", "--rev=5", "-w", "json"], NO_INPUT),
    Step(&["get", "", "--from-key", "--rev=3"], NO_INPUT),
    Step(&["get", "nothere"], NO_INPUT),
    Step(&["get", "nothere", "-w", "json"], NO_INPUT),
    Step(&["get", "a", "--rev=999"], NO_INPUT),
    Step(&["--hex", "get", "a"], NO_INPUT),
    Step(&["del", "nothere"], NO_INPUT),
    Step(&["del", "nothere", "-w", "json"], NO_INPUT),
    Step(&["del", "c", "a"], NO_INPUT),
    Step(&["del", "b", "-w", "json"], NO_INPUT),
    Step(&["del", "foo/x", "--prev-kv"], NO_INPUT),
    Step(&["del", "foo", "--prefix", "--prev-kv", "-w", "json"], NO_INPUT),
    Step(&["del", "new", "--prev-kv", "-w", "fields"], NO_INPUT),
    // Transactions from stdin: compares, then success ops, then failure ops.
    Step(
        &["txn"],
        "value(\"a\") = \"12\"\nmod(\"c\") > \"0\"\n\nput c 30\nget a\ndel nothere\n\nput c wrong\n\n",
    ),
    Step(
        &["txn", "-w", "json"],
        "version(\"a\") = \"1\"\n\nput c wrong\n\nget c\nput d 4\n\n",
    ),
    Step(&["txn"], "create(\"zz\") = \"0\"\n\nput zz 1\n\n\n"),
    Step(
        &["txn", "-w", "json"],
        "value(\"a\") != \"12\"\n\n\nget a\nget nothere\n\n",
    ),
    Step(
        &["txn", "-w", "fields"],
        "value(\"missing\") = \"x\"\n\nput c wrong\n\ndel zz --prev-kv\nput d 5 --prev-kv\n\n",
    ),
    Step(
        &["txn", "-w", "json"],
        "version(\"missing\") = \"0\"\ncreate(\"a\") = \"2\"\nmod(\"a\") < \"100\"\n\nget a --prefix\nget foo --prefix --keys-only\n\n\n",
    ),
    Step(&["txn"], "\nput e 5\n\n\n"),
    // A branch may not put a key it deletes; two deletes may overlap.
    Step(&["txn"], "\nput q2 1\ndel q2\n\n\n"),
    Step(&["txn"], "\ndel q1 q3\nput q2 1\n\n\n"),
    Step(&["txn", "-w", "json"], "\ndel q1 q3\ndel q2 q4\n\nput q2 1\ndel q2\n\n"),
    Step(&["txn", "-w", "json"], "value(\"e\") = \"5\"\n\ndel e\n\n\n"),
    Step(&["get", "", "--from-key", "-w", "json"], NO_INPUT),
    // Compaction, reads around it, and what cannot be compacted.
    Step(&["compaction", "5"], NO_INPUT),
    Step(&["get", "a", "--rev=4"], NO_INPUT),
    Step(&["get", "a", "--rev=4", "-w", "json"], NO_INPUT),
    Step(&["get", "a", "--rev=5"], NO_INPUT),
    Step(&["get", "", "--from-key", "--rev=5", "--keys-only"], NO_INPUT),
    Step(&["compaction", "3"], NO_INPUT),
    Step(&["compaction", "5"], NO_INPUT),
    Step(&["compaction", "99"], NO_INPUT),
    Step(&["compaction", "8", "--physical"], NO_INPUT),
    Step(&["get", "", "--from-key", "--rev=7"], NO_INPUT),
    Step(&["get", "", "--from-key", "--rev=8", "-w", "json"], NO_INPUT),
    // Bad requests.
    Step(&["put", "", "x"], NO_INPUT),
    Step(&["get", ""], NO_INPUT),
    Step(&["del", ""], NO_INPUT),
    Step(&["txn"], "value(\"a\") = \"12\"\n\nput \"\" v\n\n\n"),
    Step(&["get", "", "--from-key", "--keys-only", "-w", "json"], NO_INPUT),
    // Puts that keep the value or the lease of the current version.
    Step(&["put", "iv", "1"], NO_INPUT),
    Step(&["put", "iv", "--ignore-value", "-w", "json"], NO_INPUT),
    Step(&["put", "iv", "2", "--ignore-lease", "--prev-kv"], NO_INPUT),
    Step(&["get", "iv", "-w", "json"], NO_INPUT),
    Step(&["put", "nothere", "--ignore-value"], NO_INPUT),
    Step(&["put", "nothere", "x", "--ignore-lease"], NO_INPUT),
    Step(&["put", "iv", "--ignore-value", "--ignore-lease"], NO_INPUT),
    Step(&["get", "iv", "-w", "json"], NO_INPUT),
];

/// Masks what legitimately differs between two clusters: ids, raft terms,
/// the client log line's time and client id.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut line = line.to_string();
        for (key, closing, end) in [
            ("\"cluster_id\":", "", ','),
            ("\"member_id\":", "", ','),
            ("\"raft_term\":", "", '}'),
            ("\"ClusterID\" : ", "", '\n'),
            ("\"MemberID\" : ", "", '\n'),
            ("\"RaftTerm\" : ", "", '\n'),
            ("\"ts\":\"", "\"", '"'),
            ("\"target\":\"", "\"", '"'),
        ] {
            line = mask(&line, key, closing, end);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Replaces the value after each `key` (up to `end`, or the line's end)
/// with `*`.
fn mask(line: &str, key: &str, closing: &str, end: char) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        out.push_str(&rest[..at + key.len()]);
        rest = &rest[at + key.len()..];
        let stop = rest.find([end, ',']).unwrap_or(rest.len());
        out.push('*');
        out.push_str(closing);
        rest = &rest[stop..];
        if !closing.is_empty() {
            rest = rest.strip_prefix(closing).unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

/// The session's transcript: per step, the command, its exit status,
/// stdout and stderr, normalized.
fn transcript(endpoint: &str) -> Vec<String> {
    let session = SESSION
        .iter()
        .map(|Step(args, stdin)| (args.to_vec(), stdin.to_string()));
    session
        .chain([long_txn()])
        .map(|(args, stdin)| {
            let out = ctl(endpoint, &args, &stdin);
            normalize(&format!(
                "$ etcdctl {args:?} <<< {stdin:?}\n[{}]\n{}{}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            ))
        })
        .collect()
}

/// 100 compares and 100 puts: etcd's op limit (128) is on the longest
/// list, not the sum.
fn long_txn() -> (Vec<&'static str>, String) {
    let compares: String = (0..100)
        .map(|i| format!("version(\"L{i}\") = \"0\"\n"))
        .collect();
    let puts: String = (0..100).map(|i| format!("put L{i} v\n")).collect();
    (vec!["txn", "-w", "json"], format!("{compares}\n{puts}\n\n"))
}

/// Waits until every nines member names the same leader: a member that
/// knows none refuses a write, and etcdctl does not retry a put.
async fn settled(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = cluster.wait_leader(Duration::from_secs(60)).await;
        let mut known = 0;
        for n in &cluster.nodes {
            if cluster
                .status(n.id)
                .await
                .is_some_and(|s| s.leader_id == leader)
            {
                known += 1;
            }
        }
        if known == cluster.nodes.len() {
            return;
        }
        assert!(Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_matches_etcd() {
    let etcd = EtcdCluster::start(3);
    let expected = transcript(&etcd.client_urls[0]);
    drop(etcd);

    // etcd compacts nothing by itself unless told to; neither may nines here.
    let options = ClusterOptions {
        args: vec!["--auto-compaction-retention=0".into()],
        ..Default::default()
    };
    let nines = Cluster::start(options);
    settled(&nines).await;
    let endpoint = format!("http://{}", nines.node(1).client_addr);
    let actual = transcript(&endpoint);

    let differences: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("--- etcd\n{e}+++ nines\n{a}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} steps differ:\n{}",
        differences.len(),
        SESSION.len(),
        differences.join("\n")
    );
}

#[test]
fn normalizing_masks_only_ids_terms_and_client_noise() {
    let json = r#"{"header":{"cluster_id":1,"member_id":22,"revision":7,"raft_term":3},"count":1}"#;
    assert_eq!(
        normalize(json),
        "{\"header\":{\"cluster_id\":*,\"member_id\":*,\"revision\":7,\"raft_term\":*},\"count\":1}\n"
    );
    let fields = "\"ClusterID\" : 5\n\"Revision\" : 9\n\"RaftTerm\" : 2\n";
    assert_eq!(
        normalize(fields),
        "\"ClusterID\" : *\n\"Revision\" : 9\n\"RaftTerm\" : *\n"
    );
    let warn = r#"{"level":"warn","ts":"2026-01-01T00:00:00Z","target":"endpoint://client-1/x","error":"rpc error: code = OutOfRange"}"#;
    assert_eq!(
        normalize(warn),
        "{\"level\":\"warn\",\"ts\":\"*\",\"target\":\"*\",\"error\":\"rpc error: code = OutOfRange\"}\n"
    );
}
