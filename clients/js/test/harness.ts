// Test fixtures: the real nats-server and the real Spool Live binaries on free ports, the
// way the Rust integration tests run them (integration-tests/src/{nats_server,process}.rs):
// nats-server with JetStream in a temp dir, each service with SPOOL_LISTEN=127.0.0.1:0 and
// JSON logs, from which the bound port is read; then /readyz is awaited.
//
// The tests are TypeScript, compiled by `tsc -b test` (test/tsconfig.json) to test/dist/,
// from where they run: paths to the repository are taken from here, not from a test file.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { EventType } from "@spool-live/client";
import { type Browser, chromium } from "playwright-core";
import { Webhook } from "standardwebhooks";

/** clients/js/test (this file runs from test/dist/). */
export const TEST_DIR = resolve(import.meta.dirname, "..");
/** clients/js. */
export const JS_DIR = resolve(TEST_DIR, "..");
export const REPO = resolve(JS_DIR, "../..");
export const WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
export const REVALIDATE_SECRET = "whsec_cmV2YWxpZGF0ZS1zZWNyZXQtZm9yLXRoZS1qcy10ZXN0cw==";
export const ADMIN_TOKEN = "test-admin-token";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Debian's Chromium, headless, quiet (no downloads of its own). */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

export type ServiceName = "ingest" | "delivery" | "revalidator";

/** A running service binary. */
export interface Service {
  name: ServiceName;
  port: number;
  url: string;
  /** The last 20,000 characters it printed. */
  logs: () => string;
  /** SIGTERM (graceful, as in a deploy) and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL (a crash). */
  kill(): Promise<void>;
}

export interface Nats {
  port: number;
  url: string;
  logs: () => string;
  stop(): Promise<void>;
}

/** A site of the sites file (the contract's Site; only `id` is required here). */
export interface SiteConfig {
  id: string;
  [field: string]: unknown;
}

/** The ingest's answer to a webhook. */
export interface Published {
  id: string;
  seq: number;
  duplicate: boolean;
}

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Where the service binaries are: $SPOOL_BIN_DIR, else the newer of target/debug and target/release. */
export function binDir(): string {
  if (process.env.SPOOL_BIN_DIR) return process.env.SPOOL_BIN_DIR;
  const names = ["spool-ingest", "spool-delivery", "spool-revalidator"];
  const candidates = ["debug", "release"]
    .map((profile) => join(REPO, "target", profile))
    .filter((dir) => names.every((n) => existsSync(join(dir, n))))
    .sort((a, b) => statSync(join(b, "spool-delivery")).mtimeMs - statSync(join(a, "spool-delivery")).mtimeMs);
  const [newest] = candidates;
  if (!newest) {
    throw new Error("the service binaries are missing: run `cargo build --workspace --bins` at the repository root");
  }
  return newest;
}

function natsServerBin() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  const tools = join(REPO, ".tools/bin/nats-server");
  return existsSync(tools) ? tools : "nats-server";
}

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Polls `check` until it returns a truthy value; throws with `what` after `timeout` ms. */
export async function eventually<T>(
  what: string,
  check: () => T | Promise<T>,
  { timeout = 10000, interval = 25 } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeout;
  let last: Error | undefined;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e as Error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A free TCP port on 127.0.0.1 (for a server that can't bind port 0 and tell us). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolvePort(port));
    });
  });
}

function track(child: ChildProcess, name: string) {
  children.add(child);
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on("exit", (code, signal) => {
      children.delete(child);
      r({ code, signal });
    }),
  );
  return { output: () => `--- ${name} ---\n${output}`, exited };
}

/** A real nats-server with JetStream on a free port and a temp store. */
export async function startNats(): Promise<Nats> {
  const dir = tempDir("spool-js-nats-");
  const child = spawn(natsServerBin(), ["-a", "127.0.0.1", "-p", "-1", "-js", "-sd", join(dir, "js")], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const t = track(child, "nats-server");
  const port = await eventually(
    "nats-server to listen",
    () => {
      const text = t.output();
      const m = text.match(/Listening for client connections on [^\s]*:(\d+)/);
      return m && text.includes("Server is ready") ? Number(m[1]) : undefined;
    },
    { timeout: 20000 },
  );
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    logs: t.output,
    async stop() {
      child.kill("SIGTERM");
      await t.exited;
    },
  };
}

/**
 * Starts `spool-<name>` with `env` and waits until `/readyz` answers 200. `listen` fixes the
 * address (a restart on the same port); default 127.0.0.1:0.
 */
export async function startService(
  name: ServiceName,
  env: Record<string, string>,
  { listen = "127.0.0.1:0" } = {},
): Promise<Service> {
  const child = spawn(join(binDir(), `spool-${name}`), [], {
    env: {
      ...process.env,
      ...env,
      SPOOL_LISTEN: listen,
      SPOOL_LOG_FORMAT: "json",
      RUST_LOG: process.env.RUST_LOG ?? "info",
      OTEL_EXPORTER_OTLP_ENDPOINT: "",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const t = track(child, `spool-${name}`);
  let port: number | undefined;
  let buffered = "";
  child.stdout.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        const v = JSON.parse(line);
        const p = v.port ?? v.fields?.port;
        if (port === undefined && typeof p === "number") port = p;
      } catch {
        // not JSON
      }
    }
  });
  try {
    const deadline = Date.now() + 20000;
    while (port === undefined) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`spool-${name} exited with ${child.exitCode ?? child.signalCode}`);
      }
      if (Date.now() > deadline) throw new Error(`spool-${name} did not log its port within 20 s`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const url = `http://127.0.0.1:${port}`;
    await eventually(
      `spool-${name} ready`,
      async () => (await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) })).ok,
      { timeout: 20000 },
    );
  } catch (e) {
    child.kill("SIGKILL");
    (e as Error).message += `\n${t.output()}`;
    throw e;
  }
  return {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    logs: t.output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 25000);
      await t.exited;
      clearTimeout(timer);
    },
    async kill() {
      child.kill("SIGKILL");
      await t.exited;
    },
  };
}

