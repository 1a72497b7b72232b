//! The Grafana dashboard (`deploy/grafana`) and the alerting rules
//! (`deploy/prometheus`) name only metrics a running member exports: every
//! metric name in their PromQL is looked up on a real cluster's `/metrics`.
//! A misspelt or renamed metric would otherwise leave a panel empty or an
//! alert silent, with nothing to say so.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use nines_tests::http::{metrics_cluster, scrape};
use serde_json::Value;

const GENEROUS: Duration = Duration::from_secs(60);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/nines-dashboard.json"
);
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/nines-alerts.yml"
);

/// Series Prometheus makes itself: no member exports them.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Words of PromQL that read like a name but are not a metric: keywords
/// and aggregations (`sum by (x) (...)` puts `by` between `sum` and its
/// parenthesis).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a list of label names, not an expression.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads. Skips strings, label
/// matchers `{...}`, ranges `[...]`, Grafana variables (`$job`), numbers,
/// function names (a name followed by `(`) and label lists (`by (...)`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The index past the bracket that closes the one at `i`, strings
    // inside skipped.
    let close = |mut i: usize, open: char, shut: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = close(i, '{', '}'),
            '[' => i = close(i, '[', ']'),
            '$' => {
                i += 1;
                while i < chars.len() && (is_name_char(chars[i]) || "{}".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_name_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if called && LABEL_LISTS.contains(&name.as_str()) {
                    i = close(next, '(', ')');
                } else if !called && !KEYWORDS.contains(&name.to_ascii_lowercase().as_str()) {
                    names.insert(name);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index past the string literal starting at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

/// Every PromQL expression of the dashboard: panel targets, and the
/// metric of `label_values(metric, label)` variables.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    collect(dashboard, &mut exprs);
    exprs
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("definition", Value::String(d)) => {
                        if let Some(args) = d
                            .trim()
                            .strip_prefix("label_values(")
                            .and_then(|a| a.strip_suffix(')'))
                        {
                            // The metric (with any matchers) before the label.
                            let metric = args.rsplit_once(',').map_or(args, |(m, _)| m);
                            out.push(metric.to_string());
                        }
                    }
                    _ => collect(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        _ => {}
    }
}

fn alert_exprs(rules: &serde_yaml::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let Some(expr) = rule["expr"].as_str() {
                exprs.push(expr.to_string());
            }
        }
    }
    exprs
}

/// Every name the metrics page answers to: each sample's name, and a
/// histogram's base name for its `_bucket`, `_sum` and `_count` samples.
fn exported(samples: impl IntoIterator<Item = String>) -> HashSet<String> {
    let mut names = HashSet::new();
    for sample in samples {
        let name = sample.split('{').next().unwrap_or_default().to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.insert(base.to_string());
            }
        }
        names.insert(name);
    }
    names
}

/// The names used that no member exports, each with where it is used.
fn unexported(used: &[(String, String)], exported: &HashSet<String>) -> Vec<String> {
    used.iter()
        .filter(|(name, _)| {
            !exported.contains(name.as_str()) && !PROMETHEUS_OWN.contains(&name.as_str())
        })
        .map(|(name, expr)| format!("{name} (in `{expr}`)"))
        .collect()
}

/// (name, expression) for every metric name the dashboard and the alerts use.
fn used_names() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(ALERTS).expect("the alert rules"))
            .expect("the alert rules are YAML");
    let dashboard = dashboard_exprs(&dashboard);
    let alerts = alert_exprs(&rules);
    assert!(
        dashboard.len() >= 15,
        "dashboard expressions: {dashboard:?}"
    );
    assert!(alerts.len() >= 8, "alert expressions: {alerts:?}");
    let mut used = Vec::new();
    for expr in dashboard.iter().chain(&alerts) {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric found in `{expr}`");
        used.extend(names.into_iter().map(|n| (n, expr.clone())));
    }
    used
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(nines_a_bucket{job=~"$job", x="}"}[5m])))"#
        ),
        ["nines_a_bucket"]
    );
    assert_eq!(
        names("max without (instance) (nines_b) - ignoring (instance) group_right nines_c > 1e3"),
        ["nines_b", "nines_c"]
    );
    assert_eq!(
        names("1 - increase(nines_d[1h]) / 3600 and on() up == 0 offset 5m"),
        ["nines_d", "up"]
    );
    assert_eq!(names("time() - nines_e{job=~\"${job}\"}"), ["nines_e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let used = used_names();
    let (cluster, metrics) = metrics_cluster(&[]);
    let leader = cluster.stable_leader(GENEROUS).await;
    // Writes and a read through the leader: its request histograms get
    // their labelled series.
    let client = cluster.client_of(leader);
    for i in 0..10 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    client.get("k0").await.expect("get");
    let page = scrape(&metrics[&leader]).await.expect("a metrics page");
    let exported = exported(page.into_keys());

    let missing = unexported(&used, &exported);
    assert!(
        missing.is_empty(),
        "used in deploy/ but not exported by a member:\n{}",
        missing.join("\n")
    );
    // The check catches a misspelt name, and a name without the prefix.
    let misspelt = [
        ("nines_raft_has_leadr".to_string(), "x".to_string()),
        ("raft_has_leader".to_string(), "x".to_string()),
    ];
    assert_eq!(unexported(&misspelt, &exported).len(), 2);
}
