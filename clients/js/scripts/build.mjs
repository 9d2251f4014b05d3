// Builds the package: compiles src/ to dist/ (ESM, declarations with maps), and copies what the
// package ships from the repository root, so there is one copy of each in git: the LICENSE and
// the mapping profiles from crates/tidings-protocol/profiles (importable as `tidings/profiles/<name>.json`). npm runs it on `prepack`.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('..', import.meta.url));
const root = fileURLToPath(new URL('../../..', import.meta.url));

rmSync(`${here}dist`, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', `${here}tsconfig.build.json`], { stdio: 'inherit' });

copyFileSync(`${root}LICENSE`, `${here}LICENSE`);
rmSync(`${here}profiles`, { recursive: true, force: true });
mkdirSync(`${here}profiles`);
const profiles = readdirSync(`${root}crates/tidings-protocol/profiles`).filter((f) => f.endsWith('.json'));
for (const file of profiles) copyFileSync(`${root}crates/tidings-protocol/profiles/${file}`, `${here}profiles/${file}`);
console.log(`built dist/; copied LICENSE and ${profiles.length} profiles (${profiles.join(', ')})`);
