// @spool-live/client in Node (the `eventsource` package) against the real services.
import assert from "node:assert/strict";
import { createServer, request as httpRequest, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import {
  type ResetInfo,
  type RevalidatedInfo,
  type SpoolEvent,
  type Status,
  type StatusInfo,
  subscribe,
} from "@spool-live/client";
import { createSubscriberToken } from "@spool-live/next/server";
import { eventually, publish, type Stack, site, startStack, WEBHOOK_SECRET } from "./harness.js";

const TOKEN = "rk_test_acme_0123456789";
const fast = { backoff: { initialMs: 50, maxMs: 500 } };

/** Collects what a subscription reports. */
function collector() {
  const events: SpoolEvent[] = [];
  const statuses: Array<{ s: Status } & StatusInfo> = [];
  const resets: ResetInfo[] = [];
  return {
    events,
    statuses,
    resets,
    onEvent: (e: SpoolEvent) => {
      events.push(e);
    },
    onStatus: (s: Status, info: StatusInfo) => {
      statuses.push({ s, ...info });
    },
    onReset: (r: ResetInfo) => {
      resets.push(r);
    },
    seqs: () => events.map((e) => e.seq),
    status: () => statuses.at(-1)?.s,
  };
}

/**
 * A proxy in front of the delivery that can refuse SSE the way corporate proxies and some
 * hosts do: `refuse` answers the stream 502, `buffer` accepts it and never sends a byte.
 * Everything else passes through (streamed).
 */
async function sseBlockingProxy(target: string) {
  const state: { mode: "pass" | "refuse" | "buffer"; streamRequests: number } = { mode: "pass", streamRequests: 0 };
  const held = new Set<ServerResponse>();
  const server = createServer((req, res) => {
    const url = req.url ?? "/";
    const isStream = url.includes("/events/stream");
    if (isStream) state.streamRequests++;
    if (isStream && state.mode === "refuse") {
      res.writeHead(502, { "content-type": "text/html" }).end("<h1>502 Bad Gateway</h1>");
      return;
    }
    if (isStream && state.mode === "buffer") {
      held.add(res);
      res.on("close", () => held.delete(res));
      return;
    }
    const upstream = httpRequest(`${target}${url}`, { method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
    res.on("close", () => upstream.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    state,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      for (const res of held) res.destroy();
      server.closeAllConnections();
      server.close();
    },
  };
}

describe("@spool-live/client against the real services (Node)", () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack({
      sites: [site("acme", { subscriber_secret: WEBHOOK_SECRET }), site("open", { public: true })],
    });
  });
  after(async () => {
    if (process.env.SPOOL_TEST_DEBUG) {
      console.error(stack.nats.logs().slice(-6000));
      console.error(stack.ingest.logs().slice(-6000));
    }
    await stack?.stop();
  });

  it("delivers every event once, in order, from history and live", async (t) => {
    const first: number[] = [];
    for (let i = 0; i < 5; i++) first.push((await publish(stack.ingest.url, "acme")).seq);
    const c = collector();
    const unsubscribe = subscribe({ url: stack.delivery.url, site: "acme", token: TOKEN, since: 0, ...fast, ...c });
    t.after(unsubscribe);
    await eventually("the history", () => c.events.length >= 5);
    assert.equal(c.status(), "live");
    // Live, including a burst sent concurrently.
    const burst = await Promise.all(Array.from({ length: 20 }, () => publish(stack.ingest.url, "acme")));
    const expected = [...first, ...burst.map((r) => r.seq)].sort((a, b) => a - b);
    await eventually("the live burst", () => c.events.length >= expected.length);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(c.seqs(), expected);
    const e = c.events[0];
    assert.equal(e.site, "acme");
    assert.equal(e.type, "content.published");
    assert.deepEqual(e.paths, [`/blog/${e.item.slug}`, "/blog"]);
    assert.deepEqual(e.tags, ["blog", `blog:${e.item.slug}`]);
    unsubscribe();
    assert.equal(c.status(), "closed");
  });

  it("filters by collection", async (t) => {
    const c = collector();
    const unsubscribe = subscribe({ url: stack.delivery.url, site: "open", collections: ["news"], ...fast, ...c });
    t.after(unsubscribe);
    await eventually("live", () => c.status() === "live");
    await publish(stack.ingest.url, "open", { collection: "blog" });
    const news = await publish(stack.ingest.url, "open", { collection: "news" });
    await eventually("the news event", () => c.events.length >= 1);
    assert.deepEqual(c.seqs(), [news.seq]);
    unsubscribe();
  });

  for (const mode of ["refuse", "buffer"] as const) {
    it(`falls back to long-poll when SSE is blocked (${mode}) and returns to SSE when it works`, async (t) => {
      const proxy = await sseBlockingProxy(stack.delivery.url);
      proxy.state.mode = mode;
      const c = collector();
      const unsubscribe = subscribe({
        url: proxy.url,
        site: "acme",
        token: TOKEN,
        ...fast,
        sseFailuresBeforePoll: 2,
        readyTimeoutMs: 300,
        sseRetryMs: 500,
        ...c,
      });
      t.after(unsubscribe);
      try {
        await eventually("polling", () => c.status() === "polling", { timeout: 5000 });
        assert.ok(c.statuses.some((s) => s.s === "reconnecting" && s.transport === "sse"));
        const sent: number[] = [];
        for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);
        await eventually("events over long-poll", () => c.events.length >= 3);
        assert.equal(c.status(), "polling");
        const probes = proxy.state.streamRequests;
        await eventually("SSE tried again while polling", () => proxy.state.streamRequests > probes, { timeout: 3000 });

        proxy.state.mode = "pass";
        await eventually("back on SSE", () => c.status() === "live", { timeout: 5000 });
        for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);
        await eventually("events over SSE", () => c.events.length >= 6);
        await new Promise((r) => setTimeout(r, 200));
        assert.deepEqual(c.seqs(), sent);
      } finally {
        unsubscribe();
        proxy.close();
      }
    });
  }

  it("reports a refused token (401) with the server's error code", async (t) => {
    const c = collector();
    const unsubscribe = subscribe({
      url: stack.delivery.url,
      site: "acme",
      token: "rk_wrong",
      ...fast,
      sseFailuresBeforePoll: 1,
      ...c,
    });
    t.after(unsubscribe);
    await eventually("a 401 from the poll", () => c.statuses.some((s) => s.error?.status === 401));
    const refused = c.statuses.find((s) => s.error?.status === 401);
    assert.equal(refused?.error?.code, "unauthorized");
    assert.equal(refused?.transport, "poll");
    unsubscribe();
  });
  it("renews an expiring subscriber token and resumes without a gap, drafts included in preview", async (t) => {
    let minted = 0;
    const getToken = async () => {
      minted++;
      return createSubscriberToken({ site: "acme", secret: WEBHOOK_SECRET, scope: "preview", ttl: 2 });
    };
    const c = collector();
    const unsubscribe = subscribe({ url: stack.delivery.url, site: "acme", getToken, ...fast, ...c });
    t.after(unsubscribe);
    await eventually("live", () => c.status() === "live");
    const sent: number[] = [];
    // Across at least two token expiries (2 s each).
    for (let i = 0; i < 6; i++) {
      sent.push((await publish(stack.ingest.url, "acme")).seq);
      await new Promise((r) => setTimeout(r, 800));
    }
    await eventually("every event", () => c.events.length >= sent.length, { timeout: 15000 });
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(c.seqs(), sent, "every event once, in order, across the renewals");
    assert.ok(minted >= 3, `the token was renewed (${minted} minted)`);
    assert.equal(c.events[0].audience, "public");
    unsubscribe();
  });

  it("resumes across a delivery restart with no gap and no duplicate", async (t) => {
    const c = collector();
    // A slow restart may take longer than three quick SSE attempts: the client then
    // long-polls for a while, which must resume without gap too, and goes back to SSE soon.
    const unsubscribe = subscribe({
      url: stack.delivery.url,
      site: "acme",
      token: TOKEN,
      ...fast,
      sseRetryMs: 300,
      ...c,
    });
    t.after(unsubscribe);
    await eventually("live from now", () => c.status() === "live");
    const sent: number[] = [];
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);
    await eventually("the first three", () => c.events.length >= 3);

    await stack.delivery.stop(); // SIGTERM: the delivery closes its streams and exits
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq); // while it is down
    await eventually("the client to notice", () => c.status() === "reconnecting");
    await stack.restart("delivery");
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);

    await eventually("all nine", () => c.events.length >= 9, { timeout: 15000 });
    await eventually("live again", () => c.status() === "live");
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(c.seqs(), sent);
    unsubscribe();
  });
});

