// Conditions flattened to the host's node list: node 0 the root, children after their parent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Condition, Ordering } from '../conditions.js';

test('the tutorial condition', () => {
  const condition = Condition.and(Condition.equal('user', 'u'), Condition.equal('exam', 'e'));
  assert.deepEqual(condition.flatten(), [
    { tag: 'and', val: [1, 2] },
    { tag: 'compare', val: { field: 'user', op: 'equal', value: '"u"' } },
    { tag: 'compare', val: { field: 'exam', op: 'equal', value: '"e"' } },
  ]);
});

test('nested trees name their children after themselves', () => {
  const condition = Condition.or(
    Condition.not(Condition.and(Condition.greater('n', 1), Condition.lowerEqual('n', 9))),
    Condition.in('kind', ['a', 2, null]),
    Condition.like('name', 'A%'),
  );
  const nodes = condition.flatten();
  assert.deepEqual(nodes, [
    { tag: 'or', val: [1, 5, 6] },
    { tag: 'not', val: 2 },
    { tag: 'and', val: [3, 4] },
    { tag: 'compare', val: { field: 'n', op: 'greater-than', value: '1' } },
    { tag: 'compare', val: { field: 'n', op: 'lower-equal', value: '9' } },
    { tag: 'in', val: { field: 'kind', values: ['"a"', '2', 'null'] } },
    { tag: 'like', val: { field: 'name', pattern: 'A%' } },
  ]);
  nodes.forEach((node, index) => {
    const children = Array.isArray(node.val) ? node.val : node.tag === 'not' ? [node.val] : [];
    assert.ok(children.every((child) => child > index), JSON.stringify(node));
  });
});

test('every comparison and constant', () => {
  const ops = {
    equal: 'equal',
    notEqual: 'not-equal',
    lower: 'lower-than',
    lowerEqual: 'lower-equal',
    greater: 'greater-than',
    greaterEqual: 'greater-equal',
  };
  for (const [method, op] of Object.entries(ops)) {
    assert.deepEqual(Condition[method]('f', true).flatten(), [{ tag: 'compare', val: { field: 'f', op, value: 'true' } }]);
  }
  assert.deepEqual(Condition.and(Condition.FALSE, Condition.TRUE).flatten(), [
    { tag: 'and', val: [1, 2] },
    { tag: 'always-false' },
    { tag: 'always-true' },
  ]);
});

test('refusals name what is wrong', () => {
  assert.throws(() => Condition.equal('n', 1n), /the value compared with "n" cannot be sent as JSON/);
  assert.throws(() => Condition.and(Condition.TRUE, 'user = 1'), /Condition.and takes conditions/);
});

test('orderings are the WIT order-by records', () => {
  assert.deepEqual(Ordering.asc('created_at'), { field: 'created_at', descending: false });
  assert.deepEqual(Ordering.desc('quantity'), { field: 'quantity', descending: true });
});
