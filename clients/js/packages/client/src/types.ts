/** The five content operations a CMS reports. */
export type EventType =
  | "content.created"
  | "content.updated"
  | "content.published"
  | "content.unpublished"
  | "content.deleted";

/** One content event, the same JSON in SSE, poll and revalidation (see the contract). */
export interface SpoolEvent {
  /** The JetStream stream sequence: the one cursor everywhere. */
  seq: number;
  /** The CMS's `webhook-id`. */
  id: string;
  site: string;
  type: EventType;
  collection: string;
  /** Who may see it: visitors (`public`) or only readers with a `preview` subscriber token. */
  audience: "public" | "preview";
  /**
   * Only on events of a site with `notify: after_revalidate` that went out at its
   * `notify_timeout_ms` without every revalidation target's `2xx`: the page may still be stale.
   */
  fresh?: false;
  item: { id: string; slug?: string; [field: string]: unknown };
  /** Paths to revalidate (mapped from the site's collection config, plus the webhook's). */
  paths: string[];
  /** Cache tags to revalidate. */
  tags: string[];
  occurred_at?: string;
  received_at: string;
}

/**
 * A revalidation target answered `2xx` for these events (SSE's `event: revalidated`): their
 * paths and tags are fresh in the site's cache now, so a page can refetch exactly them. Only
 * the events this reader may see are named.
 */
export interface RevalidatedInfo {
  /** The target's key (a hash of the site and its URL). */
  target: string;
  seqs: number[];
  paths: string[];
  tags: string[];
  /** When the target answered (RFC 3339). */
  at: string;
}

/**
 * The server could not resume exactly where the client asked: `history_truncated` (the
 * cursor is older than the retained history; events continue from `first_seq`) or
 * `cursor_ahead` (the cursor is beyond the stream's end; events continue live). Whatever
 * the app derived from earlier events may be stale: refetch it.
 */
export interface ResetInfo {
  reason: "history_truncated" | "cursor_ahead" | (string & {});
  first_seq?: number;
  [field: string]: unknown;
}

/**
 * - `connecting`: the first attempt is under way.
 * - `live`: a Server-Sent Events stream is open and has said `ready`.
 * - `polling`: long-poll is working (SSE failed repeatedly or is blocked); SSE is retried
 *   in the background and taken back when it works.
 * - `reconnecting`: the last attempt failed; the next one is in `info.delayMs`.
 * - `closed`: unsubscribed.
 */
export type Status = "connecting" | "live" | "polling" | "reconnecting" | "closed";

export type Transport = "sse" | "poll";

export interface StatusInfo {
  /** The transport of the attempt this status is about. */
  transport: Transport;
  /** Consecutive failed attempts so far (0 when connected). */
  attempt: number;
  /** With `reconnecting`: how long until the next attempt. */
  delayMs?: number;
  /** With `reconnecting`: why the last attempt failed. */
  error?: SpoolError;
  /**
   * With tab sharing: `true` in the tab that holds the connection, `false` in the tabs that
   * receive its events over BroadcastChannel (their status mirrors the leader's).
   */
  leader?: boolean;
}

/** Why an attempt failed. `status` is the HTTP status when there was an answer. */
export interface SpoolError {
  message: string;
  status?: number;
  /** The error code of the contract's JSON errors (`unauthorized`, `unknown_site`, ...). */
  code?: string;
}

/** Full-jitter exponential backoff: the n-th retry waits `random() * min(maxMs, initialMs * 2^n)`. */
export interface BackoffOptions {
  /** Default 1000. */
  initialMs?: number;
  /** Default 30000. */
  maxMs?: number;
}

/** Timers, replaceable in tests by a fake clock. */
export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The subset of the WHATWG `EventSource` this client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: MessageEvent | Event) => void): void;
  close(): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface SubscribeOptions {
  /** The delivery service's base URL, e.g. `https://live.example.com`. */
  url: string;
  /** The site id. */
  site: string;
  /** One of the site's read tokens (omit for a public site). Sent as `?token=` on the stream, as `Authorization` on polls. */
  token?: string;
  /**
   * Gets a subscriber token (a short-lived JWT your backend mints, e.g. with
   * `createSubscriberToken` of `@spool-live/next`), instead of a static `token`. Asked
   * before the first connection and again whenever the server says the token expired (the
   * stream's `token_expired`, a poll's `401 token_expired`); the subscription then resumes
   * from its cursor, without a gap.
   */
  getToken?: () => string | Promise<string>;
  /** Only these collections (all when absent). */
  collections?: string[];
  /**
   * Where to start: events after this `seq`. Absent = live from now; `0` = all retained
   * history. Keep the last `seq` you saw (e.g. in localStorage) and pass it back to resume.
   */
  since?: number;
  /** Called once per event, in `seq` order, never twice for one `seq`. */
  onEvent: (event: SpoolEvent) => void;
  /**
   * Called after events when a revalidation target answered `2xx` for them (see
   * {@link RevalidatedInfo}); giving it asks the stream for these notices. Live only, and
   * SSE only: not while long-polling, and not replayed when resuming.
   */
  onRevalidated?: (info: RevalidatedInfo) => void;
  /** Called when the server could not resume from the cursor (see {@link ResetInfo}). */
  onReset?: (reset: ResetInfo) => void;
  /** Called on every change of connection status. */
  onStatus?: (status: Status, info: StatusInfo) => void;
  /** `auto` (default): SSE, long-poll when SSE fails repeatedly, back to SSE when it works. */
  transport?: "auto" | "sse" | "poll";
  backoff?: BackoffOptions;
  /** Consecutive SSE failures (no `ready` received) before switching to long-poll. Default 3. */
  sseFailuresBeforePoll?: number;
  /** While polling, how often SSE is tried again. Default 30000 ms. */
  sseRetryMs?: number;
  /**
   * An SSE connection that has not said `ready` within this time counts as failed (a
   * proxy that buffers the stream, or blocks it). Default 10000 ms.
   */
  readyTimeoutMs?: number;
  /** Long-poll hold time asked of the server, 0..30 s. Default 25. */
  pollWaitSeconds?: number;
  /**
   * Share one connection between the tabs of this origin that subscribe to the same URL,
   * site, token and collections (BroadcastChannel; the leader is elected with Web Locks
   * where the browser has them, else by a BroadcastChannel protocol). Default `true` where
   * `BroadcastChannel` exists in a window; `"locks"` / `"broadcast"` force one election.
   */
  share?: boolean | "locks" | "broadcast";
  /** Override the `EventSource` implementation (default: the global one, else the `eventsource` package). */
  EventSource?: EventSourceConstructor;
  /** Override `fetch` (used for long-poll and catch-up). */
  fetch?: typeof fetch;
  /** Override timers (tests). */
  clock?: Clock;
  /** Override the jitter source, a function returning [0, 1) (tests). */
  random?: () => number;
}

/** Stops the subscription: closes the connection (or hands it to another tab). */
export type Unsubscribe = () => void;
