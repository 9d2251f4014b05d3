/** The stream client: one fetch-based SSE connection to `GET /events/stream`, kept alive for as
 * long as it is started. Reconnects with capped full-jitter backoff, resumes with
 * `Last-Event-ID`, detects dead connections with a watchdog, and stops for good only on
 * `stop()`, on 401/403, or on a `closed` frame whose reason forbids reconnecting. It knows
 * nothing about tabs or caches: valid frames go to `onEvent`. */
import { defaultBackoff, parseRetryAfter, reconnectDelay, type BackoffOptions, type RetryAdvice } from './backoff.js';
import { consoleLogger, systemClock, Timer, type Clock, type EventTargetLike, type Logger } from './env.js';
import { decodeFrame, FINAL_CLOSE_REASONS, type Frame } from './protocol.js';
import { SseDecoder, type SseEvent } from './sse.js';

/** Heartbeat assumed until the `connected` frame says otherwise (the hub's default; docs/protocol.md C8). */
export const HEARTBEAT_MS_DEFAULT = 15_000;
/** A connection that stays silent this many heartbeats is dead (half-open TCP, stuck proxy). */
export const WATCHDOG_HEARTBEATS = 2.5;
/** A stream that lived at least this long counts as healthy: the next failure starts the
 * backoff again from its first step. Shorter streams keep growing it, so a hub that accepts and
 * drops at once is not hammered. */
export const STREAM_STABLE_MS = 5_000;
/** Bound on an error body read before the stream (401/403 JSON). */
const ERROR_BODY_CHARS_MAX = 4_096;

export type TokenResult = string | null | undefined;

export type StreamState = 'idle' | 'connecting' | 'open' | 'waiting' | 'stopped';

export interface StreamStatus {
  state: StreamState;
  /** Consecutive failed attempts. */
  attempt: number;
  /** While `waiting`: milliseconds until the next attempt, counted from when this status was
   * set. */
  retryInMs?: number;
  /** While `waiting`: when the next attempt starts, on the clock's time line (`Date.now()` by
   * default), so a tab that hears of it later still knows when. */
  retryAt?: number;
  /** Why the last connection ended, when it failed. */
  lastError?: string;
}

/** Why a stream client stopped for good. */
export type StopReason =
  | { kind: 'user' }
  | { kind: 'auth'; status: number; body?: unknown }
  | { kind: 'closed'; reason: string };

export interface StreamClientOptions {
  /** The stream endpoint, e.g. `https://hub.example.com/events/stream`. */
  url: string | URL;
  /** Called before every (re)connect; return the current token, or nothing for cookie auth. */
  token?: () => TokenResult | Promise<TokenResult>;
  /** Authorization scheme for the token: `Bearer` (default) or `Token` (the original console's). */
  authScheme?: 'Bearer' | 'Token';
  /** fetch credentials mode; `include` sends the session cookie cross-origin. */
  credentials?: RequestCredentials;
  /** Position to resume from on the first connect. */
  lastEventId?: string;
  backoff?: Partial<BackoffOptions>;
  fetch?: typeof fetch;
  clock?: Clock;
  random?: () => number;
  /** Where `online` events come from; defaults to `window` when there is one. `null` disables. */
  onlineTarget?: EventTargetLike | null;
  logger?: Logger;
  /** Every valid frame, with the SSE event it came in. */
  onEvent?: (event: SseEvent, frame: Frame) => void;
  onStatus?: (status: StreamStatus) => void;
  onStop?: (reason: StopReason) => void;
}

export class StreamClient {
  readonly #opts: StreamClientOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #fetch: typeof fetch;
  readonly #log: Logger;
  readonly #backoff: BackoffOptions;
  readonly #onlineTarget: EventTargetLike | null;
  readonly #decoder: SseDecoder;
  readonly #retryTimer: Timer;
  readonly #watchdog: Timer;

  #running = false;
  /** Bumped whenever the current connection is retired; async steps of an older connection
   * compare it and bail out, so nothing they do outlives `stop()` or a reconnect. */
  #generation = 0;
  /** Aborts the current fetch and its body; owned by the current connection, replaced on each
   * connect, aborted on retire. */
  #abort: AbortController | undefined;
  #heartbeatMs = HEARTBEAT_MS_DEFAULT;
  #openedAt: number | undefined;
  #closedRetryMs: number | undefined;
  #status: StreamStatus = { state: 'idle', attempt: 0 };

