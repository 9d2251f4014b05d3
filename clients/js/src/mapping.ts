/** The profile-driven resolver: the hub's invalidation mapping, in its canonical JSON form
 * (a shipped profile's `<name>.json`, or what the hub serves at `GET /mapping`), applied in the browser.
 * It implements the algorithm of `docs/mapping.md` rule for rule, the same as the Rust
 * resolver (`tidings-protocol` `resolver/resolve.rs`); both run the shared vectors in
 * `fixtures/resolve/`. It does not validate a mapping the way the TOML loader does: the JSON
 * form is already validated and normalised, so a malformed one is refused, not repaired. */
import { dedupePrefixes, type JsonValue, type QueryKey } from './keys.js';
import type { Activity } from './protocol.js';
import { activityKind, kebabType, normalizeType, parentParts, type Resolution, type Resolver } from './resolver.js';

/** The JSON type an id takes in a key (`docs/mapping.md`, *Ids*). */
export type IdType = 'as-published' | 'number' | 'string';

/** The canonical JSON form of a mapping. */
export interface MappingJson {
  format: 1;
  name?: string;
  generic: 'off' | 'kebab-case' | 'as-published';
  resources: Record<string, { aliases: string[]; id: IdType; list: QueryKey[]; detail: QueryKey[] }>;
  parents: Record<string, { aliases: string[]; id: IdType; keys: QueryKey[] }>;
  descriptions: Array<{ prefix: string; keys: QueryKey[] }>;
}

/** Which tier answered, or `null` when none did. */
export type Tier = 'parent' | 'resource' | 'description' | null;

/** A resolution with the tier that produced it (the shape of the shared vectors). */
export interface TieredResolution extends Resolution {
  tier: Tier;
}

export const PLACEHOLDER_ID = '{id}';
export const PLACEHOLDER_PARENT_ID = '{parent_id}';

/** A resolver over one mapping; `resolveWithTier` also says which tier answered. */
export interface MappingResolver extends Resolver {
  resolveWithTier(activity: Activity): TieredResolution;
  readonly mapping: MappingJson;
}

/** Compiles a mapping's JSON form. Throws a `TypeError` naming the field when the value is not
 * a format-1 mapping. */
export function mappingResolver(json: unknown): MappingResolver {
  const mapping = checkMapping(json);
  const resources = index(mapping.resources);
  const parents = index(mapping.parents);
  const generic = mapping.generic === 'off' ? null : mapping.generic;

  function parentTier(activity: Activity): QueryKey[] | null {
    const p = parentParts(activity);
    if (!p) return null;
    const entry = parents.get(normalizeType(p.type));
    if (entry) {
      const id = p.id === undefined ? undefined : convertId(entry.id, p.id);
      const keys = buildAll(entry.keys, PLACEHOLDER_PARENT_ID, id);
      return keys.length > 0 ? keys : null;
    }
    if (!generic || p.id === undefined) return null;
    const id = convertId('as-published', p.id);
    return id === undefined ? null : [[spell(generic, p.type), id]];
  }

  function resourceTier(activity: Activity): Resolution | null {
    const t = usableType(activity.resource?.type);
    if (t === undefined) return null;
    const kind = activityKind(activity);
    const published = resourceIdOf(activity);
    const entry = resources.get(normalizeType(t));
    if (entry) {
      const invalidate = buildAll(entry.list, PLACEHOLDER_ID, undefined);
      const remove: QueryKey[] = [];
      if (kind !== 'created') {
        const id = published === undefined ? undefined : convertId(entry.id, published);
        const details = buildAll(entry.detail, PLACEHOLDER_ID, id);
        (kind === 'deleted' ? remove : invalidate).push(...details);
      }
      return invalidate.length > 0 || remove.length > 0 ? { invalidate, remove } : null;
    }
    if (!generic) return null;
    const list: QueryKey = [spell(generic, t)];
    const invalidate: QueryKey[] = [list];
    const remove: QueryKey[] = [];
    const id = kind === 'created' || published === undefined ? undefined : convertId('as-published', published);
    if (id !== undefined) (kind === 'deleted' ? remove : invalidate).push([...list, id]);
    return { invalidate, remove };
  }

  function descriptionTier(activity: Activity): QueryKey[] | null {
    const d = typeof activity.description === 'string' ? activity.description.trim().toLowerCase() : '';
    if (d === '') return null;
    const hit = mapping.descriptions.find((e) => d.startsWith(e.prefix));
    return hit ? hit.keys.map((k) => [...k]) : null;
  }

  function resolveWithTier(activity: Activity): TieredResolution {
    const parent = parentTier(activity);
    if (parent) return finish(parent, [], 'parent');
    const resource = resourceTier(activity);
    if (resource) return finish(resource.invalidate, resource.remove, 'resource');
    const description = descriptionTier(activity);
    if (description) return finish(description, [], 'description');
    return { invalidate: [], remove: [], tier: null };
  }

  return {
    mapping,
    resolveWithTier,
    resolve(activity) {
      const { invalidate, remove } = resolveWithTier(activity);
      return { invalidate, remove };
    },
  };
}

