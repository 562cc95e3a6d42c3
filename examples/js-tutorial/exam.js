// The Exam service of the Minos saga tutorial in JavaScript, with the SDK (sdk/js): the Rust
// Exam service's routes and its saga GET_USER_ATTEMPTS, as an orchestrator. It replaces the
// Rust or Python Exam service next to either Attempt service.
//
// Built with @bytecodealliance/componentize-js against ../../wit (world `orchestrator`); see
// build.sh.

import { Aggregate, BusinessError, Condition, Ordering, Saga, Service } from '../../sdk/js/index.js';
import { sagaManager } from '../../sdk/js/orchestrator.js';

class Exam extends Aggregate {
  static indexes = ['user_uuid', 'exam_uuid'];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function uuidField(source, field) {
  const value = source?.[field];
  if (typeof value !== 'string' || !UUID.test(value)) {
    throw new BusinessError(`${field}: ${JSON.stringify(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

const prepareData = (context) => ({ user: context.user_uuid, exam: context.exam_uuid });

const storeAttempts = (context, reply) => ({ ...context, attempts: reply.content() });

/** The Attempt service refused (the limit is reached): fail the step with its reason. */
function refuse(context, reply) {
  throw new BusinessError(reply.content(), reply.status);
}

function commitResult(context) {
  const { user_uuid, exam_uuid, attempts } = context;
  return { exam: Exam.create({ user_uuid, exam_uuid, attempt: attempts + 1 }) };
}

const GET_USER_ATTEMPTS = new Saga()
  .step()
  .invokeParticipant('GetUserAttempts', prepareData)
  .onReply(storeAttempts)
  .onError(refuse)
  .commit(commitResult);

/** `POST /exams {user_uuid, exam_uuid}`: the exam, or why the saga refused it. */
function submitExam(request) {
  const content = request.content();
  const context = { user_uuid: uuidField(content, 'user_uuid'), exam_uuid: uuidField(content, 'exam_uuid') };
  return sagaManager.run('GET_USER_ATTEMPTS', context).context.exam;
}

function getExam(request) {
  return Exam.get(uuidField(request.params, 'uuid'));
}

/** `GET /exams?user_uuid=…&exam_uuid=…`: a user's submissions, oldest first. */
function listExams(request) {
  const conditions = ['user_uuid', 'exam_uuid']
    .filter((field) => field in request.query)
    .map((field) => Condition.equal(field, uuidField(request.query, field)));
  if (conditions.length === 0) {
    throw new BusinessError('give user_uuid, exam_uuid or both as query parameters');
  }
  return Exam.find(Condition.and(...conditions), { ordering: [Ordering.asc('created_at')], limit: 100 });
}

const exam = new Service('exam')
  .aggregate(Exam)
  .restCommand('POST', '/exams', submitExam)
  .brokerCommand('CreateExam', submitExam)
  .restQuery('GET', '/exams/{uuid}', getExam)
  .restQuery('GET', '/exams', listExams)
  .saga('GET_USER_ATTEMPTS', GET_USER_ATTEMPTS);

export const service = exam.service;
export const sagaCallbacks = exam.sagaCallbacks;
