import { Webhook, WebhookVerificationError } from "standardwebhooks";

/** The body the revalidator POSTs (see the contract's "Revalidator"). */
export interface RevalidateBody {
  type: "revalidate";
  site: string;
  paths: string[];
  tags: string[];
  events: Array<{ seq: number; id: string; type: string; collection: string; slug?: string }>;
}

/** Remembers the `webhook-id`s already handled, so a replay is a no-op. */
export interface SeenStore {
  has(id: string): boolean | Promise<boolean>;
  add(id: string): void | Promise<void>;
}

/** Next 16's `revalidateTag` profile: a `cacheLife` profile name or `{ expire }` seconds. */
export type TagProfile = string | { expire?: number; stale?: number; revalidate?: number };

export interface RevalidateHandlerOptions {
  /**
   * The revalidation target's secret (`whsec_...`) from the site's `revalidate` entry.
   * Several may be given while rotating: a call signed with any of them is accepted.
   */
  secret: string | string[] | undefined;
  /**
   * How `revalidateTag` expires a tag (Next 16's second argument; ignored by Next 14/15).
   * Default `{ expire: 0 }`: the next request renders fresh content, which is what a
   * CMS-driven site expects. `"max"` serves the stale page once while refreshing it.
   */
  tagProfile?: TagProfile;
  /** Where handled `webhook-id`s are kept. Default: this process's memory (10,000 ids, 24 h). */
  seen?: SeenStore;
  /** Replaces `revalidatePath` from `next/cache` (tests, other frameworks). */
  revalidatePath?: (path: string) => void | Promise<void>;
  /** Replaces `revalidateTag` from `next/cache`. */
  revalidateTag?: (tag: string, profile: TagProfile) => void | Promise<void>;
  /** Called after the paths and tags were revalidated. An exception makes the answer 500 (retried). */
  onRevalidate?: (body: RevalidateBody, meta: { webhookId: string }) => void | Promise<void>;
  /** A log line per call. Default: `console.log` in development, nothing in production. */
  log?: boolean | ((line: string) => void);
}

