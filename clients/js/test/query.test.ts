import { QueryClient, QueryObserver, type QueryKey as TanKey } from '@tanstack/query-core';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/env.js';
import type { QueryKey } from '../src/keys.js';
import { QueryAdapter } from '../src/query.js';
import type { TidingsEvent } from '../src/tidings.js';
import { FakeClock } from './helpers.js';

/** Waits (real time) until `check` holds; query-core schedules its notifications on timers. */
async function until(check: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 2));
  }
}
const quiet = () => new Promise((r) => setTimeout(r, 30));

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function setup() {
  const client = new QueryClient({ defaultOptions: { queries: { retry: false, staleTime: Infinity, gcTime: Infinity } } });
  client.mount();
  const clock = new FakeClock();
  const adapter = new QueryAdapter(client, { clock, logger: silentLogger });
  const calls = new Map<string, number>();
  let version = 0;
  /** An active query: an observer subscribed, as a mounted component would have. */
  async function active(key: TanKey) {
    const observer = new QueryObserver(client, {
      queryKey: key,
      queryFn: async () => {
        calls.set(JSON.stringify(key), (calls.get(JSON.stringify(key)) ?? 0) + 1);
        return `${JSON.stringify(key)}@${++version}`;
      },
    });
    cleanups.push(observer.subscribe(() => {}));
    await until(() => observer.getCurrentResult().status === 'success');
    return observer;
  }
  /** A cached query nobody is looking at. */
  async function inactive(key: TanKey) {
    await client.fetchQuery({
      queryKey: key,
      queryFn: async () => {
        calls.set(JSON.stringify(key), (calls.get(JSON.stringify(key)) ?? 0) + 1);
        return 'x';
      },
    });
  }
  const count = (key: TanKey) => calls.get(JSON.stringify(key)) ?? 0;
  const activity = (invalidate: QueryKey[], remove: QueryKey[] = []): TidingsEvent => ({
    type: 'activity',
    data: {},
    invalidate,
    remove,
    keysFrom: 'hub',
  });
  cleanups.push(() => {
    adapter.dispose();
    client.clear();
    client.unmount();
  });
  return { client, clock, adapter, active, inactive, count, activity };
}

