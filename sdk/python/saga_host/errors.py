"""The exceptions a handler or saga callback raises to refuse, and those the SDK raises.

The status decides what happens next (see the WIT's `error` record):

- 400–499, a *business error*: the request breaks a rule. Over HTTP the caller gets the status
  and the message; as a saga step's reply it is an ERROR reply (the step's `on_error` runs).
- 500–599, a *system error*: something broke. As a reply it is a SYSTEM_ERROR: the step is
  retried, then fails.

`MinosException` and `ResponseException` are business errors (400 unless told otherwise). Minos
itself answers a bare `MinosException` from a broker handler with SYSTEM_ERROR; here it is a
business error, because that is what the tutorial raises it for ("The maximum number of attempts
has been exceeded."). Any other exception escaping a handler is a trap: a system error whose
message is the traceback.
"""


class MinosException(Exception):
    """A refusal with a status: 400 unless the class or the caller says otherwise."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        status = type(self).status if status is None else status
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"an error status is 400–599 (business 4xx, system 5xx), not {status!r}")
        self.message = message
        self.status = status


class ResponseException(MinosException):
    """Minos's business error for a request that cannot be answered: 400 unless told otherwise."""


class SystemException(MinosException):
    """A system error (500 unless told otherwise): something broke, the request may be fine."""

    status = 500


class AggregateNotFoundException(MinosException):
    """404: no aggregate of that type with that uuid (or it was deleted)."""

    status = 404


class AggregateConflictException(MinosException):
    """409: the aggregate changed since it was read, or the uuid of a create is taken."""

    status = 409


class InvalidFieldException(MinosException):
    """400: a value does not fit the field it is given to (names the model and the field)."""


class MissingFieldException(MinosException, KeyError):
    """400: the request's content has no such field. Also a `KeyError`, so that code written for
    plain dictionaries still catches it."""

    def __str__(self) -> str:
        # KeyError would quote the message as a key.
        return self.message


class SagaFailedExecutionException(MinosException):
    """What `saga_manager.run` raises (Minos's `raise_on_error=True`) when the saga does not
    finish: its status and message are those of the step that failed it."""

    def __init__(self, execution):
        cause = execution.error
        status = cause.status if cause is not None else 500
        reason = cause.message if cause is not None else f"it ended {execution.status.name}"
        super().__init__(f"saga {execution.name} failed: {reason}", status)
        self.execution = execution
