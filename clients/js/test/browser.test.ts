// The built @spool-live/client in a real headless Chromium (Debian's, driven by
// playwright-core; no browser is downloaded) against the real services.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ResetInfo, Status, Transport } from "@spool-live/client";
import { createSubscriberToken } from "@spool-live/next/server";
import type { Browser, BrowserContext, Page } from "playwright-core";
import {
  CHROMIUM,
  eventually,
  JS_DIR,
  launchChromium,
  metric,
  publish,
  type Stack,
  site,
  startStack,
  TEST_DIR,
  WEBHOOK_SECRET,
} from "./harness.js";

const CLIENT_DIST = join(JS_DIR, "packages/client/dist");
const PAGE = join(TEST_DIR, "fixtures/browser/index.html");

/** What the test page (fixtures/browser/index.html) keeps of its subscription. */
interface PageSpool {
  events: Array<{ seq: number; slug?: string; at: number }>;
  statuses: Array<{ status: Status; leader?: boolean; transport: Transport }>;
  resets: ResetInfo[];
  status?: Status;
  leader?: boolean;
}

declare global {
  interface Window {
    spool: PageSpool;
  }
}
const TOKEN = "rk_test_acme_0123456789";
const SSE = 'spool_delivery_open_connections{kind="sse"}';

/**
 * Serves the test page and the built client on their own origin (so CORS is real), and
 * `/token`: a subscriber token of acme, scope preview, valid 2 s (as a site's backend would).
 */
async function pageServer() {
  const types: Record<string, string> = { ".js": "text/javascript", ".map": "application/json", ".html": "text/html" };
  const tokens = { minted: 0 };
  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/token") {
      tokens.minted++;
      const token = await createSubscriberToken({ site: "acme", secret: WEBHOOK_SECRET, scope: "preview", ttl: 2 });
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token }));
      return;
    }
    let file: string | undefined;
    if (path === "/" || path === "/index.html") file = PAGE;
    else if (path.startsWith("/client/")) file = join(CLIENT_DIST, normalize(path.slice("/client/".length)));
    if (!file || (!file.startsWith(CLIENT_DIST) && file !== PAGE) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, tokens, close: () => server.close() };
}

