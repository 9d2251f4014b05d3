/** Runs every shared resolver vector in `fixtures/resolve/` (the Rust runner,
 * `crates/tidings-protocol/tests/resolve_vectors.rs`, runs the same files) through the
 * profile-driven resolver over `crates/tidings-protocol/profiles/<profile>.json`. One test per case, so a failure is
 * reported by the case's name; the count check keeps a moved folder from passing silently. */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { mappingResolver, type MappingResolver } from '../src/mapping.js';
import type { Activity } from '../src/protocol.js';

interface Case {
  name: string;
  note?: string;
  profile: string;
  activity: Activity;
  expected: unknown;
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const DIR = join(ROOT, 'fixtures/resolve');
const files = readdirSync(DIR).filter((f) => f.endsWith('.json')).sort();
const cases = files.flatMap((file) => (JSON.parse(readFileSync(join(DIR, file), 'utf8')) as Case[]).map((c) => ({ file, ...c })));

const resolvers = new Map<string, MappingResolver>();
function resolverFor(profile: string): MappingResolver {
  let r = resolvers.get(profile);
  if (!r) {
    r = mappingResolver(JSON.parse(readFileSync(join(ROOT, 'crates/tidings-protocol/profiles', `${profile}.json`), 'utf8')));
    resolvers.set(profile, r);
  }
  return r;
}

describe('shared resolver vectors', () => {
  it('finds the vectors, with unique names', () => {
    expect(cases.length).toBeGreaterThan(100);
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  for (const c of cases) {
    it(`${c.file}: ${c.name}`, () => {
      // Through JSON, as the vectors compare: `42` and `"42"` stay different.
      const actual: unknown = JSON.parse(JSON.stringify(resolverFor(c.profile).resolveWithTier(c.activity)));
      expect(actual).toStrictEqual(c.expected);
    });
  }
});

describe('mapping JSON checks', () => {
  it('refuses what is not a format-1 mapping, naming the field', () => {
    const ok = JSON.parse(readFileSync(join(ROOT, 'crates/tidings-protocol/profiles/generic-kebab.json'), 'utf8')) as Record<string, unknown>;
    expect(() => mappingResolver(ok)).not.toThrow();
    expect(() => mappingResolver({ ...ok, format: 2 })).toThrow(/format/);
    expect(() => mappingResolver({ ...ok, generic: 'yes' })).toThrow(/generic/);
    expect(() => mappingResolver({ ...ok, resources: { a: { aliases: [], id: 'number', list: [[]], detail: [] } } })).toThrow(/resources\."a"\.list/);
    expect(() => mappingResolver({ ...ok, descriptions: [{ prefix: 'x' }] })).toThrow(/descriptions\[0\]\.keys/);
  });
});
