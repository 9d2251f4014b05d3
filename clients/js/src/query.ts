/** TanStack Query adapter: turns Tidings events into cache operations on a `QueryClient`.
 * Invalidations are coalesced over a short window and de-duplicated (a key covered by a shorter
 * one is dropped), then applied in one `invalidateQueries` call, so a burst of events refetches
 * each active query at most once. `remove` keys are removed at once; `resync` invalidates
 * everything. A query whose first fetch is in flight when its key is invalidated would settle
 * with data older than the event; it is invalidated again once that fetch settles. */
import { partialMatchKey, type Query, type QueryClient } from '@tanstack/query-core';
import { consoleLogger, systemClock, Timer, type Clock, type Logger } from './env.js';
import { dedupePrefixes, type QueryKey } from './keys.js';
import type { Tidings, TidingsEvent } from './tidings.js';

/** Invalidations arriving within this window of each other are applied together. Long enough
 * to gather a burst of publishes (a batch import, a cascade delete), short enough to feel live. */
export const COALESCE_WINDOW_MS = 150;
/** A steady trickle never postpones a refetch longer than this. */
export const COALESCE_MAX_WAIT_MS = 1_000;

export interface QueryAdapterOptions {
  windowMs?: number;
  maxWaitMs?: number;
  clock?: Clock;
  logger?: Logger;
}

type QueryPredicate = (query: Query) => boolean;

export class QueryAdapter {
  readonly #client: QueryClient;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #windowMs: number;
  readonly #maxWaitMs: number;
  readonly #timer: Timer;
  #pending: QueryKey[] = [];
  #firstPendingAt = 0;
  /** Query hashes whose in-flight fetch started before an invalidation that matched them. */
  readonly #stale = new Set<string>();
  /** Query cache subscription, held only while `#stale` is not empty. */
  #unsubscribeCache: (() => void) | undefined;
  #disposed = false;

  constructor(client: QueryClient, options: QueryAdapterOptions = {}) {
    this.#client = client;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger ?? consoleLogger;
    this.#windowMs = options.windowMs ?? COALESCE_WINDOW_MS;
    this.#maxWaitMs = options.maxWaitMs ?? COALESCE_MAX_WAIT_MS;
    this.#timer = new Timer(this.#clock, () => this.flush());
  }

  /** Applies one Tidings event. */
  handle(event: TidingsEvent): void {
    if (event.type === 'activity') {
      this.remove(event.remove);
      this.invalidate(event.invalidate);
    } else if (event.type === 'resync') {
      this.resync();
    }
  }

  /** Queues keys for the next coalesced invalidation. */
  invalidate(keys: readonly QueryKey[]): void {
    if (this.#disposed || keys.length === 0) return;
    const now = this.#clock.now();
    if (this.#pending.length === 0) this.#firstPendingAt = now;
    this.#pending.push(...keys);
    const deadline = this.#firstPendingAt + this.#maxWaitMs;
    this.#timer.arm(Math.max(0, Math.min(this.#windowMs, deadline - now)));
  }

  /** Removes matching queries from the cache now (deleted resources: a refetch would 404). */
  remove(keys: readonly QueryKey[]): void {
    if (this.#disposed || keys.length === 0) return;
    const predicate = matcher(keys);
    this.#client.removeQueries({ predicate });
  }

  /** The hub could not prove continuity: everything cached may be stale. */
  resync(): void {
    if (this.#disposed) return;
    this.#pending = [];
    this.#timer.cancel();
    this.#apply(() => true);
  }

  /** Applies the queued invalidations now. */
  flush(): void {
    this.#timer.cancel();
    if (this.#disposed || this.#pending.length === 0) return;
    const keys = dedupePrefixes(this.#pending);
    this.#pending = [];
    this.#apply(matcher(keys));
  }

  dispose(): void {
    this.#disposed = true;
    this.#timer.cancel();
    this.#pending = [];
    this.#stale.clear();
    this.#unsubscribeCache?.();
    this.#unsubscribeCache = undefined;
  }

  #apply(predicate: QueryPredicate): void {
    for (const query of this.#client.getQueryCache().findAll({ predicate })) {
      // query-core joins a refetch to an in-flight fetch when the query has no data yet, and
      // an inactive query is only marked invalid, a mark that fetch's success then clears.
      // Either way the result predates the event: refetch once the fetch settles.
      if (query.state.fetchStatus !== 'idle' && (query.state.data === undefined || !query.isActive())) {
        this.#markStale(query);
      }
    }
    this.#client.invalidateQueries({ predicate, refetchType: 'active' }).catch((error: unknown) => {
      this.#log.debug('refetch after invalidation failed', error);
    });
  }

  #markStale(query: Query): void {
    this.#stale.add(query.queryHash);
    this.#unsubscribeCache ??= this.#client.getQueryCache().subscribe((event) => {
      const hash = event.query.queryHash;
      if (!this.#stale.has(hash)) return;
      if (event.type === 'removed') {
        this.#forget(hash);
      } else if (event.type === 'updated' && event.query.state.fetchStatus === 'idle') {
        this.#forget(hash);
        this.#client
          .invalidateQueries({ queryKey: event.query.queryKey, exact: true, refetchType: 'active' })
          .catch((error: unknown) => this.#log.debug('refetch after invalidation failed', error));
      }
    });
  }

  #forget(hash: string): void {
    this.#stale.delete(hash);
    if (this.#stale.size === 0) {
      this.#unsubscribeCache?.();
      this.#unsubscribeCache = undefined;
    }
  }
}

function matcher(keys: readonly QueryKey[]): QueryPredicate {
  return (query) => keys.some((key) => partialMatchKey(query.queryKey, key as unknown[]));
}

/** Feeds a Tidings instance into a QueryClient until the returned function is called. */
export function connectQueryClient(tidings: Tidings, client: QueryClient, options?: QueryAdapterOptions): () => void {
  const adapter = new QueryAdapter(client, options);
  const unsubscribe = tidings.subscribe((event) => adapter.handle(event));
  return () => {
    unsubscribe();
    adapter.dispose();
  };
}
