#!/usr/bin/env python3
"""Memory a proxy spends on idle keep-alive client connections.

    idle_conns.py PORT PID N SOURCE_IP

Opens N connections to 127.0.0.1:PORT from SOURCE_IP (a loopback address of its
own, so that runs against several proxies do not share ephemeral ports), sends one
GET on each and reads its answer (so every connection has served a request and is
idle in keep-alive), then reads the resident memory of process PID (and of all its
threads: /proc/PID/status VmRSS) and prints one line:

    <rss before KiB> <rss with N idle connections KiB> <connections still open>

then closes every connection. Bounded: one request per connection, loopback only.
"""
import asyncio
import resource
import sys


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def one(port: int, source: str, conns: list, sem: asyncio.Semaphore) -> None:
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        conns.append((reader, writer))


async def main() -> None:
    port, pid, n, source = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
    before = rss_kib(pid)
    conns: list = []
    # At most 256 connections being opened at once: a burst, not a flood.
    sem = asyncio.Semaphore(256)
    await asyncio.wait_for(
        asyncio.gather(*(one(port, source, conns, sem) for _ in range(n))), timeout=120
    )
    # Let the proxy settle (buffers it frees once a connection goes idle).
    await asyncio.sleep(1)
    after = rss_kib(pid)
    open_now = sum(1 for _, w in conns if not w.is_closing())
    print(before, after, open_now)
    for _, w in conns:
        w.close()


asyncio.run(main())
