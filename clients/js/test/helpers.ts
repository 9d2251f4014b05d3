/** Test doubles for the SDK's injected edges: a manual clock that counts pending timers, a
 * scripted hub behind a fetch function that counts open connections, and an event target that
 * counts listeners. */
import { silentLogger, type Clock, type EventTargetLike, type Logger } from '../src/env.js';
import { Tidings } from '../src/tidings.js';

/** Lets pending promise callbacks and stream reads run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

export class FakeClock implements Clock {
  t = 0;
  #seq = 0;
  readonly timers = new Map<number, { at: number; fn: () => void }>();

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.#seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  now(): number {
    return this.t;
  }
  get pending(): number {
    return this.timers.size;
  }
  /** Moves time forward, firing due timers in order and settling after each. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** One streamed response the test writes to (the same one `tidings/testing` uses). */
export { FakeStream as FakeConnection } from '../src/testing.js';
import { FakeStream as FakeConnection } from '../src/testing.js';

export interface RecordedRequest {
  url: string;
  headers: Record<string, string>;
  signal: AbortSignal | undefined;
  connection?: FakeConnection;
}

type Outcome = Response | 'stream' | 'hang' | 'network-error';
type Handler = ((request: RecordedRequest) => Outcome | Promise<Outcome>) | Outcome;

/** A scripted hub: each request takes the next handler (default: open a stream). */
export class FakeHub {
  readonly requests: RecordedRequest[] = [];
  readonly #script: Handler[] = [];
  readonly #hanging: Array<() => void> = [];

  then(...handlers: Handler[]): this {
    this.#script.push(...handlers);
    return this;
  }

  readonly fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((v, k) => (headers[k] = v));
    const request: RecordedRequest = { url: String(input), headers, signal: init?.signal ?? undefined };
    this.requests.push(request);
    const handler = this.#script.shift() ?? 'stream';
    const outcome: Outcome = typeof handler === 'function' ? await handler(request) : handler;
    if (outcome === 'network-error') throw new TypeError('fetch failed');
    if (outcome === 'hang') {
      return new Promise<Response>((_, reject) => {
        const fail = () => reject(new DOMException('The operation was aborted.', 'AbortError'));
        request.signal?.addEventListener('abort', fail);
        this.#hanging.push(fail);
      });
    }
    if (outcome === 'stream') {
      if (request.signal?.aborted) throw new DOMException('The operation was aborted.', 'AbortError');
      const connection = new FakeConnection(request.signal);
      request.connection = connection;
      return new Response(connection.body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
    }
    return outcome;
  };

  get last(): RecordedRequest {
    const r = this.requests.at(-1);
    if (!r) throw new Error('no request yet');
    return r;
  }
  get conn(): FakeConnection {
    const c = this.last.connection;
    if (!c) throw new Error('last request has no stream');
    return c;
  }
  get openConnections(): number {
    return this.requests.filter((r) => r.connection?.open).length;
  }
}

export function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

export class CountingTarget implements EventTargetLike {
  readonly listeners = new Map<string, Set<(e: Event) => void>>();
  addEventListener(type: string, l: (e: Event) => void): void {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type)!.add(l);
  }
  removeEventListener(type: string, l: (e: Event) => void): void {
    this.listeners.get(type)?.delete(l);
  }
  dispatch(type: string, event: Event = new Event(type)): void {
    for (const l of [...(this.listeners.get(type) ?? [])]) l(event);
  }
  get count(): number {
    let n = 0;
    for (const s of this.listeners.values()) n += s.size;
    return n;
  }
}

export class RecordingLogger implements Logger {
  readonly lines: Array<{ level: string; message: string }> = [];
  debug(message: string): void {
    this.lines.push({ level: 'debug', message });
  }
  warn(message: string): void {
    this.lines.push({ level: 'warn', message });
  }
  error(message: string): void {
    this.lines.push({ level: 'error', message });
  }
  has(level: string, part: string): boolean {
    return this.lines.some((l) => l.level === level && l.message.includes(part));
  }
}

/** SSE text for one hub frame. */
export function frame(payload: unknown, id?: string): string {
  return `${id !== undefined ? `id: ${id}\n` : ''}event: message\ndata: ${JSON.stringify(payload)}\n\n`;
}

export const connected = (id: string, heartbeatMs = 1_000) =>
  frame({ type: 'connected', client_id: 'c1', timestamp: 't', heartbeat_ms: heartbeatMs }, id);
export const activity = (id: string, data: unknown, invalidate: unknown[] = [], remove?: unknown[]) =>
  frame({ type: 'activity', data, invalidate, ...(remove ? { remove } : {}) }, id);
export const ping = () => frame({ type: 'ping', timestamp: 't' });

interface LockRequest {
  callback: (lock: unknown) => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** An in-memory Web Locks manager with the semantics the SDK relies on: exclusive grant in
 * request order, `signal` cancels a queued request, `steal` releases the holder (whose request
 * promise rejects with AbortError) and is granted at once. */
export class FakeLocks {
  readonly held = new Map<string, LockRequest>();
  readonly queues = new Map<string, LockRequest[]>();

  request(name: string, options: { signal?: AbortSignal; steal?: boolean }, callback: (lock: unknown) => unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const abortError = () => new DOMException('The request was aborted.', 'AbortError');
      if (options.steal && options.signal) return reject(new DOMException('steal with signal', 'NotSupportedError'));
      if (options.signal?.aborted) return reject(abortError());
      const request: LockRequest = { callback, resolve, reject };
      if (options.steal) {
        const holder = this.held.get(name);
        this.held.delete(name);
        holder?.reject(abortError());
        this.#grant(name, request);
        return;
      }
      options.signal?.addEventListener('abort', () => {
        const queue = this.queues.get(name) ?? [];
        const at = queue.indexOf(request);
        if (at >= 0) {
          queue.splice(at, 1);
          reject(abortError());
        }
      });
      if (!this.queues.has(name)) this.queues.set(name, []);
      this.queues.get(name)!.push(request);
      this.#pump(name);
    });
  }

  #grant(name: string, request: LockRequest): void {
    this.held.set(name, request);
    Promise.resolve()
      .then(() => request.callback({ name, mode: 'exclusive' }))
      .then(
        (value) => {
          if (this.held.get(name) === request) this.held.delete(name);
          request.resolve(value);
          this.#pump(name);
        },
        (error: unknown) => {
          if (this.held.get(name) === request) this.held.delete(name);
          request.reject(error);
          this.#pump(name);
        },
      );
  }

  #pump(name: string): void {
    if (this.held.has(name)) return;
    const next = this.queues.get(name)?.shift();
    if (next) this.#grant(name, next);
  }

  get waiting(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }
}

/** One tab on its own (no cross-tab), against a fake hub, on a fake clock. */
export function solo(sessionKey: string, hub = new FakeHub(), clock = new FakeClock()) {
  const tidings = new Tidings({
    url: 'http://hub.test/events/stream',
    sessionKey,
    fetch: hub.fetch,
    clock,
    locks: null,
    onlineTarget: null,
    pageTarget: null,
    logger: silentLogger,
  });
  return { tidings, hub, clock };
}
