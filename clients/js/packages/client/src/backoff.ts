import type { BackoffOptions, Clock } from "./types.js";

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { initialMs: 1000, maxMs: 30000 };

/**
 * The delay before retry number `attempt` (0-based): exponential with full jitter and a
 * cap, `random() * min(maxMs, initialMs * 2^attempt)` ("Exponential Backoff and Jitter",
 * AWS Architecture Blog). Spreads a crowd of clients reconnecting after a deploy evenly
 * over the window instead of in synchronized waves.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const { initialMs, maxMs } = { ...DEFAULT_BACKOFF, ...options };
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}

export const systemClock: Clock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};
