use super::*;
use crate::error::describe;

fn err(text: &str) -> String {
    describe(&parse(text).expect_err("spec should be rejected"))
}

#[test]
fn full_spec() {
    let req = parse(
        r#"{
          "compare": [
            {"key": "k", "target": "value", "op": "=", "value": "v"},
            {"key": "k", "target": "version", "op": ">", "value": 2},
            {"key": "c", "target": "create", "op": "<", "value": 10},
            {"key": "m", "target": "mod", "op": "!=", "value": 0}
          ],
          "success": [
            {"put": {"key": "k", "value": "v2", "prev_kv": true}},
            {"get": {"key": "p/", "prefix": true}},
            {"del": {"key": "d", "prefix": false}}
          ],
          "failure": [{"get": {"key": "k"}}]
        }"#,
    )
    .unwrap();
    let expected = pb::TxnRequest {
        compare: vec![
            pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: b"k".to_vec(),
                target_union: Some(TargetUnion::Value(b"v".to_vec())),
                ..Default::default()
            },
            pb::Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Version as i32,
                key: b"k".to_vec(),
                target_union: Some(TargetUnion::Version(2)),
                ..Default::default()
            },
            pb::Compare {
                result: CompareResult::Less as i32,
                target: CompareTarget::Create as i32,
                key: b"c".to_vec(),
                target_union: Some(TargetUnion::CreateRevision(10)),
                ..Default::default()
            },
            pb::Compare {
                result: CompareResult::NotEqual as i32,
                target: CompareTarget::Mod as i32,
                key: b"m".to_vec(),
                target_union: Some(TargetUnion::ModRevision(0)),
                ..Default::default()
            },
        ],
        success: vec![
            op(Request::RequestPut(pb::PutRequest {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                prev_kv: true,
                ..Default::default()
            })),
            op(Request::RequestRange(pb::RangeRequest {
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec(),
                ..Default::default()
            })),
            op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b"d".to_vec(),
                ..Default::default()
            })),
        ],
        failure: vec![op(Request::RequestRange(pb::RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }))],
    };
    assert_eq!(req, expected);
}

fn op(request: Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

#[test]
fn empty_object_and_missing_branches_are_fine() {
    assert_eq!(parse("{}").unwrap(), pb::TxnRequest::default());
    let req = parse(r#"{"success": [{"del": {"key": "", "prefix": true}}]}"#).unwrap();
    assert_eq!(
        req.success,
        vec![op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        }))]
    );
}

#[test]
fn ranges_limits_and_aliases() {
    let req = parse(
        r#"{"success": [
            {"get": {"key": "a", "range_end": "c", "limit": 5, "keys_only": true}},
            {"get": {"key": "m", "from_key": true, "count_only": true}},
            {"delete": {"key": "a", "range_end": "b", "prev_kv": true}}
        ], "compare": [{"key": "k", "target": "mod_revision", "op": "==", "value": 7}]}"#,
    )
    .unwrap();
    assert_eq!(
        req.success[0],
        op(Request::RequestRange(pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            limit: 5,
            keys_only: true,
            ..Default::default()
        }))
    );
    assert_eq!(
        req.success[1],
        op(Request::RequestRange(pb::RangeRequest {
            key: b"m".to_vec(),
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        }))
    );
    assert_eq!(
        req.success[2],
        op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            prev_kv: true,
        }))
    );
    assert_eq!(
        req.compare[0].target_union,
        Some(TargetUnion::ModRevision(7))
    );
}

#[test]
fn malformed_specs_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("", "txn spec is empty"),
        ("   \n", "txn spec is empty"),
        ("not json", "invalid txn spec"),
        ("[]", "invalid txn spec"),
        (r#"{"sucess": []}"#, "unknown field `sucess`"),
        (r#"{"compare": {}}"#, "invalid txn spec"),
        (
            r#"{"compare": [{"key": "k", "target": "value", "op": "=", "value": 1}]}"#,
            "compare[0]: a value compare needs a string value, got 1",
        ),
        (
            r#"{"compare": [{"key": "k", "target": "version", "op": "=", "value": "1"}]}"#,
            "compare[0]: a version compare needs an integer value, got \"1\"",
        ),
        (
            r#"{"compare": [{"key": "k", "target": "mod", "op": "=", "value": 1.5}]}"#,
            "compare[0]: a mod compare needs an integer value",
        ),
        (
            r#"{"compare": [{"key": "k", "target": "lease", "op": "=", "value": 1}]}"#,
            "compare[0]: unknown target \"lease\"",
        ),
        (
            r#"{"compare": [{"key": "k", "target": "value", "op": ">=", "value": "v"}]}"#,
            "compare[0]: unknown op \">=\"",
        ),
        (
            r#"{"compare": [{"key": "k", "target": "value", "value": "v"}]}"#,
            "compare[0]: missing field `op`",
        ),
        (
            r#"{"compare": [{"key": "", "target": "value", "op": "=", "value": "v"}]}"#,
            "compare[0]: key is empty",
        ),
        (
            r#"{"success": [{"put": {"key": "k"}}]}"#,
            "success[0].put: missing field `value`",
        ),
        (
            r#"{"success": [{"put": {"key": "k", "value": 3}}]}"#,
            "success[0].put: invalid type: integer `3`, expected a string",
        ),
        (
            r#"{"success": [{"put": {"key": "", "value": "v"}}]}"#,
            "success[0].put: key is empty",
        ),
        (
            r#"{"failure": [{"get": {"key": "k"}}, {"upsert": {"key": "k"}}]}"#,
            "failure[1].upsert: unknown operation \"upsert\"",
        ),
        (
            r#"{"success": [{"put": {"key": "k", "value": "v"}, "get": {"key": "k"}}]}"#,
            "success[0]: expected an object with exactly one of put, get, del",
        ),
        (r#"{"success": ["put"]}"#, "success[0]: expected an object"),
        (
            r#"{"success": [{"get": {"key": "k", "prefx": true}}]}"#,
            "success[0].get: unknown field `prefx`",
        ),
        (
            r#"{"success": [{"get": {"key": "k", "prefix": true, "from_key": true}}]}"#,
            "success[0].get: prefix and from_key cannot be combined",
        ),
        (
            r#"{"success": [{"del": {"key": "k", "range_end": "z", "prefix": true}}]}"#,
            "success[0].del: range_end cannot be combined",
        ),
        (
            r#"{"success": [{"get": {"key": "k", "limit": -1}}]}"#,
            "success[0].get: limit must not be negative",
        ),
    ];
    for (spec, want) in cases {
        let got = err(spec);
        assert!(
            got.contains(want),
            "spec {spec:?}: error {got:?} lacks {want:?}"
        );
    }
}
