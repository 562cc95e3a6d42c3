// A service: its handlers and the triggers that reach them, its aggregates and sagas, and the
// exports componentize-js calls.
//
//   const notifier = new Service('notifier')
//     .aggregate(Notification)
//     .brokerCommand('NotifyStudent', notifyStudent)
//     .restQuery('GET', '/students/{user_uuid}', student);
//   export const service = notifier.service;            // and, for an orchestrator:
//   export const sagaCallbacks = notifier.sagaCallbacks;
//
// A handler takes a `Request` and returns a `Response`, or any value (200 with it as JSON). To
// refuse, it throws a `BusinessError` (4xx) or a `SystemError` (5xx); anything else it throws is
// a system error that names the handler.

import { BusinessError, ServiceError } from './errors.js';
import { toJson } from './json.js';
import { SagaReply, SagaRequest } from './saga.js';

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'];

/** A REST request or a broker message for one handler. */
export class Request {
  constructor(request) {
    this.handler = request.handler;
    /** The body or payload as JSON text. */
    this.raw = request.payload;
    /** Path parameters by name: {uuid: '…'} for "/exams/{uuid}". */
    this.params = Object.fromEntries(request.params);
    /** Query-string parameters: the first value of each name. */
    this.query = Object.fromEntries([...request.query].reverse());
    /** Headers by name (HTTP header names are lower case). */
    this.headers = Object.fromEntries(request.headers.map(({ name, value }) => [name, value]));
    /** On whose behalf, if anyone's. */
    this.user = request.user;
  }

  /** The body or payload, parsed. */
  content() {
    if (this.raw === 'null') {
      throw new BusinessError('the request has no content: send a JSON body');
    }
    return JSON.parse(this.raw);
  }

  /** The id of the saga this message is a step or compensation of, if any. */
  get saga() {
    return this.headers.saga;
  }
}

/** A handler's answer: `new Response(data)` is 200; `{status}` picks another 2xx. */
export class Response {
  constructor(data, { status = 200 } = {}) {
    if (!Number.isInteger(status) || status < 200 || status > 299) {
      throw new RangeError(`a Response's status is 200–299, not ${status}; to refuse, throw a BusinessError`);
    }
    this.data = data;
    this.status = status;
  }
}

/** Runs `call`, turning what it throws into the WIT's error record. */
function answering(what, call) {
  try {
    return call();
  } catch (error) {
    if (error instanceof ServiceError) {
      throw { status: error.status, message: error.message };
    }
    throw { status: 500, message: `${what} failed: ${error}` };
  }
}

const CALLBACK_EXPORT = { prepare: 'prepare', reply: 'onReply', execute: 'execute', condition: 'condition' };

export class Service {
  /** `name` ("exam"): letters, digits, "-" and "_"; it scopes the service's aggregates. */
  constructor(name) {
    this.name = name;
    this.handlers = new Map();
    this.aggregates = [];
    this.sagas = new Map();
  }

