//! Conditions for `find`, in Minos's vocabulary: `Condition::and([Condition::equal("user", u),
//! Condition::equal("exam", e)])`. Fields are dotted paths into the aggregate; "uuid",
//! "version", "created_at" and "updated_at" name its metadata.

use serde::Serialize;
use serde_json::Value;

use crate::bindings::saga::host::storage::{
    Comparison, ComparisonOp, ConditionNode, Membership, OrderBy, Pattern,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    True,
    False,
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Compare { field: String, op: Op, value: Value },
    In { field: String, values: Vec<Value> },
    Like { field: String, pattern: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Lower,
    LowerEqual,
    Greater,
    GreaterEqual,
}

fn json(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Condition {
    pub fn and(conditions: impl IntoIterator<Item = Condition>) -> Self {
        Condition::And(conditions.into_iter().collect())
    }

    pub fn or(conditions: impl IntoIterator<Item = Condition>) -> Self {
        Condition::Or(conditions.into_iter().collect())
    }

    #[allow(clippy::should_implement_trait)]
    pub fn not(condition: Condition) -> Self {
        Condition::Not(Box::new(condition))
    }

    fn compare(field: &str, op: Op, value: impl Serialize) -> Self {
        Condition::Compare {
            field: field.to_string(),
            op,
            value: json(value),
        }
    }

    pub fn equal(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::Equal, value)
    }

    pub fn not_equal(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::NotEqual, value)
    }

    pub fn lower(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::Lower, value)
    }

    pub fn lower_equal(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::LowerEqual, value)
    }

    pub fn greater(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::Greater, value)
    }

    pub fn greater_equal(field: &str, value: impl Serialize) -> Self {
        Condition::compare(field, Op::GreaterEqual, value)
    }

    /// The field equals one of `values` (Minos's IN).
    pub fn is_in<T: Serialize>(field: &str, values: impl IntoIterator<Item = T>) -> Self {
        Condition::In {
            field: field.to_string(),
            values: values.into_iter().map(json).collect(),
        }
    }

    /// SQL LIKE on a string field: "%" any run of characters, "_" one character.
    pub fn like(field: &str, pattern: &str) -> Self {
        Condition::Like {
            field: field.to_string(),
            pattern: pattern.to_string(),
        }
    }

    /// The flattened form the host takes: node 0 is the root, children come after parents.
    pub(crate) fn to_nodes(&self) -> Vec<ConditionNode> {
        let mut nodes: Vec<Option<ConditionNode>> = vec![None];
        let mut pending: Vec<(&Condition, usize)> = vec![(self, 0)];
        while let Some((condition, index)) = pending.pop() {
            let node = match condition {
                Condition::True => ConditionNode::AlwaysTrue,
                Condition::False => ConditionNode::AlwaysFalse,
                Condition::And(list) => {
                    ConditionNode::And(reserve(&mut nodes, &mut pending, list.iter()))
                }
                Condition::Or(list) => {
                    ConditionNode::Or(reserve(&mut nodes, &mut pending, list.iter()))
                }
                Condition::Not(inner) => ConditionNode::Not(
                    reserve(&mut nodes, &mut pending, std::iter::once(inner.as_ref()))[0],
                ),
                Condition::Compare { field, op, value } => ConditionNode::Compare(Comparison {
                    field: field.clone(),
                    op: match op {
                        Op::Equal => ComparisonOp::Equal,
                        Op::NotEqual => ComparisonOp::NotEqual,
                        Op::Lower => ComparisonOp::LowerThan,
                        Op::LowerEqual => ComparisonOp::LowerEqual,
                        Op::Greater => ComparisonOp::GreaterThan,
                        Op::GreaterEqual => ComparisonOp::GreaterEqual,
                    },
                    value: value.to_string(),
                }),
                Condition::In { field, values } => ConditionNode::In(Membership {
                    field: field.clone(),
                    values: values.iter().map(Value::to_string).collect(),
                }),
                Condition::Like { field, pattern } => ConditionNode::Like(Pattern {
                    field: field.clone(),
                    pattern: pattern.clone(),
                }),
            };
            nodes[index] = Some(node);
        }
        nodes
            .into_iter()
            .map(|n| n.expect("every node is built"))
            .collect()
    }
}

/// Reserves a node slot for each child (after every slot so far, so children come after their
/// parent) and queues the child to be built there.
fn reserve<'a>(
    nodes: &mut Vec<Option<ConditionNode>>,
    pending: &mut Vec<(&'a Condition, usize)>,
    children: impl Iterator<Item = &'a Condition>,
) -> Vec<u32> {
    children
        .map(|child| {
            nodes.push(None);
            let at = nodes.len() - 1;
            pending.push((child, at));
            at as u32
        })
        .collect()
}

/// A sort key for `find_ordered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordering {
    pub field: String,
    pub descending: bool,
}

impl Ordering {
    pub fn asc(field: &str) -> Self {
        Ordering {
            field: field.to_string(),
            descending: false,
        }
    }

    pub fn desc(field: &str) -> Self {
        Ordering {
            field: field.to_string(),
            descending: true,
        }
    }

    pub(crate) fn to_wit(&self) -> OrderBy {
        OrderBy {
            field: self.field.clone(),
            descending: self.descending,
        }
    }
}