/** An in-memory {@link SeenStore}, bounded in size and age. */
export function memorySeenStore(maxEntries = 10_000, ttlMs = 24 * 60 * 60 * 1000): SeenStore {
  const seen = new Map<string, number>();
  return {
    has(id) {
      const at = seen.get(id);
      if (at === undefined) return false;
      if (Date.now() - at > ttlMs) {
        seen.delete(id);
        return false;
      }
      return true;
    },
    add(id) {
      seen.delete(id);
      seen.set(id, Date.now());
      while (seen.size > maxEntries) {
        const oldest = seen.keys().next().value;
        if (oldest === undefined) break;
        seen.delete(oldest);
      }
    },
  };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

function error(status: number, code: string, message: string): Response {
  return json(status, { error: { code, message } });
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}

function parseBody(payload: string): RevalidateBody | undefined {
  let body: unknown;
  try {
    body = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (!body || typeof body !== "object") return undefined;
  const b = body as Partial<RevalidateBody>;
  const paths = b.paths ?? [];
  const tags = b.tags ?? [];
  if (!isStringArray(paths) || !isStringArray(tags)) return undefined;
  return { ...b, paths, tags, events: Array.isArray(b.events) ? b.events : [] } as RevalidateBody;
}

type NextCache = {
  revalidatePath: (path: string) => void;
  revalidateTag: (tag: string, profile?: TagProfile) => void;
};

/**
 * An App Router route handler for the revalidator's calls:
 *
 * ```ts
 * // app/api/revalidate/route.ts
 * import { createRevalidateHandler } from "@spool-live/next/server";
 * export const POST = createRevalidateHandler({ secret: process.env.SPOOL_REVALIDATE_SECRET });
 * ```
 *
 * Verifies the Standard Webhooks signature (`standardwebhooks`: HMAC-SHA256, constant-time
 * comparison, ±5 min timestamp tolerance), then calls `revalidatePath` for each path and
 * `revalidateTag` for each tag of the body. Answers, per the contract's retry semantics:
 *
 * - `200` — done; also for a `webhook-id` already handled (a replay does nothing).
 * - `401` — missing or bad signature, or a timestamp outside the tolerance; `400` — not the
 *   revalidation JSON. The revalidator does not retry these: it dead-letters them, and an
 *   operator replays them once the secret is fixed.
 * - `500` — the secret is not configured, or revalidating threw: retried with backoff.
 */
export function createRevalidateHandler(options: RevalidateHandlerOptions): (request: Request) => Promise<Response> {
  const seen = options.seen ?? memorySeenStore();
  const tagProfile = options.tagProfile ?? { expire: 0 };
  const inFlight = new Map<string, Promise<Response>>();
  const log =
    typeof options.log === "function"
      ? options.log
      : (options.log ?? process.env.NODE_ENV === "development")
        ? (line: string) => console.log(line)
        : undefined;
  let nextCache: Promise<NextCache> | undefined;
  const loadNextCache = () => (nextCache ??= import("next/cache") as unknown as Promise<NextCache>);
  const revalidatePath =
    options.revalidatePath ?? (async (path: string) => (await loadNextCache()).revalidatePath(path));
  const revalidateTag =
    options.revalidateTag ??
    (async (tag: string, profile: TagProfile) => (await loadNextCache()).revalidateTag(tag, profile));

  const revalidate = async (body: RevalidateBody, webhookId: string): Promise<Response> => {
    try {
      for (const path of body.paths) await revalidatePath(path);
      for (const tag of body.tags) await revalidateTag(tag, tagProfile);
      await options.onRevalidate?.(body, { webhookId });
    } catch (e) {
      log?.(`[Spool Live] ❌ revalidation ${webhookId} failed: ${(e as Error)?.message ?? e}`);
      return error(500, "revalidation_failed", `revalidating failed: ${(e as Error)?.message ?? e}`);
    }
    await seen.add(webhookId);
    log?.(
      `[Spool Live] ✅ Revalidated ${body.paths.length} path(s), ${body.tags.length} tag(s) for ${body.site ?? "?"}` +
        ` (${webhookId}): ${[...body.paths, ...body.tags.map((t) => `tag:${t}`)].join(" ")}`,
    );
    return json(200, { revalidated: true, duplicate: false, paths: body.paths, tags: body.tags, now: Date.now() });
  };

  // biome-ignore lint/correctness/noComponentHookFactories: a route handler (named as Next.js wants), not a component
  return async function POST(request: Request): Promise<Response> {
    const secrets = (Array.isArray(options.secret) ? options.secret : [options.secret]).filter(
      (s): s is string => typeof s === "string" && s.length > 0,
    );
    if (secrets.length === 0) {
      // 5xx on purpose: the revalidator keeps retrying until the deployment is configured.
      return error(500, "not_configured", "the revalidation secret is not configured (SPOOL_REVALIDATE_SECRET)");
    }
    const headers = {
      "webhook-id": request.headers.get("webhook-id") ?? "",
      "webhook-timestamp": request.headers.get("webhook-timestamp") ?? "",
      "webhook-signature": request.headers.get("webhook-signature") ?? "",
    };
    const payload = await request.text();
    let failure = "missing webhook-id, webhook-timestamp or webhook-signature";
    let verified = false;
    if (headers["webhook-id"] && headers["webhook-timestamp"] && headers["webhook-signature"]) {
      for (const secret of secrets) {
        let webhook: Webhook;
        try {
          webhook = new Webhook(secret);
        } catch (e) {
          return error(500, "not_configured", `the revalidation secret is invalid: ${(e as Error)?.message ?? e}`);
        }
        try {
          webhook.verify(payload, headers, { jsonParse: false });
          verified = true;
          break;
        } catch (e) {
          failure =
            e instanceof WebhookVerificationError ? e.message : `verification failed: ${(e as Error)?.message ?? e}`;
        }
      }
    }
    if (!verified) {
      log?.(`[Spool Live] ⚠️  Refused a revalidation call: ${failure}`);
      return error(401, "invalid_signature", failure);
    }
    const body = parseBody(payload);
    if (!body) return error(400, "invalid_body", 'expected the revalidation JSON: {"paths": [...], "tags": [...]}');

    const id = headers["webhook-id"];
    const running = inFlight.get(id);
    if (running) return (await running).clone();
    // Registered before any await, so a concurrent copy of this call waits for this one.
    const work = (async () => {
      if (await seen.has(id)) {
        log?.(`[Spool Live] Ignored a replay of ${id}`);
        return json(200, { revalidated: false, duplicate: true, paths: [], tags: [] });
      }
      return revalidate(body, id);
    })();
    inFlight.set(id, work);
    try {
      return (await work).clone();
    } finally {
      inFlight.delete(id);
    }
  };
}

export interface SubscriberTokenOptions {
  /** `published` (what visitors see) or `preview` (drafts and every item field too). Default `published`. */
  scope?: "published" | "preview";
  /** Limit the reader to these collections (all when absent). */
  collections?: string[];
  /** Lifetime in seconds. Default 600. The client asks for a new token when it expires. */
  ttl?: number;
  /** Who the token is for (the JWT `sub`), e.g. the editor's id. */
  sub?: string;
  /** The site id. Default `process.env.SPOOL_SITE`, else `process.env.NEXT_PUBLIC_SPOOL_SITE`. */
  site?: string;
  /** The site's `subscriber_secret` (`whsec_...`). Default `process.env.SPOOL_SUBSCRIBER_SECRET`. */
  secret?: string;
  /** The current time in ms (tests). Default `Date.now()`. */
  now?: number;
}

function base64url(bytes: Buffer | string): string {
  return Buffer.from(bytes).toString("base64url");
}

/**
 * Mints a subscriber token for `@spool-live/client`'s `getToken` (call it in a route
 * handler, never in the browser: it needs the site's `subscriber_secret`). A JWT, HS256
 * with the secret's key (the base64 after `whsec_`), claims `site`, `exp`, `scope`, and
 * `collections` / `sub` when given.
 *
 * ```ts
 * // app/api/spool-token/route.ts
 * import { draftMode } from "next/headers";
 * import { createSubscriberToken } from "@spool-live/next/server";
 * export async function GET() {
 *   const { isEnabled } = await draftMode();
 *   const token = await createSubscriberToken({ scope: isEnabled ? "preview" : "published" });
 *   return Response.json({ token }, { headers: { "cache-control": "no-store" } });
 * }
 * ```
 */
export async function createSubscriberToken(options: SubscriberTokenOptions = {}): Promise<string> {
  const { createHmac } = await import("node:crypto");
  const secret = options.secret ?? process.env.SPOOL_SUBSCRIBER_SECRET;
  const site = options.site ?? process.env.SPOOL_SITE ?? process.env.NEXT_PUBLIC_SPOOL_SITE;
  if (!secret?.startsWith("whsec_")) {
    throw new Error(
      "createSubscriberToken: set SPOOL_SUBSCRIBER_SECRET (the site's subscriber_secret, whsec_...) or pass `secret`",
    );
  }
  if (!site) throw new Error("createSubscriberToken: set SPOOL_SITE (or pass `site`)");
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const now = Math.floor((options.now ?? Date.now()) / 1000);
  const claims: Record<string, unknown> = {
    site,
    scope: options.scope ?? "published",
    iat: now,
    exp: now + Math.max(1, Math.floor(options.ttl ?? 600)),
  };
  if (options.sub !== undefined) claims.sub = options.sub;
  if (options.collections !== undefined) claims.collections = options.collections;
  const head = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(JSON.stringify(claims))}`;
  const signature = createHmac("sha256", key).update(head).digest();
  return `${head}.${base64url(signature)}`;
}
