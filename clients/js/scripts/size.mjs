// Reports the minified and gzipped size of each entry point as an application bundler would
// ship it: the SDK's own code plus eventsource-parser, with the peer dependencies left out.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const entries = ['index', 'query', 'vue', 'react'];
const external = ['@tanstack/query-core', '@tanstack/vue-query', '@tanstack/react-query', 'vue', 'react'];

for (const name of entries) {
  const result = await build({
    entryPoints: [`dist/${name}.js`],
    bundle: true,
    minify: true,
    format: 'esm',
    write: false,
    external,
    logLevel: 'silent',
  });
  const code = result.outputFiles[0].contents;
  console.log(`${name.padEnd(6)} ${(code.length / 1024).toFixed(1)} KiB min, ${(gzipSync(code).length / 1024).toFixed(1)} KiB gzip`);
}
