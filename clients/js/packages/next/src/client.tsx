"use client";

import type { ResetInfo, SpoolEvent, Status, StatusInfo, SubscribeOptions } from "@spool-live/client";
import { subscribe } from "@spool-live/client";
import { useRouter } from "next/navigation";
import { useEffect, useRef, useState } from "react";

export interface UseSpoolLiveOptions {
  /** The delivery URL. Default `process.env.NEXT_PUBLIC_SPOOL_LIVE_URL`. */
  url?: string;
  /** The site id. Default `process.env.NEXT_PUBLIC_SPOOL_SITE`. */
  site?: string;
  /** A read token (omit for a public site). Default `process.env.NEXT_PUBLIC_SPOOL_READ_TOKEN`. */
  token?: string;
  /**
   * A route of yours that answers `{"token": "..."}` with a subscriber token
   * (`createSubscriberToken` of `@spool-live/next/server`); used instead of `token`, and
   * asked again whenever the token expires. Render `<SpoolLive tokenUrl="/api/spool-token" />`
   * in draft mode with a route that mints a `preview` token: editors see drafts live,
   * visitors (a `published` token, or the read token) never do.
   */
  tokenUrl?: string;
  collections?: string[];
  /**
   * Subscribe at all. Default: in development (`next dev`) and in Vercel preview
   * deployments (`NEXT_PUBLIC_VERCEL_ENV=preview`), where no revalidation webhook reaches
   * the site, so the page refreshes itself instead. In production the revalidator keeps
   * pages fresh; pass `true` to subscribe there too (e.g. for your own `onEvent`).
   */
  enabled?: boolean;
  /** Call `router.refresh()` on events (bursts are merged into one refresh). Default `true`. */
  refresh?: boolean;
  /** The pause that merges a burst of events into one refresh. Default 150 ms. */
  refreshDelayMs?: number;
  /** Log connection changes and events to the console. Default: in development. */
  debug?: boolean;
  onEvent?: (event: SpoolEvent) => void;
  onReset?: (reset: ResetInfo) => void;
  onStatus?: (status: Status, info: StatusInfo) => void;
  /** Anything else `subscribe` accepts (backoff, transport, share...). */
  subscribeOptions?: Partial<
    Omit<SubscribeOptions, "url" | "site" | "token" | "collections" | "onEvent" | "onReset" | "onStatus">
  >;
}

export interface SpoolLiveState {
  status: Status | "disabled";
  lastEvent: SpoolEvent | undefined;
}

/** A subscriber token from the site's own route (`{"token": "..."}`). */
async function fetchToken(tokenUrl: string): Promise<string> {
  const response = await fetch(tokenUrl, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(`${tokenUrl} answered ${response.status}`);
  const body = (await response.json()) as { token?: unknown };
  if (typeof body.token !== "string") throw new Error(`${tokenUrl} answered no "token"`);
  return body.token;
}

function defaultEnabled(): boolean {
  return process.env.NODE_ENV === "development" || process.env.NEXT_PUBLIC_VERCEL_ENV === "preview";
}

/**
 * Subscribes this page to the site's events and refreshes its server components
 * (`router.refresh()`) when content changes. Returns the connection status and the last event.
 */
export function useSpoolLive(options: UseSpoolLiveOptions = {}): SpoolLiveState {
  const router = useRouter();
  const url = options.url ?? process.env.NEXT_PUBLIC_SPOOL_LIVE_URL;
  const site = options.site ?? process.env.NEXT_PUBLIC_SPOOL_SITE;
  const tokenUrl = options.tokenUrl;
  const token = tokenUrl ? undefined : (options.token ?? process.env.NEXT_PUBLIC_SPOOL_READ_TOKEN);
  const enabled = options.enabled ?? defaultEnabled();
  const debug = options.debug ?? process.env.NODE_ENV === "development";
  const collectionsKey = (options.collections ?? []).join(",");
  const [state, setState] = useState<SpoolLiveState>({
    status: enabled ? "connecting" : "disabled",
    lastEvent: undefined,
  });
  // The latest callbacks without resubscribing when they change identity.
  const latest = useRef(options);
  latest.current = options;
  const routerRef = useRef(router);
  routerRef.current = router;

  useEffect(() => {
    if (!enabled) {
      setState((s) => ({ ...s, status: "disabled" }));
      return;
    }
    if (!url || !site) {
      console.warn(
        "[Spool Live] ⚠️  Set NEXT_PUBLIC_SPOOL_LIVE_URL and NEXT_PUBLIC_SPOOL_SITE (or pass url and site) to enable live updates",
      );
      return;
    }
    const log = debug ? (line: string) => console.log(line) : () => {};
    let refreshTimer: ReturnType<typeof setTimeout> | undefined;
    log(`[DEV] Starting Spool live updates for site: ${site} (${url})`);
    const unsubscribe = subscribe({
      ...latest.current.subscribeOptions,
      url,
      site,
      ...(token ? { token } : {}),
      ...(tokenUrl ? { getToken: () => fetchToken(tokenUrl) } : {}),
      ...(collectionsKey ? { collections: collectionsKey.split(",") } : {}),
      onEvent: (event) => {
        log(`[DEV] 🔄 Live update: ${event.collection}/${event.item.slug || "no-slug"}`);
        setState((s) => ({ ...s, lastEvent: event }));
        latest.current.onEvent?.(event);
        if (latest.current.refresh === false) return;
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(() => routerRef.current.refresh(), latest.current.refreshDelayMs ?? 150);
      },
      onReset: (reset) => {
        log(`[DEV] ⚠️  Spool Live history reset (${reset.reason}): refreshing the page`);
        latest.current.onReset?.(reset);
        if (latest.current.refresh !== false) routerRef.current.refresh();
      },
      onStatus: (status, info) => {
        setState((s) => ({ ...s, status }));
        if (status === "live" || status === "polling") {
          const how = status === "live" ? "SSE" : "long-poll";
          const shared = info.leader === false ? ", shared with another tab" : "";
          log(`[DEV] ✅ Connected to Spool Live for site: ${site} (${how}${shared})`);
        } else if (status === "reconnecting") {
          log(
            `[DEV] Reconnecting to Spool Live in ${info.delayMs ?? 0}ms (attempt ${info.attempt}` +
              `${info.error ? `: ${info.error.message}` : ""})`,
          );
        }
        latest.current.onStatus?.(status, info);
      },
    });
    return () => {
      clearTimeout(refreshTimer);
      unsubscribe();
    };
  }, [enabled, url, site, token, tokenUrl, collectionsKey, debug]);

  return state;
}

export interface SpoolLiveProps extends UseSpoolLiveOptions {}

/**
 * Put once in the root layout: `<SpoolLive />`. Renders nothing; refreshes the page's
 * server components when the site's content changes (in development and preview by default).
 */
export function SpoolLive(props: SpoolLiveProps): null {
  useSpoolLive(props);
  return null;
}
