/** SSE decoding: bytes in, message events out, on top of `eventsource-parser`. Tracks the
 * stream's last event id the way the WHATWG EventSource does (an `id:` field persists until the
 * next one, even on a block without data) and the last `retry:` value. No I/O and no JSON: the
 * payload stays text here. */
import { createParser, type EventSourceParser } from 'eventsource-parser';

/** One SSE message event. `id` is the event's own `id:` field, when it had one. */
export interface SseEvent {
  event?: string;
  data: string;
  id?: string;
}

/** Bound on buffered, not yet terminated SSE text. A hub frame is one line of JSON; anything
 * this large without a blank line is a broken or hostile stream, not a frame. */
export const SSE_BUFFER_CHARS_MAX = 4 * 1024 * 1024;

export interface SseDecoderCallbacks {
  onEvent(event: SseEvent): void;
  onRetry?(ms: number): void;
  onError?(reason: string): void;
}

export class SseDecoder {
  /** The last event id seen on this stream (WHATWG "last event ID buffer"); `undefined` while
   * empty. */
  lastId: string | undefined;
  /** The last `retry:` value, in milliseconds. */
  retry: number | undefined;

  readonly #parser: EventSourceParser;
  #text = new TextDecoder('utf-8');

  constructor(callbacks: SseDecoderCallbacks) {
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
      maxBufferSize: SSE_BUFFER_CHARS_MAX,
    });
  }

  /** Feeds raw bytes; multi-byte characters split across chunks are reassembled. */
  feedBytes(chunk: Uint8Array): void {
    this.feed(this.#text.decode(chunk, { stream: true }));
  }

  feed(text: string): void {
    if (text !== '') this.#parser.feed(text);
  }

  /** Forgets any partial input, for a new connection. `lastId` and `retry` are kept: they
   * outlive a connection. */
  reset(): void {
    this.#parser.reset();
    this.#text = new TextDecoder('utf-8');
  }
}
