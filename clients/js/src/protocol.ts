/** Wire protocol v1 as the browser reads it: the JSON payload of one SSE event, checked and
 * turned into a typed frame. Pure functions; nothing here throws on bad input. */
import { plainKeys, type QueryKey } from './keys.js';

/** An activity exactly as published (every field kept, known or not). */
export interface Activity {
  activity_type?: string;
  resource?: { type?: string; id?: unknown; name?: string; parent?: { type?: string; id?: unknown } };
  parent?: { type?: string; id?: unknown };
  metadata?: { id?: unknown; [field: string]: unknown };
  description?: string;
  [field: string]: unknown;
}

export interface ConnectedFrame {
  type: 'connected';
  clientId?: string;
  sessionId?: string;
  resumed?: boolean;
  heartbeatMs?: number;
  timestamp?: string;
}

export interface ActivityFrame {
  type: 'activity';
  data: Activity;
  invalidate: QueryKey[];
  remove: QueryKey[];
}

export interface PingFrame {
  type: 'ping';
  timestamp?: string;
}

export interface ResyncFrame {
  type: 'resync';
  reason: string;
}

export interface ClosedFrame {
  type: 'closed';
  reason: string;
  retryMs?: number;
}

export type Frame = ConnectedFrame | ActivityFrame | PingFrame | ResyncFrame | ClosedFrame;

/** `closed` reasons after which the client must not reconnect. */
export const FINAL_CLOSE_REASONS: ReadonlySet<string> = new Set(['superseded', 'revoked']);

/** The result of decoding one payload: a frame, a type this SDK does not know (ignored for
 * forward compatibility), or an invalid payload with the reason. */
export type Decoded =
  | { kind: 'frame'; frame: Frame }
  | { kind: 'unknown'; type: string }
  | { kind: 'invalid'; reason: string };

/** Decodes the `data:` text of one SSE event. `onInvalidKey` hears about key entries that were
 * dropped from an otherwise valid activity. */
export function decodeFrame(data: string, onInvalidKey?: (entry: unknown) => void): Decoded {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return { kind: 'invalid', reason: 'payload is not JSON' };
  }
  if (!isObject(value)) return { kind: 'invalid', reason: 'payload is not a JSON object' };
  const type = value['type'];
  if (typeof type !== 'string') return { kind: 'invalid', reason: 'payload has no string "type"' };
  switch (type) {
    case 'connected': {
      const frame: ConnectedFrame = { type };
      if (typeof value['client_id'] === 'string') frame.clientId = value['client_id'];
      if (typeof value['session_id'] === 'string') frame.sessionId = value['session_id'];
      if (typeof value['resumed'] === 'boolean') frame.resumed = value['resumed'];
      if (typeof value['timestamp'] === 'string') frame.timestamp = value['timestamp'];
      const hb = value['heartbeat_ms'];
      if (typeof hb === 'number' && Number.isFinite(hb) && hb > 0) frame.heartbeatMs = hb;
      return { kind: 'frame', frame };
    }
    case 'activity': {
      const data = value['data'];
      if (!isObject(data)) return { kind: 'invalid', reason: 'activity without an object "data"' };
      return {
        kind: 'frame',
        frame: { type, data, invalidate: plainKeys(value['invalidate'], onInvalidKey), remove: plainKeys(value['remove'], onInvalidKey) },
      };
    }
    case 'ping': {
      const frame: PingFrame = { type };
      if (typeof value['timestamp'] === 'string') frame.timestamp = value['timestamp'];
      return { kind: 'frame', frame };
    }
    case 'resync':
      return { kind: 'frame', frame: { type, reason: typeof value['reason'] === 'string' ? value['reason'] : 'unknown' } };
    case 'closed': {
      const reason = value['reason'];
      if (typeof reason !== 'string') return { kind: 'invalid', reason: 'closed without a string "reason"' };
      const frame: ClosedFrame = { type, reason };
      const retry = value['retry_ms'];
      if (typeof retry === 'number' && Number.isFinite(retry) && retry >= 0) frame.retryMs = retry;
      return { kind: 'frame', frame };
    }
    default:
      return { kind: 'unknown', type };
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
