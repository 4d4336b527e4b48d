/**
 * The extension interface (RFC 6455 §9): how an extension such as
 * permessage-deflate is negotiated during the handshake and how it
 * transforms frames afterwards. Users may implement it for their own
 * extensions.
 *
 * @example
 * ```ts
 * import type { Extension } from "@denows/websockets/extensions";
 * import type { Frame } from "@denows/websockets/frames";
 *
 * // An extension that changes nothing, e.g. to experiment with negotiation.
 * class Identity implements Extension {
 *   readonly name = "x-identity";
 *   readonly rsvBits = 0;
 *   decode(frame: Frame): Frame {
 *     return frame;
 *   }
 *   encode(frame: Frame): Frame {
 *     return frame;
 *   }
 * }
 * console.log(new Identity().name); // x-identity
 * ```
 *
 * @module
 */

import type { Frame } from "./frames.ts";
import type { ExtensionParameter } from "./headers.ts";

export type { ExtensionParameter };

/** Options passed to {@linkcode Extension.prototype.decode}. */
export interface DecodeOptions {
  /**
   * How many more decoded bytes the current message may have before it exceeds
   * `maxSize`. An extension that expands data (decompression) must stop at this
   * limit and throw `PayloadTooBig`.
   *
   * @default {undefined} (no limit)
   */
  maxSize?: number;
}

/** Options passed to {@linkcode Extension.prototype.encode}. */
export interface EncodeOptions {
  /**
   * `false` asks a compression extension to send this message uncompressed.
   *
   * @default {true}
   */
  compress?: boolean;
}

/**
 * A negotiated extension, active on one connection.
 *
 * `decode` is applied to every incoming frame (in reverse order of
 * negotiation), `encode` to every outgoing frame (in order). Control frames
 * pass through both and must come back unchanged.
 *
 * @example
 * ```ts
 * import type { Extension } from "@denows/websockets/extensions";
 * const extensions: Extension[] = [];
 * console.log(extensions.map((extension) => extension.name)); // []
 * ```
 */
export interface Extension {
  /** The registered extension name, e.g. `"permessage-deflate"`. */
  readonly name: string;
  /** RSV bits this extension uses, as a mask of the first header byte (`0x40` = RSV1). */
  readonly rsvBits: number;
  /**
   * When defined, `encode` is a pure function of the frame: every extension
   * with the same key gives the same bytes for the same frame and keeps no
   * state between messages. `broadcast()` then encodes a message once per key
   * instead of once per connection.
   */
  readonly encodeKey?: string;
  /** Decodes an incoming frame; throws `ProtocolError` or `PayloadTooBig`. */
  decode(frame: Frame, options?: DecodeOptions): Frame;
  /** Encodes an outgoing frame. */
  encode(frame: Frame, options?: EncodeOptions): Frame;
  /** Releases what the extension holds (e.g. zlib streams); called once the connection is closed. */
  close?(): void;
}

/**
 * Client side of an extension's negotiation: what to offer, and how to
 * accept the server's answer.
 *
 * @example
 * ```ts
 * import type { ClientExtensionFactory } from "@denows/websockets/extensions";
 * const factories: ClientExtensionFactory[] = [];
 * console.log(factories.length); // 0
 * ```
 */
export interface ClientExtensionFactory {
  /** The extension name offered in `Sec-WebSocket-Extensions`. */
  readonly name: string;
  /** The parameters of the offer. */
  getRequestParams(): ExtensionParameter[];
  /**
   * Builds the extension from the server's answer; throws a
   * `NegotiationError` subclass when the answer is unacceptable.
   * `accepted` lists the extensions already accepted, in order.
   */
  processResponseParams(
    params: ExtensionParameter[],
    accepted: readonly Extension[],
  ): Extension;
}

/**
 * Server side of an extension's negotiation: accept an offer (returning the
 * answer's parameters and the extension) or decline it by throwing a
 * `NegotiationError`; the server then tries the next offer.
 *
 * @example
 * ```ts
 * import type { ServerExtensionFactory } from "@denows/websockets/extensions";
 * const factories: ServerExtensionFactory[] = [];
 * console.log(factories.length); // 0
 * ```
 */
export interface ServerExtensionFactory {
  /** The extension name this factory accepts. */
  readonly name: string;
  /** Accepts one offer: the answer's parameters and the extension. */
  processRequestParams(
    params: ExtensionParameter[],
    accepted: readonly Extension[],
  ): [ExtensionParameter[], Extension];
}
