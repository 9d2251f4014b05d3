/** `tidings/testing`: a scripted fake hub for an app's own unit tests. It answers the SDK's
 * `fetch` like the real hub does (a `connected` frame with the stream position, activities with
 * ids, exact resume from `Last-Event-ID` or a `resync`, `closed`, 401/403 refusals), with no
 * network and no timers of its own, so it works under fake timers too. It does not model fan-out
 * between sessions, limits or heartbeats: for those, run the real hub (`tidings serve`).
 *
 *     const hub = createFakeHub();
 *     const tidings = createTidings({ url: hub.url, fetch: hub.fetch, sessionKey: 'test', crossTab: false });
 *     tidings.start();
 *     await hub.connected();
 *     hub.activity({ activity_type: 'edited', resource: { type: 'app', id: 7 } }, { invalidate: [['app']] });
 *     await hub.settle();
 */
import type { QueryKey } from './keys.js';
import type { Activity } from './protocol.js';

/** A request the SDK made, as the fake hub saw it. */
export interface FakeHubRequest {
  url: string;
  headers: Record<string, string>;
  /** The `Last-Event-ID` it resumed from, if any. */
  lastEventId?: string;
  /** What the hub answered: 200 for a stream, else the refusal's status. */
  status: number;
}

export interface FakeHubOptions {
  /** Defaults to `http://tidings.test/events/stream`. */
  url?: string;
  /** `heartbeat_ms` in the `connected` frame (default 15 000). */
  heartbeatMs?: number;
}

/** One streamed response body the hub writes to. */
export class FakeStream {
  readonly body: ReadableStream<Uint8Array>;
  ended = false;
  aborted = false;
  cancelled = false;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  readonly #encoder = new TextEncoder();

  constructor(signal: AbortSignal | null | undefined) {
    this.body = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c;
      },
      cancel: () => {
        this.cancelled = true;
      },
    });
    signal?.addEventListener('abort', () => {
      this.aborted = true;
      if (this.ended || this.cancelled) return;
      try {
        this.#controller.error(new DOMException('The operation was aborted.', 'AbortError'));
      } catch {
        /* already closed */
      }
    });
  }

  get open(): boolean {
    return !this.ended && !this.aborted && !this.cancelled;
  }

  send(text: string): void {
    if (this.open) this.#controller.enqueue(this.#encoder.encode(text));
  }

  end(): void {
    if (!this.open) return;
    this.ended = true;
    this.#controller.close();
  }
}

type Refusal = { status: number; body: unknown; headers: Record<string, string> };

export class FakeHub {
  readonly url: string;
  readonly requests: FakeHubRequest[] = [];
  readonly #heartbeatMs: number;
  readonly #streams: FakeStream[] = [];
  readonly #refusals: Refusal[] = [];
  /** Published activities (position, SSE text) kept for exact resume. */
  readonly #history: Array<{ seq: number; text: string }> = [];
  #seq = 0;
  /** Positions at or below this were forgotten: resuming from one gets `history_trimmed`. */
  #forgottenUpTo = -1;
  #clients = 0;
  #waiting: Array<() => void> = [];

  constructor(options: FakeHubOptions = {}) {
    this.url = options.url ?? 'http://tidings.test/events/stream';
    this.#heartbeatMs = options.heartbeatMs ?? 15_000;
  }

