// Reconnection timing with a fake clock and a fake EventSource: no services, no waiting.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  backoffDelay,
  type Clock,
  type EventSourceLike,
  type ResetInfo,
  type SpoolEvent,
  type Status,
  type StatusInfo,
  type SubscribeOptions,
  subscribe,
} from "@spool-live/client";

interface Timer {
  at: number;
  fn: () => void;
}

/** Timers that run only when the test advances time. */
class FakeClock implements Clock {
  now = 0;
  timers: Timer[] = [];
  setTimeout = (fn: () => void, ms: number): Timer => {
    const timer = { at: this.now + ms, fn };
    this.timers.push(timer);
    return timer;
  };
  clearTimeout = (timer: unknown) => {
    this.timers = this.timers.filter((t) => t !== timer);
  };
  /** The delays of the pending timers, from now. */
  pending() {
    return this.timers.map((t) => t.at - this.now).sort((a, b) => a - b);
  }
  async advance(ms: number) {
    const until = this.now + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.now = due.at;
      due.fn();
      await flush();
    }
    this.now = until;
    await flush();
  }
}

const flush = () => new Promise((r) => setImmediate(r));

/** Records every EventSource the client makes; the test plays the server. */
function fakeEventSources(clock: FakeClock) {
  const made: FakeEventSource[] = [];
  class FakeEventSource implements EventSourceLike {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    readyState = 0;
    closed = false;
    listeners: Record<string, Array<(event: MessageEvent | Event) => void>> = {};
    url: URL;
    /** When (on the fake clock) the client made it. */
    at: number;
    constructor(url: string) {
      this.url = new URL(url);
      this.at = clock.now;
      made.push(this);
    }
    addEventListener(type: string, fn: (event: MessageEvent | Event) => void) {
      this.listeners[type] ??= [];
      this.listeners[type].push(fn);
    }
    close() {
      this.closed = true;
      this.readyState = 2;
    }
    /** A server-sent event (`data` as JSON), or `open`/`error` without data; `extra`: e.g. `lastEventId`. */
    emit(type: string, data?: unknown, extra: { lastEventId?: string } = {}) {
      const event = { type, data: data === undefined ? undefined : JSON.stringify(data), ...extra };
      for (const fn of this.listeners[type] ?? []) fn(event as unknown as MessageEvent);
    }
    ready(lastSeq: number) {
      this.readyState = 1;
      this.emit("open");
      this.emit("ready", { last_seq: lastSeq });
    }
    /** What Chromium does when the stream ends or the network fails: error, then it would retry after `retry:`. */
    drop() {
      this.readyState = 0;
      this.emit("error");
    }
    /** What Chromium does on a non-200 answer: error, CLOSED, never again. */
    refuse() {
      this.readyState = 2;
      this.emit("error");
    }
  }
  return { FakeEventSource, made };
}

function event(seq: number): SpoolEvent {
  return {
    seq,
    id: `msg_${seq}`,
    site: "acme",
    type: "content.published",
    collection: "blog",
    audience: "public",
    item: { id: String(seq) },
    paths: [],
    tags: [],
    received_at: "",
  };
}

function setup(extra: Partial<SubscribeOptions> = {}) {
  const clock = new FakeClock();
  const { FakeEventSource, made } = fakeEventSources(clock);
  const events: number[] = [];
  const statuses: Array<{ s: Status } & StatusInfo> = [];
  const unsubscribe = subscribe({
    url: "http://delivery.test",
    site: "acme",
    token: "rk_test",
    clock,
    EventSource: FakeEventSource,
    random: () => 0.5,
    backoff: { initialMs: 1000, maxMs: 8000 },
    share: false,
    onEvent: (e) => events.push(e.seq),
    onStatus: (s, info) => statuses.push({ s, ...info }),
    ...extra,
  });
  return { clock, made, events, statuses, unsubscribe };
}

