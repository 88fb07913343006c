#!/usr/bin/env python3
"""tidegate benchmark harness: runs every scenario against tidegate, nginx and HAProxy
on this machine, interleaved, and writes a markdown table to bench/results/.

Run it through `bench/run` (which installs the tools and builds the binaries); see
bench/README.md for what each scenario measures and how. Standard library only.
"""

import datetime
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORK = os.path.join(BENCH, "work")
RESULTS = os.path.join(BENCH, "results")
LOGS = os.path.join(WORK, "logs")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

PROXY_CPU = "1"     # each proxy: one worker, pinned here
CLIENT_CPU = "0"    # load generators and backends


def env_int(name, default):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        sys.exit(f"bench: {name}={v!r} is not a whole number")


DURATION = env_int("BENCH_DURATION", 10)          # seconds per measured load run
WARMUP = env_int("BENCH_WARMUP", 2)               # seconds of warm-up before each
ROUNDS = env_int("BENCH_ROUNDS", 3)
RATE = env_int("BENCH_RATE", 4000)                # fixed-rate scenario, requests/s total
RATE_CONNS = env_int("BENCH_RATE_CONNS", 40)      # connections for the fixed-rate run
RATE_TOOL = os.environ.get("BENCH_RATE_TOOL", "loadgen")   # loadgen (open loop) | h2load
CONNS = env_int("BENCH_CONNS", 64)                # connections for the saturating runs
IDLE_CONNS = env_int("BENCH_IDLE_CONNS", 10000)
SSE_STREAMS = env_int("BENCH_SSE_STREAMS", 1000)
BIG_BYTES = env_int("BENCH_BIG_BYTES", 1 << 30)
CONN_CAP = 12000    # nginx worker_connections, HAProxy maxconn, tidegate max_connections
PROXIES = [p for p in os.environ.get("BENCH_PROXIES", "tidegate,nginx,haproxy").split(",") if p]
SCENARIOS = [s for s in os.environ.get("BENCH_SCENARIOS", "a,b,c,d,e,f,g,h,i,j").split(",") if s]
# (i): many concurrent SSE streams (the memory users feel first); (j): the regime where
# the cost of each wake-up dominates: a few connections, each one request every 10 ms.
# 6,000, not the 10,000 the issue asks for: this machine's hard open-files limit is
# 20,000, and a stream holds two descriptors in nginx and HAProxy (client and upstream
# side; nginx also counts both against worker_connections, 16,384 here) and three in
# tidegate (its end-of-client watch holds a duplicate of the client socket while a
# response streams): 8,000 streams ran tidegate and nginx out of descriptors, and at
# 6,000 nginx's worker_connections (CONN_CAP, counting both sides) stopped it at 5,625.
# Raise the limits to go higher.
MANY_SSE = env_int("BENCH_MANY_SSE", 5000)
PACED_CONNS = env_int("BENCH_PACED_CONNS", 64)
PACED_EVERY_MS = env_int("BENCH_PACED_EVERY_MS", 10)

TIDEGATE = os.environ.get("TIDEGATE_BIN") or os.path.join(ROOT, "target", "release", "tidegate")
LOADGEN = os.environ.get("LOADGEN_BIN") or os.path.join(ROOT, "target", "release", "tidegate-loadgen")

SMALL_BODY = "hello from the backend\n"

SCENARIO_TITLES = {
    "a": "(a) HTTP/1.1 keep-alive, small body, {c} connections (wrk)".format(c=CONNS),
    "b": "(b) HTTP/1.1 keep-alive, 16 KiB body, {c} connections (wrk)".format(c=CONNS),
    "c": "(c) HTTP/1.1 keep-alive, small body, {c} connections, Unix-socket upstream (wrk)".format(c=CONNS),
    "d": "(d) fixed rate {r} req/s over {c} connections, small body ({t})".format(
        r=RATE, c=RATE_CONNS, t="h2load --h1 --rps" if RATE_TOOL == "h2load" else "loadgen rate: open loop, evenly spaced"),
    "e": "(e) {n} idle keep-alive client connections: memory per connection".format(n=IDLE_CONNS),
    "f": "(f) {n} open SSE streams: memory per stream (client side + upstream side)".format(n=SSE_STREAMS),
    "g": "(g) {g} body each way: throughput".format(g=("1 GiB" if BIG_BYTES == 1 << 30 else f"{BIG_BYTES} B")),
    "h": "(h) TCP (L4) mode, small body, {c} connections (wrk through an L4 proxy)".format(c=CONNS),
    "i": "(i) {n} concurrent SSE streams: memory per stream (client side + upstream side)".format(n=MANY_SSE),
    "j": "(j) {c} connections, each one request every {ms} ms ({r} req/s, loadgen rate)".format(
        c=PACED_CONNS, ms=PACED_EVERY_MS, r=PACED_CONNS * 1000 // PACED_EVERY_MS),
}


def log(msg):
    print(msg, flush=True)


def loud(msg):
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------
# processes: every one we start is in its own process group and stopped on exit

STARTED = []
LOCK = None   # bench/work/.lock, held for the whole run


class Child:
    def __init__(self, name, argv, log_path, stdin_pipe=False, stdout_pipe=False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self.logf.write(("$ " + " ".join(argv) + "\n").encode())
        self.logf.flush()
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self.logf,
            stderr=self.logf,
            start_new_session=True,
            cwd=WORK,
        )
        self.pid = self.p.pid
        self.pgid = self.p.pid
        self._buf = b""
        self.killed = False
        STARTED.append(self)

    def alive(self):
        return self.p.poll() is None

    def readline(self, deadline):
        """Next stdout line (without newline), or None at EOF or at the deadline."""
        fd = self.p.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def send(self, text):
        try:
            self.p.stdin.write(text.encode())
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, sig=signal.SIGTERM, grace=10.0):
        """Signal the process, wait up to `grace`, then SIGKILL its whole group."""
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.killed = True
                loud(f"{self.name} (pid {self.pid}) did not exit within {grace:.0f}s of {sig.name}: SIGKILL")
        # Whatever is left in the group (nginx workers, ...) goes too.
        deadline = time.monotonic() + 5
        while group_members(self.pgid) and time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.p.stdout:
            self.p.stdout.close()
        self.logf.close()
        if self in STARTED:
            STARTED.remove(self)

    def log_tail(self, n=25):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


def stop_all():
    for c in reversed(list(STARTED)):
        try:
            c.stop(grace=5)
        except Exception as e:  # keep stopping the others
            print(f"bench: stopping {c.name}: {e}", file=sys.stderr)


def on_signal(signum, _frame):
    raise SystemExit(f"bench: interrupted by signal {signum}")


# ----------------------------------------------------------------------------------
# /proc

def read_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] = field 3 (state); ppid = field 4; pgrp = field 5; utime, stime = 14, 15
    return {"state": rest[0], "ppid": int(rest[1]), "pgrp": int(rest[2]),
            "ticks": int(rest[11]) + int(rest[12])}


def all_stats():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = read_stat(d)
            except (OSError, ValueError, IndexError):
                pass
    return out


def group_members(pgid):
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, st in all_stats().items() if st["pgrp"] == pgid and st["state"] not in ("Z", "X")]


