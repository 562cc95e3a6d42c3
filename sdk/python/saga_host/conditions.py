"""Minos's query conditions and orderings, flattened to the WIT's `condition-node` list.

`Condition.AND(Condition.EQUAL("user", user), Condition.EQUAL("exam", exam))` is a tree; the host
takes it as a list where node 0 is the root and a node names its children by their index, always
greater than its own. `flatten` makes that list from neutral tuples (the first item names the
WIT case); `host.py` turns them into the generated binding types.
"""

from .encoding import to_json


class Condition:
    """A condition on an aggregate's fields. Build one with the class's upper-case names:
    `TRUE`, `FALSE`, `AND`, `OR`, `NOT`, `EQUAL`, `NOT_EQUAL`, `LOWER`, `LOWER_EQUAL`,
    `GREATER`, `GREATER_EQUAL`, `IN`, `LIKE`. Fields are dotted paths ("address.city");
    "uuid", "version", "created_at" and "updated_at" name the metadata."""

    TRUE: "Condition"
    FALSE: "Condition"

    def flatten(self) -> list:
        """The condition as the host's node list, node 0 the root."""
        nodes: list = []
        self._append_to(nodes)
        return nodes

    def _append_to(self, nodes: list) -> int:
        """Appends this node, then its children; returns this node's index."""
        raise NotImplementedError

    @staticmethod
    def AND(*conditions: "Condition") -> "Condition":
        return _Combination("and", conditions)

    @staticmethod
    def OR(*conditions: "Condition") -> "Condition":
        return _Combination("or", conditions)

    @staticmethod
    def NOT(condition: "Condition") -> "Condition":
        return _Not(condition)

    @staticmethod
    def EQUAL(field: str, value) -> "Condition":
        return _Comparison(field, "equal", value)

    @staticmethod
    def NOT_EQUAL(field: str, value) -> "Condition":
        return _Comparison(field, "not_equal", value)

    @staticmethod
    def LOWER(field: str, value) -> "Condition":
        return _Comparison(field, "lower_than", value)

    @staticmethod
    def LOWER_EQUAL(field: str, value) -> "Condition":
        return _Comparison(field, "lower_equal", value)

    @staticmethod
    def GREATER(field: str, value) -> "Condition":
        return _Comparison(field, "greater_than", value)

    @staticmethod
    def GREATER_EQUAL(field: str, value) -> "Condition":
        return _Comparison(field, "greater_equal", value)

    @staticmethod
    def IN(field: str, values) -> "Condition":
        """The field equals one of `values`."""
        return _Leaf("in", field, [to_json(value, f"a value of Condition.IN({field!r})") for value in values])

    @staticmethod
    def LIKE(field: str, pattern: str) -> "Condition":
        """SQL LIKE on a string field: "%" any run of characters, "_" one character."""
        return _Leaf("like", field, pattern)


class _Leaf(Condition):
    def __init__(self, *node):
        self.node = node

    def _append_to(self, nodes: list) -> int:
        nodes.append(self.node)
        return len(nodes) - 1


class _Comparison(_Leaf):
    def __init__(self, field: str, op: str, value):
        super().__init__("compare", field, op, to_json(value, f"the value compared with {field!r}"))


class _Combination(Condition):
    def __init__(self, tag: str, conditions):
        for condition in conditions:
            if not isinstance(condition, Condition):
                raise TypeError(f"Condition.{tag.upper()} takes conditions, not {condition!r:.80}")
        self.tag = tag
        self.conditions = conditions

    def _append_to(self, nodes: list) -> int:
        index = len(nodes)
        nodes.append(None)  # reserved: the children's indices are known once they are in
        nodes[index] = (self.tag, [child._append_to(nodes) for child in self.conditions])
        return index


class _Not(Condition):
    def __init__(self, condition: Condition):
        if not isinstance(condition, Condition):
            raise TypeError(f"Condition.NOT takes a condition, not {condition!r:.80}")
        self.condition = condition

    def _append_to(self, nodes: list) -> int:
        index = len(nodes)
        nodes.append(None)
        nodes[index] = ("not", self.condition._append_to(nodes))
        return index


Condition.TRUE = _Leaf("always_true")
Condition.FALSE = _Leaf("always_false")


class Ordering:
    """A sort key for `find`: `Ordering.ASC("created_at")`, `Ordering.DESC("quantity")`."""

    def __init__(self, field: str, descending: bool):
        self.field = field
        self.descending = descending

    @staticmethod
    def ASC(field: str) -> "Ordering":
        return Ordering(field, False)

    @staticmethod
    def DESC(field: str) -> "Ordering":
        return Ordering(field, True)
