/** The admin page in real Chromium against the real `tidings serve`: sign in with the admin
 * key, see a published activity appear with its keys, see an unresolved type listed with the
 * entry to add, revoke a session and see its stream closed, use the resolver playground and
 * publish a test activity. Streams are held by this process (plain fetch), as a console would.
 *
 * `TIDINGS_ADMIN_SCREENSHOT=<file.png>` also drives a minute of traffic over a dozen streams
 * and writes a screenshot of the page there (the README's docs/admin.png). */
import { writeFileSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Demo, PUBLISHER_KEY, launchBrowser, sleep, startServe } from './support.js';

const ADMIN_KEY = 'e2e-admin-key-0123456789abcdef';
const SCREENSHOT = process.env.TIDINGS_ADMIN_SCREENSHOT;

const USERS = [
  ['alice', 'acme'],
  ['bob', 'acme'],
  ['carol', 'globex'],
  ['dave', 'acme'],
  ['erin', 'initech'],
  ['frank', 'initech'],
  ['gina', 'umbrella'],
  ['hank', 'acme'],
  ['ivan', 'globex'],
  ['judy', 'hooli'],
  ['kim', 'acme'],
  ['lee', 'initech'],
] as const;

const MAPPING = `name = "e2e"
[resources."edge application"]
aliases = ["application"]
id = "number"
list = ["applications"]
detail = ["applications", "detail", "{id}"]

[resources."edge firewall"]
id = "number"
list = ["edge-firewalls"]
detail = ["edge-firewalls", "detail", "{id}"]

[parents."edge application"]
id = "number"
keys = ["applications", "detail", "{parent_id}"]
`;

function hubConfig(): string {
  const tokens = USERS.map(([user, account]) => `[[auth.tokens]]\ntoken = "tok-${user}"\naccount = "${account}"\nuser = "${user}@example.com"\nsession = "s-${user}"\n`).join('\n');
  return `heartbeat = "1s"
[auth]
${tokens}
[[auth.publishers]]
key = "${PUBLISHER_KEY}"
name = "console-backend"

[mapping]
file = "mapping.toml"

[admin]
key = "${ADMIN_KEY}"
`;
}

/** An event stream held by this process, as a console holds one. */
interface HeldStream {
  frames: Array<Record<string, unknown>>;
  /** Resolves when the hub ends the stream. */
  ended: Promise<void>;
  close(): void;
}

async function hold(hub: Demo, token: string, lastEventId?: string): Promise<HeldStream> {
  const abort = new AbortController();
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'text/event-stream' };
  if (lastEventId) headers['last-event-id'] = lastEventId;
  const r = await fetch(`${hub.url}/events/stream`, { headers, signal: abort.signal });
  if (r.status !== 200) throw new Error(`stream for ${token}: HTTP ${r.status}`);
  const frames: Array<Record<string, unknown>> = [];
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  const ended = (async () => {
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (data) frames.push(JSON.parse(data.slice(6)) as Record<string, unknown>);
        }
      }
    } catch {
      // Aborted by close().
    }
  })();
  return { frames, ended, close: () => abort.abort() };
}

