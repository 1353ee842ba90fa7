import { backoffDelay } from "./backoff.js";
import type {
  BackoffOptions,
  Clock,
  EventSourceConstructor,
  EventSourceLike,
  ResetInfo,
  RevalidatedInfo,
  SpoolError,
  SpoolEvent,
  Status,
  StatusInfo,
  Transport,
} from "./types.js";
import { authHeaders, type Endpoint, pollUrl, streamUrl } from "./urls.js";

/** What a connection reports; the subscription (or the tab-sharing leader) decides what to do. */
export interface ConnectionHandlers {
  event(event: SpoolEvent): void;
  reset(reset: ResetInfo): void;
  /** A target revalidated events already delivered (SSE only). */
  revalidated(info: RevalidatedInfo): void;
  status(status: Status, info: StatusInfo): void;
  /** The cursor moved without an event (`ready`'s `last_seq`, `position`, a poll's `next`, a reset). */
  cursor(seq: number | undefined): void;
}

export interface ConnectionConfig extends Endpoint {
  since: number | undefined;
  /** Gets a fresh subscriber token (instead of the static `token`). */
  getToken?: (() => string | Promise<string>) | undefined;
  transport: "auto" | "sse" | "poll";
  backoff: Required<BackoffOptions>;
  sseFailuresBeforePoll: number;
  sseRetryMs: number;
  readyTimeoutMs: number;
  pollWaitSeconds: number;
  pollLimit: number;
  /** The `EventSource` to use, or a promise of it (the `eventsource` package, loaded lazily). */
  eventSource: () => EventSourceConstructor | Promise<EventSourceConstructor>;
  fetch: typeof fetch;
  clock: Clock;
  random: () => number;
}

/** One SSE connection attempt. */
interface SseAttempt {
  source: EventSourceLike;
  /** `ready` arrived: the server accepted us and the stream works. */
  ready: boolean;
  /** The server's last sequence when it said `ready`. */
  lastSeq: number | undefined;
  readyTimer: unknown;
  done: boolean;
}

/** A permanent 4xx: retrying the same request won't change the answer. */
function isPermanent(error: SpoolError): boolean {
  const s = error.status;
  if (error.code === "token_expired") return false;
  return s !== undefined && s >= 400 && s < 500 && s !== 408 && s !== 429;
}

function parse(data: unknown): unknown {
  if (typeof data !== "string") return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

async function httpError(response: Response): Promise<SpoolError> {
  let code: string | undefined;
  let message = `HTTP ${response.status}`;
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code;
    if (body.error?.message) message = `HTTP ${response.status}: ${body.error.message}`;
  } catch {
    // not the contract's JSON error (a proxy's page): the status says enough
  }
  return code === undefined ? { message, status: response.status } : { message, status: response.status, code };
}

/**
 * One site subscription's connection: Server-Sent Events first; after
 * `sseFailuresBeforePoll` consecutive SSE attempts that never said `ready`, long-poll,
 * with an SSE attempt every `sseRetryMs` that takes over as soon as it says `ready`.
 * Every reconnection waits a full-jitter exponential backoff.
 *
 * The browser's own EventSource reconnection is never used: it retries after exactly the
 * server's `retry:` delay with no backoff (a thundering herd after a deploy), and gives up
 * for good on any non-200 answer. So on every `error` the EventSource is closed and a new
 * one is made, after our backoff, from our own cursor (`?since=`), which also makes the
 * resume point independent of `Last-Event-ID`.
 *
 * The cursor is the `seq` of the last event handed to the app; anything at or below it is
 * skipped, so overlapping transports (poll still running while SSE takes over) never
 * deliver an event twice, and each transport is gapless from the cursor it started with.
 */
