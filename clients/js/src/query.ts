/** TanStack Query adapter: turns Tidings events into cache operations on a `QueryClient`.
 * Fresh first: the first invalidation after a quiet spell is applied at once (leading edge);
 * what follows within the window is gathered, de-duplicated (a key covered by a shorter one is
 * dropped) and applied in one `invalidateQueries` call when the events pause (at most
 * `maxWaitMs` after the first of them), so each active query refetches at most once per
 * window and a burst costs it two refetches. `remove` keys are removed at once; `resync`
 * invalidates everything. A query whose first fetch is in flight when its key is invalidated
 * would settle with data older than the event; it is invalidated again once that fetch
 * settles. */
import { partialMatchKey, type Query, type QueryClient } from '@tanstack/query-core';
import { consoleLogger, systemClock, Timer, type Clock, type Logger } from './env.js';
import { dedupePrefixes, type QueryKey } from './keys.js';
import type { Tidings, TidingsEvent } from './tidings.js';

/** After an invalidation is applied, the next ones wait until the events pause this long, and
 * are then applied together: long enough to gather a burst of publishes (a batch import, a
 * cascade delete) into one refetch, short enough that a second edit still shows promptly. The
 * first invalidation after a quiet spell does not wait at all. */
export const COALESCE_WINDOW_MS = 150;
/** A steady trickle never postpones a gathered refetch longer than this. */
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
  /** When invalidations were last applied. The window is measured on the clock, not by a
   * timer still being armed: on a busy main thread a timer fires late, and that must not turn
   * the next lone event into a gathered one. */
  #appliedAt = Number.NEGATIVE_INFINITY;
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

  /** Applies keys now when nothing was applied within the window (leading edge); otherwise
   * queues them for the next gathered invalidation. */
  invalidate(keys: readonly QueryKey[]): void {
    if (this.#disposed || keys.length === 0) return;
    const now = this.#clock.now();
    if (this.#pending.length === 0 && now - this.#appliedAt >= this.#windowMs) {
      this.#timer.cancel();
      this.#apply(matcher(dedupePrefixes(keys)));
      return;
    }
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

  /** Applies the queued invalidations now (a window then starts again). */
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
    this.#appliedAt = this.#clock.now();
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

interface SharedAdapter {
  adapter: QueryAdapter;
  unsubscribe: () => void;
  users: number;
}

/** One adapter per (instance, client) pair, however many components connect it: two adapters
 * on one client would refetch every query twice per event. */
const shared = new WeakMap<Tidings, WeakMap<QueryClient, SharedAdapter>>();

/** Feeds a Tidings instance into a QueryClient until the returned function is called.
 * Connecting the same pair again shares the first connection's adapter (and its options); it
 * ends when the last of them disconnects. */
export function connectQueryClient(tidings: Tidings, client: QueryClient, options?: QueryAdapterOptions): () => void {
  let byClient = shared.get(tidings);
  if (!byClient) shared.set(tidings, (byClient = new WeakMap()));
  let entry = byClient.get(client);
  if (!entry) {
    const adapter = new QueryAdapter(client, options);
    entry = { adapter, unsubscribe: tidings.subscribe((event) => adapter.handle(event)), users: 0 };
    byClient.set(client, entry);
  }
  const connection = entry;
  connection.users += 1;
  let connected = true;
  return () => {
    if (!connected) return;
    connected = false;
    connection.users -= 1;
    if (connection.users > 0) return;
    connection.unsubscribe();
    connection.adapter.dispose();
    if (byClient.get(client) === connection) byClient.delete(client);
  };
}
