// Event-sourced aggregates, stored by the host.
//
//   class Notification extends Aggregate {
//     static indexes = ['user_uuid'];
//   }
//   const notification = Notification.create({ user_uuid, text });
//   notification.text = 'changed';
//   notification.save();                      // an update event with the changed fields
//   Notification.find(Condition.equal('user_uuid', user), { ordering: [Ordering.asc('created_at')] });
//
// The type's name is the class's (or `static aggregateName`); `static indexes` lists fields
// whose equality conditions the host answers from an index. An aggregate's fields are its own
// properties (instance fields declared in the class body are defaults); its metadata (`uuid`, `version`, `createdAt`, `updatedAt`, milliseconds since the
// epoch) is kept apart and read-only. Every write is an event, and the host publishes
// `{Name}Created`, `{Name}Updated`, `{Name}Deleted` with the call's transaction.

import { Condition } from './conditions.js';
import { store } from './host.js';
import { toJson } from './json.js';

const METADATA = Symbol('aggregate metadata');

export class Aggregate {
  static indexes = [];

  static get aggregateName() {
    return this.name;
  }

  /** An aggregate with `fields` as its properties, not yet stored: `create` and `get` make
   * them (a subclass's instance fields are set after this constructor: they are defaults). */
  static of(fields, uuid) {
    const aggregate = new this();
    Object.assign(aggregate, fields);
    // `stored`: the fields as last stored (JSON text by field), for `save` to send only changes.
    aggregate[METADATA] = { uuid, version: 0, createdAt: undefined, updatedAt: undefined, stored: undefined };
    return aggregate;
  }

  get uuid() {
    return this[METADATA].uuid;
  }

  get version() {
    return this[METADATA].version;
  }

  get createdAt() {
    return this[METADATA].createdAt;
  }

  get updatedAt() {
    return this[METADATA].updatedAt;
  }

  /** Stores a new aggregate. Without `uuid` the host picks a random one; with it (a uuid derived
   * from what identifies the aggregate) concurrent creators collide, and the host runs the
   * losers again. */
  static create(fields, { uuid } = {}) {
    const aggregate = this.of(fields, uuid);
    aggregate.save();
    return aggregate;
  }

  /** The aggregate with this uuid; a `NotFoundError` (404) when there is none. */
  static get(uuid) {
    return loaded(this, store.get(this.aggregateName, uuid));
  }

  /** The aggregates that satisfy `condition`, sorted by `ordering` (creation order without), at
   * most `limit`. */
  static find(condition = Condition.TRUE, { ordering = [], limit } = {}) {
    return store
      .find(this.aggregateName, condition.flatten(), ordering, limit)
      .map((found) => loaded(this, found));
  }

  /** Creates the aggregate if it was never stored; otherwise writes the fields changed since it
   * was read as one update event, checked against the version read (a `ConflictError`, 409, if
   * it changed meanwhile). No change, no event. */
  save() {
    const type = this.constructor.aggregateName;
    const fields = this.fields();
    const { stored } = this[METADATA];
    if (stored === undefined) {
      record(this, store.create(type, this.uuid, toJson(fields, `a new ${type}`)));
      return;
    }
    const changed = Object.fromEntries(
      Object.entries(fields).filter(([name, value]) => stored[name] !== JSON.stringify(value)),
    );
    if (Object.keys(changed).length > 0) {
      record(this, store.update(type, this.uuid, this.version, toJson(changed, `${type} ${this.uuid}`)));
    }
  }

  /** Deletes the aggregate (a delete event); checked against the version read. */
  delete() {
    store.delete(this.constructor.aggregateName, this.uuid, this.version);
  }

  /** The fields, without the metadata. */
  fields() {
    return Object.fromEntries(Object.entries(this)); // string keys only: not the metadata
  }

  /** Flat, as Minos writes it: the metadata and the fields side by side. */
  toJSON() {
    const { uuid, version, createdAt, updatedAt } = this[METADATA];
    return { uuid, version, created_at: createdAt, updated_at: updatedAt, ...this.fields() };
  }
}

/** Keeps what the host returned after a write or a read. */
function record(aggregate, { data, ...metadata }) {
  const stored = Object.fromEntries(Object.entries(data).map(([name, value]) => [name, JSON.stringify(value)]));
  aggregate[METADATA] = { ...metadata, stored };
}

function loaded(type, found) {
  const aggregate = type.of(found.data, found.uuid);
  record(aggregate, found);
  return aggregate;
}
