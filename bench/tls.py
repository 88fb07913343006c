#!/usr/bin/env python3
"""TLS benchmarks: tidegate, nginx and HAProxy terminating TLS 1.3 with the same
certificate, in the same run, on this machine; ratios against nginx and HAProxy. Run by
`bench/run` after the main harness (BENCH_TLS=0 skips it), or alone once `bench/run`
has built the binaries:

    TIDEGATE_BIN=target/release/tidegate LOADGEN_BIN=target/release/tidegate-loadgen \\
        python3 bench/tls.py

Scenarios (BENCH_TLS_SCENARIOS, see bench/README.md "TLS"):
  hs      full TLS handshakes: a new connection per request (`loadgen handshakes`),
          ECDSA P-256 certificate: handshakes/s, proxy CPU per handshake
  hs-rsa  the same with an RSA 2048 certificate
  ka      HTTP/1.1 keep-alive over TLS, saturated (wrk, as scenario a)
  rate    HTTP/1.1 keep-alive over TLS at a fixed rate (`loadgen rate`, as scenario d)
  h2      HTTP/2 over TLS (h2load, ALPN h2, several streams per connection); a proxy
          whose ALPN does not pick h2 is reported "h2 not negotiated", not measured
  idle    N idle TLS keep-alive connections (`loadgen hold`): RSS per connection

The machinery (processes, CPU and RSS readings, other-load detection, backends, the
proxies' base configs, report tables) is bench/harness.py's: this file adds the TLS
side of each proxy's config and the TLS scenarios. Standard library only. Writes
bench/results/DATE-tls.md.
"""

import datetime
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True   # no bench/__pycache__ from importing the harness
import harness as H  # noqa: E402  (the path above first)

ROUNDS = H.env_int("BENCH_TLS_ROUNDS", 3)
DURATION = H.env_int("BENCH_TLS_DURATION", 5)     # seconds per measured load run
WARMUP = H.env_int("BENCH_TLS_WARMUP", 1)
HS_CONNS = H.env_int("BENCH_TLS_HS_CONNS", 32)   # concurrent handshaking clients
KA_CONNS = H.CONNS                                # as scenario (a)
RATE = H.env_int("BENCH_TLS_RATE", H.RATE)        # as scenario (d)
RATE_CONNS = H.env_int("BENCH_TLS_RATE_CONNS", H.RATE_CONNS)
H2_CONNS = H.env_int("BENCH_TLS_H2_CONNS", 16)
H2_STREAMS = H.env_int("BENCH_TLS_H2_STREAMS", 10)
# 5,000: the proxy holds one descriptor per connection and the client (loadgen hold)
# one too, each under the 20,000 open-files hard limit, with room for the backends.
IDLE_CONNS = H.env_int("BENCH_TLS_IDLE_CONNS", 5000)
SCENARIOS = [s for s in os.environ.get("BENCH_TLS_SCENARIOS", "hs,hs-rsa,ka,rate,h2,idle").split(",") if s]
SNI = "bench.local"
TLS_DIR = os.path.join(H.WORK, "tls")

# The harness's functions read these module globals.
H.ROUNDS, H.DURATION, H.WARMUP = ROUNDS, DURATION, WARMUP

