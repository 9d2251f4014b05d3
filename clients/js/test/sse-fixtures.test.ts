/** Runs the shared SSE parsing vectors in `fixtures/sse/` (one JSON file per group, an array of
 * cases) through the SDK's decoder: once as given and once split at every byte, so chunk
 * boundaries inside lines, CRLF pairs and multi-byte characters are all covered. */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SseDecoder } from '../src/sse.js';

interface Case {
  name: string;
  input?: string;
  chunks?: string[];
  expected: {
    events: Array<{ event?: string | null; data: string; id?: string | null }>;
    retry?: number | null;
    last_id?: string | null;
  };
}

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../../../fixtures/sse');

/** Decodes byte chunks; event fields are normalised to the fixture shape (absent → null). */
function run(chunks: Uint8Array[]) {
  const events: Array<{ event: string | null; data: string; id: string | null }> = [];
  const decoder = new SseDecoder({
    onEvent: (e) => events.push({ event: e.event ?? null, data: e.data, id: e.id ?? null }),
  });
  for (const chunk of chunks) decoder.feedBytes(chunk);
  return { events, retry: decoder.retry ?? null, last_id: decoder.lastId ?? null };
}

function normalise(expected: Case['expected']) {
  return {
    events: expected.events.map((e) => ({ event: e.event ?? null, data: e.data, id: e.id ?? null })),
    retry: expected.retry ?? null,
    last_id: expected.last_id === '' ? null : (expected.last_id ?? null),
  };
}

const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json')).sort();

it('finds the shared SSE vectors', () => {
  expect(files).toContain('js-basic.json');
});

for (const file of files) {
  const cases = JSON.parse(readFileSync(join(FIXTURES, file), 'utf8')) as Case[];
  describe(`fixtures/sse/${file}`, () => {
    for (const c of cases) {
      const encoder = new TextEncoder();
      const chunks = (c.chunks ?? [c.input ?? '']).map((s) => encoder.encode(s));
      const whole = concat(chunks);
      const expected = normalise(c.expected);

      it(`${c.name} (as given)`, () => {
        expect(run(chunks)).toEqual(expected);
      });

      it(`${c.name} (split at every byte)`, () => {
        for (let at = 0; at <= whole.length; at++) {
          expect(run([whole.subarray(0, at), whole.subarray(at)]), `split at byte ${at}`).toEqual(expected);
        }
        expect(run([...whole].map((b) => Uint8Array.of(b))), 'one byte per chunk').toEqual(expected);
      });
    }
  });
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
