import { describe, expect, it } from 'vitest';
import { BACKOFF_MAX_MS, defaultBackoff, fullJitter, parseRetryAfter, reconnectDelay } from '../src/backoff.js';

describe('backoff', () => {
  it('full jitter stays within [0, min(cap, base·2^attempt)) for any random value and attempt', () => {
    for (const attempt of [0, 1, 2, 5, 10, 31, 1_000, -3]) {
      for (const r of [0, 1e-9, 0.25, 0.5, 0.999999, 1, NaN, -1, 7]) {
        const d = fullJitter(attempt, 1_000, 30_000, () => r);
        const ceiling = Math.min(30_000, 1_000 * 2 ** Math.max(attempt, 0));
        expect(Number.isFinite(d)).toBe(true);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
      }
    }
  });

  it('is spread, not synchronised: different random draws give different delays', () => {
    const delays = new Set([0.1, 0.3, 0.5, 0.7, 0.9].map((r) => fullJitter(3, 1_000, 30_000, () => r)));
    expect(delays.size).toBe(5);
  });

  it('the hub retry: value is the first step', () => {
    expect(reconnectDelay({ attempt: 0, retryHintMs: 2_000 }, defaultBackoff, () => 0.999)).toBe(1_998);
    expect(reconnectDelay({ attempt: 2, retryHintMs: 2_000 }, defaultBackoff, () => 0.999)).toBe(7_992);
  });

  it('closed.retry_ms is used as given (already jittered by the hub), capped', () => {
    expect(reconnectDelay({ attempt: 9, closedRetryMs: 1_500 }, defaultBackoff, () => 0.999)).toBe(1_500);
    expect(reconnectDelay({ attempt: 0, closedRetryMs: 10 * 60_000 }, defaultBackoff, () => 0)).toBe(BACKOFF_MAX_MS);
  });

  it('Retry-After is a floor under the jittered delay', () => {
    expect(reconnectDelay({ attempt: 0, retryAfterMs: 5_000 }, defaultBackoff, () => 0.5)).toBe(5_000);
    expect(reconnectDelay({ attempt: 5, retryAfterMs: 5_000 }, defaultBackoff, () => 0.5)).toBe(15_000);
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-03-03T19:58:00Z');
    expect(parseRetryAfter('7', now)).toBe(7_000);
    expect(parseRetryAfter('Tue, 03 Mar 2026 19:58:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Tue, 03 Mar 2026 19:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });
});
