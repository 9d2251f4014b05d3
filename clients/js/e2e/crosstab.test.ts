/** One stream per session across real Chromium tabs (docs/protocol.md): three tabs hold one
 * stream, the leader's tab closing hands it over within a second with no event lost (C12), two
 * tabs opened at once still make one stream (C11), the hub's `closed` frame is honoured (C6),
 * and a resolver that yields a function never breaks what tabs share (C13). */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import {
  apiAs,
  connection,
  feed,
  publish,
  sdkPage,
  signIn,
  signInContext,
  sleep,
  streamCounts,
  waitConnected,
  useDemo,
  waitFor,
} from './support.js';

const env = useDemo();
const newContext = () => env.newContext();

async function roles(pages: Page[]): Promise<string[]> {
  return (await Promise.all(pages.map(async (p) => (await connection(p)).role ?? 'none'))).sort();
}

/** Samples the open-stream gauge for `ms` and returns every value seen. */
async function openDuring(ms: number): Promise<number[]> {
  const seen = new Set<number>();
  const end = Date.now() + ms;
  while (Date.now() < end) {
    seen.add((await streamCounts(env.demo)).open);
    await sleep(50);
  }
  return [...seen];
}

describe('one stream per session across tabs', () => {
  it('three tabs hold one stream; closing the leader hands over within 1 s and loses no event (protocol C12)', async () => {
    const context = await newContext();
    const first = await context.newPage();
    await signIn(first, env.demo, 'alice');
    const pages = [first];
    for (let i = 0; i < 2; i++) {
      const p = await context.newPage();
      await p.goto(env.demo.url);
      await waitConnected(p);
      pages.push(p);
    }
    await expect.poll(() => roles(pages)).toEqual(['follower', 'follower', 'leader']);
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);
    expect(await openDuring(1_000)).toEqual([1]);
    // Every tab's badge shows the one stream: connected, with the hub's client id.
    const clientIds = await Promise.all(pages.map((p) => p.getByTestId('connection').getAttribute('data-client-id')));
    expect(clientIds[0]).toMatch(/^c_/);
    expect(new Set(clientIds).size).toBe(1);

    // Bob (same account, another session) keeps changing things through the hand-over.
    const bob = await apiAs(env.demo, 'bob');
    let sent = 0;
    let publishing = true;
    const publisher = (async () => {
      while (publishing) {
        sent += 1;
        await bob.edit(101, { name: `handover-${sent}` });
        await sleep(30);
      }
    })();
    await sleep(300);

    const leader = pages[(await Promise.all(pages.map(connection))).findIndex((c) => c.role === 'leader')]!;
    const rest = pages.filter((p) => p !== leader);
    const closedAt = Date.now();
    await leader.close();
    await waitFor(
      'a remaining tab to hold an open stream',
      () => Promise.all(rest.map(connection)),
      (cs) => cs.some((c) => c.role === 'leader' && c.state === 'connected'),
      3_000,
      10,
    );
    const handOverMs = Date.now() - closedAt;
    expect(handOverMs).toBeLessThan(1_000);

    await sleep(700);
    publishing = false;
    await publisher;
    const expected = Array.from({ length: sent }, (_, i) => `handover-${i + 1} was edited by Bob Chen`);
    for (const page of rest) {
      const names = async () =>
        (await feed(page)).map((t) => /handover-\d+ was edited by Bob Chen/.exec(t)?.[0]).filter(Boolean).reverse();
      await expect.poll(names, { timeout: 5_000 }).toEqual(expected);
    }
    await waitFor('one open stream after the hand-over', () => streamCounts(env.demo), (c) => c.open === 1, 3_000);
    expect(await roles(rest)).toEqual(['follower', 'leader']);
    console.log(`hand-over: ${handOverMs} ms, ${sent} events published across it`);
  });

  it('two tabs opened at the same instant make one stream (protocol C11)', async () => {
    for (let round = 0; round < 3; round++) {
      const context = await newContext();
      await signInContext(context, env.demo, 'alice');
      const pages = [await context.newPage(), await context.newPage()];
      const before = await streamCounts(env.demo);
      await Promise.all(pages.map((p) => p.goto(env.demo.url)));
      await Promise.all(pages.map((p) => waitConnected(p)));
      await expect.poll(() => roles(pages)).toEqual(['follower', 'leader']);
      expect(await openDuring(1_500)).toEqual([before.open + 1]);
      // Not even a superseded second stream: exactly one was ever opened.
      expect((await streamCounts(env.demo)).opened - before.opened).toBe(1);
      await context.close();
      await waitFor('the round’s stream to close', () => streamCounts(env.demo), (c) => c.open === before.open, 3_000);
    }
  });

  it('signing out in one tab signs out every tab of the session, and no stream comes back (protocol C10, C11)', async () => {
    const context = await newContext();
    await signInContext(context, env.demo, 'alice');
    const pages = [await context.newPage(), await context.newPage(), await context.newPage()];
    for (const p of pages) {
      await p.goto(env.demo.url);
      await waitConnected(p);
    }
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);
    const before = await streamCounts(env.demo);
    // Sign out in the leader's tab: the hardest case, the others would otherwise take over.
    const leader = pages[(await Promise.all(pages.map(connection))).findIndex((c) => c.role === 'leader')]!;
    await leader.getByTestId('logout').click();
    for (const p of pages) await p.getByTestId('signin-alice').waitFor({ timeout: 3_000 });
    await waitFor('the stream to close', () => streamCounts(env.demo), (c) => c.open === 0, 2_000);
    await sleep(5_000);
    expect(await streamCounts(env.demo)).toEqual({ open: 0, opened: before.opened, refused: before.refused });
  });

  it("honours the hub's closed frame: superseded stops for good, no reconnect (protocol C6)", async () => {
    const context = await newContext();
    const page = await context.newPage();
    await signIn(page, env.demo, 'alice');
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);
    const cookie = (await context.cookies()).find((c) => c.name === 'tidings_session')!;

    // Another client of the same session takes the stream; the hub tells the page `closed`
    // `superseded`, after which it must not come back.
    const abort = new AbortController();
    const other = await fetch(`${env.demo.url}/events/stream`, {
      headers: { cookie: `${cookie.name}=${cookie.value}`, accept: 'text/event-stream' },
      signal: abort.signal,
    });
    expect(other.status).toBe(200);
    const before = await streamCounts(env.demo);
    try {
      await expect.poll(async () => (await connection(page)).state, { timeout: 3_000 }).toBe('stopped');
      await sleep(3_000);
      const after = await streamCounts(env.demo);
      expect({ opened: after.opened, refused: after.refused, open: after.open }).toEqual({ opened: before.opened, refused: before.refused, open: 1 });
      expect((await connection(page)).state).toBe('stopped');
    } finally {
      abort.abort();
    }
  });

  it('a resolver that yields a function neither breaks the tabs nor drops the batch (protocol C13)', async () => {
    const context = await newContext();
    const login = await context.request.post(`${env.demo.url}/demo/api/login`, { data: { user: 'alice' } });
    const { session } = (await login.json()) as { session: string };
    const pages = [await sdkPage(context, env.demo), await sdkPage(context, env.demo)];
    for (const page of pages) {
      await page.evaluate((sessionKey) => {
        const w = window as unknown as { TidingsSDK: typeof import('../src/index.js'); events: unknown[]; role: string };
        w.events = [];
        // The original console's table had an entry that returned a function instead of a key.
        const resolver = { resolve: () => ({ invalidate: [['widget', () => 1], ['widget', 7], ['gadget']], remove: [] }) };
        const t = w.TidingsSDK.createTidings({ url: '/events/stream', sessionKey, credentials: 'same-origin', resolver: resolver as never, logger: w.TidingsSDK.silentLogger });
        t.subscribe((e) => {
          if (e.type === 'activity') w.events.push({ id: e.id, invalidate: e.invalidate, keysFrom: e.keysFrom });
          if (e.type === 'status') w.role = e.status.role;
        });
        t.start();
      }, session);
    }
    const role = (p: Page) => p.evaluate(() => (window as unknown as { role?: string }).role ?? 'none');
    await expect.poll(async () => (await Promise.all(pages.map(role))).sort()).toEqual(['follower', 'leader']);
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);

    // No type, parent or description: the hub resolves nothing, so each tab's resolver runs.
    const ids = [
      ...(await publish(env.demo, 'acme', { activity_type: 'edited', note: 'no type at all' })),
      ...(await publish(env.demo, 'acme', { activity_type: 'edited', note: 'and another' })),
    ];
    const expected = ids.map((id) => ({ id, invalidate: [['widget', 7], ['gadget']], keysFrom: 'local' }));
    for (const page of pages) {
      await expect.poll(() => page.evaluate(() => (window as unknown as { events: unknown[] }).events), { timeout: 5_000 }).toEqual(expected);
    }
  });
});
