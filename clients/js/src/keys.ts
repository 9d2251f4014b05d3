/** Query keys as the hub sends them: JSON arrays, matched by prefix the way TanStack Query
 * matches them. This module is pure data handling; it does not import TanStack so the core
 * stays framework-free, and mirrors query-core's `hashKey`/`partialMatchKey` rules instead
 * (checked against query-core in the unit tests). */

/** A JSON value as it can appear inside a key. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A query key: a JSON array. */
export type QueryKey = readonly JsonValue[];

/** A stable text for a key, equal for keys TanStack considers equal (object fields sorted,
 * like query-core's `hashKey`). */
export function keyHash(key: QueryKey): string {
  return JSON.stringify(key, (_, value: unknown) =>
    isPlainObject(value)
      ? Object.keys(value)
          .sort()
          .reduce<Record<string, unknown>>((out, k) => {
            out[k] = value[k];
            return out;
          }, {})
      : value,
  );
}

/** Whether `prefix` matches `key` under TanStack's partial matching: every element of
 * `prefix` equals the element at the same position of `key` (objects match when every field of
 * the prefix's object matches). Types are strict: `"42"` does not match `42`. */
export function keyCovers(prefix: QueryKey, key: QueryKey): boolean {
  return partialMatch(key, prefix);
}

function partialMatch(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b) return false;
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    return Object.keys(b).every((k) => partialMatch((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return false;
}

/** Removes duplicate keys and every key covered by another key of the list, keeping the first
 * occurrence order (the same rule as the hub's resolver). */
export function dedupePrefixes(keys: readonly QueryKey[]): QueryKey[] {
  const out: QueryKey[] = [];
  for (const key of keys) {
    if (out.some((k) => keyCovers(k, key))) continue;
    for (let i = out.length - 1; i >= 0; i--) {
      if (keyCovers(key, out[i]!)) out.splice(i, 1);
    }
    out.push(key);
  }
  return out;
}

/** A key as plain JSON data, or `undefined` when the value is not a JSON array. Functions,
 * class instances and reactive proxies never get through: every key the SDK hands to a cache or
 * to another tab went through this JSON round trip. */
export function plainKey(value: unknown): QueryKey | undefined {
  if (!Array.isArray(value)) return undefined;
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    return undefined;
  }
  if (text === undefined) return undefined;
  const copy: unknown = JSON.parse(text);
  // JSON.stringify turns functions and undefined inside arrays into null; refuse such keys
  // rather than invalidate something nobody asked for.
  return Array.isArray(copy) && sameShape(value, copy) ? (copy as QueryKey) : undefined;
}

/** A list of keys as plain data; entries that are not keys are dropped and reported. */
export function plainKeys(value: unknown, onInvalid?: (entry: unknown) => void): QueryKey[] {
  if (!Array.isArray(value)) {
    if (value !== undefined && value !== null) onInvalid?.(value);
    return [];
  }
  const out: QueryKey[] = [];
  for (const entry of value) {
    const key = plainKey(entry);
    if (key) out.push(key);
    else onInvalid?.(entry);
  }
  return out;
}

function sameShape(original: unknown, copy: unknown): boolean {
  if (copy === null) return original === null;
  if (Array.isArray(copy)) {
    return Array.isArray(original) && original.length === copy.length && copy.every((c, i) => sameShape(original[i], c));
  }
  if (typeof copy === 'object') {
    return typeof original === 'object' && original !== null && Object.keys(copy).every((k) => sameShape((original as Record<string, unknown>)[k], (copy as Record<string, unknown>)[k]));
  }
  return typeof original === typeof copy;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}
