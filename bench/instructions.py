#!/usr/bin/env python3
"""Instructions per proxied keep-alive request, counted by callgrind.

    python3 bench/instructions.py target/release/tidegate [other/tidegate ...]

tidegate (one worker) in front of a tiny HTTP/1.1 keep-alive backend (asyncio, in this
process), N requests over 8 keep-alive connections through one upstream pool. Two runs
(N1 and N2 requests); the difference of their totals divided by N2 - N1 cancels start-up
and shutdown. callgrind counts instructions, not time, so the figure repeats for the same
binary whatever else the machine is doing: use it to compare two builds (an A/B of a
change) when the machine is too busy for `bench/run`. Needs valgrind.
"""
import asyncio, os, re, signal, socket, sys, tempfile, time

N1, N2 = 1000, 3000
CONNS = 8
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

async def backend_handler(r, w):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = await r.read(65536)
                if not d:
                    return
                buf += d
            _, buf = buf.split(b"\r\n\r\n", 1)
            w.write(RESP)
            await w.drain()
    except Exception:
        pass

async def client(port, n):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        w.write(req)
        await w.drain()
        buf = b""
        while b"\r\n\r\nok" not in buf:
            d = await r.read(65536)
            if not d:
                raise RuntimeError("closed")
            buf += d
    w.close()

async def one(binary, n):
    srv = await asyncio.start_server(backend_handler, "127.0.0.1", 0)
    bport = srv.sockets[0].getsockname()[1]
    s = socket.socket(); s.bind(("127.0.0.1", 0)); pport = s.getsockname()[1]; s.close()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "t.toml")
    open(cfg, "w").write(f"""
[server]
workers = 1
[listeners.web]
listen = ["127.0.0.1:{pport}"]
[[listeners.web.routes]]
upstream = "app"
[upstreams.app]
servers = ["127.0.0.1:{bport}"]
keepalive = 32
""")
    out = os.path.join(d, "cg.out")
    p = await asyncio.create_subprocess_exec("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        binary, "run", "--config", cfg, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    # Ready when the listener accepts (polled, with a deadline).
    deadline = time.time() + 120
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", pport)
            w.close()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("tidegate under valgrind did not start listening")
            await asyncio.sleep(0.2)
    per = n // CONNS
    await asyncio.gather(*[client(pport, per) for _ in range(CONNS)])
    p.send_signal(signal.SIGTERM)
    await p.wait()
    srv.close()
    txt = open(out).read()
    m = re.search(r"^(?:summary|totals): (\d+)", txt, re.M)
    return int(m.group(1))

async def main():
    for binary in sys.argv[1:]:
        a = await one(binary, N1)
        b = await one(binary, N2)
        print(f"{binary}: {a} / {b} instructions; per request {(b - a) / (N2 - N1):.0f}")

asyncio.run(main())
