/** Vue composable: connects the session's Tidings instance to the app's vue-query
 * `QueryClient` and exposes the connection as refs, the same in every tab. It does not start or
 * stop the stream: that follows sign-in and sign-out, which the app owns.
 *
 * The instance may be a ref or a getter (`null` while signed out): when it changes, the cache,
 * the refs and every `on()` subscription move to the new one, with no remount. Nothing is
 * connected or subscribed until the component is mounted, so server rendering leaves nothing
 * behind; outside a component (a bare effect scope) it connects at once, except on a server. */
import type { QueryClient } from '@tanstack/query-core';
import { useQueryClient } from '@tanstack/vue-query';
import {
  computed,
  getCurrentInstance,
  getCurrentScope,
  onMounted,
  onScopeDispose,
  shallowRef,
  toRaw,
  toValue,
  watch,
  type ComputedRef,
  type MaybeRefOrGetter,
  type ShallowRef,
} from 'vue';
import { isServer } from './env.js';
import { connectQueryClient, type QueryAdapterOptions } from './query.js';
import type { StopReason } from './stream.js';
import {
  connectionState,
  IDLE_STATUS,
  type ConnectionState,
  type LastEvent,
  type Tidings,
  type TidingsError,
  type TidingsEventOf,
  type TidingsEventType,
  type TidingsStatus,
} from './tidings.js';

export interface UseTidingsOptions extends QueryAdapterOptions {
  /** Defaults to the client provided by `VueQueryPlugin`. */
  queryClient?: QueryClient;
}

export interface UseTidingsResult {
  /** The whole status (role, stream, …); the fields below are views of it. */
  status: Readonly<ShallowRef<TidingsStatus>>;
  isConnected: ComputedRef<boolean>;
  connectionState: ComputedRef<ConnectionState>;
  /** The hub's `client_id` of the open stream, `null` while not connected. */
  clientId: ComputedRef<string | null>;
  /** The last `connected` or `activity` event of the session. */
  lastEvent: ComputedRef<LastEvent | null>;
  /** The last connection failure (cleared once connected) or why the SDK stopped. */
  error: ComputedRef<TidingsError | null>;
  /** Why the stream stopped for good (auth error, superseded, revoked, or `stop()`). */
  stopReason: ComputedRef<StopReason | null>;
  /** Listens to one type of event of the current instance (and of the next one, after a
   * change) until the returned function is called or the component ends. */
  on<K extends TidingsEventType>(type: K, listener: (event: TidingsEventOf<K>) => void): () => void;
}

interface Subscription {
  type: TidingsEventType;
  listener: (event: never) => void;
  off?: () => void;
}

export function useTidings(source: MaybeRefOrGetter<Tidings | null | undefined>, options: UseTidingsOptions = {}): UseTidingsResult {
  const { queryClient, ...adapterOptions } = options;
  const client = queryClient ?? (useQueryClient() as unknown as QueryClient);
  // toRaw: a deep `ref(instance)` hands out a reactive proxy, which private fields refuse.
  const read = (): Tidings | null | undefined => {
    const value = toValue(source);
    return value ? toRaw(value) : value;
  };
  const status = shallowRef<TidingsStatus>(read()?.status ?? IDLE_STATUS);
  const subscriptions = new Set<Subscription>();
  let current: Tidings | null | undefined;
  let detach: (() => void) | undefined;
  /** Set once connecting is allowed (mounted, or no component), cleared on dispose. */
  let active = false;

  const attach = (tidings: Tidings | null | undefined): void => {
    detach?.();
    detach = undefined;
    current = tidings;
    status.value = tidings?.status ?? IDLE_STATUS;
    if (!tidings || !active) return;
    const disconnect = connectQueryClient(tidings, client, adapterOptions);
    const unsubscribe = tidings.on('status', (event) => (status.value = event.status));
    for (const s of subscriptions) s.off = tidings.on(s.type, s.listener as never);
    detach = () => {
      unsubscribe();
      disconnect();
      for (const s of subscriptions) {
        s.off?.();
        s.off = undefined;
      }
    };
  };
  const activate = (): void => {
    active = true;
    attach(read());
  };

  // Not immediate: during server rendering Vue never runs it.
  watch(
    read,
    (tidings) => {
      if (active) attach(tidings);
    },
  );
  if (getCurrentInstance()) onMounted(activate);
  else if (!isServer()) activate();
  if (getCurrentScope()) {
    onScopeDispose(() => {
      active = false;
      detach?.();
      detach = undefined;
      subscriptions.clear();
    });
  }

  const on = <K extends TidingsEventType>(type: K, listener: (event: TidingsEventOf<K>) => void): (() => void) => {
    const subscription: Subscription = { type, listener: listener as (event: never) => void };
    subscriptions.add(subscription);
    if (current && active) subscription.off = current.on(type, listener);
    return () => {
      subscription.off?.();
      subscriptions.delete(subscription);
    };
  };

  return {
    status,
    isConnected: computed(() => status.value.connected),
    connectionState: computed(() => connectionState(status.value)),
    clientId: computed(() => status.value.clientId ?? null),
    lastEvent: computed(() => status.value.lastEvent ?? null),
    error: computed(() => status.value.error ?? null),
    stopReason: computed(() => status.value.stopReason ?? null),
    on,
  };
}
