// SHA-1 (FIPS 180-4), synchronous, for the handshake's Sec-WebSocket-Accept
// only: `crypto.subtle.digest` is asynchronous and the protocol core is not.
// Every handshake hashes one short message, so nothing is allocated per call
// but the digest: a short message is padded in one buffer reused by every call.

const W = new Int32Array(80);
// Two blocks: enough for a handshake's key and GUID (60 bytes).
const SHORT = new Uint8Array(128);

/** Returns the 20-byte SHA-1 digest of `message`. */
export function sha1(message: Uint8Array): Uint8Array {
  const length = message.length;
  const size = (((length + 8) >>> 6) + 1) * 64;
  const block = size <= SHORT.length ? SHORT : new Uint8Array(size);
  block.set(message);
  block[length] = 0x80;
  block.fill(0, length + 1, size - 8);
  // The length in bits, big-endian, in the last 8 bytes.
  const bits = length * 8;
  const high = Math.floor(bits / 0x100000000);
  for (let i = 0; i < 4; i++) {
    block[size - 8 + i] = high >>> (24 - 8 * i);
    block[size - 4 + i] = bits >>> (24 - 8 * i);
  }
  let h0 = 0x67452301,
    h1 = 0xefcdab89 | 0,
    h2 = 0x98badcfe | 0,
    h3 = 0x10325476,
    h4 = 0xc3d2e1f0 | 0;
  for (let offset = 0; offset < size; offset += 64) {
    for (let t = 0; t < 16; t++) {
      const at = offset + t * 4;
      W[t] = (block[at] << 24) | (block[at + 1] << 16) | (block[at + 2] << 8) | block[at + 3];
    }
    for (let t = 16; t < 80; t++) {
      const x = W[t - 3] ^ W[t - 8] ^ W[t - 14] ^ W[t - 16];
      W[t] = (x << 1) | (x >>> 31);
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4;
    for (let t = 0; t < 80; t++) {
      let f: number, k: number;
      if (t < 20) {
        f = (b & c) | (~b & d);
        k = 0x5a827999;
      } else if (t < 40) {
        f = b ^ c ^ d;
        k = 0x6ed9eba1;
      } else if (t < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8f1bbcdc;
      } else {
        f = b ^ c ^ d;
        k = 0xca62c1d6;
      }
      const temp = (((a << 5) | (a >>> 27)) + f + e + k + W[t]) | 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = temp;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
  }
  const digest = new Uint8Array(20);
  const words = [h0, h1, h2, h3, h4];
  for (let i = 0; i < 20; i++) digest[i] = words[i >>> 2] >>> (24 - 8 * (i & 3));
  return digest;
}
