// JSON text for what crosses the boundary: payloads, saga contexts, aggregate fields. A value
// that cannot be written (a BigInt, a cycle) is refused naming whose it was, so that the author
// knows which handler or callback to fix.

import { SystemError } from './errors.js';

/** JSON text of `value`; `whose` names it in the error ("the response of handler …"). */
export function toJson(value, whose) {
  try {
    // undefined (a handler that returns nothing) is JSON null.
    return JSON.stringify(value === undefined ? null : value);
  } catch (error) {
    throw new SystemError(`${whose} cannot be sent as JSON: ${error.message}`);
  }
}