describe("backoffDelay", () => {
  it("is exponential with full jitter and a cap", () => {
    const top = () => 0.999999;
    const ceilings = [0, 1, 2, 3, 4, 5, 6, 10, 60].map((n) => backoffDelay(n, { initialMs: 1000, maxMs: 30000 }, top));
    assert.deepEqual(ceilings, [999, 1999, 3999, 7999, 15999, 29999, 29999, 29999, 29999]);
    assert.equal(
      backoffDelay(7, {}, () => 0),
      0,
    );
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(i % 12);
      assert.ok(d >= 0 && d < Math.min(30000, 1000 * 2 ** (i % 12)), `delay ${d} out of range`);
    }
  });

  it("spreads delays over the whole window (full jitter, not equal jitter)", () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(3, { initialMs: 1000, maxMs: 30000 }));
    const low = delays.filter((d) => d < 2000).length;
    const high = delays.filter((d) => d >= 6000).length;
    // Uniform on [0, 8000): a quarter of the samples in each quarter.
    assert.ok(low > 350 && low < 650, `low quarter: ${low}`);
    assert.ok(high > 350 && high < 650, `high quarter: ${high}`);
  });
});

describe("reconnection with a fake clock", () => {
  it("closes every failed EventSource and waits its own growing, capped backoff", async () => {
    const { clock, made, statuses, unsubscribe } = setup({ transport: "sse" });
    assert.equal(made.length, 1);
    const gaps: number[] = [];
    for (let i = 0; i < 6; i++) {
      const source = made[made.length - 1];
      // Alternate the two ways Chromium fails: a drop it would retry after `retry:` by
      // itself, and a non-200 after which it gives up for good. Both are ours to redo.
      if (i % 2 === 0) source.drop();
      else source.refuse();
      assert.ok(source.closed, "the failed EventSource is closed, so the browser never retries on its own");
      const [delay] = clock.pending().filter((d) => d < 10000);
      await clock.advance(delay);
      assert.equal(made.length, i + 2, "a new EventSource after the backoff");
      gaps.push(made[made.length - 1].at - source.at);
    }
    // random() = 0.5: half of min(8000, 1000 * 2^n).
    assert.deepEqual(gaps, [500, 1000, 2000, 4000, 4000, 4000]);
    const reconnecting = statuses.filter((s) => s.s === "reconnecting").map((s) => s.delayMs);
    assert.deepEqual(reconnecting, [500, 1000, 2000, 4000, 4000, 4000]);
    unsubscribe();
    assert.equal(statuses.at(-1)?.s, "closed");
  });

  it("starts over from the first delay once a connection said ready, and resumes from the last seq", async () => {
    const { clock, made, events, unsubscribe } = setup({ transport: "sse" });
    made[0].drop();
    await clock.advance(500);
    made[1].drop();
    await clock.advance(1000);
    const live = made[2];
    live.ready(41);
    live.emit("message", event(42), { lastEventId: "42" });
    live.emit("message", event(43), { lastEventId: "43" });
    live.drop();
    assert.deepEqual(
      clock.pending().filter((d) => d < 10000),
      [500],
      "the backoff starts over after ready",
    );
    await clock.advance(500);
    assert.equal(made[3].url.searchParams.get("since"), "43");
    assert.equal(made[3].url.searchParams.get("token"), "rk_test");
    // The server replays what we already have (another replica's overlap): skipped.
    made[3].ready(44);
    made[3].emit("message", event(43));
    made[3].emit("message", event(44));
    assert.deepEqual(events, [42, 43, 44]);
    unsubscribe();
  });

  it("pins 'live from now' to the server's position, so a reconnection misses nothing", async () => {
    const { clock, made, unsubscribe } = setup({ transport: "sse" });
    assert.equal(made[0].url.searchParams.has("since"), false);
    made[0].ready(17);
    made[0].drop();
    await clock.advance(500);
    assert.equal(made[1].url.searchParams.get("since"), "17");
    unsubscribe();
  });

  it("treats a stream that never says ready as failed (a buffering proxy)", async () => {
    const { clock, made, unsubscribe } = setup({ transport: "sse", readyTimeoutMs: 3000 });
    made[0].emit("open");
    await clock.advance(2999);
    assert.equal(made[0].closed, false);
    await clock.advance(1);
    assert.equal(made[0].closed, true);
    await clock.advance(500);
    assert.equal(made.length, 2);
    unsubscribe();
  });

  it("switches to long-poll after repeated SSE failures and back to SSE when it works", async () => {
    const polls: URL[] = [];
    const fetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
      const u = new URL(url instanceof Request ? url.url : url);
      polls.push(u);
      if (u.searchParams.get("since") === "7") {
        return Response.json({ events: [event(8), event(9)], next: 9, reset: null });
      }
      // Hold like a long-poll until aborted.
      return await new Promise((_, reject) =>
        init?.signal?.addEventListener("abort", () => reject(new Error("aborted"))),
      );
    };
    const { clock, made, events, statuses, unsubscribe } = setup({
      since: 7,
      fetch,
      sseFailuresBeforePoll: 3,
      sseRetryMs: 20000,
    });
    made[0].refuse();
    await clock.advance(500);
    made[1].refuse();
    await clock.advance(1000);
    made[2].refuse();
    await flush();
    assert.equal(made.length, 3, "no fourth SSE attempt: long-poll now");
    await flush();
    assert.equal(polls[0].pathname, "/v1/sites/acme/events");
    assert.equal(polls[0].searchParams.get("since"), "7");
    assert.equal(polls[0].searchParams.get("wait"), "25");
    await flush();
    assert.deepEqual(events, [8, 9]);
    assert.equal(polls[1].searchParams.get("since"), "9");
    assert.ok(statuses.some((s) => s.s === "polling"));
    // SSE is tried again after sseRetryMs, from the poll's cursor, and takes over on ready.
    await clock.advance(20000);
    assert.equal(made.length, 4);
    assert.equal(made[3].url.searchParams.get("since"), "9");
    made[3].ready(9);
    assert.equal(statuses.at(-1)?.s, "live");
    made[3].emit("message", event(10));
    assert.deepEqual(events, [8, 9, 10]);
    const pollsBefore = polls.length;
    await clock.advance(60000);
    assert.equal(polls.length, pollsBefore, "the long-poll stopped");
    unsubscribe();
  });

  it("reports a refused token with the server's error code, and keeps retrying at the cap", async () => {
    const fetch = async () =>
      Response.json({ error: { code: "unauthorized", message: "this token can't read this site" } }, { status: 401 });
    const { clock, statuses, unsubscribe } = setup({
      transport: "poll",
      fetch,
      backoff: { initialMs: 100, maxMs: 5000 },
    });
    await flush();
    await flush();
    const last = statuses[statuses.length - 1];
    assert.equal(last.s, "reconnecting");
    assert.equal(last.error?.status, 401);
    assert.equal(last.error?.code, "unauthorized");
    assert.equal(last.delayMs, 5000, "a 4xx is not retried quickly");
    await clock.advance(5000);
    await flush();
    assert.equal(statuses.filter((s) => s.s === "reconnecting").length, 2);
    unsubscribe();
  });

  it("applies a reset: history_truncated continues from first_seq", async () => {
    const resets: ResetInfo[] = [];
    const { made, events, unsubscribe } = setup({ transport: "sse", since: 3, onReset: (r) => resets.push(r) });
    made[0].ready(100);
    made[0].emit("reset", { reason: "history_truncated", first_seq: 50 });
    made[0].emit("message", event(50));
    assert.deepEqual(resets, [{ reason: "history_truncated", first_seq: 50 }]);
    assert.deepEqual(events, [50]);
    unsubscribe();
  });

  it("applies a reset: cursor_ahead continues from the server's end", async () => {
    const { made, events, unsubscribe } = setup({ transport: "sse", since: 500 });
    made[0].ready(12);
    made[0].emit("reset", { reason: "cursor_ahead", first_seq: 1 });
    made[0].emit("message", event(13));
    assert.deepEqual(events, [13]);
    unsubscribe();
  });
});
