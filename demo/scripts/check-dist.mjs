// Checks that the committed build (crates/tidings/demo-dist/) is exactly what the sources
// produce: builds into a temporary folder and compares every file byte for byte. The binary
// embeds the committed files, so a stale build would ship a page the sources do not describe.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('..', import.meta.url));
const committed = fileURLToPath(new URL('../../crates/tidings/demo-dist', import.meta.url));
const fresh = mkdtempSync(join(tmpdir(), 'tidings-demo-dist-'));

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

try {
  execFileSync(process.execPath, [join(here, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'warn'], {
    cwd: here,
    env: { ...process.env, DEMO_OUT_DIR: fresh },
    stdio: 'inherit',
  });
  const a = new Set(files(committed).map((f) => relative(committed, f)));
  const b = new Set(files(fresh).map((f) => relative(fresh, f)));
  const problems = [];
  for (const f of new Set([...a, ...b])) {
    if (!a.has(f)) problems.push(`${f}: built but not committed`);
    else if (!b.has(f)) problems.push(`${f}: committed but no longer built`);
    else if (!readFileSync(join(committed, f)).equals(readFileSync(join(fresh, f)))) problems.push(`${f}: differs from a fresh build`);
  }
  if (problems.length > 0) {
    console.error(`crates/tidings/demo-dist/ is not what demo/ builds:\n  ${problems.join('\n  ')}\nRebuild with \`npm run build\` in demo/ and commit the result.`);
    process.exit(1);
  }
  console.log(`demo-dist matches a fresh build (${b.size} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
