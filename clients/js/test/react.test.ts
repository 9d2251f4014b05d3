// @vitest-environment happy-dom
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { act, createElement, useEffect, useState, type ReactNode } from 'react';
import { createRoot } from 'react-dom/client';
import { describe, expect, it } from 'vitest';
import { useTidings } from '../src/react.js';
import { Tidings, type Role } from '../src/tidings.js';
import { activity, connected, frame, settle, solo } from './helpers.js';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

const pause = (ms = 20) => new Promise((r) => setTimeout(r, ms));

describe('React hook', () => {
  it('feeds the stream into the provided QueryClient while mounted and returns the connection', async () => {
    const { tidings, hub, clock } = solo('react');
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
    let calls = 0;
    const roles: Role[] = [];
    const heard: string[] = [];
    function Live(): ReactNode {
      const t = useTidings(tidings, { clock });
      roles.push(t.status.role);
      const { on } = t;
      useEffect(() => on('activity', (e) => heard.push(e.id ?? '?')), [on]);
      const query = useQuery({ queryKey: ['app'], queryFn: async () => ++calls });
      return createElement('span', null, `${t.connectionState}:${t.clientId ?? '-'}:${t.lastEvent?.type ?? '-'}:${query.data ?? '-'}`);
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
    expect(container.textContent).toBe('connected:-:-:1');
    await act(async () => {
      hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
      await settle();
      await pause();
    });
    // Applied at once, without advancing the clock.
    expect(calls).toBe(2);
    expect(container.textContent).toBe('connected:c1:activity:2');
    expect(heard).toEqual(['a-1']);

    await act(async () => root.unmount());
    hub.conn.send(activity('a-2', {}, [['app']]));
    await settle();
    await clock.advance(1_000);
    await pause();
    expect(calls).toBe(2);
    expect(heard).toEqual(['a-1']);
    tidings.stop();
    client.clear();
    expect(roles[0]).toBe('idle');
  });

  it('follows the instance in state: signing in as someone else needs no remount', async () => {
    const alice = solo('alice');
    const bob = solo('bob');
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
    let calls = 0;
    let mounts = 0;
    const heard: string[] = [];
    let setCurrent!: (t: Tidings | null) => void;
    function Live(): ReactNode {
      const [current, set] = useState<Tidings | null>(null);
      setCurrent = set;
      useEffect(() => {
        mounts++;
      }, []);
      const t = useTidings(() => current);
      const { on } = t;
      useEffect(() => on('activity', (e) => heard.push(e.id ?? '?')), [on]);
      useQuery({ queryKey: ['app'], queryFn: async () => ++calls });
      return createElement('span', null, `${t.connectionState}:${t.clientId ?? '-'}`);
    }
    const container = document.createElement('div');
    const root = createRoot(container);
    await act(async () => root.render(createElement(QueryClientProvider, { client }, createElement(Live))));
    expect(container.textContent).toBe('idle:-');
    await act(async () => {
      setCurrent(alice.tidings);
      alice.tidings.start();
      await settle();
      alice.hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
      await settle();
      await pause();
    });
    expect(container.textContent).toBe('connected:c1');
    expect(calls).toBe(2);
    await act(async () => {
      alice.tidings.stop();
      setCurrent(bob.tidings);
      bob.tidings.start();
      await settle();
      bob.hub.conn.send(frame({ type: 'connected', client_id: 'c-bob', heartbeat_ms: 1_000 }, 'b-0') + activity('b-1', {}, [['app']]));
      await settle();
      await pause();
    });
    expect(container.textContent).toBe('connected:c-bob');
    expect(calls).toBe(3);
    expect(heard).toEqual(['a-1', 'b-1']);
    await act(async () => setCurrent(null));
    expect(container.textContent).toBe('idle:-');
    bob.hub.conn.send(activity('b-2', {}, [['app']]));
    await settle();
    await pause(200);
    expect(calls).toBe(3);
    expect(heard).toEqual(['a-1', 'b-1']);
    expect(mounts).toBe(1);
    await act(async () => root.unmount());
    bob.tidings.stop();
    client.clear();
  });
});