TITLES = {
    "hs": f"(hs) full TLS 1.3 handshakes, ECDSA P-256: a new connection per request, {HS_CONNS} clients "
          "(loadgen handshakes)",
    "hs-rsa": f"(hs-rsa) full TLS 1.3 handshakes, RSA 2048: a new connection per request, {HS_CONNS} clients "
              "(loadgen handshakes)",
    "ka": f"(ka) HTTP/1.1 keep-alive over TLS 1.3, small body, {KA_CONNS} connections (wrk)",
    "rate": f"(rate) HTTP/1.1 keep-alive over TLS 1.3, fixed rate {RATE} req/s over {RATE_CONNS} connections "
            "(loadgen rate: open loop, evenly spaced)",
    "h2": f"(h2) HTTP/2 over TLS 1.3 (ALPN h2), {H2_CONNS} connections × {H2_STREAMS} streams (h2load)",
    "idle": f"(idle) {IDLE_CONNS} idle TLS 1.3 keep-alive client connections: memory per connection",
}
H.SCENARIO_TITLES.update(TITLES)
H.FIGURES["handshakes"] = [
    ("hs", "handshakes/s (2xx, new connection each)", "{:,.0f}", "up"),
    ("cpu_us", "CPU µs per handshake (proxy, user+sys; with its one request)", "{:.1f}", "down"),
    ("p50", "p50 connect to response (ms)", "{:.2f}", "down"),
    ("p99", "p99 connect to response (ms)", "{:.2f}", "down"),
    ("rss_mib", "RSS after the run (MiB)", "{:.1f}", "down"),
    ("proxy_cpu_pct", "proxy CPU use (% of one core)", "{:.0f}", None),
    ("cpu0_pct", "CPU 0 busy (load generator + backend) %", "{:.0f}", None),
]
H.FIGURES["h2"] = [
    ("rps", "2xx requests/s", "{:,.0f}", "up"),
    ("cpu_us", "CPU µs per request (proxy, user+sys)", "{:.1f}", "down"),
    ("mean_ms", "mean request time (ms, h2load)", "{:.2f}", "down"),
    ("rss_mib", "RSS after the run (MiB)", "{:.1f}", "down"),
    ("proxy_cpu_pct", "proxy CPU use (% of one core)", "{:.0f}", None),
    ("cpu0_pct", "CPU 0 busy (load generator + backend) %", "{:.0f}", None),
]
H.RANGE_KEYS.add("hs")
H.METERED_KINDS |= {"handshakes", "h2"}
H.KIND.update({"hs": "handshakes", "hs-rsa": "handshakes", "ka": "wrk", "rate": "rate", "h2": "h2",
               "idle": "hold"})
log = H.log


# ----------------------------------------------------------------------------------
# certificates: made for the run, the same files for the three proxies

def make_certs():
    """Self-signed certificates for bench.local: {"ecdsa": (cert, key, both), "rsa": …};
    `both` is the certificate and key in one file (HAProxy's `crt`)."""
    os.makedirs(TLS_DIR, exist_ok=True)
    out = {}
    for kind, newkey in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        cert, key, both = (os.path.join(TLS_DIR, f"{kind}.{x}") for x in ("pem", "key", "both.pem"))
        r = subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", cert,
                            "-days", "30", "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI}"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl req ({kind}) failed: {r.stderr.strip()}")
        with open(both, "w") as f:
            f.write(open(cert).read() + open(key).read())
        out[kind] = (cert, key, both)
    return out


# ----------------------------------------------------------------------------------
# the proxies: the harness's configs with TLS on the listener

TG_H2_ALPN = False   # whether this tidegate build accepts alpn = ["h2", "http/1.1"]


def patch(path, old, new):
    with open(path) as f:
        text = f.read()
    if old not in text:
        raise RuntimeError(f"{path}: expected {old!r} in the generated config")
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))
    return path


class TlsTidegate(H.Tidegate):
    cert = None

    def config(self, tag, routes, streaming, l4):
        path = super().config(tag, routes, streaming, l4)
        cert, key, _ = self.cert
        alpn = ', alpn = ["h2", "http/1.1"]' if TG_H2_ALPN else ""
        return patch(path, f'listen = ["127.0.0.1:{self.port}"]\n',
                     f'listen = ["127.0.0.1:{self.port}"]\n'
                     f'tls = {{ certificates = [ {{ cert = "{cert}", key = "{key}" }} ], min_version = "1.3"{alpn} }}\n')


class TlsNginx(H.Nginx):
    cert = None

    def config(self, tag, routes, streaming, l4):
        path = super().config(tag, routes, streaming, l4)
        cert, key, _ = self.cert
        return patch(path, f"listen 127.0.0.1:{self.port} backlog=4096;",
                     f"listen 127.0.0.1:{self.port} ssl http2 backlog=4096;\n"
                     f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
                     "        ssl_protocols TLSv1.3;")


