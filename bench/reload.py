#!/usr/bin/env python3
"""Reload under load: how long a config reload takes with 10,000 idle keep-alive client
connections open, and how many of them survive it; tidegate, nginx and HAProxy in the
same run. Run by `bench/run` after the main harness (BENCH_RELOAD=0 skips it), or alone
once `bench/run` has built the binaries:

    TIDEGATE_BIN=target/release/tidegate LOADGEN_BIN=target/release/tidegate-loadgen \
        python3 bench/reload.py

For each proxy: N idle connections are opened (`loadgen hold`, one request each), then
R reloads each add a route; a reload's time is from the reload command to the first
answer of the new route (polled every 1 ms), which is what an operator waits for. For
tidegate the `ctl reload` command's own wall time is shown too (it returns once the new
config is in effect). After the reloads, `loadgen hold`'s `check` says how many of the
N connections are still open: a reload that closes idle keep-alive connections (nginx's
old workers do, HAProxy's old process does) makes every client reconnect.

Everything listens on loopback; every loop is bounded. Writes bench/results/DATE-reload.md.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

N = int(os.environ.get("BENCH_RELOAD_CONNS", "10000"))
# SSE streams open through tidegate during its upgrade: they stay in the old process
# until they end or shutdown_grace (GRACE_S here), which is what it holds while draining.
STREAMS = int(os.environ.get("BENCH_UPGRADE_STREAMS", "1000"))
GRACE_S = 5
RELOADS = int(os.environ.get("BENCH_RELOAD_ROUNDS", "10"))
TIDEGATE = os.environ.get("TIDEGATE_BIN", "target/release/tidegate")
LOADGEN = os.environ.get("LOADGEN_BIN", "target/release/tidegate-loadgen")
PROXIES = [p for p in os.environ.get("BENCH_PROXIES", "tidegate,nginx,haproxy").split(",") if p]
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=1.0):
    """One GET on a new connection: (status, body) or (None, error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")
    except (OSError, IndexError, ValueError) as e:
        return None, str(e)


def wait_answer(port, path, body, deadline_s):
    """Seconds until GET path answers 200 with body, polling every 1 ms; None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        status, text = get(port, path)
        if status == 200 and text.strip() == body:
            return time.monotonic() - start
        time.sleep(0.001)
    return None


def running(pid):
    """Running (a zombie, exited and not yet reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Hold:
    """loadgen hold: N idle keep-alive connections, one request each."""

    def __init__(self, port, n, path="/", mode="full"):
        self.p = subprocess.Popen(
            [LOADGEN, "hold", "--addr", f"127.0.0.1:{port}", "--path", path, "--n", str(n),
             "--mode", mode, "--timeout", "300"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("loadgen hold exited before READY")
            if line.startswith("READY"):
                self.ready = dict(kv.split("=") for kv in line.split()[1:])
                return
        raise RuntimeError("loadgen hold: no READY within 180 s")

    def alive(self):
        self.p.stdin.write("check\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        return dict(kv.split("=") for kv in line.split()[1:])

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


# --- the proxies: start, reload to generation k, pids, stop ---------------------------

class Tidegate:
    name = "tidegate"

    def __init__(self, port, work):
        self.port, self.work = port, work
        self.sse_port = free_port()
        self.sse = subprocess.Popen([LOADGEN, "sse-server", "--listen", f"127.0.0.1:{self.sse_port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.config = os.path.join(work, "tidegate.toml")
        self.admin = os.path.join(work, "admin.sock")
        self.write(0)
        self.log = open(os.path.join(work, "tidegate.log"), "w")
        self.p = subprocess.Popen([TIDEGATE, "run", "--config", self.config],
                                  stdout=self.log, stderr=self.log)

    def write(self, k):
        routes = "".join(
            f'[[listeners.web.routes]]\npath = "/new{i}"\nrespond = {{ status = 200, body = "gen{i}\\n" }}\n'
            for i in range(k + 1))
        with open(self.config, "w") as f:
            f.write(f"""[server]
workers = 1
shutdown_grace = "{GRACE_S}s"
log = {{ level = "warn" }}
[admin]
listen = "unix:{self.admin}"
[listeners.web]
listen = ["127.0.0.1:{self.port}"]
max_connections = {N + STREAMS + 1000}
idle_timeout = "600s"
{routes}[[listeners.web.routes]]
path = "/sse"
upstream = "sse"
[[listeners.web.routes]]
respond = {{ status = 200, body = "ok\\n" }}
[upstreams.sse]
servers = ["127.0.0.1:{self.sse_port}"]
""")

    def reload(self, k):
        self.write(k)
        t = time.monotonic()
        r = subprocess.run([TIDEGATE, "ctl", "--admin", f"unix:{self.admin}", "reload"],
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"ctl reload failed: {r.stderr}")
        return took

    def pids(self):
        return [self.pid]

    @property
    def pid(self):
        return getattr(self, "current", self.p.pid)

    def upgrade(self):
        """`ctl upgrade`: (old pid, new pid, seconds the command took)."""
        t = time.monotonic()
        r = subprocess.run([TIDEGATE, "ctl", "--admin", f"unix:{self.admin}", "--json", "upgrade"],
                           capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"ctl upgrade failed: {r.stderr}")
        v = json.loads(r.stdout)
        self.current = v["new_pid"]
        return v["old_pid"], v["new_pid"], took

    def stop(self):
        self.sse.kill()
        for pid in {self.p.pid, self.pid}:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running(self.pid):
            time.sleep(0.05)


class Nginx:
    name = "nginx"

    def __init__(self, port, work):
        self.port, self.work = port, work
        self.config = os.path.join(work, "nginx.conf")
        self.write(0)
        subprocess.run(["nginx", "-c", self.config, "-p", work], check=True, timeout=30)

    def write(self, k):
        routes = "".join(f"        location = /new{i} {{ return 200 \"gen{i}\\n\"; }}\n" for i in range(k + 1))
        with open(self.config, "w") as f:
            f.write(f"""worker_processes 1;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
worker_rlimit_nofile {N + 2000};
events {{ worker_connections {N + 1000}; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_body_temp_path {self.work}/tmp;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
{routes}        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")

    def reload(self, k):
        self.write(k)
        t = time.monotonic()
        subprocess.run(["nginx", "-c", self.config, "-p", self.work, "-s", "reload"], check=True, timeout=30)
        return time.monotonic() - t

    def pids(self):
        try:
            with open(f"{self.work}/nginx.pid") as f:
                master = int(f.read().strip())
        except OSError:
            return []
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        return [master] + [int(p) for p in out]

    def stop(self):
        subprocess.run(["nginx", "-c", self.config, "-p", self.work, "-s", "stop"], timeout=30)


class Haproxy:
    name = "haproxy"

    def __init__(self, port, work):
        self.port, self.work = port, work
        self.config = os.path.join(work, "haproxy.cfg")
        self.pidfile = os.path.join(work, "haproxy.pid")
        self.write(0)
        subprocess.run(["haproxy", "-f", self.config, "-p", self.pidfile, "-D"], check=True, timeout=30)

    def write(self, k):
        routes = "".join(
            f"    http-request return status 200 content-type text/plain string \"gen{i}\" if {{ path /new{i} }}\n"
            for i in range(k + 1))
        with open(self.config, "w") as f:
            f.write(f"""global
    maxconn {N + 500}
    # HAProxy reserves two descriptors per connection (client and server); these are
    # client connections only (the answers are its own), so a lower limit is enough.
    no strict-limits
    nbthread 1
defaults
    mode http
    timeout client 600s
    timeout http-keep-alive 600s
    timeout connect 5s
    timeout server 30s
frontend web
    bind 127.0.0.1:{self.port}
{routes}    http-request return status 200 content-type text/plain string "ok"
""")

    def reload(self, k):
        self.write(k)
        with open(self.pidfile) as f:
            old = f.read().split()
        t = time.monotonic()
        subprocess.run(["haproxy", "-f", self.config, "-p", self.pidfile, "-D", "-sf"] + old,
                       check=True, timeout=30)
        return time.monotonic() - t

    def pids(self):
        out = subprocess.run(["pgrep", "-f", f"haproxy -f {self.config}"], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


def measure_upgrade(px, hold):
    """tidegate only: `ctl upgrade` with the N idle connections and STREAMS open SSE
    streams. The old process's RSS is sampled every 10 ms while it drains (the idle
    connections move to the new process; the streams, exchanges in flight, stay until
    shutdown_grace), until it exits."""
    streams = Hold(px.port, STREAMS, path="/sse", mode="sse") if STREAMS else None
    rss_before = rss_kib([px.pid])
    old, new, took = px.upgrade()
    start = time.monotonic()
    peak, samples = 0, []
    while running(old) and time.monotonic() - start < 60:
        r = rss_kib([old])
        peak = max(peak, r)
        samples.append(r)
        time.sleep(0.01)
    gone_after = time.monotonic() - start
    time.sleep(0.5)
    alive = hold.alive()
    if streams:
        streams.stop()
    return {
        "streams": STREAMS,
        "command_ms": took * 1000, "old_gone_ms": gone_after * 1000,
        "rss_before_kib": rss_before, "old_peak_kib": peak,
        "old_median_kib": sorted(samples)[len(samples) // 2] if samples else 0,
        "new_rss_kib": rss_kib([new]), "open_after": int(alive.get("open", 0)),
    }


def run(cls):
    work = tempfile.mkdtemp(prefix=f"reload-{cls.name}-")
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    port = free_port()
    px = cls(port, work)
    hold = None
    try:
        if wait_answer(port, "/new0", "gen0", 15) is None:
            raise RuntimeError(f"{cls.name} did not answer on {port}")
        hold = Hold(port, N)
        opened = int(hold.ready.get("ok", 0))
        rss_before = rss_kib(px.pids())
        command, visible = [], []
        for k in range(1, RELOADS + 1):
            command.append(px.reload(k))
            seen = wait_answer(port, f"/new{k}", f"gen{k}", 30)
            if seen is None:
                raise RuntimeError(f"{cls.name}: route /new{k} never answered")
            visible.append(command[-1] + seen)
        # Let old workers or processes finish what they close.
        time.sleep(2)
        alive = hold.alive()
        rss_after = rss_kib(px.pids())
        upgrade = measure_upgrade(px, hold) if isinstance(px, Tidegate) else None
        return {
            "upgrade": upgrade,
            "proxy": cls.name, "opened": opened, "open_after": int(alive.get("open", 0)),
            "command_ms": sorted(command)[len(command) // 2] * 1000,
            "visible_ms": sorted(visible)[len(visible) // 2] * 1000,
            "visible_max_ms": max(visible) * 1000,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        }
    finally:
        if hold:
            hold.stop()
        px.stop()
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


def main():
    results = []
    for name in PROXIES:
        cls = {"tidegate": Tidegate, "nginx": Nginx, "haproxy": Haproxy}[name]
        if name != "tidegate" and shutil.which(name) is None:
            print(f"reload.py: {name} is not installed (bench/run installs it)", file=sys.stderr)
            sys.exit(1)
        print(f"reload.py: {name}: {N} idle connections, {RELOADS} reloads", flush=True)
        try:
            results.append(run(cls))
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"reload.py: {name} failed: {e}", file=sys.stderr)
            sys.exit(1)
    tg = next((r for r in results if r["proxy"] == "tidegate"), None)
    lines = [
        f"# Reload with {N:,} idle keep-alive connections ({RELOADS} reloads, medians)", "",
        "| proxy | reload command, ms | until the new route answers, ms (max) | idle connections still open after | RSS before → after, MiB | visible / tidegate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['visible_ms'] / tg['visible_ms']:.2f}" if tg and tg["visible_ms"] > 0 else "-"
        lines.append(
            f"| {r['proxy']} | {r['command_ms']:.1f} | {r['visible_ms']:.1f} ({r['visible_max_ms']:.1f}) | "
            f"{r['open_after']:,} of {r['opened']:,} | {r['rss_before_kib'] / 1024:.1f} → {r['rss_after_kib'] / 1024:.1f} | {ratio} |")
    if tg and tg.get("upgrade"):
        u = tg["upgrade"]
        lines += [
            "", f"## Binary upgrade with {N:,} idle keep-alive connections and {u['streams']:,} open SSE streams (tidegate, shutdown_grace {GRACE_S} s)", "",
            "| `ctl upgrade`, ms | old process gone after, ms | old process RSS while draining: peak / median, MiB | RSS before → new process, MiB | idle connections still open after |",
            "|---:|---:|---:|---:|---:|",
            f"| {u['command_ms']:.0f} | {u['old_gone_ms']:.0f} | {u['old_peak_kib'] / 1024:.1f} / {u['old_median_kib'] / 1024:.1f} | "
            f"{u['rss_before_kib'] / 1024:.1f} → {u['new_rss_kib'] / 1024:.1f} | {u['open_after']:,} of {tg['opened']:,} |",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", time.strftime("%Y-%m-%d-%H%M-reload.md"))
    with open(out, "w") as f:
        f.write(text + "\n```\n" + json.dumps(results, indent=1) + "\n```\n")
    print(f"reload.py: wrote {out}")


if __name__ == "__main__":
    main()
