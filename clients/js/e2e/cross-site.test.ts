/** A page on another origin, in the same browser as a signed-in console, tries what any page
 * the user visits could try with the session cookie: open the hub's stream (which, if it were
 * accepted, would supersede the console's own stream and switch its live updates off), post a
 * plain form to the demo API, and sign the user out. The hub refuses all of it with 403
 * `cross_site` (SECURITY.md, "Cross-site requests"), and the console keeps its stream and keeps
 * updating. Real Chromium, the real `tidings demo`, a second origin on another loopback port. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Page } from 'playwright-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { apiAs, connection, metric, signIn, streamCounts, useDemo, waitConnected, waitFor } from './support.js';

const env = useDemo();

/** What the other origin's page saw of its EventSource. */
interface Attempt {
  messages: string[];
  errors: number;
  readyState: number;
}

const READY_CLOSED = 2;

/** The other origin: one page that, given the hub's URL, opens an EventSource with credentials,
 * submits a text/plain form shaped like JSON to create an application (into a hidden frame),
 * and posts to the sign-out endpoint without CORS. */
function attackerPage(): string {
  return `<!doctype html><meta charset="utf-8"><title>another site</title>
<iframe name="sink" hidden></iframe>
<script>
window.attack = (hub) => {
  const attempt = { messages: [], errors: 0, readyState: 0 };
  window.attempt = attempt;
  const es = new EventSource(hub + '/events/stream', { withCredentials: true });
  es.onmessage = (e) => attempt.messages.push(e.data);
  es.onerror = () => { attempt.errors += 1; attempt.readyState = es.readyState; };
  const form = document.createElement('form');
  form.method = 'POST';
  form.enctype = 'text/plain';
  form.target = 'sink';
  form.action = hub + '/demo/api/applications';
  const field = document.createElement('input');
  field.name = '{"name":"Planted by another site","x":"';
  field.value = '"}';
  form.append(field);
  document.body.append(form);
  form.submit();
  fetch(hub + '/demo/api/logout', { method: 'POST', mode: 'no-cors', credentials: 'include' }).catch(() => {});
};
</script>`;
}

let site: Server;
let siteUrl: string;

beforeEach(async () => {
  site = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(attackerPage());
  });
  await new Promise<void>((done) => site.listen(0, '127.0.0.1', done));
  siteUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
});

afterEach(async () => {
  await new Promise<void>((done) => site.close(() => done()));
});

const attempt = (page: Page) => page.evaluate(() => (window as unknown as { attempt: Attempt }).attempt);
const rowName = (page: Page, id: number) => page.getByTestId(`app-row-${id}`).locator('td.name');

describe('cross-site requests with the session cookie', () => {
  it("cannot open a stream, supersede the console's, change data or sign the user out", async () => {
    const context = await env.newContext();
    const console = await context.newPage();
    await signIn(console, env.demo, 'alice');
    await waitFor('one stream', () => streamCounts(env.demo), (c) => c.open === 1);
    const before = await streamCounts(env.demo);

    // The same browser (same cookie jar) visits another site, which attacks the hub.
    const other = await context.newPage();
    await other.goto(siteUrl);
    await other.evaluate((hub) => (window as unknown as { attack: (hub: string) => void }).attack(hub), env.demo.url);

    const refused = await waitFor('the cross-site stream refusal', () => metric(env.demo, 'tidings_stream_refusals_total{code="cross_site"}'), (n) => n >= 1);
    expect(refused).toBe(1);
    const seen = await waitFor('the EventSource to give up', () => attempt(other), (a) => a.readyState === READY_CLOSED);
    expect(seen.messages).toEqual([]);
    expect(seen.errors).toBeGreaterThanOrEqual(1);

    // The console kept its one stream: nothing was opened, nothing superseded.
    const after = await streamCounts(env.demo);
    expect(after.open).toBe(1);
    expect(after.opened).toBe(before.opened);
    expect(await connection(console)).toEqual({ state: 'connected', role: 'leader' });

    // Nothing was planted, the user is still signed in, and the console still updates live.
    const bob = await apiAs(env.demo, 'bob');
    expect((await bob.list()).map((a) => a.name)).not.toContain('Planted by another site');
    await bob.edit(101, { name: 'Edited while attacked' });
    await expect.poll(() => rowName(console, 101).textContent(), { timeout: 5_000 }).toBe('Edited while attacked');
    await console.reload();
    await waitConnected(console);
  });

  it("the console's own reload and second tab are never taken for another site", async () => {
    const context = await env.newContext();
    const first = await context.newPage();
    await signIn(first, env.demo, 'alice');
    const second = await context.newPage();
    await second.goto(env.demo.url);
    await waitConnected(second);
    await first.reload();
    await waitConnected(first);
    await waitFor('one stream after the reload', () => streamCounts(env.demo), (c) => c.open === 1);
    expect(await metric(env.demo, 'tidings_stream_refusals_total')).toBe(0);
  });
});
