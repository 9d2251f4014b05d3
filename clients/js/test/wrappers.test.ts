// @vitest-environment happy-dom
import { QueryClient, QueryObserver } from '@tanstack/query-core';
import { describe, expect, it } from 'vitest';
import { defineComponent, effectScope, h, createApp, nextTick, ref, type Ref } from 'vue';
import { connectQueryClient } from '../src/query.js';
import { Tidings } from '../src/tidings.js';
import { useTidings } from '../src/vue.js';
import { activity, connected, frame, settle, solo } from './helpers.js';

async function until(check: () => boolean): Promise<void> {
  const end = Date.now() + 2_000;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function activeQuery(client: QueryClient, key: unknown[]) {
  let calls = 0;
  const observer = new QueryObserver(client, { queryKey: key, queryFn: async () => ++calls });
  const unsubscribe = observer.subscribe(() => {});
  await until(() => calls === 1);
  return { calls: () => calls, unsubscribe };
}

describe('Vue composable', () => {
  it('feeds the stream into the query client while its scope lives, and exposes the connection', async () => {
    const { tidings, hub, clock } = solo('vue');
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
    const app = await activeQuery(client, ['app']);

    const scope = effectScope();
    const result = scope.run(() => useTidings(tidings, { queryClient: client, clock }))!;
    expect(result.connectionState.value).toBe('idle');
    tidings.start();
    await settle();
    expect(result.status.value.role).toBe('solo');
    expect(result.connectionState.value).toBe('connected');
    hub.conn.send(connected('a-0') + activity('a-1', { n: 1 }, [['app']]));
    await settle();
    // Applied at once: no window to wait for.
    await until(() => app.calls() === 2);
    expect(result.isConnected.value).toBe(true);
    expect(result.clientId.value).toBe('c1');
    expect(result.lastEvent.value).toMatchObject({ type: 'activity', id: 'a-1', data: { n: 1 } });
    expect(result.error.value).toBeNull();

    hub.conn.end();
    await settle();
    expect(result.connectionState.value).toBe('reconnecting');
    expect(result.isConnected.value).toBe(false);
    expect(result.clientId.value).toBeNull();
    expect(result.error.value).toEqual({ message: 'stream ended' });
    await clock.advance(result.status.value.stream!.retryInMs!);
    hub.conn.send(connected('a-1'));
    await settle();
    expect(result.connectionState.value).toBe('connected');
    expect(result.error.value).toBeNull();
    expect(result.lastEvent.value).toMatchObject({ type: 'connected', clientId: 'c1' });

    scope.stop();
    hub.conn.send(activity('a-2', {}, [['app']]));
    await settle();
    await clock.advance(1_000);
    await new Promise((r) => setTimeout(r, 20));
    expect(app.calls()).toBe(2);
    expect(result.lastEvent.value).toMatchObject({ type: 'connected' });
    tidings.stop();
    app.unsubscribe();
    client.clear();
  });

  it('follows a ref to the instance: signing in as someone else needs no remount', async () => {
    const alice = solo('alice');
    const bob = solo('bob');
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
    const app = await activeQuery(client, ['app']);
    // A deep ref, as plain JavaScript may pass it (TypeScript asks for a shallowRef): the
    // composable unwraps the reactive proxy, whose private fields would throw.
    const current = ref(null) as unknown as Ref<Tidings | null>;
    const heard: string[] = [];
    let setups = 0;
    const Probe = defineComponent({
      setup() {
        setups++;
        const t = useTidings(current, { queryClient: client });
        t.on('activity', (e) => heard.push(e.id ?? '?'));
        return () => h('span', { id: 'probe' }, `${t.connectionState.value}:${t.clientId.value ?? '-'}`);
      },
    });
    const root = document.createElement('div');
    const vm = createApp(Probe);
    vm.mount(root);
    expect(root.textContent).toBe('idle:-');

    current.value = alice.tidings;
    alice.tidings.start();
    await settle();
    alice.hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
    await settle();
    await nextTick();
    expect(root.textContent).toBe('connected:c1');
    await until(() => app.calls() === 2);

    // Alice signs out, Bob signs in: the same component now follows Bob's instance.
    alice.tidings.stop();
    current.value = bob.tidings;
    bob.tidings.start();
    await settle();
    bob.hub.conn.send(frame({ type: 'connected', client_id: 'c-bob', heartbeat_ms: 1_000 }, 'b-0') + activity('b-1', {}, [['app']]));
    await settle();
    await nextTick();
    expect(root.textContent).toBe('connected:c-bob');
    await until(() => app.calls() === 3);
    expect(heard).toEqual(['a-1', 'b-1']);
    expect(setups).toBe(1);

    current.value = null;
    await nextTick();
    expect(root.textContent).toBe('idle:-');
    bob.hub.conn.send(activity('b-2', {}, [['app']]));
    await settle();
    await new Promise((r) => setTimeout(r, 200));
    expect(app.calls()).toBe(3);
    expect(heard).toEqual(['a-1', 'b-1']);
    vm.unmount();
    bob.tidings.stop();
    app.unsubscribe();
  });

  it('on() subscriptions end with the component', async () => {
    const { tidings, hub } = solo('vue-on');
    const client = new QueryClient();
    const heard: string[] = [];
    const Probe = defineComponent({
      setup() {
        const t = useTidings(() => tidings, { queryClient: client });
        t.on('activity', (e) => heard.push(e.id ?? '?'));
        return () => h('i');
      },
    });
    const vm = createApp(Probe);
    vm.mount(document.createElement('div'));
    tidings.start();
    await settle();
    hub.conn.send(connected('a-0') + activity('a-1', {}));
    await settle();
    vm.unmount();
    hub.conn.send(activity('a-2', {}));
    await settle();
    expect(heard).toEqual(['a-1']);
    tidings.stop();
  });
});

describe('TanStack Query connection', () => {
  it('one pair connected twice shares one adapter: each event refetches once', async () => {
    const { tidings, hub } = solo('shared');
    const client = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
    const app = await activeQuery(client, ['app']);
    const first = connectQueryClient(tidings, client);
    const second = connectQueryClient(tidings, client);
    tidings.start();
    await settle();
    hub.conn.send(connected('a-0') + activity('a-1', {}, [['app']]));
    await until(() => app.calls() === 2);
    await new Promise((r) => setTimeout(r, 300));
    expect(app.calls()).toBe(2);
    first();
    first();
    // Still connected through the second.
    hub.conn.send(activity('a-2', {}, [['app']]));
    await until(() => app.calls() === 3);
    second();
    await new Promise((r) => setTimeout(r, 200));
    hub.conn.send(activity('a-3', {}, [['app']]));
    await new Promise((r) => setTimeout(r, 200));
    expect(app.calls()).toBe(3);
    tidings.stop();
    app.unsubscribe();
  });
});