/** Fetches a hub's mapping (`GET <hub>/mapping`) and compiles it. */
export async function fetchMappingResolver(url: string, init?: RequestInit): Promise<MappingResolver> {
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  return mappingResolver(await response.json());
}

/** The id in the entry's JSON type, or `undefined` when it cannot be converted (the key that
 * needs it is then skipped). `null`, arrays and objects are never ids. */
export function convertId(type: IdType, id: unknown): JsonValue | undefined {
  if (id === null || typeof id === 'object' || (typeof id !== 'string' && typeof id !== 'number' && typeof id !== 'boolean')) return undefined;
  switch (type) {
    case 'as-published':
      return id;
    case 'number':
      if (typeof id === 'number') return id;
      return typeof id === 'string' && /^-?[0-9]+$/.test(id) ? Number(id) : undefined;
    case 'string':
      if (typeof id === 'string') return id;
      return typeof id === 'number' ? String(id) : undefined;
  }
}

interface Entry {
  aliases: string[];
  id: IdType;
}

/** Every name and alias of a table, to its entry. */
function index<E extends Entry>(table: Record<string, E>): Map<string, E> {
  const out = new Map<string, E>();
  for (const [name, entry] of Object.entries(table)) {
    for (const n of [name, ...entry.aliases]) out.set(normalizeType(n), entry);
  }
  return out;
}

/** Every key of a set with the placeholder replaced by `id`; keys needing a missing id are
 * skipped. */
function buildAll(keys: readonly QueryKey[], placeholder: string, id: JsonValue | undefined): QueryKey[] {
  const out: QueryKey[] = [];
  for (const key of keys) {
    if (key.includes(placeholder) && id === undefined) continue;
    out.push(key.map((e) => (e === placeholder ? (id as JsonValue) : e)));
  }
  return out;
}

function spell(generic: 'kebab-case' | 'as-published', type: string): string {
  return generic === 'kebab-case' ? kebabType(type) : type;
}

/** A type that names something: a string, not empty and not `-` once trimmed. */
function usableType(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const t = value.trim();
  return t === '' || t === '-' ? undefined : t;
}

/** `metadata.id` unless missing or `null`, else `resource.id` unless missing or `null`. */
function resourceIdOf(activity: Activity): unknown {
  const m: unknown = activity.metadata?.id;
  if (m !== undefined && m !== null) return m;
  const r: unknown = activity.resource?.id;
  return r === null ? undefined : r;
}

function finish(invalidate: QueryKey[], remove: QueryKey[], tier: Tier): TieredResolution {
  return { invalidate: dedupePrefixes(invalidate), remove: dedupePrefixes(remove), tier };
}

function checkMapping(json: unknown): MappingJson {
  const fail = (field: string, what: string): never => {
    throw new TypeError(`mapping: ${field}: ${what}`);
  };
  if (!isRecord(json)) return fail('(root)', 'expected an object');
  if (json.format !== 1) fail('format', `expected 1, got ${JSON.stringify(json.format)}`);
  if (!['off', 'kebab-case', 'as-published'].includes(json.generic as string)) fail('generic', 'expected "off", "kebab-case" or "as-published"');
  const keySet = (v: unknown, field: string): void => {
    if (!Array.isArray(v) || !v.every((k) => Array.isArray(k) && k.length > 0)) fail(field, 'expected an array of non-empty keys');
  };
  const idType = (v: unknown, field: string): void => {
    if (!['as-published', 'number', 'string'].includes(v as string)) fail(field, 'expected "as-published", "number" or "string"');
  };
  for (const [table, sets] of [['resources', ['list', 'detail']], ['parents', ['keys']]] as const) {
    const t = json[table];
    if (!isRecord(t)) return fail(table, 'expected an object');
    for (const [name, e] of Object.entries(t)) {
      const at = `${table}.${JSON.stringify(name)}`;
      if (!isRecord(e)) return fail(at, 'expected an object');
      if (!Array.isArray(e.aliases) || !e.aliases.every((a) => typeof a === 'string')) fail(`${at}.aliases`, 'expected an array of strings');
      idType(e.id, `${at}.id`);
      for (const s of sets) keySet(e[s], `${at}.${s}`);
    }
  }
  if (!Array.isArray(json.descriptions)) return fail('descriptions', 'expected an array');
  json.descriptions.forEach((d: unknown, i) => {
    if (!isRecord(d) || typeof d.prefix !== 'string') fail(`descriptions[${i}]`, 'expected {prefix, keys}');
    keySet((d as Record<string, unknown>).keys, `descriptions[${i}].keys`);
  });
  return json as unknown as MappingJson;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
