// Builds exam.wasm from exam.js and the SDK in ../../sdk/js against the repo's WIT (world
// `orchestrator`), with the componentize-js installed in ./node_modules. It runs from the
// repository's root, as ../js-notifier/build.mjs explains: the SDK lies outside this directory.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
process.chdir(here('../..'));
const { component } = await componentize({
  sourcePath: here('./exam.js'),
  witPath: here('../../wit'),
  worldName: 'orchestrator',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(here('./exam.wasm'), component);
console.log(`exam.wasm: ${component.length} bytes`);
