"""The Exam aggregate. The tutorial refers to it ("Modeling the Domain: Aggregates") without
printing it; this is the Rust Exam's (guest-exam) shape: one Exam per accepted submission."""

from uuid import UUID

from saga_host import Aggregate


class Exam(Aggregate, indexes=["user_uuid", "exam_uuid"]):
    """A user's accepted submission of an exam."""

    user_uuid: UUID
    exam_uuid: UUID
    # Which attempt this submission is: 1 for the first.
    attempt: int