def tree_pids(root):
    stats = all_stats()
    pids, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        if p in stats and stats[p]["state"] not in ("Z", "X"):
            pids.append(p)
            frontier.extend(q for q, st in stats.items() if st["ppid"] == p)
    return pids


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            total += read_stat(p)["ticks"]
        except (OSError, ValueError):
            pass
    return total


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_busy_snapshot():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                total = sum(v[:8])
                out[m.group(1)] = (total - idle, total)
    return out


def cpu_busy_pct(before, after, cpu):
    b0, t0 = before[cpu]
    b1, t1 = after[cpu]
    return 100.0 * (b1 - b0) / max(1, (t1 - t0))


OWN_ROOTS = []        # long-lived helpers (backends): their CPU is ours, not "other load"
FOREIGN_LIMIT = env_int("BENCH_FOREIGN_LIMIT", 10)   # % of one core used by other processes
QUIET_WAIT = env_int("BENCH_QUIET_WAIT", 60)         # s to wait for a quiet machine per run
RERUNS = env_int("BENCH_RERUNS", 1)                  # repeats of a run disturbed by other load


def own_ticks():
    """CPU ticks of this harness, its reaped children (wrk, h2load, loadgen runs) and
    the long-lived helpers (backends)."""
    import resource
    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        t += (ru.ru_utime + ru.ru_stime) * CLK_TCK
    for root in OWN_ROOTS:
        t += cpu_ticks(tree_pids(root))
    return t


def total_busy():
    snap = cpu_busy_snapshot()
    return sum(b for b, _ in snap.values()), snap


def top_consumers(before, after, exclude, n=3):
    deltas = []
    for pid, st in after.items():
        if pid in exclude:
            continue
        d = st["ticks"] - before.get(pid, {"ticks": 0})["ticks"]
        if d > 0:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                name = "?"
            deltas.append((d, f"{name}[{pid}]"))
    deltas.sort(reverse=True)
    return ", ".join(f"{name} {d / CLK_TCK:.1f} s CPU" for d, name in deltas[:n])


class Meter:
    """CPU time of a proxy's processes over a measured window, the per-CPU load, and the
    load of processes that are not part of the benchmark ("other load")."""

    def __init__(self, child):
        self.child = child

    def __enter__(self):
        self.pids = tree_pids(self.child.pid)
        self.all0 = all_stats()
        self.own0 = own_ticks()
        self.t0 = time.monotonic()
        self.c0 = cpu_ticks(self.pids)
        self.b0, self.s0 = total_busy()
        return self

    def __exit__(self, *exc):
        self.pids = sorted(set(self.pids) | set(tree_pids(self.child.pid)))
        self.c1 = cpu_ticks(self.pids)
        self.t1 = time.monotonic()
        self.b1, self.s1 = total_busy()
        self.own1 = own_ticks()
        all1 = all_stats()
        self.cpu_s = (self.c1 - self.c0) / CLK_TCK
        self.wall = self.t1 - self.t0
        self.proxy_cpu_pct = 100.0 * self.cpu_s / max(1e-9, self.wall)
        self.cpu0_pct = cpu_busy_pct(self.s0, self.s1, CLIENT_CPU)
        self.cpu1_pct = cpu_busy_pct(self.s0, self.s1, PROXY_CPU)
        ours = (self.c1 - self.c0) + (self.own1 - self.own0)
        other = max(0.0, (self.b1 - self.b0) - ours)
        self.other_pct = 100.0 * other / CLK_TCK / max(1e-9, self.wall)
        exclude = set(self.pids) | {os.getpid()}
        for root in OWN_ROOTS:
            exclude |= set(tree_pids(root))
        self.other_top = top_consumers(self.all0, all1, exclude) if self.other_pct > FOREIGN_LIMIT else ""
        return False

    def annotate(self, res):
        res["other_pct"] = self.other_pct
        if self.other_pct > FOREIGN_LIMIT:
            res["disturbed"] = True
            res["note"] = (res.get("note", "") + f" other load {self.other_pct:.0f}% of a core"
                           + (f" ({self.other_top})" if self.other_top else "")).strip()
        return res


def wait_quiet(label):
    """Waits (bounded) until processes outside the benchmark use < FOREIGN_LIMIT % of a
    core; returns the last measured other load."""
    deadline = time.monotonic() + QUIET_WAIT
    said = False
    while True:
        own0, (b0, _) = own_ticks(), total_busy()
        all0 = all_stats()
        time.sleep(1.0)
        own1, (b1, _) = own_ticks(), total_busy()
        other = 100.0 * max(0.0, (b1 - b0) - (own1 - own0)) / CLK_TCK
        if other <= FOREIGN_LIMIT:
            if said:
                log(f"   machine quiet again ({other:.0f}% other load)")
            return other
        if time.monotonic() >= deadline:
            log(f"   {label}: machine still busy after {QUIET_WAIT}s ({other:.0f}% of a core used by other "
                f"processes: {top_consumers(all0, all_stats(), {os.getpid()})}); running anyway, the run is flagged")
            return other
        if not said:
            log(f"   {label}: waiting for a quiet machine: other processes use {other:.0f}% of a core "
                f"({top_consumers(all0, all_stats(), {os.getpid()})})")
            said = True


# ----------------------------------------------------------------------------------
# ports and readiness

USED_PORTS = set()


def free_port():
    """A free high port below the ephemeral range (so no client socket holds it)."""
    for _ in range(1000):
        p = random.randrange(20000, 32000)
        if p in USED_PORTS:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        USED_PORTS.add(p)
        return p
    raise RuntimeError("no free port found in 20000-32000")


