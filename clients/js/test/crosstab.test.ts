import { afterEach, describe, expect, it } from 'vitest';
import { relayNames } from '../src/relay.js';
import { Tidings, type TidingsEvent, type TidingsOptions } from '../src/tidings.js';
import { activity, connected, CountingTarget, FakeClock, FakeHub, FakeLocks, frame, jsonResponse, ping, RecordingLogger, settle } from './helpers.js';

const frameConnected = (id: string, clientId: string) => frame({ type: 'connected', client_id: clientId, timestamp: 't', heartbeat_ms: 1_000 }, id);

let sessionSeq = 0;
const live: Tidings[] = [];

afterEach(() => {
  for (const t of live.splice(0)) t.stop();
});

function group(hub = new FakeHub()) {
  const sessionKey = `s-${++sessionSeq}`;
  const clock = new FakeClock();
  const locks = new FakeLocks();
  function tab(extra: Partial<TidingsOptions> = {}) {
    const page = new CountingTarget();
    const online = new CountingTarget();
    const events: TidingsEvent[] = [];
    let visible = true;
    const logger = new RecordingLogger();
    const tidings = new Tidings({
      url: 'http://hub.test/events/stream',
      sessionKey,
      token: () => 'tok',
      fetch: hub.fetch,
      clock,
      random: () => 0.5,
      locks,
      pageTarget: page,
      onlineTarget: online,
      isVisible: () => visible,
      logger,
      ...extra,
    });
    tidings.subscribe((e) => events.push(e));
    live.push(tidings);
    return {
      tidings,
      page,
      online,
      events,
      logger,
      activities: () => events.flatMap((e) => (e.type === 'activity' ? [e.id] : [])),
      hide: () => (visible = false),
    };
  }
  return { hub, clock, locks, sessionKey, tab };
}

