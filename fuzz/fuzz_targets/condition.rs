//! A component's `find`: any node list, ordering and stored record. Parsing refuses what is
//! malformed; a parsed condition evaluates, narrows to a prefilter and sorts without panicking,
//! and the prefilter never rules out a record the condition matches.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use saga_core::AggregateRecord;
use saga_core::condition::{self, CompareOp, Condition, FieldPath, Node, OrderBy};
use serde_json::Value;

#[derive(Arbitrary, Debug)]
enum FuzzNode {
    True,
    False,
    And(Vec<u32>),
    Or(Vec<u32>),
    Not(u32),
    Compare {
        field: String,
        op: u8,
        value: String,
    },
    In {
        field: String,
        values: Vec<String>,
    },
    Like {
        field: String,
        pattern: String,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    nodes: Vec<FuzzNode>,
    ordering: Vec<(String, bool)>,
    /// JSON texts of the records' data.
    records: Vec<String>,
}

fn node(fuzzed: FuzzNode) -> Node {
    match fuzzed {
        FuzzNode::True => Node::True,
        FuzzNode::False => Node::False,
        FuzzNode::And(children) => Node::And(children),
        FuzzNode::Or(children) => Node::Or(children),
        FuzzNode::Not(child) => Node::Not(child),
        FuzzNode::Compare { field, op, value } => Node::Compare {
            field,
            op: match op % 6 {
                0 => CompareOp::Equal,
                1 => CompareOp::NotEqual,
                2 => CompareOp::Lower,
                3 => CompareOp::LowerEqual,
                4 => CompareOp::Greater,
                _ => CompareOp::GreaterEqual,
            },
            value,
        },
        FuzzNode::In { field, values } => Node::In { field, values },
        FuzzNode::Like { field, pattern } => Node::Like { field, pattern },
    }
}

fuzz_target!(|input: Input| {
    let nodes: Vec<Node> = input.nodes.into_iter().map(node).collect();
    let Ok(condition) = Condition::parse(&nodes) else {
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
