/** Audiences in real Chromium against the real `tidings demo`: dave shares the account `acme`
 * with alice and bob but does not hold `firewall:read`. Firewall rule changes update alice's
 * screen live and never reach dave's, while his screen keeps updating for everything else; the
 * seqs he skips are not loss to the SDK, and a resume past hidden events replays nothing and
 * needs no resync (docs/protocol.md, audience). */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { apiAs, feed, metric, publishBatch, sdkPage, signIn, signInContext, sleep, useDemo, waitFor } from './support.js';

const env = useDemo();

async function userPage(user: string): Promise<Page> {
  const page = await (await env.newContext()).newPage();
  await signIn(page, env.demo, user);
  return page;
}

/** The ids of the live feed's activities, newest first. */
const feedIds = (page: Page) => page.locator('[data-testid="feed"] li[data-event-id]').evaluateAll((lis) => lis.map((li) => li.getAttribute('data-event-id') ?? ''));
const seq = (id: string) => Number(id.split('-')[1]);
const ruleAction = (page: Page, id: number) => page.getByTestId(`rule-row-${id}`).getByTestId('rule-action').textContent();
const appName = (page: Page, id: number) => page.getByTestId(`app-row-${id}`).locator('td.name').textContent();

describe('audience inside an account', () => {
  it("a user without the grant never receives the rules' activity, while every screen updates live", async () => {
    const alice = await userPage('alice');
    const dave = await userPage('dave');
    const bob = await apiAs(env.demo, 'bob');
    await expect.poll(() => ruleAction(alice, 104)).toBe('deny');
    await dave.getByTestId('rules-hidden').waitFor();
    expect(await dave.getByTestId('rule-list').count()).toBe(0);

    for (let round = 1; round <= 3; round++) {
      const action = round % 2 === 1 ? 'allow' : 'deny';
      await bob.editRule(104, action);
      await bob.edit(101, { name: `Round ${round}` });
      // Alice holds the grant: the rule and the application both update live on her screen.
      await expect.poll(() => ruleAction(alice, 104), { timeout: 5_000 }).toBe(action);
      await expect.poll(() => appName(alice, 101), { timeout: 5_000 }).toBe(`Round ${round}`);
      // Dave is live too, for what he may see.
      await expect.poll(() => appName(dave, 101), { timeout: 5_000 }).toBe(`Round ${round}`);
    }
    await sleep(300);
    const aliceFeed = await feed(alice);
    expect(aliceFeed.filter((t) => t.includes('Firewall rule'))).toHaveLength(3);
    const daveFeed = await feed(dave);
    expect(daveFeed).toHaveLength(3);
    expect(daveFeed.every((t) => t.includes('was edited by Bob Chen') && !t.includes('Firewall'))).toBe(true);

    // Same account, same ids: dave's ids skip the rules' seqs, and the SDK took that as it is.
    const all = await feedIds(alice);
    const his = await feedIds(dave);
    expect(his).toEqual(all.filter((_, i) => !aliceFeed[i]!.includes('Firewall rule')));
    expect(seq(his[0]!) - seq(his[1]!)).toBe(2);
    expect((await dave.getByTestId('connection').getAttribute('data-state'))).toBe('connected');
    expect(await metric(env.demo, 'tidings_resyncs_total')).toBe(0);

    // What he loads rather than receives leaves the rules out too.
    const earlier = await dave.evaluate(async () => (await (await fetch('/demo/api/activity')).json()) as { activity: Array<{ description: string }> });
    expect(earlier.activity.map((a) => a.description).filter((d) => d.includes('Firewall'))).toEqual([]);
    expect((await dave.evaluate(async () => (await fetch('/demo/api/firewall-rules')).status))).toBe(403);
  });

  it('a resume past events the session may not see replays only its own, with no resync', async () => {
    const context = await env.newContext();
    await signInContext(context, env.demo, 'dave');
    const page = await sdkPage(context, env.demo);
    type Seen = Array<{ type: string; id?: string; resumed?: boolean; description?: string }>;
    const run = (lastEventId: string | null, activities: number) =>
      page.evaluate(
        async ({ lastEventId, activities }) => {
          const { createTidings, silentLogger } = (window as unknown as { TidingsSDK: typeof import('../src/index.js') }).TidingsSDK;
          const t = createTidings({ url: '/events/stream', sessionKey: 'resume', credentials: 'same-origin', logger: silentLogger, crossTab: false, lastEventId: lastEventId ?? undefined });
          const seen: Seen = [];
          await new Promise<void>((done) => {
            t.subscribe((e) => {
              if (e.type === 'connected') seen.push({ type: e.type, resumed: e.resumed });
              if (e.type === 'resync') seen.push({ type: e.type });
              if (e.type === 'activity') seen.push({ type: e.type, id: e.id, description: String((e.data as { description?: string }).description) });
              if (seen.filter((s) => s.type === 'activity').length === activities && seen.some((s) => s.type === 'connected')) done();
            });
            t.start();
          });
          const last = t.lastEventId!;
          t.stop();
          return { seen, last };
        },
        { lastEventId, activities },
      );
    const first = await run(null, 0);
    expect(first.seen).toEqual([{ type: 'connected', resumed: false }]);

    // While dave is away: rule changes (only hidden ones first), then one he may see.
    const bob = await apiAs(env.demo, 'bob');
    await bob.editRule(105, 'deny');
    await publishBatch(env.demo, [{ account: 'acme', data: { activity_type: 'edited', description: 'for holders only' }, audience: ['firewall:read'] }]);
    const hiddenOnly = await run(first.last, 0);
    expect(hiddenOnly.seen).toEqual([{ type: 'connected', resumed: true }]);

    await bob.editRule(105, 'allow');
    await bob.edit(102, { name: 'Visible to dave' });
    await publishBatch(env.demo, [{ account: 'acme', data: { activity_type: 'edited', description: 'for dave himself' }, audience: ['user:dave@acme.example'] }]);
    const resumed = await run(hiddenOnly.last, 2);
    expect(resumed.seen.map((s) => s.type)).toEqual(['connected', 'activity', 'activity']);
    expect(resumed.seen[0]!.resumed).toBe(true);
    expect(resumed.seen.slice(1).map((s) => s.description)).toEqual(['Visible to dave was edited by Bob Chen', 'for dave himself']);
    await waitFor('no resync counted', () => metric(env.demo, 'tidings_resyncs_total'), (n) => n === 0);
  });
});
