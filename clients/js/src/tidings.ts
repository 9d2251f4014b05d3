/** The SDK's entry point: one Tidings instance per signed-in session in a tab. With Web Locks
 * and BroadcastChannel available, the tabs of a session elect one leader that runs the stream
 * and relays every frame to the others; without them, each tab runs its own stream. Either
 * way, subscribers see the same events: activities (de-duplicated by id, with keys resolved
 * locally when the hub sent none), resyncs, and why the stream stopped. */
import { consoleLogger, systemClock, Timer, type Clock, type EventTargetLike, type Logger } from './env.js';
import { plainKeys, type QueryKey } from './keys.js';
import { decodeFrame, type Activity, type Frame } from './protocol.js';
import {
  readRelayMessage,
  RecentIds,
  relayNames,
  type ChannelFactory,
  type ChannelLike,
  type GroupStopReason,
  type LockManagerLike,
  type RelayMessage,
} from './relay.js';
import { genericResolver, type Resolver } from './resolver.js';
import {
  HEARTBEAT_MS_DEFAULT,
  StreamClient,
  WATCHDOG_HEARTBEATS,
  type StopReason,
  type StreamClientOptions,
  type StreamStatus,
} from './stream.js';

/** Activity ids remembered for de-duplication. Duplicates come from a relay overlapping a
 * hand-over, so they are recent: a few hundred ids cover any realistic overlap. */
export const DEDUPE_IDS_MAX = 512;

export type Role = 'idle' | 'solo' | 'leader' | 'follower' | 'suspended' | 'stopped';

export interface TidingsStatus {
  role: Role;
  /** The stream's status in the tab that runs it (solo or leader). */
  stream?: StreamStatus;
}

export type TidingsEvent =
  | {
      type: 'activity';
      id?: string;
      data: Activity;
      invalidate: QueryKey[];
      remove: QueryKey[];
      /** Where the keys came from: the hub, the local resolver, or nobody. */
      keysFrom: 'hub' | 'local' | 'none';
    }
  | { type: 'resync'; reason: string }
  | { type: 'connected'; resumed?: boolean; heartbeatMs?: number }
  | { type: 'closed'; reason: string; retryMs?: number }
  | { type: 'auth-error'; status: number; body?: unknown }
  | { type: 'stopped'; reason: StopReason }
  | { type: 'status'; status: TidingsStatus };

export type TidingsListener = (event: TidingsEvent) => void;

export interface TidingsOptions
  extends Pick<StreamClientOptions, 'url' | 'token' | 'authScheme' | 'credentials' | 'lastEventId' | 'backoff' | 'fetch' | 'random' | 'onlineTarget'> {
  /** The session (or user) the stream belongs to. Tabs with the same key share one stream. */
  sessionKey: string;
  /** Resolves keys for activities that arrive without any; `null` turns local resolution off. */
  resolver?: Resolver | null;
  /** Share one stream across tabs (default true); needs Web Locks and BroadcastChannel. */
  crossTab?: boolean;
  /** Defaults to `navigator.locks`; `null` forces one stream per tab. */
  locks?: LockManagerLike | null;
  /** Defaults to `new BroadcastChannel(name)`. */
  channel?: ChannelFactory | null;
  /** Where `pagehide`/`pageshow` come from; defaults to `window`. */
  pageTarget?: EventTargetLike | null;
  /** Whether this tab is visible; a visible follower may replace a frozen leader. */
  isVisible?: () => boolean;
  clock?: Clock;
  logger?: Logger;
}

export class Tidings {
  readonly #opts: TidingsOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #resolver: Resolver | null;
  readonly #locks: LockManagerLike | null;
  readonly #channelFactory: ChannelFactory | null;
  readonly #pageTarget: EventTargetLike | null;
  readonly #isVisible: () => boolean;
  readonly #names: { lock: string; channel: string };
  readonly #tabId: string;
  readonly #listeners = new Set<TidingsListener>();
  readonly #seen = new RecentIds(DEDUPE_IDS_MAX);
  /** Leader only: tells followers it is alive while its stream is down or quiet. */
  readonly #beatTimer: Timer;
  /** Follower only: fires when the leader has been silent for a heartbeat timeout. */
  readonly #leaderSilence: Timer;

  #started = false;
  #role: Role = 'idle';
  #stream: StreamClient | undefined;
  #channel: ChannelLike | undefined;
  /** Cancels this tab's queued lock request; replaced by every new request. */
  #lockRequest: AbortController | undefined;
  /** Resolving it releases the held lock; set only while this tab is the leader. */
  #releaseLock: (() => void) | undefined;
  /** The latest stream position this tab knows, from its own stream or from relays. */
  #lastId: string | undefined;
  #heartbeatMs = HEARTBEAT_MS_DEFAULT;
  #status: TidingsStatus = { role: 'idle' };
  /** Set when another tab announced itself leader after this one: a `superseded` close is
   * then the hub acknowledging the hand-over, not a reason to stop every tab. */
  #replaced = false;

