#!/usr/bin/env python3
"""A small web app for tidegate's on-demand example (Python standard library only).

Serves HTTP/1.1 on the Unix socket given by --socket. tidegate starts it on the first
request and stops it (SIGTERM) when it has been idle for `idle_stop`; on SIGTERM it
finishes the requests in flight, removes its socket and exits.

    python3 app.py --socket lazyapp.sock
    curl --unix-socket lazyapp.sock http://localhost/
"""

import argparse
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

STARTED = time.monotonic()
GREETING = os.environ.get("LAZYAPP_GREETING", "hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: tidegate pools connections to the app

    def do_GET(self):
        body = (
            f"{GREETING} from lazyapp\n"
            f"pid {os.getpid()}, up {time.monotonic() - STARTED:.1f}s, path {self.path}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        # A Unix-socket client has no address.
        return "tidegate"

    def log_message(self, fmt, *args):
        # tidegate logs each line of stderr with the upstream's name.
        print(fmt % args, file=sys.stderr, flush=True)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # Many first requests arrive together while it starts: a deeper accept queue than
    # socketserver's default of 5.
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args()

    # A socket file left by a previous run that was killed.
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = Server(args.socket, Handler)

    def on_term(signum, frame):
        # shutdown() waits for serve_forever() to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"lazyapp {os.getpid()} listening on {args.socket}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        if os.path.exists(args.socket):
            os.unlink(args.socket)
    print("lazyapp stopped", flush=True)


if __name__ == "__main__":
    main()
