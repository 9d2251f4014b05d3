/** Runs the shared SSE parsing vectors in `fixtures/sse/` (format: fixtures/sse/README.md)
 * through the SDK's decoder: as given, split in two at every byte, and one byte at a time, so
 * chunk boundaries inside lines, CRLF pairs and multi-byte characters are all covered. */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SseDecoder } from '../src/sse.js';

interface Expected {
  events: Array<{ event: string; data: string; id: string }>;
  retry: number | null;
  last_id: string;
  errors?: number;
}

interface Case {
  name: string;
  input?: string;
  chunks?: string[];
  max_bytes?: number;
  expected: Expected;
}

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../../../fixtures/sse');
/** Above this size, split at every offset of the first and last KiB and every 997th byte. */
const FULL_SPLIT_BYTES_MAX = 16 * 1024;

/** Decodes byte chunks into the fixture shape: `id` is the last event id at dispatch. */
function run(chunks: Uint8Array[], maxBytes?: number): Expected {
  const events: Expected['events'] = [];
  let errors = 0;
  const decoder: SseDecoder = new SseDecoder(
    {
      onEvent: (e) => events.push({ event: e.event || 'message', data: e.data, id: decoder.lastId ?? '' }),
      onOversize: () => errors++,
    },
    maxBytes === undefined ? {} : { maxBytes },
  );
  for (const chunk of chunks) decoder.feedBytes(chunk);
  return { events, retry: decoder.retry ?? null, last_id: decoder.lastId ?? '', errors };
}

function splits(length: number): number[] {
  if (length <= FULL_SPLIT_BYTES_MAX) return Array.from({ length: length + 1 }, (_, i) => i);
  const out = new Set<number>();
  for (let i = 0; i <= 1024; i++) {
    out.add(i);
    out.add(length - i);
  }
  for (let i = 0; i <= length; i += 997) out.add(i);
  return [...out].sort((a, b) => a - b);
}

const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json')).sort();

it('finds the shared SSE vectors', () => {
  expect(files.length).toBeGreaterThanOrEqual(10);
  expect(files).toContain('limits.json');
});

for (const file of files) {
  const group = JSON.parse(readFileSync(join(FIXTURES, file), 'utf8')) as { cases: Case[] };
  describe(`fixtures/sse/${file}`, () => {
    for (const c of group.cases) {
      const encoder = new TextEncoder();
      const chunks = (c.chunks ?? [c.input ?? '']).map((s) => encoder.encode(s));
      const whole = concat(chunks);
      const expected = { ...c.expected, errors: c.expected.errors ?? 0 };

      it(`${c.name} (as given)`, () => {
        expect(run(chunks, c.max_bytes)).toEqual(expected);
      });

      it(`${c.name} (split at every byte)`, { timeout: 60_000 }, () => {
        for (const at of splits(whole.length)) {
          expect(run([whole.subarray(0, at), whole.subarray(at)], c.max_bytes), `split at byte ${at}`).toEqual(expected);
        }
        if (whole.length <= FULL_SPLIT_BYTES_MAX) {
          expect(run([...whole].map((b) => Uint8Array.of(b)), c.max_bytes), 'one byte per chunk').toEqual(expected);
        }
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