  constructor(options: TidingsOptions) {
    this.#opts = options;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger ?? consoleLogger;
    this.#resolver = options.resolver === undefined ? genericResolver : options.resolver;
    this.#lastId = options.lastEventId;
    const crossTab = options.crossTab ?? true;
    const nav = typeof navigator !== 'undefined' ? (navigator as { locks?: LockManagerLike }) : undefined;
    const locks = options.locks !== undefined ? options.locks : (nav?.locks ?? null);
    const channel =
      options.channel !== undefined
        ? options.channel
        : typeof BroadcastChannel !== 'undefined'
          ? (name: string) => new BroadcastChannel(name) as ChannelLike
          : null;
    // Both or neither: a leader that cannot relay would leave its followers deaf.
    this.#locks = crossTab && locks && channel ? locks : null;
    this.#channelFactory = crossTab && locks && channel ? channel : null;
    this.#pageTarget = options.pageTarget !== undefined ? options.pageTarget : typeof window !== 'undefined' ? window : null;
    this.#isVisible = options.isVisible ?? (() => typeof document === 'undefined' || document.visibilityState === 'visible');
    this.#names = relayNames(options.sessionKey);
    this.#tabId = Math.random().toString(36).slice(2) + this.#clock.now().toString(36);
    this.#beatTimer = new Timer(this.#clock, () => this.#beat());
    this.#leaderSilence = new Timer(this.#clock, () => this.#onLeaderSilent());
  }

  /** The current status; the same object until something changes (a stable snapshot for
   * `useSyncExternalStore` and friends). */
  get status(): TidingsStatus {
    return this.#status;
  }

  /** The latest stream position this tab knows. */
  get lastEventId(): string | undefined {
    return this.#stream?.lastEventId ?? this.#lastId;
  }

  subscribe(listener: TidingsListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#pageTarget?.addEventListener('pagehide', this.#onPageHide);
    this.#pageTarget?.addEventListener('pageshow', this.#onPageShow);
    this.#join();
  }

  /** Stops this tab: no stream, no timer, no listener, no lock left behind. Another tab of the
   * session, if any, takes over the stream at once. */
  stop(): void {
    this.#shutdown({ kind: 'user' });
  }

