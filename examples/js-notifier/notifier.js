// The notifier service, a saga participant written in JavaScript.
//
// In the Exam service's saga GRADED_EXAM it is the step `NotifyStudent`, compensated by
// `RetractNotification` when a later step refuses the submission; and it keeps statistics per
// student from the `ExamCreated` domain events the host publishes. Its aggregates live in the
// host's storage, like any service's.
//
// Built with @bytecodealliance/componentize-js against ../../wit (world `participant`); see
// build.sh.

import * as storage from 'saga:host/storage@0.2.0';
import { log } from 'saga:host/logging@0.2.0';

/** A handler's error: 400–499 a business error, 500–599 a system error. */
function refuse(message, status = 400) {
  return { status, message };
}

function body(request) {
  let value;
  try {
    value = JSON.parse(request.payload);
  } catch (error) {
    throw refuse(`the body is not JSON: ${error.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw refuse('the body must be a JSON object');
  }
  return value;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function uuidField(source, field) {
  const value = source[field];
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw refuse(`${field}: ${JSON.stringify(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

function param(request, name) {
  const found = request.params.find(([key]) => key === name);
  return Object.fromEntries(found ? [found] : []);
}

/** A condition that every field equals its value: an AND of EQUAL nodes, node 0 the root. */
function allEqual(fields) {
  const entries = Object.entries(fields);
  return [
    { tag: 'and', val: entries.map((_, i) => i + 1) },
    ...entries.map(([field, value]) => ({
      tag: 'compare',
      val: { field, op: 'equal', value: JSON.stringify(value) },
    })),
  ];
}

function find(type, fields) {
  return storage
    .find(type, allEqual(fields), [{ field: 'created_at', descending: false }], undefined)
    // u64 values arrive as BigInt; versions are small enough for a Number.
    .map((aggregate) => ({ ...JSON.parse(aggregate.data), uuid: aggregate.uuid, version: Number(aggregate.version) }));
}

/** `NotifyStudent {user_uuid, exam_uuid}`: tells the student their submission was received. */
function notifyStudent(request) {
  const content = body(request);
  const user_uuid = uuidField(content, 'user_uuid');
  const exam_uuid = uuidField(content, 'exam_uuid');
  const text = `Your submission of exam ${exam_uuid} was received.`;
  const notification = storage.create('Notification', undefined, JSON.stringify({ user_uuid, exam_uuid, text }));
  log('info', `notified ${user_uuid} about exam ${exam_uuid}`);
  return { notification: notification.uuid };
}

/** `RetractNotification {user_uuid, exam_uuid}`: the compensation of `NotifyStudent`. The
 * notification itself vanished with the failed saga's writes; what stays is the record that
 * the student was told it was retracted. */
function retractNotification(request) {
  const content = body(request);
  const user_uuid = uuidField(content, 'user_uuid');
  const exam_uuid = uuidField(content, 'exam_uuid');
  const saga = request.headers.find((header) => header.name === 'saga')?.value ?? null;
  const text = `Your submission of exam ${exam_uuid} was not accepted.`;
  storage.create('Retraction', undefined, JSON.stringify({ user_uuid, exam_uuid, saga, text }));
  return { retracted: true };
}

/** The `ExamCreated` event: counts the student's accepted exams. */
function examCreated(request) {
  const event = body(request);
  const user_uuid = uuidField(event.data ?? {}, 'user_uuid');
  const [stats] = find('StudentStats', { user_uuid });
  if (stats) {
    storage.update('StudentStats', stats.uuid, BigInt(stats.version), JSON.stringify({ exams: stats.exams + 1 }));
  } else {
    // Keyed by the student: two first events handled at once collide on the uuid, and the host
    // runs the loser again (it then finds the winner's record), instead of both creating one.
    storage.create('StudentStats', user_uuid, JSON.stringify({ user_uuid, exams: 1 }));
  }
  return null;
}

/** `GET /students/{user_uuid}`: what the student was told, and how many exams they passed in. */
function student(request) {
  const user_uuid = uuidField(param(request, 'user_uuid'), 'user_uuid');
  const [stats] = find('StudentStats', { user_uuid });
  return {
    user_uuid,
    exams: stats ? stats.exams : 0,
    notifications: find('Notification', { user_uuid }),
    retractions: find('Retraction', { user_uuid }),
  };
}

/** `GET /notifier/version`: what answers here (also the benchmark's no-op call). */
function version() {
  return { service: 'notifier', language: 'javascript' };
}

const handlers = {
  'notify-student': notifyStudent,
  'retract-notification': retractNotification,
  'exam-created': examCreated,
  student,
  version,
};

const query = (path) => ({ tag: 'rest-query', val: { method: 'get', path } });

export const service = {
  describe() {
    return {
      name: 'notifier',
      handlers: [
        { name: 'notify-student', triggers: [{ tag: 'broker-command', val: 'NotifyStudent' }] },
        { name: 'retract-notification', triggers: [{ tag: 'broker-command', val: 'RetractNotification' }] },
        { name: 'exam-created', triggers: [{ tag: 'broker-event', val: 'ExamCreated' }] },
        { name: 'student', triggers: [query('/students/{user_uuid}')] },
        { name: 'version', triggers: [query('/notifier/version')] },
      ],
      aggregates: [
        { name: 'Notification', indexes: ['user_uuid'] },
        { name: 'Retraction', indexes: ['user_uuid'] },
        { name: 'StudentStats', indexes: ['user_uuid'] },
      ],
      sagas: [],
    };
  },

  handle(request) {
    try {
      return { status: 200, payload: JSON.stringify(handlers[request.handler](request)) };
    } catch (error) {
      if (typeof error?.status === 'number') {
        throw error; // refuse(...): the error record itself
      }
      // A storage error the handler did not expect, or a bug: a system error, with its reason.
      const reason = error?.payload ? `${error.payload.tag}: ${error.payload.val}` : String(error);
      throw refuse(reason, 500);
    }
  },
};
