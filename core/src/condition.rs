//! Conditions and orderings for `find`: parsed from the flattened node list a component sends,
//! evaluated in Rust (the one definition of their meaning), and narrowed to a SQL prefilter that
//! may only return a superset of the matches.

use std::cmp::Ordering as CmpOrdering;

use serde_json::Value;

use crate::AggregateRecord;

/// How many nodes and path segments a condition may have: enough for any real query, small
/// enough that a hostile component cannot make the host do unbounded work.
pub const MAX_NODES: usize = 256;
const MAX_PATH_SEGMENTS: usize = 16;
const MAX_SEGMENT_LEN: usize = 64;

/// One node of the flattened tree, as the WIT `condition-node` carries it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    True,
    False,
    And(Vec<u32>),
    Or(Vec<u32>),
    Not(u32),
    Compare {
        field: String,
        op: CompareOp,
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

#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Lower,
    LowerEqual,
    Greater,
    GreaterEqual,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    True,
    False,
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Compare {
        field: FieldPath,
        op: CompareOp,
        value: Value,
    },
    In {
        field: FieldPath,
        values: Vec<Value>,
    },
    Like {
        field: FieldPath,
        pattern: Vec<LikeToken>,
    },
}

/// A dotted field path, checked: "address.city" → ["address", "city"].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikeToken {
    Char(char),
    AnyOne,
    AnyRun,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConditionError {
    #[error("the condition is empty: send at least one node (node 0 is the root)")]
    Empty,
    #[error("the condition has {0} nodes; at most {MAX_NODES} are allowed")]
    TooLarge(usize),
    #[error(
        "condition node {node} refers to node {child}, which must exist and come after it (children have larger indices)"
    )]
    BadChild { node: usize, child: u32 },
    #[error("condition node {0} is not reachable from node 0; every node must be part of the tree")]
    Unreachable(usize),
    #[error("condition node {node}: {problem}")]
    Node { node: usize, problem: String },
    #[error("invalid field path {path:?}: {problem}")]
    Field { path: String, problem: String },
}

