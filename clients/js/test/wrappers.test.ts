import { readFileSync } from 'node:fs';
import { QueryClient, QueryObserver } from '@tanstack/query-core';
import { describe, expect, it } from 'vitest';
import { effectScope } from 'vue';
import { SDK_VERSION } from '../src/version.js';
import { Tidings } from '../src/tidings.js';
import { useTidings } from '../src/vue.js';
import { activity, connected, FakeClock, FakeHub, settle } from './helpers.js';
import { silentLogger } from '../src/env.js';

async function until(check: () => boolean): Promise<void> {
  const end = Date.now() + 2_000;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('Vue composable', () => {
  it('feeds the stream into the query client while its scope lives, and exposes the status', async () => {
    const hub = new FakeHub();
    const clock = new FakeClock();
    const tidings = new Tidings({
      url: 'http://hub.test/events/stream',
      sessionKey: 'vue',
      fetch: hub.fetch,
      clock,
      locks: null,
      onlineTarget: null,
      pageTarget: null,
      logger: silentLogger,
    });
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
    let calls = 0;
    const observer = new QueryObserver(client, { queryKey: ['app'], queryFn: async () => ++calls });
    const unsubscribeObserver = observer.subscribe(() => {});
    await until(() => calls === 1);

    const scope = effectScope();
    const result = scope.run(() => useTidings(tidings, { queryClient: client, clock }))!;
    tidings.start();
    await settle();
    expect(result.status.value.role).toBe('solo');
    hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
    await settle();
    await clock.advance(150);
    await until(() => calls === 2);

    scope.stop();
    hub.conn.send(activity('a-2', {}, [['app']]));
    await settle();
    await clock.advance(1_000);
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toBe(2);
    tidings.stop();
    expect(result.status.value.role).toBe('solo');
    unsubscribeObserver();
    client.clear();
  });
});

describe('package', () => {
  it('SDK_VERSION matches package.json (it names the cross-tab lock and channel)', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(SDK_VERSION).toBe(pkg.version);
  });

  it('the core entry imports no framework and no TanStack package', () => {
    const dir = new URL('../src/', import.meta.url);
    for (const file of ['index', 'tidings', 'stream', 'sse', 'protocol', 'keys', 'resolver', 'relay', 'backoff', 'env', 'version']) {
      const text = readFileSync(new URL(`${file}.ts`, dir), 'utf8');
      const imports = [...text.matchAll(/from '([^']+)'/g)].map((m) => m[1]);
      expect(imports.filter((i) => !i!.startsWith('./') && i !== 'eventsource-parser'), file).toEqual([]);
    }
  });
});
