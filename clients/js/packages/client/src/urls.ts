/** Builds the delivery URLs of the contract. */
export interface Endpoint {
  url: string;
  site: string;
  token?: string | undefined;
  collections?: string[] | undefined;
}

function base(endpoint: Endpoint, suffix: string): URL {
  const root = endpoint.url.replace(/\/+$/, "");
  const url = new URL(`${root}/v1/sites/${encodeURIComponent(endpoint.site)}/${suffix}`);
  if (endpoint.collections && endpoint.collections.length > 0) {
    url.searchParams.set("collections", endpoint.collections.join(","));
  }
  if (endpoint.token) url.searchParams.set("token", endpoint.token);
  return url;
}

/** `GET /v1/sites/{site}/events/stream?since=` (no `since` = live from now). */
export function streamUrl(endpoint: Endpoint, since: number | undefined): string {
  const url = base(endpoint, "events/stream");
  if (since !== undefined) url.searchParams.set("since", String(since));
  return url.toString();
}

/** `GET /v1/sites/{site}/events?since=&limit=&wait=`. */
export function pollUrl(
  endpoint: Endpoint,
  since: number | undefined,
  opts: { limit: number; wait: number },
): string {
  const url = base(endpoint, "events");
  if (since !== undefined) {
    url.searchParams.set("since", String(since));
    url.searchParams.set("limit", String(opts.limit));
    url.searchParams.set("wait", String(opts.wait));
  }
  return url.toString();
}