  /** Pass as the SDK's `fetch` option. */
  readonly fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, key) => (headers[key] = value));
    const lastEventId = headers['last-event-id'];
    const refusal = this.#refusals.shift();
    const request: FakeHubRequest = { url: String(input), headers, status: refusal?.status ?? 200 };
    if (lastEventId !== undefined) request.lastEventId = lastEventId;
    this.requests.push(request);
    if (init?.signal?.aborted) throw new DOMException('The operation was aborted.', 'AbortError');
    if (refusal) {
      return new Response(JSON.stringify(refusal.body), { status: refusal.status, headers: { 'content-type': 'application/json', ...refusal.headers } });
    }
    const stream = new FakeStream(init?.signal);
    this.#streams.push(stream);
    this.#greet(stream, lastEventId);
    for (const wake of this.#waiting.splice(0)) wake();
    return new Response(stream.body, { status: 200, headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-store' } });
  };

  /** Streams currently open. */
  get openStreams(): number {
    return this.#streams.filter((s) => s.open).length;
  }

  /** Resolves once a stream is open (at once if one is), then lets the SDK read its
   * `connected` frame. */
  async connected(): Promise<void> {
    if (this.openStreams === 0) await new Promise<void>((wake) => this.#waiting.push(wake));
    await this.settle();
  }

  /** Lets the SDK read what was sent: promise callbacks only, so fake timers do not matter. */
  async settle(): Promise<void> {
    for (let i = 0; i < 50; i++) await Promise.resolve();
  }

  /** Publishes an activity to every open stream (and keeps it for resume); returns its id. */
  activity(data: Activity, keys: { invalidate?: QueryKey[]; remove?: QueryKey[] } = {}): string {
    const id = this.#id(++this.#seq);
    const payload: Record<string, unknown> = { type: 'activity', data, invalidate: keys.invalidate ?? [] };
    if (keys.remove && keys.remove.length > 0) payload['remove'] = keys.remove;
    const text = frame(payload, id);
    this.#history.push({ seq: this.#seq, text });
    this.send(text);
    return id;
  }

  /** Tells every open stream to treat all cached data as stale. */
  resync(reason = 'history_trimmed'): void {
    this.send(frame({ type: 'resync', reason }));
  }

  ping(): void {
    this.send(frame({ type: 'ping', timestamp: new Date(0).toISOString() }));
  }

  /** Ends every open stream on purpose; `superseded` and `revoked` stop the SDK for good. */
  close(reason = 'shutdown', retryMs: number | undefined = reason === 'superseded' || reason === 'revoked' ? undefined : 1_000): void {
    const payload: Record<string, unknown> = { type: 'closed', reason };
    if (retryMs !== undefined) payload['retry_ms'] = retryMs;
    for (const stream of this.#open()) {
      stream.send(frame(payload));
      stream.end();
    }
  }

  /** The network drops every open stream: the SDK reconnects and resumes where it was. */
  drop(): void {
    for (const stream of this.#open()) stream.end();
  }

  /** Answers the next connection with this status (401 and 403 stop the SDK; 429 and 503 make
   * it wait, with `Retry-After` when given). */
  refuseNext(status: number, body: unknown = { error: { code: 'refused', message: `refused with ${status}` } }, headers: Record<string, string> = {}): void {
    this.#refusals.push({ status, body, headers });
  }

  /** Forgets the history: a client resuming from before now gets `resync history_trimmed`. */
  forgetHistory(): void {
    this.#forgottenUpTo = this.#seq;
    this.#history.length = 0;
  }

  /** Raw SSE text to every open stream (malformed input, unknown frame types, …). */
  send(text: string): void {
    for (const stream of this.#open()) stream.send(text);
  }

  #open(): FakeStream[] {
    return this.#streams.filter((s) => s.open);
  }

  #greet(stream: FakeStream, lastEventId: string | undefined): void {
    const clientId = `c-${++this.#clients}`;
    const position = this.#id(this.#seq);
    const resumed = lastEventId !== undefined;
    stream.send(`retry: 1000\n\n`);
    stream.send(frame({ type: 'connected', client_id: clientId, timestamp: new Date(0).toISOString(), resumed, heartbeat_ms: this.#heartbeatMs }, position));
    if (!resumed) return;
    const from = this.#parse(lastEventId);
    if (from === undefined || from > this.#seq) stream.send(frame({ type: 'resync', reason: 'unknown_id' }));
    else if (from < this.#forgottenUpTo) stream.send(frame({ type: 'resync', reason: 'history_trimmed' }));
    else for (const entry of this.#history) if (entry.seq > from) stream.send(entry.text);
  }

  #id(seq: number): string {
    return `fake-${seq}`;
  }

  #parse(id: string): number | undefined {
    const m = /^fake-(\d+)$/.exec(id);
    return m ? Number(m[1]) : undefined;
  }
}

export function createFakeHub(options?: FakeHubOptions): FakeHub {
  return new FakeHub(options);
}

function frame(payload: unknown, id?: string): string {
  return `${id !== undefined ? `id: ${id}\n` : ''}event: message\ndata: ${JSON.stringify(payload)}\n\n`;
}
