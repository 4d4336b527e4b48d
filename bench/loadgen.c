/*
 * loadgen: the WebSocket load generator behind `deno task bench`.
 *
 * One process, one thread, one epoll loop. It speaks the client side of RFC 6455 itself (real
 * handshake with a random Sec-WebSocket-Key, Sec-WebSocket-Accept checked, masked frames, 7/16/64-bit
 * lengths) so that every server under test is driven by exactly the same code.
 *
 * Build: gcc -O2 -o bench/loadgen bench/loadgen.c
 *
 * Usage: loadgen SCENARIO --port N [options]
 *   echo       --conns 100 --inflight K --size B --seconds S     messages/s, MB/s, p50/p99 latency
 *   broadcast  --conns 1000 --size B --window W --seconds S      deliveries/s, drain time, latency
 *   handshake  --concurrency 50 --seconds S                      open + close cycles per second
 *   idle       --conns N --hold S                                opens N connections, holds them
 *   crowd      --conns N --hold S --fanout K                     opens N connections as fast as
 *                                                                it can (handshakes/s), holds
 *                                                                them, then times K broadcasts
 *                                                                of one message to all of them
 *              [--go-stdin] [--source-offset K]                  gated: waits for a line on stdin
 *                                                                before connecting, before the
 *                                                                sync phase and before each
 *                                                                broadcast (so that several load
 *                                                                generators, each with its own
 *                                                                server, act together)
 *
 * Prints one JSON line with the results on stdout. Diagnostics go to stderr; the idle scenario
 * writes "loadgen: idle: ready" there once every connection is open and has exchanged one message,
 * the crowd scenario "loadgen: crowd: ready" once every connection is open. With --go-stdin the
 * crowd scenario writes "loadgen: crowd: waiting for go (WHAT)" each time it waits for a line on
 * stdin, and its JSON adds the CLOCK_MONOTONIC times (ns, the same clock in every process of the
 * machine) of its first connect(), of its last 101, and of each broadcast's send and last receipt.
 * Any handshake failure, protocol error or unexpected close ends the run with exit code 1 and a
 * message; the hard timeout (--timeout) ends it with exit code 2.
 *
 * What it avoids on the hot path: the data frame it sends is built and masked once at start-up
 * (one random masking key for the run) and reused for every message (frames of 4 KiB and more go
 * straight from it to the socket when nothing is queued before them); received payloads are
 * never copied or unmasked (server frames are unmasked), only counted; reads are 256 KiB at a
 * time into one shared buffer, and small writes are batched per connection per loop iteration.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* Configuration                                                                              */

enum scenario { SC_ECHO, SC_BROADCAST, SC_HANDSHAKE, SC_IDLE, SC_CROWD };

static struct {
  enum scenario scenario;
  const char *scenario_name;
  const char *host;
  int port;
  const char *path;
  int conns;
  int inflight;
  size_t size;
  double seconds;
  double warmup;
  int window;
  int concurrency;
  int connect_concurrency;
  double hold;
  double timeout;
  int deflate;
  int text;
  int sources;
  int source_offset;
  int go_stdin;
  int fanout;
} cfg = {
    .host = "127.0.0.1",
    .port = 0,
    .path = NULL,
    .conns = -1,
    .inflight = 1,
    .size = 32,
    .seconds = 3,
    .warmup = 0.5,
    .window = 32,
    .concurrency = 50,
    .connect_concurrency = 200,
    .hold = 2,
    .timeout = 0,
    .deflate = 0,
    .text = 0,
    .sources = 0,
    .source_offset = 0,
    .go_stdin = 0,
    .fanout = 0,
};

/* ------------------------------------------------------------------------------------------ */
/* Small utilities                                                                            */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of memory allocating %zu bytes", n);
  return p;
}

static void *xcalloc(size_t count, size_t n) {
  void *p = calloc(count ? count : 1, n ? n : 1);
  if (!p) die("out of memory allocating %zu x %zu bytes", count, n);
  return p;
}

static uint64_t rng_state;
static uint32_t rng_next(void) {
  /* xorshift64*: masking keys only need to look random to the server. */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static void hard_timeout(int sig) {
  (void)sig;
  static const char msg[] = "loadgen: error: hard timeout reached, giving up\n";
  ssize_t ignored = write(2, msg, sizeof msg - 1);
  (void)ignored;
  _exit(2);
}

/* ------------------------------------------------------------------------------------------ */
/* SHA-1 and base64, for Sec-WebSocket-Accept (RFC 6455 section 4.2.2)                        */

static uint32_t rol32(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p) {
  uint32_t w[80];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           p[4 * i + 3];
  for (int i = 16; i < 80; i++) w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  for (int i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5A827999;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8F1BBCDC;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6;
    }
    uint32_t t = rol32(a, 5) + f + e + k + w[i];
    e = d;
    d = c;
    c = rol32(b, 30);
    b = a;
    a = t;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
}

static void sha1(const uint8_t *data, size_t len, uint8_t out[20]) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  size_t i = 0;
  for (; i + 64 <= len; i += 64) sha1_block(h, data + i);
  uint8_t tail[128];
  size_t rest = len - i;
  memset(tail, 0, sizeof tail);
  memcpy(tail, data + i, rest);
  tail[rest] = 0x80;
  size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)len * 8;
  for (int j = 0; j < 8; j++) tail[tail_len - 1 - j] = (uint8_t)(bits >> (8 * j));
  sha1_block(h, tail);
  if (tail_len == 128) sha1_block(h, tail + 64);
  for (int j = 0; j < 5; j++) {
    out[4 * j] = (uint8_t)(h[j] >> 24);
    out[4 * j + 1] = (uint8_t)(h[j] >> 16);
    out[4 * j + 2] = (uint8_t)(h[j] >> 8);
    out[4 * j + 3] = (uint8_t)h[j];
  }
}

static void base64(const uint8_t *in, size_t len, char *out) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
    if (i + 2 < len) v |= in[i + 2];
    out[o++] = tbl[(v >> 18) & 63];
    out[o++] = tbl[(v >> 12) & 63];
    out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < len ? tbl[v & 63] : '=';
  }
  out[o] = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Latency histogram: 1 us buckets below 100 ms, 1 ms buckets above (up to 100 s)             */

#define H_FINE 100000
#define H_COARSE 100000
static uint64_t hist_fine[H_FINE];
static uint64_t hist_coarse[H_COARSE];
static uint64_t hist_count;

static void hist_add(uint64_t ns) {
  uint64_t us = ns / 1000;
  if (us < H_FINE) {
    hist_fine[us]++;
  } else {
    uint64_t ms = us / 1000;
    hist_coarse[ms < H_COARSE ? ms : H_COARSE - 1]++;
  }
  hist_count++;
}