def http_status(port=None, path="/", unix=None, timeout=2.0):
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(unix)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            return int(data.split()[1])
        finally:
            s.close()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": "bench.local"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_ready(child, port=None, path="/", unix=None, deadline_s=15.0):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start-up (code {child.p.returncode}):\n{child.log_tail()}")
        try:
            st = http_status(port, path, unix)
            if st == 200:
                return
            last = f"status {st}"
        except (OSError, ValueError, IndexError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready after {deadline_s:.0f}s (last: {last}):\n{child.log_tail()}")


# ----------------------------------------------------------------------------------
# backends (CPU 0): nginx (small body, 16 KiB, 1 GiB file; TCP + Unix socket),
# the SSE server and the upload sink (loadgen)

class Backends:
    def __init__(self, big=True):
        """`big`: write the 1 GiB file of (g) if it is missing (bench/tls.py needs none)."""
        self.big = big
        self.port = free_port()
        self.sock = os.path.join(WORK, "backend.sock")
        self.sse_port = free_port()
        self.sink_port = free_port()

    def start(self):
        d = os.path.join(WORK, "backend")
        www = os.path.join(WORK, "www")
        for sub in ("tmp",):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "16k.bin"), "wb") as f:
            f.write(b"x" * 16384)
        big = os.path.join(www, "big.bin")
        if self.big and not (os.path.exists(big) and os.path.getsize(big) == BIG_BYTES):
            log(f"creating {big} ({BIG_BYTES} bytes)")
            chunk = b"\0" * (1 << 20)
            with open(big, "wb") as f:
                left = BIG_BYTES
                while left > 0:
                    n = min(left, len(chunk))
                    f.write(chunk[:n])
                    left -= n
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        conf = f"""# backend for the benchmark: not a proxy under test
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    client_body_temp_path {d}/tmp/client;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        listen unix:{self.sock} backlog=4096;
        location = /16k {{ alias {www}/16k.bin; }}
        location = /big {{ alias {big}; }}
        location / {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.nginx = Child("backend nginx", ["taskset", "-c", CLIENT_CPU, "nginx", "-e", f"{d}/error.log",
                                             "-p", d, "-c", path], os.path.join(LOGS, "backend-nginx.log"))
        self.sse = Child("SSE backend", ["taskset", "-c", CLIENT_CPU, LOADGEN, "sse-server", "--listen",
                                         f"127.0.0.1:{self.sse_port}"], os.path.join(LOGS, "backend-sse.log"))
        self.sink = Child("upload sink", ["taskset", "-c", CLIENT_CPU, LOADGEN, "sink", "--listen",
                                          f"127.0.0.1:{self.sink_port}"], os.path.join(LOGS, "backend-sink.log"))
        wait_ready(self.nginx, self.port, "/")
        wait_ready(self.nginx, path="/", unix=self.sock)
        wait_ready(self.sse, self.sse_port, "/ready")
        wait_ready(self.sink, self.sink_port, "/ready")
        OWN_ROOTS[:] = [self.nginx.pid, self.sse.pid, self.sink.pid]
        log(f"backends: nginx 127.0.0.1:{self.port} + unix:{self.sock}, SSE 127.0.0.1:{self.sse_port}, "
            f"sink 127.0.0.1:{self.sink_port} (all on CPU {CLIENT_CPU})")

    def check_alive(self):
        for c in (self.nginx, self.sse, self.sink):
            if not c.alive():
                raise RuntimeError(f"{c.name} died:\n{c.log_tail()}")


# ----------------------------------------------------------------------------------
# proxies under test (CPU 1, one worker each)
#
# A "route set" is a list of (path prefix, upstream) where upstream is
# ("tcp", "127.0.0.1:P") or ("unix", "/path"). The last route is "/".

class Proxy:
    name = ""

    def __init__(self):
        self.dir = os.path.join(WORK, self.name)
        os.makedirs(self.dir, exist_ok=True)

    def start(self, tag, routes, streaming=False, l4=None):
        self.port = free_port()
        conf = self.config(tag, routes, streaming, l4)
        self.child = Child(f"{self.name} [{tag}]", self.argv(conf), os.path.join(LOGS, f"{self.name}-{tag}.log"))
        return self.child


class Tidegate(Proxy):
    name = "tidegate"

    def config(self, tag, routes, streaming, l4):
        path = os.path.join(self.dir, f"{tag}.toml")
        ups = []
        lines = ["# generated by bench/harness.py", "[server]", "workers = 1", 'shutdown_grace = "0s"',
                 'log = { level = "warn" }']
        if TG_FEATURES["access_log"]:
            lines.append('access_log = { to = "off" }')
        lines.append("")
        if TG_FEATURES["admin"]:
            # Its own admin socket: the default path may be held by another tidegate.
            sock = os.path.join(self.dir, f"admin-{tag}.sock")
            if os.path.exists(sock):
                os.unlink(sock)
            lines += ["[admin]", f'listen = "unix:{sock}"', ""]
        if l4:
            lines += ["[listeners.bench]", f'listen = ["127.0.0.1:{self.port}"]', 'protocol = "tcp"',
                      'upstream = "u0"', f"max_connections = {CONN_CAP}", "",
                      "[upstreams.u0]", f'servers = ["{l4}"]', ""]
        else:
            lines += ["[listeners.bench]", f'listen = ["127.0.0.1:{self.port}"]', 'idle_timeout = "300s"',
                      f"max_connections = {CONN_CAP}", ""]
            for i, (prefix, (kind, addr)) in enumerate(routes):
                lines += ["[[listeners.bench.routes]]", f'path = "{prefix}"', f'upstream = "u{i}"', ""]
                server = addr if kind == "tcp" else f"unix:{addr}"
                ups += [f"[upstreams.u{i}]", f'servers = ["{server}"]', "keepalive = 32", ""]
        with open(path, "w") as f:
            f.write("\n".join(lines + ups))
        return path

    def argv(self, conf):
        return ["taskset", "-c", PROXY_CPU, TIDEGATE, "run", "--config", conf]


class Nginx(Proxy):
    name = "nginx"

    def config(self, tag, routes, streaming, l4):
        d = self.dir
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        path = os.path.join(d, f"{tag}.conf")
        head = f"""# generated by bench/harness.py
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {d}/{tag}.pid;
error_log {d}/error-{tag}.log warn;
events {{ worker_connections {CONN_CAP}; }}
"""
        if l4:
            conf = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" + head + f"""stream {{
    upstream u0 {{ server {l4}; }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        proxy_pass u0;
        proxy_timeout 300s;
    }}
}}
"""
        else:
            ups, locs = [], []
            for i, (prefix, (kind, addr)) in enumerate(routes):
                server = addr if kind == "tcp" else f"unix:{addr}"
                ups.append(f"""    upstream u{i} {{
        server {server};
        keepalive 32;
        keepalive_requests 1000000000;
        keepalive_timeout 60s;
    }}""")
                locs.append(f"        location {prefix} {{ proxy_pass http://u{i}; }}")
            buffering = "off" if streaming else "on"
            conf = head + f"""http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    client_max_body_size 0;
    client_body_temp_path {d}/tmp/client;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_buffering {buffering};
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
{chr(10).join(ups)}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
{chr(10).join(locs)}
    }}
}}
"""
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self, conf):
        return ["taskset", "-c", PROXY_CPU, "nginx", "-e", os.path.join(self.dir, "error.log"),
                "-p", self.dir, "-c", conf]


class Haproxy(Proxy):
    name = "haproxy"

    def config(self, tag, routes, streaming, l4):
        path = os.path.join(self.dir, f"{tag}.cfg")
        # Two descriptors per connection would need 2 x maxconn > the hard limit of 20000
        # open files here; idle client connections need one each, so run anyway.
        head = f"""# generated by bench/harness.py
global
    nbthread 1
    ulimit-n 20000
    maxconn {CONN_CAP}
    no strict-limits

defaults
    mode {"tcp" if l4 else "http"}
    maxconn {CONN_CAP}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 10s
    timeout tunnel 300s
"""
        if l4:
            conf = head + f"""
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend b0

backend b0
    server s1 {l4}