impl FieldPath {
    pub fn parse(path: &str) -> Result<Self, ConditionError> {
        let bad = |problem: &str| ConditionError::Field {
            path: path.to_string(),
            problem: problem.to_string(),
        };
        if path.is_empty() {
            return Err(bad("it is empty"));
        }
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(bad("more than 16 segments"));
        }
        for segment in &segments {
            if segment.is_empty() {
                return Err(bad("a segment is empty (two dots, or a dot at either end)"));
            }
            if segment.len() > MAX_SEGMENT_LEN {
                return Err(bad("a segment is longer than 64 characters"));
            }
            if !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(
                    "segments may only contain letters, digits, '_' and '-'",
                ));
            }
        }
        Ok(FieldPath(segments))
    }

    /// The metadata column this path names, if it is one of "uuid", "version", "created_at",
    /// "updated_at".
    pub fn metadata(&self) -> Option<&'static str> {
        match self.0.as_slice() {
            [one] => match one.as_str() {
                "uuid" => Some("uuid"),
                "version" => Some("version"),
                "created_at" => Some("created_at"),
                "updated_at" => Some("updated_at"),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The value at this path in a record; a missing field is null.
    pub fn lookup(&self, record: &AggregateRecord) -> Value {
        match self.metadata() {
            Some("uuid") => Value::String(record.uuid.clone()),
            Some("version") => Value::from(record.version),
            Some("created_at") => Value::from(record.created_at),
            Some("updated_at") => Value::from(record.updated_at),
            _ => {
                let mut current = &record.data;
                for segment in &self.0 {
                    match current.get(segment) {
                        Some(next) => current = next,
                        None => return Value::Null,
                    }
                }
                current.clone()
            }
        }
    }
}

impl Condition {
    /// Parses the flattened node list: node 0 is the root and children come after their parent,
    /// so the list is a tree (or a DAG, which evaluates the same) and cannot loop.
    pub fn parse(nodes: &[Node]) -> Result<Condition, ConditionError> {
        if nodes.is_empty() {
            return Err(ConditionError::Empty);
        }
        if nodes.len() > MAX_NODES {
            return Err(ConditionError::TooLarge(nodes.len()));
        }
        let mut reachable = vec![false; nodes.len()];
        reachable[0] = true;
        for (index, node) in nodes.iter().enumerate() {
            let children: &[u32] = match node {
                Node::And(children) | Node::Or(children) => children,
                Node::Not(child) => std::slice::from_ref(child),
                _ => &[],
            };
            for &child in children {
                if child as usize <= index || child as usize >= nodes.len() {
                    return Err(ConditionError::BadChild { node: index, child });
                }
                if reachable[index] {
                    reachable[child as usize] = true;
                }
            }
        }
        if let Some(unreachable) = reachable.iter().position(|r| !r) {
            return Err(ConditionError::Unreachable(unreachable));
        }
        // Build bottom-up so that no recursion depth depends on the input.
        let mut built: Vec<Option<Condition>> = vec![None; nodes.len()];
        for index in (0..nodes.len()).rev() {
            let take = |built: &Vec<Option<Condition>>, child: u32| {
                built[child as usize]
                    .clone()
                    .expect("children are built before their parents")
            };
            let condition = match &nodes[index] {
                Node::True => Condition::True,
                Node::False => Condition::False,
                Node::And(children) => {
                    Condition::And(children.iter().map(|&c| take(&built, c)).collect())
                }
                Node::Or(children) => {
                    Condition::Or(children.iter().map(|&c| take(&built, c)).collect())
                }
                Node::Not(child) => Condition::Not(Box::new(take(&built, *child))),
                Node::Compare { field, op, value } => Condition::Compare {
                    field: FieldPath::parse(field)?,
                    op: *op,
                    value: parse_json(index, value)?,
                },
                Node::In { field, values } => Condition::In {
                    field: FieldPath::parse(field)?,
                    values: values
                        .iter()
                        .map(|value| parse_json(index, value))
                        .collect::<Result<_, _>>()?,
                },
                Node::Like { field, pattern } => Condition::Like {
                    field: FieldPath::parse(field)?,
                    pattern: parse_like(pattern),
                },
            };
            built[index] = Some(condition);
        }
        Ok(built[0].take().expect("root is built"))
    }

    /// Whether a record satisfies the condition.
    pub fn matches(&self, record: &AggregateRecord) -> bool {
        match self {
            Condition::True => true,
            Condition::False => false,
            Condition::And(all) => all.iter().all(|c| c.matches(record)),
            Condition::Or(any) => any.iter().any(|c| c.matches(record)),
            Condition::Not(inner) => !inner.matches(record),
            Condition::Compare { field, op, value } => compare(&field.lookup(record), *op, value),
            Condition::In { field, values } => {
                let actual = field.lookup(record);
                values.iter().any(|v| compare(&actual, CompareOp::Equal, v))
            }
            Condition::Like { field, pattern } => match field.lookup(record) {
                Value::String(text) => like_matches(pattern, &text),
                _ => false,
            },
        }
    }

    /// Equalities on string values that every match must satisfy: the part of the condition a
    /// SQL index can answer. Returned (field, value) pairs are necessary, never sufficient,
    /// unless [`Prefilter::exact`] says so.
    pub fn prefilter(&self) -> Prefilter {
        let mut prefilter = Prefilter {
            equalities: Vec::new(),
            exact: true,
        };
        let conjuncts: Vec<&Condition> = match self {
            Condition::And(all) => all.iter().collect(),
            other => vec![other],
        };
        for conjunct in conjuncts {
            match conjunct {
                Condition::True => {}
                Condition::Compare {
                    field,
                    op: CompareOp::Equal,
                    value: Value::String(text),
                } if matches!(field.metadata(), None | Some("uuid")) => {
                    prefilter.equalities.push((field.clone(), text.clone()))
                }
                _ => prefilter.exact = false,
            }
        }
        prefilter
    }
}

/// What SQL can narrow a `find` to.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefilter {
    pub equalities: Vec<(FieldPath, String)>,
    /// True when the equalities are the whole condition.
    pub exact: bool,
}

