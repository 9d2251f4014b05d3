import { hashKey, partialMatchKey } from '@tanstack/query-core';
import { describe, expect, it } from 'vitest';
import { dedupePrefixes, keyCovers, keyHash, plainKey, plainKeys, type QueryKey } from '../src/keys.js';
import type { Activity } from '../src/protocol.js';
import { genericResolver, kebabType } from '../src/resolver.js';

describe('keys', () => {
  const samples: QueryKey[] = [
    ['app'],
    ['app', 1],
    ['app', '1'],
    ['app', 1, 'rules'],
    ['app', { page: 1, q: 'x' }],
    ['app', { q: 'x', page: 1 }],
    ['app', { page: 1 }],
    ['app', null],
    ['apps'],
    [],
  ];

  it('matches query-core: hashing and partial matching agree on every pair', () => {
    for (const a of samples) {
      expect(keyHash(a)).toBe(hashKey(a as unknown[]));
      for (const b of samples) {
        expect(keyCovers(b, a), `${JSON.stringify(b)} covers ${JSON.stringify(a)}`).toBe(partialMatchKey(a as unknown[], b as unknown[]));
      }
    }
  });

  it('numbers and strings are strict', () => {
    expect(keyCovers(['app', 42], ['app', '42'])).toBe(false);
    expect(keyCovers(['app', '42'], ['app', '42', 'x'])).toBe(true);
  });

  it('drops duplicates and keys covered by a shorter prefix, keeping first order', () => {
    expect(dedupePrefixes([['a', 1], ['b'], ['a'], ['b'], ['a', '1']])).toEqual([['b'], ['a']]);
    expect(dedupePrefixes([['x', 1], ['x', '1']])).toEqual([['x', 1], ['x', '1']]);
  });

  it('plain keys: functions, undefined and non-arrays never pass (protocol C13)', () => {
    expect(plainKey(['app', () => 1])).toBeUndefined();
    expect(plainKey(['app', undefined])).toBeUndefined();
    expect(plainKey('app')).toBeUndefined();
    expect(plainKey(['app', NaN])).toBeUndefined();
    const proxied = new Proxy(['app', { id: 1 }], {});
    const copy = plainKey(proxied)!;
    expect(copy).toEqual(['app', { id: 1 }]);
    expect(() => structuredClone(copy)).not.toThrow();
    const dropped: unknown[] = [];
    expect(plainKeys([['ok'], () => 1, ['bad', Symbol('x')]], (e) => dropped.push(e))).toEqual([['ok']]);
    expect(dropped).toHaveLength(2);
  });
});

describe('generic resolver', () => {
  const r = (activity: object) => genericResolver.resolve(activity as Activity);

  it('spells types in kebab-case whatever the input spelling', () => {
    expect(kebabType('Edge Application')).toBe('edge-application');
    expect(kebabType('edge_application')).toBe('edge-application');
    expect(kebabType(' edge--Application ')).toBe('edge-application');
  });

  it('parent wins: the parent detail key (data.parent or data.resource.parent)', () => {
    expect(r({ activity_type: 'created', resource: { type: 'rule_engine' }, parent: { type: 'edge_application', id: 12345 } })).toEqual({
      invalidate: [['edge-application', 12345]],
      remove: [],
    });
    expect(r({ activity_type: 'deleted', resource: { type: 'rule', id: 3, parent: { type: 'Edge Application', id: '7' } } })).toEqual({
      invalidate: [['edge-application', '7']],
      remove: [],
    });
  });

  it('a parent without a usable type or id falls through to the resource', () => {
    expect(r({ activity_type: 'created', resource: { type: 'domain' }, parent: { type: '-', id: 1 } }).invalidate).toEqual([['domain']]);
    expect(r({ activity_type: 'created', resource: { type: 'domain' }, parent: { type: 'x', id: null } }).invalidate).toEqual([['domain']]);
  });

  it('edited: list key, which covers the detail', () => {
    expect(r({ activity_type: 'edited', resource: { type: 'Edge Application' }, metadata: { id: '7' } })).toEqual({
      invalidate: [['edge-application']],
      remove: [],
    });
    expect(r({ activity_type: 'updated', resource: { type: 'domain', id: 5 } }).invalidate).toEqual([['domain']]);
  });

  it('deleted: list invalidated, detail removed (metadata.id before resource.id, JSON type kept)', () => {
    expect(r({ activity_type: 'deleted', resource: { type: 'edge_application', id: 9 } })).toEqual({
      invalidate: [['edge-application']],
      remove: [['edge-application', 9]],
    });
    expect(r({ activity_type: 'deleted', resource: { type: 'domain', id: 9 }, metadata: { id: '10' } }).remove).toEqual([['domain', '10']]);
  });

  it('created: list only', () => {
    expect(r({ activity_type: 'created', resource: { type: 'domain', id: 4 } })).toEqual({ invalidate: [['domain']], remove: [] });
  });

  it('nothing to go on: nothing resolved', () => {
    expect(r({ activity_type: 'edited' })).toEqual({ invalidate: [], remove: [] });
    expect(r({ resource: { type: '  ' } })).toEqual({ invalidate: [], remove: [] });
  });
});