"""
        else:
            fe = ["frontend fe", f"    bind 127.0.0.1:{self.port}", "    option forwardfor",
                  "    http-request set-header X-Forwarded-Proto http",
                  "    http-request set-header X-Forwarded-Host %[req.hdr(host)]"]
            bes = []
            for i, (prefix, (kind, addr)) in enumerate(routes):
                if prefix != "/":
                    fe.append(f"    use_backend b{i} if {{ path {prefix} }} || {{ path_beg {prefix.rstrip('/')}/ }}")
                else:
                    fe.append(f"    default_backend b{i}")
                bes += [f"backend b{i}", "    http-reuse always", f"    server s1 {addr} pool-max-conn 32", ""]
            conf = head + "\n" + "\n".join(fe) + "\n\n" + "\n".join(bes)
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self, conf):
        return ["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", conf]


PROXY_CLASSES = {"tidegate": Tidegate, "nginx": Nginx, "haproxy": Haproxy}


def tidegate_accepts(name, text):
    """(ok, message): whether `tidegate check` accepts a config (probes features that
    older builds refuse as "not supported yet")."""
    d = os.path.join(WORK, "tidegate")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"probe-{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([TIDEGATE, "check", "--config", path], capture_output=True, text=True, timeout=30)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


TG_FEATURES = {"admin": False, "access_log": False}


def probe_tidegate(backends):
    """Which optional config tables this tidegate build accepts; returns the TCP state."""
    http = (f'[listeners.web]\nlisten = ["127.0.0.1:1"]\n[[listeners.web.routes]]\nupstream = "u0"\n'
            f'[upstreams.u0]\nservers = ["127.0.0.1:{backends.port}"]\n')
    TG_FEATURES["admin"] = tidegate_accepts(
        "admin", f'[admin]\nlisten = "unix:{WORK}/tidegate/probe-admin.sock"\n' + http)[0]
    TG_FEATURES["access_log"] = tidegate_accepts(
        "access-log", '[server]\naccess_log = { to = "off" }\n' + http)[0]
    tcp = tidegate_accepts("tcp", f'[listeners.l4]\nlisten = ["127.0.0.1:1"]\nprotocol = "tcp"\nupstream = "u0"\n\n'
                                  f'[upstreams.u0]\nservers = ["127.0.0.1:{backends.port}"]\n')
    log(f"tidegate build: admin table {'accepted' if TG_FEATURES['admin'] else 'refused'}, "
        f"access_log {'accepted' if TG_FEATURES['access_log'] else 'refused'}, "
        f"TCP mode {'accepted' if tcp[0] else 'refused (n/a: not built)'}")
    return tcp


# ----------------------------------------------------------------------------------
# load generators (CPU 0)

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")


def run_wrk(port, path, duration, conns=CONNS, scheme="http"):
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s",
            "--latency", f"{scheme}://127.0.0.1:{port}{path}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    out = r.stdout + r.stderr
    res = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (exit {r.returncode}):\n{out}")
    res["requests"] = int(m.group(1))
    res["secs"] = parse_ms(m.group(2) + m.group(3)) / 1000.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["sockerr"] = sum(int(x) for x in m.groups()) if m else 0
    res["sockerr_text"] = m.group(0) if m else ""
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = parse_ms(m.group(1)) if m else float("nan")
    return res


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def h2load_run(argv, timeout):
    """Runs h2load; returns its output and the matches of its "requests:" and "status
    codes:" lines (RuntimeError if it failed or printed neither)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if r.returncode != 0 or not m or not s:
        raise RuntimeError(f"h2load failed (exit {r.returncode}):\n{out}")
    return out, m, s


def run_h2load(port, path, rate, conns, duration, log_file):
    per_client = max(1, round(rate / conns))
    if os.path.exists(log_file):
        os.unlink(log_file)
    argv = ["taskset", "-c", CLIENT_CPU, "h2load", "--h1", "-t1", f"-c{conns}", f"--rps={per_client}",
            f"-D{duration}", f"--log-file={log_file}", f"http://127.0.0.1:{port}{path}"]
    out, m, s = h2load_run(argv, duration + 60)
    lat = []
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].strip() == "200":
                lat.append(int(parts[2]) / 1000.0)   # µs -> ms
    lat.sort()
    done = int(m.group(3))
    ok2xx = int(s.group(1))
    return {"raw": out, "requests": done, "ok": ok2xx, "rate": ok2xx / duration,
            "non2xx": done - ok2xx, "sockerr": int(m.group(5)) + int(m.group(6)) + int(m.group(7)),
            "sockerr_text": m.group(0),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "p999": percentile(lat, 99.9),
            "max": lat[-1] if lat else float("nan"), "target_rate": per_client * conns}


def tls_args(tls):
    """loadgen's arguments for a TLS connection with SNI name `tls` (None: plain TCP)."""
    return ["--tls", tls] if tls else []