/** A revalidation target that answers `200` 2 s after each call; `answered` holds when. */
async function slowTarget() {
  const answered: number[] = [];
  const server = createServer((req, res) => {
    req.resume();
    setTimeout(() => {
      answered.push(Date.now());
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    }, 2000);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/revalidate`,
    answered,
    close: () => server.close(),
  };
}

describe("@spool-live/client in headless Chromium", () => {
  let stack: Stack;
  let pages: Awaited<ReturnType<typeof pageServer>>;
  let target: Awaited<ReturnType<typeof slowTarget>>;
  let browser: Browser;
  let context: BrowserContext;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM_PATH)`);
    assert.ok(existsSync(join(CLIENT_DIST, "index.js")), "build the client first: npm run build");
    pages = await pageServer();
    target = await slowTarget();
    stack = await startStack({
      sites: [
        site("acme", { cors_origins: [pages.origin], subscriber_secret: WEBHOOK_SECRET }),
        site("open", { public: true, cors_origins: [pages.origin] }),
        site("held", {
          cors_origins: [pages.origin],
          revalidate: [{ url: target.url, secret: WEBHOOK_SECRET }],
          notify: "after_revalidate",
        }),
      ],
      services: ["ingest", "delivery", "revalidator"],
      env: { SPOOL_ALLOWED_TARGET_NETWORKS: "127.0.0.0/8,::1/128" },
    });
    browser = await launchChromium();
    context = await browser.newContext();
  });

  after(async () => {
    await browser?.close();
    await stack?.stop();
    pages?.close();
    target?.close();
  });

  const open = async (query: Record<string, string>) => {
    const page = await context.newPage();
    page.on("pageerror", (e) => console.error("page error:", e));
    await page.goto(`${pages.origin}/?${new URLSearchParams(query)}`);
    return page;
  };
  const spool = (page: Page): Promise<PageSpool> => page.evaluate(() => ({ ...window.spool }));
  const acme = () => ({ delivery: stack.delivery.url, site: "acme", token: TOKEN });

  it("receives an event within a second of the webhook; two tabs share one connection", async () => {
    const first = await open(acme());
    await eventually("the first tab live", async () => (await spool(first)).status === "live");
    assert.equal((await spool(first)).leader, true);

    const t0 = Date.now();
    const sent = await publish(stack.ingest.url, "acme", { slug: "hello" });
    await first.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), sent.seq, { timeout: 1000 });
    const got = (await spool(first)).events.find((e) => e.seq === sent.seq);
    assert.ok(got);
    assert.ok(got.at - t0 < 1000, `event after ${got.at - t0} ms`);
    assert.equal(got.slug, "hello");

    // A second tab follows the first over BroadcastChannel: still one SSE connection.
    const second = await open(acme());
    await eventually("the second tab following", async () => {
      const s = await spool(second);
      return s.status === "live" && s.leader === false;
    });
    const next = await publish(stack.ingest.url, "acme");
    for (const page of [first, second]) {
      await page.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), next.seq, { timeout: 1000 });
    }
    assert.equal(await metric(stack.delivery.url, SSE), 1, "two tabs, one SSE connection");

    // The leader's tab closes: the other takes over, from its own cursor, still alone.
    await first.close();
    await eventually("the second tab leading", async () => {
      const s = await spool(second);
      return s.status === "live" && s.leader === true;
    });
    const later = await publish(stack.ingest.url, "acme");
    await second.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), later.seq, { timeout: 2000 });
    await eventually("one SSE connection", async () => (await metric(stack.delivery.url, SSE)) === 1);
    const seqs = (await spool(second)).events.map((e) => e.seq);
    assert.deepEqual(seqs, [next.seq, later.seq]);
    await second.close();
    await eventually("no SSE connection", async () => (await metric(stack.delivery.url, SSE)) === 0);
  });

  it("a tab that joins with an older cursor fetches the gap, still on one connection", async () => {
    const leader = await open(acme());
    await eventually("the leader live", async () => (await spool(leader)).status === "live");
    const s1 = await publish(stack.ingest.url, "acme");
    const s2 = await publish(stack.ingest.url, "acme");
    await leader.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), s2.seq, { timeout: 1000 });

    const late = await open({ ...acme(), since: String(s1.seq - 1) });
    await late.waitForFunction((n) => window.spool.events.length >= n, 2, { timeout: 3000 });
    assert.equal((await spool(late)).leader, false);
    const s3 = await publish(stack.ingest.url, "acme");
    for (const page of [leader, late]) {
      await page.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), s3.seq, { timeout: 1000 });
    }
    assert.deepEqual(
      (await spool(late)).events.map((e) => e.seq),
      [s1.seq, s2.seq, s3.seq],
    );
    assert.equal(await metric(stack.delivery.url, SSE), 1);
    await leader.close();
    await late.close();
    await eventually("no SSE connection", async () => (await metric(stack.delivery.url, SSE)) === 0);
  });

  it("shares one connection with the BroadcastChannel election too (no Web Locks)", async () => {
    const query = { delivery: stack.delivery.url, site: "open", share: "broadcast" };
    const tabs = [await open(query), await open(query), await open(query)];
    await eventually(
      "one leader and two followers",
      async () => {
        const states = await Promise.all(tabs.map(spool));
        return (
          states.every((s) => s.status === "live") &&
          states.filter((s) => s.leader === true).length === 1 &&
          states.filter((s) => s.leader === false).length === 2
        );
      },
      { timeout: 5000 },
    );
    assert.equal(await metric(stack.delivery.url, SSE), 1);
    const sent = await publish(stack.ingest.url, "open");
    for (const tab of tabs) {
      await tab.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), sent.seq, { timeout: 1000 });
    }
    // The leader goes away; one of the others takes over and nothing is lost.
    const states = await Promise.all(tabs.map(spool));
    const leader = tabs[states.findIndex((s) => s.leader === true)];
    const rest = tabs.filter((t) => t !== leader);
    await leader.close();
    await eventually(
      "a new leader",
      async () => (await Promise.all(rest.map(spool))).some((s) => s.leader === true && s.status === "live"),
      { timeout: 5000 },
    );
    const after = await publish(stack.ingest.url, "open");
    for (const tab of rest) {
      await tab.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), after.seq, { timeout: 2000 });
      assert.deepEqual(
        (await spool(tab)).events.map((e) => e.seq),
        [sent.seq, after.seq],
      );
    }
    await eventually("one SSE connection", async () => (await metric(stack.delivery.url, SSE)) === 1);
    for (const tab of rest) await tab.close();
  });

  it("renews an expiring subscriber token and keeps every event", async () => {
    const page = await open({ delivery: stack.delivery.url, site: "acme", tokenUrl: "/token", share: "off" });
    await eventually("live", async () => (await spool(page)).status === "live");
    const minted = pages.tokens.minted;
    const sent: number[] = [];
    for (let i = 0; i < 6; i++) {
      sent.push((await publish(stack.ingest.url, "acme")).seq);
      await new Promise((r) => setTimeout(r, 800));
    }
    await page.waitForFunction((n) => window.spool.events.length >= n, sent.length, { timeout: 15000 });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      (await spool(page)).events.map((e) => e.seq),
      sent,
    );
    assert.ok(pages.tokens.minted >= minted + 2, `renewed: ${pages.tokens.minted - minted} more tokens`);
    await page.close();
  });

  it("keeps every event across a delivery restart", async () => {
    const page = await open({ ...acme(), share: "off" });
    await eventually("live", async () => (await spool(page)).status === "live");
    const sent: number[] = [];
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);
    await page.waitForFunction((n) => window.spool.events.length >= n, 3, { timeout: 2000 });

    await stack.delivery.stop();
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);
    await eventually("the page to notice", async () => (await spool(page)).status === "reconnecting");
    await stack.restart("delivery");
    for (let i = 0; i < 3; i++) sent.push((await publish(stack.ingest.url, "acme")).seq);

    await page.waitForFunction((n) => window.spool.events.length >= n, 9, { timeout: 15000 });
    await new Promise((r) => setTimeout(r, 300));
    const s = await spool(page);
    assert.deepEqual(
      s.events.map((e) => e.seq),
      sent,
    );
    await eventually(
      "live again (SSE, after a long-poll if the restart was slow)",
      async () => (await spool(page)).status === "live",
    );
    await page.close();
  });

  for (const transport of ["sse", "poll"] as const) {
    it(`with notify: after_revalidate, the event arrives only after the target's 2xx (${transport})`, async () => {
      const page = await open({
        delivery: stack.delivery.url,
        site: "held",
        token: "rk_test_held_0123456789",
        share: "off",
        transport,
      });
      await eventually(
        transport,
        async () => (await spool(page)).status === (transport === "sse" ? "live" : "polling"),
      );
      const calls = target.answered.length;
      const sent = await publish(stack.ingest.url, "held");
      await page.waitForFunction((seq) => window.spool.events.some((e) => e.seq === seq), sent.seq, { timeout: 10000 });
      const got = (await spool(page)).events.find((e) => e.seq === sent.seq);
      assert.ok(got);
      assert.equal(target.answered.length, calls + 1, "the target answered");
      const answered = target.answered[calls];
      assert.ok(got.at >= answered, `the event arrived ${answered - got.at} ms before the target's 2xx`);
      await page.close();
    });
  }
});
