// Takes docs/demo-console.png: the demo console in headless Chromium, signed in as alice,
// with a teammate (and bob, through the API) making changes. Needs a built `tidings` binary.
//   node scripts/demo-screenshot.mjs [path/to/tidings]
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = fileURLToPath(new URL('../../..', import.meta.url));
const bin = process.argv[2] ?? `${repo}target/debug/tidings`;
const demo = spawn(bin, ['demo', '--listen', '127.0.0.1:0', '--teammate-every', '1500ms'], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((done) =>
  createInterface({ input: demo.stdout }).on('line', (l) => {
    const m = /listening on (http:\/\/\S+)/.exec(l);
    if (m) done(m[1]);
  }),
);
const browser = await chromium.launch({
  executablePath: process.env.TIDINGS_CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 640 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  await page.goto(url);
  await page.getByTestId('signin-alice').click();
  await page.locator('[data-testid="connection"][data-state="connected"]').waitFor();
  const bob = await fetch(`${url}/demo/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user":"bob"}' });
  const cookie = bob.headers.get('set-cookie').split(';')[0];
  const call = (method, path, body) =>
    fetch(`${url}/demo/api${path}`, { method, headers: { cookie, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await call('POST', '/applications', { name: 'Billing webhooks' });
  await page.getByTestId('app-row-101').click();
  await new Promise((r) => setTimeout(r, 2_500));
  await call('PATCH', '/applications/102', { name: 'Image resizer v2', notes: 'bigger thumbnails' });
  await new Promise((r) => setTimeout(r, 2_000));
  const out = `${repo}docs/demo-console.png`;
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  demo.kill();
}