fn parse_json(node: usize, text: &str) -> Result<Value, ConditionError> {
    serde_json::from_str(text).map_err(|e| ConditionError::Node {
        node,
        problem: format!(
            "the value {text:?} is not JSON text ({e}); strings need quotes, e.g. \"\\\"abc\\\"\""
        ),
    })
}

fn compare(actual: &Value, op: CompareOp, expected: &Value) -> bool {
    match op {
        CompareOp::Equal => json_order(actual, expected) == Some(CmpOrdering::Equal),
        CompareOp::NotEqual => json_order(actual, expected) != Some(CmpOrdering::Equal),
        CompareOp::Lower => json_order(actual, expected) == Some(CmpOrdering::Less),
        CompareOp::LowerEqual => matches!(
            json_order(actual, expected),
            Some(CmpOrdering::Less | CmpOrdering::Equal)
        ),
        CompareOp::Greater => json_order(actual, expected) == Some(CmpOrdering::Greater),
        CompareOp::GreaterEqual => matches!(
            json_order(actual, expected),
            Some(CmpOrdering::Greater | CmpOrdering::Equal)
        ),
    }
}

/// The order of two JSON values of the same type; None when they cannot be compared (different
/// types, or arrays/objects that differ).
fn json_order(a: &Value, b: &Value) -> Option<CmpOrdering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(CmpOrdering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
            (a == b).then_some(CmpOrdering::Equal)
        }
        _ => None,
    }
}

/// A total order over JSON values for sorting: null < booleans < numbers < strings < arrays <
/// objects, and within a type the natural order.
pub fn sort_order(a: &Value, b: &Value) -> CmpOrdering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    rank(a)
        .cmp(&rank(b))
        .then_with(|| json_order(a, b).unwrap_or_else(|| a.to_string().cmp(&b.to_string())))
}

fn parse_like(pattern: &str) -> Vec<LikeToken> {
    pattern
        .chars()
        .map(|c| match c {
            '%' => LikeToken::AnyRun,
            '_' => LikeToken::AnyOne,
            other => LikeToken::Char(other),
        })
        .collect()
}

/// SQL LIKE, case-sensitive, in O(pattern × text) time whatever the input.
fn like_matches(pattern: &[LikeToken], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    // reachable[j]: the pattern prefix consumed so far can end right before text[j].
    let mut reachable = vec![false; text.len() + 1];
    reachable[0] = true;
    for token in pattern {
        let mut next = vec![false; text.len() + 1];
        match token {
            LikeToken::AnyRun => {
                let mut any = false;
                for j in 0..=text.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            LikeToken::AnyOne => {
                next[1..].copy_from_slice(&reachable[..text.len()]);
            }
            LikeToken::Char(c) => {
                for j in 0..text.len() {
                    next[j + 1] = reachable[j] && text[j] == *c;
                }
            }
        }
        reachable = next;
    }
    reachable[text.len()]
}

/// A sort key for `find`.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub field: FieldPath,
    pub descending: bool,
}

