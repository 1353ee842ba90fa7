import type { ConnectionHandlers } from "./connection.js";
import type { Clock, ResetInfo, RevalidatedInfo, SpoolEvent, Status, StatusInfo } from "./types.js";

/**
 * One connection per site for all the tabs of an origin.
 *
 * Browsers allow six HTTP/1.1 connections per host: a seventh tab holding an SSE stream
 * to the same delivery host would hang every other request to it. So the tabs that
 * subscribe to the same stream (same URL, site, token and collections) elect a leader;
 * only the leader connects, and it re-broadcasts what it receives over a BroadcastChannel
 * to the others (the followers). When the leader's tab closes or unsubscribes, another tab
 * takes over from its own cursor, which followed the leader's, so nothing is lost or
 * repeated.
 *
 * The election uses Web Locks where the browser has them (the lock's holder is the leader;
 * the browser releases it when the tab goes away, even when it crashes); elsewhere a
 * BroadcastChannel protocol: a candidate asks for a leader, claims leadership when none
 * answers (the smallest id wins a tie), the leader sends a heartbeat every second, and a
 * follower that hears none for three seconds, or hears the leader say `bye`, runs a new
 * election.
 */

type Message =
  | { t: "hello"; from: string }
  | { t: "claim"; from: string }
  | { t: "bye"; from: string }
  | { t: "state"; from: string; status: Status | undefined; info: StatusInfo | undefined; cursor: number | undefined }
  | { t: "cursor"; from: string; cursor: number | undefined }
  | { t: "event"; from: string; event: SpoolEvent }
  | { t: "reset"; from: string; reset: ResetInfo }
  | { t: "revalidated"; from: string; info: RevalidatedInfo };

/** What the app gave `subscribe`. */
export interface LocalHandlers {
  event(event: SpoolEvent): void;
  reset(reset: ResetInfo): void;
  revalidated(info: RevalidatedInfo): void;
  status(status: Status, info: StatusInfo): void;
}

export interface SharedConfig {
  key: string;
  since: number | undefined;
  election: "locks" | "broadcast";
  clock: Clock;
  /** Starts the real connection in this tab from `since`; returns its `close`. */
  connect(since: number | undefined, handlers: ConnectionHandlers): () => void;
  /** One page of history after `since` (for a tab that joins behind the leader). */
  page(since: number): Promise<{ events: SpoolEvent[]; next: number; reset: ResetInfo | null }>;
}

const HEARTBEAT_MS = 1000;
const LEADER_SILENCE_MS = 3000;
const ANSWER_WAIT_MS = 250;
const CLAIM_WAIT_MS = 150;

interface LockManagerLike {
  request(name: string, options: { signal: AbortSignal }, cb: () => Promise<void>): Promise<void>;
}

function lockManager(): LockManagerLike | undefined {
  const nav = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator;
  return nav?.locks;
}

export function webLocksAvailable(): boolean {
  return lockManager() !== undefined;
}

export class SharedSubscription {
  private readonly id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  private readonly channel: BroadcastChannel;
  private role: "candidate" | "follower" | "leader" = "candidate";
  /** The `seq` of the last event given to the app. */
  private cursor: number | undefined;
  private stopped = false;
  private closeConnection: (() => void) | undefined;
  private releaseLock: (() => void) | undefined;
  private readonly lockAbort = new AbortController();
  private timer: unknown;
  private heartbeat: unknown;
  private leaderState: { status: Status; info: StatusInfo } | undefined;
  /** A follower is synced once it has caught up with the leader's cursor. */
  private synced = false;
  /** The leader's last message was a reset: its next cursor may move ours back. */
  private afterReset = false;
  /** The leader state last reported to the app (followers). */
  private mirrored = "";
  private catchingUp = false;
  private backlog: Message[] = [];
  private claims = new Set<string>();
  private readonly onPageHide = () => this.stop();

  constructor(
    private readonly cfg: SharedConfig,
    private readonly local: LocalHandlers,
  ) {
    this.cursor = cfg.since;
    this.channel = new BroadcastChannel(cfg.key);
    this.channel.onmessage = (e: MessageEvent) => this.onMessage(e.data as Message);
  }

