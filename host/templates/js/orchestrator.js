// The {{name}} service, a saga orchestrator (WIT world `orchestrator`), as `saga-host new` wrote
// it: one aggregate, two routes, a broker command and the saga they run.
//
// - `POST /{{name}} {"item": "<uuid of a {{Participant}}>", "quantity": 2}` runs the saga
//   CREATE_{{NAME}}: its step asks the {{participant}} service to reserve the quantity
//   (`Reserve{{Participant}}`, compensated by `Release{{Participant}}`) and its commit stores
//   the {{Name}}: 201 with it, or the participant's refusal (400 when not enough is left).
// - The broker command `Create{{Name}}` does the same for another service (200 with it).
// - `GET /{{name}}/{uuid}` reads one back: 404 when there is none.
//
// `saga-host new js {{participant}}` writes that participant. `./build.sh` builds
// {{name}}.wasm; `./build.sh test` also runs tests/smoke.json (the participant stubbed). The
// SDK is copied into ./saga-sdk by build.mjs.

import { Aggregate, BusinessError, Response, Saga, Service } from './saga-sdk/index.js';
import { sagaManager } from './saga-sdk/orchestrator.js';

/** The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
 * `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them. */
class {{Name}} extends Aggregate {
  static indexes = ['item'];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function uuidOf(source, field) {
  const value = source[field];
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new BusinessError(`${field}: ${JSON.stringify(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

/** The payload of `Reserve{{Participant}}` and of its compensation `Release{{Participant}}`. */
const reservation = (context) => ({ uuid: context.item, quantity: context.quantity });

const storeReservation = (context, reply) => ({ ...context, reservation: reply.content() });

/** The participant refused (an ERROR reply): fail the step with its reason. Without `onError`
 * the saga would go on and commit. */
function refuse(context, reply) {
  throw new BusinessError(reply.content(), reply.status);
}

/** The saga's commit: its writes (the {{Name}} here, the reservation in the participant) become
 * visible together. */
function commit(context) {
  const created = {{Name}}.create({ item: context.item, quantity: context.quantity });
  return { ...context, created };
}

const CREATE_{{NAME}} = new Saga()
  .step()
  .invokeParticipant('Reserve{{Participant}}', reservation)
  .onReply(storeReservation)
  .onError(refuse)
  .withCompensation('Release{{Participant}}', reservation)
  .commit(commit);

/** Runs CREATE_{{NAME}}; when it fails, `run` throws with the failing step's status and message. */
function runCreate(request) {
  const content = request.content();
  if (content === null || typeof content !== 'object' || Array.isArray(content)) {
    throw new BusinessError('the body must be a JSON object');
  }
  const item = uuidOf(content, 'item');
  const { quantity } = content;
  if (!Number.isInteger(quantity) || quantity < 1) {
    throw new BusinessError(`quantity must be a whole number, 1 or more, not ${JSON.stringify(quantity)}`);
  }
  return sagaManager.run('CREATE_{{NAME}}', { item, quantity }).context.created;
}

function create(request) {
  return new Response(runCreate(request), { status: 201 });
}

function get(request) {
  return {{Name}}.get(uuidOf(request.params, 'uuid'));
}

const definition = new Service('{{name}}')
  .aggregate({{Name}})
  .restCommand('POST', '/{{name}}', create)
  .restQuery('GET', '/{{name}}/{uuid}', get)
  .brokerCommand('Create{{Name}}', runCreate)
  .saga('CREATE_{{NAME}}', CREATE_{{NAME}});

export const service = definition.service;
export const sagaCallbacks = definition.sagaCallbacks;
