// The JavaScript Exam service under `saga-host test-run`: the harness runs it in-process (no
// server) with the Attempt service stubbed, from the JSON script beside this file. SAGA_HOST
// names the binary (default: the one on PATH); build the service first with ../build.sh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('./stubbed-attempts.json', import.meta.url));
const sagaHost = process.env.SAGA_HOST ?? 'saga-host';

test('the exam service against stubbed attempts', () => {
  const run = spawnSync(sagaHost, ['test-run', script], { encoding: 'utf8', timeout: 300_000 });
  const report = JSON.parse(run.stdout || 'null');
  assert.equal(run.status, 0, JSON.stringify(report, null, 2) + run.stderr);
  assert.equal(report.steps[0].answer.body.attempt, 3);
  assert.match(report.steps[2].answer.body.error, /maximum number of attempts/);
});
