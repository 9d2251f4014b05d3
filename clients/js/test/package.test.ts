import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SDK_VERSION } from '../src/version.js';

describe('package', () => {
  it('SDK_VERSION matches package.json (it names the cross-tab lock and channel)', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(SDK_VERSION).toBe(pkg.version);
  });

  it('the core entry imports no framework and no TanStack package', () => {
    const dir = new URL('../src/', import.meta.url);
    for (const file of ['index', 'tidings', 'stream', 'sse', 'protocol', 'keys', 'resolver', 'relay', 'backoff', 'env', 'version', 'testing']) {
      const text = readFileSync(new URL(`${file}.ts`, dir), 'utf8');
      const imports = [...text.matchAll(/from '([^']+)'/g)].map((m) => m[1]);
      expect(imports.filter((i) => !i!.startsWith('./') && i !== 'eventsource-parser'), file).toEqual([]);
    }
  });
});
