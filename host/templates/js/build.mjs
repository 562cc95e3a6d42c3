// Builds {{name}}.wasm from service.js (world `{{world}}`) with the componentize-js installed in
// ./node_modules, against the WIT in {{sdk}}/wit.
//
// componentize-js lets the component's JavaScript see only the directory it builds from, so the
// SDK ({{sdk}}/sdk/js) is copied into ./saga-sdk first, fresh at every build: service.js
// imports it from there.
import { componentize } from '@bytecodealliance/componentize-js';
import { cp, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const sdk = '{{sdk}}';
const here = (path) => fileURLToPath(new URL(path, import.meta.url));
await rm(here('./saga-sdk'), { recursive: true, force: true });
await cp(`${sdk}/sdk/js`, here('./saga-sdk'), {
  recursive: true,
  filter: (source) => !source.startsWith(`${sdk}/sdk/js/test`),
});
process.chdir(here('.'));
const { component } = await componentize({
  sourcePath: here('./service.js'),
  witPath: `${sdk}/wit`,
  worldName: '{{world}}',
  // No outgoing HTTP; stdio stays, so that errors reach the host's log.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(here('./{{name}}.wasm'), component);
console.log(`{{name}}.wasm: ${component.length} bytes`);
