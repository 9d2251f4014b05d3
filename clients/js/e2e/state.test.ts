/** Every tab knows the state: in real Chromium tabs sharing one stream, a follower reports what
 * the leader's stream is doing (connected, the hub's client_id, the last event, and while the
 * hub is down: reconnecting, the attempt, when the next one starts and why the last failed), and
 * a tab opened later learns the last event from the leader. */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { publish, restartDemo, sdkPage, sessionOf, streamCounts, useDemo, waitFor } from './support.js';

const env = useDemo();

interface Snap {
  role: string;
  state: string;
  connected: boolean;
  clientId: string | null;
  lastEvent: { type: string; id: string | null; data: unknown } | null;
  error: string | null;
  attempt: number | null;
  retryAt: number | null;
}

async function open(page: Page, sessionKey: string): Promise<void> {
  await page.evaluate((key) => {
    const w = window as unknown as { TidingsSDK: typeof import('../src/index.js'); snap: () => Snap };
    const sdk = w.TidingsSDK;
    const t = sdk.createTidings({ url: '/events/stream', sessionKey: key, credentials: 'same-origin', logger: sdk.silentLogger });
    w.snap = () => {
      const s = t.status;
      const last = s.lastEvent;
      return {
        role: s.role,
        state: sdk.connectionState(s),
        connected: s.connected,
        clientId: s.clientId ?? null,
        lastEvent: last ? { type: last.type, id: last.type === 'activity' ? (last.id ?? null) : null, data: last.type === 'activity' ? last.data : null } : null,
        error: s.error?.message ?? null,
        attempt: s.stream?.attempt ?? null,
        retryAt: s.stream?.retryAt ?? null,
      };
    };
    t.start();
  }, sessionKey);
}

const snap = (page: Page) => page.evaluate(() => (window as unknown as { snap: () => Snap }).snap());

describe('every tab knows the state', () => {
  it('a follower reports connected, the client id and the last event; a late tab learns them from the leader', async () => {
    const context = await env.newContext();
    const session = await sessionOf(context, env.demo, 'alice');
    const pages = [await sdkPage(context, env.demo), await sdkPage(context, env.demo)];
    for (const p of pages) await open(p, session);
    const roles = async () => (await Promise.all(pages.map(snap))).map((s) => s.role).sort();
    await expect.poll(roles).toEqual(['follower', 'leader']);
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);
    const [leader, follower] = (await snap(pages[0]!)).role === 'leader' ? pages : [pages[1]!, pages[0]!];

    await expect.poll(() => snap(follower!)).toMatchObject({ state: 'connected', connected: true, clientId: expect.stringMatching(/.+/) });
    const leaderSnap = await snap(leader!);
    expect((await snap(follower!)).clientId).toBe(leaderSnap.clientId);

    const [id] = await publish(env.demo, 'acme', { activity_type: 'edited', resource: { type: 'widget', id: 3 }, note: 'seen by every tab' });
    const expected = { type: 'activity', id, data: { note: 'seen by every tab' } };
    for (const p of [leader!, follower!]) await expect.poll(async () => (await snap(p)).lastEvent).toMatchObject(expected);

    // Opened after the event: it never received the frame, the leader tells it.
    const late = await sdkPage(context, env.demo);
    await open(late, session);
    await expect.poll(() => snap(late)).toMatchObject({ role: 'follower', connected: true, clientId: leaderSnap.clientId, lastEvent: expected });
    expect((await streamCounts(env.demo)).open).toBe(1);
  });

  it('while the hub is down every tab shows reconnecting, the attempt and the next retry; after, the new client id', async () => {
    const context = await env.newContext();
    const session = await sessionOf(context, env.demo, 'alice');
    const pages = [await sdkPage(context, env.demo), await sdkPage(context, env.demo), await sdkPage(context, env.demo)];
    for (const p of pages) await open(p, session);
    for (const p of pages) await expect.poll(() => snap(p)).toMatchObject({ connected: true, clientId: expect.stringMatching(/.+/) });
    const before = (await snap(pages[0]!)).clientId;

    const port = env.demo.port;
    await env.demo.stop('SIGKILL');
    const down = async () => Promise.all(pages.map(snap));
    const seen = await waitFor('every tab to report the failure', down, (ss) => ss.every((s) => s.state === 'reconnecting' && s.error !== null && s.attempt! >= 1), 15_000, 50);
    // One stream, one story: the leader's attempt, next retry and error, in every tab.
    const leader = seen.find((s) => s.role === 'leader')!;
    const settled = await waitFor(
      'the tabs to agree',
      down,
      (ss) => ss.every((s) => s.attempt === ss[0]!.attempt && s.retryAt === ss[0]!.retryAt && s.error === ss[0]!.error),
      5_000,
      20,
    );
    expect(settled.every((s) => s.clientId === null && !s.connected)).toBe(true);
    console.log(`hub down: leader reported attempt ${leader.attempt}, error "${leader.error}"; followers the same`);

    env.demo = await restartDemo(port);
    for (const p of pages) await expect.poll(() => snap(p), { timeout: 20_000 }).toMatchObject({ state: 'connected', error: null });
    const after = await Promise.all(pages.map(snap));
    expect(new Set(after.map((s) => s.clientId)).size).toBe(1);
    expect(after[0]!.clientId).not.toBe(before);
  });
});
