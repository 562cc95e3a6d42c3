// The module that speaks the imports every service has (world `participant`): storage, the
// broker, logging. Here the binding's conventions end: u64 values become Numbers, options
// `undefined`, and a refused call's `{tag, val}` becomes one of the SDK's errors. (The
// orchestrator's import, `sagas`, is in orchestrator.js: a participant's build must not see it.)

import * as storage from 'saga:host/storage@0.2.0';
import * as broker from 'saga:host/broker@0.2.0';
import { log as hostLog } from 'saga:host/logging@0.2.0';
import { ConflictError, NotFoundError, SystemError } from './errors.js';
import { toJson } from './json.js';

/** Runs a host call; a refusal becomes an SDK error (`what` names the interface). */
function refusable(what, call) {
  try {
    return call();
  } catch (error) {
    const reason = error?.payload;
    if (reason?.tag === 'not-found') throw new NotFoundError(reason.val);
    if (reason?.tag === 'conflict') throw new ConflictError(reason.val);
    if (reason?.tag) throw new SystemError(`${what} refused (${reason.tag}): ${reason.val}`);
    throw error;
  }
}

/** An aggregate as stored, its fields parsed and its numbers plain. */
function stored(aggregate) {
  return {
    uuid: aggregate.uuid,
    version: Number(aggregate.version),
    createdAt: Number(aggregate.createdAt),
    updatedAt: Number(aggregate.updatedAt),
    data: JSON.parse(aggregate.data),
  };
}

const version = (expected) => (expected === undefined ? undefined : BigInt(expected));

export const store = {
  create: (type, uuid, data) => stored(refusable('storage', () => storage.create(type, uuid, data))),
  get: (type, uuid) => stored(refusable('storage', () => storage.get(type, uuid))),
  update: (type, uuid, expectedVersion, fields) =>
    stored(refusable('storage', () => storage.update(type, uuid, version(expectedVersion), fields))),
  delete: (type, uuid, expectedVersion) =>
    refusable('storage', () => storage.delete(type, uuid, version(expectedVersion))),
  find: (type, nodes, ordering, limit) =>
    refusable('storage', () => storage.find(type, nodes, ordering, limit)).map(stored),
};

/** Publishes `content` as an event to every service subscribed to `topic`. Like every
 * message, it leaves when the call succeeds (in a saga: when the saga finishes). */
export function publish(topic, content) {
  const payload = toJson(content, `the event ${topic}`);
  refusable('the broker', () => broker.publish(topic, payload));
}

/** Sends `content` as a command to the service that handles `topic`; its reply arrives on
 * `replyTopic` (a broker command of this service) when given. Returns the message id. */
export function send(topic, content, replyTopic) {
  const payload = toJson(content, `the command ${topic}`);
  return refusable('the broker', () => broker.send(topic, payload, replyTopic));
}

/** The host's log (recorded with the service's name and the current saga and message ids):
 * `log.info('…')`, and `trace`, `debug`, `warn`, `error`. */
export const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (message) => hostLog(level, String(message))]),
);