class TlsHaproxy(H.Haproxy):
    cert = None

    def config(self, tag, routes, streaming, l4):
        path = super().config(tag, routes, streaming, l4)
        _, _, both = self.cert
        patch(path, f"    bind 127.0.0.1:{self.port}\n",
              f"    bind 127.0.0.1:{self.port} ssl crt {both} alpn h2,http/1.1 ssl-min-ver TLSv1.3\n")
        return patch(path, "X-Forwarded-Proto http\n", "X-Forwarded-Proto https\n")


PROXY_CLASSES = {"tidegate": TlsTidegate, "nginx": TlsNginx, "haproxy": TlsHaproxy}


def probe_tidegate(certs):
    """Whether this tidegate build accepts h2 in its ALPN list (the h2 work of issue 13)."""
    cert, key, _ = certs["ecdsa"]
    ok, msg = H.tidegate_accepts(
        "tls-h2", f'[listeners.web]\nlisten = ["127.0.0.1:1"]\n'
                  f'tls = {{ certificates = [ {{ cert = "{cert}", key = "{key}" }} ], alpn = ["h2", "http/1.1"] }}\n'
                  f'[[listeners.web.routes]]\nrespond = {{ status = 200 }}\n')
    log(f"tidegate build: alpn with h2 {'accepted' if ok else 'refused (' + msg.splitlines()[-1] + ')'}")
    return ok


def client_context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE   # a certificate made for this run, on loopback
    ctx.set_alpn_protocols(alpn)
    return ctx