describe('TanStack Query adapter', () => {
  it('fresh first: the first event refetches at once, a burst of 100 after it in one more refetch', async () => {
    const s = setup();
    const keys: TanKey[] = [['edge-application'], ['edge-application', 1], ['edge-application', 2, 'rules'], ['domain'], ['domain', 7], ['other']];
    for (const k of keys) await s.active(k);
    await s.inactive(['edge-application', 99]);
    for (let i = 0; i < 100; i++) {
      s.adapter.handle(s.activity(i % 3 === 0 ? [['domain', 7]] : [['edge-application'], ['edge-application', i]]));
      // The first event (domain 7) was applied without waiting for anything.
      if (i === 0) await until(() => s.count(['domain', 7]) === 2);
      await s.clock.advance(5);
    }
    expect(s.count(['edge-application'])).toBe(1);
    // The rest is applied together once the events pause for the window: the last came at
    // 495 ms, the clock is at 500.
    await s.clock.advance(144);
    await quiet();
    expect(s.count(['edge-application'])).toBe(1);
    await s.clock.advance(1);
    await until(() => s.count(['edge-application']) === 2);
    await quiet();
    expect(keys.map((k) => s.count(k))).toEqual([2, 2, 2, 1, 3, 1]);
    expect(s.count(['edge-application', 99])).toBe(1);
    expect(s.client.getQueryState(['edge-application', 99])?.isInvalidated).toBe(true);
    expect(s.client.getQueryState(['other'])?.isInvalidated).toBe(false);
  });

  it('a 500-event import costs each active query two refetches; spread over 2.5 s, four', async () => {
    for (const spacingMs of [0, 5]) {
      const s = setup();
      const keys: TanKey[] = [['edge-application'], ['edge-application', 3], ['domain']];
      for (const k of keys) await s.active(k);
      for (let i = 0; i < 500; i++) {
        s.adapter.handle(s.activity([['edge-application'], ['edge-application', i], ['domain', i % 7]]));
        if (spacingMs > 0) await s.clock.advance(spacingMs);
      }
      await s.clock.advance(5_000);
      await quiet();
      // Leading edge, then one gathered refetch per max wait (1 s) while the import lasts, and
      // the rest when it ends: 1 + 1 for an import in one go, 1 + 3 over 2.5 s.
      const refetches = keys.map((k) => s.count(k) - 1);
      expect(refetches).toEqual(spacingMs === 0 ? [2, 2, 0] : [4, 4, 0]);
      for (const c of cleanups.splice(0)) c();
    }
  });

  it('a steady trickle is applied at least once per max wait, and never twice within a window', async () => {
    const s = setup();
    await s.active(['app']);
    s.adapter.invalidate([['app']]);
    await until(() => s.count(['app']) === 2);
    for (let i = 0; i < 10; i++) {
      await s.clock.advance(100);
      s.adapter.invalidate([['app']]);
    }
    expect(s.count(['app'])).toBe(2);
    // Gathered since 100 ms, postponed by every new event, applied at the max wait.
    await s.clock.advance(100);
    await until(() => s.count(['app']) === 3);
    expect(s.clock.t).toBe(1_100);
    // Just applied: the next one waits for the window.
    s.adapter.invalidate([['app']]);
    await s.clock.advance(149);
    await quiet();
    expect(s.count(['app'])).toBe(3);
    await s.clock.advance(1);
    await until(() => s.count(['app']) === 4);
    // Quiet for a window: the next one is applied at once again.
    await s.clock.advance(150);
    s.adapter.invalidate([['app']]);
    await until(() => s.count(['app']) === 5);
  });

  it('a busy main thread (a late timer) does not delay the next lone event', async () => {
    const s = setup();
    await s.active(['app']);
    s.adapter.invalidate([['app']]);
    await until(() => s.count(['app']) === 2);
    // 200 ms pass without any timer running (the tab was busy): the window is over by the
    // clock, so the next event is applied at once.
    s.clock.t += 200;
    s.adapter.invalidate([['app']]);
    await until(() => s.count(['app']) === 3);
    // Within the window by the clock: gathered.
    s.clock.t += 100;
    s.adapter.invalidate([['app']]);
    await quiet();
    expect(s.count(['app'])).toBe(3);
    await s.clock.advance(150);
    await until(() => s.count(['app']) === 4);
  });

  it('numbers and strings are strict when matching keys', async () => {
    const s = setup();
    await s.active(['app', 42]);
    await s.active(['app', '42']);
    s.adapter.invalidate([['app', '42']]);
    await s.clock.advance(150);
    await until(() => s.count(['app', '42']) === 2);
    await quiet();
    expect(s.count(['app', 42])).toBe(1);
  });

  it('remove takes deleted details out of the cache without refetching them', async () => {
    const s = setup();
    await s.active(['app']);
    await s.inactive(['app', 9]);
    await s.inactive(['app', 9, 'rules']);
    await s.inactive(['app', 10]);
    s.adapter.handle(s.activity([['app']], [['app', 9]]));
    expect(s.client.getQueryCache().find({ queryKey: ['app', 9] })).toBeUndefined();
    expect(s.client.getQueryCache().find({ queryKey: ['app', 9, 'rules'] })).toBeUndefined();
    expect(s.client.getQueryCache().find({ queryKey: ['app', 10] })).toBeDefined();
    await s.clock.advance(150);
    await until(() => s.count(['app']) === 2);
    await quiet();
    expect(s.count(['app', 9])).toBe(1);
  });

  it('resync invalidates everything at once: active queries refetch, inactive ones go stale', async () => {
    const s = setup();
    await s.active(['a']);
    await s.active(['b', 1]);
    await s.inactive(['c']);
    s.adapter.invalidate([['b', 1]]); // applied at once
    s.adapter.invalidate([['a']]); // gathered
    await until(() => s.count(['b', 1]) === 2);
    expect(s.count(['a'])).toBe(1);
    s.adapter.handle({ type: 'resync', reason: 'history_trimmed' });
    await until(() => s.count(['a']) === 2 && s.count(['b', 1]) === 3);
    expect(s.client.getQueryState(['c'])?.isInvalidated).toBe(true);
    await s.clock.advance(1_000);
    await quiet();
    // What was gathered before the resync is not applied again after it.
    expect(s.count(['a'])).toBe(2);
    expect(s.clock.pending).toBe(0);
  });

  it('an event during a query’s first fetch refetches it after that fetch settles', async () => {
    const s = setup();
    let calls = 0;
    const answers: Array<(v: string) => void> = [];
    const observer = new QueryObserver(s.client, {
      queryKey: ['app', 1],
      queryFn: () => {
        calls++;
        return new Promise<string>((resolve) => answers.push(resolve));
      },
    });
    cleanups.push(observer.subscribe(() => {}));
    await until(() => calls === 1);
    s.adapter.invalidate([['app']]);
    await s.clock.advance(150);
    await quiet();
    expect(calls).toBe(1);
    answers[0]!('before the event');
    await until(() => calls === 2);
    answers[1]!('after the event');
    await until(() => observer.getCurrentResult().data === 'after the event');
    await quiet();
    expect(calls).toBe(2);
  });

  it('an inactive query fetching when invalidated ends up invalidated', async () => {
    const s = setup();
    let resolve!: (v: string) => void;
    const prefetch = s.client.prefetchQuery({ queryKey: ['app', 5], queryFn: () => new Promise<string>((r) => (resolve = r)) });
    await quiet();
    s.adapter.invalidate([['app', 5]]);
    await s.clock.advance(150);
    resolve('old');
    await prefetch;
    await until(() => s.client.getQueryState(['app', 5])?.isInvalidated === true);
  });

  it('dispose leaves no timer and no cache subscription', async () => {
    const s = setup();
    await s.active(['app']);
    s.adapter.invalidate([['app']]);
    await until(() => s.count(['app']) === 2);
    s.adapter.invalidate([['app']]);
    expect(s.clock.pending).toBe(1);
    s.adapter.dispose();
    expect(s.clock.pending).toBe(0);
    await s.clock.advance(1_000);
    await quiet();
    expect(s.count(['app'])).toBe(2);
  });
});
