/** Reconnect delays: exponential backoff with full jitter, capped, shaped by what the hub
 * asked for (`retry:`, `closed.retry_ms`, `Retry-After`). Pure arithmetic. */

/** First backoff step before the hub has sent a `retry:` line. */
export const BACKOFF_INITIAL_MS = 1_000;
/** Ceiling of any computed backoff step (docs/protocol.md C3: capped at 30 s). */
export const BACKOFF_MAX_MS = 30_000;
/** Exponent bound, so `2 ** attempt` stays finite however long an outage lasts. */
const BACKOFF_EXPONENT_MAX = 30;

export interface BackoffOptions {
  /** First step in milliseconds; a `retry:` line from the hub replaces it. */
  initialMs: number;
  /** Ceiling in milliseconds. */
  maxMs: number;
}

export const defaultBackoff: BackoffOptions = { initialMs: BACKOFF_INITIAL_MS, maxMs: BACKOFF_MAX_MS };

/** Full jitter: a uniform delay in `[0, min(max, base · 2^attempt))`. Spreads a crowd of
 * clients that lost the hub at the same moment instead of bringing them back together. */
export function fullJitter(attempt: number, baseMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), BACKOFF_EXPONENT_MAX));
  return Math.floor(clamp01(random()) * ceiling);
}

/** What the last failure told us about when to come back. */
export interface RetryAdvice {
  /** Consecutive failed attempts so far (0 for the first retry). */
  attempt: number;
  /** The stream's last `retry:` value. */
  retryHintMs?: number | undefined;
  /** `retry_ms` of a `closed` frame: already jittered by the hub, used as is (capped). */
  closedRetryMs?: number | undefined;
  /** `Retry-After` of a 429/503: a floor, the jittered backoff may be longer. */
  retryAfterMs?: number | undefined;
}

export function reconnectDelay(advice: RetryAdvice, options: BackoffOptions, random: () => number): number {
  if (advice.closedRetryMs !== undefined) return Math.min(advice.closedRetryMs, options.maxMs);
  const base = advice.retryHintMs ?? options.initialMs;
  const jittered = fullJitter(advice.attempt, base, options.maxMs, random);
  return advice.retryAfterMs !== undefined ? Math.max(advice.retryAfterMs, jittered) : jittered;
}

/** `Retry-After` as milliseconds: delta-seconds or an HTTP date; `undefined` when absent or
 * unreadable. */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1_000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(Math.max(x, 0), 0.999_999_999) : 0;
}
