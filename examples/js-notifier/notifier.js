// The notifier service, a saga participant written in JavaScript with the SDK (sdk/js).
//
// In the Exam service's saga GRADED_EXAM it is the step `NotifyStudent`, compensated by
// `RetractNotification` when a later step refuses the submission; and it keeps statistics per
// student from the `ExamCreated` domain events the host publishes. Its aggregates live in the
// host's storage, like any service's.
//
// Built with @bytecodealliance/componentize-js against ../../wit (world `participant`); see
// build.sh.

import { Aggregate, BusinessError, Condition, Ordering, Service, log } from '../../sdk/js/index.js';

class Notification extends Aggregate {
  static indexes = ['user_uuid'];
}

class Retraction extends Aggregate {
  static indexes = ['user_uuid'];
}

class StudentStats extends Aggregate {
  static indexes = ['user_uuid'];
}

function body(request) {
  const value = request.content();
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BusinessError('the body must be a JSON object');
  }
  return value;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function uuidField(source, field) {
  const value = source[field];
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new BusinessError(`${field}: ${JSON.stringify(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

/** A student's aggregates of one type, oldest first. */
function ofStudent(type, user_uuid) {
  return type.find(Condition.equal('user_uuid', user_uuid), { ordering: [Ordering.asc('created_at')] });
}

/** `NotifyStudent {user_uuid, exam_uuid}`: tells the student their submission was received. */
function notifyStudent(request) {
  const content = body(request);
  const user_uuid = uuidField(content, 'user_uuid');
  const exam_uuid = uuidField(content, 'exam_uuid');
  const text = `Your submission of exam ${exam_uuid} was received.`;
  const notification = Notification.create({ user_uuid, exam_uuid, text });
  log.info(`notified ${user_uuid} about exam ${exam_uuid}`);
  return { notification: notification.uuid };
}

/** `RetractNotification {user_uuid, exam_uuid}`: the compensation of `NotifyStudent`. A
 * compensation runs inside the failed saga, so this record vanishes with the saga's other
 * writes, the notification among them; the saga's history shows the retraction was done. */
function retractNotification(request) {
  const content = body(request);
  const user_uuid = uuidField(content, 'user_uuid');
  const exam_uuid = uuidField(content, 'exam_uuid');
  const text = `Your submission of exam ${exam_uuid} was not accepted.`;
  Retraction.create({ user_uuid, exam_uuid, saga: request.saga ?? null, text });
  return { retracted: true };
}

/** The `ExamCreated` event: counts the student's accepted exams. */
function examCreated(request) {
  const event = body(request);
  const user_uuid = uuidField(event.data ?? {}, 'user_uuid');
  const [stats] = ofStudent(StudentStats, user_uuid);
  if (stats) {
    stats.exams += 1;
    stats.save();
  } else {
    // Keyed by the student: two first events handled at once collide on the uuid, and the host
    // runs the loser again (it then finds the winner's record), instead of both creating one.
    StudentStats.create({ user_uuid, exams: 1 }, { uuid: user_uuid });
  }
  return null;
}

/** `GET /students/{user_uuid}`: what the student was told, and how many exams they passed in. */
function student(request) {
  const user_uuid = uuidField(request.params, 'user_uuid');
  const [stats] = ofStudent(StudentStats, user_uuid);
  return {
    user_uuid,
    exams: stats ? stats.exams : 0,
    notifications: ofStudent(Notification, user_uuid),
    retractions: ofStudent(Retraction, user_uuid),
  };
}

/** `GET /notifier/version`: what answers here (also the benchmark's no-op call). */
function version() {
  return { service: 'notifier', language: 'javascript' };
}

const notifier = new Service('notifier')
  .aggregate(Notification)
  .aggregate(Retraction)
  .aggregate(StudentStats)
  .brokerCommand('NotifyStudent', notifyStudent)
  .brokerCommand('RetractNotification', retractNotification)
  .brokerEvent('ExamCreated', examCreated)
  .restQuery('GET', '/students/{user_uuid}', student)
  .restQuery('GET', '/notifier/version', version);

export const service = notifier.service;
