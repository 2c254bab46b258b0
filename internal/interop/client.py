# A real third-party client for the interop test: Debian's python3-websockets
# (permessage-deflate on by default). Prints OK and the negotiated
# extensions, or fails with a traceback.
import asyncio
import sys

import websockets


async def main(url):
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send("hello κόσμε")
        got = await ws.recv()
        assert got == "hello κόσμε", got
        data = bytes(range(256)) * 400
        await ws.send(data)
        got = await ws.recv()
        assert got == data, len(got)
        await ws.close(code=1000, reason="done")
        print("OK", ws.response_headers.get("Sec-WebSocket-Extensions", ""))


asyncio.run(main(sys.argv[1]))