/* The smallest value (us) such that at least q of the samples are at or below it; -1 if none. */
static double hist_quantile(double q) {
  if (hist_count == 0) return -1;
  uint64_t target = (uint64_t)(q * (double)hist_count);
  if (target < 1) target = 1;
  uint64_t seen = 0;
  for (uint64_t i = 0; i < H_FINE; i++) {
    seen += hist_fine[i];
    if (seen >= target) return (double)i;
  }
  for (uint64_t i = 0; i < H_COARSE; i++) {
    seen += hist_coarse[i];
    if (seen >= target) return (double)i * 1000.0;
  }
  return (double)(H_COARSE - 1) * 1000.0;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                */

enum conn_state { CS_FREE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_CLOSING };

typedef struct conn {
  int fd;
  int index;
  enum conn_state state;
  int epoll_out; /* EPOLLOUT currently requested */
  uint64_t started_ns;
  char accept[32]; /* expected Sec-WebSocket-Accept */
  char *resp;      /* handshake response being read */
  size_t resp_len;
  int deflate; /* permessage-deflate negotiated */
  /* frame parser (server frames are never masked) */
  int in_payload;
  uint8_t hdr[14];
  int hdr_have, hdr_need;
  uint64_t remaining, frame_len;
  uint8_t opcode, fin, rsv1;
  int in_message;
  uint8_t msg_opcode, msg_compressed;
  uint64_t msg_len;
  uint8_t ctrl[125];
  int ctrl_len;
  /* output */
  uint8_t *out;
  size_t out_off, out_len, out_cap;
  /* scenario state */
  uint64_t *fifo; /* echo: send timestamps of messages in flight */
  uint32_t fifo_head, fifo_count;
  uint64_t received;  /* broadcast: data messages received since the measured phase began */
  uint64_t messages;  /* every data message received */
  int synced;         /* broadcast: a sync message arrived */
  uint32_t generation; /* bumped whenever the slot starts a new connection */
} conn_t;

static int epfd = -1;
static conn_t *conns;
static int conn_count;
static struct sockaddr_in server_addr;
static uint8_t *rbuf;
#define RBUF_SIZE (256 * 1024)

static uint8_t *data_frame; /* the pre-masked data frame every client sends */
static size_t data_frame_len;
static uint8_t send_opcode;
/* Broadcast only: the sync messages sent before measuring use the other data opcode, so that
 * late copies of them can be told apart from measured messages even when compressed. */
static uint8_t *sync_frame;
static size_t sync_frame_len;
static uint8_t sync_opcode;

static uint64_t t_run_start;

/* Scenario hooks */
static void on_open(conn_t *c);
static void on_message(conn_t *c, uint64_t len, int compressed);
static void on_sync_message(conn_t *c);
static void on_close_frame(conn_t *c, int code);
static void on_eof(conn_t *c);

static void out_reserve(conn_t *c, size_t extra) {
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->out_len + extra <= c->out_cap) return;
  if (c->out_off > 0) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
    if (c->out_len + extra <= c->out_cap) return;
  }
  size_t cap = c->out_cap ? c->out_cap : 4096;
  while (cap < c->out_len + extra) cap *= 2;
  uint8_t *p = realloc(c->out, cap);
  if (!p) die("out of memory growing an output buffer to %zu bytes", cap);
  c->out = p;
  c->out_cap = cap;
}

static void out_append(conn_t *c, const void *data, size_t len) {
  out_reserve(c, len);
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
}

