"""Minos conditions flattened to the host's node list (node 0 the root, children after)."""

import unittest
from uuid import UUID

from saga_host import Condition, Ordering


class ConditionTest(unittest.TestCase):
    def test_the_tutorials_condition(self):
        user, exam = UUID(int=1), "e"
        condition = Condition.AND(Condition.EQUAL("user", user), Condition.EQUAL("exam", exam))
        self.assertEqual(
            condition.flatten(),
            [
                ("and", [1, 2]),
                ("compare", "user", "equal", '"00000000-0000-0000-0000-000000000001"'),
                ("compare", "exam", "equal", '"e"'),
            ],
        )

    def test_nested_trees_name_children_after_themselves(self):
        condition = Condition.OR(
            Condition.NOT(Condition.AND(Condition.GREATER("n", 1), Condition.LOWER_EQUAL("n", 9))),
            Condition.IN("kind", ["a", 2, None]),
            Condition.LIKE("name", "A%"),
        )
        nodes = condition.flatten()
        self.assertEqual(
            nodes,
            [
                ("or", [1, 5, 6]),
                ("not", 2),
                ("and", [3, 4]),
                ("compare", "n", "greater_than", "1"),
                ("compare", "n", "lower_equal", "9"),
                ("in", "kind", ['"a"', "2", "null"]),
                ("like", "name", "A%"),
            ],
        )
        for index, node in enumerate(nodes):
            children = node[1] if node[0] in ("and", "or") else [node[1]] if node[0] == "not" else []
            self.assertTrue(all(child > index for child in children), node)

    def test_every_comparison_and_constant(self):
        cases = {
            Condition.EQUAL: "equal",
            Condition.NOT_EQUAL: "not_equal",
            Condition.LOWER: "lower_than",
            Condition.LOWER_EQUAL: "lower_equal",
            Condition.GREATER: "greater_than",
            Condition.GREATER_EQUAL: "greater_equal",
        }
        for build, op in cases.items():
            self.assertEqual(build("f", True).flatten(), [("compare", "f", op, "true")])
        self.assertEqual(Condition.TRUE.flatten(), [("always_true",)])
        self.assertEqual(Condition.AND(Condition.FALSE, Condition.TRUE).flatten(), [("and", [1, 2]), ("always_false",), ("always_true",)])

    def test_a_value_that_is_not_json_is_refused_naming_the_field(self):
        with self.assertRaisesRegex(Exception, "the value compared with 'when'.*object"):
            Condition.EQUAL("when", object())

    def test_combinations_take_conditions_only(self):
        with self.assertRaisesRegex(TypeError, "Condition.AND takes conditions"):
            Condition.AND(Condition.TRUE, "user = 1")

    def test_orderings(self):
        self.assertEqual((Ordering.ASC("created_at").field, Ordering.ASC("created_at").descending), ("created_at", False))
        self.assertTrue(Ordering.DESC("quantity").descending)


if __name__ == "__main__":
    unittest.main()