describe('one stream per session across tabs', () => {
  it('two tabs started together: one leader, one stream (protocol C11)', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    b.tidings.start();
    await settle();
    expect([a.tidings.status.role, b.tidings.status.role].sort()).toEqual(['follower', 'leader']);
    expect(g.hub.requests).toHaveLength(1);
    expect(g.hub.openConnections).toBe(1);
  });

  it('the leader relays every event with its id; followers see the same activities', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + activity('a-1', { n: 1 }, [['app']]) + ping() + activity('a-2', { n: 2 }, [['app', 2]]));
    await settle();
    expect(a.activities()).toEqual(['a-1', 'a-2']);
    expect(b.activities()).toEqual(['a-1', 'a-2']);
    const relayed = b.events.find((e) => e.type === 'activity' && e.id === 'a-2');
    expect(relayed).toMatchObject({ data: { n: 2 }, invalidate: [['app', 2]], keysFrom: 'hub' });
    expect(b.tidings.lastEventId).toBe('a-2');
  });

  it('every tab reports the same connection: state, client id, last event, retry and error', async () => {
    const hub = new FakeHub();
    const g = group(hub);
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    expect(a.tidings.status.role).toBe('leader');
    // The stream is open (the hub has not sent `connected` yet): the follower knows.
    expect(b.tidings.status).toMatchObject({ role: 'follower', connected: true, stream: { state: 'open' } });
    expect(b.tidings.status.clientId).toBeUndefined();
    g.hub.conn.send(connected('a-0') + activity('a-1', { n: 1 }, [['app']]));
    await settle();
    for (const t of [a, b]) {
      expect(t.tidings.status).toMatchObject({ connected: true, clientId: 'c1', stream: { state: 'open' } });
      expect(t.tidings.status.error).toBeUndefined();
      expect(t.tidings.status.lastEvent).toMatchObject({ type: 'activity', id: 'a-1', data: { n: 1 } });
    }
    // A tab opened after the event learns the connection and the last event from the leader,
    // without the activity being replayed to it.
    const c = g.tab();
    c.tidings.start();
    await settle();
    expect(c.tidings.status).toMatchObject({ role: 'follower', connected: true, clientId: 'c1', lastEvent: { type: 'activity', id: 'a-1' } });
    expect(c.activities()).toEqual([]);

    // The leader's stream drops and the hub answers 503: every tab knows it is retrying, when,
    // and why.
    hub.then(() => jsonResponse(503, { error: 'busy' }, { 'retry-after': '3' }));
    g.hub.conn.end();
    await settle();
    await g.clock.advance(a.tidings.status.stream!.retryInMs!);
    const leaderStream = a.tidings.status.stream!;
    expect(leaderStream).toMatchObject({ state: 'waiting', attempt: 2, lastError: 'HTTP 503' });
    for (const t of [b, c]) {
      expect(t.tidings.status).toMatchObject({ connected: false, stream: { state: 'waiting', attempt: 2, retryAt: leaderStream.retryAt }, error: { message: 'HTTP 503' } });
      expect(t.tidings.status.clientId).toBeUndefined();
    }
    await g.clock.advance(leaderStream.retryInMs!);
    g.hub.conn.send(frameConnected('a-1', 'c2'));
    await settle();
    for (const t of [a, b, c]) expect(t.tidings.status).toMatchObject({ connected: true, clientId: 'c2', lastEvent: { type: 'connected', clientId: 'c2' } });
    expect(b.tidings.status.error).toBeUndefined();
  });

  it('a stop for good reaches every tab with its reason as the error', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + frame({ type: 'closed', reason: 'revoked' }));
    await settle();
    for (const t of [a, b]) {
      expect(t.tidings.status).toMatchObject({ role: 'stopped', connected: false, error: { reason: 'revoked' } });
    }
  });

  it('on(type) hears only that type and ends when told', async () => {
    const g = group();
    const a = g.tab();
    const seen: string[] = [];
    const off = a.tidings.on('activity', (e) => seen.push(e.id ?? '?'));
    a.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + activity('a-1', {}) + ping() + activity('a-2', {}));
    await settle();
    off();
    g.hub.conn.send(activity('a-3', {}));
    await settle();
    expect(seen).toEqual(['a-1', 'a-2']);
  });

  it('followers de-duplicate by id (a relay overlapping a hand-over)', async () => {
    const g = group();
    const b = g.tab();
    const fakeLeader = new BroadcastChannel(relayNames(g.sessionKey).channel);
    // Some other tab holds the lock, so `b` stays a follower.
    let release!: () => void;
    void g.locks.request(relayNames(g.sessionKey).lock, {}, () => new Promise<void>((r) => (release = r)));
    await settle();
    b.tidings.start();
    await settle();
    const data = JSON.stringify({ type: 'activity', data: { n: 1 }, invalidate: [['app']] });
    for (const id of ['a-1', 'a-1', 'a-2', 'a-1', 'a-2', 'a-3']) {
      fakeLeader.postMessage({ t: 'frame', from: 'old-leader', id, data, last: id, hb: 15_000 });
    }
    await settle();
    expect(b.activities()).toEqual(['a-1', 'a-2', 'a-3']);
    fakeLeader.close();
    release();
  });

  it('gaps in the ids (events of the account this session may not see) are no loss: no resync, every activity, resume from the last id', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    // The hub holds back events whose audience this session is outside of: seqs 1-4, 6-8 and
    // 10-29 were someone else's.
    g.hub.conn.send(connected('e-0') + activity('e-5', { n: 5 }, [['app']]) + activity('e-9', { n: 9 }, [['app']]) + activity('e-30', { n: 30 }, [['app']]));
    await settle();
    for (const t of [a, b]) expect(t.activities()).toEqual(['e-5', 'e-9', 'e-30']);
    g.hub.conn.end();
    await settle();
    await g.clock.advance(a.tidings.status.stream!.retryInMs!);
    expect(g.hub.requests).toHaveLength(2);
    expect(g.hub.last.headers['last-event-id']).toBe('e-30');
    // The hub replays from there what the session may see (only hidden events: nothing).
    g.hub.conn.send(frame({ type: 'connected', client_id: 'c2', timestamp: 't', heartbeat_ms: 1_000, resumed: true }, 'e-30') + activity('e-77', { n: 77 }, [['app']]));
    await settle();
    for (const t of [a, b]) {
      expect(t.activities()).toEqual(['e-5', 'e-9', 'e-30', 'e-77']);
      expect(t.events.filter((e) => e.type === 'resync')).toEqual([]);
      expect(t.tidings.status).toMatchObject({ connected: true, clientId: 'c2' });
    }
  });

  it('hand-over when the leader tab goes away: immediate, resuming from the last relayed id', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + activity('a-1', {}) + activity('a-2', {}));
    await settle();
    const clockBefore = g.clock.t;
    a.page.dispatch('pagehide');
    await settle();
    expect(a.tidings.status.role).toBe('suspended');
    expect(b.tidings.status.role).toBe('leader');
    expect(g.clock.t).toBe(clockBefore);
    expect(g.hub.requests).toHaveLength(2);
    expect(g.hub.requests[0]!.connection!.open).toBe(false);
    expect(g.hub.last.headers['last-event-id']).toBe('a-2');
    g.hub.conn.send(connected('a-2') + activity('a-3', {}));
    await settle();
    expect(b.activities()).toEqual(['a-1', 'a-2', 'a-3']);
    // Back from the bfcache: the tab rejoins as a follower and hears the new leader.
    a.page.dispatch('pageshow');
    await settle();
    expect(a.tidings.status.role).toBe('follower');
    g.hub.conn.send(activity('a-4', {}));
    await settle();
    expect(a.activities()).toEqual(['a-1', 'a-2', 'a-4']);
    expect(g.hub.openConnections).toBe(1);
  });

  it('stop() in the leader hands over; the stopped tab leaves nothing behind', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + activity('a-1', {}));
    await settle();
    a.tidings.stop();
    await settle();
    expect(a.tidings.status.role).toBe('stopped');
    expect(a.page.count + a.online.count).toBe(0);
    expect(b.tidings.status.role).toBe('leader');
    expect(g.hub.last.headers['last-event-id']).toBe('a-1');
    b.tidings.stop();
    await settle();
    expect(g.hub.openConnections).toBe(0);
    expect(g.clock.pending).toBe(0);
    expect(g.locks.held.size + g.locks.waiting).toBe(0);
    await g.clock.advance(10 * 60_000);
    expect(g.hub.requests).toHaveLength(2);
  });

  it('a visible follower replaces a frozen leader with steal; a hidden one waits', async () => {
    const g = group();
    // A frozen leader: holds the lock, never relays anything.
    const frozen = g.locks.request(relayNames(g.sessionKey).lock, {}, () => new Promise<void>(() => {}));
    frozen.catch(() => {});
    await settle();
    const hidden = g.tab({ lastEventId: 'a-7' });
    hidden.hide();
    hidden.tidings.start();
    await settle();
    await g.clock.advance(37_500);
    expect(hidden.tidings.status.role).toBe('follower');
    expect(g.hub.requests).toHaveLength(0);

    const visible = g.tab({ lastEventId: 'a-7' });
    visible.tidings.start();
    await settle();
    await g.clock.advance(37_499);
    expect(visible.tidings.status.role).toBe('follower');
    await g.clock.advance(1);
    expect(visible.tidings.status.role).toBe('leader');
    expect(g.hub.requests).toHaveLength(1);
    expect(g.hub.last.headers['last-event-id']).toBe('a-7');
    await expect(frozen).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('a leader whose lock is stolen steps down, closes its stream and follows', async () => {
    const g = group();
    const a = g.tab();
    a.tidings.start();
    await settle();
    expect(a.tidings.status.role).toBe('leader');
    g.hub.conn.send(connected('a-0') + activity('a-1', {}));
    await settle();
    // Another tab judged `a` frozen (the browser had paused it) and stole the lock.
    const thief = g.locks.request(relayNames(g.sessionKey).lock, { steal: true }, () => new Promise<void>(() => {}));
    await settle();
    expect(a.tidings.status.role).toBe('follower');
    expect(g.hub.openConnections).toBe(0);
    expect(a.events.some((e) => e.type === 'stopped')).toBe(false);
    expect(a.tidings.lastEventId).toBe('a-1');
    void thief;
  });

  it('an auth refusal in the leader stops every tab of the session', async () => {
    const hub = new FakeHub().then(() => jsonResponse(401, { error: 'expired' }), () => jsonResponse(401, { error: 'expired' }));
    const g = group(hub);
    const a = g.tab();
    const b = g.tab();
    b.tidings.start();
    a.tidings.start();
    await settle();
    for (const t of [a, b]) {
      expect(t.tidings.status.role).toBe('stopped');
      expect(t.events.filter((e) => e.type === 'auth-error')).toHaveLength(1);
    }
    // A follower that got the lock before the stop message arrived may try once more, no more.
    await g.clock.advance(10 * 60_000);
    expect(g.hub.requests.length).toBeLessThanOrEqual(2);
    expect(g.hub.openConnections).toBe(0);
    expect(g.clock.pending).toBe(0);
    expect(g.locks.held.size + g.locks.waiting).toBe(0);
  });

  it('superseded right after another tab announced itself leader: step down, do not stop the group', async () => {
    const g = group();
    const a = g.tab();
    a.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0'));
    await settle();
    const other = new BroadcastChannel(relayNames(g.sessionKey).channel);
    other.postMessage({ t: 'leader', from: 'tab-b' });
    await settle();
    g.hub.conn.send('data: {"type":"closed","reason":"superseded"}\n\n');
    await settle();
    // `a` stepped down and queued for the lock again; as no tab really holds it here, `a` leads
    // again, resuming from where it was.
    expect(a.events.some((e) => e.type === 'stopped')).toBe(false);
    expect(a.events.filter((e) => e.type === 'status').map((e) => e.type === 'status' && e.status.role)).toContain('follower');
    expect(a.tidings.status.role).toBe('leader');
    expect(g.hub.last.headers['last-event-id']).toBe('a-0');
    other.close();
  });

  it('superseded with no hand-over stops every tab', async () => {
    const g = group();
    const a = g.tab();
    const b = g.tab();
    a.tidings.start();
    await settle();
    b.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + 'data: {"type":"closed","reason":"superseded"}\n\n');
    await settle();
    for (const t of [a, b]) expect(t.events.at(-1)).toEqual({ type: 'stopped', reason: { kind: 'closed', reason: 'superseded' } });
    await g.clock.advance(10 * 60_000);
    expect(g.hub.openConnections).toBe(0);
  });

  it('stop right after start leaves no stream, lock request or timer (protocol C10)', async () => {
    const g = group();
    const a = g.tab();
    a.tidings.start();
    a.tidings.stop();
    const b = g.tab();
    b.tidings.start();
    await Promise.resolve();
    b.tidings.stop();
    await settle();
    await g.clock.advance(10 * 60_000);
    expect(g.hub.requests.length).toBeLessThanOrEqual(1);
    expect(g.hub.openConnections).toBe(0);
    expect(g.clock.pending).toBe(0);
    expect(g.locks.held.size + g.locks.waiting).toBe(0);
  });

  it('a tab that joins late learns the leader position at once', async () => {
    const g = group();
    const a = g.tab();
    a.tidings.start();
    await settle();
    g.hub.conn.send(connected('a-0') + activity('a-1', {}) + activity('a-2', {}));
    await settle();
    const b = g.tab();
    b.tidings.start();
    await settle();
    expect(b.tidings.status.role).toBe('follower');
    expect(b.tidings.lastEventId).toBe('a-2');
    expect(b.activities()).toEqual([]);
  });

  it('without Web Locks each tab runs its own stream', async () => {
    const g = group();
    const a = g.tab({ locks: null });
    const b = g.tab({ locks: null });
    a.tidings.start();
    b.tidings.start();
    await settle();
    expect(a.tidings.status.role).toBe('solo');
    expect(b.tidings.status.role).toBe('solo');
    expect(g.hub.openConnections).toBe(2);
  });

  it('activities without keys are resolved locally', async () => {
    const g = group();
    const a = g.tab({ locks: null });
    a.tidings.start();
    await settle();
    g.hub.conn.send(activity('a-1', { activity_type: 'deleted', resource: { type: 'edge_application', id: 9 } }));
    await settle();
    expect(a.events.find((e) => e.type === 'activity')).toMatchObject({
      invalidate: [['edge-application']],
      remove: [['edge-application', 9]],
      keysFrom: 'local',
    });
  });

  it('a local resolver that yields a function or throws costs a key, never the event (protocol C13)', async () => {
    const g = group();
    let calls = 0;
    const resolver = {
      resolve: () => {
        if (++calls === 2) throw new Error('broken entry');
        return { invalidate: [['widget', () => 1], ['widget', 7]], remove: [[undefined]] } as never;
      },
    };
    const a = g.tab({ locks: null, resolver });
    a.tidings.start();
    await settle();
    g.hub.conn.send(activity('a-1', { activity_type: 'edited' }) + activity('a-2', { activity_type: 'edited' }));
    await settle();
    const got = a.events.filter((e) => e.type === 'activity');
    expect(got).toMatchObject([
      { id: 'a-1', invalidate: [['widget', 7]], remove: [], keysFrom: 'local' },
      { id: 'a-2', invalidate: [], remove: [], keysFrom: 'none' },
    ]);
    expect(structuredClone(got)).toEqual(got);
  });
});
