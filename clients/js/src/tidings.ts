/** The SDK's entry point: one Tidings instance per signed-in session in a tab. With Web Locks
 * and BroadcastChannel available, the tabs of a session elect one leader that runs the stream
 * and relays every frame to the others; without them, each tab runs its own stream. Either
 * way, subscribers see the same events: activities (de-duplicated by id, with keys resolved
 * locally when the hub sent none), resyncs, and why the stream stopped. */
import { consoleLogger, isServer, systemClock, Timer, type Clock, type EventTargetLike, type Logger } from './env.js';
import { plainKeys, type QueryKey } from './keys.js';
import { decodeFrame, type Activity, type ConnectedFrame, type Frame } from './protocol.js';
import {
  readRelayMessage,
  RecentIds,
  relayNames,
  type ChannelFactory,
  type ChannelLike,
  type GroupStopReason,
  type LockManagerLike,
  type RelayedState,
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

/** What went wrong last: a failed connection (while the SDK retries), or why it stopped for
 * good (`status` for a 401/403, `reason` for a final `closed`). Plain data, so it crosses tabs. */
export interface TidingsError {
  message: string;
  status?: number;
  reason?: string;
}

/** The session's connection as every tab of it sees it. The leader relays its stream's state,
 * the hub's `client_id` and the last event to the followers, so all tabs report the same. */
export interface TidingsStatus {
  /** This tab's part: running the stream (`solo`, `leader`), hearing it (`follower`), or not. */
  role: Role;
  /** The session's stream: this tab's own (solo, leader) or the leader's, relayed (follower).
   * Absent while unknown (idle, stopped, a follower that has not heard the leader yet). */
  stream?: StreamStatus;
  /** The session's stream is open. */
  connected: boolean;
  /** The hub's `client_id` for the open stream; absent while not connected. */
  clientId?: string;
  /** Why the last connection failed (cleared once connected), or why the SDK stopped. */
  error?: TidingsError;
  /** The last `connected` or `activity` event of the session (a tab opened later gets it from
   * the leader). */
  lastEvent?: LastEvent;
  /** Why the SDK stopped (role `stopped`): `stop()`, an auth refusal or a final `closed`. */
  stopReason?: StopReason;
}

/** The status of an instance that has not started (and of no instance at all). */
export const IDLE_STATUS: TidingsStatus = Object.freeze({ role: 'idle', connected: false }) as TidingsStatus;

/** One word for the connection, for a badge: `connected`; `connecting` (first attempt, or a
 * tab that has not heard its leader yet); `reconnecting` (after a failure, `stream.retryAt`
 * says when); `suspended` (page in the back/forward cache); `stopped`; `idle` (not started). */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'suspended' | 'stopped';

export function connectionState(status: TidingsStatus): ConnectionState {
  if (status.role === 'idle' || status.role === 'stopped' || status.role === 'suspended') return status.role;
  if (status.connected) return 'connected';
  const stream = status.stream;
  return stream && (stream.state === 'waiting' || stream.attempt > 0) ? 'reconnecting' : 'connecting';
}

export type LastEvent = Extract<TidingsEvent, { type: 'activity' | 'connected' }>;

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
  | { type: 'connected'; clientId?: string; resumed?: boolean; heartbeatMs?: number }
  | { type: 'closed'; reason: string; retryMs?: number }
  | { type: 'auth-error'; status: number; body?: unknown }
  | { type: 'stopped'; reason: StopReason }
  | { type: 'status'; status: TidingsStatus };

export type TidingsListener = (event: TidingsEvent) => void;
export type TidingsEventType = TidingsEvent['type'];
export type TidingsEventOf<K extends TidingsEventType> = Extract<TidingsEvent, { type: K }>;

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
  #status: TidingsStatus = IDLE_STATUS;
  /** The hub's `client_id` of this tab's own open stream (solo, leader). */
  #clientId: string | undefined;
  /** Follower only: the leader's connection as last relayed. */
  #relayed: RelayedState | undefined;
  #lastEvent: LastEvent | undefined;
  /** The raw frame behind `#lastEvent`, relayed to tabs that join later. */
  #lastFrame: { id?: string; data: string } | undefined;
  #stopReason: StopReason | undefined;
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

  /** Listens to one type of event until the returned function is called. */
  on<K extends TidingsEventType>(type: K, listener: (event: TidingsEventOf<K>) => void): () => void {
    return this.subscribe((event) => {
      if (event.type === type) listener(event as TidingsEventOf<K>);
    });
  }

  /** Starts this tab's part in the session's stream. Outside a browser (server rendering) with
   * no `fetch` given, it does nothing: a page rendered on a server must not hold a stream. */
  start(): void {
    if (this.#started) return;
    if (isServer() && this.#opts.fetch === undefined) {
      this.#log.debug('start() ignored outside a browser; pass `fetch` to run the stream here');
      return;
    }
    this.#started = true;
    this.#stopReason = undefined;
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
    this.#relayed = undefined;
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
    this.#stopReason = reason;
    this.#relayed = undefined;
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
    this.#relayed = undefined;
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
        if (frame.type === 'connected') {
          if (frame.heartbeatMs !== undefined) this.#heartbeatMs = frame.heartbeatMs;
          this.#clientId = frame.clientId;
        }
        if (frame.type === 'connected' || frame.type === 'activity') {
          this.#lastFrame = event.id !== undefined ? { id: event.id, data: event.data } : { data: event.data };
        }
        if (role === 'leader') {
          const message: RelayMessage = { t: 'frame', from: this.#tabId, data: event.data, hb: this.#heartbeatMs };
          if (event.id !== undefined) message.id = event.id;
          if (this.#lastId !== undefined) message.last = this.#lastId;
          this.#post(message);
          this.#beatTimer.arm(this.#heartbeatMs);
        }
        this.#onFrame(event.id, frame);
      },
      onStatus: (status) => {
        if (this.#stream !== stream) return;
        if (status.state !== 'open') this.#clientId = undefined;
        this.#emitStatus();
      },
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
    this.#clientId = undefined;
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
      case 'state':
        if (this.#role !== 'follower') return;
        this.#relayed = { stream: message.stream, ...(message.clientId !== undefined ? { clientId: message.clientId } : {}) };
        if (message.lastFrame && !this.#lastEvent) this.#adoptLastFrame(message.lastFrame);
        this.#leaderSilence.arm(this.#silenceMs());
        this.#emitStatus();
        return;
      case 'hello':
        if (this.#role === 'leader') {
          this.#beat();
          this.#postState(true);
        }
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

  /** A tab that joined after the last event learns it from the leader, without replaying it
   * (its queries were fetched fresh). */
  #adoptLastFrame(raw: { id?: string; data: string }): void {
    const decoded = decodeFrame(raw.data);
    if (decoded.kind !== 'frame') return;
    const frame = decoded.frame;
    if (frame.type === 'activity') {
      const event: LastEvent = { type: 'activity', data: frame.data, invalidate: frame.invalidate, remove: frame.remove, keysFrom: 'hub' };
      if (raw.id !== undefined) event.id = raw.id;
      this.#lastEvent = event;
    } else if (frame.type === 'connected') {
      this.#lastEvent = connectedEvent(frame);
    }
    this.#lastFrame = raw;
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
        const event: LastEvent = { type: 'activity', data: frame.data, invalidate, remove, keysFrom };
        if (id !== undefined) event.id = id;
        this.#lastEvent = event;
        this.#emit(event);
        this.#emitStatus();
        return;
      }
      case 'resync':
        this.#emit({ type: 'resync', reason: frame.reason });
        return;
      case 'connected': {
        const event = connectedEvent(frame);
        this.#lastEvent = event;
        this.#emit(event);
        this.#emitStatus();
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

  /** Tells the followers the leader's connection; with the last event when a tab joins. */
  #postState(withLastFrame: boolean): void {
    const stream = this.#stream;
    if (this.#role !== 'leader' || !stream) return;
    const message: RelayMessage = { t: 'state', from: this.#tabId, stream: stream.status };
    if (this.#clientId !== undefined) message.clientId = this.#clientId;
    if (withLastFrame && this.#lastFrame) message.lastFrame = this.#lastFrame;
    this.#post(message);
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

  /** Recomputes the status; emits it (and relays it, when leading) only if something changed,
   * so the snapshot stays the same object until then. */
  #emitStatus(): void {
    const role = this.#role;
    const own = role === 'solo' || role === 'leader';
    const stream = own ? this.#stream?.status : role === 'follower' ? this.#relayed?.stream : undefined;
    const connected = stream?.state === 'open';
    const status: TidingsStatus = { role, connected };
    if (stream) status.stream = stream;
    const clientId = own ? this.#clientId : this.#relayed?.clientId;
    if (connected && clientId !== undefined) status.clientId = clientId;
    const error = role === 'stopped' ? stopError(this.#stopReason) : !connected && stream?.lastError ? { message: stream.lastError } : undefined;
    if (error) status.error = error;
    if (this.#lastEvent) status.lastEvent = this.#lastEvent;
    if (role === 'stopped' && this.#stopReason) status.stopReason = this.#stopReason;
    const prev = this.#status;
    if (
      prev.role === status.role &&
      prev.stream === status.stream &&
      prev.connected === status.connected &&
      prev.clientId === status.clientId &&
      prev.error?.message === status.error?.message &&
      prev.lastEvent === status.lastEvent &&
      prev.stopReason === status.stopReason
    ) {
      return;
    }
    const streamChanged = prev.stream !== status.stream || prev.clientId !== status.clientId;
    this.#status = status;
    if (role === 'leader' && streamChanged) this.#postState(false);
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

function connectedEvent(frame: ConnectedFrame): LastEvent {
  const event: LastEvent = { type: 'connected' };
  if (frame.clientId !== undefined) event.clientId = frame.clientId;
  if (frame.resumed !== undefined) event.resumed = frame.resumed;
  if (frame.heartbeatMs !== undefined) event.heartbeatMs = frame.heartbeatMs;
  return event;
}

function stopError(reason: StopReason | undefined): TidingsError | undefined {
  if (!reason || reason.kind === 'user') return undefined;
  if (reason.kind === 'auth') return { message: `the hub refused the stream (HTTP ${reason.status})`, status: reason.status };
  return { message: `the hub closed the stream (${reason.reason})`, reason: reason.reason };
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
