// The saga builder's operations and callback names, and a service's exports: the manifest,
// handlers and saga callbacks as the host calls them, with errors turned into error records.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BusinessError } from '../errors.js';
import { Saga, SagaRequest } from '../saga.js';
import { Response, Service } from '../service.js';

const prepare = (context) => ({ user: context.user_uuid });
const store = (context, reply) => ({ ...context, attempts: reply.content() });
const refuse = (context, reply) => {
  throw new BusinessError(reply.content(), reply.status);
};
const commit = (context) => {
  context.committed = true; // changed in place: returning nothing keeps it
};

const tutorial = () =>
  new Saga().step().invokeParticipant('GetUserAttempts', prepare).onReply(store).onError(refuse).commit(commit);

test('the builder records the calls as saga operations', () => {
  assert.deepEqual(tutorial().operations, [
    { tag: 'step' },
    { tag: 'invoke-participant', val: { topic: 'GetUserAttempts', prepare: 'step1.invoke-participant' } },
    { tag: 'on-reply', val: 'step1.on-reply' },
    { tag: 'on-error', val: 'step1.on-error' },
    { tag: 'commit', val: 'commit' },
  ]);
  const branching = new Saga()
    .remoteStep()
    .invokeParticipant('NotifyStudent')
    .withCompensation('RetractNotification', prepare)
    .conditionalStep()
    .ifThen(() => true, 'INNER')
    .ifThen(() => false, 'OTHER')
    .elseThen('LAST')
    .localStep()
    .onExecute(commit)
    .onFailure(commit)
    .commit()
    .stepTimeout(2500);
  assert.deepEqual(branching.operations, [
    { tag: 'remote-step' },
    { tag: 'invoke-participant', val: { topic: 'NotifyStudent', prepare: undefined } },
    { tag: 'with-compensation', val: { topic: 'RetractNotification', prepare: 'step1.with-compensation' } },
    { tag: 'conditional-step' },
    { tag: 'if-then', val: { condition: 'step2.if-then1', saga: 'INNER' } },
    { tag: 'if-then', val: { condition: 'step2.if-then2', saga: 'OTHER' } },
    { tag: 'else-then', val: 'LAST' },
    { tag: 'local-step' },
    { tag: 'on-execute', val: 'step3.on-execute' },
    { tag: 'on-failure', val: 'step3.on-failure' },
    { tag: 'commit' },
  ]);
  assert.throws(() => new Saga().step().onReply('store'), /on-reply takes a function/);
});

const exam = new Service('exam')
  .restCommand('post', '/exams', (request) => new Response(request.content(), { status: 201 }))
  .restQuery('GET', '/exams/{uuid}', (request) => ({ uuid: request.params.uuid, q: request.query.q }))
  .brokerCommand('Refuse', () => {
    throw new BusinessError('no', 403);
  })
  .brokerEvent('Broken', () => {
    throw new TypeError('x is undefined');
  })
  .saga('GET_USER_ATTEMPTS', tutorial().timeout(60000));

const request = (handler, payload, extra = {}) => ({
  handler,
  trigger: undefined,
  payload,
  params: [],
  query: [],
  headers: [],
  user: undefined,
  ...extra,
});

test('the manifest', () => {
  const manifest = exam.service.describe();
  assert.equal(manifest.name, 'exam');
  assert.deepEqual(manifest.handlers.map((h) => h.name), ['POST /exams', 'GET /exams/{uuid}', 'command Refuse', 'event Broken']);
  assert.deepEqual(manifest.handlers[0].triggers, [{ tag: 'rest-command', val: { method: 'post', path: '/exams' } }]);
  assert.deepEqual(manifest.handlers[2].triggers, [{ tag: 'broker-command', val: 'Refuse' }]);
  assert.equal(manifest.sagas[0].name, 'GET_USER_ATTEMPTS');
  assert.equal(manifest.sagas[0].timeoutMs, 60000n, 'u64 as the binding wants it');
  assert.equal(manifest.sagas[0].stepTimeoutMs, undefined);
});

test('handlers answer, refuse and fail with error records', () => {
  assert.deepEqual(exam.service.handle(request('POST /exams', '{"a":1}')), { status: 201, payload: '{"a":1}' });
  const got = exam.service.handle(request('GET /exams/{uuid}', 'null', { params: [['uuid', 'u']], query: [['q', '1'], ['q', '2']] }));
  assert.deepEqual(JSON.parse(got.payload), { uuid: 'u', q: '1' });
  assert.throws(() => exam.service.handle(request('command Refuse', '{}')), { status: 403, message: 'no' });
  assert.throws(() => exam.service.handle(request('event Broken', '{}')), {
    status: 500,
    message: 'handler event Broken failed: TypeError: x is undefined',
  });
  assert.throws(() => exam.service.handle(request('POST /exams', 'null')), {
    status: 400,
    message: 'the request has no content: send a JSON body',
  });
});

test('saga callbacks as the host calls them', () => {
  const callbacks = exam.sagaCallbacks;
  const context = JSON.stringify({ user_uuid: 'u' });
  assert.deepEqual(callbacks.prepare('GET_USER_ATTEMPTS', 'step1.invoke-participant', context), {
    target: undefined,
    payload: '{"user":"u"}',
  });
  assert.deepEqual(
    JSON.parse(callbacks.onReply('GET_USER_ATTEMPTS', 'step1.on-reply', context, { status: 200, payload: '2' })),
    { user_uuid: 'u', attempts: 2 },
  );
  assert.throws(
    () => callbacks.onReply('GET_USER_ATTEMPTS', 'step1.on-error', context, { status: 400, payload: '"The maximum"' }),
    { status: 400, message: 'The maximum' },
  );
  assert.deepEqual(JSON.parse(callbacks.execute('GET_USER_ATTEMPTS', 'commit', context)), { user_uuid: 'u', committed: true });
  assert.throws(() => callbacks.execute('GET_USER_ATTEMPTS', 'step1.on-reply', context), {
    status: 500,
    message: 'callback step1.on-reply of saga GET_USER_ATTEMPTS is called by onReply, not execute',
  });
  const redirected = new Service('s').saga('S', new Saga().step().invokeParticipant('A', () => new SagaRequest('B', 1)).commit());
  assert.deepEqual(redirected.sagaCallbacks.prepare('S', 'step1.invoke-participant', '{}'), { target: 'B', payload: '1' });
});