export class Connection {
  cursor: number | undefined;
  private closed = false;
  private mode: Transport = "sse";
  /** Consecutive failed attempts (any transport): the backoff exponent. */
  private attempt = 0;
  /** Consecutive SSE attempts that never said `ready`. */
  private sseFailures = 0;
  private sse: SseAttempt | undefined;
  private probe: SseAttempt | undefined;
  private retryTimer: unknown;
  private probeTimer: unknown;
  private pollGeneration = 0;
  private pollRequest: AbortController | undefined;
  private status: Status | undefined;
  /** The subscriber token from `getToken`, until the server says it expired. */
  private token: string | undefined;

  constructor(
    private readonly cfg: ConnectionConfig,
    private readonly on: ConnectionHandlers,
  ) {
    this.cursor = cfg.since;
  }

  start(): void {
    this.setStatus("connecting", { transport: this.cfg.transport === "poll" ? "poll" : "sse", attempt: 0 });
    if (this.cfg.transport === "poll") this.startPolling();
    else void this.openSse(false);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cfg.clock.clearTimeout(this.retryTimer);
    this.cfg.clock.clearTimeout(this.probeTimer);
    for (const attempt of [this.sse, this.probe]) {
      if (attempt) this.finish(attempt);
    }
    this.stopPolling();
    this.setStatus("closed", { transport: this.mode, attempt: 0 });
  }

  // ---- tokens -------------------------------------------------------------------------

  /** The endpoint with the current token: `getToken`'s (asked for when there is none). */
  private async endpoint(): Promise<Endpoint> {
    if (this.cfg.getToken && this.token === undefined) {
      this.token = await this.cfg.getToken();
    }
    return this.cfg.getToken ? { ...this.cfg, token: this.token } : this.cfg;
  }

  // ---- events -------------------------------------------------------------------------

  private deliver(event: unknown): void {
    const e = event as SpoolEvent | undefined;
    if (!e || typeof e.seq !== "number") return;
    if (this.cursor !== undefined && e.seq <= this.cursor) return;
    this.cursor = e.seq;
    this.on.event(e);
  }

  /** Moves the cursor where the server restarted from, so what follows isn't skipped. */
  private applyReset(reset: ResetInfo, serverLast: number | undefined): void {
    if (reset.reason === "history_truncated" && typeof reset.first_seq === "number") {
      this.cursor = Math.max(0, reset.first_seq - 1);
    } else {
      // cursor_ahead (our cursor is from another stream): continue from the server's end.
      this.cursor = serverLast;
    }
    this.on.reset(reset);
    this.on.cursor(this.cursor);
  }

  private setStatus(status: Status, info: StatusInfo): void {
    if (status === this.status && status !== "reconnecting") return;
    this.status = status;
    this.on.status(status, info);
  }

