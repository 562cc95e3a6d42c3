// Saga definitions, written like the tutorial's:
//
//   new Saga()
//     .step()
//     .invokeParticipant('GetUserAttempts', prepareData)
//     .onReply(storeAttempts)
//     .onError(refuse)
//     .commit(commitResult)
//
// The builder records the calls as the WIT's `saga-operation` list ({tag, val} variants); the
// host checks the definition when the component loads. Each callback gets a name from its place
// in the definition ("step1.invoke-participant", "commit"): stable as long as the definition
// is. A service registers the saga under the name it runs it by (`service.saga(NAME, saga)`);
// a conditional step's branches name such sagas.
//
// Callbacks take the saga context (a plain object): `prepare(context)` returns the command's
// payload (or a `SagaRequest` to send it elsewhere); `onReply(context, reply)` and the others
// return the new context (undefined: the context as the callback left it).

/** What a prepare callback may return instead of the bare payload: the payload and another
 * topic to send it to. */
export class SagaRequest {
  constructor(target, content) {
    this.target = target;
    this.content = content;
  }
}

/** A participant's reply, as `onReply` / `onSuccess` / `onError` receive it. */
export class SagaReply {
  constructor(status, payload) {
    this.status = status;
    this.payload = payload;
  }

  get ok() {
    return this.status >= 200 && this.status <= 299;
  }

  /** The participant's response; for an error reply, its message. */
  content() {
    return JSON.parse(this.payload);
  }
}

export class Saga {
  #steps = 0;
  #branches = 0;

  constructor() {
    this.operations = [];
    /** callback name → { kind, callback }; kind is the saga-callbacks export that calls it. */
    this.callbacks = new Map();
    this.stepTimeoutMs = undefined;
    this.timeoutMs = undefined;
  }

  #add(tag, val) {
    this.operations.push(val === undefined ? { tag } : { tag, val });
    return this;
  }

  #start(tag) {
    this.#steps += 1;
    this.#branches = 0;
    return this.#add(tag);
  }

  #name(what, kind, callback) {
    if (typeof callback !== 'function') {
      throw new TypeError(`${what} takes a function, not ${String(callback)}`);
    }
    const name = what === 'commit' ? 'commit' : `step${this.#steps}.${what}`;
    this.callbacks.set(name, { kind, callback });
    return name;
  }

  #invocation(what, topic, prepare) {
    return { topic, prepare: prepare === undefined ? undefined : this.#name(what, 'prepare', prepare) };
  }

  /** Starts a step; what follows decides whether it is remote, local or conditional. */
  step() {
    return this.#start('step');
  }

  remoteStep() {
    return this.#start('remote-step');
  }

  localStep() {
    return this.#start('local-step');
  }

  conditionalStep() {
    return this.#start('conditional-step');
  }

  /** Remote step: sends the command `topic` with the payload `prepare(context)` returns (the
   * whole context without it). */
  invokeParticipant(topic, prepare) {
    return this.#add('invoke-participant', this.#invocation('invoke-participant', topic, prepare));
  }

  /** Remote step: `callback(context, reply)` takes a SUCCESS reply. */
  onReply(callback) {
    return this.#add('on-reply', this.#name('on-reply', 'reply', callback));
  }

  /** Minos 0.7's name for `onReply`. */
  onSuccess(callback) {
    return this.#add('on-success', this.#name('on-success', 'reply', callback));
  }

  /** Remote step: `callback(context, reply)` takes an ERROR (4xx) reply; it returns a context to
   * go on or throws to fail the step. Without it an ERROR reply does not stop the saga. */
  onError(callback) {
    return this.#add('on-error', this.#name('on-error', 'reply', callback));
  }

  /** Remote step: the command that undoes it when a later step fails. */
  withCompensation(topic, prepare) {
    return this.#add('with-compensation', this.#invocation('with-compensation', topic, prepare));
  }

  /** Local step: `callback(context)` runs in this service and returns the new context. */
  onExecute(callback) {
    return this.#add('on-execute', this.#name('on-execute', 'execute', callback));
  }

  /** Local step: `callback(context)` undoes `onExecute` when a later step fails. */
  onFailure(callback) {
    return this.#add('on-failure', this.#name('on-failure', 'execute', callback));
  }

  /** Conditional step: when `condition(context)` holds, the saga registered as `saga` runs. */
  ifThen(condition, saga) {
    this.#branches += 1;
    return this.#add('if-then', { condition: this.#name(`if-then${this.#branches}`, 'condition', condition), saga });
  }

  /** Conditional step: the saga registered as `saga` runs when no branch holds. */
  elseThen(saga) {
    return this.#add('else-then', saga);
  }

  /** Ends the definition; `callback(context)` runs once every step succeeded and returns the
   * final context. */
  commit(callback) {
    return this.#add('commit', callback === undefined ? undefined : this.#name('commit', 'execute', callback));
  }

  /** How long each remote step may wait for its reply, in milliseconds. */
  stepTimeout(ms) {
    this.stepTimeoutMs = ms;
    return this;
  }

  /** How long the whole saga may take, in milliseconds. */
  timeout(ms) {
    this.timeoutMs = ms;
    return this;
  }
}
