/** The demo console in real Chromium against the real `tidings demo`: changes travel between
 * users of one account and never to another account; a restarted hub is rejoined without a
 * reload; sign-out and an early stop leave no stream behind (docs/protocol.md C10). */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import {
  apiAs,
  connection,
  feed,
  restartDemo,
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

async function userPage(user: string): Promise<Page> {
  const page = await (await newContext()).newPage();
  await signIn(page, env.demo, user);
  // Survives only if the page is never reloaded.
  await page.evaluate(() => ((window as unknown as { noReload: boolean }).noReload = true));
  return page;
}

const rowName = (page: Page, id: number) => page.getByTestId(`app-row-${id}`).locator('td.name');
const notReloaded = (page: Page) => page.evaluate(() => (window as unknown as { noReload?: boolean }).noReload === true);

describe('demo console', () => {
  it("shows a teammate's change without a reload, and never to another account", async () => {
    const alice = await userPage('alice');
    const bob = await userPage('bob');
    const carol = await userPage('carol');
    await expect.poll(() => rowName(bob, 101).textContent()).toBe('Checkout');
    const carolRows = await carol.getByTestId('app-list').locator('tr').allTextContents();

    await bob.getByTestId('app-row-101').click();
    await expect.poll(() => bob.getByTestId('detail-version').textContent()).toBe('1');
    await alice.getByTestId('app-row-101').click();
    await alice.getByTestId('edit-name').fill('Renamed by Alice');
    await alice.getByTestId('save').click();

    await expect.poll(() => rowName(bob, 101).textContent(), { timeout: 5_000 }).toBe('Renamed by Alice');
    await expect.poll(() => bob.getByTestId('detail-version').textContent()).toBe('2');
    await expect.poll(() => feed(bob)).toEqual([expect.stringContaining('Renamed by Alice was edited by Alice Martin')]);

    // A deletion removes the row and the open detail says so.
    await bob.getByTestId('app-row-102').click();
    await alice.getByTestId('app-row-102').click();
    await alice.getByTestId('delete').click();
    await expect.poll(() => bob.getByTestId('app-row-102').count(), { timeout: 5_000 }).toBe(0);
    await bob.getByTestId('detail-gone').waitFor({ timeout: 5_000 });
    expect(await notReloaded(bob)).toBe(true);

    // Carol (globex) saw nothing: her feed is empty and her list unchanged.
    await sleep(500);
    expect(await feed(carol)).toEqual([]);
    expect(await carol.getByTestId('app-list').locator('tr').allTextContents()).toEqual(carolRows);
    expect(await notReloaded(carol)).toBe(true);
  });

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    it(`rejoins a hub restarted with ${signal} and refetches, without a reload`, async () => {
      const alice = await userPage('alice');
      const bob = await apiAs(env.demo, 'bob');
      await bob.edit(101, { name: 'Before the restart' });
      await expect.poll(() => rowName(alice, 101).textContent()).toBe('Before the restart');

      const port = env.demo.port;
      await env.demo.stop(signal);
      await expect.poll(async () => (await connection(alice)).state, { timeout: 5_000 }).not.toBe('connected');
      env.demo = await restartDemo(port);

      // The new process starts from the seed: the page can only show it by refetching, which
      // the hub's resync (its history is gone) makes it do.
      await expect.poll(() => rowName(alice, 101).textContent(), { timeout: 15_000 }).toBe('Checkout');
      await waitConnected(alice);
      const bobAgain = await apiAs(env.demo, 'bob');
      await bobAgain.edit(102, { name: 'After the restart' });
      await expect.poll(() => rowName(alice, 102).textContent(), { timeout: 5_000 }).toBe('After the restart');
      expect(await notReloaded(alice)).toBe(true);
    });
  }

  it('sign-out closes the stream and no stream comes back within 5 s (protocol C10)', async () => {
    const alice = await userPage('alice');
    await waitFor('one open stream', () => streamCounts(env.demo), (c) => c.open === 1);
    const before = await streamCounts(env.demo);
    await alice.getByTestId('logout').click();
    await alice.getByTestId('signin-alice').waitFor();
    await waitFor('the stream to close', () => streamCounts(env.demo), (c) => c.open === 0, 2_000);
    await sleep(5_000);
    const after = await streamCounts(env.demo);
    // Not even an attempt: a ghost reconnect would count as opened or refused.
    expect(after).toEqual({ open: 0, opened: before.opened, refused: before.refused });
  });

  it('stopping within 1 s of starting leaves no stream (protocol C10)', async () => {
    const context = await newContext();
    await signInContext(context, env.demo, 'alice');
    const page = await context.newPage();
    // Signed out as soon as the button exists, before the console has necessarily connected.
    // (How soon that is depends on the machine's load; the SDK runs below hit exact moments.)
    await page.goto(env.demo.url);
    await page.getByTestId('logout').click();
    await page.getByTestId('signin-alice').waitFor();

    // And through the SDK directly, stopping at moments spread over the first second. Each
    // run is its own sign-in: streams of one session would supersede a leaked one and hide it.
    for (const delay of [0, 5, 50, 200, 600, 950]) {
      const context = await newContext();
      await signInContext(context, env.demo, 'bob');
      const sdk = await sdkPage(context, env.demo);
      await sdk.evaluate(async (delay) => {
        const { createTidings, silentLogger } = (window as unknown as { TidingsSDK: typeof import('../src/index.js') }).TidingsSDK;
        const t = createTidings({ url: '/events/stream', sessionKey: 'quick', credentials: 'same-origin', logger: silentLogger });
        t.start();
        await new Promise((r) => setTimeout(r, delay));
        t.stop();
      }, delay);
    }
    await waitFor('no open stream', () => streamCounts(env.demo), (c) => c.open === 0, 3_000);
    const settled = await streamCounts(env.demo);
    await sleep(2_000);
    expect(await streamCounts(env.demo)).toEqual(settled);
  });
});