  private retry(transport: Transport, error: SpoolError, next: () => void): void {
    const delayMs = isPermanent(error)
      ? this.cfg.backoff.maxMs
      : backoffDelay(this.attempt, this.cfg.backoff, this.cfg.random);
    this.attempt++;
    this.setStatus("reconnecting", { transport, attempt: this.attempt, delayMs, error });
    this.retryTimer = this.cfg.clock.setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.closed) next();
    }, delayMs);
  }

  // ---- Server-Sent Events -------------------------------------------------------------

  private async openSse(asProbe: boolean): Promise<void> {
    let Source: EventSourceConstructor;
    try {
      const found = this.cfg.eventSource();
      Source = found instanceof Promise ? await found : found;
    } catch {
      // No EventSource at all: long-poll is the only way.
      if (!asProbe && !this.closed) this.startPolling();
      return;
    }
    if (this.closed || (asProbe && this.mode !== "poll")) return;
    let endpoint: Endpoint = this.cfg;
    if (this.cfg.getToken) {
      try {
        endpoint = await this.endpoint();
      } catch (e) {
        if (this.closed) return;
        const error = { message: `getToken failed: ${(e as Error)?.message ?? e}` };
        if (asProbe) this.scheduleProbe();
        else this.retry("sse", error, () => void this.openSse(false));
        return;
      }
      if (this.closed || (asProbe && this.mode !== "poll")) return;
    }
    const source = new Source(streamUrl(endpoint, this.cursor));
    const attempt: SseAttempt = { source, ready: false, lastSeq: undefined, readyTimer: undefined, done: false };
    if (asProbe) this.probe = attempt;
    else this.sse = attempt;
    attempt.readyTimer = this.cfg.clock.setTimeout(() => {
      this.sseFailed(attempt, {
        message: `the SSE stream said nothing within ${this.cfg.readyTimeoutMs} ms (blocked or buffered by a proxy?)`,
      });
    }, this.cfg.readyTimeoutMs);
    source.addEventListener("ready", (ev) => this.onReady(attempt, (ev as MessageEvent).data));
    source.addEventListener("message", (ev) => {
      if (attempt.done) return;
      // An event proves the stream works even if `ready` got lost on the way.
      if (!attempt.ready) this.onReady(attempt, undefined);
      this.deliver(parse((ev as MessageEvent).data));
    });
    source.addEventListener("token_expired", () => {
      // Our subscriber token expired: a new one, and on from the cursor at once.
      if (attempt.done) return;
      this.finish(attempt);
      this.token = undefined;
      if (this.closed) return;
      if (attempt === this.probe) {
        this.probe = undefined;
        void this.openSse(true);
      } else if (attempt === this.sse) {
        this.sse = undefined;
        void this.openSse(false);
      }
    });
    source.addEventListener("goaway", () => {
      // The site has as many streams open on this server as it may: long-poll instead,
      // and try SSE again later, as when SSE is blocked.
      if (attempt.done) return;
      this.finish(attempt);
      if (attempt === this.probe) {
        this.probe = undefined;
        this.scheduleProbe();
        return;
      }
      if (attempt !== this.sse || this.closed) return;
      this.sse = undefined;
      if (this.cfg.transport === "sse") {
        this.retry("sse", { message: "the server has too many streams of this site" }, () => void this.openSse(false));
      } else {
        this.startPolling();
      }
    });
    source.addEventListener("position", (ev) => {
      // Caught up to `seq` though our last event is older (other sites wrote since): a
      // reconnection resumes from there, which the server still holds in memory.
      const seq = (parse((ev as MessageEvent).data) as { seq?: unknown } | undefined)?.seq;
      if (attempt.done || typeof seq !== "number") return;
      if (this.cursor === undefined || seq > this.cursor) {
        this.cursor = seq;
        this.on.cursor(seq);
      }
    });
    source.addEventListener("revalidated", (ev) => {
      const info = parse((ev as MessageEvent).data) as RevalidatedInfo | undefined;
      if (!attempt.done && info && Array.isArray(info.seqs)) this.on.revalidated(info);
    });
    source.addEventListener("reset", (ev) => {
      const reset = parse((ev as MessageEvent).data) as ResetInfo | undefined;
      if (!attempt.done && reset && typeof reset.reason === "string") this.applyReset(reset, attempt.lastSeq);
    });
    source.addEventListener("error", (ev) => {
      const detail = ev as Event & { code?: number; message?: string };
      const error: SpoolError = { message: detail.message || "the SSE connection failed or ended" };
      if (typeof detail.code === "number") error.status = detail.code;
      this.sseFailed(attempt, error);
    });
  }

  private onReady(attempt: SseAttempt, data: unknown): void {
    if (attempt.done || attempt.ready) return;
    this.cfg.clock.clearTimeout(attempt.readyTimer);
    attempt.ready = true;
    const lastSeq = (parse(data) as { last_seq?: unknown } | undefined)?.last_seq;
    if (typeof lastSeq === "number") attempt.lastSeq = lastSeq;
    if (this.cursor === undefined && attempt.lastSeq !== undefined) {
      // "Live from now" is pinned to the server's position, so a reconnection resumes
      // from here instead of skipping what happened while we were away.
      this.cursor = attempt.lastSeq;
      this.on.cursor(this.cursor);
    }
    if (attempt === this.probe) {
      // SSE works again: it takes over from long-poll.
      this.probe = undefined;
      this.stopPolling();
      this.sse = attempt;
    }
    this.mode = "sse";
    this.attempt = 0;
    this.sseFailures = 0;
    this.setStatus("live", { transport: "sse", attempt: 0 });
  }

  private finish(attempt: SseAttempt): void {
    attempt.done = true;
    this.cfg.clock.clearTimeout(attempt.readyTimer);
    attempt.source.close();
  }

  private sseFailed(attempt: SseAttempt, error: SpoolError): void {
    if (attempt.done) return;
    this.finish(attempt);
    if (this.closed) return;
    if (attempt === this.probe) {
      this.probe = undefined;
      this.scheduleProbe();
      return;
    }
    if (attempt !== this.sse) return;
    this.sse = undefined;
    if (!attempt.ready) this.sseFailures++;
    if (this.cfg.transport === "auto" && this.sseFailures >= this.cfg.sseFailuresBeforePoll) {
      this.startPolling();
      return;
    }
    this.retry("sse", error, () => void this.openSse(false));
  }

  // ---- long-poll ----------------------------------------------------------------------

  private startPolling(): void {
    this.mode = "poll";
    this.sseFailures = 0;
    this.pollGeneration++;
    this.pollOnce(this.pollGeneration);
    if (this.cfg.transport === "auto") this.scheduleProbe();
  }

  private stopPolling(): void {
    this.pollGeneration++;
    this.pollRequest?.abort();
    this.pollRequest = undefined;
    this.cfg.clock.clearTimeout(this.probeTimer);
    if (this.mode === "poll") this.cfg.clock.clearTimeout(this.retryTimer);
  }

  private scheduleProbe(): void {
    this.cfg.clock.clearTimeout(this.probeTimer);
    this.probeTimer = this.cfg.clock.setTimeout(() => {
      this.probeTimer = undefined;
      if (!this.closed && this.mode === "poll") void this.openSse(true);
    }, this.cfg.sseRetryMs);
  }

  private pollOnce(generation: number): void {
    if (this.closed || generation !== this.pollGeneration) return;
    const wait = this.cursor === undefined ? 0 : this.cfg.pollWaitSeconds;
    const request = new AbortController();
    this.pollRequest = request;
    // A long-poll that outlives its wait by far is a dead connection, not a slow server.
    const timeout = this.cfg.clock.setTimeout(() => request.abort(), (wait + 15) * 1000);
    const current = () => !this.closed && generation === this.pollGeneration;
    const run = async (): Promise<SpoolError | undefined> => {
      try {
        const endpoint = this.cfg.getToken ? await this.endpoint() : this.cfg;
        const url = pollUrl(endpoint, this.cursor, { limit: this.cfg.pollLimit, wait });
        const response = await this.cfg.fetch(url, {
          signal: request.signal,
          headers: { accept: "application/json", ...authHeaders(endpoint) },
          cache: "no-store",
        });
        if (!response.ok) {
          const error = await httpError(response);
          if (error.code === "token_expired") this.token = undefined;
          return error;
        }
        const page = (await response.json()) as { events?: unknown[]; next?: unknown; reset?: ResetInfo | null };
        if (!current()) return undefined;
        const next = typeof page.next === "number" ? page.next : undefined;
        if (page.reset && typeof page.reset.reason === "string") {
          this.applyReset(page.reset, undefined);
        }
        for (const event of page.events ?? []) this.deliver(event);
        if (next !== undefined && (this.cursor === undefined || next > this.cursor)) {
          this.cursor = next;
          this.on.cursor(next);
        }
        return undefined;
      } catch (e) {
        const aborted = request.signal.aborted;
        return { message: aborted ? "the long-poll timed out" : `long-poll failed: ${(e as Error)?.message ?? e}` };
      } finally {
        this.cfg.clock.clearTimeout(timeout);
      }
    };
    void run().then((error) => {
      if (!current()) return;
      if (error) {
        this.retry("poll", error, () => this.pollOnce(generation));
        return;
      }
      this.attempt = 0;
      this.setStatus("polling", { transport: "poll", attempt: 0 });
      this.pollOnce(generation);
    });
  }
}
