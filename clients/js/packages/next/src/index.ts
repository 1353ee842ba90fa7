// Server and client parts together. In a client component, import from
// "@spool-live/next/client"; in a route handler, "@spool-live/next/server" keeps React out.

export type { ResetInfo, SpoolEvent, Status, StatusInfo } from "@spool-live/client";
export type { SpoolLiveProps, SpoolLiveState, UseSpoolLiveOptions } from "./client.js";
export { SpoolLive, useSpoolLive } from "./client.js";
export type {
  RevalidateBody,
  RevalidateHandlerOptions,
  SeenStore,
  SubscriberTokenOptions,
  TagProfile,
} from "./server.js";
export { createRevalidateHandler, createSubscriberToken, memorySeenStore } from "./server.js";
