// Reports the minified and gzipped size of the SDK as an application bundler ships it: the SDK's
// own code plus eventsource-parser, with the peer dependencies (TanStack, Vue, React) left out.
// Each entry point is measured whole (everything it exports), and so is what a typical console
// imports. Fails when a figure exceeds its budget: README.md quotes these numbers.
//   node scripts/size.mjs   (after `npm run build`; `npm run size` does both)
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const KIB = 1024;
const external = ['@tanstack/query-core', '@tanstack/vue-query', '@tanstack/react-query', 'vue', 'react'];
/** name, what it imports, gzip budget in KiB. */
const cases = [
  ['tidings (all of it)', `export * from './dist/index.js';`, 11],
  ['tidings/query', `export * from './dist/query.js';`, 1.6],
  ['tidings/vue', `export * from './dist/vue.js';`, 2.2],
  ['tidings/react', `export * from './dist/react.js';`, 2.2],
  ['Vue console: createTidings + useTidings', `export { createTidings } from './dist/index.js'; export { useTidings } from './dist/vue.js';`, 10.5],
  ['React console: createTidings + useTidings', `export { createTidings } from './dist/index.js'; export { useTidings } from './dist/react.js';`, 10.5],
];

let over = 0;
for (const [name, contents, budgetKiB] of cases) {
  const result = await build({
    stdin: { contents, resolveDir: new URL('..', import.meta.url).pathname, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    write: false,
    external,
    logLevel: 'silent',
  });
  const code = result.outputFiles[0].contents;
  const gzip = gzipSync(code, { level: 9 }).length / KIB;
  const ok = gzip <= budgetKiB;
  if (!ok) over++;
  console.log(`${name.padEnd(44)} ${(code.length / KIB).toFixed(1).padStart(5)} KiB min ${gzip.toFixed(1).padStart(5)} KiB gzip  (budget ${budgetKiB} KiB)${ok ? '' : '  OVER BUDGET'}`);
}
if (over > 0) {
  console.error(`${over} size budget(s) exceeded: shrink the code, or raise the budget in scripts/size.mjs and the figures in README.md together.`);
  process.exit(1);
}
