// Traffic counters: the one zero value and the one sum, for Protocol, the server's
// totals and PlatformConnection.

import type { TrafficCounters } from "./protocol.ts";

/** New counters, all zero. */
export function zeroCounters(): TrafficCounters {
  return {
    messagesReceived: 0,
    bytesReceived: 0,
    wireBytesReceived: 0,
    messagesSent: 0,
    bytesSent: 0,
    wireBytesSent: 0,
  };
}

/** Adds the counters of `from` to `into`. */
export function addCounters(into: TrafficCounters, from: TrafficCounters): void {
  into.messagesReceived += from.messagesReceived;
  into.bytesReceived += from.bytesReceived;
  into.wireBytesReceived += from.wireBytesReceived;
  into.messagesSent += from.messagesSent;
  into.bytesSent += from.bytesSent;
  into.wireBytesSent += from.wireBytesSent;
}
