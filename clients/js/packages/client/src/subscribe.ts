import { DEFAULT_BACKOFF, systemClock } from "./backoff.js";
import { Connection, type ConnectionConfig, type ConnectionHandlers } from "./connection.js";
import { SharedSubscription, webLocksAvailable } from "./shared.js";
import type {
  EventSourceConstructor,
  ResetInfo,
  RevalidatedInfo,
  SpoolEvent,
  SubscribeOptions,
  Unsubscribe,
} from "./types.js";
import { authHeaders, pollUrl } from "./urls.js";

let nodeEventSource: Promise<EventSourceConstructor> | undefined;

/** The browser's `EventSource`, else the `eventsource` package (Node), loaded on first use. */
function defaultEventSource(): EventSourceConstructor | Promise<EventSourceConstructor> {
  const global = (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  if (typeof global === "function") return global;
  nodeEventSource ??= import("eventsource").then((m) => m.EventSource as unknown as EventSourceConstructor);
  return nodeEventSource;
}

/** Runs an app callback; an exception in it is reported, never breaks the subscription. */
function guarded<A extends unknown[]>(fn: ((...args: A) => void) | undefined): (...args: A) => void {
  return (...args: A) => {
    if (!fn) return;
    try {
      fn(...args);
    } catch (error) {
      queueMicrotask(() => {
        throw error;
      });
    }
  };
}

function shareMode(option: SubscribeOptions["share"]): "locks" | "broadcast" | undefined {
  if (option === false) return undefined;
  const inWindow = typeof (globalThis as { window?: unknown }).window !== "undefined";
  if (typeof BroadcastChannel !== "function" || (option === undefined && !inWindow)) return undefined;
  if (option === "locks" || option === "broadcast") return option;
  return webLocksAvailable() ? "locks" : "broadcast";
}

/**
 * Subscribes to a site's events. Returns the function that stops it.
 *
 * ```ts
 * const unsubscribe = subscribe({
 *   url: "https://live.example.com", site: "acme", token: "rk_live_...",
 *   since: Number(localStorage.getItem("seq") ?? 0) || undefined,
 *   onEvent: (e) => { localStorage.setItem("seq", String(e.seq)); render(e); },
 *   onReset: () => refetchEverything(),
 *   onStatus: (status) => console.log(status),
 * });
 * ```
 */
export function subscribe(options: SubscribeOptions): Unsubscribe {
  if (!options || typeof options.url !== "string" || typeof options.site !== "string") {
    throw new TypeError("subscribe: `url` and `site` are required");
  }
  if (typeof options.onEvent !== "function") throw new TypeError("subscribe: `onEvent` is required");
  const clock = options.clock ?? systemClock;
  const fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const collections = options.collections?.length ? [...options.collections].sort() : undefined;
  const config: ConnectionConfig = {
    url: options.url,
    site: options.site,
    token: options.token,
    getToken: options.getToken,
    collections,
    revalidated: typeof options.onRevalidated === "function",
    since: options.since,
    transport: options.transport ?? "auto",
    backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
    sseFailuresBeforePoll: options.sseFailuresBeforePoll ?? 3,
    sseRetryMs: options.sseRetryMs ?? 30000,
    readyTimeoutMs: options.readyTimeoutMs ?? 10000,
    pollWaitSeconds: Math.max(0, Math.min(30, options.pollWaitSeconds ?? 25)),
    pollLimit: 1000,
    eventSource: options.EventSource ? () => options.EventSource as EventSourceConstructor : defaultEventSource,
    fetch: fetchImpl,
    clock,
    random: options.random ?? Math.random,
  };
  const local = {
    event: guarded(options.onEvent),
    reset: guarded(options.onReset),
    revalidated: guarded(options.onRevalidated),
    status: guarded(options.onStatus),
  };

  const connect = (since: number | undefined, handlers: ConnectionHandlers): (() => void) => {
    const connection = new Connection({ ...config, since }, handlers);
    connection.start();
    return () => connection.close();
  };

  const election = shareMode(options.share);
  if (!election) {
    return connect(options.since, {
      event: (event: SpoolEvent) => local.event(event),
      reset: (reset: ResetInfo) => local.reset(reset),
      revalidated: (info: RevalidatedInfo) => local.revalidated(info),
      status: local.status,
      cursor: () => {},
    });
  }

  const key = [
    "spool-live/v1",
    config.url.replace(/\/+$/, ""),
    config.site,
    config.token ?? "",
    (collections ?? []).join(","),
    config.revalidated ? "revalidated" : "",
  ].join("|");
  const shared = new SharedSubscription(
    {
      key,
      since: options.since,
      election,
      clock,
      connect,
      page: async (since) => {
        const endpoint = config.getToken ? { ...config, token: await config.getToken() } : config;
        const response = await fetchImpl(pollUrl(endpoint, since, { limit: 1000, wait: 0 }), {
          headers: { accept: "application/json", ...authHeaders(endpoint) },
          cache: "no-store",
        });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return (await response.json()) as { events: SpoolEvent[]; next: number; reset: ResetInfo | null };
      },
    },
    local,
  );
  shared.start();
  return () => shared.stop();
}
