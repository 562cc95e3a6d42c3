// Builds notifier.wasm from notifier.js and the SDK in ../../sdk/js against the repo's WIT
// (world `participant`), with the componentize-js installed in ./node_modules.
//
// componentize-js lets the component's JavaScript see only the directory it builds from, and
// the SDK lies outside this one: so the build runs from the repository's root, where both are
// (`jco componentize` has the same limit, for the paths it is given).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
process.chdir(here('../..'));
const { component } = await componentize({
  sourcePath: here('./notifier.js'),
  witPath: here('../../wit'),
  worldName: 'participant',
  // The participant needs no outgoing HTTP; stdio stays, so that errors reach the host's log.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(here('./notifier.wasm'), component);
console.log(`notifier.wasm: ${component.length} bytes`);
