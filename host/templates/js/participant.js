// The {{name}} service, a saga participant (WIT world `participant`), as `saga-host new` wrote
// it: one aggregate, two routes and the commands a saga's step sends it.
//
// - `POST /{{name}} {"name": "widget", "quantity": 5}` stores a {{Name}}: 201 with it.
// - `GET /{{name}}/{uuid}` reads one back: 404 when there is none.
// - The broker command `Reserve{{Name}} {"uuid", "quantity"}` takes that quantity from the
//   {{Name}} — a saga's step (`saga-host new … --orchestrator --participant {{name}}` writes an
//   orchestrator that sends it) — and refuses (400) when not enough is left; `Release{{Name}}`
//   gives it back: the step's compensation.
//
// `./build.sh` builds {{name}}.wasm; `./build.sh test` also runs tests/smoke.json. The SDK is
// copied into ./saga-sdk by build.mjs.

import { Aggregate, BusinessError, Response, Service } from './saga-sdk/index.js';

/** The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
 * `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them. */
class {{Name}} extends Aggregate {}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function object(request) {
  const value = request.content();
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BusinessError('the body must be a JSON object');
  }
  return value;
}

function uuidOf(source, field) {
  const value = source[field];
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new BusinessError(`${field}: ${JSON.stringify(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

function quantityOf(source, least) {
  const value = source.quantity;
  if (!Number.isInteger(value) || value < least) {
    throw new BusinessError(`quantity must be a whole number, ${least} or more, not ${JSON.stringify(value)}`);
  }
  return value;
}

function create(request) {
  const content = object(request);
  const { name } = content;
  if (typeof name !== 'string' || name.trim() === '') {
    throw new BusinessError('name must be a text, not empty');
  }
  const created = {{Name}}.create({ name, quantity: quantityOf(content, 0) });
  return new Response(created, { status: 201 });
}

function get(request) {
  return {{Name}}.get(uuidOf(request.params, 'uuid'));
}

/** `Reserve{{Name}}`: in a saga, this write is staged under the saga — it becomes visible when
 * the saga commits and vanishes if the saga fails. */
function reserve(request) {
  const content = object(request);
  const stored = {{Name}}.get(uuidOf(content, 'uuid')); // none: a 404, the step fails
  const quantity = quantityOf(content, 1);
  if (stored.quantity < quantity) {
    throw new BusinessError(`only ${stored.quantity} of ${stored.name} left, not ${quantity}`);
  }
  stored.quantity -= quantity;
  stored.save();
  return { uuid: stored.uuid, reserved: quantity, left: stored.quantity };
}

/** `Release{{Name}}`, the compensation of `Reserve{{Name}}`: the obvious undo. A compensation
 * runs inside its failed saga, so this write vanishes with the reservation it undoes. */
function release(request) {
  const content = object(request);
  const stored = {{Name}}.get(uuidOf(content, 'uuid'));
  const quantity = quantityOf(content, 1);
  stored.quantity += quantity;
  stored.save();
  return { uuid: stored.uuid, released: quantity, left: stored.quantity };
}

const definition = new Service('{{name}}')
  .aggregate({{Name}})
  .restCommand('POST', '/{{name}}', create)
  .restQuery('GET', '/{{name}}/{uuid}', get)
  .brokerCommand('Reserve{{Name}}', reserve)
  .brokerCommand('Release{{Name}}', release);

export const service = definition.service;