  start(): void {
    this.local.status("connecting", { transport: "sse", attempt: 0, leader: false });
    if (this.cfg.election === "locks") {
      const locks = lockManager();
      if (!locks) throw new Error("Web Locks are not available");
      locks
        .request(this.cfg.key, { signal: this.lockAbort.signal }, () => {
          if (this.stopped) return Promise.resolve();
          this.becomeLeader();
          return new Promise<void>((resolve) => (this.releaseLock = resolve));
        })
        .catch(() => {
          // aborted: unsubscribed before this tab's turn came
        });
      this.post({ t: "hello", from: this.id });
    } else {
      globalThis.addEventListener?.("pagehide", this.onPageHide);
      this.elect();
    }
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    this.cfg.clock.clearTimeout(this.timer);
    this.cfg.clock.clearTimeout(this.heartbeat);
    const wasLeader = this.role === "leader";
    this.closeConnection?.();
    this.closeConnection = undefined;
    if (wasLeader) this.post({ t: "bye", from: this.id });
    this.releaseLock?.();
    this.lockAbort.abort();
    this.channel.close();
    this.local.status("closed", { transport: "sse", attempt: 0, leader: wasLeader });
  }

  private post(message: Message): void {
    if (!this.stopped || message.t === "bye") this.channel.postMessage(message);
  }

  // ---- delivery to the app, with one cursor whatever the source -------------------------

  private deliver(event: SpoolEvent): void {
    if (this.cursor !== undefined && event.seq <= this.cursor) return;
    this.cursor = event.seq;
    this.local.event(event);
  }

  // ---- leader -------------------------------------------------------------------------

  private becomeLeader(): void {
    if (this.stopped || this.role === "leader") return;
    this.role = "leader";
    this.mirrored = "";
    this.cfg.clock.clearTimeout(this.timer);
    this.catchingUp = false;
    this.backlog = [];
    const handlers: ConnectionHandlers = {
      event: (event) => {
        this.deliver(event);
        this.post({ t: "event", from: this.id, event });
      },
      reset: (reset) => {
        this.local.reset(reset);
        this.post({ t: "reset", from: this.id, reset });
      },
      revalidated: (info) => {
        this.local.revalidated(info);
        this.post({ t: "revalidated", from: this.id, info });
      },
      status: (status, info) => {
        if (status === "closed") return;
        this.leaderState = { status, info };
        this.local.status(status, { ...info, leader: true });
        this.postState();
      },
      cursor: (cursor) => {
        this.cursor = cursor;
        this.post({ t: "cursor", from: this.id, cursor });
      },
    };
    this.closeConnection = this.cfg.connect(this.cursor, handlers);
    if (this.cfg.election === "broadcast") this.beat();
  }

  /** (A method, so TypeScript doesn't narrow it across awaits.) */
  private isLeader(): boolean {
    return this.role === "leader";
  }

  private postState(): void {
    this.post({
      t: "state",
      from: this.id,
      status: this.leaderState?.status,
      info: this.leaderState?.info,
      cursor: this.cursor,
    });
  }

  private beat(): void {
    this.postState();
    this.heartbeat = this.cfg.clock.setTimeout(() => {
      if (!this.stopped && this.role === "leader") this.beat();
    }, HEARTBEAT_MS);
  }

  private stepDown(): void {
    this.closeConnection?.();
    this.closeConnection = undefined;
    this.cfg.clock.clearTimeout(this.heartbeat);
    this.role = "follower";
    this.synced = true;
    this.watchLeader();
  }

  // ---- election without Web Locks -----------------------------------------------------

  private elect(): void {
    if (this.stopped || this.role === "leader") return;
    this.role = "candidate";
    this.claims.clear();
    this.post({ t: "hello", from: this.id });
    this.cfg.clock.clearTimeout(this.timer);
    this.timer = this.cfg.clock.setTimeout(() => {
      if (this.role !== "candidate") return;
      this.post({ t: "claim", from: this.id });
      this.timer = this.cfg.clock.setTimeout(() => {
        if (this.role !== "candidate") return;
        const smaller = [...this.claims].some((other) => other < this.id);
        if (smaller) this.watchLeader();
        else this.becomeLeader();
      }, CLAIM_WAIT_MS);
    }, ANSWER_WAIT_MS);
  }

  /** Follower: a new election when the leader has been silent too long. */
  private watchLeader(): void {
    if (this.cfg.election !== "broadcast" || this.role === "leader") return;
    if (this.role === "candidate") this.role = "follower";
    this.cfg.clock.clearTimeout(this.timer);
    this.timer = this.cfg.clock.setTimeout(() => this.elect(), LEADER_SILENCE_MS);
  }