def hold(port, path, n, mode, tag, deadline_s=180, tls=None):
    """Opens n connections (one request each) and keeps them; returns (child, READY dict).
    `tls`: the SNI name to connect with over TLS (bench/tls.py); None: plain TCP."""
    c = Child(f"loadgen hold [{tag}]", ["taskset", "-c", CLIENT_CPU, LOADGEN, "hold", "--addr",
                                        f"127.0.0.1:{port}", "--path", path, "--n", str(n), "--mode", mode,
                                        "--timeout", str(deadline_s - 10)] + tls_args(tls),
              os.path.join(LOGS, f"hold-{tag}.log"), stdin_pipe=True, stdout_pipe=True)
    deadline = time.monotonic() + deadline_s
    while True:
        line = c.readline(deadline)
        if line is None:
            c.stop()
            raise RuntimeError(f"loadgen hold gave no READY line within {deadline_s}s:\n{c.log_tail()}")
        if line.startswith("READY"):
            return c, {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def hold_check(c):
    c.send("check\n")
    line = c.readline(time.monotonic() + 30)
    if not line or not line.startswith("ALIVE"):
        return None
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def loadgen_json(args, timeout):
    argv = ["taskset", "-c", CLIENT_CPU, LOADGEN] + args
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed (exit {r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------
# scenarios: each returns a dict of figures (and "errors": count, "error_detail": text)

def sc_wrk(px, child, path, scheme="http"):
    run_wrk(px.port, path, WARMUP, scheme=scheme)
    with Meter(child) as m:
        w = run_wrk(px.port, path, DURATION, scheme=scheme)
    pids = tree_pids(child.pid)
    errors = w["non2xx"] + w["sockerr"]
    return m.annotate({
        "rps": (w["requests"] - w["non2xx"]) / w["secs"],
        "errors": errors,
        "error_detail": "; ".join(x for x in (f"non-2xx {w['non2xx']}" if w["non2xx"] else "",
                                               w["sockerr_text"] if w["sockerr"] else "") if x),
        "cpu_us": 1e6 * m.cpu_s / max(1, w["requests"]),
        "p50": w["p50"], "p99": w["p99"],
        "rss_mib": status_kib(pids, "VmRSS") / 1024.0,
        "proxy_cpu_pct": m.proxy_cpu_pct, "cpu0_pct": m.cpu0_pct,
    })


def run_loadgen_rate(port, path, rate, conns, duration, warmup, tls=None):
    r = loadgen_json(["rate", "--addr", f"127.0.0.1:{port}", "--path", path, "--rate", str(rate),
                      "--conns", str(conns), "--duration", str(duration), "--warmup", str(warmup)]
                     + tls_args(tls),
                     timeout=duration + warmup + 90)
    return {"requests": r["sent"], "ok": r["ok"], "rate": r["rate"], "non2xx": r["non2xx"],
            "sockerr": r["errors"], "sockerr_text": f"errors {r['errors']} (see the loadgen output)",
            "p50": r["p50_us"] / 1000.0, "p99": r["p99_us"] / 1000.0, "p999": r["p999_us"] / 1000.0,
            "max": r["max_us"] / 1000.0}


def sc_rate(px, child, path, rate=None, conns=None, tool=None, tls=None):
    rate, conns, tool = rate or RATE, conns or RATE_CONNS, tool or RATE_TOOL
    if tls and tool != "loadgen":
        raise ValueError("over TLS the fixed rate runs with loadgen only")
    if tool == "h2load":
        logf = os.path.join(WORK, f"h2load-{px.name}.log")
        run_h2load(px.port, path, rate, conns, max(1, WARMUP), logf)
        with Meter(child) as m:
            h = run_h2load(px.port, path, rate, conns, DURATION, logf)
        cpu_s = m.cpu_s
    else:
        # The warm-up is part of the same open-loop run (not measured); CPU is sampled
        # over the whole run and divided by every request sent in it.
        with Meter(child) as m:
            h = run_loadgen_rate(px.port, path, rate, conns, DURATION, WARMUP, tls)
        cpu_s = m.cpu_s * DURATION / max(1e-9, DURATION + WARMUP)
    pids = tree_pids(child.pid)
    errors = h["non2xx"] + h["sockerr"]
    return m.annotate({
        "rate": h["rate"], "errors": errors,
        "error_detail": "; ".join(x for x in (f"non-2xx {h['non2xx']}" if h["non2xx"] else "",
                                               h["sockerr_text"] if h["sockerr"] else "") if x),
        "cpu_us": 1e6 * cpu_s / max(1, h["requests"]),
        "p50": h["p50"], "p99": h["p99"], "p999": h["p999"], "max": h["max"],
        "rss_mib": status_kib(pids, "VmRSS") / 1024.0, "proxy_cpu_pct": m.proxy_cpu_pct,
        "cpu0_pct": m.cpu0_pct,
    })


def sc_hold(px, child, path, n, mode, tag, tls=None):
    # Warm-up: a few connections and requests, closed again, so that upstream pools and
    # lazy start-up allocations are in the baseline.
    w, wr = hold(px.port, path, 64, mode, tag + "-warmup", deadline_s=60, tls=tls)
    w.stop()
    time.sleep(1.0)
    pids = tree_pids(child.pid)
    before = status_kib(pids, "VmRSS")
    t0 = time.monotonic()
    c, ready = hold(px.port, path, n, mode, tag, tls=tls)
    open_s = time.monotonic() - t0
    try:
        time.sleep(2.0)   # let the proxy settle (deferred frees, pool trims)
        pids = tree_pids(child.pid)
        after = status_kib(pids, "VmRSS")
        alive = hold_check(c) or {"open": -1, "closed": -1}
    finally:
        c.stop()
    ok = ready["ok"]
    errors = ready["non2xx"] + ready["failed"] + wr["non2xx"] + wr["failed"] + max(0, alive["closed"])
    detail = []
    if errors:
        detail.append(f"ok {ok}, non-2xx {ready['non2xx']}, failed {ready['failed']}, closed by the proxy "
                      f"before the measurement {alive['closed']}; warm-up non-2xx {wr['non2xx']} failed "
                      f"{wr['failed']}; loadgen log: {c.log_path}")
    return {
        "per_conn_b": (after - before) * 1024.0 / max(1, ok),
        "rss_before_mib": before / 1024.0, "rss_after_mib": after / 1024.0,
        "open": ok, "open_s": open_s, "errors": errors, "error_detail": "; ".join(detail),
    }


def sc_big(px, child, backends):
    # warm-up: a small upload and download
    loadgen_json(["upload", "--addr", f"127.0.0.1:{px.port}", "--path", "/sink", "--bytes", str(1 << 20)], 60)
    loadgen_json(["download", "--addr", f"127.0.0.1:{px.port}", "--path", "/16k"], 60)
    errors, detail = 0, []
    with Meter(child) as mu:
        up = loadgen_json(["upload", "--addr", f"127.0.0.1:{px.port}", "--path", "/sink",
                           "--bytes", str(BIG_BYTES)], 600)
    if up["status"] != 200 or up.get("answer") != f"received {BIG_BYTES}":
        errors += 1
        detail.append(f"upload: status {up['status']}, sink said {up.get('answer')!r}")
    with Meter(child) as md:
        down = loadgen_json(["download", "--addr", f"127.0.0.1:{px.port}", "--path", "/big"], 600)
    if down["status"] != 200 or down["bytes"] != BIG_BYTES:
        errors += 1
        detail.append(f"download: status {down['status']}, {down['bytes']} bytes of {BIG_BYTES}")
    pids = tree_pids(child.pid)
    gib = BIG_BYTES / (1 << 30)
    res = {
        "up_mibs": BIG_BYTES / (1 << 20) / up["secs"], "down_mibs": BIG_BYTES / (1 << 20) / down["secs"],
        "up_cpu_ms_gib": 1000 * mu.cpu_s / gib, "down_cpu_ms_gib": 1000 * md.cpu_s / gib,
        "hwm_mib": status_kib(pids, "VmHWM") / 1024.0,
        "up_proxy_pct": mu.proxy_cpu_pct, "down_proxy_pct": md.proxy_cpu_pct,
        "up_cpu0_pct": mu.cpu0_pct, "down_cpu0_pct": md.cpu0_pct,
        "errors": errors, "error_detail": "; ".join(detail),
    }
    md.annotate(res)
    if mu.other_pct > md.other_pct:
        mu.annotate(res)
    return res


def routes_for(sc, b):
    tcp = ("tcp", f"127.0.0.1:{b.port}")
    if sc == "c":
        return [("/", ("unix", b.sock))]
    if sc in ("f", "i"):
        return [("/", ("tcp", f"127.0.0.1:{b.sse_port}"))]
    if sc == "g":
        return [("/sink", ("tcp", f"127.0.0.1:{b.sink_port}")), ("/", tcp)]
    return [("/", tcp)]


def run_one(sc, px, rnd, backends):
    tag = f"{sc}-r{rnd}"
    wait_quiet(f"{px.name} {tag}")
    routes = routes_for(sc, backends)
    l4 = f"127.0.0.1:{backends.port}" if sc == "h" else None
    child = px.start(tag, routes, streaming=(sc in ("f", "i")), l4=l4)
    try:
        ready_path = "/ready" if sc in ("f", "i") else "/"
        wait_ready(child, px.port, ready_path)
        if sc in ("a", "c", "h"):
            res = sc_wrk(px, child, "/")
        elif sc == "b":
            res = sc_wrk(px, child, "/16k")
        elif sc == "d":
            res = sc_rate(px, child, "/")
        elif sc == "e":
            res = sc_hold(px, child, "/", IDLE_CONNS, "full", f"{px.name}-{tag}")
        elif sc == "f":
            res = sc_hold(px, child, "/sse", SSE_STREAMS, "sse", f"{px.name}-{tag}")
        elif sc == "g":
            res = sc_big(px, child, backends)
        elif sc == "i":
            res = sc_hold(px, child, "/sse", MANY_SSE, "sse", f"{px.name}-{tag}")
        elif sc == "j":
            res = sc_rate(px, child, "/", rate=PACED_CONNS * 1000 // PACED_EVERY_MS,
                          conns=PACED_CONNS, tool="loadgen")
        else:
            raise ValueError(sc)
        if not child.alive():
            res["errors"] = res.get("errors", 0) + 1
            res["error_detail"] = (res.get("error_detail", "") + f"; {px.name} exited during the run").strip("; ")
    finally:
        child.stop(grace=10)
    if child.killed:
        res["note"] = (res.get("note", "") + " needed SIGKILL to stop").strip()
    res["log"] = os.path.relpath(child.log_path, ROOT)
    res["config"] = os.path.relpath(child.argv[-1], ROOT)   # every proxy's argv ends with its config
    if res.get("errors"):
        res["log_tail"] = child.log_tail(15)
    backends.check_alive()
    return res


# ----------------------------------------------------------------------------------
# report

# (key, label, format, direction) — direction: "up" = higher is better, "down" = lower
FIGURES = {
    "wrk": [("rps", "2xx requests/s", "{:,.0f}", "up"),
            ("cpu_us", "CPU µs per request (proxy, user+sys)", "{:.1f}", "down"),
            ("p50", "p50 latency (ms)", "{:.2f}", "down"),
            ("p99", "p99 latency (ms)", "{:.2f}", "down"),
            ("rss_mib", "RSS after the run (MiB)", "{:.1f}", "down"),
            ("proxy_cpu_pct", "proxy CPU use (% of one core)", "{:.0f}", None),
            ("cpu0_pct", "CPU 0 busy (load generator + backend) %", "{:.0f}", None)],
    "rate": [("rate", "2xx requests/s achieved", "{:,.0f}", None),
             ("p50", "p50 latency (ms)", "{:.3f}", "down"),
             ("p99", "p99 latency (ms)", "{:.3f}", "down"),
             ("p999", "p99.9 latency (ms)", "{:.3f}", "down"),
             ("max", "max latency (ms)", "{:.2f}", "down"),
             ("cpu_us", "CPU µs per request (proxy, user+sys)", "{:.1f}", "down"),
             ("rss_mib", "RSS after the run (MiB)", "{:.1f}", "down"),
             ("proxy_cpu_pct", "proxy CPU use (% of one core)", "{:.0f}", None),
             ("cpu0_pct", "CPU 0 busy (load generator + backend) %", "{:.0f}", None)],
    "hold": [("per_conn_b", "memory per connection (bytes of RSS)", "{:,.0f}", "down"),
             ("rss_before_mib", "RSS before (MiB)", "{:.1f}", "down"),
             ("rss_after_mib", "RSS with all open (MiB)", "{:.1f}", "down"),
             ("open", "connections open (2xx answered)", "{:,.0f}", None),
             ("open_s", "time to open them all (s)", "{:.2f}", None)],
    "big": [("up_mibs", "upload throughput (MiB/s)", "{:,.0f}", "up"),
            ("down_mibs", "download throughput (MiB/s)", "{:,.0f}", "up"),
            ("up_cpu_ms_gib", "upload: proxy CPU ms per GiB", "{:,.0f}", "down"),
            ("down_cpu_ms_gib", "download: proxy CPU ms per GiB", "{:,.0f}", "down"),
            ("hwm_mib", "peak RSS (VmHWM, MiB)", "{:.1f}", "down"),
            ("up_proxy_pct", "upload: proxy CPU use (% of one core)", "{:.0f}", None),
            ("up_cpu0_pct", "upload: CPU 0 busy (client + sink) %", "{:.0f}", None),
            ("down_proxy_pct", "download: proxy CPU use (% of one core)", "{:.0f}", None),
            ("down_cpu0_pct", "download: CPU 0 busy (client + backend) %", "{:.0f}", None)],
}
RANGE_KEYS = {"cpu_us", "p99", "up_mibs", "down_mibs", "per_conn_b"}
# Kinds measured under a Meter (other load can disturb them): their tables say how many
# runs the medians use.
METERED_KINDS = {"wrk", "rate", "big"}
KIND = {"a": "wrk", "b": "wrk", "c": "wrk", "h": "wrk", "d": "rate", "e": "hold", "f": "hold", "g": "big",
        "i": "hold", "j": "rate"}


def usable(results, sc, proxy):
    """The runs a median is taken over: those not disturbed by other load, if any."""
    rs = results.get((sc, proxy), [])
    clean = [r for r in rs if not r.get("disturbed")]
    return clean or rs


def all_disturbed(results, sc, proxy):
    rs = results.get((sc, proxy), [])
    return bool(rs) and all(r.get("disturbed") for r in rs)


def med(results, sc, proxy, key):
    vals = [r[key] for r in usable(results, sc, proxy) if isinstance(r.get(key), (int, float))]
    vals = [v for v in vals if v == v]  # drop NaN
    return statistics.median(vals) if vals else None


def fmt(v, f):
    return "—" if v is None else f.format(v)


def ratio(a, b):
    return "—" if a is None or b in (None, 0) else f"{a / b:.2f}"


def scenario_table(sc, results, proxies, na):
    lines = [f"### {SCENARIO_TITLES[sc]}", ""]
    cols = proxies + [f"tidegate/{p}" for p in proxies if p != "tidegate" and "tidegate" in proxies]
    lines.append("| figure (median of rounds) | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for key, label, f, direction in FIGURES[KIND[sc]]:
        arrow = {"up": " ↑", "down": " ↓"}.get(direction, "")
        row = [label + arrow]
        vals = {}
        for p in proxies:
            if p in na:
                row.append(na[p])
                vals[p] = None
                continue
            vals[p] = med(results, sc, p, key)
            row.append(fmt(vals[p], f) + (" *" if vals[p] is not None and all_disturbed(results, sc, p) else ""))
        for p in proxies:
            if p != "tidegate" and "tidegate" in proxies:
                row.append(ratio(vals.get("tidegate"), vals[p]) if direction or key in ("rate",) else "")
        lines.append("| " + " | ".join(row) + " |")
        if key in RANGE_KEYS:
            rng = ["  ↳ range over the rounds used (min – max)"]
            for p in proxies:
                vs = [r[key] for r in usable(results, sc, p) if isinstance(r.get(key), (int, float))]
                rng.append(na[p] if p in na else (f"{f.format(min(vs))} – {f.format(max(vs))}" if len(vs) > 1 else ""))
            rng += [""] * (len(cols) - len(proxies))
            lines.append("| " + " | ".join(rng) + " |")
    err_row = ["non-2xx / errors (all rounds)"]
    for p in proxies:
        if p in na:
            err_row.append(na[p])
            continue
        n = sum(r.get("errors", 0) for r in results.get((sc, p), []))
        runs = len(results.get((sc, p), []))
        err_row.append(("**⚠ %d**" % n) if n else ("0" if runs else "no run"))
    err_row += [""] * (len(cols) - len(proxies))
    lines.append("| " + " | ".join(err_row) + " |")
    if KIND[sc] in METERED_KINDS:
        dist = ["runs used for the medians (undisturbed / all)"]
        for p in proxies:
            if p in na:
                dist.append(na[p])
                continue
            rs = results.get((sc, p), [])
            clean = [r for r in rs if not r.get("disturbed")]
            cell = f"{len(clean)}/{len(rs)}"
            dist.append(cell if clean or not rs else f"**{cell}: all disturbed**")
        dist += [""] * (len(cols) - len(proxies))
        lines.append("| " + " | ".join(dist) + " |")
        if any(all_disturbed(results, sc, p) for p in proxies if p not in na):
            lines += ["", "\\* every run of this proxy in this scenario was disturbed by other load: the "
                      "figure and the ratios built on it are not a clean measurement."]
    lines.append("")
    return lines


def targets(results, proxies):
    rows = []

    def add(name, value, ok, sc=None, other=None):
        verdict = "yes" if ok else ("no" if ok is not None else "—")
        if sc and ok is not None and any(all_disturbed(results, sc, p) for p in ("tidegate", other) if p):
            verdict += " (unsure: disturbed runs)"
        rows.append(f"| {name} | {value} | {verdict} |")

    def r(sc, key, other):
        a, b = med(results, sc, "tidegate", key), med(results, sc, other, key)
        return (a / b) if (a is not None and b) else None

    if "nginx" in proxies:
        for sc in ("a", "b", "c"):
            x = r(sc, "cpu_us", "nginx")
            add(f"CPU per request ≤ 0.85 × nginx's — {sc}", "—" if x is None else f"{x:.2f} × nginx", None if x is None else x <= 0.85, sc, "nginx")
        x = r("d", "p99", "nginx")
        add("p99 at a fixed rate ≤ nginx's (d)", "—" if x is None else f"{x:.2f} × nginx", None if x is None else x <= 1.0, "d", "nginx")
        for key, what in (("up_mibs", "upload"), ("down_mibs", "download")):
            x = r("g", key, "nginx")
            add(f"large-body throughput ≥ nginx's — {what} (g)", "—" if x is None else f"{x:.2f} × nginx", None if x is None else x >= 1.0, "g", "nginx")
    if "haproxy" in proxies:
        x = r("e", "per_conn_b", "haproxy")
        v = med(results, "e", "tidegate", "per_conn_b")
        add("memory per idle keep-alive connection ≤ HAProxy's (e)", "—" if x is None else f"{x:.2f} × HAProxy ({v:,.0f} B)", None if x is None else x <= 1.0)
        x = r("f", "per_conn_b", "haproxy")
        v = med(results, "f", "tidegate", "per_conn_b")
        add("memory per open SSE stream ≤ HAProxy's (f)", "—" if x is None else f"{x:.2f} × HAProxy ({v:,.0f} B)", None if x is None else x <= 1.0)
    v = med(results, "e", "tidegate", "per_conn_b")
    add("aim: ≤ 1 KiB per idle connection (e)", "—" if v is None else f"{v:,.0f} B", None if v is None else v <= 1024)
    v = med(results, "f", "tidegate", "per_conn_b")
    add("aim: ≤ 4 KiB per SSE stream (f)", "—" if v is None else f"{v:,.0f} B", None if v is None else v <= 4096)
    n = sum(x.get("errors", 0) for (sc, p), rs in results.items() if p == "tidegate" for x in rs)
    runs = sum(len(rs) for (sc, p), rs in results.items() if p == "tidegate")
    add("zero non-2xx (tidegate, every scenario)", f"{n} in {runs} runs", n == 0 if runs else None)
    return ["| target | tidegate | met |", "|---|---|---|"] + rows


def cmd_out(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    osname = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    virt = cmd_out(["systemd-detect-virt"]) if shutil.which("systemd-detect-virt") else ""
    rev = cmd_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = cmd_out(["git", "-C", ROOT, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"])
    return {
        "cpu": f"{model}, {os.cpu_count()} CPUs" + (f" ({virt})" if virt and virt != "none" else ""),
        "mem": mem, "os": osname, "kernel": platform.release(),
        "tidegate": cmd_out([TIDEGATE, "version"]) + f" (git {rev}{', with uncommitted changes' if dirty else ''})",
        "nginx": cmd_out(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": cmd_out(["haproxy", "-v"]).splitlines()[0] if shutil.which("haproxy") else "?",
        "wrk": cmd_out(["wrk", "--version"]).splitlines()[0] if shutil.which("wrk") else "?",
        "h2load": cmd_out(["h2load", "--version"]),
    }


def report(results, proxies, scenarios, started, elapsed, tcp_state, fatal, info=None):
    info = info or machine_info()
    now = started.strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# tidegate benchmark — {now}", ""]
    out += ["Produced by `bench/run` (see `bench/README.md`). Medians over the rounds; ratios are "
            "tidegate's figure divided by the other proxy's (↑ higher is better, ↓ lower is better).", ""]
    out += [f"- Machine: {info['cpu']}; {info['mem']}; {info['os']}; Linux {info['kernel']}",
            f"- tidegate: {info['tidegate']}",
            f"- nginx: {info['nginx']}; HAProxy: {info['haproxy']}",
            f"- wrk: {info['wrk']}; h2load: {info['h2load']}",
            f"- Setup: each proxy pinned to CPU {PROXY_CPU} with one worker (nginx `worker_processes 1`, "
            f"HAProxy `nbthread 1`, tidegate `workers = 1`); load generators and backends pinned to CPU "
            f"{CLIENT_CPU}. Proxies interleaved ({', '.join(proxies)}) in each of {ROUNDS} rounds.",
            f"- Load runs: {DURATION} s measured after {WARMUP} s warm-up, {CONNS} connections; fixed rate "
            f"{RATE} req/s over {RATE_CONNS} connections; {IDLE_CONNS} idle connections; {SSE_STREAMS} SSE "
            f"streams; {BIG_BYTES} bytes each way.",
            f"- Whole run: {elapsed / 60:.1f} min.", ""]
    out += errors_section(results, fatal) + other_load_section(results)
    out += ["## Targets (issue 3)", ""] + targets(results, proxies) + [""]
    out += ["## Results", ""]
    for sc in scenarios:
        na = {}
        if sc == "h" and not tcp_state[0]:
            na["tidegate"] = "n/a (not built)"
        out += scenario_table(sc, results, proxies, na)
        if sc == "h" and not tcp_state[0]:
            out += [f"tidegate: n/a (not built) — `tidegate check` says: `{tcp_state[1].splitlines()[0] if tcp_state[1] else ''}`", ""]
    out += per_round_section(results, proxies, scenarios)
    return "\n".join(out) + "\n"


def errors_section(results, fatal):
    """The report's "Errors" section: every run with errors, with its log's tail."""
    out = []
    errs = []
    for (sc, p), rs in sorted(results.items()):
        for i, r in enumerate(rs):
            if r.get("errors"):
                errs.append((sc, p, i + 1, r))
    out.append("## Errors")
    out.append("")
    if fatal:
        out += ["**The run did not finish:**", "", "```", fatal.strip(), "```", ""]
    if not errs and not fatal:
        out += ["None: every request of every run got a 2xx answer.", ""]
    for sc, p, rnd, r in errs:
        out += [f"- **⚠ {p}, scenario {sc}, round {rnd}: {r['errors']} error(s)** — {r.get('error_detail', '')} "
                f"(config `{r.get('config')}`, log `{r.get('log')}`)"]
        if r.get("log_tail"):
            out += ["", "  ```", *["  " + x for x in r["log_tail"].splitlines()], "  ```"]
    if errs:
        out.append("")
    return out


def other_load_section(results):
    """The report's "Other load" section: how many runs other processes disturbed."""
    out = []
    disturbed = sum(1 for rs in results.values() for r in rs if r.get("disturbed"))
    total_runs = sum(len(rs) for rs in results.values())
    out += ["## Other load", ""]
    if disturbed:
        out += [f"**{disturbed} of {total_runs} runs were disturbed**: processes outside the benchmark used more "
                f"than {FOREIGN_LIMIT}% of a core during them (see the per-round tables). Medians use the "
                "undisturbed runs where a scenario has any; compare those figures with care.", ""]
    else:
        out += [f"No run was disturbed (other processes used ≤ {FOREIGN_LIMIT}% of a core in every measured "
                "window).", ""]
    return out


def per_round_section(results, proxies, scenarios):
    """The report's "Per-round figures": every run's figures, its errors, other load, note."""
    out = ["## Per-round figures", ""]
    for sc in scenarios:
        keys = [k for k, _, _, _ in FIGURES[KIND[sc]]]
        rows = []
        for rnd in range(ROUNDS):
            for p in proxies:
                rs = results.get((sc, p), [])
                if rnd < len(rs):
                    r = rs[rnd]
                    cells = [fmt(r.get(k), f) if isinstance(r.get(k), (int, float)) else "—"
                             for k, _, f, _ in FIGURES[KIND[sc]]]
                    other = fmt(r.get("other_pct"), "{:.0f}")
                    rows.append(f"| {rnd + 1} | {p} | " + " | ".join(cells)
                                + f" | {r.get('errors', 0)} | {other} | {r.get('note', '')} |")
        if rows:
            out += [f"**{sc}**", "", "| round | proxy | " + " | ".join(keys) + " | errors | other load % | note |",
                    "|---|---|" + "---:|" * len(keys) + "---:|---:|---|"] + rows + [""]
    return out


# ----------------------------------------------------------------------------------

def rerender(path, elapsed_min=None):
    """Writes the markdown report again from a run's JSON (bench/work/results-*.json),
    e.g. after a change to the report's layout. The run's settings (BENCH_*) must be the
    same as when it ran: the titles are built from them."""
    with open(path) as f:
        data = json.load(f)
    meta = data.get("meta")
    raw = data["results"] if meta else data
    results = {tuple(k.split("/", 1)): v for k, v in raw.items()}
    if meta:
        started = datetime.datetime.fromisoformat(meta["started"])
        elapsed, proxies, scenarios = meta["elapsed"], meta["proxies"], meta["scenarios"]
        tcp_state, fatal = tuple(meta["tcp_state"]), meta["fatal"]
        info = meta.get("info")
    else:
        m = re.search(r"(\d{4}-\d{2}-\d{2}-\d{4})", os.path.basename(path))
        started = datetime.datetime.strptime(m.group(1), "%Y-%m-%d-%H%M").replace(tzinfo=datetime.timezone.utc)
        elapsed = 60.0 * (elapsed_min or 0)
        proxies = [p for p in PROXIES if any(k[1] == p for k in results)]
        scenarios = [sc for sc in SCENARIOS if any(k[0] == sc for k in results)]
        tcp_state, fatal = (("h", "tidegate") in results, ""), None
        info = None
    text = report(results, proxies, scenarios, started, elapsed, tcp_state, fatal, info)
    out = os.path.join(RESULTS, started.strftime("%Y-%m-%d-%H%M") + ".md")
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(out, ROOT)}")
    return 0


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--report":
        return rerender(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else None)
    for s in SCENARIOS:
        if s not in SCENARIO_TITLES:
            sys.exit(f"bench: unknown scenario {s!r} (known: {', '.join(SCENARIO_TITLES)})")
    for p in PROXIES:
        if p not in PROXY_CLASSES:
            sys.exit(f"bench: unknown proxy {p!r} (known: {', '.join(PROXY_CLASSES)})")
    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (bench/run installs it)")
    for b in (TIDEGATE, LOADGEN):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench: {b} is not built (bench/run builds it)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs at least 2 CPUs (proxy on CPU 1, load on CPU 0)")
    # One run at a time per checkout: they would share the backend's socket and bench/work/.
    import fcntl
    os.makedirs(WORK, exist_ok=True)
    global LOCK
    LOCK = open(os.path.join(WORK, ".lock"), "a+")
    try:
        fcntl.flock(LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("bench: another bench run is in progress in this checkout (bench/work/.lock is held)")
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started in the background
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for d in (LOGS, *(os.path.join(WORK, p) for p in PROXY_CLASSES)):
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(LOGS, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info()   # now: the tree the binaries were built from
    t0 = time.monotonic()
    results = {}
    fatal = None
    tcp_state = (False, "")
    try:
        backends = Backends()
        backends.start()
        tcp_state = probe_tidegate(backends)
        proxies = {p: PROXY_CLASSES[p]() for p in PROXIES}
        for sc in SCENARIOS:
            log(f"\n== {SCENARIO_TITLES[sc]}")
            for rnd in range(1, ROUNDS + 1):
                for name, px in proxies.items():
                    if sc == "h" and name == "tidegate" and not tcp_state[0]:
                        log(f"   round {rnd} {name:9s} n/a (not built)")
                        continue
                    t = time.monotonic()
                    for attempt in range(RERUNS + 1):
                        try:
                            res = run_one(sc, px, rnd, backends)
                        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                            res = {"errors": 1, "error_detail": f"run failed: {e}".strip()[:2000]}
                            loud(f"{name}, scenario {sc}, round {rnd}: run failed:\n{e}")
                        if not res.get("disturbed") or attempt == RERUNS:
                            break
                        log(f"   round {rnd} {name:9s} disturbed by other load ({res['other_pct']:.0f}% of a core): "
                            f"running it again")
                    if attempt:
                        res["note"] = (res.get("note", "") + f" (attempt {attempt + 1}: the earlier one was "
                                       "disturbed by other load)").strip()
                    results.setdefault((sc, name), []).append(res)
                    brief = ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                      if isinstance(v, float) and k in ("rps", "rate", "cpu_us", "p99", "per_conn_b",
                                                                          "up_mibs", "down_mibs"))
                    other = f"  other load {res['other_pct']:.0f}%" if "other_pct" in res else ""
                    log(f"   round {rnd} {name:9s} {brief}  errors={res.get('errors', 0)}{other}"
                        f"{'  DISTURBED' if res.get('disturbed') else ''}  ({time.monotonic() - t:.0f}s)")
                    if res.get("errors"):
                        loud(f"{name}, scenario {sc}, round {rnd}: {res['errors']} ERROR(S) — this run is not a "
                             f"result. {res.get('error_detail', '')}")
    except KeyboardInterrupt:
        fatal = "interrupted (Ctrl-C)"
        loud(fatal)
    except SystemExit as e:
        fatal = str(e)
        loud(fatal)
    except Exception as e:  # report what we have, then fail
        fatal = f"{type(e).__name__}: {e}"
        loud(fatal)
    finally:
        stop_all()
    elapsed = time.monotonic() - t0
    text = report(results, PROXIES, SCENARIOS, started, elapsed, tcp_state, fatal, info)
    try:  # the raw figures, for a closer look (not committed: bench/work is ignored)
        with open(os.path.join(WORK, "results-" + started.strftime("%Y-%m-%d-%H%M") + ".json"), "w") as f:
            json.dump({"meta": {"started": started.isoformat(), "elapsed": elapsed, "proxies": PROXIES,
                                "scenarios": SCENARIOS, "tcp_state": list(tcp_state), "fatal": fatal,
                                "info": info},
                       "results": {f"{sc}/{p}": rs for (sc, p), rs in results.items()}},
                      f, indent=1, default=str)
    except OSError:
        pass
    name = started.strftime("%Y-%m-%d-%H%M") + ".md"
    # An unfinished run is not a result: its partial table goes to bench/work/.
    path = os.path.join(RESULTS, name) if not fatal else os.path.join(WORK, "incomplete-" + name)
    with open(path, "w") as f:
        f.write(text)
    print("\n" + text)
    log(f"results written to {os.path.relpath(path, ROOT)} ({elapsed / 60:.1f} min)")
    leftovers = [c.name for c in STARTED]
    if leftovers:
        loud(f"processes still registered at exit: {leftovers}")
    any_err = any(r.get("errors") for rs in results.values() for r in rs)
    if fatal:
        return 2
    if any_err:
        loud("some runs had errors (non-2xx, socket errors or failures): see the Errors section")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
