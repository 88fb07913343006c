#!/usr/bin/env python3
"""A backend for tidegate's on-demand tests (standard library only).

HTTP/1.1 on the Unix socket given by --socket. Every response is
"pid=PID path=PATH\n"; "?delay=SECONDS" in the path delays it. What happens to the
process is appended to the --events file, one line each, so tests can see it without
parsing logs:

    start PID            the process started
    listen PID           it accepts connections
    accept PID 0|1       a connection was accepted (1: after SIGTERM)
    term PID             SIGTERM arrived
    exit PID             it is exiting on its own terms

Options that make it misbehave: --fail STATUS (write to stderr and exit before
listening), --start-delay SECONDS (before listening), --term-delay SECONDS (after
SIGTERM, keep the socket open that long before exiting), --ignore-term (never exit on
SIGTERM: only SIGKILL ends it).
"""

import argparse
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

parser = argparse.ArgumentParser()
parser.add_argument("--socket", required=True)
parser.add_argument("--events", required=True)
parser.add_argument("--fail", type=int)
parser.add_argument("--start-delay", type=float, default=0.0)
parser.add_argument("--term-delay", type=float, default=0.0)
parser.add_argument("--ignore-term", action="store_true")
args = parser.parse_args()

PID = os.getpid()
terminating = threading.Event()
lock = threading.Lock()


def event(*words):
    with lock, open(args.events, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


event("start", PID)
print(f"lazy app {PID} starting", flush=True)

if args.fail is not None:
    print(f"lazy app {PID}: cannot open database /nonexistent/app.db", file=sys.stderr, flush=True)
    sys.exit(args.fail)
time.sleep(args.start_delay)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if "delay=" in self.path:
            time.sleep(float(self.path.split("delay=", 1)[1].split("&", 1)[0]))
        body = f"pid={PID} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *a):
        print(f"lazy app {PID}: " + (fmt % a), file=sys.stderr, flush=True)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: many concurrent first requests would find
    # the queue full (EAGAIN on a non-blocking connect).
    request_queue_size = 128

    def verify_request(self, request, client_address):
        event("accept", PID, 1 if terminating.is_set() else 0)
        return True


if os.path.exists(args.socket):
    os.unlink(args.socket)
server = Server(args.socket, Handler)


def finish():
    time.sleep(args.term_delay)
    server.shutdown()


def on_term(signum, frame):
    event("term", PID)
    if args.ignore_term or terminating.is_set():
        return
    terminating.set()
    threading.Thread(target=finish, daemon=True).start()


signal.signal(signal.SIGTERM, on_term)
event("listen", PID)
server.serve_forever(poll_interval=0.05)
server.server_close()
os.unlink(args.socket)
event("exit", PID)