  // ---- follower -----------------------------------------------------------------------

  private onMessage(message: Message): void {
    if (this.stopped || message.from === this.id) return;
    switch (message.t) {
      case "hello":
        if (this.role === "leader") this.postState();
        return;
      case "claim":
        if (this.role === "leader") this.postState();
        else this.claims.add(message.from);
        return;
      case "bye":
        if (this.role !== "leader" && this.cfg.election === "broadcast") this.elect();
        return;
      case "state":
        if (this.role === "leader") {
          // Two leaders (a split vote without Web Locks): the larger id gives way.
          if (this.cfg.election === "broadcast" && this.id > message.from) this.stepDown();
          else return;
        }
        if (this.role === "candidate") this.role = "follower";
        this.watchLeader();
        if (message.status && message.info) {
          // Heartbeats repeat the state: tell the app only what changed.
          const key = `${message.status}/${message.info.attempt}/${message.info.transport}`;
          if (key !== this.mirrored) {
            this.mirrored = key;
            this.local.status(message.status, { ...message.info, leader: false });
          }
        }
        this.follow(message);
        return;
      default:
        if (this.role !== "leader") this.follow(message);
    }
  }

  /**
   * Applies the leader's stream in order. A tab that asked for an older cursor than the
   * leader's first fetches the gap (queuing the stream meanwhile); one that asked for "live
   * from now" takes the stream as it comes.
   */
  private follow(message: Message): void {
    if (this.catchingUp) {
      this.backlog.push(message);
      return;
    }
    if (!this.synced) {
      if (this.cursor !== undefined) {
        const leaderCursor = message.t === "cursor" || message.t === "state" ? message.cursor : undefined;
        if (leaderCursor === undefined) {
          // Where is the leader? Until it says, its events can't be told from a gap.
          this.backlog.push(message);
          return;
        }
        if (this.cursor < leaderCursor) {
          this.catchUp(leaderCursor, message);
          return;
        }
      }
      this.synced = true;
      const waiting = this.backlog;
      this.backlog = [];
      for (const m of waiting) this.apply(m);
    }
    this.apply(message);
  }

  private apply(message: Message): void {
    switch (message.t) {
      case "event":
        this.deliver(message.event);
        return;
      case "reset":
        this.afterReset = true;
        this.local.reset(message.reset);
        return;
      case "revalidated":
        this.local.revalidated(message.info);
        return;
      case "cursor":
      case "state":
        // The leader's cursor moves ours forward ("live from now" pinned by `ready`, a
        // poll's `next`); back only right after a reset, which is where the server resumed.
        if (this.afterReset && message.t === "cursor") {
          this.afterReset = false;
          this.cursor = message.cursor;
        } else if (message.cursor !== undefined && (this.cursor === undefined || message.cursor > this.cursor)) {
          this.cursor = message.cursor;
        }
        return;
      default:
    }
  }

  /** This tab asked for events from an older cursor than the leader's: fetch the gap. */
  private catchUp(target: number, first: Message): void {
    this.catchingUp = true;
    this.backlog.push(first);
    const run = async (): Promise<void> => {
      let failures = 0;
      while (!this.stopped && this.role !== "leader" && this.cursor !== undefined && this.cursor < target) {
        try {
          const page = await this.cfg.page(this.cursor);
          if (this.stopped || this.isLeader()) return;
          if (page.reset) {
            this.local.reset(page.reset);
            if (page.reset.reason === "history_truncated" && typeof page.reset.first_seq === "number") {
              this.cursor = page.reset.first_seq - 1;
            }
          }
          for (const event of page.events) this.deliver(event);
          this.cursor = Math.max(this.cursor ?? 0, Math.min(page.next, target));
          if (page.events.length === 0) break;
          failures = 0;
        } catch {
          failures++;
          await new Promise<void>((resolve) =>
            this.cfg.clock.setTimeout(() => resolve(), Math.min(30000, 500 * 2 ** failures)),
          );
        }
      }
    };
    void run().finally(() => {
      if (this.role === "leader") return;
      this.catchingUp = false;
      this.synced = true;
      const backlog = this.backlog;
      this.backlog = [];
      for (const message of backlog) this.follow(message);
    });
  }
}
