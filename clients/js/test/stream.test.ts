import { describe, expect, it } from 'vitest';
import type { Frame } from '../src/protocol.js';
import { StreamClient, type StopReason, type StreamClientOptions } from '../src/stream.js';
import { activity, connected, CountingTarget, FakeClock, FakeHub, jsonResponse, ping, RecordingLogger, settle } from './helpers.js';

function setup(hub = new FakeHub(), extra: Partial<StreamClientOptions> = {}) {
  const clock = new FakeClock();
  const online = new CountingTarget();
  const logger = new RecordingLogger();
  const frames: Array<{ id: string | undefined; frame: Frame }> = [];
  const stops: StopReason[] = [];
  let tokens = 0;
  const client = new StreamClient({
    url: 'http://hub.test/events/stream',
    token: async () => `tok-${++tokens}`,
    fetch: hub.fetch,
    clock,
    random: () => 0.5,
    onlineTarget: online,
    logger,
    onEvent: (event, f) => frames.push({ id: event.id, frame: f }),
    onStop: (r) => stops.push(r),
    ...extra,
  });
  return { hub, clock, online, logger, frames, stops, client };
}

describe('stream client', () => {
  it('sends the token, Accept and no Last-Event-ID on the first connect', async () => {
    const { hub, client } = setup();
    client.start();
    await settle();
    expect(hub.requests).toHaveLength(1);
    expect(hub.last.headers['authorization']).toBe('Bearer tok-1');
    expect(hub.last.headers['accept']).toBe('text/event-stream');
    expect(hub.last.headers['last-event-id']).toBeUndefined();
    client.stop();
  });

  it('uses the Token scheme when asked', async () => {
    const { hub, client } = setup(undefined, { authScheme: 'Token' });
    client.start();
    await settle();
    expect(hub.last.headers['authorization']).toBe('Token tok-1');
    client.stop();
  });

  it('resumes with the last id seen, the connected frame included, and a fresh token', async () => {
    const { hub, clock, client, frames } = setup();
    client.start();
    await settle();
    hub.conn.send('retry: 2000\n\n' + connected('a-0'));
    await settle();
    expect(client.lastEventId).toBe('a-0');
    hub.conn.end();
    await settle();
    await clock.advance(client.status.retryInMs!);
    expect(hub.requests).toHaveLength(2);
    expect(hub.last.headers['last-event-id']).toBe('a-0');
    expect(hub.last.headers['authorization']).toBe('Bearer tok-2');
    hub.conn.send(connected('a-0') + activity('a-1', { x: 1 }, [['app']]) + activity('a-2', { x: 2 }, [['app']]));
    await settle();
    hub.conn.end();
    await settle();
    await clock.advance(client.status.retryInMs!);
    expect(hub.requests).toHaveLength(3);
    expect(hub.last.headers['last-event-id']).toBe('a-2');
    expect(frames.filter((f) => f.frame.type === 'activity').map((f) => f.id)).toEqual(['a-1', 'a-2']);
    client.stop();
  });

  it('reconnects after a 5xx with growing, capped, jittered delays and never gives up', async () => {
    const hub = new FakeHub();
    for (let i = 0; i < 40; i++) hub.then(() => jsonResponse(503, { error: 'draining' }));
    const delays: number[] = [];
    const { clock, client } = setup(hub, {
      random: () => 0.999,
      onStatus: (s) => s.state === 'waiting' && delays.push(s.retryInMs!),
    });
    client.start();
    await settle();
    for (let i = 0; i < 40; i++) await clock.advance(30_000);
    expect(hub.requests.length).toBeGreaterThanOrEqual(40);
    expect(delays.slice(0, 6)).toEqual([999, 1998, 3996, 7992, 15984, 29970]);
    expect(Math.max(...delays)).toBeLessThanOrEqual(30_000);
    expect(client.running).toBe(true);
    client.stop();
  });

  it('honours Retry-After on 429 as a floor', async () => {
    const hub = new FakeHub().then(() => jsonResponse(429, { error: 'too many' }, { 'retry-after': '7' }));
    const delays: number[] = [];
    const { clock, client } = setup(hub, { onStatus: (s) => s.state === 'waiting' && delays.push(s.retryInMs!) });
    client.start();
    await settle();
    expect(delays).toEqual([7_000]);
    await clock.advance(6_999);
    expect(hub.requests).toHaveLength(1);
    await clock.advance(1);
    expect(hub.requests).toHaveLength(2);
    client.stop();
  });

  it('reconnects on a network error, an unexpected content type and a non-200 success', async () => {
    const hub = new FakeHub()
      .then('network-error')
      .then(() => new Response('<html>', { status: 200, headers: { 'content-type': 'text/html' } }))
      .then(() => new Response(null, { status: 204, headers: { 'content-type': 'text/event-stream' } }));
    const { clock, client, logger } = setup(hub);
    client.start();
    await settle();
    await clock.advance(client.status.retryInMs!);
    await clock.advance(client.status.retryInMs!);
    await clock.advance(client.status.retryInMs!);
    expect(hub.requests).toHaveLength(4);
    expect(hub.conn.open).toBe(true);
    expect(logger.has('debug', 'unexpected content type text/html')).toBe(true);
    expect(logger.has('debug', 'HTTP 204')).toBe(true);
    client.stop();
  });

  for (const status of [401, 403]) {
    it(`stops on ${status} with an auth error and does not reconnect`, async () => {
      const hub = new FakeHub().then(() => jsonResponse(status, { error: 'nope' }));
      const { clock, client, stops } = setup(hub);
      client.start();
      await settle();
      expect(stops).toEqual([{ kind: 'auth', status, body: { error: 'nope' } }]);
      await clock.advance(10 * 60_000);
      expect(hub.requests).toHaveLength(1);
      expect(clock.pending).toBe(0);
    });
  }

  for (const reason of ['superseded', 'revoked']) {
    it(`stops on closed ${reason}`, async () => {
      const { hub, clock, client, stops, frames } = setup();
      client.start();
      await settle();
      hub.conn.send(connected('a-0') + `event: message\ndata: {"type":"closed","reason":"${reason}"}\n\n`);
      await settle();
      expect(stops).toEqual([{ kind: 'closed', reason }]);
      expect(frames.at(-1)?.frame).toEqual({ type: 'closed', reason });
      await clock.advance(10 * 60_000);
      expect(hub.requests).toHaveLength(1);
      expect(hub.openConnections).toBe(0);
      expect(clock.pending).toBe(0);
    });
  }

  it('reconnects after closed shutdown using the hub retry_ms', async () => {
    const delays: number[] = [];
    const { hub, clock, client } = setup(undefined, { onStatus: (s) => s.state === 'waiting' && delays.push(s.retryInMs!) });
    client.start();
    await settle();
    hub.conn.send(connected('a-0') + 'data: {"type":"closed","reason":"shutdown","retry_ms":1234}\n\n');
    await settle();
    expect(delays).toEqual([1234]);
    expect(hub.requests[0]!.connection!.open).toBe(false);
    await clock.advance(1234);
    expect(hub.requests).toHaveLength(2);
    expect(hub.last.headers['last-event-id']).toBe('a-0');
    client.stop();
  });

  it('watchdog: no bytes for 2.5 heartbeats reconnects; pings keep it alive', async () => {
    const { hub, clock, client } = setup();
    client.start();
    await settle();
    hub.conn.send(connected('a-0', 1_000));
    await settle();
    for (let i = 0; i < 5; i++) {
      await clock.advance(2_000);
      hub.conn.send(ping());
      await settle();
    }
    expect(hub.requests).toHaveLength(1);
    await clock.advance(2_499);
    expect(hub.requests).toHaveLength(1);
    await clock.advance(1);
    expect(hub.requests[0]!.connection!.open).toBe(false);
    expect(client.status.lastError).toContain('watchdog');
    await clock.advance(client.status.retryInMs!);
    expect(hub.requests).toHaveLength(2);
    expect(hub.last.headers['last-event-id']).toBe('a-0');
    client.stop();
  });

  it('watchdog also covers a request that never answers', async () => {
    const hub = new FakeHub().then('hang');
    const { clock, client } = setup(hub);
    client.start();
    await settle();
    await clock.advance(37_500);
    await clock.advance(30_000);
    expect(hub.requests).toHaveLength(2);
    client.stop();
  });

  it('reconnects at once when the browser comes back online', async () => {
    const hub = new FakeHub().then('network-error');
    const { clock, client, online } = setup(hub);
    client.start();
    await settle();
    expect(client.status.state).toBe('waiting');
    online.dispatch('online');
    await settle();
    expect(hub.requests).toHaveLength(2);
    expect(clock.t).toBe(0);
    client.stop();
  });

  it('skips invalid frames and payloads, logs them, and keeps the stream', async () => {
    const { hub, client, frames, logger } = setup();
    client.start();
    await settle();
    hub.conn.send(
      connected('a-0') +
        'data: not json\n\n' +
        'data: [1,2]\n\n' +
        'data: {"no":"type"}\n\n' +
        'data: {"type":"activity","data":"text"}\n\n' +
        'data: {"type":"from-the-future"}\n\n' +
        'event: other\ndata: {"type":"ping"}\n\n' +
        activity('a-1', { ok: true }, [['app'], 'not-a-key']),
    );
    await settle();
    expect(frames.map((f) => f.frame.type)).toEqual(['connected', 'activity']);
    expect(frames[1]!.frame).toEqual({ type: 'activity', data: { ok: true }, invalidate: [['app']], remove: [] });
    expect(logger.has('warn', 'payload is not JSON')).toBe(true);
    expect(logger.has('warn', 'not a JSON object')).toBe(true);
    expect(logger.has('warn', 'no string "type"')).toBe(true);
    expect(logger.has('warn', 'activity without an object "data"')).toBe(true);
    expect(logger.has('debug', 'unknown type "from-the-future"')).toBe(true);
    expect(logger.has('warn', 'unexpected name "other"')).toBe(true);
    expect(hub.conn.open).toBe(true);
    client.stop();
  });

  it('a listener that throws does not break the stream', async () => {
    const { hub, client, logger } = setup(undefined, {
      onEvent: () => {
        throw new Error('boom');
      },
    });
    client.start();
    await settle();
    hub.conn.send(connected('a-0') + activity('a-1', {}));
    await settle();
    expect(client.lastEventId).toBe('a-1');
    expect(logger.has('error', 'listener threw')).toBe(true);
    client.stop();
  });

  describe('stop leaves nothing behind', () => {
    it('while open', async () => {
      const { hub, clock, client, online } = setup();
      client.start();
      await settle();
      hub.conn.send(connected('a-0'));
      await settle();
      expect(online.count).toBe(1);
      client.stop();
      await settle();
      expect(hub.openConnections).toBe(0);
      expect(clock.pending).toBe(0);
      expect(online.count).toBe(0);
      await clock.advance(10 * 60_000);
      expect(hub.requests).toHaveLength(1);
    });

    it('while waiting to reconnect (a reconnect after stop never happens)', async () => {
      const hub = new FakeHub().then(() => jsonResponse(502, {}));
      const { clock, client, online } = setup(hub);
      client.start();
      await settle();
      expect(clock.pending).toBe(1);
      client.stop();
      expect(clock.pending).toBe(0);
      expect(online.count).toBe(0);
      await clock.advance(10 * 60_000);
      expect(hub.requests).toHaveLength(1);
    });

    it('while the token callback or the request is still pending (stop right after start)', async () => {
      let release!: (t: string) => void;
      const { hub, clock, client } = setup(undefined, { token: () => new Promise<string>((r) => (release = r)) });
      client.start();
      client.stop();
      release('late');
      await settle();
      expect(hub.requests).toHaveLength(0);

      const second = setup();
      second.client.start();
      await Promise.resolve();
      await Promise.resolve();
      second.client.stop();
      await settle();
      expect(second.hub.openConnections).toBe(0);
      expect(second.clock.pending).toBe(0);
      expect(clock.pending).toBe(0);
    });

    it('when stopped from inside a frame listener', async () => {
      let client!: StreamClient;
      const ctx = setup(undefined, { onEvent: (_, f) => f.type === 'activity' && client.stop() });
      client = ctx.client;
      client.start();
      await settle();
      ctx.hub.conn.send(connected('a-0') + activity('a-1', {}));
      await settle();
      expect(ctx.hub.openConnections).toBe(0);
      expect(ctx.clock.pending).toBe(0);
      expect(ctx.online.count).toBe(0);
    });
  });

  it('a stream that stays open resets the backoff; a quick drop keeps growing it', async () => {
    const delays: number[] = [];
    const { hub, clock, client } = setup(undefined, {
      random: () => 0.999,
      onStatus: (s) => s.state === 'waiting' && delays.push(s.retryInMs!),
    });
    client.start();
    await settle();
    hub.conn.end();
    await settle();
    await clock.advance(client.status.retryInMs!);
    hub.conn.end();
    await settle();
    await clock.advance(client.status.retryInMs!);
    hub.conn.send(connected('a-0', 60_000));
    await clock.advance(6_000);
    hub.conn.end();
    await settle();
    expect(delays).toEqual([999, 1998, 999]);
    client.stop();
  });
});
