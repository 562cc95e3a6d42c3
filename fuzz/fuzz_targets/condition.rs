//! A component's `find`: any node list, ordering and stored record. Parsing refuses what is
//! malformed; a parsed condition evaluates, narrows to a prefilter and sorts without panicking,
//! and the prefilter never rules out a record the condition matches.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use saga_core::AggregateRecord;
use saga_core::condition::{self, Condition, FieldPath, Node, OrderBy};
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input {
    nodes: Vec<Node>,
    ordering: Vec<(String, bool)>,
    /// JSON texts of the records' data.
    records: Vec<String>,
}

fuzz_target!(|input: Input| {
    let Ok(condition) = Condition::parse(&input.nodes) else {
        return;
    };
    let mut records: Vec<AggregateRecord> = input
        .records
        .iter()
        .enumerate()
        .map(|(n, data)| AggregateRecord {
            uuid: format!("00000000-0000-4000-8000-{n:012}"),
            version: n as u64 + 1,
            created_at: n as i64,
            updated_at: n as i64,
            data: serde_json::from_str(data).unwrap_or(Value::Null),
        })
        .collect();
    let prefilter = condition.prefilter();
    for record in &records {
        if condition.matches(record) {
            for (field, value) in &prefilter.equalities {
                assert_eq!(
                    field.lookup(record),
                    Value::String(value.clone()),
                    "the prefilter excludes a match"
                );
            }
        }
    }
    let ordering: Vec<OrderBy> = input
        .ordering
        .iter()
        .filter_map(|(field, descending)| {
            Some(OrderBy {
                field: FieldPath::parse(field).ok()?,
                descending: *descending,
            })
        })
        .collect();
    condition::sort_records(&mut records, &ordering);
});
