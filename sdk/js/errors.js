// Errors a handler or saga callback throws to refuse, and those the SDK throws.
//
// The status decides what happens next (the WIT's `error` record): 400–499 is a business error
// (over HTTP the caller gets it; as a saga step's reply it is an ERROR reply, and the step's
// `onError` runs), 500–599 a system error (a SYSTEM_ERROR reply: the step is retried, then
// fails). Anything else a handler throws is reported as a system error naming the handler.

/** A refusal with a status. */
export class ServiceError extends Error {
  constructor(message, status) {
    super(message);
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      throw new RangeError(`an error status is 400–599 (business 4xx, system 5xx), not ${status}`);
    }
    this.name = new.target.name;
    this.status = status;
  }
}

/** The request breaks a business rule: 400 unless told otherwise (Minos's MinosException). */
export class BusinessError extends ServiceError {
  constructor(message, status = 400) {
    super(message, status);
  }
}

/** Something broke: 500 unless told otherwise. */
export class SystemError extends ServiceError {
  constructor(message, status = 500) {
    super(message, status);
  }
}

/** 404: no aggregate of that type with that uuid (or it was deleted). */
export class NotFoundError extends BusinessError {
  constructor(message) {
    super(message, 404);
  }
}

/** 409: the aggregate changed since it was read, or the uuid of a create is taken. */
export class ConflictError extends BusinessError {
  constructor(message) {
    super(message, 409);
  }
}

/** What `sagaManager.run` throws when the saga does not finish: the failing step's status and
 * message. */
export class SagaFailedError extends ServiceError {
  constructor(execution) {
    const cause = execution.error;
    super(
      `saga ${execution.name} failed: ${cause ? cause.message : `it ended ${execution.status}`}`,
      cause ? cause.status : 500,
    );
    this.execution = execution;
  }
}