/* Writes a masked frame (client to server) with the given opcode and payload into buf. */
static size_t build_frame(uint8_t *buf, uint8_t opcode, int rsv1, const uint8_t *payload,
                          size_t len, uint32_t key) {
  size_t n = 0;
  buf[n++] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | opcode);
  if (len < 126) {
    buf[n++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xFFFF) {
    buf[n++] = 0x80 | 126;
    buf[n++] = (uint8_t)(len >> 8);
    buf[n++] = (uint8_t)len;
  } else {
    buf[n++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--) buf[n++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  uint8_t mask[4] = {(uint8_t)(key >> 24), (uint8_t)(key >> 16), (uint8_t)(key >> 8),
                     (uint8_t)key};
  memcpy(buf + n, mask, 4);
  n += 4;
  for (size_t i = 0; i < len; i++) buf[n + i] = payload[i] ^ mask[i & 3];
  return n + len;
}

static void queue_control(conn_t *c, uint8_t opcode, const uint8_t *payload, size_t len) {
  uint8_t frame[2 + 4 + 125];
  size_t n = build_frame(frame, opcode, 0, payload, len, rng_next());
  out_append(c, frame, n);
}

static void set_events(conn_t *c, int want_out);

/* Queues the data frame. A large frame goes straight to the socket when nothing is queued
 * before it, which saves copying it into the output buffer; only what the socket does not take
 * is copied. Small frames are batched and written by flush(). */
static void queue_data(conn_t *c) {
  if (data_frame_len >= 4096 && c->out_off == c->out_len && c->state == CS_OPEN) {
    ssize_t n;
    do n = send(c->fd, data_frame, data_frame_len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      die("connection %d: send failed: %s", c->index, strerror(errno));
    size_t sent = n > 0 ? (size_t)n : 0;
    if (sent < data_frame_len) {
      out_append(c, data_frame + sent, data_frame_len - sent);
      set_events(c, 1);
    }
    return;
  }
  out_append(c, data_frame, data_frame_len);
}

static void set_events(conn_t *c, int want_out) {
  if (c->epoll_out == want_out) return;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  c->epoll_out = want_out;
}

/* Writes as much of the output buffer as the socket takes; asks for EPOLLOUT for the rest. */
static void flush(conn_t *c) {
  if (c->state == CS_CONNECTING || c->state == CS_FREE) return;
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_events(c, 1);
      return;
    }
    die("connection %d: send failed: %s", c->index, n < 0 ? strerror(errno) : "wrote 0 bytes");
  }
  c->out_off = c->out_len = 0;
  if (cfg.scenario == SC_IDLE || cfg.scenario == SC_CROWD) {
    /* Idle clients hold no output buffer: 4 KiB each would be 4 GB for a million. */
    free(c->out);
    c->out = NULL;
    c->out_cap = 0;
  }
  set_events(c, 0);
}

static void conn_release(conn_t *c) {
  if (c->fd >= 0) close(c->fd); /* also removes it from the epoll set */
  c->fd = -1;
  c->state = CS_FREE;
  free(c->resp);
  c->resp = NULL;
  c->resp_len = 0;
  c->out_off = c->out_len = 0;
  c->epoll_out = 0;
}

static void conn_start(conn_t *c) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s (raise the open-files limit?)", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (cfg.sources > 1 || cfg.source_offset > 0) {
    /* One loopback address has about 28 000 ephemeral ports towards one server port: spread
     * the connections over 127.0.0.2, 127.0.0.3, ... (from 127.0.0.2 + --source-offset, so
     * that load generators running side by side use addresses of their own). The port is
     * chosen at connect() time (IP_BIND_ADDRESS_NO_PORT), from the ports free for this address
     * and the server's. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in source = {.sin_family = AF_INET, .sin_port = 0};
    source.sin_addr.s_addr =
        htonl(0x7F000002u + (uint32_t)cfg.source_offset + (uint32_t)(c->index % cfg.sources));
    if (bind(fd, (struct sockaddr *)&source, sizeof source) < 0)
      die("connection %d: bind to a source address: %s", c->index, strerror(errno));
  }
  c->fd = fd;
  c->state = CS_CONNECTING;
  c->started_ns = now_ns();
  c->in_payload = 0;
  c->hdr_have = 0;
  c->hdr_need = 2;
  c->in_message = 0;
  c->deflate = 0;
  c->generation++;
  c->out_off = c->out_len = 0;

  uint8_t nonce[16];
  for (int i = 0; i < 16; i += 4) {
    uint32_t r = rng_next();
    memcpy(nonce + i, &r, 4);
  }
  char key[32];
  base64(nonce, 16, key);
  char concat[64];
  int clen = snprintf(concat, sizeof concat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
  uint8_t digest[20];
  sha1((const uint8_t *)concat, (size_t)clen, digest);
  base64(digest, 20, c->accept);

  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\n"
                   "Host: %s:%d\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "%s"
                   "\r\n",
                   cfg.path, cfg.host, cfg.port, key,
                   cfg.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                 "client_max_window_bits\r\n"
                               : "");
  out_append(c, req, (size_t)n);

  int rc = connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr);
  if (rc < 0 && errno != EINPROGRESS) die("connection %d: connect: %s", c->index, strerror(errno));
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  c->epoll_out = 1;
}

/* Case-insensitive search for a header line; returns its value (not terminated) or NULL. */
static const char *find_header(const char *head, const char *name, size_t *value_len) {
  size_t name_len = strlen(name);
  const char *line = strstr(head, "\r\n");
  while (line && line[2] != '\r') {
    line += 2;
    const char *end = strstr(line, "\r\n");
    if (!end) return NULL;
    if ((size_t)(end - line) > name_len && strncasecmp(line, name, name_len) == 0 &&
        line[name_len] == ':') {
      const char *v = line + name_len + 1;
      while (*v == ' ' || *v == '\t') v++;
      const char *ve = end;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      *value_len = (size_t)(ve - v);
      return v;
    }
    line = end;
  }
  return NULL;
}

static int contains_token_ci(const char *v, size_t len, const char *token) {
  size_t tl = strlen(token);
  for (size_t i = 0; i + tl <= len; i++)
    if (strncasecmp(v + i, token, tl) == 0) return 1;
  return 0;
}

static void feed_frames(conn_t *c, const uint8_t *p, size_t len);

/* Accumulates the handshake response; returns once the header is complete and checked. */
static void handle_handshake_bytes(conn_t *c, const uint8_t *p, size_t len) {
  if (!c->resp) c->resp = xmalloc(8192);
  if (c->resp_len + len > 8191) die("connection %d: handshake response larger than 8 KiB", c->index);
  memcpy(c->resp + c->resp_len, p, len);
  c->resp_len += len;
  c->resp[c->resp_len] = 0;
  char *end = strstr(c->resp, "\r\n\r\n");
  if (!end) return;
  size_t head_len = (size_t)(end - c->resp) + 4;
  end[2] = 0; /* keep the last header line's CRLF, cut the blank line */

  if (strncmp(c->resp, "HTTP/1.1 101", 12) != 0) {
    char *eol = strstr(c->resp, "\r\n");
    if (eol) *eol = 0;
    die("connection %d: handshake failed on %s: got \"%s\", expected HTTP/1.1 101", c->index,
        cfg.path, c->resp);
  }
  size_t vl;
  const char *v = find_header(c->resp, "Upgrade", &vl);
  if (!v || !contains_token_ci(v, vl, "websocket"))
    die("connection %d: handshake response lacks Upgrade: websocket", c->index);
  v = find_header(c->resp, "Connection", &vl);
  if (!v || !contains_token_ci(v, vl, "upgrade"))
    die("connection %d: handshake response lacks Connection: Upgrade", c->index);
  v = find_header(c->resp, "Sec-WebSocket-Accept", &vl);
  if (!v || vl != strlen(c->accept) || memcmp(v, c->accept, vl) != 0)
    die("connection %d: wrong Sec-WebSocket-Accept (expected %s)", c->index, c->accept);
  v = find_header(c->resp, "Sec-WebSocket-Extensions", &vl);
  if (v && vl > 0) {
    if (!cfg.deflate || !contains_token_ci(v, vl, "permessage-deflate"))
      die("connection %d: server accepted an extension that was not offered: %.*s", c->index,
          (int)vl, v);
    c->deflate = 1;
  }

  size_t rest = c->resp_len - head_len;
  uint8_t tail[8192];
  memcpy(tail, c->resp + head_len, rest);
  free(c->resp);
  c->resp = NULL;
  c->resp_len = 0;
  c->state = CS_OPEN;
  on_open(c);
  if (rest > 0 && c->state != CS_FREE) feed_frames(c, tail, rest);
}

static uint64_t cur_ns; /* time of the latest read, used for every message in it */

static void frame_complete(conn_t *c) {
  uint8_t op = c->opcode;
  if (op >= 8) {
    if (op == 0x9) {
      queue_control(c, 0xA, c->ctrl, (size_t)c->ctrl_len);
    } else if (op == 0x8) {
      int code = c->ctrl_len >= 2 ? (c->ctrl[0] << 8 | c->ctrl[1]) : 1005;
      on_close_frame(c, code);
    }
    return;
  }
  c->msg_len += c->frame_len;
  if (c->fin) {
    c->in_message = 0;
    c->messages++;
    if (c->msg_opcode == sync_opcode &&
        (cfg.scenario == SC_BROADCAST || cfg.scenario == SC_CROWD)) {
      on_sync_message(c);
      return;
    }
    if (c->msg_opcode != send_opcode)
      die("connection %d: received a %s message, expected %s", c->index,
          c->msg_opcode == 1 ? "text" : "binary", send_opcode == 1 ? "text" : "binary");
    if (!c->msg_compressed && c->msg_len != cfg.size)
      die("connection %d: received a %llu-byte message, expected %zu bytes", c->index,
          (unsigned long long)c->msg_len, cfg.size);
    on_message(c, c->msg_len, c->msg_compressed);
  }
}

/* Validates a complete frame header and sets up the payload state. */
static void start_frame(conn_t *c) {
  uint8_t b0 = c->hdr[0], b1 = c->hdr[1];
  uint64_t len = b1 & 0x7F;
  if (len == 126) {
    len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
    if (len < 126) die("connection %d: 16-bit length %llu should use the 7-bit form", c->index,
                       (unsigned long long)len);
  } else if (len == 127) {
    len = 0;
    for (int i = 0; i < 8; i++) len = len << 8 | c->hdr[2 + i];
    if (len >> 63) die("connection %d: 64-bit length has its top bit set", c->index);
    if (len <= 0xFFFF) die("connection %d: 64-bit length %llu should use a shorter form",
                           c->index, (unsigned long long)len);
  }
  c->fin = b0 >> 7;
  c->rsv1 = (b0 >> 6) & 1;
  c->opcode = b0 & 0x0F;
  if (b0 & 0x30) die("connection %d: frame with RSV2/RSV3 set", c->index);
  uint8_t op = c->opcode;
  if (op >= 8) {
    if (op != 8 && op != 9 && op != 10) die("connection %d: invalid opcode %d", c->index, op);
    if (!c->fin) die("connection %d: fragmented control frame", c->index);
    if (len > 125) die("connection %d: control frame of %llu bytes (max 125)", c->index,
                       (unsigned long long)len);
    if (c->rsv1) die("connection %d: control frame with RSV1 set", c->index);
  } else if (op == 0) {
    if (!c->in_message) die("connection %d: continuation frame outside a message", c->index);
    if (c->rsv1) die("connection %d: continuation frame with RSV1 set", c->index);
  } else if (op == 1 || op == 2) {
    if (c->in_message) die("connection %d: new message inside a fragmented message", c->index);
    if (c->rsv1 && !c->deflate)
      die("connection %d: RSV1 set without permessage-deflate", c->index);
    c->in_message = 1;
    c->msg_opcode = op;
    c->msg_compressed = c->rsv1;
    c->msg_len = 0;
  } else {
    die("connection %d: invalid opcode %d", c->index, op);
  }
  c->frame_len = c->remaining = len;
  c->ctrl_len = 0;
}

static void feed_frames(conn_t *c, const uint8_t *p, size_t len) {
  uint32_t gen = c->generation;
  while (len > 0) {
    if (!c->in_payload) {
      size_t take = (size_t)(c->hdr_need - c->hdr_have);
      if (take > len) take = len;
      memcpy(c->hdr + c->hdr_have, p, take);
      c->hdr_have += (int)take;
      p += take;
      len -= take;
      if (c->hdr_have < c->hdr_need) return;
      if (c->hdr_need == 2) {
        if (c->hdr[1] & 0x80) die("connection %d: server sent a masked frame", c->index);
        int l7 = c->hdr[1] & 0x7F;
        if (l7 == 126 || l7 == 127) {
          c->hdr_need = l7 == 126 ? 4 : 10;
          continue;
        }
      }
      start_frame(c);
      c->hdr_have = 0;
      c->hdr_need = 2;
      if (c->remaining == 0) {
        frame_complete(c);
        if (c->generation != gen || c->state == CS_FREE) return;
      } else {
        c->in_payload = 1;
      }
    } else {
      size_t take = c->remaining < len ? (size_t)c->remaining : len;
      if (c->opcode >= 8) {
        memcpy(c->ctrl + c->ctrl_len, p, take);
        c->ctrl_len += (int)take;
      }
      c->remaining -= take;
      p += take;
      len -= take;
      if (c->remaining == 0) {
        c->in_payload = 0;
        frame_complete(c);
        if (c->generation != gen || c->state == CS_FREE) return;
      }
    }
  }
}

static void on_readable(conn_t *c) {
  uint32_t gen = c->generation;
  for (;;) {
    ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
    if (n > 0) {
      cur_ns = now_ns();
      if (c->state == CS_HANDSHAKE)
        handle_handshake_bytes(c, rbuf, (size_t)n);
      else
        feed_frames(c, rbuf, (size_t)n);
      if (c->generation != gen || c->state == CS_FREE) return;
      if ((size_t)n < RBUF_SIZE) break;
      continue;
    }
    if (n == 0) {
      on_eof(c);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    die("connection %d: recv failed: %s", c->index, strerror(errno));
  }
  flush(c);
}

static void on_writable(conn_t *c) {
  if (c->state == CS_CONNECTING) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) die("connection %d: connect to %s:%d failed: %s", c->index, cfg.host, cfg.port,
                 strerror(err));
    c->state = CS_HANDSHAKE;
  }
  flush(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Scenarios                                                                                  */

enum phase { PH_CONNECT, PH_SYNC, PH_RUN, PH_DRAIN, PH_HOLD };
static const char *const phase_names[] = {"connect", "sync", "run", "drain", "hold"};
/* crowd: per-round fan-out times, each round's send and last receipt, and the round under way */
static uint64_t *round_ns, *round_sent_ns, *round_last_ns;
static int rounds_done, round_received;
static uint64_t round_start;
static enum phase phase = PH_CONNECT;
static int next_to_open, pending, opened;
static uint64_t t_connected, t_window_start, t_end;
static int window_started;
static struct rusage ru_window_start;
static uint64_t window_msgs, window_bytes;
static int deflate_negotiated;

/* broadcast */
static uint64_t next_seq, acked;
static uint64_t *sent_at; /* send time of message k at [k % window] */
static uint32_t *receipts;  /* how many clients have message k, at [k % window] */
static int synced;
static uint64_t last_sync_rx_ns, last_sync_ns, t_stop, drain_ns;
static int sync_sent, late_syncs; /* sync messages sent; copies received once measuring began */
static uint64_t sync_copies;      /* sync messages received by all clients together */

/* idle */
static int echoed;
static uint64_t hold_until;

/* crowd --go-stdin: what the next line on stdin starts, lines read and not yet used, stdin's end */
enum wait_for { W_NONE, W_CONNECT, W_SYNC, W_ROUND };
static const char *const wait_names[] = {"", "connect", "sync", "broadcast"};
static enum wait_for waiting = W_NONE;
static int go_lines, stdin_ended;
static void wait_go(enum wait_for what);

static void finish(void);

static void open_more(void) {
  while (next_to_open < conn_count && pending < cfg.connect_concurrency) {
    conn_start(&conns[next_to_open++]);
    pending++;
  }
}

static void begin_window(uint64_t now) {
  t_window_start = now + (uint64_t)(cfg.warmup * 1e9);
  t_end = t_window_start + (uint64_t)(cfg.seconds * 1e9);
}

static int in_window(uint64_t t) { return window_started && t < t_end; }

static void fifo_push(conn_t *c, uint64_t t) {
  c->fifo[(c->fifo_head + c->fifo_count) % (uint32_t)cfg.inflight] = t;
  c->fifo_count++;
}

static void on_all_open(void) {
  uint64_t now = now_ns();
  t_connected = now;
  if (cfg.scenario == SC_ECHO) {
    phase = PH_RUN;
    begin_window(now);
    for (int i = 0; i < conn_count; i++) {
      conn_t *c = &conns[i];
      for (int k = 0; k < cfg.inflight; k++) {
        queue_data(c);
        fifo_push(c, now);
      }
      flush(c);
    }
  } else if (cfg.scenario == SC_BROADCAST) {
    phase = PH_SYNC;
  } else if (cfg.scenario == SC_CROWD) {
    double seconds = (double)(now - t_run_start) / 1e9;
    fprintf(stderr, "loadgen: crowd: ready (%d connections open, %.0f handshakes/s)\n",
            conn_count, seconds > 0 ? conn_count / seconds : 0);
    fflush(stderr);
    phase = PH_HOLD;
    if (cfg.go_stdin) {
      hold_until = UINT64_MAX; /* the go line ends the hold, not the clock */
      wait_go(W_SYNC);
    } else {
      hold_until = now + (uint64_t)(cfg.hold * 1e9);
    }
  }
}

static void on_open(conn_t *c) {
  if (c->deflate) deflate_negotiated = 1;
  if (cfg.scenario == SC_HANDSHAKE) {
    if (in_window(cur_ns) && cur_ns >= t_window_start) hist_add(cur_ns - c->started_ns);
    static const uint8_t normal_closure[2] = {0x03, 0xE8};
    queue_control(c, 0x8, normal_closure, 2);
    c->state = CS_CLOSING;
    return; /* flushed by the caller */
  }
  pending--;
  opened++;
  /* connect to 101, for every connection of the idle and crowd scenarios */
  hist_add(cur_ns - c->started_ns);
  if (cfg.scenario == SC_IDLE) queue_data(c);
  if (opened == conn_count)
    on_all_open();
  else
    open_more();
}

static void broadcast_receipt(conn_t *c) {
  uint64_t k = c->received++;
  if (k >= next_seq)
    die("connection %d: received message %llu but only %llu were sent in the measured phase",
        c->index, (unsigned long long)k + 1, (unsigned long long)next_seq);
  uint32_t slot = (uint32_t)(k % (uint64_t)cfg.window);
  if (in_window(cur_ns) && cur_ns >= t_window_start) {
    window_msgs++;
    hist_add(cur_ns - sent_at[slot]);
  }
  receipts[slot]++;
  while (acked < next_seq) {
    uint32_t s = (uint32_t)(acked % (uint64_t)cfg.window);
    if (receipts[s] != (uint32_t)conn_count) break;
    receipts[s] = 0;
    acked++;
  }
}

/* Starts the next fan-out round: one message from the first client to every client. */
static void crowd_round_start(void) {
  round_received = 0;
  round_start = now_ns();
  queue_data(&conns[0]);
  flush(&conns[0]);
}

static void crowd_round_done(void) {
  round_sent_ns[rounds_done] = round_start;
  round_last_ns[rounds_done] = cur_ns;
  round_ns[rounds_done++] = cur_ns - round_start;
  if (rounds_done == cfg.fanout) finish();
  if (cfg.go_stdin)
    wait_go(W_ROUND);
  else
    crowd_round_start();
}

/* crowd --go-stdin: starts what the scenario waits for once a go line has come. */
static void go_check(void) {
  if (waiting == W_NONE || go_lines == 0) return;
  go_lines--;
  enum wait_for what = waiting;
  waiting = W_NONE;
  switch (what) {
  case W_CONNECT:
    t_run_start = now_ns();
    open_more();
    break;
  case W_SYNC:
    if (cfg.fanout == 0) finish();
    phase = PH_SYNC;
    break;
  case W_ROUND:
    crowd_round_start();
    break;
  case W_NONE:
    break;
  }
}

static void wait_go(enum wait_for what) {
  if (stdin_ended && go_lines == 0)
    die("stdin ended while waiting for the go line (%s)", wait_names[what]);
  waiting = what;
  fprintf(stderr, "loadgen: crowd: waiting for go (%s)\n", wait_names[what]);
  fflush(stderr);
  go_check();
}

/* Counts the go lines that arrived on stdin. */
static void on_stdin(void) {
  char buf[256];
  ssize_t n = read(0, buf, sizeof buf);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return;
    die("reading stdin: %s", strerror(errno));
  }
  if (n == 0) {
    stdin_ended = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
    if (waiting != W_NONE && go_lines == 0)
      die("stdin ended while waiting for the go line (%s)", wait_names[waiting]);
    return;
  }
  for (ssize_t i = 0; i < n; i++)
    if (buf[i] == '\n') go_lines++;
  go_check();
}

static void on_message(conn_t *c, uint64_t len, int compressed) {
  (void)compressed;
  switch (cfg.scenario) {
  case SC_ECHO: {
    if (c->fifo_count == 0) die("connection %d: received an echo that was never sent", c->index);
    uint64_t sent = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % (uint32_t)cfg.inflight;
    c->fifo_count--;
    if (in_window(cur_ns) && cur_ns >= t_window_start) {
      window_msgs++;
      window_bytes += cfg.size;
      hist_add(cur_ns - sent);
    }
    (void)len;
    if (cur_ns < t_end) {
      queue_data(c);
      fifo_push(c, cur_ns);
    }
    break;
  }
  case SC_BROADCAST:
    if (phase != PH_RUN && phase != PH_DRAIN)
      die("connection %d: received a measured message before any was sent", c->index);
    broadcast_receipt(c);
    break;
  case SC_IDLE:
    if (c->messages == 1 && ++echoed == conn_count) {
      fprintf(stderr, "loadgen: idle: ready (%d connections open)\n", conn_count);
      fflush(stderr);
      phase = PH_HOLD;
      hold_until = cur_ns + (uint64_t)(cfg.hold * 1e9);
    }
    break;
  case SC_HANDSHAKE:
    die("connection %d: unexpected data message during the handshake scenario", c->index);
  case SC_CROWD:
    /* Every client gets each round's message exactly once, the sender included. */
    if (phase != PH_RUN || waiting != W_NONE || c->received != (uint64_t)rounds_done)
      die("connection %d: received a message outside fan-out round %d", c->index,
          rounds_done + 1);
    c->received++;
    if (++round_received == conn_count) crowd_round_done();
    break;
  }
}

static void on_sync_message(conn_t *c) {
  last_sync_rx_ns = cur_ns;
  sync_copies++;
  if (phase == PH_RUN) late_syncs++;
  if (!c->synced) {
    c->synced = 1;
    synced++;
  }
}

static void on_close_frame(conn_t *c, int code) {
  if (cfg.scenario == SC_HANDSHAKE && c->state == CS_CLOSING) {
    if (code != 1000) die("connection %d: server answered close 1000 with %d", c->index, code);
    uint64_t t = cur_ns;
    if (in_window(t) && t >= t_window_start) window_msgs++;
    conn_release(c);
    if (t < t_end) conn_start(c);
    return;
  }
  die("connection %d: server sent a close frame (code %d) during the %s scenario", c->index,
      code, cfg.scenario_name);
}

static void on_eof(conn_t *c) {
  die("connection %d: server closed the TCP connection %s", c->index,
      c->state == CS_HANDSHAKE ? "during the opening handshake"
      : c->state == CS_CLOSING ? "before answering the close frame"
                               : "unexpectedly");
}

/* How long no sync message may arrive before another is sent. Gated crowds wait longer: their
 * servers share a core with one another, and one may not run for more than 50 ms while the
 * others deliver; every extra sync is one more broadcast to all its clients, which delays the
 * next receipt more (the slower the server, the more syncs pile up). */
static uint64_t sync_quiet_ns(void) { return (cfg.go_stdin ? 1000 : 50) * 1000000ull; }

static void broadcast_tick(uint64_t now) {
  conn_t *sender = &conns[0];
  if (phase == PH_SYNC) {
    /* Until every client has a sync message, the server may not have registered them all.
     * Another one goes out only once the server has stopped delivering the previous one.
     * Gated crowds also wait until every client has every sync message sent (or, should one
     * have gone out before a client was registered, until none has arrived for 10 s), so that
     * no copy of an extra one is still queued in the server when the first broadcast is timed:
     * a server may pause for more than the quiet time with copies still queued. */
    int drained = !cfg.go_stdin || sync_copies == (uint64_t)sync_sent * (uint64_t)conn_count ||
                  now - last_sync_rx_ns >= 10 * 1000000000ull;
    if (synced == conn_count && drained) {
      phase = PH_RUN;
      if (cfg.scenario == SC_CROWD) {
        if (cfg.go_stdin)
          wait_go(W_ROUND);
        else
          crowd_round_start();
        return;
      }
      begin_window(now);
    } else if (now - last_sync_ns >= 20 * 1000000ull &&
               now - last_sync_rx_ns >= sync_quiet_ns() &&
               (!cfg.go_stdin || sync_sent == 0 || last_sync_rx_ns > last_sync_ns)) {
      /* (Gated crowds send another only once some client has the last one: a server that takes
       * longer than the quiet time to start delivering is busy, not missing clients.) */
      last_sync_ns = now;
      sync_sent++;
      out_append(sender, sync_frame, sync_frame_len);
      flush(sender);
    }
  }
  if (phase == PH_RUN) {
    if (now >= t_end) {
      phase = PH_DRAIN;
      t_stop = now;
    } else {
      int queued = 0;
      while (next_seq - acked < (uint64_t)cfg.window) {
        sent_at[next_seq % (uint64_t)cfg.window] = now;
        next_seq++;
        queue_data(sender);
        queued = 1;
      }
      if (queued) flush(sender);
    }
  }
  if (phase == PH_DRAIN && acked == next_seq) {
    drain_ns = now - t_stop;
    finish();
  }
}

static uint64_t t_deadline;

/* Says where a run that overstayed its time limit got stuck, then exits with code 2. */
static void overtime(void) {
  uint64_t slowest = UINT64_MAX;
  for (int i = 0; i < conn_count; i++)
    if (conns[i].received < slowest) slowest = conns[i].received;
  fprintf(stderr, "loadgen: error: hard timeout (%.0f s) in phase %s: %d of %d connections open",
          cfg.timeout, phase_names[phase], opened, conn_count);
  if (cfg.scenario == SC_BROADCAST)
    fprintf(stderr, ", %d synced, %llu messages sent, %llu delivered to all, slowest client has %llu",
            synced, (unsigned long long)next_seq, (unsigned long long)acked,
            (unsigned long long)(conn_count ? slowest : 0));
  fputc('\n', stderr);
  exit(2);
}

static void tick(void) {
  uint64_t now = now_ns();
  if (now >= t_deadline) overtime();
  if (!window_started && t_window_start && now >= t_window_start) {
    window_started = 1;
    getrusage(RUSAGE_SELF, &ru_window_start);
  }
  switch (cfg.scenario) {
  case SC_ECHO:
  case SC_HANDSHAKE:
    if (t_end && now >= t_end) finish();
    break;
  case SC_BROADCAST:
    broadcast_tick(now);
    break;
  case SC_IDLE:
    if (phase == PH_HOLD && now >= hold_until) finish();
    break;
  case SC_CROWD:
    if (phase == PH_HOLD && now >= hold_until) {
      if (cfg.fanout == 0) finish();
      phase = PH_SYNC;
    }
    if (phase == PH_SYNC) broadcast_tick(now);
    break;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Results                                                                                    */

static uint64_t t_process_start;

static double ru_seconds(const struct rusage *r) {
  return (double)r->ru_utime.tv_sec + (double)r->ru_utime.tv_usec / 1e6 +
         (double)r->ru_stime.tv_sec + (double)r->ru_stime.tv_usec / 1e6;
}

static void finish(void) {
  uint64_t now = now_ns();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double wall = (double)(now - t_process_start) / 1e9;
  double cpu = ru_seconds(&ru);
  /* Messages count only when they arrive inside [t_window_start, t_end). */
  double window = window_started && t_end > t_window_start
                      ? (double)(t_end - t_window_start) / 1e9
                      : 0;
  double since_window = window_started ? (double)(now - t_window_start) / 1e9 : 0;
  double window_cpu = window_started ? cpu - ru_seconds(&ru_window_start) : 0;
  double connect_ms =
      t_connected ? (double)(t_connected - t_run_start) / 1e6 : -1;

  printf("{\"scenario\":\"%s\",\"path\":\"%s\",\"conns\":%d,\"size\":%zu,\"opcode\":\"%s\","
         "\"deflate_offered\":%s,\"deflate_negotiated\":%s",
         cfg.scenario_name, cfg.path, cfg.scenario == SC_HANDSHAKE ? cfg.concurrency : conn_count,
         cfg.size, send_opcode == 1 ? "text" : "binary", cfg.deflate ? "true" : "false",
         deflate_negotiated ? "true" : "false");
  switch (cfg.scenario) {
  case SC_ECHO:
    printf(",\"inflight\":%d,\"window_s\":%.3f,\"messages\":%llu,\"msgs_per_s\":%.1f,"
           "\"mb_per_s\":%.3f,\"p50_us\":%.0f,\"p99_us\":%.0f",
           cfg.inflight, window, (unsigned long long)window_msgs,
           window > 0 ? (double)window_msgs / window : 0,
           window > 0 ? (double)window_bytes / window / 1e6 : 0, hist_quantile(0.50),
           hist_quantile(0.99));
    break;
  case SC_BROADCAST:
    printf(",\"window\":%d,\"window_s\":%.3f,\"sent\":%llu,\"deliveries\":%llu,"
           "\"deliveries_per_s\":%.1f,\"messages_per_s\":%.1f,\"drain_ms\":%.3f,"
           "\"p50_us\":%.0f,\"p99_us\":%.0f",
           cfg.window, window, (unsigned long long)next_seq, (unsigned long long)window_msgs,
           window > 0 ? (double)window_msgs / window : 0,
           window > 0 ? (double)window_msgs / window / conn_count : 0, (double)drain_ns / 1e6,
           hist_quantile(0.50), hist_quantile(0.99));
    break;
  case SC_HANDSHAKE:
    printf(",\"window_s\":%.3f,\"handshakes\":%llu,\"handshakes_per_s\":%.1f,"
           "\"p50_us\":%.0f,\"p99_us\":%.0f",
           window, (unsigned long long)window_msgs,
           window > 0 ? (double)window_msgs / window : 0, hist_quantile(0.50),
           hist_quantile(0.99));
    break;
  case SC_IDLE:
  case SC_CROWD: {
    double seconds = t_connected ? (double)(t_connected - t_run_start) / 1e9 : 0;
    printf(",\"hold_s\":%.3f,\"sources\":%d,\"connect_concurrency\":%d,"
           "\"handshakes_per_s\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f",
           cfg.hold, cfg.sources > 1 ? cfg.sources : 1, cfg.connect_concurrency,
           seconds > 0 ? conn_count / seconds : 0, hist_quantile(0.50), hist_quantile(0.99));
    if (cfg.scenario == SC_CROWD && cfg.fanout > 0) {
      /* rounds in the order they ran, then the median */
      double sorted[rounds_done > 0 ? rounds_done : 1];
      printf(",\"fanout_ms\":[");
      for (int i = 0; i < rounds_done; i++) {
        sorted[i] = (double)round_ns[i] / 1e6;
        printf("%s%.3f", i ? "," : "", sorted[i]);
      }
      for (int i = 1; i < rounds_done; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
          double t = sorted[j];
          sorted[j] = sorted[j - 1];
          sorted[j - 1] = t;
        }
      printf("],\"fanout_median_ms\":%.3f", rounds_done ? sorted[rounds_done / 2] : 0);
    }
    if (cfg.scenario == SC_CROWD && cfg.go_stdin) {
      /* CLOCK_MONOTONIC, the same clock in every process: a runner that drives several load
       * generators at once combines these across them. */
      printf(",\"source_offset\":%d,\"sync_messages\":%d,\"late_sync_copies\":%d,"
             "\"connect_start_ns\":%llu,\"connected_ns\":%llu",
             cfg.source_offset, sync_sent, late_syncs, (unsigned long long)t_run_start,
             (unsigned long long)t_connected);
      printf(",\"round_sent_ns\":[");
      for (int i = 0; i < rounds_done; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)round_sent_ns[i]);
      printf("],\"round_last_ns\":[");
      for (int i = 0; i < rounds_done; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)round_last_ns[i]);
      printf("]");
    }
    break;
  }
  }
  printf(",\"connect_ms\":%.1f,\"wall_s\":%.3f,\"cpu_s\":%.3f,\"cpu_pct\":%.1f,"
         "\"window_cpu_pct\":%.1f}\n",
         connect_ms, wall, cpu, wall > 0 ? 100 * cpu / wall : 0,
         since_window > 0 ? 100 * window_cpu / since_window : 0);
  fflush(stdout);
  exit(0);
}

/* ------------------------------------------------------------------------------------------ */
/* Main                                                                                       */

static void usage(void) {
  fputs("usage: loadgen echo|broadcast|handshake|idle|crowd --port N [--host 127.0.0.1]\n"
        "         [--path P] [--conns N] [--inflight K] [--size BYTES] [--seconds S]\n"
        "         [--warmup S] [--window W] [--concurrency C] [--connect-concurrency C]\n"
        "         [--hold S] [--fanout K] [--sources N] [--source-offset K] [--go-stdin]\n"
        "         [--timeout S] [--text] [--deflate]\n",
        stderr);
  exit(64);
}

static double parse_num(const char *name, const char *v, double lo, double hi) {
  char *end;
  double d = strtod(v, &end);
  if (*v == 0 || *end != 0 || d < lo || d > hi)
    die("--%s must be a number from %g to %g, got \"%s\"", name, lo, hi, v);
  return d;
}

int main(int argc, char **argv) {
  t_process_start = now_ns();
  if (argc < 2) usage();
  cfg.scenario_name = argv[1];
  if (strcmp(argv[1], "echo") == 0)
    cfg.scenario = SC_ECHO;
  else if (strcmp(argv[1], "broadcast") == 0)
    cfg.scenario = SC_BROADCAST;
  else if (strcmp(argv[1], "handshake") == 0)
    cfg.scenario = SC_HANDSHAKE;
  else if (strcmp(argv[1], "idle") == 0)
    cfg.scenario = SC_IDLE;
  else if (strcmp(argv[1], "crowd") == 0)
    cfg.scenario = SC_CROWD;
  else
    usage();

  static const struct option opts[] = {
      {"host", required_argument, 0, 'H'},    {"port", required_argument, 0, 'p'},
      {"path", required_argument, 0, 'P'},    {"conns", required_argument, 0, 'n'},
      {"inflight", required_argument, 0, 'k'}, {"size", required_argument, 0, 's'},
      {"seconds", required_argument, 0, 'S'}, {"warmup", required_argument, 0, 'w'},
      {"window", required_argument, 0, 'W'},  {"concurrency", required_argument, 0, 'c'},
      {"connect-concurrency", required_argument, 0, 'C'},
      {"hold", required_argument, 0, 'h'},    {"timeout", required_argument, 0, 'T'},
      {"text", no_argument, 0, 't'},          {"deflate", no_argument, 0, 'd'},
      {"sources", required_argument, 0, 'o'}, {"fanout", required_argument, 0, 'f'},
      {"source-offset", required_argument, 0, 'O'}, {"go-stdin", no_argument, 0, 'g'},
      {0, 0, 0, 0}};
  int opt;
  optind = 2;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case 'H': cfg.host = optarg; break;
    case 'p': cfg.port = (int)parse_num("port", optarg, 1, 65535); break;
    case 'P': cfg.path = optarg; break;
    case 'n': cfg.conns = (int)parse_num("conns", optarg, 1, 1000000); break;
    case 'k': cfg.inflight = (int)parse_num("inflight", optarg, 1, 100000); break;
    case 's': cfg.size = (size_t)parse_num("size", optarg, 0, 64 * 1024 * 1024); break;
    case 'S': cfg.seconds = parse_num("seconds", optarg, 0.01, 3600); break;
    case 'w': cfg.warmup = parse_num("warmup", optarg, 0, 3600); break;
    case 'W': cfg.window = (int)parse_num("window", optarg, 1, 1000000); break;
    case 'c': cfg.concurrency = (int)parse_num("concurrency", optarg, 1, 100000); break;
    case 'C': cfg.connect_concurrency = (int)parse_num("connect-concurrency", optarg, 1, 100000);
      break;
    case 'h': cfg.hold = parse_num("hold", optarg, 0, 3600); break;
    case 'T': cfg.timeout = parse_num("timeout", optarg, 1, 86400); break;
    case 't': cfg.text = 1; break;
    case 'd': cfg.deflate = 1; break;
    case 'o': cfg.sources = (int)parse_num("sources", optarg, 1, 250); break;
    case 'f': cfg.fanout = (int)parse_num("fanout", optarg, 0, 1000); break;
    case 'O': cfg.source_offset = (int)parse_num("source-offset", optarg, 0, 60000); break;
    case 'g': cfg.go_stdin = 1; break;
    default: usage();
    }
  }
  if (optind != argc) usage();
  if (!cfg.port) die("--port is required");
  if (cfg.go_stdin && cfg.scenario != SC_CROWD) die("--go-stdin is for the crowd scenario only");
  if (!cfg.path)
    cfg.path = cfg.scenario == SC_BROADCAST || cfg.scenario == SC_CROWD ? "/broadcast" : "/echo";
  if (cfg.path[0] != '/' || strpbrk(cfg.path, " \r\n")) die("--path must start with / and have no spaces");
  if (cfg.conns < 0) cfg.conns = cfg.scenario == SC_ECHO ? 100 : 1000;
  if (cfg.timeout == 0) cfg.timeout = 60 + cfg.warmup + cfg.seconds + cfg.hold;

  memset(&server_addr, 0, sizeof server_addr);
  server_addr.sin_family = AF_INET;
  server_addr.sin_port = htons((uint16_t)cfg.port);
  if (inet_pton(AF_INET, cfg.host, &server_addr.sin_addr) != 1)
    die("--host must be an IPv4 address, got \"%s\"", cfg.host);
  if ((ntohl(server_addr.sin_addr.s_addr) >> 24) != 127)
    die("--host must be a loopback address (127.0.0.0/8), got %s", cfg.host);

  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, hard_timeout);
  alarm((unsigned)(cfg.timeout + 5.999)); /* backstop if the loop itself stops turning */

  conn_count = cfg.scenario == SC_HANDSHAKE ? cfg.concurrency : cfg.conns;
  /* Ephemeral ports: each source address reaches the server's port from this many. */
  if (cfg.sources == 0) cfg.sources = conn_count > 20000 ? (conn_count + 19999) / 20000 : 1;
  {
    int lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
      if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768, hi = 60999;
      fclose(f);
    }
    long ports = (long)(hi - lo + 1) * cfg.sources;
    if (cfg.scenario != SC_HANDSHAKE && conn_count > ports)
      die("%d connections need more ephemeral ports than the %ld of %d source address(es) "
          "(net.ipv4.ip_local_port_range is %d-%d): use --sources %d",
          conn_count, ports, cfg.sources, lo, hi, (conn_count + (hi - lo)) / (hi - lo + 1));
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY) {
    rlim_t need = (rlim_t)conn_count + 16;
    if (rl.rlim_max < need) {
      /* Raising the hard limit needs CAP_SYS_RESOURCE (root, outside most containers). */
      struct rlimit raised = {need, need};
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need)
      die("%d connections need an open-files limit of at least %llu, and this process may "
          "have at most %llu (its hard limit), which it cannot raise without CAP_SYS_RESOURCE: "
          "run it where `ulimit -Hn` is at least %llu (as root: `ulimit -n %llu`; systemd: "
          "LimitNOFILE=; Docker: --ulimit nofile=%llu:%llu), with the kernel's fs.nr_open at "
          "least that too",
          conn_count, (unsigned long long)need, (unsigned long long)rl.rlim_max,
          (unsigned long long)need, (unsigned long long)need, (unsigned long long)need,
          (unsigned long long)need);
  }

  if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || rng_state == 0)
    rng_state = now_ns() | 1;

  send_opcode = cfg.text ? 1 : 2;
  sync_opcode = cfg.text ? 2 : 1;
  uint8_t *payload = xmalloc(cfg.size);
  for (size_t i = 0; i < cfg.size; i++) payload[i] = (uint8_t)('a' + rng_next() % 26);
  data_frame = xmalloc(cfg.size + 14);
  data_frame_len = build_frame(data_frame, send_opcode, 0, payload, cfg.size, rng_next());
  sync_frame = xmalloc(cfg.size + 14);
  sync_frame_len = build_frame(sync_frame, sync_opcode, 0, payload, cfg.size, rng_next());
  free(payload);

  rbuf = xmalloc(RBUF_SIZE);
  conns = xcalloc((size_t)conn_count, sizeof *conns);
  for (int i = 0; i < conn_count; i++) {
    conns[i].fd = -1;
    conns[i].index = i;
    if (cfg.scenario == SC_ECHO) conns[i].fifo = xcalloc((size_t)cfg.inflight, sizeof(uint64_t));
  }
  if (cfg.scenario == SC_CROWD) {
    size_t rounds = (size_t)(cfg.fanout ? cfg.fanout : 1);
    round_ns = xcalloc(rounds, sizeof *round_ns);
    round_sent_ns = xcalloc(rounds, sizeof *round_sent_ns);
    round_last_ns = xcalloc(rounds, sizeof *round_last_ns);
  }
  if (cfg.scenario == SC_BROADCAST) {
    sent_at = xcalloc((size_t)cfg.window, sizeof *sent_at);
    receipts = xcalloc((size_t)cfg.window, sizeof *receipts);
  }

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1: %s", strerror(errno));

  t_run_start = now_ns();
  cur_ns = t_run_start;
  t_deadline = t_process_start + (uint64_t)(cfg.timeout * 1e9);
  if (cfg.scenario == SC_HANDSHAKE) {
    t_connected = t_run_start;
    begin_window(t_run_start);
    for (int i = 0; i < conn_count; i++) conn_start(&conns[i]);
  } else if (cfg.go_stdin) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0)
      die("--go-stdin needs stdin to be a pipe: %s", strerror(errno));
    wait_go(W_CONNECT);
  } else {
    open_more();
  }

  struct epoll_event events[1024];
  for (;;) {
    int n = epoll_wait(epfd, events, 1024, 5);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
      conn_t *c = events[i].data.ptr;
      uint32_t ev = events[i].events;
      if (!c) {
        on_stdin();
        continue;
      }
      if (c->state == CS_FREE) continue;
      if (c->state == CS_CONNECTING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c);
        continue;
      }
      if (ev & EPOLLOUT) {
        flush(c);
        if (c->state == CS_FREE) continue;
      }
      if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    }
    tick();
  }
}
