/** React hook: connects a Tidings instance to the app's react-query `QueryClient` while the
 * component is mounted and returns the stream status. It does not start or stop the stream:
 * that follows sign-in and sign-out, which the app owns. */
import type { QueryClient } from '@tanstack/query-core';
import { useQueryClient } from '@tanstack/react-query';
import { useCallback, useEffect, useRef, useSyncExternalStore } from 'react';
import { connectQueryClient, type QueryAdapterOptions } from './query.js';
import type { Tidings, TidingsStatus } from './tidings.js';

export interface UseTidingsOptions extends QueryAdapterOptions {
  /** Defaults to the client from `QueryClientProvider`. */
  queryClient?: QueryClient;
}

export function useTidings(tidings: Tidings, options: UseTidingsOptions = {}): TidingsStatus {
  const { queryClient, ...adapterOptions } = options;
  const client = useQueryClient(queryClient);
  // Options are read when connecting; a new object on every render must not reconnect.
  const adapterOptionsRef = useRef(adapterOptions);
  adapterOptionsRef.current = adapterOptions;
  useEffect(() => connectQueryClient(tidings, client, adapterOptionsRef.current), [tidings, client]);
  const subscribe = useCallback(
    (onChange: () => void) => tidings.subscribe((event) => event.type === 'status' && onChange()),
    [tidings],
  );
  return useSyncExternalStore(subscribe, () => tidings.status, () => tidings.status);
}
