/** Local key resolution, for activities the hub sent without `invalidate` keys (no mapping
 * configured on the hub). The `Resolver` interface is the plug: the generic default lives here;
 * a profile-driven resolver (the shared mapping file) implements the same interface. Mirrors
 * the hub's generic resolver (`tidings-protocol` `resolver.rs`) rule for rule; `mapping.ts` is
 * the profile-driven one. */
import { dedupePrefixes, plainKey, type JsonValue, type QueryKey } from './keys.js';
import type { Activity } from './protocol.js';

export interface Resolution {
  /** Keys to invalidate (active queries refetch). */
  invalidate: QueryKey[];
  /** Detail keys of deleted resources: removed from the cache, not refetched (a refetch would
   * hit a 404). */
  remove: QueryKey[];
}

export interface Resolver {
  resolve(activity: Activity): Resolution;
}

/** `created`, `edited` (also `updated` and anything unknown) and `deleted`. */
export type ActivityKind = 'created' | 'edited' | 'deleted';

export function activityKind(activity: Activity): ActivityKind {
  const t = typeof activity.activity_type === 'string' ? activity.activity_type.trim().toLowerCase() : '';
  return t === 'created' || t === 'deleted' ? t : 'edited';
}

/** One spelling for every way a type is written: lower case, words separated by one space
 * (`Edge Application`, `edge-application` and `edge_application` are one type). */
export function normalizeType(type: string): string {
  return type
    .split(/[\s_-]+/)
    .filter((w) => w !== '')
    .map((w) => w.toLowerCase())
    .join(' ');
}

/** A type as the generic default spells it in a key: kebab-case (`edge-application`). */
export function kebabType(type: string): string {
  return normalizeType(type).replace(/ /g, '-');
}

/** The generic default: `[parent-type, parent.id]` when the activity names a parent; else
 * `[type]` (list) and `[type, metadata.id ?? resource.id]` (detail), where a deleted resource's
 * detail is removed and a created one needs no detail. Keys covered by a shorter key are
 * dropped, so an edit invalidates the list key, whose prefix also covers the detail. */
export const genericResolver: Resolver = {
  resolve(activity) {
    const parent = parentOf(activity);
    if (parent) return finish([[kebabType(parent.type), parent.id]], []);
    const type = activity.resource?.type;
    if (typeof type === 'string' && type.trim() !== '') {
      const list: QueryKey = [kebabType(type)];
      const invalidate: QueryKey[] = [list];
      const remove: QueryKey[] = [];
      const id = resourceId(activity);
      if (id !== undefined) {
        const detail: QueryKey = [...list, id];
        const kind = activityKind(activity);
        if (kind === 'deleted') remove.push(detail);
        else if (kind === 'edited') invalidate.push(detail);
      }
      return finish(invalidate, remove);
    }
    return { invalidate: [], remove: [] };
  },
};

/** The parent as `data.parent` or `data.resource.parent`, when it has a usable type and id. */
export function parentOf(activity: Activity): { type: string; id: JsonValue } | undefined {
  const p = parentParts(activity);
  const id = p ? jsonScalar(p.id) : undefined;
  return p && id !== undefined ? { type: p.type, id } : undefined;
}

/** The parent's trimmed type (a string, not empty and not `-`) and its id as published
 * (`undefined` when missing or `null`), read from `data.parent` if it is an object, else from
 * `data.resource.parent`. */
export function parentParts(activity: Activity): { type: string; id: unknown } | undefined {
  const p = isObject(activity.parent) ? activity.parent : activity.resource?.parent;
  if (!isObject(p)) return undefined;
  const type = typeof p.type === 'string' ? p.type.trim() : '';
  if (type === '' || type === '-') return undefined;
  return { type, id: p.id === null ? undefined : p.id };
}

/** `metadata.id`, else `resource.id`. */
export function resourceId(activity: Activity): JsonValue | undefined {
  return jsonScalar(activity.metadata?.id) ?? jsonScalar(activity.resource?.id);
}

function jsonScalar(value: unknown): JsonValue | undefined {
  if (value === null || value === undefined) return undefined;
  const key = plainKey([value]);
  return key ? key[0] : undefined;
}

function finish(invalidate: QueryKey[], remove: QueryKey[]): Resolution {
  return { invalidate: dedupePrefixes(invalidate), remove: dedupePrefixes(remove) };
}

function isObject(value: unknown): value is { type?: unknown; id?: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
