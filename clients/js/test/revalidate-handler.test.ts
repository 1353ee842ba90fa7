// createRevalidateHandler on its own (revalidatePath/revalidateTag replaced by recorders):
// the answers the revalidator's retry semantics rely on. The real Next.js app is next.test.ts.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createRevalidateHandler, type RevalidateHandlerOptions } from "@spool-live/next/server";
import { Webhook } from "standardwebhooks";

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET = "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA==";

function request(
  id: string,
  body: unknown,
  {
    secret = SECRET,
    at = new Date(),
    headers = {},
  }: { secret?: string; at?: Date; headers?: Record<string, string> } = {},
): Request {
  const payload = typeof body === "string" ? body : JSON.stringify(body);
  return new Request("http://site.test/api/revalidate", {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
      "webhook-signature": new Webhook(secret).sign(id, at, payload),
      ...headers,
    },
    body: payload,
  });
}

function recorder(extra: Partial<RevalidateHandlerOptions> = {}) {
  const calls: string[] = [];
  const handler = createRevalidateHandler({
    secret: SECRET,
    revalidatePath: (p) => {
      calls.push(`path:${p}`);
    },
    revalidateTag: (t, profile) => {
      calls.push(`tag:${t}:${JSON.stringify(profile)}`);
    },
    log: false,
    ...extra,
  });
  return { calls, handler };
}

const BODY = {
  type: "revalidate",
  site: "acme",
  paths: ["/blog/my-post", "/blog"],
  tags: ["blog", "blog:my-post"],
  events: [{ seq: 7, id: "msg_1", type: "content.published", collection: "blog", slug: "my-post" }],
};

describe("createRevalidateHandler", () => {
  it("revalidates every path and tag of a signed call, tags with { expire: 0 }", async () => {
    const { calls, handler } = recorder();
    const response = await handler(request("rv_1", BODY));
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json().then((b) => [b.revalidated, b.duplicate]), [true, false]);
    assert.deepEqual(calls, [
      "path:/blog/my-post",
      "path:/blog",
      'tag:blog:{"expire":0}',
      'tag:blog:my-post:{"expire":0}',
    ]);
  });

  it("does nothing for a webhook-id it has handled (a retry whose answer was lost)", async () => {
    const { calls, handler } = recorder();
    assert.equal((await handler(request("rv_2", BODY))).status, 200);
    calls.length = 0;
    const replay = await handler(request("rv_2", BODY));
    assert.equal(replay.status, 200);
    assert.equal((await replay.json()).duplicate, true);
    assert.deepEqual(calls, []);
  });

  it("answers concurrent copies of one call once", async () => {
    let running = 0;
    let most = 0;
    const { handler } = recorder({
      revalidatePath: async () => {
        running++;
        most = Math.max(most, running);
        await new Promise((r) => setTimeout(r, 20));
        running--;
      },
    });
    const answers = await Promise.all([handler(request("rv_3", BODY)), handler(request("rv_3", BODY))]);
    assert.deepEqual(
      answers.map((a) => a.status),
      [200, 200],
    );
    assert.equal(most, 1);
  });

  it("answers 500 when revalidating throws, and does it again on the retry", async () => {
    let fail = true;
    const { calls, handler } = recorder({
      revalidateTag: (t) => {
        if (fail) throw new Error("cache unavailable");
        calls.push(`tag:${t}`);
      },
    });
    const first = await handler(request("rv_4", BODY));
    assert.equal(first.status, 500, "5xx: the revalidator retries");
    fail = false;
    const retry = await handler(request("rv_4", BODY));
    assert.equal(retry.status, 200);
    assert.equal((await retry.json()).duplicate, false);
    assert.ok(calls.includes("tag:blog"));
  });

  it("refuses what isn't signed with the secret: 401, which the revalidator dead-letters", async () => {
    const { calls, handler } = recorder();
    const cases = {
      "wrong secret": request("rv_5", BODY, { secret: OLD_SECRET }),
      "stale timestamp": request("rv_6", BODY, { at: new Date(Date.now() - 6 * 60 * 1000) }),
      "future timestamp": request("rv_7", BODY, { at: new Date(Date.now() + 6 * 60 * 1000) }),
      "tampered signature": request("rv_8", BODY, { headers: { "webhook-signature": "v1,AAAA" } }),
      "no headers": new Request("http://site.test/api/revalidate", { method: "POST", body: JSON.stringify(BODY) }),
    };
    for (const [name, req] of Object.entries(cases)) {
      const response = await handler(req);
      assert.equal(response.status, 401, name);
      assert.equal((await response.json()).error.code, "invalid_signature", name);
    }
    assert.deepEqual(calls, []);
  });

  it("answers 400 to a signed body that isn't the revalidation JSON", async () => {
    const { handler } = recorder();
    assert.equal((await handler(request("rv_9", "not json"))).status, 400);
    assert.equal((await handler(request("rv_10", { paths: "/blog" }))).status, 400);
  });

  it("accepts any of several secrets while one is rotated out", async () => {
    const { handler } = recorder({ secret: [SECRET, OLD_SECRET] });
    assert.equal((await handler(request("rv_11", BODY, { secret: OLD_SECRET }))).status, 200);
    assert.equal((await handler(request("rv_12", BODY))).status, 200);
  });

  it("answers 500 (retried) while the secret is not configured", async () => {
    const { handler } = recorder({ secret: undefined });
    const response = await handler(request("rv_13", BODY));
    assert.equal(response.status, 500);
    assert.equal((await response.json()).error.code, "not_configured");
  });
});
