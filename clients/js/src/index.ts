/** Tidings browser SDK, framework-free core. TanStack Query, Vue and React integrations live
 * in `tidings/query`, `tidings/vue` and `tidings/react`, so this entry imports none of them. */
export { connectionState, createTidings, IDLE_STATUS, Tidings, DEDUPE_IDS_MAX } from './tidings.js';
export type {
  ConnectionState,
  LastEvent,
  Role,
  TidingsError,
  TidingsEvent,
  TidingsEventOf,
  TidingsEventType,
  TidingsListener,
  TidingsOptions,
  TidingsStatus,
} from './tidings.js';
export { StreamClient, HEARTBEAT_MS_DEFAULT, WATCHDOG_HEARTBEATS, STREAM_STABLE_MS } from './stream.js';
export type { StopReason, StreamClientOptions, StreamState, StreamStatus, TokenResult } from './stream.js';
export { BACKOFF_INITIAL_MS, BACKOFF_MAX_MS, fullJitter, reconnectDelay } from './backoff.js';
export type { BackoffOptions, RetryAdvice } from './backoff.js';
export { decodeFrame, FINAL_CLOSE_REASONS } from './protocol.js';
export type { Activity, ActivityFrame, ClosedFrame, ConnectedFrame, Decoded, Frame, PingFrame, ResyncFrame } from './protocol.js';
export { SseDecoder, SSE_EVENT_BYTES_MAX } from './sse.js';
export type { SseEvent } from './sse.js';
export { genericResolver, activityKind, kebabType, normalizeType } from './resolver.js';
export type { ActivityKind, Resolution, Resolver } from './resolver.js';
export { convertId, fetchMappingResolver, mappingResolver, PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID } from './mapping.js';
export type { IdType, MappingJson, MappingResolver, Tier, TieredResolution } from './mapping.js';
export { dedupePrefixes, keyCovers, keyHash, plainKey, plainKeys } from './keys.js';
export type { JsonValue, QueryKey } from './keys.js';
export { relayNames } from './relay.js';
export type { ChannelFactory, ChannelLike, LockManagerLike } from './relay.js';
export { consoleLogger, silentLogger, systemClock } from './env.js';
export type { Clock, EventTargetLike, Logger } from './env.js';
export { SDK_VERSION } from './version.js';