  #join(): void {
    if (!this.#locks || !this.#channelFactory) {
      this.#runStream('solo');
      return;
    }
    const channel = this.#channelFactory(this.#names.channel);
    channel.onmessage = (event) => this.#onMessage(event.data);
    this.#channel = channel;
    this.#setRole('follower');
    this.#post({ t: 'hello', from: this.#tabId });
    this.#leaderSilence.arm(this.#silenceMs());
    this.#requestLock(false);
  }

  /** Leaves the group without stopping for good (pagehide): the lock goes to another tab. */
  #leave(): void {
    this.#stopStream();
    this.#beatTimer.cancel();
    this.#leaderSilence.cancel();
    this.#lockRequest?.abort();
    this.#lockRequest = undefined;
    this.#releaseLock?.();
    this.#releaseLock = undefined;
    if (this.#channel) {
      this.#channel.onmessage = null;
      this.#channel.close();
      this.#channel = undefined;
    }
  }

  #shutdown(reason: StopReason): void {
    if (!this.#started) return;
    this.#started = false;
    this.#leave();
    this.#pageTarget?.removeEventListener('pagehide', this.#onPageHide);
    this.#pageTarget?.removeEventListener('pageshow', this.#onPageShow);
    this.#setRole('stopped');
    if (reason.kind === 'auth') this.#emit({ type: 'auth-error', status: reason.status, body: reason.body });
    this.#emit({ type: 'stopped', reason });
  }

  #requestLock(steal: boolean): void {
    const locks = this.#locks;
    if (!locks) return;
    this.#lockRequest?.abort();
    const request = new AbortController();
    this.#lockRequest = request;
    // A stealing request cannot carry a signal (the Web Locks API refuses the combination);
    // it is granted at once, so there is nothing to cancel.
    const options = steal ? { steal: true } : { signal: request.signal };
    let held = false;
    locks
      .request(this.#names.lock, options, () => {
        if (this.#lockRequest !== request || !this.#started) return undefined;
        held = true;
        return new Promise<void>((release) => {
          this.#releaseLock = release;
          this.#becomeLeader();
        });
      })
      .catch((error: unknown) => {
        // Rejected while held: another tab stole the lock (it judged this tab frozen).
        if (held && this.#lockRequest === request && this.#started && this.#role === 'leader') {
          this.#log.warn('another tab took over the stream');
          this.#stepDown();
        } else if (!isAbort(error)) {
          this.#log.error('lock request failed', error);
        }
      });
  }

  #becomeLeader(): void {
    this.#leaderSilence.cancel();
    this.#replaced = false;
    this.#post({ t: 'leader', from: this.#tabId });
    this.#runStream('leader');
    this.#beatTimer.arm(this.#heartbeatMs);
  }

  /** This tab lost the lock while leading: stop the stream and queue as a follower. */
  #stepDown(): void {
    this.#stopStream();
    this.#beatTimer.cancel();
    this.#releaseLock?.();
    this.#releaseLock = undefined;
    this.#setRole('follower');
    this.#leaderSilence.arm(this.#silenceMs());
    this.#requestLock(false);
  }

  #runStream(role: 'solo' | 'leader'): void {
    const o = this.#opts;
    const stream: StreamClient = new StreamClient({
      url: o.url,
      token: o.token,
      authScheme: o.authScheme,
      credentials: o.credentials,
      lastEventId: this.#lastId,
      backoff: o.backoff,
      fetch: o.fetch,
      clock: this.#clock,
      random: o.random,
      onlineTarget: o.onlineTarget,
      logger: this.#log,
      onEvent: (event, frame) => {
        if (this.#stream !== stream) return;
        this.#lastId = stream.lastEventId;
        if (frame.type === 'connected' && frame.heartbeatMs !== undefined) this.#heartbeatMs = frame.heartbeatMs;
        if (role === 'leader') {
          const message: RelayMessage = { t: 'frame', from: this.#tabId, data: event.data, hb: this.#heartbeatMs };
          if (event.id !== undefined) message.id = event.id;
          if (this.#lastId !== undefined) message.last = this.#lastId;
          this.#post(message);
          this.#beatTimer.arm(this.#heartbeatMs);
        }
        this.#onFrame(event.id, frame);
      },
      onStatus: () => this.#emitStatus(),
      onStop: (reason) => {
        if (this.#stream !== stream || reason.kind === 'user') return;
        this.#onStreamStopped(reason);
      },
    });
    this.#stream = stream;
    this.#setRole(role);
    stream.start();
  }

  #stopStream(): void {
    const stream = this.#stream;
    if (!stream) return;
    this.#lastId = stream.lastEventId ?? this.#lastId;
    this.#stream = undefined;
    stream.stop();
  }

  #onStreamStopped(reason: GroupStopReason): void {
    if (this.#role === 'leader' && reason.kind === 'closed' && reason.reason === 'superseded' && this.#replaced) {
      this.#stepDown();
      return;
    }
    if (this.#role === 'leader') this.#post({ t: 'stop', from: this.#tabId, reason: plain(reason) });
    this.#shutdown(reason);
  }

  #onMessage(value: unknown): void {
    const message = readRelayMessage(value);
    if (!message || message.from === this.#tabId || !this.#started) return;
    switch (message.t) {
      case 'frame':
      case 'beat':
        if (this.#role !== 'follower') return;
        this.#heartbeatMs = message.hb;
        if (message.last !== undefined) this.#lastId = message.last;
        this.#leaderSilence.arm(this.#silenceMs());
        if (message.t === 'frame') this.#onRelayedFrame(message.id, message.data);
        return;
      case 'hello':
        if (this.#role === 'leader') this.#beat();
        return;
      case 'leader':
        if (this.#role === 'leader') this.#replaced = true;
        if (this.#role === 'follower') this.#leaderSilence.arm(this.#silenceMs());
        return;
      case 'stop':
        // Any role: a follower may already have taken the lock the stopping leader released
        // before this message arrived; its stream goes too.
        this.#shutdown(message.reason);
        return;
    }
  }

  #onRelayedFrame(id: string | undefined, data: string): void {
    const decoded = decodeFrame(data, (entry) => this.#log.warn('skipped a key that is not a JSON array', entry));
    if (decoded.kind === 'frame') this.#onFrame(id, decoded.frame);
    else if (decoded.kind === 'invalid') this.#log.warn(`skipped invalid relayed frame: ${decoded.reason}`);
  }

  /** The local resolver's keys as plain JSON arrays. A resolver is host code: one that throws
   * or yields a function, a proxy or `undefined` inside a key must cost that key (logged), never
   * the event, the batch or the stream (docs/protocol.md C13). */
  #resolve(activity: Activity): { invalidate: QueryKey[]; remove: QueryKey[] } {
    if (!this.#resolver) return { invalidate: [], remove: [] };
    let resolved: { invalidate?: unknown; remove?: unknown } | undefined;
    try {
      resolved = this.#resolver.resolve(activity);
    } catch (e) {
      this.#log.warn('the local resolver threw; the activity goes on without keys', e);
      return { invalidate: [], remove: [] };
    }
    const skip = (entry: unknown) => this.#log.warn('skipped a resolved key that is not plain JSON', entry);
    return { invalidate: plainKeys(resolved?.invalidate, skip), remove: plainKeys(resolved?.remove, skip) };
  }

  /** One frame, from this tab's stream or relayed: de-duplicate, resolve, publish. */
  #onFrame(id: string | undefined, frame: Frame): void {
    switch (frame.type) {
      case 'activity': {
        if (id !== undefined && !this.#seen.add(id)) {
          this.#log.debug(`dropped duplicate activity ${id}`);
          return;
        }
        let { invalidate, remove } = frame;
        let keysFrom: 'hub' | 'local' | 'none' = 'hub';
        if (invalidate.length === 0 && remove.length === 0) {
          const resolved = this.#resolve(frame.data);
          invalidate = resolved.invalidate;
          remove = resolved.remove;
          keysFrom = invalidate.length + remove.length > 0 ? 'local' : 'none';
          if (keysFrom === 'none') this.#log.debug('activity resolved to no keys', frame.data.resource?.type);
        }
        const event: TidingsEvent = { type: 'activity', data: frame.data, invalidate, remove, keysFrom };
        if (id !== undefined) event.id = id;
        this.#emit(event);
        return;
      }
      case 'resync':
        this.#emit({ type: 'resync', reason: frame.reason });
        return;
      case 'connected': {
        const event: TidingsEvent = { type: 'connected' };
        if (frame.resumed !== undefined) event.resumed = frame.resumed;
        if (frame.heartbeatMs !== undefined) event.heartbeatMs = frame.heartbeatMs;
        this.#emit(event);
        return;
      }
      case 'closed': {
        const event: TidingsEvent = { type: 'closed', reason: frame.reason };
        if (frame.retryMs !== undefined) event.retryMs = frame.retryMs;
        this.#emit(event);
        return;
      }
      case 'ping':
        return;
    }
  }

  #beat(): void {
    if (this.#role !== 'leader') return;
    const message: RelayMessage = { t: 'beat', from: this.#tabId, hb: this.#heartbeatMs };
    const last = this.#stream?.lastEventId ?? this.#lastId;
    if (last !== undefined) message.last = last;
    this.#post(message);
    this.#beatTimer.arm(this.#heartbeatMs);
  }

  #onLeaderSilent(): void {
    if (this.#role !== 'follower') return;
    if (!this.#isVisible()) {
      // A hidden tab does not need fresh data now; it checks again later, and the visible
      // tabs (if any) make the call.
      this.#leaderSilence.arm(this.#silenceMs());
      return;
    }
    this.#log.warn(`leader silent for ${this.#silenceMs()} ms; taking over the stream`);
    this.#requestLock(true);
  }

  readonly #onPageHide = (): void => {
    if (!this.#started || this.#role === 'suspended') return;
    this.#leave();
    this.#setRole('suspended');
  };

  readonly #onPageShow = (): void => {
    if (this.#started && this.#role === 'suspended') this.#join();
  };

  #silenceMs(): number {
    return Math.round(this.#heartbeatMs * WATCHDOG_HEARTBEATS);
  }

  #post(message: RelayMessage): void {
    try {
      this.#channel?.postMessage(message);
    } catch (error) {
      this.#log.error('could not relay a message to other tabs', error);
    }
  }

  #setRole(role: Role): void {
    if (this.#role === role) return;
    this.#role = role;
    this.#emitStatus();
  }

  #emitStatus(): void {
    const status: TidingsStatus = { role: this.#role };
    if (this.#stream) status.stream = this.#stream.status;
    this.#status = status;
    this.#emit({ type: 'status', status });
  }

  #emit(event: TidingsEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch (error) {
        this.#log.error('a Tidings listener threw', error);
      }
    }
  }
}

export function createTidings(options: TidingsOptions): Tidings {
  return new Tidings(options);
}

function isAbort(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { name?: unknown }).name === 'AbortError';
}

/** A JSON copy: only plain data crosses the channel (reactive proxies and functions do not
 * survive structured clone, docs/protocol.md C13). */
function plain<T>(value: T): T {
  try {
    return JSON.parse(JSON.stringify(value)) as T;
  } catch {
    return value;
  }
}
