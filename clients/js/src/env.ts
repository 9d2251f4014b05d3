/** Injectable edges of the SDK: clock, randomness and logging. Everything that waits or
 * logs goes through these so tests can drive time and count what is left behind. */

/** Timers and the current time. The default uses the global timers and `Date.now`. */
export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export const systemClock: Clock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

/** Where the SDK reports what it skipped or why it stopped. Defaults to `console`. */
export interface Logger {
  debug(message: string, ...details: unknown[]): void;
  warn(message: string, ...details: unknown[]): void;
  error(message: string, ...details: unknown[]): void;
}

const PREFIX = '[tidings]';

export const consoleLogger: Logger = {
  debug: (m, ...d) => console.debug(PREFIX, m, ...d),
  warn: (m, ...d) => console.warn(PREFIX, m, ...d),
  error: (m, ...d) => console.error(PREFIX, m, ...d),
};

/** A logger that drops everything; handy in tests and for hosts with their own reporting. */
export const silentLogger: Logger = { debug() {}, warn() {}, error() {} };

/** The subset of `EventTarget` the SDK listens on (`window`, `document`). */
export interface EventTargetLike {
  addEventListener(type: string, listener: (event: Event) => void): void;
  removeEventListener(type: string, listener: (event: Event) => void): void;
}

/** A one-shot timer that can be re-armed and cancelled; owns at most one pending handle. */
export class Timer {
  #handle: unknown = undefined;
  #armed = false;

  constructor(
    private readonly clock: Clock,
    private readonly fn: () => void,
  ) {}

  arm(ms: number): void {
    this.cancel();
    this.#armed = true;
    this.#handle = this.clock.setTimeout(() => {
      this.#armed = false;
      this.#handle = undefined;
      this.fn();
    }, ms);
  }

  cancel(): void {
    if (this.#armed) this.clock.clearTimeout(this.#handle);
    this.#armed = false;
    this.#handle = undefined;
  }

  get armed(): boolean {
    return this.#armed;
  }
}

/** No `window` and no `self`: a server rendering a page, not a browser tab or a worker. */
export function isServer(): boolean {
  return typeof window === 'undefined' && typeof self === 'undefined';
}
