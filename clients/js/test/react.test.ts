// @vitest-environment happy-dom
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { act, createElement, type ReactNode } from 'react';
import { createRoot } from 'react-dom/client';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/env.js';
import { useTidings } from '../src/react.js';
import { Tidings, type TidingsStatus } from '../src/tidings.js';
import { activity, connected, FakeClock, FakeHub, settle } from './helpers.js';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

describe('React hook', () => {
  it('feeds the stream into the provided QueryClient while mounted and returns the status', async () => {
    const hub = new FakeHub();
    const clock = new FakeClock();
    const tidings = new Tidings({
      url: 'http://hub.test/events/stream',
      sessionKey: 'react',
      fetch: hub.fetch,
      clock,
      locks: null,
      onlineTarget: null,
      pageTarget: null,
      logger: silentLogger,
    });
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
    let calls = 0;
    const roles: TidingsStatus['role'][] = [];
    function Live(): ReactNode {
      const status = useTidings(tidings, { clock });
      roles.push(status.role);
      const query = useQuery({ queryKey: ['app'], queryFn: async () => ++calls });
      return createElement('span', null, `${status.role}:${query.data ?? '-'}`);
    }
    const container = document.createElement('div');
    const root = createRoot(container);
    await act(async () => {
      root.render(createElement(QueryClientProvider, { client }, createElement(Live)));
    });
    await act(async () => {
      tidings.start();
      await settle();
    });
    expect(container.textContent).toBe('solo:1');
    await act(async () => {
      hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
      await settle();
      await clock.advance(150);
      await new Promise((r) => setTimeout(r, 20));
    });
    expect(calls).toBe(2);
    expect(container.textContent).toBe('solo:2');

    await act(async () => root.unmount());
    hub.conn.send(activity('a-2', {}, [['app']]));
    await settle();
    await clock.advance(1_000);
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toBe(2);
    tidings.stop();
    client.clear();
    expect(roles[0]).toBe('idle');
  });
});