async function publish(hub: Demo, items: Array<{ account: string; data: unknown }>): Promise<string[]> {
  const r = await fetch(`${hub.url}/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${PUBLISHER_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(items),
  });
  if (r.status !== 202) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
  return ((await r.json()) as { ids: string[] }).ids;
}

const app = (type: string, id: number, name: string) => ({
  activity_type: type,
  resource: { type: 'edge_application', name },
  metadata: { id },
  description: `${name} was ${type}`,
});
const mystery = (id: number) => ({ activity_type: 'created', resource: { type: 'Mystery Box', id }, description: 'A mystery box appeared' });

async function signIn(page: Page, hub: Demo, key: string): Promise<void> {
  await page.goto(`${hub.url}/admin/`);
  await page.getByTestId('signin-key').fill(key);
  await page.getByTestId('signin-submit').click();
}

describe('admin page', () => {
  let browser: Browser | undefined;
  let hub: Demo;
  const held: HeldStream[] = [];
  afterAll(async () => {
    await browser?.close();
  });
  beforeEach(async () => {
    browser ??= await launchBrowser();
    hub = await startServe(hubConfig(), { 'mapping.toml': MAPPING });
  });
  afterEach(async () => {
    for (const s of held.splice(0)) s.close();
    await hub?.stop();
  });

  it('signs in with the key, shows activities and unresolved types live, and revokes a session', { timeout: SCREENSHOT ? 180_000 : 60_000 }, async () => {
    const context = await browser!.newContext({ viewport: { width: 1440, height: 1000 } });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));

    // A wrong key is refused, and nothing but the sign-in is shown.
    await signIn(page, hub, 'not-the-admin-key-0000');
    await expect.poll(() => page.getByTestId('signin-error').textContent()).toContain('not the admin key');
    expect(await page.getByTestId('dashboard').isHidden()).toBe(true);

    await signIn(page, hub, ADMIN_KEY);
    await page.getByTestId('dashboard').waitFor();

    const alice = await hold(hub, 'tok-alice');
    const bob = await hold(hub, 'tok-bob');
    const carol = await hold(hub, 'tok-carol');
    held.push(alice, bob, carol);
    // The page refreshes its figures every second (POLL_MS), so a poll's default 1 s can end
    // just before the refresh that shows them.
    await expect.poll(() => page.getByTestId('tile-streams').textContent(), { timeout: 5_000 }).toBe('3');

    // A published activity appears with its keys and the entry that answered.
    const [id] = await publish(hub, [{ account: 'acme', data: app('deleted', 42, 'Checkout') }]);
    const row = page.locator(`[data-testid="activity-row"][data-id="${id}"]`);
    await row.waitFor({ timeout: 5_000 });
    expect(await row.getByTestId('answered-by').textContent()).toBe('resource: resources."edge application"');
    expect(await row.locator('code[data-kind="invalidate"]').allTextContents()).toEqual(['["applications"]']);
    expect(await row.locator('code[data-kind="remove"]').allTextContents()).toEqual(['− ["applications","detail",42]']);

    // An activity no entry resolves is listed with the entry to add.
    await publish(hub, [{ account: 'globex', data: mystery(7) }, { account: 'globex', data: mystery(8) }]);
    const unresolved = page.locator('[data-testid="unresolved-row"][data-type="mystery box"]');
    await unresolved.waitFor({ timeout: 5_000 });
    expect(await unresolved.textContent()).toContain('2×');
    expect(await unresolved.getByTestId('mapping-entry').textContent()).toBe('[resources."mystery box"]\nlist = ["mystery-box"]\ndetail = ["mystery-box", "{id}"]\nid = "number"\n');

    // Accounts: acme holds two streams; revoking alice's session closes her stream only.
    const acme = page.locator('[data-testid="account-row"][data-account="acme"]');
    await expect.poll(() => acme.locator('td').nth(1).textContent(), { timeout: 5_000 }).toBe('2');
    await acme.getByTestId('account-sessions').click();
    const aliceSession = page.locator('[data-testid="session-row"][data-session="s-alice"]');
    await aliceSession.waitFor({ timeout: 5_000 });
    await aliceSession.getByTestId('revoke-session').click();
    await expect.poll(() => aliceSession.getByTestId('revoke-session').textContent()).toBe('click again to revoke');
    await aliceSession.getByTestId('revoke-session').click();
    await alice.ended;
    expect(alice.frames.filter((f) => f.type !== 'ping').at(-1)).toMatchObject({ type: 'closed', reason: 'revoked' });
    await expect.poll(() => acme.locator('td').nth(1).textContent(), { timeout: 5_000 }).toBe('1');
    await expect.poll(() => page.locator('[data-testid="session-row"][data-session="s-alice"]').count()).toBe(0);
    expect(bob.frames.some((f) => f.type === 'closed')).toBe(false);

    // The playground resolves with the mapping in effect and suggests the missing entry.
    await page.getByTestId('playground-input').fill(JSON.stringify(mystery(9)));
    await page.getByTestId('playground-resolve').click();
    await expect.poll(() => page.getByTestId('playground-tier').textContent()).toContain('No tier resolved');
    expect(await page.getByTestId('playground-entry').textContent()).toContain('[resources."mystery box"]');

    // A test activity from the page reaches carol's stream.
    await page.getByTestId('playground-input').fill(JSON.stringify(app('edited', 5, 'Billing')));
    await page.getByTestId('playground-account').fill('globex');
    await page.getByTestId('playground-publish').click();
    await expect.poll(() => page.getByTestId('playground-published').textContent()).toMatch(/^Published to globex as /);
    const activities = () => carol.frames.filter((f) => f.type === 'activity');
    await expect.poll(() => activities().length).toBe(3);
    expect(activities().at(-1)).toMatchObject({ invalidate: [['applications']], data: { metadata: { id: 5 } } });

    // The charts draw what the hub sampled.
    await expect
      .poll(async () => (await page.locator('[data-testid="chart-publishes"] polyline').getAttribute('points'))?.split(' ').length ?? 0, { timeout: 5_000 })
      .toBeGreaterThan(1);

    // Signing out forgets the key.
    await page.locator('#sign-out').click();
    await page.reload();
    await page.getByTestId('signin-form').waitFor();
    expect(errors).toEqual([]);

    if (SCREENSHOT) await screenshot(context, hub);
    await context.close();
  });
});

/** About a minute of traffic over a dozen streams in several accounts, then a screenshot of
 * the signed-in page with the sessions of the busiest account unfolded. */
async function screenshot(context: import('playwright-core').BrowserContext, hub: Demo): Promise<void> {
  const streams = await Promise.all(USERS.map(([user]) => hold(hub, `tok-${user}`)));
  const page = await context.newPage();
  await page.setViewportSize({ width: 1440, height: 1000 });
  await signIn(page, hub, ADMIN_KEY);
  await page.getByTestId('dashboard').waitFor();
  const accounts = [...new Set(USERS.map(([, account]) => account))];
  const names = ['Checkout', 'Billing', 'Search', 'Catalog', 'Images', 'Auth gateway'];
  for (let second = 0; second < 60; second++) {
    const burst = second % 20 < 4 ? 12 : 1 + (second % 3);
    const items = Array.from({ length: burst }, (_, i) => {
      const account = accounts[(second + i) % accounts.length]!;
      const n = second * 13 + i;
      const data =
        n % 11 === 0
          ? mystery(n)
          : n % 7 === 0
            ? { activity_type: 'edited', resource: { type: 'edge firewall', id: n }, description: `Firewall ${n} was edited` }
            : n % 5 === 0
              ? { activity_type: 'created', resource: { type: 'rules engine rule', parent: { type: 'edge_application', id: 40 + (n % 3) } }, description: 'Rule was created' }
              : n % 17 === 0
                ? { activity_type: 'edited', resource: { type: 'Domain', id: `d-${n}` }, description: `Domain d-${n} was edited` }
                : app(n % 4 === 0 ? 'created' : 'edited', 100 + (n % 9), names[n % names.length]!);
      return { account, data };
    });
    await publish(hub, items);
    if (second === 56) await page.locator('[data-testid="account-row"][data-account="acme"]').getByTestId('account-sessions').click();
    if (second === 59) {
      // While the traffic goes on, so the rates are live.
      await page.evaluate(() => window.scrollTo(0, 0));
      writeFileSync(SCREENSHOT!, await page.screenshot({ fullPage: true }));
    }
    if (second === 25) {
      // A few reconnections: one resumes with an id from another hub (resync), one leaves.
      streams[4]!.close();
      streams.push(await hold(hub, 'tok-erin', 'ffff-1'));
      streams[9]!.close();
    }
    await sleep(1000);
  }
  expect(await page.locator('[data-testid="session-row"]').count()).toBeGreaterThan(1);
  for (const s of streams) s.close();
  await page.close();
}
