// tidings/testing: the fake hub apps use in their own unit tests behaves like the real hub for
// what the SDK can see: positions, exact resume, resync, closed, refusals.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../src/env.js';
import { createTidings, type Tidings, type TidingsEvent } from '../src/tidings.js';
import { createFakeHub, type FakeHub } from '../src/testing.js';

const live: Tidings[] = [];
afterEach(() => {
  for (const t of live.splice(0)) t.stop();
  vi.useRealTimers();
});

function client(hub: FakeHub) {
  const tidings = createTidings({ url: hub.url, fetch: hub.fetch, sessionKey: 'test', crossTab: false, logger: silentLogger, onlineTarget: null, pageTarget: null });
  live.push(tidings);
  const events: TidingsEvent[] = [];
  tidings.subscribe((e) => e.type !== 'status' && events.push(e));
  return { tidings, events, kinds: () => events.map((e) => (e.type === 'activity' ? `activity ${e.id}` : e.type === 'resync' ? `resync ${e.reason}` : e.type)) };
}

describe('tidings/testing fake hub', () => {
  it('connects, delivers activities with keys, and reports the client id', async () => {
    const hub = createFakeHub();
    const c = client(hub);
    c.tidings.start();
    await hub.connected();
    const id = hub.activity({ activity_type: 'edited', resource: { type: 'app', id: 7 } }, { invalidate: [['app']], remove: [['app', 7]] });
    await hub.settle();
    expect(c.events.at(-1)).toMatchObject({ type: 'activity', id, invalidate: [['app']], remove: [['app', 7]], keysFrom: 'hub' });
    expect(c.tidings.status).toMatchObject({ connected: true, clientId: 'c-1' });
    expect(hub.openStreams).toBe(1);
  });

  it('a drop is resumed exactly: what was published meanwhile arrives, nothing twice', async () => {
    vi.useFakeTimers();
    const hub = createFakeHub();
    const c = client(hub);
    c.tidings.start();
    await hub.connected();
    hub.activity({ n: 1 });
    await hub.settle();
    hub.drop();
    await hub.settle();
    expect(c.tidings.status.connected).toBe(false);
    hub.activity({ n: 2 });
    await vi.advanceTimersByTimeAsync(c.tidings.status.stream!.retryInMs!);
    await hub.connected();
    expect(hub.requests.at(-1)!.lastEventId).toBe('fake-1');
    expect(c.kinds()).toEqual(['connected', 'activity fake-1', 'connected', 'activity fake-2']);
  });

  it('a resume past forgotten history gets resync history_trimmed; an unknown id, unknown_id', async () => {
    vi.useFakeTimers();
    const hub = createFakeHub();
    const c = client(hub);
    c.tidings.start();
    await hub.connected();
    hub.drop();
    hub.activity({ n: 1 });
    hub.forgetHistory();
    await hub.settle();
    await vi.advanceTimersByTimeAsync(c.tidings.status.stream!.retryInMs!);
    await hub.connected();
    expect(c.kinds()).toEqual(['connected', 'connected', 'resync history_trimmed']);

    const hub2 = createFakeHub();
    const t = createTidings({ url: hub2.url, fetch: hub2.fetch, sessionKey: 's', crossTab: false, lastEventId: 'elsewhere-9', logger: silentLogger, onlineTarget: null, pageTarget: null });
    live.push(t);
    const seen: string[] = [];
    t.on('resync', (e) => seen.push(e.reason));
    t.start();
    await hub2.connected();
    expect(seen).toEqual(['unknown_id']);
  });

  it('a 401 stops the SDK with an auth error; closed superseded stops it too', async () => {
    vi.useFakeTimers();
    const hub = createFakeHub();
    const c = client(hub);
    c.tidings.start();
    await hub.connected();
    hub.refuseNext(401);
    hub.drop();
    await hub.settle();
    await vi.advanceTimersByTimeAsync(c.tidings.status.stream!.retryInMs!);
    await hub.settle();
    expect(c.tidings.status).toMatchObject({ role: 'stopped', error: { status: 401 } });
    expect(c.kinds().slice(-2)).toEqual(['auth-error', 'stopped']);
    expect(hub.requests.map((r) => r.status)).toEqual([200, 401]);

    const hub2 = createFakeHub();
    const d = client(hub2);
    d.tidings.start();
    await hub2.connected();
    hub2.close('superseded');
    await hub2.settle();
    expect(d.tidings.status).toMatchObject({ role: 'stopped', stopReason: { kind: 'closed', reason: 'superseded' } });
    expect(hub2.openStreams).toBe(0);
  });
});