describe("@spool-live/client: onRevalidated", () => {
  let stack: Stack;
  let target: Server;
  before(async () => {
    // The site's revalidation target: answers 200 to every call.
    target = createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"));
    });
    await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(target.address() as AddressInfo).port}/api/revalidate`;
    stack = await startStack({
      sites: [site("acme", { revalidate: [{ url, secret: WEBHOOK_SECRET }], notify: "after_revalidate" })],
      services: ["ingest", "delivery", "revalidator"],
      env: { SPOOL_ALLOWED_TARGET_NETWORKS: "127.0.0.0/8,::1/128" },
    });
  });
  after(async () => {
    await stack?.stop();
    target?.close();
  });

  it("hears which paths are fresh, after the event", async (t) => {
    const c = collector();
    const notices: RevalidatedInfo[] = [];
    const order: string[] = [];
    const unsubscribe = subscribe({
      url: stack.delivery.url,
      site: "acme",
      token: TOKEN,
      share: false,
      ...fast,
      ...c,
      onEvent: (e) => {
        c.events.push(e);
        order.push(`event ${e.seq}`);
      },
      onRevalidated: (info) => {
        notices.push(info);
        order.push(`revalidated ${info.seqs.join(",")}`);
      },
    });
    t.after(unsubscribe);
    await eventually("live", () => c.status() === "live");
    const { seq } = await publish(stack.ingest.url, "acme", { slug: "fresh-page" });
    await eventually("the notice", () => notices.length >= 1);
    assert.deepEqual(order.slice(0, 2), [`event ${seq}`, `revalidated ${seq}`]);
    assert.deepEqual(notices[0].paths, ["/blog/fresh-page", "/blog"]);
    assert.deepEqual(notices[0].tags, ["blog", "blog:fresh-page"]);
    assert.equal(typeof notices[0].target, "string");
  });
});
