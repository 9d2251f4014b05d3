/** SSE decoding: bytes in, message events out, on top of `eventsource-parser`. Tracks the
 * stream's last event id the way the WHATWG EventSource does (an `id:` field persists until the
 * next one, even on a block without data) and the last `retry:` value. No I/O and no JSON: the
 * payload stays text here.
 *
 * `eventsource-parser` does the field parsing. In front of it sits a small line guard written
 * here because the library has no per-event bound with recovery (its `maxBufferSize` stops the
 * parser for good): the guard splits bytes into lines, and when a line or an event's data would
 * exceed the limit it reports one error, drops the whole event (data, type and `id:`), skips to
 * the next blank line and carries on. Bytes of an oversized line are never held. The shared
 * vectors in `fixtures/sse/` pin these rules for this SDK and the Rust one alike. */
import { createParser, type EventSourceParser } from 'eventsource-parser';

/** One SSE message event. `id` is the event's own `id:` field, when it had one. */
export interface SseEvent {
  event?: string;
  data: string;
  id?: string;
}

/** Bound on one line and on one event's data, in bytes. A hub frame is one activity, which the
 * hub bounds by its publish body limit (1 MiB by default); anything larger is a broken or
 * hostile stream, not a frame. Same value as the Rust SDK. */
export const SSE_EVENT_BYTES_MAX = 1024 * 1024;

export interface SseDecoderCallbacks {
  onEvent(event: SseEvent): void;
  onRetry?(ms: number): void;
  /** A line the parser could not use (logged and skipped). */
  onError?(reason: string): void;
  /** An event over the size limit was dropped whole. */
  onOversize?(limit: number): void;
}

export interface SseDecoderOptions {
  /** Line and event size limit in bytes (default {@link SSE_EVENT_BYTES_MAX}). */
  maxBytes?: number;
}

const CR = 13;
const LF = 10;
const DATA = [100, 97, 116, 97]; // "data"

export class SseDecoder {
  /** The last event id seen on this stream (WHATWG "last event ID buffer"); `undefined` while
   * empty. */
  lastId: string | undefined;
  /** The last `retry:` value, in milliseconds. */
  retry: number | undefined;

  readonly #parser: EventSourceParser;
  readonly #callbacks: SseDecoderCallbacks;
  readonly #max: number;
  // The BOM is left in the text: the parser strips exactly one leading BOM itself.
  #text = new TextDecoder('utf-8', { ignoreBOM: true });
  /** The current line's bytes so far (never more than the limit). */
  #line: Uint8Array[] = [];
  #lineBytes = 0;
  /** The previous chunk ended with CR: a leading LF in the next one belongs to it. */
  #afterCr = false;
  #dataBytes = 0;
  #discardingLine = false;
  #discardingEvent = false;

  constructor(callbacks: SseDecoderCallbacks, options: SseDecoderOptions = {}) {
    this.#callbacks = callbacks;
    this.#max = options.maxBytes ?? SSE_EVENT_BYTES_MAX;
    this.#parser = createParser({
      onId: (id) => {
        this.lastId = id === '' ? undefined : id;
      },
      onEvent: (message) => {
        const event: SseEvent = { data: message.data };
        if (message.event !== undefined) event.event = message.event;
        if (message.id !== undefined) event.id = message.id;
        callbacks.onEvent(event);
      },
      onRetry: (ms) => {
        this.retry = ms;
        callbacks.onRetry?.(ms);
      },
      onError: (error) => callbacks.onError?.(`${error.type}: ${error.message}`),
    });
  }

  /** Feeds raw bytes; lines (and multi-byte characters) split across chunks are reassembled. */
  feedBytes(chunk: Uint8Array): void {
    let start = 0;
    if (this.#afterCr && chunk.length > 0) {
      this.#afterCr = false;
      if (chunk[0] === LF) start = 1;
    }
    for (let i = start; i < chunk.length; i++) {
      const b = chunk[i];
      if (b !== CR && b !== LF) continue;
      this.#append(chunk.subarray(start, i));
      this.#endLine();
      if (b === CR) {
        if (i + 1 === chunk.length) this.#afterCr = true;
        else if (chunk[i + 1] === LF) i++;
      }
      start = i + 1;
    }
    this.#append(chunk.subarray(start));
  }

  /** Feeds text (as if it were its UTF-8 bytes). */
  feed(text: string): void {
    if (text !== '') this.feedBytes(new TextEncoder().encode(text));
  }

  /** Forgets any partial input, for a new connection. `lastId` and `retry` are kept: they
   * outlive a connection. */
  reset(): void {
    this.#parser.reset();
    this.#text = new TextDecoder('utf-8', { ignoreBOM: true });
    this.#line = [];
    this.#lineBytes = 0;
    this.#afterCr = false;
    this.#dataBytes = 0;
    this.#discardingLine = false;
    this.#discardingEvent = false;
  }

  #append(bytes: Uint8Array): void {
    if (this.#discardingLine || bytes.length === 0) return;
    if (this.#lineBytes + bytes.length > this.#max) {
      this.#line = [];
      this.#lineBytes = 0;
      this.#discardEvent();
      this.#discardingLine = true;
      return;
    }
    this.#line.push(bytes.slice());
    this.#lineBytes += bytes.length;
  }

  #endLine(): void {
    const line = concat(this.#line, this.#lineBytes);
    this.#line = [];
    this.#lineBytes = 0;
    if (this.#discardingLine) {
      this.#discardingLine = false;
      return;
    }
    if (this.#discardingEvent) {
      if (line.length === 0) this.#discardingEvent = false;
      return;
    }
    if (line.length === 0) {
      this.#dataBytes = 0;
    } else {
      const value = dataValueBytes(line);
      if (value !== undefined) {
        this.#dataBytes += value + 1;
        if (this.#dataBytes > this.#max) return this.#discardEvent();
      }
    }
    this.#parser.feed(this.#text.decode(line, { stream: true }) + '\n');
  }

  #discardEvent(): void {
    if (!this.#discardingEvent) {
      this.#callbacks.onOversize?.(this.#max);
      this.#callbacks.onError?.(`event larger than ${this.#max} bytes discarded`);
    }
    this.#discardingEvent = true;
    this.#dataBytes = 0;
    // Drops the event's data, type and id that the parser has gathered so far.
    this.#parser.reset();
  }
}

/** Length in bytes of a `data` field's value, or undefined for any other line. */
function dataValueBytes(line: Uint8Array): number | undefined {
  if (line.length < 4 || DATA.some((c, i) => line[i] !== c)) return undefined;
  if (line.length === 4) return 0;
  if (line[4] !== 58) return undefined; // ':'
  return line.length - (line[5] === 32 ? 6 : 5);
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const [only] = parts;
  if (parts.length === 1 && only) return only;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