/** A site of the contract, with the test secret and a read token. */
export function site(id: string, overrides: Omit<Partial<SiteConfig>, "id"> = {}): SiteConfig {
  return {
    id,
    webhook_secret: WEBHOOK_SECRET,
    read_tokens: [`rk_test_${id}_0123456789`],
    public: false,
    cors_origins: ["*"],
    collections: { blog: { paths: ["/blog/{slug}", "/blog"], tags: ["blog", "blog:{slug}"] } },
    revalidate: [],
    ...overrides,
  };
}

/**
 * nats-server and the services named (default ingest and delivery), sharing one sites file.
 * A service not started is `undefined` at run time, whatever its type says.
 */
export interface Stack extends Record<ServiceName, Service> {
  nats: Nats;
  env: Record<string, string>;
  /**
   * Restarts a service on the same port (after `stop`/`kill`). Binding is retried (the old
   * socket may linger for a moment); a process that starts but never gets ready fails.
   */
  restart(name: ServiceName, extraEnv?: Record<string, string>): Promise<Service>;
  stop(): Promise<void>;
}

export async function startStack({
  sites,
  services = ["ingest", "delivery"],
  env = {},
}: {
  sites: SiteConfig[];
  services?: ServiceName[];
  env?: Record<string, string>;
}): Promise<Stack> {
  const nats = await startNats();
  const dir = tempDir("spool-js-sites-");
  const sitesFile = join(dir, "sites.json");
  writeFileSync(sitesFile, JSON.stringify(sites, null, 2));
  const baseEnv = { NATS_URL: nats.url, SPOOL_SITES_FILE: sitesFile, SPOOL_ADMIN_TOKEN: ADMIN_TOKEN, ...env };
  const started: Partial<Record<ServiceName, Service>> = {};
  for (const name of services) started[name] = await startService(name, baseEnv);
  const stack = {
    nats,
    env: baseEnv,
    ...(started as Record<ServiceName, Service>),
    async restart(name: ServiceName, extraEnv: Record<string, string> = {}) {
      const old = started[name];
      if (!old) throw new Error(`spool-${name} was not started`);
      await old.stop();
      let fresh: Service | undefined;
      for (let attempt = 0; !fresh; attempt++) {
        try {
          fresh = await startService(name, { ...baseEnv, ...extraEnv }, { listen: `127.0.0.1:${old.port}` });
        } catch (e) {
          if (!/exited with/.test((e as Error).message) || attempt >= 20) throw e;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      started[name] = fresh;
      stack[name] = fresh;
      return fresh;
    },
    async stop() {
      for (const s of Object.values(started).reverse()) await s.stop().catch(() => {});
      await nats.stop();
    },
  };
  return stack;
}

let counter = 0;

/** Sends a signed `content.published` webhook to the ingest; resolves to its JSON answer (with `seq`). */
export async function publish(
  ingestUrl: string,
  siteId: string,
  {
    collection = "blog",
    slug,
    title,
    id,
    type = "content.published",
  }: { collection?: string; slug?: string; title?: string; id?: string; type?: EventType } = {},
): Promise<Published> {
  counter += 1;
  const msgId = id ?? `msg_js_${Date.now().toString(36)}_${counter}`;
  slug ??= `post-${counter}`;
  const body = JSON.stringify({
    type,
    collection,
    item: { id: slug, slug, title: title ?? `Post ${slug}` },
    occurred_at: new Date().toISOString(),
  });
  // A CMS retries a 503 after its Retry-After (nothing was stored); so do we, briefly.
  for (let attempt = 0; ; attempt++) {
    const now = new Date();
    const response = await fetch(`${ingestUrl}/v1/sites/${siteId}/webhooks`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": msgId,
        "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
        "webhook-signature": new Webhook(WEBHOOK_SECRET).sign(msgId, now, body),
      },
      body,
    });
    const json = await response.json();
    if (response.status === 202 || response.status === 200) return json;
    if (process.env.SPOOL_TEST_DEBUG)
      console.error(new Date().toISOString(), "webhook", response.status, JSON.stringify(json));
    if (response.status !== 503 || attempt >= 20) {
      throw new Error(`webhook answered ${response.status}: ${JSON.stringify(json)}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** The value of one Prometheus sample, e.g. metric(url, 'spool_delivery_open_connections{kind="sse"}'). */
export async function metric(serviceUrl: string, sample: string): Promise<number> {
  const text = await (await fetch(`${serviceUrl}/metrics`)).text();
  for (const line of text.split("\n")) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1));
  }
  return 0;
}
