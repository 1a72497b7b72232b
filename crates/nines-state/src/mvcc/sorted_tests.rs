//! Range sort and revision filters against the model, and what they fetch.

use nines_types::{KeyRange, RangeOptions, RangeRequest, SortOrder, SortTarget};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::model::{command, model_range_with, range_options, read_request, Model};
use super::tests::{all, put, Store};

#[test]
fn sorted_and_filtered_ranges_match_a_model_at_every_revision() {
    for seed in [5, 8, 13, 21] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Store::new();
        let mut model = Model::new();
        for _ in 0..150 {
            let command = command(&mut rng);
            assert_eq!(s.apply(command.clone()), model.apply(&command));
        }
        for revision in 1..=model.revision() {
            for _ in 0..6 {
                let req = read_request(&mut rng);
                let opts = range_options(&mut rng, model.revision());
                let want = model_range_with(&model.states[revision as usize], &req, &opts);
                let got = s.mvcc.range_with(&req, &opts, revision).unwrap();
                assert_eq!(
                    got.data, want,
                    "seed {seed} at {revision}: {req:?} {opts:?}"
                );
            }
        }
    }
}

#[test]
fn sorting_by_what_the_index_knows_fetches_only_returned_values() {
    let mut s = Store::new();
    for i in 0..40 {
        s.apply(put(&format!("k{i:02}"), &format!("{}", 40 - i)));
    }
    for i in 0..10 {
        s.apply(put(&format!("k{i:02}"), "again"));
    }
    let by = |target, order| RangeOptions {
        sort_target: target,
        sort_order: order,
        ..Default::default()
    };
    let before = s.gets();
    let mut req = all();
    req.keys_only = true;
    let newest = s
        .mvcc
        .range_with(&req, &by(SortTarget::Mod, SortOrder::Descend), 0)
        .unwrap()
        .data;
    assert_eq!(newest.kvs[0].key, b"k09");
    assert_eq!(newest.count, 40);
    req.keys_only = false;
    req.count_only = true;
    let counted = s
        .mvcc
        .range_with(&req, &by(SortTarget::Version, SortOrder::Ascend), 0);
    assert_eq!(counted.unwrap().data.count, 40);
    assert_eq!(s.gets(), before, "keys_only and count_only fetch nothing");
    req.count_only = false;
    req.limit = 3;
    let filtered = RangeOptions {
        min_mod_revision: 41,
        ..by(SortTarget::Version, SortOrder::Descend)
    };
    let top = s.mvcc.range_with(&req, &filtered, 0).unwrap().data;
    assert_eq!((top.count, top.kvs.len(), top.more), (40, 3, true));
    assert!(top
        .kvs
        .iter()
        .all(|kv| kv.version == 2 && kv.value == b"again"));
    assert_eq!(s.gets(), before + 3, "only the returned values");
    // Sorting by value needs every matching value.
    let req = RangeRequest::range(KeyRange::prefix(b"k1"));
    let by_value = s
        .mvcc
        .range_with(&req, &by(SortTarget::Value, SortOrder::None), 0)
        .unwrap()
        .data;
    let values: Vec<_> = by_value.kvs.iter().map(|kv| kv.value.clone()).collect();
    let mut sorted = values.clone();
    sorted.sort();
    assert_eq!(values, sorted);
    assert_eq!(s.gets(), before + 3 + 10);
}
