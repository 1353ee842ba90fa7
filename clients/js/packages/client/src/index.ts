export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export { subscribe } from "./subscribe.js";
export type {
  BackoffOptions,
  Clock,
  EventSourceConstructor,
  EventSourceLike,
  EventType,
  ResetInfo,
  RevalidatedInfo,
  SpoolError,
  SpoolEvent,
  Status,
  StatusInfo,
  SubscribeOptions,
  Transport,
  Unsubscribe,
} from "./types.js";
