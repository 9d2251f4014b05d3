// The package as a user installs it: packs the SDK (npm runs the build on prepack), checks the
// tarball's contents, lints it with publint and @arethetypeswrong/cli, checks the size budget,
// then installs the tarball with a plain `npm install <tarball>` into a scratch copy of each
// fixture app in package-test/ (core only; React 19 + @tanstack/react-query 5; Vue 3 +
// @tanstack/vue-query 5 + Vite) and runs its `check` script (type checks under bundler,
// node16 and node10 resolution, the React app's vitest example, the Vue app's `vite build`).
//   node scripts/package-test.mjs [core react vue]     (npm run test:package)
// Needs the npm registry (or a warm npm cache) for the fixtures' own dependencies.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('..', import.meta.url));
const fixtures = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['core', 'react', 'vue'];
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const ENTRIES = ['index', 'query', 'vue', 'react', 'testing'];

/** The environment of a user's shell: none of the npm_config_* this script inherits from
 * `npm run` (a flag like legacy-peer-deps would hide the very failures looked for here). */
const plainEnv = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k))), NO_COLOR: '1' };

function run(cmd, args, cwd, label) {
  const started = Date.now();
  try {
    const out = execFileSync(cmd, args, { cwd, env: plainEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    console.log(`  ok  ${label} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return out;
  } catch (error) {
    console.error(`  FAIL ${label}\n${error.stdout ?? ''}${error.stderr ?? ''}`);
    throw new Error(`${label} failed`);
  }
}

const scratch = mkdtempSync(join(tmpdir(), 'tidings-package-'));
try {
  console.log('packing');
  const packOut = run(npm, ['pack', '--json', '--pack-destination', scratch], here, 'npm pack (prepack builds dist/)');
  // The prepack build prints before the JSON.
  const packed = JSON.parse(packOut.slice(packOut.search(/^\[/m)));
  const tarball = join(scratch, packed[0].filename);
  const files = new Set(packed[0].files.map((f) => f.path));
  const required = [
    'package.json',
    'README.md',
    'LICENSE',
    'CHANGELOG.md',
    'profiles/azion-console.json',
    ...ENTRIES.flatMap((e) => [`dist/${e}.js`, `dist/${e}.d.ts`]),
  ];
  const missing = required.filter((f) => !files.has(f));
  if (missing.length > 0) throw new Error(`the tarball lacks ${missing.join(', ')}`);
  console.log(`  ok  ${packed[0].filename}: ${files.size} files, ${(packed[0].size / 1024).toFixed(1)} KiB, every entry built`);

  run(process.execPath, [join(here, 'node_modules/publint/src/cli.js'), '--strict', tarball], here, 'publint --strict');
  // ESM only, by design (as eventsource-parser 4, its dependency): `require()` of it works
  // where Node's require(esm) does, so that one rule is set aside; every other resolution,
  // node10's included, must be clean.
  const profiles = readdirSync(join(here, 'profiles')).map((f) => `profiles/${f}`);
  run(
    process.execPath,
    [join(here, 'node_modules/@arethetypeswrong/cli/dist/index.js'), tarball, '--ignore-rules', 'cjs-resolves-to-esm', '--entrypoints', '.', 'query', 'vue', 'react', 'testing', ...profiles],
    here,
    'attw (node10, node16, bundler)',
  );
  console.log(run(process.execPath, [join(here, 'scripts/size.mjs')], here, 'size within budget').trimEnd().replace(/^/gm, '      '));

  for (const name of fixtures) {
    console.log(`fixture ${name}`);
    const app = join(scratch, name);
    cpSync(join(here, 'package-test', name), app, { recursive: true, filter: (src) => !src.includes('node_modules') });
    run(npm, ['install', tarball, '--no-audit', '--no-fund'], app, `npm install ${packed[0].filename}`);
    const out = run(npm, ['run', '--silent', 'check'], app, 'npm run check');
    const notable = out.split('\n').filter((l) => /smoke:|Tests|built in|✓ \d+ modules/.test(l));
    for (const line of notable) console.log(`      ${line.trim()}`);
  }
  console.log(`package: ${fixtures.length} fixture apps installed the tarball with plain npm install and passed`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
