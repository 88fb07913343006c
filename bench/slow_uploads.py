#!/usr/bin/env python3
"""Memory of request buffering under slow uploads (bench scenario "slow uploads").

Starts a backend (asyncio, standard library), then tidegate twice — with
`[upstreams.app.request_buffering]` on and off — and each time opens N client
connections (default 1,000) that POST a body of BODY bytes (Content-Length) but send
only SENT bytes of it, then hold. Reports tidegate's RSS before and while the uploads
are held, the growth per upload, and how many connections tidegate held toward the
backend meanwhile (with buffering: none; without: one per upload).

Usage: bench/slow_uploads.py [path/to/tidegate]   (default: target/release/tidegate)
Knobs: SLOW_UPLOADS (1000), SLOW_BODY (65536), SLOW_SENT (32768).
No timing is measured: the figures are memory and connection counts.
"""

import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

N = int(os.environ.get("SLOW_UPLOADS", "1000"))
BODY = int(os.environ.get("SLOW_BODY", "65536"))
SENT = int(os.environ.get("SLOW_SENT", "32768"))


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def backend_conn(reader, writer, state):
    state["open"] += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        state["open"] -= 1
        writer.close()


def config(backend_port, buffering):
    table = ""
    if buffering:
        table = '[upstreams.app.request_buffering]\nmax_body = "1MiB"\ntotal = "256MiB"\n'
    return f"""
[server]
workers = 2
[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["127.0.0.1:{backend_port}"]
{table}"""


async def wait_listening(proc, log_path):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log_path) as f:
            for line in f:
                m = re.search(r"listening listener=web address=127\.0\.0\.1:(\d+)", line)
                if m:
                    return int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"tidegate exited: {open(log_path).read()}")
        await asyncio.sleep(0.05)
    raise SystemExit("tidegate did not start")


async def run(binary, buffering, backend_port, state):
    d = tempfile.mkdtemp(prefix="tg-slow-")
    cfg = os.path.join(d, "tidegate.toml")
    with open(cfg, "w") as f:
        f.write(config(backend_port, buffering))
    log_path = os.path.join(d, "log")
    log = open(log_path, "w")
    env = dict(os.environ, NO_COLOR="1", XDG_RUNTIME_DIR=d)
    proc = subprocess.Popen([binary, "run", "--config", cfg], stdout=log, stderr=log, env=env)
    try:
        port = await wait_listening(proc, log_path)
        await asyncio.sleep(0.5)
        before = rss_kib(proc.pid)
        conns = []
        head = f"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n".encode()
        for i in range(0, N, 100):
            batch = await asyncio.gather(
                *[asyncio.open_connection("127.0.0.1", port) for _ in range(min(100, N - i))]
            )
            for _, w in batch:
                w.write(head + b"x" * SENT)
            await asyncio.gather(*[w.drain() for _, w in batch])
            conns.extend(batch)
        # Let tidegate read what was sent (in 16 KiB steps) and settle.
        await asyncio.sleep(3)
        held = rss_kib(proc.pid)
        peak = rss_kib(proc.pid, "VmHWM")
        upstream_open = state["open"]
        for _, w in conns:
            w.close()
        return before, held, peak, upstream_open
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/tidegate"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    state = {"open": 0}
    server = await asyncio.start_server(
        lambda r, w: backend_conn(r, w, state), "127.0.0.1", 0, backlog=4096
    )
    backend_port = server.sockets[0].getsockname()[1]
    print(f"{N} uploads, Content-Length {BODY}, {SENT} bytes sent then held; {binary}")
    print("| request_buffering | RSS before | RSS while held | growth per upload | VmHWM | connections to the backend |")
    print("|---|---|---|---|---|---|")
    for buffering in (False, True):
        before, held, peak, up = await run(binary, buffering, backend_port, state)
        await asyncio.sleep(1)
        per = (held - before) / N
        name = "on" if buffering else "off"
        print(f"| {name} | {before / 1024:.1f} MiB | {held / 1024:.1f} MiB | {per:.1f} KiB | {peak / 1024:.1f} MiB | {up} |")
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
