/** Builds the delivery URLs of the contract. */
export interface Endpoint {
  url: string;
  site: string;
  token?: string | undefined;
  collections?: string[] | undefined;
  /** Ask the stream for `event: revalidated` notices. */
  revalidated?: boolean | undefined;
}

function base(endpoint: Endpoint, suffix: string, tokenInQuery: boolean): URL {
  const root = endpoint.url.replace(/\/+$/, "");
  const url = new URL(`${root}/v1/sites/${encodeURIComponent(endpoint.site)}/${suffix}`);
  if (endpoint.collections && endpoint.collections.length > 0) {
    url.searchParams.set("collections", endpoint.collections.join(","));
  }
  if (tokenInQuery && endpoint.token) url.searchParams.set("token", endpoint.token);
  return url;
}

/**
 * The headers of a `fetch` to the delivery: the read token goes in `Authorization`, where
 * proxies and access logs don't record it (an EventSource can't send headers: the stream's
 * URL carries it instead).
 */
export function authHeaders(endpoint: Endpoint): Record<string, string> {
  return endpoint.token ? { authorization: `Bearer ${endpoint.token}` } : {};
}

/** `GET /v1/sites/{site}/events/stream?since=` (no `since` = live from now), token included. */
export function streamUrl(endpoint: Endpoint, since: number | undefined): string {
  const url = base(endpoint, "events/stream", true);
  if (endpoint.revalidated) url.searchParams.set("revalidated", "1");
  if (since !== undefined) url.searchParams.set("since", String(since));
  return url.toString();
}

/** `GET /v1/sites/{site}/events?since=&limit=&wait=`; the token goes in [`authHeaders`]. */
export function pollUrl(endpoint: Endpoint, since: number | undefined, opts: { limit: number; wait: number }): string {
  const url = base(endpoint, "events", false);
  if (since !== undefined) {
    url.searchParams.set("since", String(since));
    url.searchParams.set("limit", String(opts.limit));
    url.searchParams.set("wait", String(opts.wait));
  }
  return url.toString();
}
