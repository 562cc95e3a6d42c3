// Builds notifier.wasm from notifier.js against the repo's WIT (world `participant`), with the
// componentize-js installed in ./node_modules. (The `jco componentize` command line does the
// same, but only for paths inside its working directory.)
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const { component } = await componentize({
  sourcePath: here('./notifier.js'),
  witPath: here('../../wit'),
  worldName: 'participant',
  // The participant needs no outgoing HTTP; stdio stays, so that errors reach the host's log.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(here('./notifier.wasm'), component);
console.log(`notifier.wasm: ${component.length} bytes`);
