// Running the service's sagas: import this only in a component built for the world
// `orchestrator` (it imports `saga:host/sagas`, which a participant's world does not have).
//
//   const saga = sagaManager.run('GET_USER_ATTEMPTS', { user_uuid, exam_uuid });
//
// `run` waits until the saga has finished or failed, and throws a `SagaFailedError` (the
// failing step's status and message) when it failed, unless `{ raiseOnError: false }`.

import * as sagas from 'saga:host/sagas@0.2.0';
import { SagaFailedError, ServiceError } from './errors.js';
import { toJson } from './json.js';

/** A saga execution: `status` is the WIT's ("finished", "errored", "compensation-failed", …). */
function execution({ id, name, status, context, error }) {
  return { uuid: id, name, status, context: JSON.parse(context), error: error ?? null };
}

function refusable(call) {
  try {
    return call();
  } catch (error) {
    const reason = error?.payload;
    if (reason?.status !== undefined) {
      throw new ServiceError(reason.message, reason.status >= 400 && reason.status <= 599 ? reason.status : 500);
    }
    throw error;
  }
}

export const sagaManager = {
  /** Runs the saga registered as `name` with `context`; `{ wait: false }` starts it and returns
   * at once (then it never throws for the saga's outcome). */
  run(name, context = {}, { wait = true, raiseOnError = true } = {}) {
    const payload = toJson(context, `the context of saga ${name}`);
    const started = execution(refusable(() => sagas.run(name, payload, { wait })));
    if (raiseOnError && (started.status === 'errored' || started.status === 'compensation-failed')) {
      throw new SagaFailedError(started);
    }
    return started;
  },

  /** An execution of this service's sagas. */
  get(uuid) {
    return execution(refusable(() => sagas.get(uuid)));
  },

  /** The saga this call works for, if any. */
  current() {
    return sagas.current();
  },
};
