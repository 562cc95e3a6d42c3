"""attempt/src/aggregates.py, as the tutorial prints it but for the imports, two additions
marked below, and `validate_quantity`, which the SDK does not call (Minos would, and it would
fail: `len` of an int).
"""

from __future__ import (
    annotations,
)

from uuid import NAMESPACE_OID, UUID

from saga_host import (
    Aggregate,
    AggregateRef,
    ModelRef,
    uuid5,
)


# Not in the tutorial: `indexes` lets the host answer the service's `find` by user and exam
# from an index instead of scanning every Attempt.
class Attempt(Aggregate, indexes=["user", "exam"]):
    user: ModelRef[User]
    exam: ModelRef[Exam]
    quantity: int

    def validate_quantity(self, quantity: int) -> bool:
        return isinstance(quantity, int) and len(quantity) >= 6

class User(AggregateRef):
    name: str


class Exam(AggregateRef):
    """Exam reference"""


# Not in the tutorial: one Attempt per user and exam, under a name-based uuid, so that
# concurrent first submissions create the same aggregate and the host runs the losers again
# (which then find the winner's). The same uuids as the Rust Attempt service's.
def attempt_uuid(user: str, exam: str) -> UUID:
    return uuid5(NAMESPACE_OID, f"attempt/{UUID(user)}/{UUID(exam)}")
