/** The browser SDK guide's Vite dev-server configuration, verified: a real Vite dev server
 * (e2e/vite-proxy/vite.config.mjs, the file the guide quotes) proxies the stream to the real hub,
 * and a page served by Vite in Chromium connects through it with the session cookie, gets
 * activities as they are published (no buffering in the proxy), and comes back through it after
 * the hub restarts. */
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createServer, type ViteDevServer } from 'vite';
import { afterEach, describe, expect, it } from 'vitest';
import { publish, restartDemo, streamCounts, useDemo, waitFor } from './support.js';

const env = useDemo();
let vite: ViteDevServer | undefined;
afterEach(async () => {
  await vite?.close();
  vite = undefined;
  delete process.env.TIDINGS_HUB;
});

describe('Vite dev server proxy', () => {
  it('a page on the Vite dev server streams from the hub through the proxy', async () => {
    const root = fileURLToPath(new URL('./vite-proxy/', import.meta.url));
    process.env.TIDINGS_HUB = env.demo.url;
    vite = await createServer({ root, configFile: `${root}vite.config.mjs`, logLevel: 'warn', server: { host: '127.0.0.1', port: 0 } });
    await vite.listen();
    const port = (vite.httpServer!.address() as AddressInfo).port;
    const page = await (await env.newContext()).newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.evaluate(() => (window as unknown as { ready: Promise<void> }).ready);
    const status = () => page.evaluate(() => (window as unknown as { tidingsStatus: () => { connected: boolean; clientId?: string } }).tidingsStatus());
    await expect.poll(status, { timeout: 15_000 }).toMatchObject({ connected: true, clientId: expect.stringMatching(/.+/) });
    await waitFor('the stream to reach the hub', () => streamCounts(env.demo), (c) => c.open === 1);

    const activities = () =>
      page.evaluate(() => (window as unknown as { events: Array<{ type: string; id?: string }> }).events.filter((e) => e.type === 'activity').map((e) => e.id));
    const sentAt = Date.now();
    const [first] = await publish(env.demo, 'acme', { activity_type: 'edited', resource: { type: 'widget', id: 1 } });
    await expect.poll(activities, { timeout: 5_000, interval: 10 }).toEqual([first]);
    const arrivedMs = Date.now() - sentAt;

    // The hub restarts under the proxy (memory engine: its history is gone): the page reconnects
    // through the proxy, is told to resync, and gets what is published next.
    const before = (await status()).clientId;
    const hubPort = env.demo.port;
    await env.demo.stop('SIGKILL');
    const killedAt = Date.now();
    env.demo = await restartDemo(hubPort);
    await expect.poll(async () => { const s = await status(); return s.connected && s.clientId !== before; }, { timeout: 20_000 }).toBe(true);
    const backMs = Date.now() - killedAt;
    const kinds = () => page.evaluate(() => (window as unknown as { events: Array<{ type: string; reason?: string }> }).events.map((e) => (e.type === 'resync' ? `resync ${e.reason}` : e.type)));
    await expect.poll(kinds).toContain('resync epoch_changed');
    const [second] = await publish(env.demo, 'acme', { activity_type: 'edited', resource: { type: 'widget', id: 2 } });
    await expect.poll(activities, { timeout: 5_000 }).toEqual([first, second]);
    console.log(`through the Vite proxy: first activity seen ${arrivedMs} ms after its publish; connected again ${backMs} ms after the hub was killed`);
  });
});
