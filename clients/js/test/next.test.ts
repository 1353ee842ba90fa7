// @spool-live/next in a real Next.js app (test/fixtures/next-app), built and started here:
// the real revalidator calls its route, the route verifies and revalidates, and the page
// served next shows the new content. Then <SpoolLive /> refreshes a page in Chromium.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Webhook } from "standardwebhooks";
import {
  CHROMIUM,
  eventually,
  freePort,
  launchChromium,
  publish,
  REVALIDATE_SECRET,
  type Stack,
  site,
  startStack,
  TEST_DIR,
  tempDir,
  WEBHOOK_SECRET,
} from "./harness.js";

const APP = join(TEST_DIR, "fixtures/next-app");
const NEXT_BIN = createRequire(join(APP, "package.json")).resolve("next/dist/bin/next");
const TOKEN = "rk_test_acme_0123456789";

declare global {
  interface Window {
    /** The types of the events the draft page heard (fixtures/next-app/app/draft/live.jsx). */
    __spoolEvents: string[];
  }
}

interface NextProcess {
  child: ChildProcess;
  output: () => string;
  done: Promise<void>;
}

/** Runs `next <args>` in the fixture: resolves to its output once it exits 0 (`build`). */
function next(args: string[], env: Record<string, string>): Promise<string>;
/** Runs `next <args>` in the fixture and returns the process (`start`). */
function next(args: string[], env: Record<string, string>, options: { wait: false }): NextProcess;
function next(args: string[], env: Record<string, string>, { wait = true } = {}): Promise<string> | NextProcess {
  const child = spawn(process.execPath, [NEXT_BIN, ...args], {
    cwd: APP,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: "1", NODE_ENV: "production", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const keep = (b: Buffer) => {
    output += b.toString();
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  process.on("exit", () => child.kill("SIGKILL"));
  const done = new Promise<void>((resolve, reject) => {
    child.on("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`next ${args[0]} exited with ${code}:\n${output}`)),
    );
  });
  if (wait) return done.then(() => output);
  done.catch(() => {}); // stopped by the test
  return { child, output: () => output, done };
}

/** The CMS the pages read from: GET /posts/<slug> → {"title": ...} (`?draft`: the draft's). */
async function cmsServer() {
  const titles = new Map();
  const server = createServer((req, res) => {
    const slug = (req.url ?? "").split("/").pop() ?? "";
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ title: titles.get(slug) ?? "(none)" }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { titles, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

const title = async (url: string) => {
  const html = await (await fetch(url)).text();
  return html.match(/<h1 id="title">([^<]*)<\/h1>/)?.[1];
};

describe("@spool-live/next in a real Next.js app", () => {
  let stack: Stack;
  let cms: Awaited<ReturnType<typeof cmsServer>>;
  let app: NextProcess;
  let base: string;
  let contentDir: string;
  const setFile = (slug: string, t: string) =>
    writeFileSync(join(contentDir, `${slug}.json`), JSON.stringify({ title: t }));
  const signedCall = (id: string, body: string, { secret = REVALIDATE_SECRET, at = new Date() } = {}) =>
    fetch(`${base}/api/revalidate`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": id,
        "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
        "webhook-signature": new Webhook(secret).sign(id, at, body),
      },
      body,
    });

  before(async () => {
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    cms = await cmsServer();
    contentDir = tempDir("spool-js-content-");
    const revalidate = [{ url: `${base}/api/revalidate`, secret: REVALIDATE_SECRET }];
    const collections = (id: string) => ({
      blog: { paths: ["/blog/{slug}", "/blog"], tags: ["blog", "blog:{slug}"] },
      fresh: { paths: [`/fresh/${id}/{slug}`], tags: [] },
    });
    stack = await startStack({
      services: ["ingest", "delivery", "revalidator"],
      // The sites' revalidation target is local: allowed explicitly.
      env: { SPOOL_ALLOWED_TARGET_NETWORKS: "127.0.0.0/8,::1/128" },
      sites: [
        site("acme", {
          cors_origins: [base],
          revalidate,
          subscriber_secret: WEBHOOK_SECRET,
          collections: collections("acme"),
        }),
        site("held", {
          cors_origins: [base],
          revalidate,
          notify: "after_revalidate",
          collections: collections("held"),
        }),
      ],
    });
    // NEXT_PUBLIC_* are inlined by the build.
    const publicEnv = {
      NEXT_PUBLIC_SPOOL_LIVE_URL: stack.delivery.url,
      NEXT_PUBLIC_SPOOL_SITE: "acme",
      NEXT_PUBLIC_SPOOL_READ_TOKEN: TOKEN,
    };
    await next(["build"], publicEnv);
    app = next(
      ["start", "-p", String(port), "-H", "127.0.0.1"],
      {
        ...publicEnv,
        CMS_URL: cms.url,
        CONTENT_DIR: contentDir,
        SPOOL_REVALIDATE_SECRET: REVALIDATE_SECRET,
        SPOOL_SUBSCRIBER_SECRET: WEBHOOK_SECRET,
      },
      { wait: false },
    );
    await eventually(
      "next start",
      async () => (await fetch(`${base}/api/revalidate`, { method: "POST" })).status === 401,
      { timeout: 30000, interval: 100 },
    );
  });

  after(async () => {
    app?.child.kill("SIGTERM");
    await stack?.stop();
    cms?.close();
  });

  it("the revalidator calls the route; the page served next shows the new content", async () => {
    setFile("hello", "Hello v1");
    cms.titles.set("hello", "Tagged v1");
    assert.equal(await title(`${base}/blog/hello`), "Hello v1");
    assert.equal(await title(`${base}/tagged/hello`), "Tagged v1");

    // The CMS changes; the cached pages don't (that's what revalidation is for).
    setFile("hello", "Hello v2");
    cms.titles.set("hello", "Tagged v2");
    assert.equal(await title(`${base}/blog/hello`), "Hello v1");
    assert.equal(await title(`${base}/tagged/hello`), "Tagged v1");

    const { seq } = await publish(stack.ingest.url, "acme", { slug: "hello" });
    // The route logs once it has revalidated, before it answers the revalidator.
    await eventually(
      "the revalidation call",
      () => app.output().includes("/blog/hello /blog tag:blog tag:blog:hello"),
      { timeout: 15000 },
    );
    assert.ok(seq > 0);
    // The very next request of each page: /blog/hello by its path, /tagged/hello by its tag.
    assert.equal(await title(`${base}/blog/hello`), "Hello v2");
    assert.equal(await title(`${base}/tagged/hello`), "Tagged v2");
  });

  it("verifies signatures, answers per the retry semantics, and ignores a replay", async () => {
    const body = JSON.stringify({ type: "revalidate", site: "acme", paths: ["/blog/replay"], tags: [], events: [] });
    const unsigned = await fetch(`${base}/api/revalidate`, { method: "POST", body });
    assert.equal(unsigned.status, 401);
    assert.equal((await unsigned.json()).error.code, "invalid_signature");
    const wrongSecret = await signedCall("rv_wrong", body, { secret: "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==" });
    assert.equal(wrongSecret.status, 401);
    const stale = await signedCall("rv_stale", body, { at: new Date(Date.now() - 10 * 60 * 1000) });
    assert.equal(stale.status, 401, "a timestamp outside the 5 min tolerance");
    const notJson = await signedCall("rv_notjson", "not json");
    assert.equal(notJson.status, 400);

    setFile("replay", "Replay v1");
    assert.equal(await title(`${base}/blog/replay`), "Replay v1");
    setFile("replay", "Replay v2");
    const first = await signedCall("rv_replay_1", body);
    assert.equal(first.status, 200);
    assert.deepEqual((await first.json()).paths, ["/blog/replay"]);
    assert.equal(await title(`${base}/blog/replay`), "Replay v2");

    // The same webhook-id again (a retry whose answer was lost), freshly signed: no-op.
    setFile("replay", "Replay v3");
    const again = await signedCall("rv_replay_1", body);
    assert.equal(again.status, 200);
    assert.equal((await again.json()).duplicate, true);
    assert.equal(await title(`${base}/blog/replay`), "Replay v2", "a replay revalidates nothing");
    const fresh = await signedCall("rv_replay_2", body);
    assert.equal(fresh.status, 200);
    assert.equal(await title(`${base}/blog/replay`), "Replay v3");
  });

  it("<SpoolLive /> refreshes the page in the browser on events (Chromium)", async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM_PATH)`);
    cms.titles.set("live", "Live v1");
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const logs: string[] = [];
      page.on("console", (m) => logs.push(m.text()));
      await page.goto(`${base}/live`);
      assert.equal(await page.textContent("#title"), "Live v1");
      await page.waitForFunction(() => document.querySelector("#status")?.textContent === "live", null, {
        timeout: 5000,
      });
      cms.titles.set("live", "Live v2");
      await publish(stack.ingest.url, "acme", { slug: "live" });
      await page.waitForFunction(() => document.querySelector("#title")?.textContent === "Live v2", null, {
        timeout: 5000,
      });
      assert.equal(await page.textContent("#last"), "live");
      assert.ok(
        logs.some((l) => l.includes("[DEV] ✅ Connected to Spool Live for site: acme")),
        logs.join("\n"),
      );
      assert.ok(
        logs.some((l) => l.includes("[DEV] 🔄 Live update: blog/live")),
        logs.join("\n"),
      );
    } finally {
      await browser.close();
    }
  });

  it("in draft mode an editor sees a draft live; a visitor's page never hears of it (Chromium)", async () => {
    cms.titles.set("draft", "Published v1");
    cms.titles.set("draft?draft", "Draft v1");
    const browser = await launchChromium();
    try {
      const editor = await (await browser.newContext()).newPage();
      await editor.goto(`${base}/api/draft`);
      await editor.goto(`${base}/draft`);
      const visitor = await (await browser.newContext()).newPage();
      await visitor.goto(`${base}/draft`);
      assert.equal(await editor.textContent("#mode"), "preview");
      assert.equal(await editor.textContent("#title"), "Draft v1");
      assert.equal(await visitor.textContent("#title"), "Published v1");
      for (const page of [editor, visitor]) {
        await page.waitForFunction(() => document.querySelector("#status")?.textContent === "live", null, {
          timeout: 5000,
        });
      }
      // An editor saves a draft: its page refreshes and shows it.
      cms.titles.set("draft?draft", "Draft v2");
      await publish(stack.ingest.url, "acme", { slug: "draft", type: "content.updated", title: "Secret draft title" });
      await editor.waitForFunction(() => document.querySelector("#title")?.textContent === "Draft v2", null, {
        timeout: 5000,
      });
      assert.equal(await editor.textContent("#last"), "content.updated draft");
      // The visitor's page heard nothing: no event, no refresh, while a published change
      // after it does reach it.
      cms.titles.set("draft", "Published v2");
      await publish(stack.ingest.url, "acme", { slug: "draft" });
      await visitor.waitForFunction(
        () => document.querySelector("#last")?.textContent === "content.published draft",
        null,
        { timeout: 5000 },
      );
      assert.deepEqual(await visitor.evaluate(() => window.__spoolEvents), ["content.published"]);
      assert.equal(
        (await editor.evaluate(() => window.__spoolEvents))[0],
        "content.updated",
        "the editor got the draft",
      );
      assert.ok(!(await visitor.content()).includes("Secret draft title"));
    } finally {
      await browser.close();
    }
  });

  it("with notify: after_revalidate the page a browser refreshes on an event is fresh, every time (Chromium)", async () => {
    const browser = await launchChromium();
    // Twenty changes, each: write the new content, send the webhook, and read what the
    // browser's refresh (on the event) shows once it has settled.
    const run = async (siteId: string, slug: string, timeout: number) => {
      setFile(slug, `${slug} v0`);
      const page = await browser.newPage();
      const logs: string[] = [];
      page.on("console", (m) => logs.push(m.text()));
      await page.goto(`${base}/fresh/${siteId}/${slug}`);
      await eventually("the page's subscription live", () => logs.some((l) => l.includes("✅ Connected")));
      let fresh = 0;
      for (let i = 1; i <= 20; i++) {
        const want = `${slug} v${i}`;
        setFile(slug, want);
        await publish(stack.ingest.url, siteId, { slug, collection: "fresh" });
        try {
          await page.waitForFunction((t) => document.querySelector("#title")?.textContent === t, want, { timeout });
          fresh++;
        } catch {
          // The refresh came before the revalidation: the page stays stale until the next.
        }
      }
      await page.close();
      return fresh;
    };
    try {
      // `held` notifies after revalidation, `acme` at once (each site maps `fresh` to its
      // own page).
      const held = await run("held", "held", 3000);
      const immediate = await run("acme", "immediate", 1500);
      console.log(`fresh after the event's refresh: after_revalidate ${held}/20, immediate ${immediate}/20`);
      assert.equal(held, 20, "with after_revalidate, every refresh showed the new content");
    } finally {
      await browser.close();
    }
  });
});
