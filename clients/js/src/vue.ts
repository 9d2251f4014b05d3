/** Vue composable: connects a Tidings instance to the app's vue-query `QueryClient` for the
 * lifetime of the calling scope and exposes the stream status as refs. It does not start or
 * stop the stream: that follows sign-in and sign-out, which the app owns. */
import type { QueryClient } from '@tanstack/query-core';
import { useQueryClient } from '@tanstack/vue-query';
import { getCurrentScope, onScopeDispose, shallowRef, type ShallowRef } from 'vue';
import { connectQueryClient, type QueryAdapterOptions } from './query.js';
import type { StopReason } from './stream.js';
import type { Tidings, TidingsStatus } from './tidings.js';

export interface UseTidingsOptions extends QueryAdapterOptions {
  /** Defaults to the client provided by `VueQueryPlugin`. */
  queryClient?: QueryClient;
}

export interface UseTidingsResult {
  status: Readonly<ShallowRef<TidingsStatus>>;
  /** Why the stream stopped for good (auth error, superseded, revoked, or `stop()`). */
  stopReason: Readonly<ShallowRef<StopReason | undefined>>;
}

export function useTidings(tidings: Tidings, options: UseTidingsOptions = {}): UseTidingsResult {
  const { queryClient, ...adapterOptions } = options;
  const client = queryClient ?? (useQueryClient() as unknown as QueryClient);
  const status = shallowRef(tidings.status);
  const stopReason = shallowRef<StopReason | undefined>(undefined);
  const disconnect = connectQueryClient(tidings, client, adapterOptions);
  const unsubscribe = tidings.subscribe((event) => {
    if (event.type === 'status') status.value = event.status;
    else if (event.type === 'stopped') stopReason.value = event.reason;
  });
  if (getCurrentScope()) {
    onScopeDispose(() => {
      unsubscribe();
      disconnect();
    });
  }
  return { status, stopReason };
}