  #handler(name, trigger, handler) {
    if (typeof handler !== 'function') {
      throw new TypeError(`the handler of ${name} is not a function`);
    }
    if (this.handlers.has(name)) {
      throw new Error(`service ${this.name} declares ${name} twice`);
    }
    this.handlers.set(name, { trigger, handler });
    return this;
  }

  #route(kind, method, path, handler) {
    const upper = method.toUpperCase();
    if (!METHODS.includes(upper)) {
      throw new Error(`unknown HTTP method ${method} for route ${path}; use one of ${METHODS.join(', ')}`);
    }
    return this.#handler(`${upper} ${path}`, { tag: kind, val: { method: upper.toLowerCase(), path } }, handler);
  }

  /** An HTTP route that may write; `{name}` segments are path parameters (`request.params`). */
  restCommand(method, path, handler) {
    return this.#route('rest-command', method, path, handler);
  }

  /** An HTTP route that only reads: the handler may not write to storage. */
  restQuery(method, path, handler) {
    return this.#route('rest-query', method, path, handler);
  }

  /** A broker command, e.g. a saga step's "NotifyStudent"; the result is the reply. */
  brokerCommand(topic, handler) {
    return this.#handler(`command ${topic}`, { tag: 'broker-command', val: topic }, handler);
  }

  /** A broker query: like a command, but it may not write. */
  brokerQuery(topic, handler) {
    return this.#handler(`query ${topic}`, { tag: 'broker-query', val: topic }, handler);
  }

  /** A domain event, e.g. "ExamCreated": every subscribed service gets each once. */
  brokerEvent(topic, handler) {
    return this.#handler(`event ${topic}`, { tag: 'broker-event', val: topic }, handler);
  }

  /** An aggregate class (see aggregate.js) the service stores. */
  aggregate(type) {
    this.aggregates.push(type);
    return this;
  }

  /** A saga, under the name `sagaManager.run` and conditional steps know it by. */
  saga(name, saga) {
    this.sagas.set(name, saga);
    return this;
  }

  /** The manifest `service.describe` returns. */
  describe() {
    const millis = (ms) => (ms === undefined ? undefined : BigInt(Math.round(ms)));
    return {
      name: this.name,
      handlers: [...this.handlers].map(([name, { trigger }]) => ({ name, triggers: [trigger] })),
      aggregates: this.aggregates.map((type) => ({ name: type.aggregateName, indexes: [...type.indexes] })),
      sagas: [...this.sagas].map(([name, saga]) => ({
        name,
        operations: saga.operations,
        stepTimeoutMs: millis(saga.stepTimeoutMs),
        timeoutMs: millis(saga.timeoutMs),
      })),
    };
  }

  handle(request) {
    const found = this.handlers.get(request.handler);
    const what = `handler ${request.handler}`;
    return answering(what, () => {
      if (!found) {
        throw new ServiceError(`service ${this.name} has no handler ${request.handler}`, 500);
      }
      const result = found.handler(new Request(request));
      const response = result instanceof Response ? result : new Response(result);
      return { status: response.status, payload: toJson(response.data, `the response of ${what}`) };
    });
  }

  /** Calls a saga's callback of the kind the export expects; returns [result, what]. */
  #callback(saga, name, kind, ...args) {
    const callback = this.sagas.get(saga)?.callbacks.get(name);
    if (!callback) {
      throw new ServiceError(`service ${this.name} has no callback ${name} in saga ${saga}`, 500);
    }
    if (callback.kind !== kind) {
      throw new ServiceError(`callback ${name} of saga ${saga} is called by ${CALLBACK_EXPORT[callback.kind]}, not ${CALLBACK_EXPORT[kind]}`, 500);
    }
    return callback.callback(...args);
  }

  #newContext(saga, name, kind, context, ...args) {
    const what = `callback ${name} of saga ${saga}`;
    return answering(what, () => {
      const current = JSON.parse(context);
      const result = this.#callback(saga, name, kind, current, ...args);
      return toJson(result === undefined ? current : result, `the context ${what} returned`);
    });
  }

  /** The `service` export. */
  get service() {
    return { describe: () => this.describe(), handle: (request) => this.handle(request) };
  }

  /** The `saga-callbacks` export (world `orchestrator`). */
  get sagaCallbacks() {
    return {
      prepare: (saga, name, context) => {
        const what = `callback ${name} of saga ${saga}`;
        return answering(what, () => {
          let payload = this.#callback(saga, name, 'prepare', JSON.parse(context));
          let target;
          if (payload instanceof SagaRequest) {
            ({ target, content: payload } = payload);
          }
          return { target, payload: toJson(payload, `the payload ${what} built`) };
        });
      },
      onReply: (saga, name, context, reply) =>
        this.#newContext(saga, name, 'reply', context, new SagaReply(reply.status, reply.payload)),
      execute: (saga, name, context) => this.#newContext(saga, name, 'execute', context),
      condition: (saga, name, context) =>
        answering(`callback ${name} of saga ${saga}`, () =>
          Boolean(this.#callback(saga, name, 'condition', JSON.parse(context))),
        ),
    };
  }
}
