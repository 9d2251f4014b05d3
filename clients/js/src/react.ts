/** React hook: connects the session's Tidings instance to the app's react-query `QueryClient`
 * while the component is mounted and returns the connection, the same in every tab. It does not
 * start or stop the stream: that follows sign-in and sign-out, which the app owns.
 *
 * The instance comes from the app's state or context (`null` while signed out), or from a
 * getter called on every render: when it changes, the cache connection and every `on()`
 * subscription move to the new one, with no remount. Everything happens in effects, which
 * never run during server rendering. */
import type { QueryClient } from '@tanstack/query-core';
import { useQueryClient } from '@tanstack/react-query';
import { useCallback, useEffect, useRef, useSyncExternalStore } from 'react';
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
  /** Defaults to the client from `QueryClientProvider`. */
  queryClient?: QueryClient;
}

export interface UseTidingsResult {
  /** The whole status (role, stream, …); the fields below are views of it. */
  status: TidingsStatus;
  isConnected: boolean;
  connectionState: ConnectionState;
  /** The hub's `client_id` of the open stream, `null` while not connected. */
  clientId: string | null;
  /** The last `connected` or `activity` event of the session. */
  lastEvent: LastEvent | null;
  /** The last connection failure (cleared once connected) or why the SDK stopped. */
  error: TidingsError | null;
  stopReason: StopReason | null;
  /** Listens to one type of event of the current instance (and of the next one, after a
   * change) until the returned function is called or the component unmounts. Call it from an
   * effect or an event handler, not while rendering. Stable across renders. */
  on<K extends TidingsEventType>(type: K, listener: (event: TidingsEventOf<K>) => void): () => void;
}

export type TidingsSource = Tidings | null | undefined | (() => Tidings | null | undefined);

interface Subscription {
  type: TidingsEventType;
  listener: (event: never) => void;
  off?: () => void;
}

export function useTidings(source: TidingsSource, options: UseTidingsOptions = {}): UseTidingsResult {
  const tidings = typeof source === 'function' ? source() : source;
  const { queryClient, ...adapterOptions } = options;
  const client = useQueryClient(queryClient);
  // Options are read when connecting; a new object on every render must not reconnect.
  const adapterOptionsRef = useRef(adapterOptions);
  adapterOptionsRef.current = adapterOptions;
  const subscriptions = useRef(new Set<Subscription>());
  const attached = useRef<Tidings | null>(null);

  useEffect(() => {
    if (!tidings) return undefined;
    const disconnect = connectQueryClient(tidings, client, adapterOptionsRef.current);
    return disconnect;
  }, [tidings, client]);
  useEffect(() => {
    if (!tidings) return undefined;
    attached.current = tidings;
    for (const s of subscriptions.current) s.off = tidings.on(s.type, s.listener as never);
    return () => {
      attached.current = null;
      for (const s of subscriptions.current) {
        s.off?.();
        s.off = undefined;
      }
    };
  }, [tidings]);
  useEffect(() => {
    const all = subscriptions.current;
    return () => all.clear();
  }, []);

  const subscribe = useCallback((onChange: () => void) => (tidings ? tidings.on('status', onChange) : () => {}), [tidings]);
  const snapshot = () => tidings?.status ?? IDLE_STATUS;
  const status = useSyncExternalStore(subscribe, snapshot, snapshot);

  const on = useCallback(<K extends TidingsEventType>(type: K, listener: (event: TidingsEventOf<K>) => void): (() => void) => {
    const subscription: Subscription = { type, listener: listener as (event: never) => void };
    subscriptions.current.add(subscription);
    if (attached.current) subscription.off = attached.current.on(type, listener);
    return () => {
      subscription.off?.();
      subscriptions.current.delete(subscription);
    };
  }, []);

  return {
    status,
    isConnected: status.connected,
    connectionState: connectionState(status),
    clientId: status.clientId ?? null,
    lastEvent: status.lastEvent ?? null,
    error: status.error ?? null,
    stopReason: status.stopReason ?? null,
    on,
  };
}