  constructor(options: StreamClientOptions) {
    this.#opts = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#log = options.logger ?? consoleLogger;
    this.#backoff = { ...defaultBackoff, ...options.backoff };
    this.#onlineTarget =
      options.onlineTarget !== undefined ? options.onlineTarget : typeof window !== 'undefined' ? window : null;
    this.#decoder = new SseDecoder({
      onEvent: (event) => this.#onSseEvent(event),
      onError: (reason) => this.#log.warn('skipped malformed SSE input', reason),
    });
    if (options.lastEventId) this.#decoder.lastId = options.lastEventId;
    this.#retryTimer = new Timer(this.#clock, () => void this.#connect());
    this.#watchdog = new Timer(this.#clock, () => this.#onWatchdog());
  }

  /** The position a reconnect resumes from: the last `id:` seen, including the `connected`
   * frame's. */
  get lastEventId(): string | undefined {
    return this.#decoder.lastId;
  }

  get status(): StreamStatus {
    return this.#status;
  }

  get running(): boolean {
    return this.#running;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#onlineTarget?.addEventListener('online', this.#onOnline);
    void this.#connect();
  }

  /** Stops for good: aborts the fetch, clears every timer, removes every listener. */
  stop(): void {
    this.#halt({ kind: 'user' });
  }

  #halt(reason: StopReason): void {
    if (!this.#running) return;
    this.#running = false;
    this.#retire();
    this.#retryTimer.cancel();
    this.#onlineTarget?.removeEventListener('online', this.#onOnline);
    this.#setStatus({ state: 'stopped', attempt: this.#status.attempt });
    this.#opts.onStop?.(reason);
  }

  /** Ends the current connection, if any, without deciding what comes next. */
  #retire(): void {
    this.#generation++;
    this.#watchdog.cancel();
    this.#abort?.abort();
    this.#abort = undefined;
  }

  async #connect(): Promise<void> {
    if (!this.#running) return;
    this.#retire();
    const generation = this.#generation;
    const abort = new AbortController();
    this.#abort = abort;
    this.#openedAt = undefined;
    this.#closedRetryMs = undefined;
    this.#setStatus({ state: 'connecting', attempt: this.#status.attempt });
    // Covers a hung token callback or a request that never answers, not only a silent body.
    this.#watchdog.arm(this.#watchdogMs());
    const current = () => this.#running && generation === this.#generation;
    try {
      const token = await this.#opts.token?.();
      if (!current()) return;
      const response = await this.#fetch(this.#opts.url, {
        method: 'GET',
        headers: this.#headers(token),
        credentials: this.#opts.credentials,
        cache: 'no-store',
        signal: abort.signal,
      });
      if (!current()) {
        void response.body?.cancel().catch(() => {});
        return;
      }
      if (response.status === 401 || response.status === 403) {
        const body = await readErrorBody(response);
        if (!current()) return;
        this.#log.error(`stream refused with ${response.status}; not reconnecting`, body);
        this.#halt({ kind: 'auth', status: response.status, body });
        return;
      }
      // Exactly 200: the hub answers anything else with an error body, never an empty stream.
      if (response.status !== 200) {
        void response.body?.cancel().catch(() => {});
        const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'), this.#clock.now());
        this.#fail(`HTTP ${response.status}`, { retryAfterMs });
        return;
      }
      const type = response.headers.get('content-type')?.split(';')[0]?.trim().toLowerCase();
      if (type !== 'text/event-stream' || !response.body) {
        void response.body?.cancel().catch(() => {});
        this.#fail(`unexpected content type ${type ?? '(none)'}`);
        return;
      }
      this.#openedAt = this.#clock.now();
      this.#setStatus({ state: 'open', attempt: this.#status.attempt });
      this.#decoder.reset();
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (!current()) {
          void reader.cancel().catch(() => {});
          return;
        }
        if (done) break;
        this.#watchdog.arm(this.#watchdogMs());
        this.#decoder.feedBytes(value);
        if (!current()) {
          // A frame in this chunk ended the connection (`closed`, or stop() from a listener).
          void reader.cancel().catch(() => {});
          return;
        }
      }
      this.#fail('stream ended');
    } catch (error) {
      if (!current()) return;
      this.#fail(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
    }
  }

  #headers(token: TokenResult): Record<string, string> {
    const headers: Record<string, string> = { Accept: 'text/event-stream' };
    if (token) headers['Authorization'] = `${this.#opts.authScheme ?? 'Bearer'} ${token}`;
    const last = this.#decoder.lastId;
    if (last !== undefined) headers['Last-Event-ID'] = last;
    return headers;
  }

  /** The current connection is over and we are still started: wait, then connect again. */
  #fail(error: string, advice: Partial<RetryAdvice> = {}): void {
    if (!this.#running) return;
    const stable = this.#openedAt !== undefined && this.#clock.now() - this.#openedAt >= STREAM_STABLE_MS;
    const attempt = stable ? 0 : this.#status.attempt;
    const closedRetryMs = this.#closedRetryMs;
    this.#retire();
    const delay = reconnectDelay(
      { attempt, retryHintMs: this.#decoder.retry, closedRetryMs, ...advice },
      this.#backoff,
      this.#random,
    );
    this.#log.debug(`stream ${error}; reconnecting in ${delay} ms`);
    this.#setStatus({ state: 'waiting', attempt: attempt + 1, retryInMs: delay, retryAt: this.#clock.now() + delay, lastError: error });
    this.#retryTimer.arm(delay);
  }

  #onSseEvent(event: SseEvent): void {
    if (event.event !== undefined && event.event !== 'message') {
      this.#log.warn(`skipped SSE event with unexpected name "${event.event}"`);
      return;
    }
    const decoded = decodeFrame(event.data, (entry) => this.#log.warn('skipped a key that is not a JSON array', entry));
    if (decoded.kind === 'invalid') {
      this.#log.warn(`skipped invalid frame: ${decoded.reason}`, event.data.slice(0, 200));
      return;
    }
    if (decoded.kind === 'unknown') {
      this.#log.debug(`ignored frame of unknown type "${decoded.type}"`);
      return;
    }
    const frame = decoded.frame;
    if (frame.type === 'connected' && frame.heartbeatMs !== undefined) {
      this.#heartbeatMs = frame.heartbeatMs;
      this.#watchdog.arm(this.#watchdogMs());
    }
    try {
      this.#opts.onEvent?.(event, frame);
    } catch (error) {
      this.#log.error('a frame listener threw', error);
    }
    if (frame.type === 'closed') this.#onClosed(frame.reason, frame.retryMs);
  }

  #onClosed(reason: string, retryMs: number | undefined): void {
    if (!this.#running) return;
    if (FINAL_CLOSE_REASONS.has(reason)) {
      this.#log.warn(`stream closed by the hub (${reason}); not reconnecting`);
      this.#halt({ kind: 'closed', reason });
      return;
    }
    this.#closedRetryMs = retryMs;
    this.#fail(`closed by the hub (${reason})`);
  }

  #onWatchdog(): void {
    if (!this.#running) return;
    this.#log.warn(`no bytes for ${this.#watchdogMs()} ms; reconnecting`);
    this.#fail('watchdog: connection silent');
  }

  readonly #onOnline = (): void => {
    if (this.#running && this.#status.state === 'waiting') {
      this.#retryTimer.cancel();
      void this.#connect();
    }
  };

  #watchdogMs(): number {
    return Math.round(this.#heartbeatMs * WATCHDOG_HEARTBEATS);
  }

  #setStatus(status: StreamStatus): void {
    this.#status = status;
    try {
      this.#opts.onStatus?.(status);
    } catch (error) {
      this.#log.error('a status listener threw', error);
    }
  }
}

async function readErrorBody(response: Response): Promise<unknown> {
  try {
    const text = (await response.text()).slice(0, ERROR_BODY_CHARS_MAX);
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return text;
    }
  } catch {
    return undefined;
  }
}
