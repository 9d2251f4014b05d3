/** The cross-tab relay's vocabulary: lock and channel names, the messages tabs exchange, and
 * the minimal shapes of the Web Locks and BroadcastChannel APIs the SDK uses. Messages are plain
 * JSON-safe data: the SSE payload travels as the raw `data:` text, never as parsed objects. */
import type { StreamStatus } from './stream.js';
import { SDK_VERSION } from './version.js';

/** Names shared by every tab of one session. They include the SDK version so tabs running
 * different SDK builds form separate groups rather than misreading each other. */
export function relayNames(sessionKey: string): { lock: string; channel: string } {
  const base = `tidings:${SDK_VERSION}:${sessionKey}`;
  return { lock: `${base}:leader`, channel: `${base}:relay` };
}

/** Why every tab of the group stops: an auth refusal or a final `closed` reason. */
export type GroupStopReason = { kind: 'auth'; status: number; body?: unknown } | { kind: 'closed'; reason: string };

/** The leader's connection as it tells the other tabs: its stream's status, the hub's
 * `client_id` while connected, and (answering a new tab's hello) the last `connected` or
 * `activity` frame as raw `data:` text with its `id:`. */
export interface RelayedState {
  stream: StreamStatus;
  clientId?: string;
  lastFrame?: { id?: string; data: string };
}

/** What travels over the BroadcastChannel. `from` is the sending tab; `last` is the leader's
 * stream position after this message; `hb` its heartbeat in milliseconds. */
export type RelayMessage =
  | { t: 'frame'; from: string; id?: string; data: string; last?: string; hb: number }
  | { t: 'beat'; from: string; last?: string; hb: number }
  | ({ t: 'state'; from: string } & RelayedState)
  | { t: 'hello'; from: string }
  | { t: 'leader'; from: string }
  | { t: 'stop'; from: string; reason: GroupStopReason };

/** Checks a message from the channel; anything else (another SDK version, a stray sender) is
 * dropped. */
export function readRelayMessage(value: unknown): RelayMessage | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const m = value as Record<string, unknown>;
  if (typeof m['from'] !== 'string') return undefined;
  const optionalString = (k: string) => m[k] === undefined || typeof m[k] === 'string';
  switch (m['t']) {
    case 'frame':
      return typeof m['data'] === 'string' && typeof m['hb'] === 'number' && optionalString('id') && optionalString('last')
        ? (m as RelayMessage)
        : undefined;
    case 'beat':
      return typeof m['hb'] === 'number' && optionalString('last') ? (m as RelayMessage) : undefined;
    case 'state':
      return isStreamStatus(m['stream']) && optionalString('clientId') && (m['lastFrame'] === undefined || isRawFrame(m['lastFrame']))
        ? (m as RelayMessage)
        : undefined;
    case 'hello':
    case 'leader':
      return m as RelayMessage;
    case 'stop':
      return typeof m['reason'] === 'object' && m['reason'] !== null ? (m as RelayMessage) : undefined;
    default:
      return undefined;
  }
}

const STREAM_STATES: ReadonlySet<unknown> = new Set(['idle', 'connecting', 'open', 'waiting', 'stopped']);

function isStreamStatus(value: unknown): value is StreamStatus {
  if (typeof value !== 'object' || value === null) return false;
  const s = value as Record<string, unknown>;
  const optionalNumber = (k: string) => s[k] === undefined || typeof s[k] === 'number';
  return (
    STREAM_STATES.has(s['state']) &&
    typeof s['attempt'] === 'number' &&
    optionalNumber('retryInMs') &&
    optionalNumber('retryAt') &&
    (s['lastError'] === undefined || typeof s['lastError'] === 'string')
  );
}

function isRawFrame(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const f = value as Record<string, unknown>;
  return typeof f['data'] === 'string' && (f['id'] === undefined || typeof f['id'] === 'string');
}

/** The part of `navigator.locks` the SDK uses. */
export interface LockManagerLike {
  request(
    name: string,
    options: { mode?: 'exclusive'; signal?: AbortSignal; steal?: boolean },
    callback: (lock: unknown) => Promise<unknown> | unknown,
  ): Promise<unknown>;
}

/** The part of `BroadcastChannel` the SDK uses. */
export interface ChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((event: MessageEvent) => void) | null;
}

export type ChannelFactory = (name: string) => ChannelLike;

/** A bounded memory of recently seen event ids, oldest forgotten first. */
export class RecentIds {
  readonly #ids = new Set<string>();
  constructor(private readonly max: number) {}

  /** Records `id`; returns false when it was already there. */
  add(id: string): boolean {
    if (this.#ids.has(id)) return false;
    this.#ids.add(id);
    if (this.#ids.size > this.max) {
      const oldest = this.#ids.values().next().value;
      if (oldest !== undefined) this.#ids.delete(oldest);
    }
    return true;
  }
}
