"""An echo peer on Python's `websockets` (Debian's python3-websockets 10.4).

    python3 websockets_peer.py server            listens on 127.0.0.1, prints {"event": "listening", "port": N}
    python3 websockets_peer.py client URL [N]    connects N times (default 1), one after the other

Same behaviour and commands as ws_peer.mjs: echo with the message type kept;
"!close CODE REASON", "!ping" (answers "!pong-ok"), "!fragments". Events go to
stdout as JSON lines. The process ends when stdin closes (server) or after the
last connection (client), and after 30 s in any case.
"""

import asyncio
import json
import sys
import threading

import websockets

MAX_SIZE = 64 * 1024 * 1024


def emit(**event):
    print(json.dumps(event), flush=True)


async def run(ws):
    emit(event="open", extensions=ws.response_headers.get("Sec-WebSocket-Extensions"))
    try:
        async for message in ws:
            if isinstance(message, str):
                if message.startswith("!close "):
                    _, code, *reason = message.split(" ")
                    await ws.close(int(code), " ".join(reason))
                    break
                if message == "!ping":
                    pong = await ws.ping(b"peer-ping")
                    await pong
                    await ws.send("!pong-ok peer-ping")
                    continue
                if message == "!fragments":
                    await ws.send(["frag", "men", "ted"])
                    continue
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    await ws.wait_closed()
    emit(event="close", code=ws.close_code, reason=ws.close_reason)


async def handler(ws, path=None):
    await run(ws)


async def server():
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def wait_for_stdin():
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    # A daemon thread never delays the exit.
    threading.Thread(target=wait_for_stdin, daemon=True).start()
    async with websockets.serve(
        handler, "127.0.0.1", 0, max_size=MAX_SIZE, compression="deflate"
    ) as srv:
        emit(event="listening", port=srv.sockets[0].getsockname()[1])
        await stdin_closed.wait()


async def client(url, count):
    for _ in range(count):
        async with websockets.connect(url, max_size=MAX_SIZE, compression="deflate") as ws:
            await run(ws)


async def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "server":
        coro = server()
    elif mode == "client":
        coro = client(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    else:
        print("usage: websockets_peer.py server | client URL [N]", file=sys.stderr)
        sys.exit(64)
    await asyncio.wait_for(coro, 30)


if __name__ == "__main__":
    asyncio.run(main())
