// saga-host's JavaScript SDK: aggregates, conditions, handlers and sagas with the Minos model's
// names, for services built with componentize-js. Variants, options and BigInts stay inside;
// see the README's "Writing a service in JavaScript". `sagaManager` is in ./orchestrator.js.

export { Aggregate } from './aggregate.js';
export { Condition, Ordering } from './conditions.js';
export {
  BusinessError,
  ConflictError,
  NotFoundError,
  SagaFailedError,
  ServiceError,
  SystemError,
} from './errors.js';
export { log, publish, send } from './host.js';
export { Saga, SagaReply, SagaRequest } from './saga.js';
export { Request, Response, Service } from './service.js';