def wait_ready_tls(child, port, deadline_s=15.0):
    deadline = time.monotonic() + deadline_s
    last = None
    ctx = client_context(["http/1.1"])
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start-up (code {child.p.returncode}):\n{child.log_tail()}")
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=2.0, context=ctx)
        try:
            c.request("GET", "/", headers={"Host": SNI})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
            last = f"status {r.status}"
        except (OSError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        finally:
            c.close()
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready over TLS after {deadline_s:.0f}s (last: {last}):\n{child.log_tail()}")


def negotiated(port, alpn):
    """What a handshake offering `alpn` gets: (ALPN protocol or None, version, cipher)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(alpn).wrap_socket(raw, server_hostname=SNI) as s:
            return s.selected_alpn_protocol(), s.version(), s.cipher()[0]


# ----------------------------------------------------------------------------------
# scenarios

def sc_handshakes(px, child):
    args = ["handshakes", "--addr", f"127.0.0.1:{px.port}", "--tls", SNI, "--conns", str(HS_CONNS),
            "--duration", str(DURATION), "--warmup", str(WARMUP)]
    with H.Meter(child) as m:
        r = H.loadgen_json(args, timeout=DURATION + WARMUP + 90)
    pids = H.tree_pids(child.pid)
    errors = r["non2xx"] + r["errors"]
    return m.annotate({
        "hs": r["rate"], "errors": errors,
        "error_detail": f"non-2xx {r['non2xx']}, failed connections {r['errors']} (see the loadgen output)"
                        if errors else "",
        # The CPU of the whole run (warm-up included) over every connection it completed.
        "cpu_us": 1e6 * m.cpu_s / max(1, r["ok_all"]),
        "p50": r["p50_us"] / 1000.0, "p99": r["p99_us"] / 1000.0,
        "rss_mib": H.status_kib(pids, "VmRSS") / 1024.0, "proxy_cpu_pct": m.proxy_cpu_pct,
        "cpu0_pct": m.cpu0_pct,
        "negotiated": f"{r['version']}, {r['cipher']}, {r['group']}, ALPN {r['alpn'] or 'none'} (loadgen, rustls)",
    })


def run_h2load(port, duration):
    argv = ["taskset", "-c", H.CLIENT_CPU, "h2load", "-t1", f"-c{H2_CONNS}", f"-m{H2_STREAMS}", f"-D{duration}",
            # AES-256-GCM, as every other TLS scenario negotiates (h2load prefers AES-128,
            # which nginx would take and HAProxy, preferring its own order, would not).
            "--npn-list=h2", "--tls13-ciphers=TLS_AES_256_GCM_SHA384", f"https://127.0.0.1:{port}/"]
    out, m, s = H.h2load_run(argv, duration + 60)
    proto = re.search(r"Application protocol: (\S+)", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    done, ok2xx = int(m.group(3)), int(s.group(1))
    return {"raw": out, "done": done, "ok": ok2xx, "failed": int(m.group(5)) + int(m.group(6)) + int(m.group(7)),
            "sockerr_text": m.group(0), "proto": proto.group(1) if proto else "",
            "mean_ms": H.parse_ms(mean.group(1)) if mean else float("nan"),
            "tls": " ".join(x.group(1) for x in (re.search(r"TLS Protocol: (\S+)", out),
                                                 re.search(r"Cipher: (\S+)", out),
                                                 re.search(r"Server Temp Key: (\S+)", out)) if x)}


def sc_h2(px, child):
    proto, version, cipher = negotiated(px.port, ["h2", "http/1.1"])
    if proto != "h2":
        res = {"na": f"h2 not negotiated (ALPN: {proto or 'none'})", "errors": 0,
               "note": f"ALPN offered h2,http/1.1; the proxy picked {proto or 'none'}: not measured"}
        if px.name != "tidegate":   # their configs offer h2: not picking it is a broken run
            res["errors"] = 1
            res["error_detail"] = res["note"]
        return res
    # Only now: a proxy that does not negotiate h2 is not measured, so no need to wait.
    H.wait_quiet(f"{px.name} h2")
    run_h2load(px.port, max(1, WARMUP))
    with H.Meter(child) as m:
        h = run_h2load(px.port, DURATION)
    pids = H.tree_pids(child.pid)
    errors = (h["done"] - h["ok"]) + h["failed"] + (0 if h["proto"] == "h2" else 1)
    return m.annotate({
        "rps": h["ok"] / DURATION, "errors": errors,
        "error_detail": "" if not errors else f"{h['sockerr_text']}; application protocol {h['proto']!r}",
        "cpu_us": 1e6 * m.cpu_s / max(1, h["done"]), "mean_ms": h["mean_ms"],
        "rss_mib": H.status_kib(pids, "VmRSS") / 1024.0, "proxy_cpu_pct": m.proxy_cpu_pct,
        "cpu0_pct": m.cpu0_pct, "negotiated": f"{h['tls']}, ALPN {h['proto']} (h2load, OpenSSL)",
    })


def run_one(sc, px, rnd, backends, certs):
    tag = f"tls-{sc}-r{rnd}"
    if sc != "h2":
        H.wait_quiet(f"{px.name} {tag}")
    px.cert = certs["rsa" if sc == "hs-rsa" else "ecdsa"]
    child = px.start(tag, [("/", ("tcp", f"127.0.0.1:{backends.port}"))])
    try:
        wait_ready_tls(child, px.port)
        if sc in ("hs", "hs-rsa"):
            res = sc_handshakes(px, child)
        elif sc == "ka":
            res = H.sc_wrk(px, child, "/", scheme="https")
        elif sc == "rate":
            res = H.sc_rate(px, child, "/", rate=RATE, conns=RATE_CONNS, tool="loadgen", tls=SNI)
        elif sc == "h2":
            res = sc_h2(px, child)
        elif sc == "idle":
            res = H.sc_hold(px, child, "/", IDLE_CONNS, "full", f"{px.name}-{tag}", tls=SNI)
        else:
            raise ValueError(sc)
        if sc not in ("hs", "hs-rsa", "h2"):
            proto, version, cipher = negotiated(px.port, ["http/1.1"])
            res["negotiated"] = f"{version}, {cipher}, ALPN {proto} (Python ssl, OpenSSL)"
        if not child.alive():
            res["errors"] = res.get("errors", 0) + 1
            res["error_detail"] = (res.get("error_detail", "") + f"; {px.name} exited during the run").strip("; ")
    finally:
        child.stop(grace=10)
    if child.killed:
        res["note"] = (res.get("note", "") + " needed SIGKILL to stop").strip()
    res["log"] = os.path.relpath(child.log_path, H.ROOT)
    res["config"] = os.path.relpath(child.argv[-1], H.ROOT)
    if res.get("errors"):
        res["log_tail"] = child.log_tail(15)
    backends.check_alive()
    return res


# ----------------------------------------------------------------------------------
# report

def not_measured(results, sc, proxies):
    """Proxies whose every run of `sc` was not measured (h2 not negotiated): their text."""
    na = {}
    for p in proxies:
        rs = results.get((sc, p), [])
        if rs and all(r.get("na") for r in rs):
            na[p] = rs[0]["na"]
    return na


def report(results, proxies, scenarios, started, elapsed, fatal, info):
    now = started.strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# tidegate TLS benchmark — {now}", "",
           "Produced by `bench/run` (`bench/tls.py`; see `bench/README.md`, \"TLS\"). Medians over the rounds; "
           "ratios are tidegate's figure divided by the other proxy's (↑ higher is better, ↓ lower is better).", "",
           f"- Machine: {info['cpu']}; {info['mem']}; {info['os']}; Linux {info['kernel']}",
           f"- tidegate: {info['tidegate']}",
           f"- nginx: {info['nginx']}; HAProxy: {info['haproxy']}",
           f"- wrk: {info['wrk']}; h2load: {info['h2load']}; loadgen's TLS client: rustls (ring), no resumption",
           f"- Setup: each proxy pinned to CPU {H.PROXY_CPU} with one worker, load generators and the backend on "
           f"CPU {H.CLIENT_CPU}, as in the main benchmark. TLS 1.3 only (`ssl_protocols TLSv1.3`, "
           "`ssl-min-ver TLSv1.3`, `min_version = \"1.3\"`), the same self-signed certificate files for all three "
           "(ECDSA P-256; RSA 2048 in hs-rsa); ALPN offered h2 and http/1.1 by nginx and HAProxy, "
           f"{'h2 and http/1.1' if TG_H2_ALPN else 'http/1.1 only (this build refuses h2)'} by tidegate. "
           f"Proxies interleaved ({', '.join(proxies)}) in each of {ROUNDS} rounds.",
           f"- Load runs: {DURATION} s measured after {WARMUP} s warm-up; {HS_CONNS} handshaking clients; "
           f"{KA_CONNS} keep-alive connections; fixed rate {RATE} req/s over {RATE_CONNS} connections; h2: "
           f"{H2_CONNS} connections × {H2_STREAMS} streams; {IDLE_CONNS} idle connections.",
           f"- TLS part: {elapsed / 60:.1f} min.", ""]
    out += H.errors_section(results, fatal) + H.other_load_section(results)
    out += ["## Results", ""]
    for sc in scenarios:
        na = not_measured(results, sc, proxies)
        out += H.scenario_table(sc, results, proxies, na)
        for p, text in na.items():
            out += [f"{p}: {text} — not measured.", ""]
    out += ["## What was negotiated", "", "| scenario | " + " | ".join(proxies) + " |",
            "|---|" + "---|" * len(proxies)]
    for sc in scenarios:
        cells = []
        for p in proxies:
            rs = results.get((sc, p), [])
            cells.append(next((r["negotiated"] for r in rs if r.get("negotiated")),
                              next((r["na"] for r in rs if r.get("na")), "—")))
        out.append(f"| {sc} | " + " | ".join(cells) + " |")
    out.append("")
    out += H.per_round_section(results, proxies, scenarios)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------

def main():
    global TG_H2_ALPN
    for s in SCENARIOS:
        if s not in TITLES:
            sys.exit(f"bench/tls.py: unknown scenario {s!r} (known: {', '.join(TITLES)})")
    for p in H.PROXIES:
        if p not in PROXY_CLASSES:
            sys.exit(f"bench/tls.py: unknown proxy {p!r} (known: {', '.join(PROXY_CLASSES)})")
    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset", "openssl"):
        if not H.shutil.which(tool):
            sys.exit(f"bench/tls.py: {tool} not found (bench/run installs it)")
    for b in (H.TIDEGATE, H.LOADGEN):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench/tls.py: {b} is not built (bench/run builds it)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench/tls.py: needs at least 2 CPUs (proxy on CPU 1, load on CPU 0)")
    import fcntl
    os.makedirs(H.WORK, exist_ok=True)
    lock = open(os.path.join(H.WORK, ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("bench/tls.py: another bench run is in progress in this checkout (bench/work/.lock is held)")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, H.on_signal)
    signal.signal(signal.SIGHUP, H.on_signal)
    os.makedirs(H.LOGS, exist_ok=True)
    os.makedirs(H.RESULTS, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    info = H.machine_info()
    t0 = time.monotonic()
    results, fatal = {}, None
    try:
        certs = make_certs()
        TG_H2_ALPN = probe_tidegate(certs)
        backends = H.Backends(big=False)
        backends.start()
        proxies = {p: PROXY_CLASSES[p]() for p in H.PROXIES}
        for sc in SCENARIOS:
            log(f"\n== {TITLES[sc]}")
            for rnd in range(1, ROUNDS + 1):
                for name, px in proxies.items():
                    t = time.monotonic()
                    for attempt in range(H.RERUNS + 1):
                        try:
                            res = run_one(sc, px, rnd, backends, certs)
                        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                            res = {"errors": 1, "error_detail": f"run failed: {e}".strip()[:2000]}
                            H.loud(f"{name}, scenario {sc}, round {rnd}: run failed:\n{e}")
                        if not res.get("disturbed") or attempt == H.RERUNS:
                            break
                        log(f"   round {rnd} {name:9s} disturbed by other load ({res['other_pct']:.0f}% of a "
                            "core): running it again")
                    if attempt:
                        res["note"] = (res.get("note", "") + f" (attempt {attempt + 1}: the earlier one was "
                                       "disturbed by other load)").strip()
                    results.setdefault((sc, name), []).append(res)
                    brief = res.get("na") or ", ".join(
                        f"{k}={v:.4g}" for k, v in res.items()
                        if isinstance(v, float) and k in ("hs", "rps", "rate", "cpu_us", "p99", "per_conn_b"))
                    log(f"   round {rnd} {name:9s} {brief}  errors={res.get('errors', 0)}"
                        f"{'  DISTURBED' if res.get('disturbed') else ''}  ({time.monotonic() - t:.0f}s)")
                    if res.get("errors"):
                        H.loud(f"{name}, scenario {sc}, round {rnd}: {res['errors']} ERROR(S) — this run is not "
                               f"a result. {res.get('error_detail', '')}")
    except KeyboardInterrupt:
        fatal = "interrupted (Ctrl-C)"
        H.loud(fatal)
    except SystemExit as e:
        fatal = str(e)
        H.loud(fatal)
    except Exception as e:  # report what we have, then fail
        fatal = f"{type(e).__name__}: {e}"
        H.loud(fatal)
    finally:
        H.stop_all()
    elapsed = time.monotonic() - t0
    text = report(results, H.PROXIES, SCENARIOS, started, elapsed, fatal, info)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    try:  # the raw figures (bench/work is not committed)
        with open(os.path.join(H.WORK, f"results-{stamp}-tls.json"), "w") as f:
            json.dump({"results": {f"{sc}/{p}": rs for (sc, p), rs in results.items()}}, f, indent=1, default=str)
    except OSError:
        pass
    path = os.path.join(H.RESULTS, f"{stamp}-tls.md") if not fatal else os.path.join(H.WORK, f"incomplete-{stamp}-tls.md")
    with open(path, "w") as f:
        f.write(text)
    print("\n" + text)
    log(f"results written to {os.path.relpath(path, H.ROOT)} ({elapsed / 60:.1f} min)")
    if fatal:
        return 2
    if any(r.get("errors") for rs in results.values() for r in rs):
        H.loud("some TLS runs had errors: see the Errors section")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
