/** The browser's own `EventSource` — no SDK code on the page — against the real `tidings demo`,
 * authenticated only by the session cookie the demo's sign-in sets (docs/protocol.md,
 * Subscribe: the session cookie is accepted "so a native `EventSource` with `withCredentials`
 * works"). It checks what a
 * plain consumer relies on: every frame arrives as a default `message` event with one JSON
 * object, activity ids surface as `lastEventId`, the browser's own reconnect after a
 * `closed` `shutdown` sends `Last-Event-ID` and is answered with `resync` `epoch_changed` (the
 * in-memory engine starts a new epoch), and without the cookie the stream is refused. */
import type { BrowserContext, Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { type Demo, metric, publish, restartDemo, sleep, streamCounts, useDemo, waitFor } from './support.js';

const env = useDemo();

/** What the page records: one entry per event the EventSource dispatched. */
interface Seen {
  /** `message` events, with their JSON payload and when they arrived (`performance.now()`). */
  messages: Array<{ type: string; data: Record<string, unknown>; lastEventId: string; at: number }>;
  /** Events dispatched under a frame type's name (`connected`, `activity`, …); the hub sends
   * every frame under the default name, so this stays empty. */
  named: Array<{ event: string; data: string; lastEventId: string }>;
  /** `open` and `error` events, with the EventSource's `readyState` at that moment. */
  states: Array<{ event: 'open' | 'error'; readyState: number }>;
}

const FRAME_TYPES = ['connected', 'activity', 'ping', 'resync', 'closed'];
/** `EventSource.readyState` values (the constants are not globals in Node). */
const READY_OPEN = 1;
const READY_CLOSED = 2;

/** A page on the demo's origin that runs nothing (a JSON document), so no console code opens a
 * stream of its own — which would supersede the one under test (one stream per session). */
async function blankPage(context: BrowserContext, demo: Demo): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${demo.url}/demo/api/users`);
  return page;
}

/** Signs in from the page with the demo's own API; the cookie lands in the browser's jar. */
async function signInFromPage(page: Page, user: string): Promise<{ account: string; session: string }> {
  return page.evaluate(async (user) => {
    const r = await fetch('/demo/api/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    if (!r.ok) throw new Error(`login: HTTP ${r.status}`);
    return (await r.json()) as { account: string; session: string };
  }, user);
}

/** Opens a native EventSource on the page and records everything it dispatches. */
async function openEventSource(page: Page): Promise<void> {
  await page.evaluate((frameTypes) => {
    const seen: Seen = { messages: [], named: [], states: [] };
    const es = new EventSource('/events/stream', { withCredentials: true });
    for (const event of frameTypes) {
      es.addEventListener(event, (e) => seen.named.push({ event, data: String((e as MessageEvent).data), lastEventId: (e as MessageEvent).lastEventId }));
    }
    es.addEventListener('message', (e) => {
      const data = JSON.parse(e.data) as Record<string, unknown>;
      seen.messages.push({ type: String(data.type), data, lastEventId: e.lastEventId, at: performance.now() });
    });
    es.addEventListener('open', () => seen.states.push({ event: 'open', readyState: es.readyState }));
    es.addEventListener('error', () => seen.states.push({ event: 'error', readyState: es.readyState }));
    Object.assign(window, { seen, es });
  }, FRAME_TYPES);
}

const seen = (page: Page) => page.evaluate(() => (window as unknown as { seen: Seen }).seen);
const readyState = (page: Page) => page.evaluate(() => (window as unknown as { es: EventSource }).es.readyState);
/** Message types in arrival order, pings left out (they come whenever the heartbeat ticks). */
const types = (s: Seen) => s.messages.filter((m) => m.type !== 'ping').map((m) => m.type);

/** Waits until the page has seen `count` messages of `type`. */
async function waitMessages(page: Page, type: string, count: number, timeoutMs = 5_000): Promise<Seen['messages']> {
  const s = await waitFor(`${count} ${type} message(s)`, () => seen(page), (s) => s.messages.filter((m) => m.type === type).length >= count, timeoutMs);
  return s.messages.filter((m) => m.type === type);
}

/** Ids are `<epoch hex>-<sequence>` (SECURITY.md, `Last-Event-ID` limit). */
function parseId(id: string): { epoch: string; seq: number } {
  const m = /^([0-9a-f]+)-(\d+)$/.exec(id);
  if (!m) throw new Error(`not a hub event id: ${JSON.stringify(id)}`);
  return { epoch: m[1]!, seq: Number(m[2]) };
}

function activity(n: number, phase: string) {
  return {
    user: { email: 'deploy-bot@acme.example', name: 'Déploiement ✓' },
    activity_type: n % 2 === 0 ? 'edited' : 'created',
    resource: { type: 'edge_application', name: `${phase} app ${n}`, id: null },
    parent: { type: 'edge_application', id: 9000 + n },
    timestamp: '2026-03-03T19:58:56Z',
    description: `${phase} app ${n} was changed`,
    metadata: { id: 1000 + n, name: `${phase} app ${n}`, nested: { list: [1, 'two', null, { three: 3 }] } },
    an_unknown_field: { kept: true, phase, n },
  };
}

describe('native EventSource with the session cookie', () => {
  it('receives connected and activities with ids, and rejoins a restarted hub with a resync', async () => {
    const page = await blankPage(await env.newContext(), env.demo);
    const me = await signInFromPage(page, 'alice');
    expect(me.account).toBe('acme');
    // The cookie is HttpOnly: the page's script cannot read it, only the browser can send it.
    expect(await page.evaluate(() => document.cookie)).not.toContain('tidings_session');

    await openEventSource(page);
    const [connected] = await waitMessages(page, 'connected', 1);
    expect(connected!.data).toMatchObject({ type: 'connected', session_id: me.session, resumed: false, heartbeat_ms: 1000 });
    expect(connected!.data.client_id).toMatch(/^c_/);
    expect(typeof connected!.data.timestamp).toBe('string');
    // The connected frame carries the stream's starting position as its id.
    const start = parseId(connected!.lastEventId);
    expect(await readyState(page)).toBe(READY_OPEN);

    // Activities published by a backend reach the page with the ids the hub assigned.
    const sent = [activity(1, 'before'), activity(2, 'before'), activity(3, 'before')];
    const ids: string[] = [];
    for (const [i, data] of sent.entries()) {
      ids.push(...(await publish(env.demo, 'acme', data)));
      // Another account's activity, between ours: it must never reach alice.
      if (i === 0) await publish(env.demo, 'globex', activity(99, 'other account'));
    }
    expect(ids).toHaveLength(3);
    const received = await waitMessages(page, 'activity', 3);
    expect(received.map((m) => m.lastEventId)).toEqual(ids);
    const seqs = ids.map(parseId);
    expect(seqs.every((id) => id.epoch === start.epoch)).toBe(true);
    for (let i = 0; i < seqs.length; i++) expect(seqs[i]!.seq).toBeGreaterThan(i === 0 ? start.seq : seqs[i - 1]!.seq);
    expect(received.map((m) => m.data.data)).toEqual(sent);
    for (const m of received) expect(Array.isArray(m.data.invalidate)).toBe(true);

    // Restart the hub on the same port with SIGTERM: the stream gets `closed` `shutdown`, the
    // browser reconnects by itself (after the `retry:` delay) sending the last id it saw.
    const port = env.demo.port;
    await env.demo.stop('SIGTERM');
    const [closed] = await waitMessages(page, 'closed', 1);
    expect(closed!.data).toMatchObject({ type: 'closed', reason: 'shutdown' });
    expect(closed!.data.retry_ms).toEqual(expect.any(Number));
    env.demo = await restartDemo(port);

    const connectedAgain = (await waitMessages(page, 'connected', 2, 15_000))[1]!;
    // The browser waited at least the jittered `retry_ms` before reconnecting: the `closed`
    // frame also carries it as a `retry:` field, the only delay a native EventSource obeys.
    expect(connectedAgain.at - closed!.at).toBeGreaterThanOrEqual((closed!.data.retry_ms as number) - 100);
    await waitMessages(page, 'resync', 1);
    let s = await seen(page);
    // docs/protocol.md, Resume: an id from another epoch is answered with one `resync` first, then live.
    expect(types(s)).toEqual(['connected', 'activity', 'activity', 'activity', 'closed', 'connected', 'resync']);
    expect(s.messages.find((m) => m.type === 'resync')!.data).toEqual({ type: 'resync', reason: 'epoch_changed' });
    expect(connectedAgain.data).toMatchObject({ session_id: me.session, resumed: false });
    expect(connectedAgain.data.client_id).not.toBe(connected!.data.client_id);
    const restarted = parseId(connectedAgain.lastEventId);
    expect(restarted.epoch).not.toBe(start.epoch);
    // The hub's side: it got a Last-Event-ID (without one there is nothing to resync) and it
    // was from the old epoch, not malformed or unknown.
    expect(await metric(env.demo, 'tidings_resyncs_total{reason="epoch_changed"}')).toBe(1);
    expect(await metric(env.demo, 'tidings_resyncs_total')).toBe(1);
    expect(await metric(env.demo, 'tidings_replays_total')).toBe(0);
    expect(await streamCounts(env.demo)).toMatchObject({ open: 1, opened: 1, refused: 0 });
    // The same EventSource object did it: it never gave up (an error with readyState CLOSED).
    expect(await readyState(page)).toBe(READY_OPEN);
    expect(s.states.filter((st) => st.event === 'error').length).toBeGreaterThanOrEqual(1);
    expect(s.states.every((st) => st.readyState !== READY_CLOSED)).toBe(true);

    // Activities published after the restart arrive with the new epoch's ids.
    const after = [activity(4, 'after'), activity(5, 'after')];
    const idsAfter = (await publish(env.demo, 'acme', after[0])).concat(await publish(env.demo, 'acme', after[1]));
    const all = await waitMessages(page, 'activity', 5);
    expect(all.slice(3).map((m) => m.lastEventId)).toEqual(idsAfter);
    expect(all.slice(3).map((m) => m.data.data)).toEqual(after);
    const afterSeqs = idsAfter.map(parseId);
    expect(afterSeqs.every((id) => id.epoch === restarted.epoch)).toBe(true);
    expect(afterSeqs[0]!.seq).toBeGreaterThan(restarted.seq);
    expect(afterSeqs[1]!.seq).toBeGreaterThan(afterSeqs[0]!.seq);

    // Nothing from the other account, and every frame came as a default `message` event.
    await sleep(300);
    s = await seen(page);
    expect(s.messages.filter((m) => m.type === 'activity').map((m) => m.data.data)).toEqual([...sent, ...after]);
    expect(s.named).toEqual([]);
    // Heartbeats come as default `message` events too (the demo's heartbeat is 1 s).
    await waitMessages(page, 'ping', 1, 5_000);
  });

  it('without the cookie the EventSource fails with 401 and never sees connected', async () => {
    const before = await streamCounts(env.demo);
    const page = await blankPage(await env.newContext(), env.demo);
    await openEventSource(page);
    const s = await waitFor('the EventSource to fail', () => seen(page), (s) => s.states.some((st) => st.event === 'error'));
    // A non-200 answer fails the connection for good: readyState CLOSED, no reconnect.
    expect(s.states).toEqual([{ event: 'error', readyState: READY_CLOSED }]);
    await sleep(2_500); // longer than the hub's `retry:` hint
    expect(await seen(page)).toEqual({ messages: [], named: [], states: [{ event: 'error', readyState: READY_CLOSED }] });
    // The hub refused exactly one request, as missing credentials, and opened no stream.
    expect(await streamCounts(env.demo)).toEqual({ open: 0, opened: before.opened, refused: before.refused + 1 });
    expect(await metric(env.demo, 'tidings_stream_refusals_total{code="missing_credentials"}')).toBe(1);
    // The same request made visible: 401 with the JSON error body.
    const answer = await page.evaluate(async () => {
      const r = await fetch('/events/stream', { credentials: 'same-origin', headers: { accept: 'text/event-stream' } });
      return { status: r.status, body: (await r.json()) as { error: { code: string } } };
    });
    expect(answer.status).toBe(401);
    expect(answer.body.error.code).toBe('missing_credentials');
  });
});
