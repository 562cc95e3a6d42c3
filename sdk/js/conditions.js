// Query conditions (Minos's EQUAL, AND, …) flattened to the WIT's `condition-node` list.
//
// `Condition.and(Condition.equal('user', user), Condition.equal('exam', exam))` is a tree; the
// host takes it as a list where node 0 is the root and a node names its children by their
// index, always greater than its own. The nodes are the binding's variants ({tag, val}), so
// the list goes to `storage.find` as it is.

import { toJson } from './json.js';

function compare(field, op, value) {
  const json = toJson(value, `the value compared with ${JSON.stringify(field)}`);
  return Condition.leaf({ tag: 'compare', val: { field, op, value: json } });
}

/** A condition on an aggregate's fields. Fields are dotted paths ("address.city"); "uuid",
 * "version", "created_at" and "updated_at" name the metadata. */
export class Condition {
  /** @param {(nodes: object[]) => number} append adds the node and its children, returns its index */
  constructor(append) {
    this.append = append;
  }

  /** The condition as the host's node list, node 0 the root. */
  flatten() {
    const nodes = [];
    this.append(nodes);
    return nodes;
  }

  static leaf(node) {
    return new Condition((nodes) => nodes.push(node) - 1);
  }

  static combination(tag, conditions) {
    for (const condition of conditions) {
      if (!(condition instanceof Condition)) {
        throw new TypeError(`Condition.${tag} takes conditions, not ${JSON.stringify(condition)}`);
      }
    }
    return new Condition((nodes) => {
      const index = nodes.push(null) - 1; // reserved: the children's indices come after
      nodes[index] = { tag, val: conditions.map((child) => child.append(nodes)) };
      return index;
    });
  }

  static and(...conditions) {
    return Condition.combination('and', conditions);
  }

  static or(...conditions) {
    return Condition.combination('or', conditions);
  }

  static not(condition) {
    if (!(condition instanceof Condition)) {
      throw new TypeError(`Condition.not takes a condition, not ${JSON.stringify(condition)}`);
    }
    return new Condition((nodes) => {
      const index = nodes.push(null) - 1;
      nodes[index] = { tag: 'not', val: condition.append(nodes) };
      return index;
    });
  }

  static equal(field, value) {
    return compare(field, 'equal', value);
  }

  static notEqual(field, value) {
    return compare(field, 'not-equal', value);
  }

  static lower(field, value) {
    return compare(field, 'lower-than', value);
  }

  static lowerEqual(field, value) {
    return compare(field, 'lower-equal', value);
  }

  static greater(field, value) {
    return compare(field, 'greater-than', value);
  }

  static greaterEqual(field, value) {
    return compare(field, 'greater-equal', value);
  }

  /** The field equals one of `values`. */
  static in(field, values) {
    const json = values.map((value) => toJson(value, `a value of Condition.in(${JSON.stringify(field)})`));
    return Condition.leaf({ tag: 'in', val: { field, values: json } });
  }

  /** SQL LIKE on a string field: "%" any run of characters, "_" one character. */
  static like(field, pattern) {
    return Condition.leaf({ tag: 'like', val: { field, pattern } });
  }
}

Condition.TRUE = Condition.leaf({ tag: 'always-true' });
Condition.FALSE = Condition.leaf({ tag: 'always-false' });

/** A sort key for `find`: `Ordering.asc('created_at')`, `Ordering.desc('quantity')`. */
export const Ordering = {
  asc: (field) => ({ field, descending: false }),
  desc: (field) => ({ field, descending: true }),
};