/// Sorts records by the keys in turn; records equal on every key keep creation order.
pub fn sort_records(records: &mut [AggregateRecord], ordering: &[OrderBy]) {
    records.sort_by(|a, b| {
        for key in ordering {
            let order = sort_order(&key.field.lookup(a), &key.field.lookup(b));
            let order = if key.descending {
                order.reverse()
            } else {
                order
            };
            if order != CmpOrdering::Equal {
                return order;
            }
        }
        (a.created_at, &a.uuid).cmp(&(b.created_at, &b.uuid))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(data: Value) -> AggregateRecord {
        AggregateRecord {
            uuid: "00000000-0000-0000-0000-000000000001".into(),
            version: 3,
            created_at: 10,
            updated_at: 20,
            data,
        }
    }

    fn cmp(field: &str, op: CompareOp, value: Value) -> Node {
        Node::Compare {
            field: field.into(),
            op,
            value: value.to_string(),
        }
    }

    fn eval(nodes: Vec<Node>, data: Value) -> bool {
        Condition::parse(&nodes).unwrap().matches(&record(data))
    }

    #[test]
    fn tutorial_condition_and_of_equalities() {
        let nodes = vec![
            Node::And(vec![1, 2]),
            cmp("user", CompareOp::Equal, json!("u1")),
            cmp("exam", CompareOp::Equal, json!("e1")),
        ];
        assert!(eval(
            nodes.clone(),
            json!({"user": "u1", "exam": "e1", "quantity": 2})
        ));
        assert!(!eval(nodes.clone(), json!({"user": "u1", "exam": "e2"})));
        assert!(!eval(nodes, json!({"user": "u1"})));
    }

    #[test]
    fn every_operator() {
        let data = json!({"n": 5, "s": "beta", "b": true, "nested": {"city": "Oslo"}, "nil": null});
        let cases = [
            (cmp("n", CompareOp::Equal, json!(5)), true),
            (cmp("n", CompareOp::Equal, json!(5.0)), true),
            (cmp("n", CompareOp::NotEqual, json!(5)), false),
            (cmp("n", CompareOp::Lower, json!(6)), true),
            (cmp("n", CompareOp::LowerEqual, json!(5)), true),
            (cmp("n", CompareOp::Greater, json!(5)), false),
            (cmp("n", CompareOp::GreaterEqual, json!(4.5)), true),
            (cmp("s", CompareOp::Lower, json!("gamma")), true),
            (cmp("s", CompareOp::Greater, json!("alpha")), true),
            // Different types never compare, so only NOT_EQUAL holds.
            (cmp("n", CompareOp::Equal, json!("5")), false),
            (cmp("n", CompareOp::NotEqual, json!("5")), true),
            (cmp("n", CompareOp::Lower, json!("9")), false),
            (cmp("b", CompareOp::Equal, json!(true)), true),
            (cmp("nested.city", CompareOp::Equal, json!("Oslo")), true),
            (cmp("missing", CompareOp::Equal, json!(null)), true),
            (cmp("nil", CompareOp::Equal, json!(null)), true),
            (cmp("version", CompareOp::Equal, json!(3)), true),
            (cmp("created_at", CompareOp::Lower, json!(11)), true),
            (
                cmp(
                    "uuid",
                    CompareOp::Equal,
                    json!("00000000-0000-0000-0000-000000000001"),
                ),
                true,
            ),
        ];
        for (node, expected) in cases {
            assert_eq!(eval(vec![node.clone()], data.clone()), expected, "{node:?}");
        }
        let in_node = Node::In {
            field: "s".into(),
            values: vec!["\"alpha\"".into(), "\"beta\"".into()],
        };
        assert!(eval(vec![in_node], data.clone()));
        let like = |p: &str| Node::Like {
            field: "s".into(),
            pattern: p.into(),
        };
        assert!(eval(vec![like("b%")], data.clone()));
        assert!(eval(vec![like("_eta")], data.clone()));
        assert!(eval(vec![like("%t%")], data.clone()));
        assert!(
            !eval(vec![like("B%")], data.clone()),
            "LIKE is case-sensitive"
        );
        assert!(!eval(vec![like("bet")], data.clone()));
        assert!(!eval(
            vec![Node::Like {
                field: "n".into(),
                pattern: "%".into()
            }],
            data
        ));
    }

    #[test]
    fn boolean_structure() {
        let data = json!({"a": 1});
        assert!(eval(vec![Node::True], data.clone()));
        assert!(!eval(vec![Node::False], data.clone()));
        assert!(eval(vec![Node::Not(1), Node::False], data.clone()));
        assert!(eval(
            vec![Node::Or(vec![1, 2]), Node::False, Node::True],
            data.clone()
        ));
        assert!(
            eval(vec![Node::And(vec![])], data.clone()),
            "empty AND is true"
        );
        assert!(!eval(vec![Node::Or(vec![])], data), "empty OR is false");
    }

    #[test]
    fn malformed_trees_are_refused_with_the_node_named() {
        assert_eq!(Condition::parse(&[]), Err(ConditionError::Empty));
        assert_eq!(
            Condition::parse(&[Node::Not(0)]),
            Err(ConditionError::BadChild { node: 0, child: 0 })
        );
        assert_eq!(
            Condition::parse(&[Node::And(vec![1, 5]), Node::True]),
            Err(ConditionError::BadChild { node: 0, child: 5 })
        );
        assert_eq!(
            Condition::parse(&[Node::True, Node::False]),
            Err(ConditionError::Unreachable(1))
        );
        let err = Condition::parse(&[cmp("a..b", CompareOp::Equal, json!(1))]).unwrap_err();
        assert!(err.to_string().contains("a segment is empty"), "{err}");
        let err = Condition::parse(&[Node::Compare {
            field: "a".into(),
            op: CompareOp::Equal,
            value: "abc".into(),
        }])
        .unwrap_err();
        assert!(err.to_string().contains("not JSON text"), "{err}");
        let too_many: Vec<Node> = (0..=MAX_NODES).map(|_| Node::True).collect();
        assert_eq!(
            Condition::parse(&too_many),
            Err(ConditionError::TooLarge(MAX_NODES + 1))
        );
    }

    #[test]
    fn prefilter_takes_only_string_equalities_of_a_conjunction() {
        let parse = |nodes: Vec<Node>| Condition::parse(&nodes).unwrap().prefilter();
        let p = parse(vec![
            Node::And(vec![1, 2]),
            cmp("user", CompareOp::Equal, json!("u1")),
            cmp("exam", CompareOp::Equal, json!("e1")),
        ]);
        assert!(p.exact);
        assert_eq!(p.equalities.len(), 2);
        let p = parse(vec![
            Node::And(vec![1, 2]),
            cmp("user", CompareOp::Equal, json!("u1")),
            cmp("quantity", CompareOp::Greater, json!(1)),
        ]);
        assert!(!p.exact);
        assert_eq!(p.equalities.len(), 1);
        let p = parse(vec![cmp("n", CompareOp::Equal, json!(1))]);
        assert!(!p.exact && p.equalities.is_empty());
        let p = parse(vec![
            Node::Or(vec![1]),
            cmp("a", CompareOp::Equal, json!("x")),
        ]);
        assert!(!p.exact && p.equalities.is_empty());
    }

    #[test]
    fn sorting_is_total_and_stable() {
        let mut records: Vec<AggregateRecord> = [
            json!({"q": 2}),
            json!({"q": "x"}),
            json!({}),
            json!({"q": 1}),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, data)| AggregateRecord {
            created_at: i as i64,
            ..record(data)
        })
        .collect();
        let by_q = [OrderBy {
            field: FieldPath::parse("q").unwrap(),
            descending: false,
        }];
        sort_records(&mut records, &by_q);
        let order: Vec<Value> = records.iter().map(|r| r.data["q"].clone()).collect();
        assert_eq!(order, vec![Value::Null, json!(1), json!(2), json!("x")]);
    }

    #[test]
    fn like_is_linear_on_hostile_patterns() {
        let pattern = parse_like(&"%a".repeat(200));
        let text = "a".repeat(5000);
        assert!(like_matches(&pattern, &text));
        assert!(!like_matches(&pattern, &"b".repeat(5000)));
    }
}
